# crossnode-common.sh: what crossnode-cost.sh and crossnode-pair.sh share,
# sourced after they have read RATE, ROUNDS and their NAME=BINARY
# arguments: the generator, the node flags, a work directory and the
# processes to stop on exit (PIDS), and small helpers.
GEN=${GEN:-${1#*=}}
HZ=$(getconf CLK_TCK)
FLAGS=(--engine gnet --loops 1 --bcrypt-cost 4 --rate-limit 1e9 --rate-burst 1000000000
	--max-outbound 67108864 --idle-timeout 10m --log-level error)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
port() { # a port nothing listens on
	local p
	while :; do
		# below the ephemeral range (32768-60999 here), where a port in use
		# by some connection would not show as listening but fail the bind
		p=$((20000 + RANDOM % 12000))
		(echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }
	done
}
wait_port() { for _ in $(seq 300); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
# delivered LOG: the msgs/s column of the generator's result line.
delivered() { awk '$1 == "server" && $2 == "chat" {r = $5} END {print r}' "$1"; }

# start_cluster BINARY DIR: Redis (AOF, appendfsync always, REDIS_ARGS
# added) and two nodes of BINARY on it, all pinned to CPU 0, data in DIR;
# their PIDs join PIDS. Sets CL_REDIS CL_N1 CL_N2 (PIDs), CL_PIDS (the
# three), CL_RPORT (Redis's port) and CL_ADDR (both nodes, for --addr).
start_cluster() {
	local bin=$1 d=$2 p1 p2
	CL_RPORT=$(port) p1=$(port) p2=$(port)
	# shellcheck disable=SC2086 # REDIS_ARGS is a list of flags
	taskset -c 0 redis-server --port "$CL_RPORT" --dir "$d" --appendonly yes --appendfsync always --save '' ${REDIS_ARGS:-} >"$d/redis.log" 2>&1 &
	CL_REDIS=$!
	PIDS+=("$CL_REDIS")
	wait_port "$CL_RPORT"
	taskset -c 0 "$bin" serve --listen "127.0.0.1:$p1" --redis "redis://127.0.0.1:$CL_RPORT/0" --node-id n1 --data "$d/n1" "${FLAGS[@]}" &
	CL_N1=$!
	taskset -c 0 "$bin" serve --listen "127.0.0.1:$p2" --redis "redis://127.0.0.1:$CL_RPORT/0" --node-id n2 --data "$d/n2" "${FLAGS[@]}" &
	CL_N2=$!
	PIDS+=("$CL_N1" "$CL_N2")
	wait_port "$p1"
	wait_port "$p2"
	CL_PIDS="$CL_REDIS $CL_N1 $CL_N2"
	CL_ADDR="127.0.0.1:$p1,127.0.0.1:$p2"
}
