package server

import (
	"net"
	"strings"
	"testing"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Past --max-conns a new connection reads why and is closed; the ones
// already in keep chatting, and a freed slot takes the next connection.
func TestConnectionCap(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.MaxConns = 2
		opts.AdminAddr = "127.0.0.1:0"
		ts := startServer(t, opts)
		alice, _ := ts.user(t, "alice")
		bob, _ := ts.user(t, "bob")

		extra := dial(t, ts.addr)
		f := extra.read()
		if e := f.GetError(); e == nil || e.Code != chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE || f.Seq != 0 {
			t.Fatalf("a connection past the cap read %v, want Error{UNAVAILABLE} with seq 0", f)
		}
		extra.expectClosed()

		expectOK(t, alice.do(sendTo("bob", "still here")))
		if m := bob.nextMessage(); m.Text != "still here" {
			t.Fatalf("bob got %q", m.Text)
		}
		admin := "http://" + ts.AdminAddr().String()
		if got := scrape(t, ts.AdminAddr().String())["loopchat_connections_refused_total{reason=max_conns}"]; got != 1 {
			t.Fatalf("connections_refused_total = %v, want 1", got)
		}
		if code, body := httpGet(t, admin+"/readyz"); code != 503 || !strings.Contains(body, "connection limit") {
			t.Fatalf("/readyz of a full node = %d %q, want 503 naming the limit", code, body)
		}

		bob.c.Close()
		waitFor(t, "bob's slot to free", func() bool { return ts.connCount() < 2 })
		if code, body := httpGet(t, admin+"/readyz"); code != 200 {
			t.Fatalf("/readyz with a slot free = %d %q", code, body)
		}
		carol, _ := ts.user(t, "carol")
		expectOK(t, carol.do(pingReq()))
	})
}

// One address may hold only so many connections that have not logged in;
// the next is told so and closed, other addresses are untouched, and a
// connection that logs in frees its place.
func TestAnonymousConnectionsPerAddress(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.MaxAnonymousPerAddress = 2
		opts.AdminAddr = "127.0.0.1:0"
		ts := startServer(t, opts)
		host := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 21)}
		first := dialFrom(t, ts.addr, host)
		expectOK(t, first.do(pingReq()))
		second := dialFrom(t, ts.addr, host)
		expectOK(t, second.do(pingReq()))

		third := dialFrom(t, ts.addr, host)
		f := third.read()
		if e := f.GetError(); e == nil || e.Code != chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED || !strings.Contains(e.Message, "not logged in") {
			t.Fatalf("a third anonymous connection from one address read %v", f)
		}
		third.expectClosed()
		expectOK(t, dialFrom(t, ts.addr, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 22)}).do(pingReq()))
		if got := scrape(t, ts.AdminAddr().String())["loopchat_connections_refused_total{reason=address}"]; got != 1 {
			t.Fatalf("connections_refused_total{reason=address} = %v, want 1", got)
		}

		expectOK(t, first.do(registerReq("carol", pw)))
		expectOK(t, first.do(loginReq("carol", pw))) // logged in: no longer counted
		fourth := dialFrom(t, ts.addr, host)
		expectOK(t, fourth.do(pingReq()))
	})
}
