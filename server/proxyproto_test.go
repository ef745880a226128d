package server

import (
	"encoding/binary"
	"encoding/json"
	"net/http"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	chatpb "github.com/loopchat/loopchat/proto"
)

func connsView(t *testing.T, ts *testServer) []ConnInfo {
	t.Helper()
	resp, err := http.Get("http://" + ts.AdminAddr().String() + "/debug/conns")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []ConnInfo
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

func remoteOf(t *testing.T, ts *testServer, user string) ConnInfo {
	t.Helper()
	for _, c := range connsView(t, ts) {
		if c.Username == user {
			return c
		}
	}
	t.Fatalf("%s not in /debug/conns", user)
	return ConnInfo{}
}

func TestProxyProtocol(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.AdminAddr = "127.0.0.1:0"
		opts.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		ts := startServer(t, opts)

		// v1, as nginx sends it, then frames in the same write.
		rc := dial(t, ts.addr)
		reg, _ := encodeForTest(&chatpb.Frame{Seq: 1, Body: registerReq("viaproxy", pw).Body})
		rc.writeRaw(append([]byte("PROXY TCP4 203.0.113.7 127.0.0.1 40001 7000\r\n"), reg...))
		rc.seq = 1
		if resp := rc.read(); resp.GetRegisterOk() == nil {
			t.Fatalf("register after a v1 header: %v", resp)
		}
		expectOK(t, rc.do(loginReq("viaproxy", pw)))
		if c := remoteOf(t, ts, "viaproxy"); c.Remote != "203.0.113.7:40001" || c.Peer == "" {
			t.Fatalf("seen as %+v, want 203.0.113.7:40001 via a peer", c)
		}

		// v2, dribbled in two writes.
		rc2 := dial(t, ts.addr)
		h := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11")
		h = binary.BigEndian.AppendUint16(h, 12)
		h = append(h, 198, 51, 100, 9, 127, 0, 0, 1, 0xab, 0xcd, 0x1b, 0x58)
		rc2.writeRaw(h[:9])
		rc2.writeRaw(h[9:])
		rc2.do(registerReq("viaproxy2", pw))
		expectOK(t, rc2.do(loginReq("viaproxy2", pw)))
		if c := remoteOf(t, ts, "viaproxy2"); c.Remote != "198.51.100.9:43981" {
			t.Fatalf("v2 seen as %+v", c)
		}

		// A trusted peer may also connect without a header (health probes).
		plain, _ := ts.user(t, "direct")
		expectOK(t, plain.do(pingReq()))
		if c := remoteOf(t, ts, "direct"); c.Peer != "" || c.Remote == "" {
			t.Fatalf("direct connection seen as %+v", c)
		}

		// A malformed header from a trusted peer is a protocol error.
		bad := dial(t, ts.addr)
		bad.writeRaw([]byte("PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n"))
		bad.expectKicked(chatpb.KickReason_KICK_REASON_PROTOCOL_ERROR)
	})
}

// dialVia connects as a trusted proxy would for client: a PROXY v1 header
// naming it comes first.
func (ts *testServer) dialVia(t *testing.T, client string) *rawConn {
	t.Helper()
	rc := dial(t, ts.addr)
	rc.writeRaw([]byte("PROXY TCP4 " + client + " 127.0.0.1 40001 7000\r\n"))
	return rc
}

// Behind a proxy every connection comes from the proxy; the failed-login
// guard must count the clients the PROXY headers name, not the proxy.
func TestFailedLoginsCountTheProxiedClient(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.LoginFailures = 2
		opts.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		ts := startServer(t, opts)
		ts.user(t, "carol")
		via := func(client string) *rawConn { return ts.dialVia(t, client) }
		guesser := via("203.0.113.50")
		for range 2 {
			expectCode(t, guesser.do(loginReq("carol", "not her password")), codeUnauth)
		}
		expectCode(t, via("203.0.113.50").do(loginReq("carol", pw)), codeRateLimited)
		expectOK(t, via("203.0.113.51").do(loginReq("carol", pw)))
	})
}

// Behind a proxy the per-address count of connections not logged in is
// the clients', not the proxy's.
func TestAnonymousCountIsPerProxiedClient(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.MaxAnonymousPerAddress = 1
		opts.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		ts := startServer(t, opts)
		via := func(client string) *rawConn { return ts.dialVia(t, client) }
		held := via("203.0.113.60")
		expectOK(t, held.do(pingReq()))
		expectOK(t, via("203.0.113.61").do(pingReq())) // another client through the same proxy
		again := via("203.0.113.60")
		if e := again.read().GetError(); e == nil || e.Code != codeRateLimited {
			t.Fatalf("a second anonymous connection of one proxied client got %v", e)
		}
		again.expectClosed()
		expectOK(t, held.do(pingReq()))
	})
}

func TestProxyHeaderFromUntrustedPeerIsRefused(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		ts := startServer(t, opts)
		before := testutil.ToFloat64(ts.metrics.frameErrors.WithLabelValues("proxy_header"))
		rc := dial(t, ts.addr)
		rc.writeRaw([]byte("PROXY TCP4 203.0.113.7 127.0.0.1 40001 7000\r\n"))
		f := rc.read()
		if e := f.GetError(); e == nil || e.Code != codeProtocol {
			t.Fatalf("untrusted PROXY header answered with %v", f)
		}
		rc.expectKicked(chatpb.KickReason_KICK_REASON_PROTOCOL_ERROR)
		if testutil.ToFloat64(ts.metrics.frameErrors.WithLabelValues("proxy_header")) != before+1 {
			t.Fatal("untrusted PROXY header not counted")
		}
		// Everyone else is unaffected.
		other, _ := ts.user(t, "other")
		expectOK(t, other.do(pingReq()))
	})
}
