#!/bin/bash
# crossnode-cost.sh: what a cross-node chat message costs against a local
# one, in CPU (docs/BENCHMARKS.md, "Cross-node cost").
#
#   scripts/crossnode-cost.sh RATE ROUNDS NAME=BINARY [NAME=BINARY ...]
#   e.g. scripts/crossnode-cost.sh 2000 3 old=/tmp/lc-old new=./bin/loopchat
#
# Each run is fresh: Redis (AOF, appendfsync always) and two gnet nodes
# (one loop each) pinned to CPU 0, the load generator to CPU 1, 2,000
# connections alternating between the nodes and 999 pairs, so every
# message crosses Redis pub/sub, open loop at RATE for 10 s; then one node
# alone on CPU 0 at the same rate. CPU is user + system time from
# /proc/PID/stat over 6 s of the measured phase, per delivered message.
# Rounds interleave the builds (old new old new ...). The generator is
# always the first build's (GEN=PATH to choose another), so only the
# servers differ between builds.
#
# STATS=1 also prints, per cluster run and per delivered message, Redis's
# read and write system calls (/proc/PID/io) and each command's calls and
# CPU from INFO commandstats, over the same 6 s (CONFIG RESETSTAT at its
# start), to attribute Redis's share. REDIS_ARGS adds redis-server flags.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,17p "$0" >&2; exit 2; }
RATE=$1 ROUNDS=$2
shift 2
. "$(dirname "$0")/crossnode-common.sh"

# wait_warmup LOG: until the generator (PID $gen) reports its warm-up;
# fails if it exits first (its log says why).
wait_warmup() {
	until grep -q 'warm-up' "$1" 2>/dev/null; do
		kill -0 "$gen" 2>/dev/null || { echo "the generator stopped before its warm-up:" >&2; tail -3 "$1" >&2; return 1; }
		sleep 0.1
	done
}

# measure LOG PID...: ticks of each PID over 6 s from 1.5 s into the
# measured phase, then the seconds measured.
measure() {
	local log=$1
	shift
	wait_warmup "$log" || return 1
	sleep 1.5
	local before=() p t0 t1 out=""
	for p in "$@"; do before+=("$(ticks "$p")"); done
	t0=$(date +%s.%N)
	sleep 6
	t1=$(date +%s.%N)
	local i=0
	for p in "$@"; do out="$out $(($(ticks "$p") - before[i]))"; i=$((i + 1)); done
	echo "$out $(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
}

# redis_stats LOG PORT PID: over the window measure reads, Redis's system
# calls (syscr syscw, then the seconds) and INFO commandstats.
redis_stats() {
	local log=$1 rp=$2 pid=$3
	wait_warmup "$log" || return 1
	sleep 1.5
	redis-cli -p "$rp" config resetstat >/dev/null
	local r0 w0 t0 t1
	read -r r0 w0 < <(awk '/^syscr/ {r = $2} /^syscw/ {w = $2} END {print r, w}' "/proc/$pid/io")
	t0=$(date +%s.%N)
	sleep 6
	t1=$(date +%s.%N)
	awk -v r0="$r0" -v w0="$w0" -v a="$t0" -v b="$t1" '/^syscr/ {r = $2} /^syscw/ {w = $2} END {print "io", r - r0, w - w0, b - a}' "/proc/$pid/io"
	redis-cli -p "$rp" info commandstats | tr -d '\r' | grep '^cmdstat_'
}

# stats_per_message FILE RATE NAME ROUND: redis_stats's figures per message.
stats_per_message() {
	awk -v rate="$2" -v name="$3" -v round="$4" '
	$1 == "io" { n = rate * $4; printf "%s %d redis per message: %.2f read + %.2f write syscalls\n", name, round, $2 / n, $3 / n; next }
	{
		split($0, kv, ":"); cmd = substr(kv[1], 9)
		split(kv[2], f, ","); sub("calls=", "", f[1]); sub("usec=", "", f[2])
		if (f[1] / n >= 0.01) printf "%s %d   %-10s %6.2f calls %7.2f us\n", name, round, cmd, f[1] / n, f[2] / n
		if (cmd != "evalsha" && cmd != "eval") tot += f[2] / n
	}
	END { printf "%s %d   (evalsha includes the commands inside; all but scripts: %.2f us)\n", name, round, tot }' "$1"
}

# latency LOG: its p50 and p99 columns (ms).
latency() { awk '$1 == "server" && $2 == "chat" {l = $6 " " $7} END {print l}' "$1"; }

run() { # NAME BINARY ROUND (in a subshell of its own: | tee below)
	local name=$1 bin=$2 round=$3 d
	# A failed run stops its own processes: the main shell's PIDS never
	# sees what this subshell starts.
	trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
	d=$(mktemp -d "$WORK/run.XXXX")
	local p0
	p0=$(port)
	start_cluster "$bin" "$d"
	local rp=$CL_RPORT redis=$CL_REDIS n1=$CL_N1 n2=$CL_N2
	taskset -c 1 "$GEN" bench chat --addr "$CL_ADDR" --conns 2000 --pairs 999 --rate "$RATE" \
		--duration 10s >"$d/cluster.log" 2>&1 &
	local gen=$!
	PIDS+=("$gen")
	local m stats=""
	if [ -n "${STATS:-}" ]; then
		redis_stats "$d/cluster.log" "$rp" "$redis" >"$d/stats" &
		stats=$!
	fi
	m=$(measure "$d/cluster.log" "$redis" "$n1" "$n2")
	wait "$gen" || { echo "$name round $round: the cluster run failed" >&2; tail -5 "$d/cluster.log" >&2; exit 1; }
	local crate
	crate=$(delivered "$d/cluster.log")
	local clat
	clat=$(latency "$d/cluster.log")
	if [ -n "$stats" ]; then
		wait "$stats"
		stats_per_message "$d/stats" "$crate" "$name" "$round" >&2
	fi
	kill "$n1" "$n2" "$redis"
	wait "$n1" "$n2" "$redis" 2>/dev/null || true

	taskset -c 0 "$bin" serve --listen "127.0.0.1:$p0" --data "$d/n0" "${FLAGS[@]}" &
	local n0=$!
	PIDS+=("$n0")
	wait_port "$p0"
	taskset -c 1 "$GEN" bench chat --addr "127.0.0.1:$p0" --conns 2000 --pairs 999 --rate "$RATE" \
		--duration 10s >"$d/local.log" 2>&1 &
	gen=$!
	PIDS+=("$gen")
	local m1
	m1=$(measure "$d/local.log" "$n0")
	wait "$gen" || { echo "$name round $round: the one-node run failed" >&2; tail -5 "$d/local.log" >&2; exit 1; }
	local lrate
	lrate=$(delivered "$d/local.log")
	kill "$n0"
	wait "$n0" 2>/dev/null || true
	PIDS=()
	rm -rf "$d"

	# name round redis n1 n2 cluster local ratio (µs per message), rates,
	# the cluster run's p50 and p99 (ms)
	echo "$m" "$crate" "$m1" "$lrate" "$clat" | awk -v hz="$HZ" -v name="$name" -v round="$round" '{
		us = 1e6 / hz
		redis = $1 * us / ($4 * $5); n1 = $2 * us / ($4 * $5); n2 = $3 * us / ($4 * $5)
		local = $6 * us / ($7 * $8); total = redis + n1 + n2
		printf "%s %d %.1f %.1f %.1f %.1f %.1f %.2f %d %d %s %s\n", name, round, redis, n1, n2, total, local, total / local, $5, $8, $9, $10
	}'
}

echo "build round redis_us n1_us n2_us cluster_us local_us ratio cluster_msgs/s local_msgs/s cluster_p50_ms cluster_p99_ms"
results=$WORK/results
for round in $(seq "$ROUNDS"); do
	for nb in "$@"; do
		run "${nb%%=*}" "${nb#*=}" "$round" | tee -a "$results"
	done
done
echo "medians over $ROUNDS rounds (µs of CPU per message):"
for nb in "$@"; do
	name=${nb%%=*}
	for col in 3 4 5 6 7 11 12; do
		awk -v n="$name" -v c="$col" '$1 == n {print $c}' "$results" | sort -g | awk '{v[NR] = $1} END {printf "%s ", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
	done | awk -v n="$name" '{printf "%s: redis %s + n1 %s + n2 %s = cluster %s against local %s: ratio of the medians %.2f; cluster p50 %s ms, p99 %s ms\n", n, $1, $2, $3, $4, $5, $4 / $5, $6, $7}'
done
