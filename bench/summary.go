package bench

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
)

// Spread is one figure over the runs of a server: the median, which a
// single slow run (this box is shared) cannot move far, and the range,
// which says how far to trust it.
type Spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// spreadOf is the median (of the two middle values, for an even count)
// and the range of vs; zero for none.
func spreadOf(vs []float64) Spread {
	if len(vs) == 0 {
		return Spread{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + m) / 2
	}
	return Spread{Median: m, Min: s[0], Max: s[len(s)-1]}
}

// Summary is every run of one server (of one build) in a compare, figure
// by figure. Each figure's median is taken on its own, so the medians of
// one summary may come from different runs.
type Summary struct {
	Build     string `json:"build,omitempty"`
	Server    string `json:"server"`
	Transport string `json:"transport,omitempty"`
	Scenario  string `json:"scenario"`
	Runs      int    `json:"runs"`
	// Window is the saturated runs' window (see Result.Window).
	Window             int    `json:"window,omitempty"`
	MsgsPerSec         Spread `json:"msgs_per_sec"`
	CPUMicrosPerMsg    Spread `json:"cpu_us_per_msg"`
	GenCPUMicrosPerMsg Spread `json:"gen_cpu_us_per_msg"`
	P50ms              Spread `json:"p50_ms"`
	P99ms              Spread `json:"p99_ms"`
	RSSBytesPerConn    Spread `json:"rss_bytes_per_conn"`
	LiveBytesPerConn   Spread `json:"live_bytes_per_conn"`
	// Lost, Duplicates and Errors add up over the runs: any of them makes
	// the figures suspect, whichever run it was.
	Lost       int64 `json:"lost"`
	Duplicates int64 `json:"duplicates"`
	Errors     int64 `json:"errors"`
}

// Summarize groups results by build, server, transport and scenario, in
// the order each first appears, and takes each figure's median and range.
func Summarize(results []Result) []Summary {
	type key struct{ build, server, transport, scenario string }
	var order []key
	groups := map[key][]Result{}
	for _, r := range results {
		k := key{r.Build, r.Server, transportOf(r.Transport), r.Scenario}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	out := make([]Summary, 0, len(order))
	for _, k := range order {
		rs := groups[k]
		fig := func(f func(Result) float64) Spread {
			vs := make([]float64, len(rs))
			for i, r := range rs {
				vs[i] = f(r)
			}
			return spreadOf(vs)
		}
		s := Summary{Build: k.build, Server: k.server, Transport: k.transport, Scenario: k.scenario, Runs: len(rs), Window: rs[0].Window,
			MsgsPerSec:         fig(func(r Result) float64 { return r.MsgsPerSec }),
			CPUMicrosPerMsg:    fig(func(r Result) float64 { return r.CPUMicrosPerMsg }),
			GenCPUMicrosPerMsg: fig(func(r Result) float64 { return r.GenCPUMicrosPerMsg }),
			P50ms:              fig(func(r Result) float64 { return r.P50ms }),
			P99ms:              fig(func(r Result) float64 { return r.P99ms }),
			RSSBytesPerConn:    fig(func(r Result) float64 { return r.RSSBytesPerConn }),
			LiveBytesPerConn:   fig(func(r Result) float64 { return r.LiveBytesPerConn }),
		}
		for _, r := range rs {
			s.Lost += r.Lost
			s.Duplicates += r.Duplicates
			s.Errors += r.Errors
		}
		out = append(out, s)
	}
	return out
}

// transportOf is t, or TCP for results from before WebSocket.
func transportOf(t string) string {
	if t == "" {
		return TransportTCP
	}
	return t
}

// Ratios compares the summaries' medians. Per build (a prefix "NAME/"
// when builds are named): gnet÷net of throughput and of server CPU per
// message, net÷gnet of memory per connection, and chat (gnet) ÷ echo of
// throughput and of server CPU per message — the last has a floor of
// about 2, since a chat message costs the server two socket reads and
// two writes where an echo costs one each. Those are over TCP; with
// WebSocket runs too, the same gnet÷net ratios over WebSocket ("ws_..."),
// and WebSocket÷TCP per server ("gnet_ws_over_tcp_cpu_per_msg"). Between
// builds, each later build against the first, per server
// ("NEW_over_OLD/gnet_cpu_per_msg", over TCP): the same-run A/B this
// project measures regressions with. For CPU and memory lower is better;
// for throughput higher.
func Ratios(sums []Summary) map[string]float64 {
	out := map[string]float64{}
	ratio := func(name string, a, b float64) {
		if a > 0 && b > 0 {
			out[name] = a / b
		}
	}
	findOver := func(build, server, transport string) Summary {
		for _, s := range sums {
			if s.Server == server && (s.Build == build || server == "echo") && transportOf(s.Transport) == transport {
				return s
			}
		}
		return Summary{}
	}
	find := func(build, server string) Summary { return findOver(build, server, TransportTCP) }
	// The echo server is the generator's own, one per round whatever the
	// builds, so it has no build of its own to group by.
	var builds []string
	for _, s := range sums {
		if s.Server != "echo" && !slices.Contains(builds, s.Build) {
			builds = append(builds, s.Build)
		}
	}
	e := find("", "echo")
	for _, b := range builds {
		prefix := ""
		if b != "" {
			prefix = b + "/"
		}
		g, n := find(b, "gnet"), find(b, "net")
		ratio(prefix+"gnet_over_net_msgs_per_sec", g.MsgsPerSec.Median, n.MsgsPerSec.Median)
		ratio(prefix+"gnet_over_net_cpu_per_msg", g.CPUMicrosPerMsg.Median, n.CPUMicrosPerMsg.Median)
		ratio(prefix+"net_over_gnet_rss_per_conn", n.RSSBytesPerConn.Median, g.RSSBytesPerConn.Median)
		ratio(prefix+"net_over_gnet_live_per_conn", n.LiveBytesPerConn.Median, g.LiveBytesPerConn.Median)
		ratio(prefix+"chat_over_echo_msgs_per_sec", g.MsgsPerSec.Median, e.MsgsPerSec.Median)
		ratio(prefix+"chat_over_echo_cpu_per_msg", g.CPUMicrosPerMsg.Median, e.CPUMicrosPerMsg.Median)
		gw, nw := findOver(b, "gnet", TransportWS), findOver(b, "net", TransportWS)
		ratio(prefix+"ws_gnet_over_net_msgs_per_sec", gw.MsgsPerSec.Median, nw.MsgsPerSec.Median)
		ratio(prefix+"ws_gnet_over_net_cpu_per_msg", gw.CPUMicrosPerMsg.Median, nw.CPUMicrosPerMsg.Median)
		ratio(prefix+"ws_net_over_gnet_rss_per_conn", nw.RSSBytesPerConn.Median, gw.RSSBytesPerConn.Median)
		ratio(prefix+"ws_net_over_gnet_live_per_conn", nw.LiveBytesPerConn.Median, gw.LiveBytesPerConn.Median)
		for _, server := range []string{"gnet", "net"} {
			t, w := find(b, server), findOver(b, server, TransportWS)
			ratio(prefix+server+"_ws_over_tcp_msgs_per_sec", w.MsgsPerSec.Median, t.MsgsPerSec.Median)
			ratio(prefix+server+"_ws_over_tcp_cpu_per_msg", w.CPUMicrosPerMsg.Median, t.CPUMicrosPerMsg.Median)
			ratio(prefix+server+"_ws_over_tcp_rss_per_conn", w.RSSBytesPerConn.Median, t.RSSBytesPerConn.Median)
			ratio(prefix+server+"_ws_over_tcp_live_per_conn", w.LiveBytesPerConn.Median, t.LiveBytesPerConn.Median)
		}
	}
	for _, b := range builds[min(1, len(builds)):] {
		for _, server := range []string{"gnet", "net"} {
			o, n := find(builds[0], server), find(b, server)
			prefix := fmt.Sprintf("%s_over_%s/%s_", b, builds[0], server)
			ratio(prefix+"msgs_per_sec", n.MsgsPerSec.Median, o.MsgsPerSec.Median)
			ratio(prefix+"cpu_per_msg", n.CPUMicrosPerMsg.Median, o.CPUMicrosPerMsg.Median)
			ratio(prefix+"rss_per_conn", n.RSSBytesPerConn.Median, o.RSSBytesPerConn.Median)
		}
	}
	return out
}

// WriteSummary prints one line per build and server: the median of each
// figure with its range over the runs in brackets (none for one run).
func WriteSummary(w io.Writer, sums []Summary) {
	if len(sums) == 0 {
		return
	}
	named, rss, live, ws := false, false, false, false
	runs := 0
	for _, s := range sums {
		named = named || s.Build != ""
		ws = ws || s.Transport == TransportWS
		rss = rss || s.RSSBytesPerConn.Median != 0
		live = live || s.LiveBytesPerConn.Median != 0
		runs = max(runs, s.Runs)
	}
	how := sums[0].Scenario
	if sums[0].Window > 0 {
		how += fmt.Sprintf(", saturated (closed loop, %d in flight per sender)", sums[0].Window)
	}
	if runs > 1 {
		fmt.Fprintf(w, "%s: medians of %d runs [min–max]\n", how, runs)
	} else {
		fmt.Fprintf(w, "%s: one run\n", how)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	var head []string
	if named {
		head = append(head, "build")
	}
	head = append(head, "server")
	if ws {
		head = append(head, "transport")
	}
	head = append(head, "delivered/s", "server µs/msg", "gen µs/msg", "p50 ms", "p99 ms")
	if rss {
		head = append(head, "RSS B/conn")
	}
	if live {
		head = append(head, "live B/conn")
	}
	head = append(head, "lost/dup/err")
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, s := range sums {
		var row []string
		if named {
			row = append(row, orDash(s.Build))
		}
		row = append(row, s.Server)
		if ws {
			row = append(row, s.Transport)
		}
		row = append(row, s.MsgsPerSec.format("%.0f"), s.CPUMicrosPerMsg.format("%.1f"),
			s.GenCPUMicrosPerMsg.format("%.1f"), s.P50ms.format("%.2f"), s.P99ms.format("%.2f"))
		if rss {
			row = append(row, s.RSSBytesPerConn.format("%.0f"))
		}
		if live {
			row = append(row, s.LiveBytesPerConn.format("%.0f"))
		}
		row = append(row, fmt.Sprintf("%d/%d/%d", s.Lost, s.Duplicates, s.Errors))
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
	for _, s := range sums {
		if note := s.saturationNote(); note != "" {
			fmt.Fprintln(w, note)
		}
	}
	switch sums[0].Scenario {
	case "history":
		fmt.Fprintln(w, "history: delivered/s are 50-message History pages per second; CPU and latency are per page")
	case "conns", "login":
		fmt.Fprintln(w, sums[0].Scenario+": delivered/s are logins per second; CPU is per login")
	}
}

// saturationNote says when a saturated figure is not the server's limit:
// a closed loop delivers at most (messages in flight) ÷ (latency when
// idle), and a chat message waits for an fdatasync, so a few pairs cannot
// fill a server; and the generator's CPU can run out first. Busy is in
// CPUs: delivered/s × µs per message.
func (s Summary) saturationNote() string {
	if s.Window == 0 || s.CPUMicrosPerMsg.Median == 0 {
		return ""
	}
	server := s.MsgsPerSec.Median * s.CPUMicrosPerMsg.Median / 1e6
	gen := s.MsgsPerSec.Median * s.GenCPUMicrosPerMsg.Median / 1e6
	const busy = 0.8
	who := s.Server
	if s.Transport == TransportWS {
		who += "/ws"
	}
	if s.Build != "" {
		who = s.Build + "/" + s.Server
	}
	switch {
	case server >= busy:
		return ""
	case gen >= busy:
		return fmt.Sprintf("note: %s: the server used %.2f CPU, the generator %.2f: the generator was the limit", who, server, gen)
	default:
		return fmt.Sprintf("note: %s: the server used %.2f CPU, the generator %.2f: not saturated, raise --conns or --window", who, server, gen)
	}
}

// format prints the median, and the range when the runs differ.
func (s Spread) format(f string) string {
	if s == (Spread{}) {
		return "-"
	}
	if s.Min == s.Max {
		return fmt.Sprintf(f, s.Median)
	}
	return fmt.Sprintf(f+" ["+f+"–"+f+"]", s.Median, s.Min, s.Max)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ratioNotes say how to read a ratio, by the end of its name.
var ratioNotes = []struct{ suffix, note string }{
	{"chat_over_echo_cpu_per_msg", "floor ~2: a chat message is two reads and two writes, an echo one each"},
	{"net_over_gnet_rss_per_conn", "gnet holds 1/x of net's memory per connection"},
	{"net_over_gnet_live_per_conn", "gnet holds 1/x of net's memory per connection"},
	{"live_per_conn", "lower is better"},
	{"cpu_per_msg", "lower is better"},
	{"rss_per_conn", "lower is better"},
	{"msgs_per_sec", "higher is better"},
}

// WriteRatios prints the ratios sorted by name, each with how to read it.
func WriteRatios(w io.Writer, ratios map[string]float64) {
	names := make([]string, 0, len(ratios))
	for k := range ratios {
		names = append(names, k)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	for _, k := range names {
		note := ""
		for _, n := range ratioNotes {
			if strings.HasSuffix(k, n.suffix) {
				note = "  (" + n.note + ")"
				break
			}
		}
		fmt.Fprintf(tw, "%s\t= %.2f%s\n", k, ratios[k], note)
	}
	tw.Flush()
}
