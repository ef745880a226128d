package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
	// Binary is the loopchat executable to start servers from.
	Binary string
	// Servers to compare, from "gnet", "net", "echo". Empty means all three.
	Servers []string
	// Loops for the gnet servers. Zero means 1 (one CPU for the server).
	Loops int
	// ServerCPUs pins servers with taskset -c (e.g. "0"); empty means no pinning.
	ServerCPUs string
	// Dir holds the servers' data. Empty means a temp dir, removed after.
	Dir string
}

// Comparison is the outcome of Compare.
type Comparison struct {
	Results []Result           `json:"results"`
	Ratios  map[string]float64 `json:"ratios"`
}

type serverProc struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func startServerProc(cc *CompareConfig, kind string) (*serverProc, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	var args []string
	if kind == "echo" {
		args = []string{"bench", "echo-server", "--listen", addr, "--loops", strconv.Itoa(cc.Loops)}
	} else {
		args = []string{"serve", "--listen", addr, "--engine", kind, "--loops", strconv.Itoa(cc.Loops),
			"--data", filepath.Join(cc.Dir, kind), "--log-level", "error",
			// Bench users are generated: cheap hashes, no per-connection
			// request limit, room for bursts.
			"--bcrypt-cost", "4", "--rate-limit", "1e9", "--rate-burst", "1000000000",
			"--max-outbound", strconv.Itoa(64 << 20), "--idle-timeout", "10m",
			// Groups as big as the scenario asks for.
			"--max-group-members", strconv.Itoa(max(1000, cc.GroupSize))}
	}
	name := cc.Binary
	if cc.ServerCPUs != "" {
		if tp, err := exec.LookPath("taskset"); err == nil {
			args = append([]string{"-c", cc.ServerCPUs, cc.Binary}, args...)
			name = tp
		}
	}
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &serverProc{cmd: cmd, addr: addr, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return p, nil
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

// Compare runs cc.Scenario against each server in turn, in one run, and
// computes the ratios: gnet÷net and chat÷echo for rates, net÷gnet for
// memory per connection.
func Compare(ctx context.Context, cc CompareConfig) (Comparison, error) {
	cc.defaults()
	if cc.Scenario == "" {
		cc.Scenario = "chat"
	}
	if len(cc.Servers) == 0 {
		cc.Servers = []string{"gnet", "net", "echo"}
	}
	if cc.Loops <= 0 {
		cc.Loops = 1
	}
	if cc.Dir == "" {
		dir, err := os.MkdirTemp("", "loopchat-bench")
		if err != nil {
			return Comparison{}, err
		}
		defer os.RemoveAll(dir)
		cc.Dir = dir
	}
	scenario, ok := Scenarios[cc.Scenario]
	if !ok {
		return Comparison{}, fmt.Errorf("unknown scenario %q", cc.Scenario)
	}
	out := Comparison{Ratios: map[string]float64{}}
	byServer := map[string]Result{}
	for _, kind := range cc.Servers {
		run := scenario
		if kind == "echo" {
			if cc.Scenario != "chat" && cc.Scenario != "echo" {
				continue // only message rates compare with an echo server
			}
			run = Echo
		}
		p, err := startServerProc(&cc, kind)
		if err != nil {
			return out, err
		}
		cfg := cc.Config
		// taskset execs the server in place, so the PID is the server's.
		cfg.Addrs, cfg.Server, cfg.ServerPID = []string{p.addr}, kind, p.cmd.Process.Pid
		res, err := run(ctx, cfg)
		p.stop()
		if err != nil {
			return out, fmt.Errorf("%s %s: %w", kind, cc.Scenario, err)
		}
		out.Results = append(out.Results, res)
		byServer[kind] = res
	}
	ratio := func(name string, a, b float64) {
		if a > 0 && b > 0 {
			out.Ratios[name] = a / b
		}
	}
	g, n, e := byServer["gnet"], byServer["net"], byServer["echo"]
	ratio("gnet_over_net_msgs_per_sec", g.MsgsPerSec, n.MsgsPerSec)
	ratio("chat_over_echo_msgs_per_sec", g.MsgsPerSec, e.MsgsPerSec)
	ratio("net_over_gnet_rss_per_conn", n.RSSBytesPerConn, g.RSSBytesPerConn)
	ratio("net_over_gnet_cpu_per_msg", n.CPUMicrosPerMsg, g.CPUMicrosPerMsg)
	return out, nil
}
