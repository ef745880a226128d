#!/usr/bin/env bash
# Cross-node chat on one Redis against a Redis Cluster of three shards, in
# the same run (docs/BENCHMARKS.md, "Redis Cluster"). Three setups, each two
# loopchat nodes, taking turns ROUNDS times:
#
#   redis           one redis-server (AOF, fsync always)
#   cluster         3 primaries + 3 replicas, every write waiting for a
#                   replica (--redis-min-replicas 1)
#   cluster-nowait  the same cluster (another key prefix), no wait
#                   (--redis-min-replicas -1): what the WAIT costs
#
# Each turn is `loopchat bench chat` at RATE msgs/s, every message from a
# node to the other (odd pair count), for DURATION. While it runs, once
# messages flow, the script reads for WINDOW seconds the CPU time of the
# nodes and of the Redis servers (/proc/PID/stat) and the messages the
# nodes accepted (loopchat_messages_sent_total): CPU per message, by part.
#
# Then, once per setup, a login storm (LOGINS users at LOGIN_RATE/s, each
# with FRIENDS friends): CPU per login of the nodes and of Redis, each
# read by `loopchat bench login` over the storm (--server-pid, --cpu-pid).
#
#   scripts/bench-redis-cluster.sh
#   ROUNDS=3 RATE=2000 DURATION=20s scripts/bench-redis-cluster.sh
#
# Every process it starts is stopped by PID at the end.
set -euo pipefail

rounds=${ROUNDS:-3}
rate=${RATE:-1000}
duration=${DURATION:-16s}
window=${WINDOW:-8}
conns=${CONNS:-2000}
pairs=${PAIRS:-999}
logins=${LOGINS:-3000}
login_rate=${LOGIN_RATE:-1000}
friends=${FRIENDS:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d -t loopchat-bench-rc.XXXXXX)
pids=()
node_pids=()

# shellcheck source=procs.sh
. "$root/scripts/procs.sh"
trap 'trap - INT TERM EXIT; stop_procs' INT TERM EXIT
# cpu_ticks PID... : their utime+stime, in clock ticks.
cpu_ticks() { local t=0 f; for p in "$@"; do f=($(sed 's/^.*) //' "/proc/$p/stat")); t=$((t + f[11] + f[12])); done; echo "$t"; }
# used_memory PORT... : the memory the primaries among them hold for data
# (used_memory less what their clients' buffers, the replication backlog
# and the AOF buffer take, which move with connections, not data), summed;
# their replicas hold as much again.
used_memory() {
	local t=0 v
	for p in "$@"; do
		redis-cli -p "$p" role | head -1 | grep -q master || continue
		v=$(redis-cli -p "$p" info memory | tr -d '\r' | awk -F: '
			/^used_memory:/{m=$2} /^mem_clients_normal:/{c=$2} /^mem_clients_slaves:/{r=$2}
			/^mem_replication_backlog:/{b=$2} /^mem_aof_buffer:/{a=$2} END{print m-c-r-b-a}')
		t=$((t + v))
	done
	echo "$t"
}
# sent ADMIN... : loopchat_messages_sent_total summed over the nodes.
sent() { local t=0 v; for a in "$@"; do v=$(curl -s "http://$a/metrics" | awk '/^loopchat_messages_sent_total /{print $2}'); t=$(awk -v a="$t" -v b="${v:-0}" 'BEGIN{printf "%d", a+b}'); done; echo "$t"; }

(cd "$root" && go build -o "$dir/loopchat" ./cmd/loopchat)
bin="$dir/loopchat"
redis_flags=(--bind 127.0.0.1 --appendonly yes --appendfsync always --save "" --daemonize no --loglevel warning)

# One Redis.
rp=$(free_port)
mkdir -p "$dir/redis"
redis-server --port "$rp" --dir "$dir/redis" "${redis_flags[@]}" >"$dir/redis.log" 2>&1 &
pids+=($!)
single_redis=($!)
single_ports=("$rp")
wait_port "$rp"

# The cluster.
addrs=()
cluster_redis=()
cluster_ports=()
for i in $(seq 6); do
	p=$(free_port)
	bp=$(free_port)
	mkdir -p "$dir/c$i"
	redis-server --port "$p" --cluster-port "$bp" --dir "$dir/c$i" --cluster-enabled yes --cluster-config-file nodes.conf \
		--cluster-node-timeout 2000 --cluster-require-full-coverage no --repl-diskless-sync-delay 0 \
		"${redis_flags[@]}" >"$dir/c$i.log" 2>&1 &
	pids+=($!)
	cluster_redis+=($!)
	cluster_ports+=("$p")
	wait_port "$p"
	addrs+=("127.0.0.1:$p")
done
redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1
for a in "${addrs[@]}"; do
	for _ in $(seq 100); do redis-cli -p "${a##*:}" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
done
sleep 1 # the replicas' first sync
cluster_url="redis-cluster://$(IFS=,; echo "${addrs[*]}")"

node_flags=(--bcrypt-cost 4 --rate-limit 1e9 --rate-burst 1000000000 --heartbeat 1s)
declare -A setup_addrs setup_admins setup_nodes setup_redis setup_ports
start_setup() { # name url extra-flags...
	local name=$1 url=$2
	shift 2
	local a=() m=() n=()
	for i in 1 2; do
		local np ap
		np=$(free_port)
		ap=$(free_port)
		LOOPCHAT_TOKEN_SECRET=bench-secret-0123456789abcdef "$bin" serve --listen "127.0.0.1:$np" --data "$dir/$name-n$i" \
			--redis "$url" --redis-prefix "$name:" --node-id "$name-n$i" --admin-addr "127.0.0.1:$ap" \
			"${node_flags[@]}" "$@" >"$dir/$name-n$i.log" 2>&1 &
		pids+=($!)
		node_pids+=($!)
		n+=($!)
		wait_port "$np"
		a+=("127.0.0.1:$np")
		m+=("127.0.0.1:$ap")
	done
	setup_addrs[$name]=$(IFS=,; echo "${a[*]}")
	setup_admins[$name]="${m[*]}"
	setup_nodes[$name]="${n[*]}"
}
start_setup redis "redis://127.0.0.1:$rp/0"
setup_redis[redis]="${single_redis[*]}"
setup_ports[redis]="${single_ports[*]}"
start_setup cluster "$cluster_url" --redis-min-replicas 1
setup_redis[cluster]="${cluster_redis[*]}"
setup_ports[cluster]="${cluster_ports[*]}"
start_setup cluster-nowait "$cluster_url" --redis-min-replicas -1
setup_redis[cluster-nowait]="${cluster_redis[*]}"
setup_ports[cluster-nowait]="${cluster_ports[*]}"

printf '%s, load before: %s\n' "$(date -u +%FT%TZ)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-15s %5s %8s %9s %8s %8s %10s %10s %10s %9s %9s %6s\n' setup round "msgs/s" "p50 ms" "p99 ms" "lost" "nodes µs" "redis µs" "total µs" "B/user" "B/msg" "load"
for round in $(seq "$rounds"); do
	for name in redis cluster cluster-nowait; do
		read -r -a nodes <<<"${setup_nodes[$name]}"
		read -r -a redis <<<"${setup_redis[$name]}"
		read -r -a admins <<<"${setup_admins[$name]}"
		read -r -a ports <<<"${setup_ports[$name]}"
		m0=$(used_memory "${ports[@]}")
		"$bin" bench chat --addr "${setup_addrs[$name]}" --conns "$conns" --pairs "$pairs" --rate "$rate" \
			--duration "$duration" --json >"$dir/out.json" 2>"$dir/bench.err" &
		bench=$!
		# Messages flow once the bench has logged everyone in.
		start=$(sent "${admins[@]}")
		for _ in $(seq 600); do sleep 0.1; [ "$(sent "${admins[@]}")" -gt "$((start + rate))" ] && break; done
		sleep 2
		n0=$(cpu_ticks "${nodes[@]}") r0=$(cpu_ticks "${redis[@]}") s0=$(sent "${admins[@]}") m1=$(used_memory "${ports[@]}")
		sleep "$window"
		n1=$(cpu_ticks "${nodes[@]}") r1=$(cpu_ticks "${redis[@]}") s1=$(sent "${admins[@]}") m2=$(used_memory "${ports[@]}")
		wait "$bench" || { cat "$dir/bench.err" >&2; exit 1; }
		# Memory: the users the bench made (registered, logged in, their
		# sessions, devices, presence and channel), and each message kept
		# (history; inbox entries go with their acks).
		python3 - "$dir/out.json" "$name" "$round" "$((n1 - n0))" "$((r1 - r0))" "$((s1 - s0))" "$(cut -d' ' -f1 /proc/loadavg)" \
			"$((m1 - m0))" "$((m2 - m1))" "$conns" "$((s0 - start))" <<'EOF'
import json, sys
res = json.load(open(sys.argv[1]))
r = res[0] if isinstance(res, list) else res
name, rnd, nt, rt, msgs, load = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), max(int(sys.argv[6]), 1), sys.argv[7]
users_mem, msgs_mem, conns, early = int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10]), int(sys.argv[11])
us = lambda ticks: ticks * 10000 / msgs  # 100 ticks a second
per_msg = msgs_mem / msgs
users_mem -= per_msg * early  # the messages sent before the window
print(f"{name:<15} {rnd:>5} {r['msgs_per_sec']:>8.0f} {r['p50_ms']:>9.2f} {r['p99_ms']:>8.2f} {r['lost']:>8} "
      f"{us(nt):>10.1f} {us(rt):>10.1f} {us(nt + rt):>10.1f} {users_mem / conns:>9.0f} {per_msg:>9.0f} {load:>6}")
EOF
	done
done

csv() { local IFS=,; echo "$*"; }
printf '\n%-15s %9s %9s %9s %11s %11s %11s\n' setup "logins/s" "p50 ms" "p99 ms" "nodes µs" "redis µs" "total µs"
for name in redis cluster cluster-nowait; do
	read -r -a nodes <<<"${setup_nodes[$name]}"
	read -r -a redis <<<"${setup_redis[$name]}"
	# The nodes' CPU in one storm, Redis's in another (the same users
	# logging in again).
	users="l$RANDOM"
	pidargs() { echo "--server-pid $1"; [ $# -gt 1 ] && { shift; echo "--cpu-pid $(csv "$@")"; }; }
	# shellcheck disable=SC2046
	"$bin" bench login --addr "${setup_addrs[$name]}" --conns "$logins" --rate "$login_rate" --friends "$friends" \
		--users "$users" $(pidargs "${nodes[@]}") --json >"$dir/ln.json" 2>"$dir/bench.err" || { cat "$dir/bench.err" >&2; exit 1; }
	# shellcheck disable=SC2046
	"$bin" bench login --addr "${setup_addrs[$name]}" --conns "$logins" --rate "$login_rate" \
		--users "$users" $(pidargs "${redis[@]}") --json >"$dir/lr.json" 2>"$dir/bench.err" || { cat "$dir/bench.err" >&2; exit 1; }
	python3 - "$dir/ln.json" "$dir/lr.json" "$name" <<'EOF'
import json, sys
one = lambda f: (lambda r: r[0] if isinstance(r, list) else r)(json.load(open(f)))
n, r = one(sys.argv[1]), one(sys.argv[2])
nu, ru = n.get('cpu_us_per_msg', 0), r.get('cpu_us_per_msg', 0)
print(f"{sys.argv[3]:<15} {n['msgs_per_sec']:>9.0f} {n['p50_ms']:>9.2f} {n['p99_ms']:>9.2f} {nu:>11.1f} {ru:>11.1f} {nu + ru:>11.1f}")
EOF
done
