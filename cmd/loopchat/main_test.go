package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/loopchat/loopchat/internal/testproc"
)

// binary is the loopchat binary built once for these tests, which run it
// as users do: real processes, real sockets.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "loopchat-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "loopchat")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		panic("building loopchat: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freeAddr(t *testing.T) string { return testproc.FreeAddr(t) }

type node struct {
	cmd    *exec.Cmd
	addr   string
	mu     sync.Mutex // guards reads of stderr against the writer
	stderr *bytes.Buffer
	done   chan error
}

// startNode runs `loopchat serve` on a free port and waits until it
// accepts connections.
func startNode(t *testing.T, dataDir string, extra ...string) *node {
	t.Helper()
	return startNodeAt(t, freeAddr(t), dataDir, extra...)
}

// startNodeAt is startNode on a given address (to restart a node in place).
func startNodeAt(t *testing.T, addr, dataDir string, extra ...string) *node {
	t.Helper()
	return launchNode(t, nil, addr, dataDir, extra...)
}

// launchNode is startNodeAt run through wrap (e.g. prlimit and its flags),
// which must exec the node in its own place.
func launchNode(t *testing.T, wrap []string, addr, dataDir string, extra ...string) *node {
	t.Helper()
	args := append([]string{"serve", "--listen", addr, "--data", dataDir, "--bcrypt-cost", "4", "--log-level", "debug"}, extra...)
	argv := append(append(wrap[:len(wrap):len(wrap)], binary), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	n := &node{cmd: cmd, addr: addr, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr = &lockedWriter{mu: &n.mu, w: n.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-n.done
		n.done <- nil
		if t.Failed() {
			t.Logf("node %s stderr (last 4000 bytes):\n%s", addr, tail(n.log(), 4000))
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("node on %s did not start: %v\n%s", addr, err, n.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wait waits for the node process to exit (after a signal).
func (n *node) wait(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-n.done:
		n.done <- err // for the cleanup
		return err
	case <-time.After(within):
		t.Fatalf("node %s did not exit within %v", n.addr, within)
	}
	return nil
}

func (n *node) log() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stderr.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// lockedWriter lets a test read a process's output while it writes.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// script runs `loopchat client --json` with the given lines on stdin and
// returns the JSON objects it printed.
func script(t *testing.T, addr string, lines ...string) []map[string]any {
	t.Helper()
	cmd := exec.Command(binary, "client", "--addr", addr, "--json")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("client: %v\nstderr: %s", err, stderr.String())
	}
	var out []map[string]any
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var obj map[string]any
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.UseNumber()
		if err := dec.Decode(&obj); err != nil {
			t.Fatalf("stdout line is not JSON: %q: %v", sc.Text(), err)
		}
		out = append(out, obj)
	}
	return out
}

func responses(events []map[string]any) []map[string]any {
	var out []map[string]any
	for _, e := range events {
		if e["event"] == "response" {
			out = append(out, e)
		}
	}
	return out
}

func expectResp(t *testing.T, e map[string]any, cmd string, ok bool) {
	t.Helper()
	if e["cmd"] != cmd || e["ok"] != ok {
		t.Fatalf("response = %v, want cmd %q ok %v", e, cmd, ok)
	}
}

func TestClientScriptJSON(t *testing.T) {
	for _, engine := range []string{"gnet", "net"} {
		t.Run(engine, func(t *testing.T) {
			n := startNode(t, t.TempDir(), "--engine", engine)
			out := responses(script(t, n.addr,
				"/register alice hunter2hunter2",
				"/register bob hunter2hunter2",
				"/register alice hunter2hunter2",
				"/login alice hunter2hunter2",
				"/friend add bob",
				"/msg bob hello   there, bob",
				"/group create hikers Weekend hikes",
				"/groups",
				"/friends",
				"/ping",
				"/bogus",
			))
			if len(out) != 11 {
				t.Fatalf("got %d responses, want 11: %v", len(out), out)
			}
			expectResp(t, out[0], "register", true)
			expectResp(t, out[2], "register", false)
			if out[2]["error"].(map[string]any)["code"] != "already_exists" {
				t.Fatalf("duplicate register error = %v", out[2]["error"])
			}
			expectResp(t, out[3], "login", true)
			if out[3]["username"] != "alice" || out[3]["node_id"] == "" {
				t.Fatalf("login response = %v", out[3])
			}
			expectResp(t, out[4], "friend add", true)
			expectResp(t, out[5], "msg", true)
			if out[5]["online"] != false || out[5]["msg_id"] == nil {
				t.Fatalf("msg response = %v", out[5])
			}
			expectResp(t, out[6], "group create", true)
			gid := out[6]["group_id"].(json.Number).String()
			groups := out[7]["groups"].([]any)
			g := groups[0].(map[string]any)
			if g["name"] != "hikers" || g["description"] != "Weekend hikes" {
				t.Fatalf("groups = %v", groups)
			}
			friends := out[8]["friends"].([]any)
			if len(friends) != 1 || friends[0].(map[string]any)["username"] != "bob" {
				t.Fatalf("friends = %v", friends)
			}
			expectResp(t, out[9], "ping", true)
			expectResp(t, out[10], "bogus", false)

			// bob logs in, gets the message sent while away (printed, then
			// acked), joins the group and posts.
			events := script(t, n.addr,
				"/login bob hunter2hunter2",
				"/wait 300ms",
				"/group join "+gid,
				"/group msg "+gid+" hi hikers",
			)
			var msgs []map[string]any
			for _, e := range events {
				if e["event"] == "message" {
					msgs = append(msgs, e)
				}
			}
			if len(msgs) != 1 || msgs[0]["from"] != "alice" || msgs[0]["to"] != "bob" || msgs[0]["text"] != "hello   there, bob" {
				t.Fatalf("bob's messages = %v", msgs)
			}
			rs := responses(events)
			expectResp(t, rs[1], "group join", true)
			expectResp(t, rs[2], "group msg", true)

			// alice gets the group message; bob's ack means he is not sent
			// alice's message again.
			events = script(t, n.addr, "/login alice hunter2hunter2", "/wait 300ms")
			var got []string
			for _, e := range events {
				if e["event"] == "message" {
					if e["group_id"].(json.Number).String() != gid || e["to"] != nil {
						t.Fatalf("group message event = %v", e)
					}
					got = append(got, e["text"].(string))
				}
			}
			if len(got) != 1 || got[0] != "hi hikers" {
				t.Fatalf("alice's messages = %v", got)
			}
			events = script(t, n.addr, "/login bob hunter2hunter2", "/wait 300ms")
			for _, e := range events {
				if e["event"] == "message" {
					t.Fatalf("acked message delivered again: %v", e)
				}
			}
		})
	}
}

func TestClientCannotConnect(t *testing.T) {
	cmd := exec.Command(binary, "client", "--addr", freeAddr(t), "--json")
	cmd.Stdin = strings.NewReader("/ping\n")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	err := cmd.Run()
	if err == nil {
		t.Fatal("client exited 0 with no server")
	}
	if stdout.Len() != 0 {
		t.Fatalf("stdout must stay JSON-only, got %q", stdout.String())
	}
}

func TestServeShutsDownCleanlyOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	script(t, n.addr, "/register carol hunter2hunter2")

	// A client waiting in script mode sees the kick, then the disconnect.
	cmd := exec.Command(binary, "client", "--addr", n.addr, "--json", "--no-reconnect")
	cmd.Stdin = strings.NewReader("/login carol hunter2hunter2\n/wait 5s\n")
	var stdout testproc.SyncBuffer
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// SIGTERM once carol is logged in: the kick must reach a live session.
	testproc.WaitUntil(t, "the client's login", 10*time.Second, func() bool {
		return strings.Contains(stdout.String(), `"cmd":"login","ok":true`)
	})
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := n.wait(t, 15*time.Second); err != nil {
		t.Fatalf("serve exited with %v after SIGTERM\n%s", err, n.log())
	}
	_ = cmd.Wait()
	if !strings.Contains(stdout.String(), `"reason":"server_shutting_down"`) {
		t.Fatalf("client output lacks the shutdown kick:\n%s", stdout.String())
	}
	if !strings.Contains(stdout.String(), `{"event":"disconnected"}`) {
		t.Fatalf("client output lacks the disconnect:\n%s", stdout.String())
	}
	// The store was closed properly: a new node opens it and knows carol.
	n2 := startNode(t, dir)
	out := responses(script(t, n2.addr, "/login carol hunter2hunter2"))
	expectResp(t, out[0], "login", true)
	if strings.Contains(n.log(), "hunter2") {
		t.Fatal("a password reached the server log")
	}
}

// --user logs in before a script's first command, with --password or
// $LOOPCHAT_PASSWORD; without either a script fails at once, having no
// terminal to ask on.
func TestClientUserFlagInScripts(t *testing.T) {
	n := startNode(t, t.TempDir())
	script(t, n.addr, "/register alice hunter2hunter2")
	run := func(env []string, args ...string) (string, string, error) {
		cmd := exec.Command(binary, append([]string{"client", "--addr", n.addr, "--json", "--user", "alice"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdin = strings.NewReader("/ping\n")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}
	for _, env := range [][]string{nil, {"LOOPCHAT_PASSWORD=hunter2hunter2"}} {
		var args []string
		if env == nil {
			args = []string{"--password", "hunter2hunter2"}
		}
		out, errOut, err := run(env, args...)
		if err != nil || !strings.HasPrefix(out, `{"event":"response","cmd":"login","ok":true`) ||
			!strings.Contains(out, "\n"+`{"event":"response","cmd":"ping","ok":true`) {
			t.Fatalf("--user with %v %v: %v\nstdout: %s\nstderr: %s", env, args, err, out, errOut)
		}
	}
	out, errOut, err := run(nil)
	if err == nil || out != "" || !strings.Contains(errOut, "--user needs --password") {
		t.Fatalf("--user without a password: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
}
