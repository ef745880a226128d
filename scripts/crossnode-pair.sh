#!/bin/bash
# crossnode-pair.sh: two builds' cross-node CPU per message measured side
# by side, at the same time (docs/BENCHMARKS.md, "Cross-node cost").
#
#   scripts/crossnode-pair.sh RATE ROUNDS A=BINARY B=BINARY
#   e.g. scripts/crossnode-pair.sh 1000 5 old=/tmp/lc-old new=./bin/loopchat
#
# crossnode-cost.sh runs the builds one after the other, and on a box
# shared with other work their CPU per message moves by ±30% from one
# run to the next (a busier CPU batches more per wake-up), far more than a
# change of a few µs. Here each round runs both clusters at once, each
# as crossnode-cost.sh's (its own Redis, AOF with appendfsync always, and
# two gnet nodes with one loop, all six processes pinned to CPU 0; each
# its own generator on CPU 1, the first build's binary, 2,000 connections
# alternating between its nodes, 999 pairs, open loop at RATE for 10 s),
# so whatever else the box does weighs on both alike. CPU is user +
# system time from /proc/PID/stat over the same 6 s for all six, per
# delivered message. Rounds alternate which build starts first.
set -euo pipefail
[ $# -eq 4 ] || { sed -n 2,19p "$0" >&2; exit 2; }
RATE=$1 ROUNDS=$2
shift 2
. "$(dirname "$0")/crossnode-common.sh"

round() { # ROUND NAME_A BIN_A NAME_B BIN_B
	local r=$1 na=$2 ba=$3 nb=$4 bb=$5 da db pa pb ga gb
	da=$(mktemp -d "$WORK/a.XXXX") db=$(mktemp -d "$WORK/b.XXXX")
	start_cluster "$ba" "$da"
	pa=$CL_PIDS aa=$CL_ADDR
	start_cluster "$bb" "$db"
	pb=$CL_PIDS ab=$CL_ADDR
	taskset -c 1 "$GEN" bench chat --addr "$aa" --conns 2000 --pairs 999 --rate "$RATE" --duration 10s >"$da/gen.log" 2>&1 &
	ga=$!
	taskset -c 1 "$GEN" bench chat --addr "$ab" --conns 2000 --pairs 999 --rate "$RATE" --duration 10s >"$db/gen.log" 2>&1 &
	gb=$!
	until grep -q 'warm-up' "$da/gen.log" 2>/dev/null && grep -q 'warm-up' "$db/gen.log" 2>/dev/null; do sleep 0.1; done
	sleep 1.5
	local before=() p t0 t1 i=0 out=()
	for p in $pa $pb; do before+=("$(ticks "$p")"); done
	t0=$(date +%s.%N)
	sleep 6
	t1=$(date +%s.%N)
	for p in $pa $pb; do out+=($(($(ticks "$p") - before[i]))); i=$((i + 1)); done
	wait "$ga" || { echo "$na round $r failed" >&2; tail -5 "$da/gen.log" >&2; exit 1; }
	wait "$gb" || { echo "$nb round $r failed" >&2; tail -5 "$db/gen.log" >&2; exit 1; }
	local ra rb
	ra=$(delivered "$da/gen.log") rb=$(delivered "$db/gen.log")
	for p in $pa $pb; do kill "$p" 2>/dev/null || true; done
	for p in $pa $pb; do wait "$p" 2>/dev/null || true; done
	rm -rf "$da" "$db"
	# name round redis n1 n2 nodes total (µs per message)
	awk -v hz="$HZ" -v s="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" -v r="$r" \
		-v na="$na" -v nb="$nb" -v ra="$ra" -v rb="$rb" -v o="${out[*]}" 'BEGIN {
		split(o, t, " "); us = 1e6 / hz
		for (k = 0; k < 2; k++) {
			rate = k ? rb : ra; name = k ? nb : na
			re = t[3*k+1] * us / (s * rate); a = t[3*k+2] * us / (s * rate); b = t[3*k+3] * us / (s * rate)
			printf "%s %d %.1f %.1f %.1f %.1f %.1f %d\n", name, r, re, a, b, a + b, re + a + b, rate
		}
	}'
}

echo "build round redis_us n1_us n2_us nodes_us total_us msgs/s"
results=$WORK/results
A=$1 B=$2
for r in $(seq "$ROUNDS"); do
	if [ $((r % 2)) -eq 1 ]; then
		round "$r" "${A%%=*}" "${A#*=}" "${B%%=*}" "${B#*=}"
	else
		round "$r" "${B%%=*}" "${B#*=}" "${A%%=*}" "${A#*=}"
	fi | tee -a "$results"
done
med() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo "medians over $ROUNDS rounds (µs of CPU per message), and of the per-round ratio ${B%%=*} ÷ ${A%%=*}:"
for nb in "$A" "$B"; do
	n=${nb%%=*}
	echo "$n: redis $(awk -v n="$n" '$1 == n {print $3}' "$results" | med) nodes $(awk -v n="$n" '$1 == n {print $6}' "$results" | med) total $(awk -v n="$n" '$1 == n {print $7}' "$results" | med)"
done
for col in 6 7; do
	awk -v a="${A%%=*}" -v b="${B%%=*}" -v c="$col" '$1 == a {x[$2] = $c} $1 == b {y[$2] = $c} END {for (r in x) print y[r] / x[r]}' "$results" | sort -g |
		awk -v c="$col" '{v[NR] = $1} END {printf "%s ratio: median %.3f, range %.3f-%.3f\n", (c == 6 ? "nodes" : "total"), (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, v[1], v[NR]}'
done
