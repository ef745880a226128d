package server

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/loopchat/loopchat/internal/testproc"
)

// The template, http {} block included, is what nginx -t accepts, with
// nodes in both upstreams and with none.
func TestNginxTemplatePassesNginxCheck(t *testing.T) {
	for _, up := range []testproc.NginxUpstreams{
		{Stream: []string{"127.0.0.1:7001", "127.0.0.1:7002"}, WS: []string{"127.0.0.1:8001", "127.0.0.1:8002"}},
		{},
	} {
		n := testproc.RenderNginx(t, up)
		out, err := n.Check()
		if err != nil || !strings.Contains(out, "test is successful") {
			t.Fatalf("nginx -t with %+v: %v\n%s", up, err, out)
		}
	}
}

// A WebSocket client reaches a node through nginx's http {} block and
// chats with a TCP client that came through its stream {} block.
func TestWebSocketThroughNginx(t *testing.T) {
	ts := startWSServer(t, EngineGnet, func(o *Options) {
		o.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})
	ng := testproc.StartNginxWith(t, testproc.NginxUpstreams{Stream: []string{ts.addr}, WS: []string{ts.WSAddr().String()}})
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(ng.Logs())
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+ng.WSAddr+"/ws", &websocket.DialOptions{
		Subprotocols: []string{WSSubprotocol},
	})
	if err != nil {
		t.Fatalf("dial ws through nginx: %v (%v)", err, resp)
	}
	t.Cleanup(func() { c.CloseNow() })
	if c.Subprotocol() != WSSubprotocol {
		t.Fatalf("subprotocol through nginx %q", c.Subprotocol())
	}
	w := &wsClient{t: t, c: c}
	expectOK(t, w.do(registerReq("wendy", pw)))
	expectOK(t, w.do(loginReq("wendy", pw)))

	tcp := dial(t, ng.Addr)
	expectOK(t, tcp.do(registerReq("tina", pw)))
	expectOK(t, tcp.do(loginReq("tina", pw)))

	if r := w.do(sendTo("tina", "through nginx http")); r.GetSendOk() == nil {
		t.Fatalf("send: %v", r)
	}
	if m := tcp.nextMessage(); m.Text != "through nginx http" || m.FromUsername != "wendy" {
		t.Fatalf("tcp got %v", m)
	}
	expectOK(t, tcp.do(sendTo("wendy", "through nginx stream")))
	for {
		if m := w.read().GetMessage(); m != nil {
			if m.Text != "through nginx stream" {
				t.Fatalf("ws got %v", m)
			}
			break
		}
	}
}
