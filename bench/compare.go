package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CompareConfig is a side-by-side run: the same scenario against each
// server, all started here.
type CompareConfig struct {
	Config
	// Scenario is chat (default), conns, login, group or history. The echo
	// server always runs the echo scenario with the same connections and
	// rates, and only beside chat or echo.
	Scenario string
	// Binary is the loopchat executable to start servers from, and the
	// echo server always.
	Binary string
	// Builds are loopchat executables to compare with each other, by name,
	// in one interleaved run: each loopchat server runs from each build in
	// turn. Empty means Binary alone, unnamed.
	Builds []Build
	// Servers to compare, from "gnet", "net", "echo". Empty means all three.
	Servers []string
	// Transports each loopchat server is measured over, in turn:
	// TransportTCP, TransportWS (the server then runs with --ws-listen and
	// the generator connects there). The echo server speaks TCP only.
	// Empty means TCP alone.
	Transports []string
	// Repeat is how many rounds to run: each round runs every server (of
	// every build) once, in the same order, so a box that slows down
	// during the session slows every server alike. Zero means 1.
	Repeat int
	// Loops for the gnet servers. Zero means 1 (one CPU for the server).
	Loops int
	// ServerCPUs pins servers with taskset -c (e.g. "0"); empty means no pinning.
	ServerCPUs string
	// Dir holds the servers' data, a fresh directory per run. Empty means
	// a temp dir, each run's removed after it.
	Dir string
}

// Build is one loopchat executable under comparison.
type Build struct {
	Name   string `json:"name"`
	Binary string `json:"binary"`
}

// buildName is what a build may be called: it goes into ratio names
// ("new_over_old/gnet_cpu_per_msg") and directory names.
var buildName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ParseBuilds reads --binary values: NAME=PATH, or a bare PATH named
// after its file.
func ParseBuilds(specs []string) ([]Build, error) {
	var out []Build
	for _, spec := range specs {
		name, path, ok := strings.Cut(spec, "=")
		if !ok {
			name, path = filepath.Base(spec), spec
		}
		if path == "" {
			return nil, fmt.Errorf("--binary %q: no path", spec)
		}
		if !buildName.MatchString(name) {
			return nil, fmt.Errorf("--binary %q: a build name is letters, digits, '.', '_' and '-'", spec)
		}
		for _, b := range out {
			if b.Name == name {
				return nil, fmt.Errorf("--binary: build %q named twice", name)
			}
		}
		out = append(out, Build{Name: name, Binary: path})
	}
	return out, nil
}

// Validate checks cc before anything starts, and fills in its defaults.
func (cc *CompareConfig) Validate() error {
	if cc.Scenario == "" {
		cc.Scenario = "chat"
	}
	if _, ok := Scenarios[cc.Scenario]; !ok {
		return fmt.Errorf("unknown scenario %q", cc.Scenario)
	}
	if len(cc.Servers) == 0 {
		cc.Servers = []string{"gnet", "net", "echo"}
	}
	for _, s := range cc.Servers {
		if s != "gnet" && s != "net" && s != "echo" {
			return fmt.Errorf("unknown server %q: want gnet, net or echo", s)
		}
	}
	if len(cc.Transports) == 0 {
		cc.Transports = []string{TransportTCP}
	}
	for _, t := range cc.Transports {
		if err := CheckTransport(t); err != nil {
			return err
		}
	}
	if cc.Repeat < 0 {
		return fmt.Errorf("repeat %d: want 1 or more", cc.Repeat)
	}
	if cc.Repeat == 0 {
		cc.Repeat = 1
	}
	if cc.Saturate && cc.Step {
		return fmt.Errorf("--saturate and --step are two measurements: run them apart")
	}
	if cc.Saturate && cc.Scenario != "chat" && cc.Scenario != "echo" {
		return fmt.Errorf("--saturate is for chat and echo, not %s", cc.Scenario)
	}
	if cc.Loops <= 0 {
		cc.Loops = 1
	}
	if len(cc.Builds) == 0 {
		cc.Builds = []Build{{Binary: cc.Binary}}
	}
	for _, b := range cc.Builds {
		if _, err := exec.LookPath(b.Binary); err != nil {
			return fmt.Errorf("build %s: %w", orDash(b.Name), err)
		}
	}
	return nil
}

// Comparison is the outcome of Compare.
type Comparison struct {
	// Results are every run, in the order they ran, with its own figures.
	Results []Result `json:"results"`
	// Summary is each server's (of each build's) runs: medians and ranges.
	Summary []Summary `json:"summary"`
	// Ratios are from the medians (see Ratios).
	Ratios map[string]float64 `json:"ratios"`
}

// run is one measurement of a compare: a fresh server process and data
// directory.
type run struct {
	Round     int
	Build     Build
	Server    string
	Transport string
}

// plan orders the runs: round by round, and within a round server by
// server in the order asked, each loopchat server once per transport and
// build (builds side by side, so an A/B pair runs back to back; TCP and
// WebSocket likewise). The echo server is the generator's own, not a
// build's: once a round, over TCP, beside chat or echo only.
func plan(cc *CompareConfig) []run {
	var runs []run
	transports := cc.Transports
	if len(transports) == 0 {
		transports = []string{TransportTCP}
	}
	for round := 1; round <= cc.Repeat; round++ {
		for _, server := range cc.Servers {
			if server == "echo" {
				if cc.Scenario == "chat" || cc.Scenario == "echo" {
					runs = append(runs, run{round, Build{Binary: cc.Binary}, server, TransportTCP})
				}
				continue
			}
			for _, t := range transports {
				for _, b := range cc.Builds {
					runs = append(runs, run{round, b, server, t})
				}
			}
		}
	}
	return runs
}

type serverProc struct {
	cmd    *exec.Cmd
	addr   string
	wsAddr string // the WebSocket listener, when asked for
	admin  string // a loopchat server's --admin-addr
	done   chan error
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startServerProc starts a server of kind from binary; with ws, a loopchat
// server also listens for WebSocket clients (only for runs over
// WebSocket: a second listener is not free for the TCP runs).
func startServerProc(cc *CompareConfig, binary, kind, dataDir string, ws bool) (*serverProc, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	var wsAddr, admin string
	if ws {
		if wsAddr, err = freePort(); err != nil {
			return nil, err
		}
	}
	if kind != "echo" {
		if admin, err = freePort(); err != nil {
			return nil, err
		}
	}
	var args []string
	if kind == "echo" {
		args = []string{"bench", "echo-server", "--listen", addr, "--loops", strconv.Itoa(cc.Loops)}
	} else {
		args = []string{"serve", "--listen", addr, "--engine", kind, "--loops", strconv.Itoa(cc.Loops),
			"--data", dataDir, "--log-level", "error",
			// Bench users are generated: cheap hashes, no per-connection
			// request limit, room for bursts.
			"--bcrypt-cost", "4", "--rate-limit", "1e9", "--rate-burst", "1000000000",
			"--max-outbound", strconv.Itoa(64 << 20), "--idle-timeout", "10m",
			// Groups as big as the scenario asks for.
			"--max-group-members", strconv.Itoa(max(1000, cc.GroupSize))}
		if ws {
			args = append(args, "--ws-listen", wsAddr)
		}
		// For conns' live memory (liveBytes); idle otherwise.
		args = append(args, "--admin-addr", admin)
	}
	name := binary
	if cc.ServerCPUs != "" {
		if tp, err := exec.LookPath("taskset"); err == nil {
			args = append([]string{"-c", cc.ServerCPUs, binary}, args...)
			name = tp
		}
	}
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &serverProc{cmd: cmd, addr: addr, wsAddr: wsAddr, admin: admin, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return p, nil
		}
		select {
		case err := <-p.done:
			return nil, fmt.Errorf("%s server from %s exited before listening: %v", kind, binary, err)
		default:
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("%s server did not start on %s", kind, addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *serverProc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Compare runs cc.Scenario against each server (of each build), Repeat
// rounds interleaved, a fresh server process and data directory per run,
// and summarizes each server's runs: medians, ranges, and the ratios of
// the medians (see Ratios).
func Compare(ctx context.Context, cc CompareConfig) (Comparison, error) {
	cc.defaults()
	if err := cc.Validate(); err != nil {
		return Comparison{}, err
	}
	temp := cc.Dir == ""
	if temp {
		dir, err := os.MkdirTemp("", "loopchat-bench")
		if err != nil {
			return Comparison{}, err
		}
		defer os.RemoveAll(dir)
		cc.Dir = dir
	}
	scenario := Scenarios[cc.Scenario]
	out := Comparison{Ratios: map[string]float64{}}
	runs := plan(&cc)
	for i, r := range runs {
		res, err := compareRun(ctx, &cc, r, scenario, temp)
		if err != nil {
			return out, fmt.Errorf("run %d/%d (%s): %w", i+1, len(runs), runLabel(r.Build.Name, r.Server, r.Transport, r.Round), err)
		}
		res.Build, res.Run, res.Transport = r.Build.Name, r.Round, r.Transport
		out.Results = append(out.Results, res)
		if cc.Progress != nil {
			fmt.Fprintf(cc.Progress, "[%d/%d] %s\n", i+1, len(runs), RunLine(res))
		}
	}
	out.Summary = Summarize(out.Results)
	out.Ratios = Ratios(out.Summary)
	return out, nil
}

// compareRun starts r's server, runs the scenario against it and stops it.
func compareRun(ctx context.Context, cc *CompareConfig, r run, scenario func(context.Context, Config) (Result, error), temp bool) (Result, error) {
	if r.Server == "echo" {
		scenario = Echo
	}
	dataDir := filepath.Join(cc.Dir, fmt.Sprintf("%s-%d", runLabel(r.Build.Name, r.Server, r.Transport, 0), r.Round))
	if temp {
		// A few runs of 10,000 users' logs add up; each run's are done with.
		defer os.RemoveAll(dataDir)
	}
	p, err := startServerProc(cc, r.Build.Binary, r.Server, dataDir, r.Transport == TransportWS)
	if err != nil {
		return Result{}, err
	}
	cfg := cc.Config
	// taskset execs the server in place, so the PID is the server's.
	cfg.Addrs, cfg.Server, cfg.ServerPID, cfg.Transport = []string{p.addr}, r.Server, p.cmd.Process.Pid, r.Transport
	cfg.ServerAdmin = p.admin
	if r.Transport == TransportWS {
		cfg.Addrs = []string{p.wsAddr}
	}
	res, err := scenario(ctx, cfg)
	p.stop()
	return res, err
}

// runLabel names a run in progress lines, errors and data directories:
// build-server(-ws), then the round when there is one.
func runLabel(build, server, transport string, round int) string {
	l := server
	if transport == TransportWS {
		l += "-ws"
	}
	if build != "" {
		l = build + "-" + l
	}
	if round > 0 {
		l += fmt.Sprintf(" round %d", round)
	}
	return l
}

// RunLine is one run's figures on one line, for progress as each run of
// a compare ends: the compact table then has only the medians.
func RunLine(r Result) string {
	b := &strings.Builder{}
	fmt.Fprintf(b, "%s %s: %.0f/s", runLabel(r.Build, r.Server, r.Transport, r.Run), r.Scenario, r.MsgsPerSec)
	if r.Window > 0 {
		fmt.Fprintf(b, " saturated")
	} else if r.OfferedRate > 0 {
		fmt.Fprintf(b, " of %.0f/s offered", r.OfferedRate)
	}
	fmt.Fprintf(b, ", p50 %.2f p99 %.2f ms", r.P50ms, r.P99ms)
	if r.SendOKP99ms > 0 {
		fmt.Fprintf(b, " (SendOK p99 %.2f)", r.SendOKP99ms)
	}
	if r.LateP99ms > 0 {
		fmt.Fprintf(b, " (generator late p99 %.2f)", r.LateP99ms)
	}
	if r.RSSBytesPerConn != 0 {
		fmt.Fprintf(b, ", %.0f B/conn", r.RSSBytesPerConn)
	}
	if r.LiveBytesPerConn != 0 {
		fmt.Fprintf(b, " (live %.0f B/conn)", r.LiveBytesPerConn)
	}
	// Busy CPUs (µs per message × messages per second) say who was the
	// limit of a saturated run: the server near 1 (its pinned CPU), or
	// the generator.
	fmt.Fprintf(b, ", server %.1f µs/msg (%.2f CPU), generator %.1f µs/msg (%.2f CPU), lost %d dup %d errors %d",
		r.CPUMicrosPerMsg, r.CPUMicrosPerMsg*r.MsgsPerSec/1e6, r.GenCPUMicrosPerMsg, r.GenCPUMicrosPerMsg*r.MsgsPerSec/1e6,
		r.Lost, r.Duplicates, r.Errors)
	return b.String()
}
