#!/usr/bin/env bash
# One-command local cluster on loopback: redis-server, NODES loopchat nodes,
# `loopchat lb` and nginx, all in a temp dir. Ctrl-C stops every process it
# started (by PID) and removes the temp dir.
#
#   make cluster                 # clients connect to 127.0.0.1:7000,
#                                # browsers to http://127.0.0.1:7080/
#   CLUSTER_PORT=7100 NODES=5 make cluster
#   NODE_FLAGS="--rate-limit 1000" make cluster    # extra flags for every node
#   make cluster REDIS=cluster   # a Redis Cluster (3 primaries + 3 replicas) instead of one redis-server
set -euo pipefail

port=${CLUSTER_PORT:-7000}
web_port=${CLUSTER_WEB_PORT:-$((port + 80))}
nodes=${NODES:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d -t loopchat-cluster.XXXXXX)
pids=()
node_pids=()

say() { printf '%-10s %s\n' "$1" "$2"; }

# shellcheck source=../scripts/procs.sh
. "$root/scripts/procs.sh"

stop() {
	trap - INT TERM EXIT
	echo
	say "stopping" "${#pids[@]} processes"
	stop_procs
	say "stopped" "nothing left listening"
}
trap stop INT TERM EXIT

need() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || { echo "$1 is missing: run make deps" >&2; exit 1; }; }
need redis-server
need nginx
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)


(cd "$root" && go build -o "$dir/loopchat" ./cmd/loopchat)
bin="$dir/loopchat"

if [ "${REDIS:-}" = cluster ]; then
	# Three primaries with a replica each, joined by redis-cli; the nodes
	# wait for a replica on every write (--redis-min-replicas defaults to 1).
	need redis-cli
	addrs=()
	for i in $(seq 6); do
		p=$(free_port)
		bp=$(free_port)
		mkdir -p "$dir/redis$i"
		redis-server --port "$p" --cluster-port "$bp" --bind 127.0.0.1 --dir "$dir/redis$i" --cluster-enabled yes \
			--cluster-config-file nodes.conf --cluster-node-timeout 2000 --cluster-require-full-coverage no \
			--appendonly yes --appendfsync always --save "" --repl-diskless-sync-delay 0 --daemonize no \
			--loglevel warning >"$dir/redis$i.log" 2>&1 &
		pids+=($!)
		wait_port "$p"
		addrs+=("127.0.0.1:$p")
	done
	redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$dir/cluster-create.log" 2>&1
	for a in "${addrs[@]}"; do
		for _ in $(seq 100); do
			redis-cli -h 127.0.0.1 -p "${a##*:}" cluster info | grep -q 'cluster_state:ok' && break
			sleep 0.1
		done
	done
	redis="redis-cluster://$(IFS=,; echo "${addrs[*]}")"
	printf '\nloopchat local cluster in %s\n\n' "$dir"
	say "redis" "Redis Cluster ${addrs[*]}  (3 primaries + 3 replicas, AOF, fsync always)  logs: $dir/redis*.log"
else
	redis_port=$(free_port)
	redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync always \
		--save "" --daemonize no --loglevel warning >"$dir/redis.log" 2>&1 &
	pids+=($!)
	wait_port "$redis_port"
	redis="redis://127.0.0.1:$redis_port/0"
	printf '\nloopchat local cluster in %s\n\n' "$dir"
	say "redis" "127.0.0.1:$redis_port  (AOF, fsync always)  log: $dir/redis.log"
fi
for i in $(seq "$nodes"); do
	np=$(free_port)
	wp=$(free_port)
	ap=$(free_port)
	LOOPCHAT_TOKEN_SECRET=local-cluster-secret-0123456789 "$bin" serve --listen "127.0.0.1:$np" \
		--ws-listen "127.0.0.1:$wp" --web \
		--data "$dir/n$i" --redis "$redis" --node-id "n$i" --proxy-protocol-from 127.0.0.0/8 \
		--admin-addr "127.0.0.1:$ap" ${NODE_FLAGS:-} >"$dir/n$i.log" 2>&1 &
	pids+=($!)
	node_pids+=($!)
	wait_port "$np"
	say "node n$i" "127.0.0.1:$np  ws 127.0.0.1:$wp  admin http://127.0.0.1:$ap/metrics  log: $dir/n$i.log"
done

sed -e "s|@PREFIX@|$dir|g" -e "s|@LISTEN@|127.0.0.1:$port|g" -e "s|@UPSTREAM@|$dir/upstream.conf|g" \
	-e "s|@WS_LISTEN@|127.0.0.1:$web_port|g" -e "s|@WS_UPSTREAM@|$dir/ws-upstream.conf|g" \
	"$root/nginx/nginx.conf.tmpl" >"$dir/nginx.conf"
echo "server 127.0.0.1:1 down;" >"$dir/upstream.conf"
echo "server 127.0.0.1:1 down;" >"$dir/ws-upstream.conf"
lbp=$(free_port)
"$nginx_bin" -c "$dir/nginx.conf" -e stderr -g "daemon off;" >"$dir/nginx.out" 2>&1 &
pids+=($!)
wait_port "$port"
"$bin" lb --redis "$redis" --upstream-file "$dir/upstream.conf" --ws-upstream-file "$dir/ws-upstream.conf" \
	--nginx-conf "$dir/nginx.conf" \
	--nginx-bin "$nginx_bin" --admin-addr "127.0.0.1:$lbp" >"$dir/lb.log" 2>&1 &
pids+=($!)
say "lb" "admin http://127.0.0.1:$lbp/debug/nodes  log: $dir/lb.log"
say "nginx" "127.0.0.1:$port  conf: $dir/nginx.conf  logs: $dir/access.log $dir/error.log"
say "browsers" "http://127.0.0.1:$web_port/ (the chat page and its WebSocket) through nginx  log: $dir/http-access.log"

# Ready once a Ping goes through nginx to a node (lb has rendered the
# upstreams and reloaded nginx).
for _ in $(seq 100); do
	printf '/ping\n' | "$bin" client --addr "127.0.0.1:$port" --json 2>/dev/null | grep -q '"ok":true' && break
	sleep 0.1
done
printf '\nready: %s client --addr 127.0.0.1:%s\n' "$bin" "$port"
printf 'try: kill -STOP <node pid> and watch %s/lb.log; Ctrl-C stops everything.\n\n' "$dir"
wait
