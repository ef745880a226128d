# Shell helpers for the scripts that start processes on loopback
# (nginx/local-cluster.sh, scripts/bench-redis-cluster.sh); sourced, not run.
# The caller keeps the PIDs it started in pids (node_pids: loopchat nodes,
# also in pids) and its temp dir in dir.

# free_port prints a loopback port that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port waits up to 10 s for something to accept on the port.
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on port $1" >&2; return 1; }

# stop_procs stops the nodes first (they drain, still talking to Redis),
# then the rest, each by the PID it was started as (TERM, then KILL after
# 5 s), and removes dir.
stop_procs() {
	for group in "${node_pids[*]:-}" "${pids[*]:-}"; do
		for pid in $group; do kill -TERM "$pid" 2>/dev/null || true; done
		for pid in $group; do
			for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			kill -KILL "$pid" 2>/dev/null || true
		done
	done
	rm -rf "$dir"
}
