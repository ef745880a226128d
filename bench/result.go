package bench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Result is one scenario run against one server.
type Result struct {
	// Build names the loopchat binary the server ran from, when compare
	// has several (--binary NAME=PATH); empty for one.
	Build  string `json:"build,omitempty"`
	Server string `json:"server"`
	// Transport is what the generator spoke: TransportTCP or TransportWS
	// (empty in results from before WebSocket: TCP).
	Transport string `json:"transport,omitempty"`
	Scenario  string `json:"scenario"`
	// Run is the round of a repeated compare (1, 2, ...): each round runs
	// every server once, so runs of one server are spread over the session.
	Run   int `json:"run,omitempty"`
	Conns int `json:"conns"`
	// OfferedRate is the open-loop rate asked for (msgs, logins or
	// History requests per second); 0 means as fast as possible.
	OfferedRate float64 `json:"offered_rate,omitempty"`
	// Window is, for a saturated run (closed loop), the messages each
	// sender kept in flight; 0 for an open-loop run.
	Window int `json:"window,omitempty"`
	// MsgsPerSec is what got through: delivered messages (chat, group
	// deliveries, echoes), logins, or for history checked 50-message
	// History pages, per second. The per-message figures below (latency,
	// CPU) are then per page, Sent counts History requests and Delivered
	// the good pages.
	MsgsPerSec float64 `json:"msgs_per_sec"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	P999ms     float64 `json:"p999_ms"`
	// RSSBytesPerConn is the server's resident memory growth per
	// connection after settling (conns scenario).
	RSSBytesPerConn float64 `json:"rss_bytes_per_conn,omitempty"`
	// LiveBytesPerConn is the growth per connection of what the server's
	// Go runtime holds in use (heap and stacks) right after a collection,
	// from its admin server (conns scenario, Config.ServerAdmin): what a
	// connection costs, without the resident size's dependence on when
	// the runtime last collected and returned pages.
	LiveBytesPerConn float64 `json:"live_bytes_per_conn,omitempty"`
	// CPUMicrosPerMsg is server CPU time per delivered message (or login,
	// or page).
	CPUMicrosPerMsg float64 `json:"cpu_us_per_msg,omitempty"`
	// GenCPUMicrosPerMsg is the load generator's own CPU time per
	// delivered message (or login, or page): on one machine the two share
	// the CPUs.
	GenCPUMicrosPerMsg float64 `json:"gen_cpu_us_per_msg,omitempty"`
	// LateP99ms is how late the generator itself sent (p99 of the time from
	// when a message was due to when it was written), for open-loop
	// scenarios. Latencies are measured from the due time, so they include
	// this; when it is a large part of P99ms, the generator (or the CPUs it
	// shares) rather than the server set the tail.
	LateP99ms float64 `json:"late_p99_ms,omitempty"`
	// SendOKP99ms is, for chat, the p99 of the time from when a message was
	// due to its SendOK: the sender's side of the latency (the store's
	// durable append), as against P99ms (until the receiver has it).
	SendOKP99ms float64 `json:"sendok_p99_ms,omitempty"`
	// Reach99ms and Reach100ms are, for broadcast, the slowest
	// broadcast's time from its PUBLISH until 99% and until all of the
	// connections had it (0: some broadcast never got that far).
	Reach99ms  float64 `json:"reach_99_ms,omitempty"`
	Reach100ms float64 `json:"reach_100_ms,omitempty"`
	// IdleCPUPercent is server CPU use while the connections sit idle.
	IdleCPUPercent float64 `json:"idle_cpu_percent,omitempty"`
	ConnectPerSec  float64 `json:"connect_per_sec,omitempty"`
	Sent           int64   `json:"sent"`
	Delivered      int64   `json:"delivered"`
	Lost           int64   `json:"lost"`
	Duplicates     int64   `json:"duplicates"`
	// Errors counts failed requests; for history also pages that failed
	// their checks (see History).
	Errors   int64   `json:"errors"`
	Seconds  float64 `json:"seconds"`
	Timeline []Point `json:"timeline,omitempty"`

	hist *hdrhistogram.Histogram
	// Hist carries the latency histogram between generator processes.
	Hist *hdrhistogram.Snapshot `json:"hist,omitempty"`
}

// Point is one second of a run, for plots.
type Point struct {
	Second     float64 `json:"t"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	// LateP99ms is the generator's own lateness in this second (see
	// Result.LateP99ms): a second slow here is the generator's, not the
	// server's.
	LateP99ms float64 `json:"late_p99_ms,omitempty"`
}

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, 120_000_000, 3) } // 1µs .. 120s

// recorder collects latencies (µs) from many goroutines, overall and per
// second for the timeline.
type recorder struct {
	mu      sync.Mutex
	start   time.Time
	all     *hdrhistogram.Histogram
	second  *hdrhistogram.Histogram
	secIdx  int
	count   int64
	points  []Point
	lastCnt int64
}

func newRecorder() *recorder {
	return &recorder{start: time.Now(), all: newHist(), second: newHist()}
}

func (r *recorder) record(d time.Duration) {
	us := max(d.Microseconds(), 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.roll()
	_ = r.all.RecordValue(us)
	_ = r.second.RecordValue(us)
	r.count++
}

// roll closes the seconds that have passed; r.mu held.
func (r *recorder) roll() {
	for int(time.Since(r.start)/time.Second) > r.secIdx {
		r.points = append(r.points, Point{Second: float64(r.secIdx + 1), MsgsPerSec: float64(r.count - r.lastCnt),
			P50ms: us2ms(r.second.ValueAtQuantile(50)), P99ms: us2ms(r.second.ValueAtQuantile(99))})
		r.lastCnt = r.count
		r.second.Reset()
		r.secIdx++
	}
}

func (r *recorder) snapshot() (count int64, p99 float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count, us2ms(r.all.ValueAtQuantile(99))
}

// fill writes the latency figures into res.
func (r *recorder) fill(res *Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.roll()
	res.hist = r.all
	res.P50ms = us2ms(r.all.ValueAtQuantile(50))
	res.P99ms = us2ms(r.all.ValueAtQuantile(99))
	res.P999ms = us2ms(r.all.ValueAtQuantile(99.9))
	res.Timeline = append([]Point(nil), r.points...)
}

// fillLate writes r, a record of the generator's own lateness, into res:
// its p99 over the phase and, second by second, beside the latency
// timeline that fill wrote.
func (r *recorder) fillLate(res *Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.roll()
	res.LateP99ms = us2ms(r.all.ValueAtQuantile(99))
	for i, pt := range r.points {
		if i < len(res.Timeline) {
			res.Timeline[i].LateP99ms = pt.P99ms
		}
	}
}

func us2ms(us int64) float64 { return float64(us) / 1000 }

// quantiles is a latency histogram many goroutines record into, for the
// figures that need no per-second timeline.
type quantiles struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

func newQuantiles() *quantiles { return &quantiles{h: newHist()} }

func (q *quantiles) record(d time.Duration) {
	q.mu.Lock()
	_ = q.h.RecordValue(max(d.Microseconds(), 1))
	q.mu.Unlock()
}

// p99ms is the 99th percentile in milliseconds (0 when nothing was recorded).
func (q *quantiles) p99ms() float64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return us2ms(q.h.ValueAtQuantile(99))
}

// Merge folds the results of several generator processes of one run.
func Merge(parts []Result) Result {
	if len(parts) == 0 {
		return Result{}
	}
	out := parts[0]
	out.Timeline = nil
	h := newHist()
	// Every part sampled the same server over about the same time, so the
	// server's CPU is the largest part's measure, not the sum; generator
	// CPU adds up over the processes.
	var serverCPU, genCPU float64
	for _, p := range parts {
		d := float64(p.Delivered)
		serverCPU = max(serverCPU, p.CPUMicrosPerMsg*d)
		genCPU += p.GenCPUMicrosPerMsg * d
	}
	for i, p := range parts {
		switch {
		case p.Hist != nil:
			h.Merge(hdrhistogram.Import(p.Hist))
		case p.hist != nil:
			h.Merge(p.hist)
		}
		if i == 0 {
			continue
		}
		out.Conns += p.Conns
		out.MsgsPerSec += p.MsgsPerSec
		out.ConnectPerSec += p.ConnectPerSec
		out.Sent += p.Sent
		out.Delivered += p.Delivered
		out.Lost += p.Lost
		out.Duplicates += p.Duplicates
		out.Errors += p.Errors
		out.Seconds = max(out.Seconds, p.Seconds)
		// Percentiles of the parts cannot be merged exactly without their
		// histograms; the worst part's is the honest bound.
		out.LateP99ms = max(out.LateP99ms, p.LateP99ms)
		out.SendOKP99ms = max(out.SendOKP99ms, p.SendOKP99ms)
	}
	if out.Delivered > 0 {
		out.CPUMicrosPerMsg = serverCPU / float64(out.Delivered)
		out.GenCPUMicrosPerMsg = genCPU / float64(out.Delivered)
	}
	out.hist = h
	out.P50ms = us2ms(h.ValueAtQuantile(50))
	out.P99ms = us2ms(h.ValueAtQuantile(99))
	out.P999ms = us2ms(h.ValueAtQuantile(99.9))
	// Timelines add up second by second.
	for _, p := range parts {
		for i, pt := range p.Timeline {
			if i >= len(out.Timeline) {
				out.Timeline = append(out.Timeline, pt)
				continue
			}
			out.Timeline[i].MsgsPerSec += pt.MsgsPerSec
			out.Timeline[i].P50ms = max(out.Timeline[i].P50ms, pt.P50ms)
			out.Timeline[i].P99ms = max(out.Timeline[i].P99ms, pt.P99ms)
			out.Timeline[i].LateP99ms = max(out.Timeline[i].LateP99ms, pt.LateP99ms)
		}
	}
	return out
}

// ExportHist keeps the histogram in the JSON (for --procs merging).
func (r *Result) ExportHist() {
	if r.hist != nil {
		r.Hist = r.hist.Export()
	}
}

// cpuMeter measures the CPU time the server's processes (when their PIDs
// are known) and this generator process spend over one measured phase.
type cpuMeter struct {
	serverPIDs   []int
	server, self time.Duration
}

// cpuPIDs are the processes whose CPU is the server's: ServerPID and
// CPUPIDs.
func (c Config) cpuPIDs() []int {
	var out []int
	if c.ServerPID > 0 {
		out = append(out, c.ServerPID)
	}
	return append(out, c.CPUPIDs...)
}

func startCPU(serverPIDs ...int) cpuMeter {
	m := cpuMeter{serverPIDs: serverPIDs}
	m.server, _ = sumCPU(serverPIDs)
	_, m.self, _ = procStats(os.Getpid())
	return m
}

// sumCPU is the CPU time of pids together.
func sumCPU(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, pid := range pids {
		_, cpu, err := procStats(pid)
		if err != nil {
			return 0, err
		}
		total += cpu
	}
	return total, nil
}

// fill sets res's CPU figures per delivered message (or login).
func (m cpuMeter) fill(res *Result) {
	if res.Delivered == 0 {
		return
	}
	n := float64(res.Delivered)
	if len(m.serverPIDs) > 0 {
		if cpu, err := sumCPU(m.serverPIDs); err == nil {
			res.CPUMicrosPerMsg = float64((cpu - m.server).Microseconds()) / n
		}
	}
	if _, cpu, err := procStats(os.Getpid()); err == nil {
		res.GenCPUMicrosPerMsg = float64((cpu - m.self).Microseconds()) / n
	}
}

// procStats reads a process's resident memory (bytes) and CPU time.
func procStats(pid int) (rss int64, cpu time.Duration, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			rss = kb * 1024
		}
	}
	f.Close()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name (which may hold spaces) start at ')'.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return rss, time.Duration(utime+stime) * time.Second / clkTck, nil
}
