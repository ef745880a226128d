package bench

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

func TestSpreadOfMedianAndRange(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want Spread
	}{
		{nil, Spread{}},
		{[]float64{7}, Spread{7, 7, 7}},
		{[]float64{9, 1, 5}, Spread{5, 1, 9}},
		// An even count takes the mean of the two middle values.
		{[]float64{4, 10}, Spread{7, 4, 10}},
		{[]float64{40, 10, 30, 20}, Spread{25, 10, 40}},
		// One wild run moves the median by one place, not by its size.
		{[]float64{41, 43, 400}, Spread{43, 41, 400}},
	} {
		in := append([]float64(nil), tc.in...)
		if got := spreadOf(tc.in); got != tc.want {
			t.Errorf("spreadOf(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.in[i] {
				t.Fatalf("spreadOf reordered its input: %v, was %v", tc.in, in)
			}
		}
	}
}

// Runs are grouped by build and server in the order they first ran; each
// figure's median is its own, and the counts of trouble add up.
func TestSummarizeGroupsByBuildAndServer(t *testing.T) {
	var results []Result
	for run := 1; run <= 3; run++ {
		f := float64(run)
		results = append(results,
			Result{Build: "old", Server: "gnet", Scenario: "chat", Run: run, MsgsPerSec: 1000 * f, CPUMicrosPerMsg: 50 - f, P99ms: 10 * f},
			Result{Build: "new", Server: "gnet", Scenario: "chat", Run: run, MsgsPerSec: 2000 * f, CPUMicrosPerMsg: 40 - f, Lost: 1},
			Result{Server: "echo", Scenario: "echo", Run: run, MsgsPerSec: 5000, CPUMicrosPerMsg: 10 + f, Window: 2})
	}
	sums := Summarize(results)
	if len(sums) != 3 {
		t.Fatalf("%d summaries, want 3: %+v", len(sums), sums)
	}
	old, nw, echo := sums[0], sums[1], sums[2]
	if old.Build != "old" || old.Server != "gnet" || nw.Build != "new" || echo.Server != "echo" || echo.Build != "" {
		t.Fatalf("summaries out of order: %+v", sums)
	}
	if old.Runs != 3 || old.MsgsPerSec != (Spread{2000, 1000, 3000}) || old.CPUMicrosPerMsg != (Spread{48, 47, 49}) || old.P99ms != (Spread{20, 10, 30}) {
		t.Errorf("old gnet: %+v", old)
	}
	if nw.Lost != 3 || nw.MsgsPerSec.Median != 4000 {
		t.Errorf("new gnet: lost %d (want 3 over the runs), median %v", nw.Lost, nw.MsgsPerSec.Median)
	}
	if echo.Window != 2 || echo.CPUMicrosPerMsg != (Spread{12, 11, 13}) {
		t.Errorf("echo: %+v", echo)
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// With one unnamed build the ratios keep their old names; chat ÷ echo and
// gnet ÷ net come from the medians, not from any one run.
func TestRatiosFromMedians(t *testing.T) {
	sums := []Summary{
		{Server: "gnet", Scenario: "chat", MsgsPerSec: Spread{Median: 20000}, CPUMicrosPerMsg: Spread{Median: 40}, RSSBytesPerConn: Spread{Median: 1000}},
		{Server: "net", Scenario: "chat", MsgsPerSec: Spread{Median: 16000}, CPUMicrosPerMsg: Spread{Median: 50}, RSSBytesPerConn: Spread{Median: 20000}},
		{Server: "echo", Scenario: "echo", MsgsPerSec: Spread{Median: 40000}, CPUMicrosPerMsg: Spread{Median: 16}},
	}
	got := Ratios(sums)
	want := map[string]float64{
		"gnet_over_net_msgs_per_sec":  1.25,
		"gnet_over_net_cpu_per_msg":   0.8,
		"net_over_gnet_rss_per_conn":  20,
		"chat_over_echo_msgs_per_sec": 0.5,
		"chat_over_echo_cpu_per_msg":  2.5,
	}
	if len(got) != len(want) {
		t.Fatalf("ratios %v, want %v", got, want)
	}
	for k, v := range want {
		if !near(got[k], v) {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	// A figure not measured (0) makes no ratio rather than 0 or +Inf.
	sums[1].CPUMicrosPerMsg.Median = 0
	if _, ok := Ratios(sums)["gnet_over_net_cpu_per_msg"]; ok {
		t.Errorf("a ratio against an unmeasured figure")
	}
}

// WebSocket runs beside TCP ones: WebSocket over TCP per server, and gnet
// over net among the WebSocket runs; the TCP ratios keep their names.
func TestRatiosOverWebSocket(t *testing.T) {
	sums := []Summary{
		{Server: "gnet", Transport: TransportTCP, Scenario: "conns", CPUMicrosPerMsg: Spread{Median: 40}, RSSBytesPerConn: Spread{Median: 1000},
			LiveBytesPerConn: Spread{Median: 1200}},
		{Server: "gnet", Transport: TransportWS, Scenario: "conns", CPUMicrosPerMsg: Spread{Median: 50}, RSSBytesPerConn: Spread{Median: 1200},
			LiveBytesPerConn: Spread{Median: 1500}},
		{Server: "net", Transport: TransportTCP, Scenario: "conns", CPUMicrosPerMsg: Spread{Median: 60}, RSSBytesPerConn: Spread{Median: 20000}},
		{Server: "net", Transport: TransportWS, Scenario: "conns", CPUMicrosPerMsg: Spread{Median: 75}, RSSBytesPerConn: Spread{Median: 24000}},
	}
	got := Ratios(sums)
	for k, v := range map[string]float64{
		"gnet_over_net_cpu_per_msg":      40.0 / 60,
		"net_over_gnet_rss_per_conn":     20,
		"ws_gnet_over_net_cpu_per_msg":   50.0 / 75,
		"ws_net_over_gnet_rss_per_conn":  20,
		"gnet_ws_over_tcp_cpu_per_msg":   1.25,
		"gnet_ws_over_tcp_rss_per_conn":  1.2,
		"net_ws_over_tcp_cpu_per_msg":    1.25,
		"net_ws_over_tcp_rss_per_conn":   1.2,
		"gnet_ws_over_tcp_live_per_conn": 1.25,
	} {
		if !near(got[k], v) {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	var b strings.Builder
	WriteSummary(&b, sums)
	if !strings.Contains(b.String(), "transport") || !strings.Contains(b.String(), "gnet    ws") || !strings.Contains(b.String(), "live B/conn") {
		t.Errorf("summary without its transport column:\n%s", b.String())
	}
}

// With named builds every ratio is per build, the one echo server serves
// both, and each later build is compared with the first, server by server.
func TestRatiosBetweenBuilds(t *testing.T) {
	sums := []Summary{
		{Build: "old", Server: "gnet", MsgsPerSec: Spread{Median: 10000}, CPUMicrosPerMsg: Spread{Median: 50}},
		{Build: "new", Server: "gnet", MsgsPerSec: Spread{Median: 12000}, CPUMicrosPerMsg: Spread{Median: 40}},
		{Build: "old", Server: "net", MsgsPerSec: Spread{Median: 8000}, CPUMicrosPerMsg: Spread{Median: 60}},
		{Build: "new", Server: "net", MsgsPerSec: Spread{Median: 8000}, CPUMicrosPerMsg: Spread{Median: 66}},
		{Server: "echo", MsgsPerSec: Spread{Median: 40000}, CPUMicrosPerMsg: Spread{Median: 20}},
	}
	got := Ratios(sums)
	for k, v := range map[string]float64{
		"old/chat_over_echo_cpu_per_msg":  2.5,
		"new/chat_over_echo_cpu_per_msg":  2,
		"old/gnet_over_net_cpu_per_msg":   50.0 / 60,
		"new/gnet_over_net_msgs_per_sec":  1.5,
		"new_over_old/gnet_cpu_per_msg":   0.8,
		"new_over_old/gnet_msgs_per_sec":  1.2,
		"new_over_old/net_cpu_per_msg":    1.1,
		"new_over_old/net_msgs_per_sec":   1,
		"old/chat_over_echo_msgs_per_sec": 0.25,
	} {
		if !near(got[k], v) {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	for k := range got {
		if !strings.Contains(k, "/") {
			t.Errorf("ratio %s names no build", k)
		}
	}
}

func TestWriteSummaryAndRatios(t *testing.T) {
	sums := []Summary{
		{Build: "old", Server: "gnet", Scenario: "chat", Runs: 3, Window: 1, MsgsPerSec: Spread{18234, 17900, 18500},
			CPUMicrosPerMsg: Spread{51.2, 50.1, 53}, GenCPUMicrosPerMsg: Spread{38, 37, 39}, P50ms: Spread{50, 40, 60}, P99ms: Spread{90, 80, 120}},
		{Server: "echo", Scenario: "echo", Runs: 3, Window: 1, MsgsPerSec: Spread{40000, 40000, 40000}, Lost: 2},
	}
	var b bytes.Buffer
	WriteSummary(&b, sums)
	out := b.String()
	for _, want := range []string{
		"chat, saturated (closed loop, 1 in flight per sender): medians of 3 runs [min–max]",
		"build", "server", "delivered/s", "server µs/msg", "gen µs/msg", "p50 ms", "p99 ms", "lost/dup/err",
		"18234 [17900–18500]", "51.2 [50.1–53.0]", "38.0 [37.0–39.0]",
		// A figure the same in every run prints once; one not measured as -.
		"40000  ", "0/0/0", "2/0/0",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "RSS") {
		t.Errorf("an RSS column with no RSS measured:\n%s", out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[3], "-") {
		t.Errorf("want a title, a header and one line per summary (echo's build as -):\n%s", out)
	}

	// A saturated figure whose server was not near a full CPU is flagged,
	// with who was the limit.
	sums[0].CPUMicrosPerMsg.Median = 20 // 0.36 CPU
	b.Reset()
	WriteSummary(&b, sums)
	if !strings.Contains(b.String(), "note: old/gnet: the server used 0.36 CPU, the generator 0.69: not saturated, raise --conns or --window") {
		t.Errorf("no note of a server not saturated:\n%s", b.String())
	}
	sums[0].GenCPUMicrosPerMsg.Median = 50 // 0.91 CPU
	b.Reset()
	WriteSummary(&b, sums)
	if !strings.Contains(b.String(), "note: old/gnet: the server used 0.36 CPU, the generator 0.91: the generator was the limit") {
		t.Errorf("no note of the generator as the limit:\n%s", b.String())
	}

	b.Reset()
	WriteRatios(&b, map[string]float64{"gnet_over_net_cpu_per_msg": 0.8, "chat_over_echo_cpu_per_msg": 2.55})
	want := "chat_over_echo_cpu_per_msg = 2.55  (floor ~2: a chat message is two reads and two writes, an echo one each)\n" +
		"gnet_over_net_cpu_per_msg  = 0.80  (lower is better)\n"
	if b.String() != want {
		t.Errorf("ratios:\n%s\nwant:\n%s", b.String(), want)
	}
}
