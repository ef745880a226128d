package server

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/loopchat/loopchat/codec"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// engines every end-to-end test runs against.
var engines = []string{EngineGnet, EngineNet}

func forEachEngine(t *testing.T, fn func(t *testing.T, engine string)) {
	for _, e := range engines {
		t.Run(e, func(t *testing.T) {
			t.Parallel()
			fn(t, e)
		})
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("LOOPCHAT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

type testServer struct {
	*Server
	addr string
	opts Options
}

// testOptions are quick defaults for tests: a temp data dir, cheap bcrypt
// (still bcrypt), two loops, a free port.
func testOptions(t *testing.T, engine string) Options {
	return Options{
		Listen:     "127.0.0.1:0",
		DataDir:    t.TempDir(),
		Engine:     engine,
		Loops:      2,
		BcryptCost: bcrypt.MinCost,
		Logger:     testLogger(),
		RateLimit:  10000,
		// Offline friends are told of quickly; the presence tests that
		// need the grace set their own.
		PresenceGrace: 300 * time.Millisecond,
	}
}

func startServer(t *testing.T, opts Options) *testServer {
	t.Helper()
	srv, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	addr, err := srv.Start()
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	ts := &testServer{Server: srv, addr: addr.String(), opts: opts}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return ts
}

// rawConn speaks the wire protocol directly, as a client in another
// language would.
type rawConn struct {
	t      *testing.T
	c      net.Conn
	r      *codec.Reader
	seq    uint64
	pushes []*chatpb.Frame // pushes read while waiting for a response
}

func dial(t *testing.T, addr string) *rawConn {
	t.Helper()
	return dialFrom(t, addr, nil)
}

// dialFrom connects from a chosen source address (nil: any), as a client on
// another host would.
func dialFrom(t *testing.T, addr string, src net.Addr) *rawConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: src}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, r: codec.NewReader(bufio.NewReader(c), protocol.ClientMaxFrame)}
}

func (rc *rawConn) writeRaw(b []byte) {
	rc.t.Helper()
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// sendFrame writes f with the next seq and returns the seq.
func (rc *rawConn) sendFrame(f *chatpb.Frame) uint64 {
	rc.t.Helper()
	rc.seq++
	f.Seq = rc.seq
	buf, err := protocol.Encode(f)
	if err != nil {
		rc.t.Fatal(err)
	}
	rc.writeRaw(buf)
	return f.Seq
}

// read returns the next frame, failing the test after a timeout.
func (rc *rawConn) read() *chatpb.Frame {
	rc.t.Helper()
	f, err := rc.tryRead(5 * time.Second)
	if err != nil {
		rc.t.Fatalf("read: %v", err)
	}
	return f
}

func (rc *rawConn) tryRead(timeout time.Duration) (*chatpb.Frame, error) {
	_ = rc.c.SetReadDeadline(time.Now().Add(timeout))
	p, err := rc.r.Next()
	if err != nil {
		return nil, err
	}
	return protocol.Decode(p)
}

// do sends a request and returns its response; pushes that arrive first
// are kept for nextPush.
func (rc *rawConn) do(f *chatpb.Frame) *chatpb.Frame {
	rc.t.Helper()
	seq := rc.sendFrame(f)
	for {
		resp := rc.read()
		if resp.Seq == seq {
			return resp
		}
		if resp.Seq != 0 {
			rc.t.Fatalf("response for seq %d while waiting for %d: %v", resp.Seq, seq, resp)
		}
		rc.pushes = append(rc.pushes, resp)
	}
}

// nextPush returns the next push (seq 0), buffered or read.
func (rc *rawConn) nextPush() *chatpb.Frame {
	rc.t.Helper()
	if len(rc.pushes) > 0 {
		f := rc.pushes[0]
		rc.pushes = rc.pushes[1:]
		return f
	}
	f := rc.read()
	if f.Seq != 0 {
		rc.t.Fatalf("expected a push, got response %v", f)
	}
	return f
}

// nextMessage returns the next pushed chat message.
func (rc *rawConn) nextMessage() *chatpb.Message {
	rc.t.Helper()
	f := rc.nextPush()
	m := f.GetMessage()
	if m == nil {
		rc.t.Fatalf("expected a Message push, got %v", f)
	}
	return m
}

// noPush asserts nothing arrives within d.
func (rc *rawConn) noPush(d time.Duration) {
	rc.t.Helper()
	if len(rc.pushes) > 0 {
		rc.t.Fatalf("unexpected push %v", rc.pushes[0])
	}
	if f, err := rc.tryRead(d); err == nil {
		rc.t.Fatalf("unexpected frame %v", f)
	}
}

// expectKicked reads until Kicked with the reason, then expects the close.
func (rc *rawConn) expectKicked(reason chatpb.KickReason) {
	rc.t.Helper()
	for {
		f, err := rc.tryRead(10 * time.Second)
		if err != nil {
			rc.t.Fatalf("waiting for Kicked{%v}: %v", reason, err)
		}
		if k := f.GetKicked(); k != nil {
			if k.Reason != reason {
				rc.t.Fatalf("kicked for %v, want %v", k.Reason, reason)
			}
			rc.expectClosed()
			return
		}
	}
}

// expectClosed asserts the server closes the connection.
func (rc *rawConn) expectClosed() {
	rc.t.Helper()
	for {
		_, err := rc.tryRead(10 * time.Second)
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err) {
			return
		}
		rc.t.Fatalf("expected close, got %v", err)
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// Request builders.

func registerReq(user, pass string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Register{Register: &chatpb.Register{Username: user, Password: pass}}}
}

func loginReq(user, pass string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Login{Login: &chatpb.Login{Username: user, Password: pass}}}
}

func tokenReq(token string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Login{Login: &chatpb.Login{Token: token}}}
}

func sendTo(user, text string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{To: &chatpb.Send_Username{Username: user}, Text: text}}}
}

func sendGroup(gid uint64, text string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{To: &chatpb.Send_GroupId{GroupId: gid}, Text: text}}}
}

func ackReq(ids ...uint64) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Ack{Ack: &chatpb.Ack{MsgIds: ids}}}
}

func pingReq() *chatpb.Frame { return &chatpb.Frame{Body: &chatpb.Frame_Ping{Ping: &chatpb.Ping{}}} }

// expectCode asserts resp is an Error with code.
func expectCode(t *testing.T, resp *chatpb.Frame, code chatpb.ErrorCode) {
	t.Helper()
	e := resp.GetError()
	if e == nil {
		t.Fatalf("expected error %v, got %v", code, resp)
	}
	if e.Code != code {
		t.Fatalf("error code %v (%q), want %v", e.Code, e.Message, code)
	}
	if e.Message == "" {
		t.Fatalf("error %v has no message", code)
	}
}

func expectOK(t *testing.T, resp *chatpb.Frame) {
	t.Helper()
	if e := resp.GetError(); e != nil {
		t.Fatalf("unexpected error %v: %s", e.Code, e.Message)
	}
}

const pw = "correct horse"

// user registers (if needed) and logs in a fresh connection.
func (ts *testServer) user(t *testing.T, name string) (*rawConn, *chatpb.LoginOK) {
	t.Helper()
	rc := dial(t, ts.addr)
	resp := rc.do(registerReq(name, pw))
	if e := resp.GetError(); e != nil && e.Code != chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS {
		t.Fatalf("register %s: %v", name, e)
	}
	resp = rc.do(loginReq(name, pw))
	expectOK(t, resp)
	return rc, resp.GetLoginOk()
}

func encodeForTest(f *chatpb.Frame) ([]byte, error) { return protocol.Encode(f) }
