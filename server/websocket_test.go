package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/encoding/protowire"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

func startWSServer(t *testing.T, engine string, mutate func(*Options)) *testServer {
	t.Helper()
	o := testOptions(t, engine)
	o.WSListen = "127.0.0.1:0"
	o.WSAllowedOrigins = []string{"https://chat.example"}
	if mutate != nil {
		mutate(&o)
	}
	return startServer(t, o)
}

// wsClient wraps a coder/websocket connection speaking loopchat.v1.
type wsClient struct {
	t   *testing.T
	c   *websocket.Conn
	seq uint64
}

func dialWS(t *testing.T, ts *testServer) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+ts.WSAddr().String()+"/", &websocket.DialOptions{
		Subprotocols: []string{WSSubprotocol},
	})
	if err != nil {
		t.Fatalf("dial ws: %v (%v)", err, resp)
	}
	if c.Subprotocol() != WSSubprotocol {
		t.Fatalf("subprotocol %q", c.Subprotocol())
	}
	t.Cleanup(func() { c.CloseNow() })
	return &wsClient{t: t, c: c}
}

func (w *wsClient) send(f *chatpb.Frame) uint64 {
	w.t.Helper()
	w.seq++
	f.Seq = w.seq
	buf, err := protocol.Encode(f)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.c.Write(ctx, websocket.MessageBinary, buf[4:]); err != nil {
		w.t.Fatalf("ws write: %v", err)
	}
	return f.Seq
}

func (w *wsClient) read() *chatpb.Frame {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	typ, p, err := w.c.Read(ctx)
	if err != nil {
		w.t.Fatalf("ws read: %v", err)
	}
	if typ != websocket.MessageBinary {
		w.t.Fatalf("message type %v", typ)
	}
	f, err := protocol.Decode(p)
	if err != nil {
		w.t.Fatalf("decode: %v", err)
	}
	return f
}

func (w *wsClient) do(f *chatpb.Frame) *chatpb.Frame {
	w.t.Helper()
	seq := w.send(f)
	for {
		r := w.read()
		if r.Seq == seq {
			return r
		}
	}
}

func TestWebSocketChatWithTCPUser(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startWSServer(t, engine, nil)
		tcp, _ := ts.user(t, "tina")

		w := dialWS(t, ts)
		expectOK(t, w.do(registerReq("wendy", pw)))
		resp := w.do(loginReq("wendy", pw))
		expectOK(t, resp)
		if resp.GetLoginOk() == nil {
			t.Fatalf("login: %v", resp)
		}
		if r := w.do(sendTo("tina", "hello from the browser")); r.GetSendOk() == nil {
			t.Fatalf("send: %v", r)
		}
		if m := tcp.nextMessage(); m.Text != "hello from the browser" || m.FromUsername != "wendy" {
			t.Fatalf("tcp got %v", m)
		}
		expectOK(t, tcp.do(sendTo("wendy", "hello back")))
		for {
			f := w.read()
			if m := f.GetMessage(); m != nil {
				if m.Text != "hello back" {
					t.Fatalf("ws got %v", m)
				}
				break
			}
		}
		// Ping through the library: the server answers pongs.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		go func() { _, _, _ = w.c.Read(ctx) }() // Ping needs a reader
		if err := w.c.Ping(ctx); err != nil {
			t.Fatalf("ping: %v", err)
		}
	})
}

// rawWS is a hand-made WebSocket client on a net.Conn, to send what a
// library would not.
type rawWS struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

const wsTestKey = "dGhlIHNhbXBsZSBub25jZQ=="

func upgradeRequest(addr string, extra ...string) string {
	h := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + wsTestKey + "\r\nSec-WebSocket-Version: 13\r\n"
	for _, e := range extra {
		h += e + "\r\n"
	}
	return h + "\r\n"
}

// connectWS connects to the WebSocket listener and writes req, which
// may be unfinished or empty.
func connectWS(t *testing.T, ts *testServer, req string) *rawWS {
	t.Helper()
	c, err := net.DialTimeout("tcp", ts.WSAddr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	return &rawWS{t: t, c: c, br: bufio.NewReader(c)}
}

// dialRawWS sends req and returns the connection and the HTTP response.
func dialRawWS(t *testing.T, ts *testServer, req string) (*rawWS, *http.Response) {
	t.Helper()
	r := connectWS(t, ts, req)
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		t.Fatalf("read upgrade response: %v", err)
	}
	return r, resp
}

func openRawWS(t *testing.T, ts *testServer) *rawWS {
	t.Helper()
	r, resp := dialRawWS(t, ts, upgradeRequest(ts.WSAddr().String(), "Sec-WebSocket-Protocol: foo, "+WSSubprotocol))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Protocol") != WSSubprotocol {
		t.Fatalf("upgrade: %v %v", resp.Status, resp.Header)
	}
	return r
}

// frame writes one masked client frame.
func (r *rawWS) frame(fin bool, op byte, payload []byte) {
	r.t.Helper()
	b0 := op
	if fin {
		b0 |= 0x80
	}
	buf := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		buf = append(buf, 0x80|byte(n))
	case n <= 0xffff:
		buf = append(buf, 0x80|126, byte(n>>8), byte(n))
	default:
		buf = append(buf, 0x80|127)
		buf = binary.BigEndian.AppendUint64(buf, uint64(n))
	}
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	buf = append(buf, mask[:]...)
	for i, b := range payload {
		buf = append(buf, b^mask[i%4])
	}
	if _, err := r.c.Write(buf); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// next reads one server frame: opcode and payload.
func (r *rawWS) next() (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[1]&0x80 != 0 || h[0]&0x80 == 0 {
		return 0, nil, fmt.Errorf("server frame masked or not final: % x", h)
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(r.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = int(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(r.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = int(binary.BigEndian.Uint64(l[:]))
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r.br, p)
	return h[0] & 0x0f, p, err
}

// expectClose reads past binary messages to the close frame, checks its
// code, then expects the connection to end.
func (r *rawWS) expectClose(code int) {
	r.t.Helper()
	for {
		op, p, err := r.next()
		if err != nil {
			r.t.Fatalf("waiting for close %d: %v", code, err)
		}
		if op != 0x8 {
			continue
		}
		if len(p) < 2 || int(binary.BigEndian.Uint16(p)) != code {
			r.t.Fatalf("close frame % x, want code %d", p, code)
		}
		break
	}
	if _, _, err := r.next(); err == nil || !(errors.Is(err, io.EOF) || isReset(err)) {
		r.t.Fatalf("after close: %v", err)
	}
}

func encodePayload(t *testing.T, f *chatpb.Frame) []byte {
	t.Helper()
	buf, err := protocol.Encode(f)
	if err != nil {
		t.Fatal(err)
	}
	return buf[4:]
}

func TestWebSocketBadUpgrade(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startWSServer(t, engine, nil)
		addr := ts.WSAddr().String()
		for _, tc := range []struct {
			name   string
			req    string
			status int
		}{
			{"no subprotocol", upgradeRequest(addr), 400},
			{"other subprotocol", upgradeRequest(addr, "Sec-WebSocket-Protocol: chat"), 400},
			{"bad origin", upgradeRequest(addr, "Sec-WebSocket-Protocol: "+WSSubprotocol, "Origin: https://evil.example"), 403},
			{"not an upgrade", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
			{"too large", "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("a", 9000) + "\r\n\r\n", 431},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r, resp := dialRawWS(t, ts, tc.req)
				if resp.StatusCode != tc.status {
					t.Fatalf("status %v, want %d", resp.Status, tc.status)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				if _, err := r.br.ReadByte(); err == nil {
					t.Fatal("bytes after the refusal")
				}
			})
		}
		// An allowed browser origin and a native client (no Origin) get in.
		r, resp := dialRawWS(t, ts, upgradeRequest(addr, "Sec-WebSocket-Protocol: "+WSSubprotocol, "Origin: https://chat.example"))
		if resp.StatusCode != 101 {
			t.Fatalf("allowed origin: %v", resp.Status)
		}
		r.frame(true, 0x2, encodePayload(t, &chatpb.Frame{Seq: 1, Body: pingReq().Body}))
		if op, p, err := r.next(); err != nil || op != 0x2 {
			t.Fatalf("pong: %v %v", op, err)
		} else if f, err := protocol.Decode(p); err != nil || f.Seq != 1 {
			t.Fatalf("pong frame %v %v", f, err)
		}
	})
}

// paddedPing is a Ping request of n bytes, or as few as it takes: the
// padding is an unknown field, which decoding keeps aside.
func paddedPing(t *testing.T, seq uint64, n int) []byte {
	t.Helper()
	p := encodePayload(t, &chatpb.Frame{Seq: seq, Body: pingReq().Body})
	pad := n - len(p) - protowire.SizeTag(1000)
	for pad > 0 && len(p)+protowire.SizeTag(1000)+protowire.SizeBytes(pad) > n {
		pad--
	}
	if pad <= 0 {
		return p
	}
	p = protowire.AppendTag(p, 1000, protowire.BytesType)
	return protowire.AppendBytes(p, make([]byte, pad))
}

// expectPong reads the next binary message and checks it is the Pong to seq.
func (r *rawWS) expectPong(seq uint64) {
	r.t.Helper()
	op, p, err := r.next()
	if err != nil || op != 0x2 {
		r.t.Fatalf("waiting for pong %d: op %x %v", seq, op, err)
	}
	f, err := protocol.Decode(p)
	if err != nil || f.Seq != seq || f.GetPong() == nil {
		r.t.Fatalf("want pong %d, got %v %v", seq, f, err)
	}
}

// The input arrives however TCP cuts it: an upgrade dribbled a few bytes
// at a time, frames in the same write as the upgrade, a message larger
// than a read buffer, many messages in one write.
func TestWebSocketInputCutAnywhere(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startWSServer(t, engine, nil)
		r := connectWS(t, ts, "")
		c := r.c
		req := upgradeRequest(ts.WSAddr().String(), "Sec-WebSocket-Protocol: "+WSSubprotocol)
		cut := len(req) - 10
		for i := 0; i < cut; i += 7 {
			if _, err := io.WriteString(c, req[i:min(i+7, cut)]); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
		// The upgrade's last bytes and a whole message in one write.
		ping := r.gather(func() { r.frame(true, 0x2, paddedPing(t, 1, 20)) })
		if _, err := io.WriteString(c, req[cut:]+string(ping)); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(r.br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		r.expectPong(1)

		// Bigger than any read buffer, and split mid-header and mid-payload.
		b := r.gather(func() {
			r.frame(true, 0x2, paddedPing(t, 2, 60<<10))
			r.frame(true, 0x2, paddedPing(t, 3, 200))
		})
		for _, cut := range [][2]int{{0, 1}, {1, 9000}, {9000, len(b) - 100}, {len(b) - 100, len(b)}} {
			if _, err := c.Write(b[cut[0]:cut[1]]); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		r.expectPong(2)
		r.expectPong(3)

		// Many small messages in one write, each answered in order.
		b = r.gather(func() {
			for seq := uint64(10); seq < 60; seq++ {
				r.frame(true, 0x2, paddedPing(t, seq, 30))
			}
		})
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		for seq := uint64(10); seq < 60; seq++ {
			r.expectPong(seq)
		}
	})
}

// writerConn is a net.Conn whose writes go to w: rawWS.frame builds into
// a buffer through it, for tests that choose where the writes are cut.
type writerConn struct {
	net.Conn
	w io.Writer
}

func (c writerConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// nextFrame reads the next binary message as a Frame.
func (r *rawWS) nextFrame() *chatpb.Frame {
	r.t.Helper()
	op, p, err := r.next()
	if err != nil || op != 0x2 {
		r.t.Fatalf("waiting for a message: op %x %v", op, err)
	}
	f, err := protocol.Decode(p)
	if err != nil {
		r.t.Fatalf("decode: %v", err)
	}
	return f
}

// expectKicked reads past pushes to Kicked{reason} (right after an
// Error{PROTOCOL} when the reason is a protocol error), then expects the
// close frame with code and the end.
func (r *rawWS) expectKicked(reason chatpb.KickReason, code int) {
	r.t.Helper()
	var before *chatpb.Frame
	for {
		f := r.nextFrame()
		if k := f.GetKicked(); k != nil {
			if k.Reason != reason {
				r.t.Fatalf("want Kicked{%v}, got %v", reason, k)
			}
			break
		}
		before = f
	}
	if e := before.GetError(); reason == chatpb.KickReason_KICK_REASON_PROTOCOL_ERROR && (e == nil || e.Code != codeProtocol) {
		r.t.Fatalf("want Error{PROTOCOL} before Kicked, got %v", before)
	}
	r.expectClose(code)
}

// gather returns the bytes of the frames fn writes, for the caller to
// write where it wants them cut.
func (r *rawWS) gather(fn func()) []byte {
	var b bytes.Buffer
	c := r.c
	r.c = writerConn{c, &b}
	defer func() { r.c = c }()
	fn()
	return b.Bytes()
}

// A message that is not a Frame breaks the protocol like a bad WebSocket
// frame: the requests before it are answered, then Error{PROTOCOL},
// Kicked and a close with 1002.
func TestWebSocketGarbageClosed1002(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startWSServer(t, engine, nil)
		r := openRawWS(t, ts)
		b := r.gather(func() {
			r.frame(true, 0x2, paddedPing(t, 1, 10))
			r.frame(true, 0x2, []byte{0xff, 0xff, 0xff, 0xff})
		})
		if _, err := r.c.Write(b); err != nil {
			t.Fatal(err)
		}
		r.expectPong(1)
		r.expectKicked(chatpb.KickReason_KICK_REASON_PROTOCOL_ERROR, 1002)
	})
}

// Kicks close with the code RFC 6455 has for their reason; before the
// upgrade has been read, with an HTTP error instead.
func TestWebSocketKickCloseCodes(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startWSServer(t, engine, func(o *Options) { o.LoginTimeout = 400 * time.Millisecond })

		// Logged in elsewhere: a normal close, Kicked says why.
		first := openRawWS(t, ts)
		first.frame(true, 0x2, encodePayload(t, &chatpb.Frame{Seq: 1, Body: registerReq("kim", pw).Body}))
		expectOK(t, first.nextFrame())
		login := encodePayload(t, &chatpb.Frame{Seq: 2, Body: loginReq("kim", pw).Body})
		first.frame(true, 0x2, login)
		expectOK(t, first.nextFrame())
		second := openRawWS(t, ts)
		second.frame(true, 0x2, login)
		expectOK(t, second.nextFrame())
		first.expectKicked(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE, 1000)

		// The login timeout: 1000 after an upgrade, 408 before one.
		idle := openRawWS(t, ts)
		half := connectWS(t, ts, "GET / HTTP/1.1\r\nHost: x\r\n")
		idle.expectKicked(chatpb.KickReason_KICK_REASON_LOGIN_TIMEOUT, 1000)
		resp, err := http.ReadResponse(half.br, nil)
		if err != nil || resp.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("no upgrade within the login timeout: %v %v", resp, err)
		}

		// Shutting down: going away.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		go func() { _ = ts.Shutdown(ctx) }()
		second.expectKicked(chatpb.KickReason_KICK_REASON_SERVER_SHUTTING_DOWN, 1001)
	})
}

// upgradeVia is an upgrade request as a proxy sends it: X-Forwarded-For
// (xff, when not empty), after a PROXY v1 header naming proxied (when not
// empty).
func upgradeVia(ts *testServer, proxied, xff string) string {
	var extra []string
	extra = append(extra, "Sec-WebSocket-Protocol: "+WSSubprotocol)
	if xff != "" {
		extra = append(extra, "X-Forwarded-For: "+xff)
	}
	req := upgradeRequest(ts.WSAddr().String(), extra...)
	if proxied != "" {
		req = "PROXY TCP4 " + proxied + " 127.0.0.1 40001 7000\r\n" + req
	}
	return req
}

// openVia upgrades through upgradeVia and checks the answer's status.
func openVia(t *testing.T, ts *testServer, proxied, xff string, status int) *rawWS {
	t.Helper()
	r, resp := dialRawWS(t, ts, upgradeVia(ts, proxied, xff))
	if resp.StatusCode != status {
		t.Fatalf("upgrade via %q, X-Forwarded-For %q: %v, want %d", proxied, xff, resp.Status, status)
	}
	return r
}

// loginAs registers and logs in user on r.
func (r *rawWS) loginAs(user string) {
	r.t.Helper()
	r.frame(true, 0x2, encodePayload(r.t, &chatpb.Frame{Seq: 1, Body: registerReq(user, pw).Body}))
	expectOK(r.t, r.nextFrame())
	r.frame(true, 0x2, encodePayload(r.t, &chatpb.Frame{Seq: 2, Body: loginReq(user, pw).Body}))
	expectOK(r.t, r.nextFrame())
}

// From a trusted proxy, X-Forwarded-For names the client: the address
// connections not logged in are counted under, failed logins are
// throttled by, and logs and /debug/conns show.
func TestWebSocketForwardedForFromTrustedProxy(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startWSServer(t, engine, func(o *Options) {
			o.AdminAddr = "127.0.0.1:0"
			o.MaxAnonymousPerAddress = 1
			o.LoginFailures = 2
			o.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		})
		a := openVia(t, ts, "", "203.0.113.60", 101)
		openVia(t, ts, "", "203.0.113.61", 101) // another client through the same proxy
		openVia(t, ts, "", "203.0.113.60", 429)
		a.loginAs("xff1")
		if c := remoteOf(t, ts, "xff1"); c.Remote != "203.0.113.60" || !strings.HasPrefix(c.Peer, "127.0.0.1:") {
			t.Fatalf("seen as %+v", c)
		}

		// Read from the right while the hop is a trusted proxy: what a
		// client wrote left of the first untrusted address is not believed.
		for _, tc := range []struct{ user, proxied, xff, want string }{
			{"xff2", "", "198.51.100.1, 127.0.0.9", "198.51.100.1"},
			{"xff3", "", "10.9.9.9, 198.51.100.2", "198.51.100.2"},
			{"xff4", "", "2001:db8::7", "2001:db8::7"},
			// Past an entry that is not an address nothing is believed:
			// the client is the last proxy that could be trusted.
			{"xff5", "", "198.51.100.3, unknown, 127.0.0.2", "127.0.0.2"},
			// A PROXY header naming a client that is not a proxy: its own
			// X-Forwarded-For is not believed.
			{"xff6", "198.51.100.4", "203.0.113.99", "198.51.100.4:40001"},
			// A PROXY header naming another trusted proxy: it is.
			{"xff7", "127.0.0.8", "198.51.100.5", "198.51.100.5"},
		} {
			r := openVia(t, ts, tc.proxied, tc.xff, 101)
			r.loginAs(tc.user)
			if c := remoteOf(t, ts, tc.user); c.Remote != tc.want {
				t.Errorf("via %q with X-Forwarded-For %q: seen as %q, want %q", tc.proxied, tc.xff, c.Remote, tc.want)
			}
		}

		// Failed logins count against the forwarded client, not the proxy.
		guesser := openVia(t, ts, "", "203.0.113.50", 101)
		for seq := uint64(1); seq <= 2; seq++ {
			guesser.frame(true, 0x2, encodePayload(t, &chatpb.Frame{Seq: seq, Body: loginReq("xff1", "not the password").Body}))
			expectCode(t, guesser.nextFrame(), codeUnauth)
		}
		guesser.frame(true, 0x2, encodePayload(t, &chatpb.Frame{Seq: 3, Body: loginReq("xff1", pw).Body}))
		expectCode(t, guesser.nextFrame(), codeRateLimited)
		other := openVia(t, ts, "", "203.0.113.51", 101)
		other.frame(true, 0x2, encodePayload(t, &chatpb.Frame{Seq: 1, Body: loginReq("xff1", pw).Body}))
		expectOK(t, other.nextFrame())
	})
}

// From anyone else X-Forwarded-For is ignored: the client is the TCP peer.
func TestWebSocketForwardedForFromUntrustedPeer(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startWSServer(t, engine, func(o *Options) {
			o.AdminAddr = "127.0.0.1:0"
			o.MaxAnonymousPerAddress = 1
			o.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		})
		a := openVia(t, ts, "", "203.0.113.60", 101)
		// Another forwarded address, but the same peer, which has its one
		// connection not logged in already.
		openVia(t, ts, "", "203.0.113.61", 429)
		a.loginAs("direct")
		if c := remoteOf(t, ts, "direct"); !strings.HasPrefix(c.Remote, "127.0.0.1:") || c.Peer != "" {
			t.Fatalf("seen as %+v", c)
		}
	})
}
