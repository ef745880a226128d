package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
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
		t.Fatalf("compare: %v", err)
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
		t.Fatalf("compare --scenario history: %v", err)
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
