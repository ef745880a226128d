// Package testproc starts the real external programs tests need — redis-server,
// nginx — on free loopback ports in temporary directories, and stops them.
// A missing program skips the test with a loud reason, except under CI
// (the CI environment variable set), where it fails: CI must install it.
package testproc

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Need returns the path of program, or skips (fails under CI) the test.
func Need(t testing.TB, program string, alsoTry ...string) string {
	t.Helper()
	for _, p := range append([]string{program}, alsoTry...) {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	msg := fmt.Sprintf("%s is not installed: run `make deps` (scripts/install-deps.sh)", program)
	if os.Getenv("CI") != "" {
		t.Fatal("CI: " + msg)
	}
	t.Skip("SKIPPING: " + msg)
	return ""
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// FreeAddr returns a 127.0.0.1 address that was free a moment ago.
func FreeAddr(t testing.TB) string {
	return "127.0.0.1:" + strconv.Itoa(FreePort(t))
}

// WaitListening waits until something accepts TCP connections on addr.
func WaitListening(t testing.TB, addr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listening on %s after %v: %v", addr, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Proc is a started process with its output kept for failure reports.
type Proc struct {
	Cmd    *exec.Cmd
	Output *SyncBuffer
	done   chan struct{}
	err    error
}

// Start runs name with args, ending it at test cleanup (by PID).
func Start(t testing.TB, name string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(name, args...)
	out := &SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so Kill reaches children too (nginx workers,
	// which would otherwise outlive the master and hold its output pipe).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Cmd: cmd, Output: out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(name), out.String())
		}
	})
	return p
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error { return p.Cmd.Process.Signal(sig) }

// Kill ends the process and its children with SIGKILL (after SIGCONT, in
// case they were stopped) and waits for it.
func (p *Proc) Kill() {
	pgid := -p.Cmd.Process.Pid
	select {
	case <-p.done:
		_ = syscall.Kill(pgid, syscall.SIGKILL) // children left behind
		return
	default:
	}
	_ = syscall.Kill(pgid, syscall.SIGCONT)
	_ = syscall.Kill(pgid, syscall.SIGKILL)
	<-p.done
}

// Wait waits up to d for the process to exit; exited is false on timeout.
func (p *Proc) Wait(d time.Duration) (exited bool, err error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(d):
		return false, nil
	}
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Redis is a redis-server on a loopback port with its data in a temp dir.
type Redis struct {
	t    testing.TB
	bin  string
	dir  string
	Port int
	Addr string
	URL  string
	proc *Proc
}

// StartRedis starts redis-server with AOF on and fsync on every write, so
// a SIGKILL loses nothing it acknowledged.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	r := &Redis{t: t, bin: Need(t, "redis-server"), dir: t.TempDir(), Port: FreePort(t)}
	r.Addr = "127.0.0.1:" + strconv.Itoa(r.Port)
	r.URL = "redis://" + r.Addr + "/0"
	r.Start()
	return r
}

// Start (re)starts the server on the same port and data directory.
func (r *Redis) Start() {
	r.t.Helper()
	r.proc = Start(r.t, r.bin,
		"--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1", "--dir", r.dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "",
		"--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning")
	WaitListening(r.t, r.Addr, 10*time.Second)
	// AOF replay must finish before commands succeed.
	deadline := time.Now().Add(10 * time.Second)
	for !r.ping() {
		if time.Now().After(deadline) {
			r.t.Fatalf("redis on %s not ready:\n%s", r.Addr, r.proc.Output.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping speaks just enough RESP to see "+PONG".
func (r *Redis) ping() bool {
	c, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	return bytes.HasPrefix(buf[:n], []byte("+PONG"))
}

// Kill ends redis-server with SIGKILL.
func (r *Redis) Kill() { r.proc.Kill() }

// Proc is the running redis-server process.
func (r *Redis) Proc() *Proc { return r.proc }

// Ctx returns a context that ends after d, cancelled at test cleanup.
func Ctx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// WaitUntil polls cond every 20 ms until it holds, failing the test with
// what after within.
func WaitUntil(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
