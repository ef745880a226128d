package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/loopchat/loopchat/client"
	"github.com/loopchat/loopchat/internal/testproc"
)

const ttyCols = 120

// ttyClient is `loopchat client` on a pseudo-terminal, as a person runs it.
type ttyClient struct {
	t    *testing.T
	cmd  *exec.Cmd
	ptmx *os.File // the terminal's side: what the user types, what they see
	tty  *os.File // the program's side, kept to check its modes after exit
	out  testproc.SyncBuffer
	done chan error
}

func startTTYClient(t *testing.T, addr string, args ...string) *ttyClient {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: ttyCols}); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, append([]string{"client", "--addr", addr}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	// Its own session with the pty as controlling terminal, as a shell
	// would start it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &ttyClient{t: t, cmd: cmd, ptmx: ptmx, tty: tty, done: make(chan error, 1)}
	go func() { _, _ = io.Copy(&c.out, ptmx) }()
	go func() { c.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.done
		c.done <- nil
		ptmx.Close()
		tty.Close()
		if t.Failed() {
			t.Logf("the client's screen:\n%s", c.screen())
		}
	})
	return c
}

func (c *ttyClient) screen() *screen { return render(c.out.String(), ttyCols) }

func (c *ttyClient) typ(keys string) {
	c.t.Helper()
	if _, err := c.ptmx.Write([]byte(keys)); err != nil {
		c.t.Fatal(err)
	}
}

// waitScreen waits until the screen satisfies ok.
func (c *ttyClient) waitScreen(what string, ok func(s *screen) bool) *screen {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := c.screen()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no %s on the screen within 10s; screen:\n%s", what, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitText waits until text is on the screen.
func (c *ttyClient) waitText(text string) *screen {
	c.t.Helper()
	return c.waitScreen(strings.TrimSpace(text), func(s *screen) bool { return strings.Contains(s.String(), text) })
}

// waitLine waits until the cursor's line reads line (a prompt and what is
// typed after it).
func (c *ttyClient) waitLine(line string) *screen {
	c.t.Helper()
	return c.waitScreen("cursor line "+line, func(s *screen) bool { return s.cursorLine() == line })
}

// wait waits for the client to exit.
func (c *ttyClient) wait() error {
	c.t.Helper()
	select {
	case err := <-c.done:
		c.done <- err
		return err
	case <-time.After(10 * time.Second):
		c.t.Fatal("the client did not exit")
	}
	return nil
}

// sdkUser is the other side of the conversation, through the Go SDK.
type sdkUser struct {
	*client.Client
	events <-chan client.Event
}

func loginSDK(t *testing.T, addr, name string) *sdkUser {
	t.Helper()
	c, err := client.Dial(context.Background(), client.Options{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Login(context.Background(), name, "hunter2hunter2"); err != nil {
		t.Fatal(err)
	}
	return &sdkUser{c, c.Events()}
}

// next waits for the first event that ok accepts, skipping others.
func (u *sdkUser) next(t *testing.T, what string, ok func(client.Event) bool) client.Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-u.events:
			if ok(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("%s: no such event within 10s", what)
		}
	}
}

func (u *sdkUser) message(t *testing.T, text string) {
	t.Helper()
	ev := u.next(t, "message "+text, func(ev client.Event) bool { return ev.Message != nil })
	if ev.Message.Text != text {
		t.Fatalf("got message %q, want %q", ev.Message.Text, text)
	}
	_ = u.Ack(ev.Message.MsgId)
}

// A person on a terminal: the password asked without echo, completion of
// a command and of a friend's name, a conversation opened and talked in
// (typing notices included), a push arriving while a line is half typed
// (the line is redrawn intact under it, and sends whole), /history,
// /conversations, /friends and /read, and /quit leaving the terminal as
// it found it.
func TestTerminalClient(t *testing.T) {
	n := startNode(t, t.TempDir())
	script(t, n.addr, "/register alice hunter2hunter2", "/register bob hunter2hunter2",
		"/login bob hunter2hunter2", "/friend add alice")
	bob := loginSDK(t, n.addr, "bob")

	alice := startTTYClient(t, n.addr, "--user", "alice")
	alice.waitLine("password for alice:")
	alice.typ("hunter2hunter2\r")
	alice.waitText("logged in as alice (user 1)")
	alice.waitLine("alice>")
	if strings.Contains(alice.out.String(), "hunter2") {
		t.Fatalf("the password was echoed:\n%q", alice.out.String())
	}

	// Tab completes a command, then a friend's name.
	alice.typ("/op\t")
	alice.waitLine("alice> /open")
	alice.typ("b\t")
	alice.waitLine("alice> /open bob")
	alice.typ("\r")
	alice.waitText("talking to bob")
	alice.waitLine("alice → bob>")

	// Plain lines go to the open conversation; typing tells bob.
	alice.typ("hello from the terminal\r")
	// The notice may come after the message: the server holds typing
	// pushes up to 50 ms to write them with others.
	var typing, msg bool
	bob.next(t, "alice typing and her message", func(ev client.Event) bool {
		typing = typing || ev.Typing.GetUsername() == "alice"
		if m := ev.Message; m != nil {
			if m.Text != "hello from the terminal" {
				t.Fatalf("bob got %q", m.Text)
			}
			msg = true
			_ = bob.Ack(m.MsgId)
		}
		return typing && msg
	})

	// A push while a line is half typed: printed above it, the line
	// redrawn as it was, the cursor at its end.
	alice.typ("partial li")
	alice.waitLine("alice → bob> partial li")
	if _, err := bob.SendToUser(context.Background(), "alice", "ping from bob"); err != nil {
		t.Fatal(err)
	}
	alice.waitText("bob: ping from bob")
	s := alice.waitLine("alice → bob> partial li") // (no wait unless the redraw is in flight)
	if !strings.HasSuffix(s.above(1), "] bob: ping from bob") || s.col != len([]rune("alice → bob> partial li")) {
		t.Fatalf("after the push, the screen ends:\n%s\n%s\n(cursor at column %d)", s.above(1), s.cursorLine(), s.col)
	}
	alice.typ("ne\r")
	bob.message(t, "partial line")

	// /history, completed: the conversation, oldest first.
	alice.typ("/hist\t")
	alice.waitLine("alice → bob> /history")
	alice.typ("bo\t2\r")
	s = alice.waitText("2 messages (older ones before #2)")
	if out := s.String(); !strings.Contains(out, "\n  #2 [") || !strings.Contains(out, "] bob: ping from bob\n  #3 [") ||
		!strings.Contains(out, "] alice: partial line\n") {
		t.Fatalf("/history bob 2:\n%s", out)
	}
	alice.typ("/conversations\r")
	s = alice.waitText("1 conversations")
	if !strings.Contains(s.String(), "1 conversations\n  bob (user 2) — #3 [") {
		t.Fatalf("/conversations:\n%s", s)
	}
	alice.typ("/friends\r")
	alice.waitText("1 friends\n  bob (user 2) — online")

	// /read with the conversation open: all of it, and bob is told.
	// (Alice's own messages marked what came before them read.)
	if _, err := bob.SendToUser(context.Background(), "alice", "read me"); err != nil {
		t.Fatal(err)
	}
	alice.waitText("bob: read me")
	alice.typ("/read\r")
	alice.waitText("read up to #4")
	bob.next(t, "alice's receipt", func(ev client.Event) bool { return ev.Read.GetUpToSeq() == 4 })

	// A line starting with // is a message starting with /.
	alice.typ("//shrug\r")
	bob.message(t, "/shrug")

	alice.typ("/quit\r")
	if err := alice.wait(); err != nil {
		t.Fatalf("the client exited with %v", err)
	}
	tio, err := unix.IoctlGetTermios(int(alice.tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if tio.Lflag&(unix.ECHO|unix.ICANON) != unix.ECHO|unix.ICANON {
		t.Fatalf("the terminal was left raw: lflag %#x", tio.Lflag)
	}
}

// The connection on a terminal: a person slower to log in than the
// server's login timeout is not bothered by it, a prompt-asked /login
// works, and when the node goes away the prompt says so until the client
// is back, logged in again with its token.
func TestTerminalClientReconnects(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir, "--login-timeout", "500ms")
	script(t, n.addr, "/register alice hunter2hunter2")

	alice := startTTYClient(t, n.addr)
	alice.waitLine(">")
	testproc.WaitUntil(t, "the client kicked for not logging in", 5*time.Second, func() bool {
		return strings.Contains(n.log(), "msg=kicked") && strings.Contains(n.log(), "reason=login_timeout")
	})
	alice.typ("/login alice\r")
	alice.waitLine("password for alice:")
	alice.typ("hunter2hunter2\r")
	s := alice.waitText("logged in as alice")
	if strings.Contains(s.String(), "kicked") || strings.Contains(s.String(), "disconnected") {
		t.Fatalf("the login timeout showed:\n%s", s)
	}
	alice.waitLine("alice>")

	if err := n.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := n.wait(t, 5*time.Second); err == nil || !errors.As(err, new(*exec.ExitError)) {
		t.Fatalf("killed node: %v", err)
	}
	alice.waitText("connection lost")
	alice.waitLine("(reconnecting…) alice>")
	alice.typ("still here")
	alice.waitLine("(reconnecting…) alice> still here")

	startNodeAt(t, n.addr, dir)
	alice.waitText("reconnected to node")
	alice.waitLine("alice> still here")
	alice.typ("\x15/ping\r") // Ctrl-U: clear the line
	alice.waitText("pong in")
}
