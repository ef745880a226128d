package server

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

// A connection that arrives while the node drains is told why before it
// is closed, as the connections already open are: over TCP
// Kicked{SERVER_SHUTTING_DOWN} (reconnect, through the load balancer, with
// the token), over WebSocket an HTTP 503 (protocol.md, "WebSocket"). It
// used to be closed with nothing, which a client cannot tell from a
// broken node.
func TestConnectionDuringDrainIsToldWhy(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startWSServer(t, engine, func(o *Options) { o.DrainWindow = 3 * time.Second })
		// Clients to drain, so the drain lasts its window.
		for _, name := range []string{"ann", "ben", "cat", "dan"} {
			ts.user(t, name)
		}
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done <- ts.Shutdown(ctx)
		}()
		waitFor(t, "the drain to start", func() bool { return ts.closing.Load() })

		late := dial(t, ts.addr)
		f := late.read()
		if k := f.GetKicked(); k == nil || k.Reason != chatpb.KickReason_KICK_REASON_SERVER_SHUTTING_DOWN || f.Seq != 0 {
			t.Fatalf("a connection arriving during the drain read %v, want Kicked{SERVER_SHUTTING_DOWN}", f)
		}
		late.expectClosed()

		ws, err := net.DialTimeout("tcp", ts.WSAddr().String(), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		_ = ws.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := ws.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: loopchat.v1\r\n\r\n")); err != nil {
			t.Logf("writing the upgrade: %v (the answer may already be there)", err)
		}
		status, err := bufio.NewReader(ws).ReadString('\n')
		if err != nil || !strings.HasPrefix(status, "HTTP/1.1 503 ") {
			t.Fatalf("a WebSocket arriving during the drain read %q (%v), want HTTP 503", status, err)
		}
		if err := <-done; err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	})
}
