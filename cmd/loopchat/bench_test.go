package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type benchResult struct {
	Server    string  `json:"server"`
	Scenario  string  `json:"scenario"`
	Conns     int     `json:"conns"`
	MsgsPerS  float64 `json:"msgs_per_sec"`
	P99       float64 `json:"p99_ms"`
	Delivered int64   `json:"delivered"`
	Lost      int64   `json:"lost"`
	Errors    int64   `json:"errors"`
	CPU       float64 `json:"cpu_us_per_msg"`
}

// A tiny compare run: the bench starts the three servers itself and
// reports each with ratios, in JSON. Correctness only, never speed.
func TestBenchCompareJSON(t *testing.T) {
	plot := filepath.Join(t.TempDir(), "compare.svg")
	traced := filepath.Join(t.TempDir(), "generator.trace")
	out, err := exec.Command(binary, "bench", "compare", "--conns", "60", "--rate", "300", "--duration", "1s",
		"--json", "--plot", plot, "--server-cpus", "", "--gen-cpus", "", "--trace", traced).Output()
	if err != nil {
		t.Fatalf("compare: %v\n%s", err, stderrOf(err))
	}
	// --trace leaves an execution trace that go tool trace reads.
	if b, err := os.ReadFile(traced); err != nil || !bytes.HasPrefix(b, []byte("go 1.")) || len(b) < 1024 {
		t.Errorf("--trace wrote %d bytes (%q...), err %v; want a Go execution trace", len(b), b[:min(len(b), 16)], err)
	}
	var cmp struct {
		Results []benchResult      `json:"results"`
		Ratios  map[string]float64 `json:"ratios"`
	}
	if err := json.Unmarshal(out, &cmp); err != nil {
		t.Fatalf("stdout is not the JSON report: %v\n%s", err, out)
	}
	servers := map[string]benchResult{}
	for _, r := range cmp.Results {
		servers[r.Server] = r
		if r.Delivered == 0 || r.Lost != 0 || r.Errors != 0 || r.Conns != 60 {
			t.Errorf("%s: %+v", r.Server, r)
		}
	}
	if servers["gnet"].Scenario != "chat" || servers["net"].Scenario != "chat" || servers["echo"].Scenario != "echo" {
		t.Fatalf("results = %+v", cmp.Results)
	}
	if servers["gnet"].CPU <= 0 {
		t.Errorf("no server CPU per message for gnet")
	}
	for _, k := range []string{"gnet_over_net_msgs_per_sec", "chat_over_echo_msgs_per_sec"} {
		if cmp.Ratios[k] <= 0 {
			t.Errorf("ratio %s missing: %v", k, cmp.Ratios)
		}
	}
}

// --procs splits the load over generator processes and merges the result.
func TestBenchProcsMerge(t *testing.T) {
	n := startNode(t, t.TempDir(), "--rate-limit", "100000")
	out, err := exec.Command(binary, "bench", "chat", "--addr", n.addr, "--conns", "40", "--rate", "200",
		"--duration", "1s", "--procs", "2", "--json").Output()
	if err != nil {
		t.Fatalf("bench chat --procs 2: %v", err)
	}
	var r benchResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if r.Conns != 40 || r.Delivered < 150 || r.Lost != 0 || r.Errors != 0 || r.P99 <= 0 {
		t.Fatalf("merged result %+v", r)
	}
}

// compare knows the history scenario: gnet and net each read checked
// pages, and the echo server, which has no history, is left out.
func TestBenchCompareHistory(t *testing.T) {
	out, err := exec.Command(binary, "bench", "compare", "--scenario", "history", "--conns", "20", "--seed-messages", "60",
		"--rate", "200", "--duration", "1s", "--warmup", "0", "--json", "--server-cpus", "", "--gen-cpus", "").Output()
	if err != nil {
		t.Fatalf("compare --scenario history: %v\n%s", err, stderrOf(err))
	}
	var cmp struct {
		Results []benchResult `json:"results"`
	}
	if err := json.Unmarshal(out, &cmp); err != nil {
		t.Fatalf("stdout is not the JSON report: %v\n%s", err, out)
	}
	if len(cmp.Results) != 2 || cmp.Results[0].Server != "gnet" || cmp.Results[1].Server != "net" {
		t.Fatalf("results = %+v, want gnet and net", cmp.Results)
	}
	for _, r := range cmp.Results {
		if r.Scenario != "history" || r.Delivered == 0 || r.Lost != 0 || r.Errors != 0 || r.P99 <= 0 || r.CPU <= 0 {
			t.Errorf("%s: %+v", r.Server, r)
		}
	}
}

// A repeated, saturated A/B compare, as tiny as it gets: two builds (this
// binary twice) and the echo server, two rounds interleaved, each run's
// figures kept, medians per build and server, ratios per build and
// between builds. Correctness only, never speed.
func TestBenchCompareRepeatBuilds(t *testing.T) {
	out, err := exec.Command(binary, "bench", "compare", "--conns", "50", "--duration", "2s", "--warmup", "0",
		"--saturate", "--repeat", "2", "--servers", "gnet,echo", "--binary", "a="+binary, "--binary", "b="+binary,
		"--json", "--server-cpus", "", "--gen-cpus", "").Output()
	if err != nil {
		t.Fatalf("compare --repeat 2 --saturate --binary a --binary b: %v\n%s", err, stderrOf(err))
	}
	var cmp struct {
		Results []struct {
			benchResult
			Build  string `json:"build"`
			Run    int    `json:"run"`
			Window int    `json:"window"`
		} `json:"results"`
		Summary []struct {
			Build      string `json:"build"`
			Server     string `json:"server"`
			Runs       int    `json:"runs"`
			MsgsPerSec struct {
				Median, Min, Max float64
			} `json:"msgs_per_sec"`
		} `json:"summary"`
		Ratios map[string]float64 `json:"ratios"`
	}
	if err := json.Unmarshal(out, &cmp); err != nil {
		t.Fatalf("stdout is not the JSON report: %v\n%s", err, out)
	}
	var order []string
	for _, r := range cmp.Results {
		order = append(order, fmt.Sprintf("%s-%s-%d", r.Build, r.Server, r.Run))
		if r.Delivered == 0 || r.Lost != 0 || r.Errors != 0 || r.Window != 1 {
			t.Errorf("%s %s run %d: %+v", r.Build, r.Server, r.Run, r)
		}
	}
	if got, want := strings.Join(order, " "), "a-gnet-1 b-gnet-1 -echo-1 a-gnet-2 b-gnet-2 -echo-2"; got != want {
		t.Fatalf("runs in the order %s, want %s", got, want)
	}
	if len(cmp.Summary) != 3 {
		t.Fatalf("summary %+v, want a, b and echo", cmp.Summary)
	}
	for _, s := range cmp.Summary {
		m := s.MsgsPerSec
		if s.Runs != 2 || m.Min <= 0 || m.Min > m.Median || m.Median > m.Max {
			t.Errorf("summary of %s %s: %+v", s.Build, s.Server, s)
		}
	}
	for _, k := range []string{"a/chat_over_echo_cpu_per_msg", "b/chat_over_echo_msgs_per_sec", "b_over_a/gnet_cpu_per_msg", "b_over_a/gnet_msgs_per_sec"} {
		if cmp.Ratios[k] <= 0 {
			t.Errorf("ratio %s missing: %v", k, cmp.Ratios)
		}
	}
}

// compare measures each loopchat server over TCP and WebSocket in one
// run, and reports WebSocket against TCP. Correctness only, never speed.
func TestBenchCompareOverWebSocket(t *testing.T) {
	out, err := exec.Command(binary, "bench", "compare", "--transport", "tcp,ws", "--servers", "gnet,net",
		"--conns", "40", "--rate", "200", "--duration", "1s", "--warmup", "0",
		"--json", "--server-cpus", "", "--gen-cpus", "").Output()
	if err != nil {
		t.Fatalf("compare --transport tcp,ws: %v\n%s", err, stderrOf(err))
	}
	var cmp struct {
		Results []struct {
			benchResult
			Transport string `json:"transport"`
		} `json:"results"`
		Ratios map[string]float64 `json:"ratios"`
	}
	if err := json.Unmarshal(out, &cmp); err != nil {
		t.Fatalf("stdout is not the JSON report: %v\n%s", err, out)
	}
	var order []string
	for _, r := range cmp.Results {
		order = append(order, r.Server+"/"+r.Transport)
		if r.Scenario != "chat" || r.Delivered == 0 || r.Lost != 0 || r.Errors != 0 || r.CPU <= 0 {
			t.Errorf("%s over %s: %+v", r.Server, r.Transport, r)
		}
	}
	if got, want := strings.Join(order, " "), "gnet/tcp gnet/ws net/tcp net/ws"; got != want {
		t.Fatalf("runs %s, want %s", got, want)
	}
	for _, k := range []string{"gnet_ws_over_tcp_cpu_per_msg", "net_ws_over_tcp_cpu_per_msg", "ws_gnet_over_net_cpu_per_msg", "gnet_over_net_cpu_per_msg"} {
		if cmp.Ratios[k] <= 0 {
			t.Errorf("ratio %s missing: %v", k, cmp.Ratios)
		}
	}
}

// conns over WebSocket reports the memory a connection holds: the
// server's resident growth, and what its Go runtime holds live after a
// collection, asked of the --admin-addr compare gives it.
func TestBenchCompareConnsMemory(t *testing.T) {
	out, err := exec.Command(binary, "bench", "compare", "--scenario", "conns", "--transport", "ws", "--servers", "gnet",
		"--conns", "400", "--duration", "1s", "--json", "--server-cpus", "", "--gen-cpus", "").Output()
	if err != nil {
		t.Fatalf("compare --scenario conns --transport ws: %v\n%s", err, stderrOf(err))
	}
	var cmp struct {
		Results []struct {
			benchResult
			Transport string  `json:"transport"`
			Live      float64 `json:"live_bytes_per_conn"`
			RSS       float64 `json:"rss_bytes_per_conn"`
		} `json:"results"`
	}
	if err := json.Unmarshal(out, &cmp); err != nil {
		t.Fatalf("stdout is not the JSON report: %v\n%s", err, out)
	}
	if len(cmp.Results) != 1 {
		t.Fatalf("results %+v", cmp.Results)
	}
	// A connection holds at least its session; the resident growth may be
	// anything at 400 connections (when the runtime returns pages decides
	// it), so only that it was measured.
	if r := cmp.Results[0]; r.Transport != "ws" || r.Delivered != 400 || r.Live < 200 || r.RSS == 0 {
		t.Fatalf("conns over WebSocket: %+v", r)
	}
}

// stderrOf is what a command run with Output wrote to stderr before it failed.
func stderrOf(err error) []byte {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.Stderr
	}
	return nil
}

// Command lines that cannot measure anything are refused at once, before
// a server starts or users are made.
func TestBenchFlagsRefused(t *testing.T) {
	for _, args := range [][]string{
		{"compare", "--saturate", "--step"},
		{"compare", "--saturate", "--scenario", "login"},
		{"compare", "--repeat", "-1"},
		{"compare", "--servers", "gnet,nginx"},
		{"compare", "--binary", "a=" + binary + ",a=" + binary},
		{"compare", "--binary", "old=/nonexistent/loopchat"},
		{"chat", "--saturate", "--step", "--addr", "127.0.0.1:1"},
		{"history", "--saturate", "--addr", "127.0.0.1:1"},
		{"compare", "--transport", "tcp,quic"},
		{"echo", "--transport", "ws", "--addr", "127.0.0.1:1"},
		{"chat", "--transport", "quic", "--addr", "127.0.0.1:1"},
	} {
		cmd := exec.Command(binary, append([]string{"bench"}, args...)...)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("bench %s: no error\n%s", strings.Join(args, " "), out)
			continue
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("bench %s: refused after %v", strings.Join(args, " "), took)
		}
		t.Logf("bench %s: %s", strings.Join(args, " "), bytes.TrimSpace(out))
	}
}
