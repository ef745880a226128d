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
