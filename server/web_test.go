package server

import (
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/loopchat/loopchat/web"
)

func webGet(t *testing.T, method, url string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", method, url, err)
	}
	return resp, body
}

// With --web, the WebSocket listener (on either engine) answers plain GETs with the embedded
// page: the files, gzip when asked, HEAD, revalidation, 404 and 405, and
// the headers that keep the page to its own origin.
func TestWebPageServedOnWSListener(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startWSServer(t, engine, func(o *Options) { o.Web = true })
		base := "http://" + ts.WSAddr().String()
		index := string(web.Files()["index.html"])
		app := string(web.Files()["app.js"])

		resp, body := webGet(t, "GET", base+"/", nil)
		if resp.StatusCode != 200 || string(body) != index {
			t.Fatalf("GET / = %d, %d bytes; want 200 and index.html", resp.StatusCode, len(body))
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
			t.Errorf("Content-Type %q", ct)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "connect-src 'self'") || !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("Content-Security-Policy %q", csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("ETag") == "" {
			t.Errorf("headers %v", resp.Header)
		}

		resp, body = webGet(t, "GET", base+"/app.js?v=1", map[string]string{"Accept-Encoding": "br, gzip"})
		if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("GET /app.js with gzip = %d %v", resp.StatusCode, resp.Header)
		}
		zr, err := gzip.NewReader(strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		plain, err := io.ReadAll(zr)
		if err != nil || string(plain) != app {
			t.Fatalf("gunzipped app.js: %d bytes, %v", len(plain), err)
		}
		if len(body) >= len(app)/2 {
			t.Errorf("gzip of app.js %d bytes, plain %d", len(body), len(app))
		}
		if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, "javascript") {
			t.Errorf("app.js Content-Type %q", ct)
		}
		resp, _ = webGet(t, "GET", base+"/app.js", map[string]string{"Accept-Encoding": "gzip;q=0"})
		if resp.Header.Get("Content-Encoding") != "" {
			t.Errorf("gzip;q=0 got %q", resp.Header.Get("Content-Encoding"))
		}

		resp, body = webGet(t, "HEAD", base+"/style.css", nil)
		if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength <= 0 {
			t.Fatalf("HEAD /style.css = %d, body %d, length %d", resp.StatusCode, len(body), resp.ContentLength)
		}
		etag := resp.Header.Get("ETag")
		resp, body = webGet(t, "GET", base+"/style.css", map[string]string{"If-None-Match": etag})
		if resp.StatusCode != 304 || len(body) != 0 {
			t.Fatalf("GET with If-None-Match = %d, %d bytes", resp.StatusCode, len(body))
		}
		if resp, _ = webGet(t, "GET", base+"/../etc/passwd", nil); resp.StatusCode != 404 {
			t.Errorf("GET /../etc/passwd = %d", resp.StatusCode)
		}
		if resp, _ = webGet(t, "POST", base+"/", nil); resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("POST / = %d %v", resp.StatusCode, resp.Header)
		}

		// The page's own origin opens a WebSocket without being listed; another
		// origin still needs --ws-allowed-origins.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, "ws://"+ts.WSAddr().String()+"/ws", &websocket.DialOptions{
			Subprotocols: []string{WSSubprotocol}, HTTPHeader: http.Header{"Origin": {base}},
		})
		if err != nil {
			t.Fatalf("same-origin upgrade: %v", err)
		}
		w := &wsClient{t: t, c: c}
		expectOK(t, w.do(registerReq("pagey", pw)))
		c.CloseNow()
		_, resp, err = websocket.Dial(ctx, "ws://"+ts.WSAddr().String()+"/ws", &websocket.DialOptions{
			Subprotocols: []string{WSSubprotocol}, HTTPHeader: http.Header{"Origin": {"http://elsewhere.example"}},
		})
		if err == nil || resp == nil || resp.StatusCode != 403 {
			t.Fatalf("cross-origin upgrade: %v %v", err, resp)
		}
		if c, _, err := websocket.Dial(ctx, "ws://"+ts.WSAddr().String()+"/", &websocket.DialOptions{
			Subprotocols: []string{WSSubprotocol}, HTTPHeader: http.Header{"Origin": {"https://chat.example"}},
		}); err != nil {
			t.Fatalf("listed origin: %v", err)
		} else {
			c.CloseNow()
		}
	})
}

// Without --web nothing changes: a GET is a bad upgrade, and a page's
// origin needs listing like any other.
func TestWebPageOffByDefault(t *testing.T) {
	ts := startWSServer(t, EngineGnet, nil)
	base := "http://" + ts.WSAddr().String()
	if resp, _ := webGet(t, "GET", base+"/", nil); resp.StatusCode != 400 {
		t.Fatalf("GET / without --web = %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, "ws://"+ts.WSAddr().String()+"/", &websocket.DialOptions{
		Subprotocols: []string{WSSubprotocol}, HTTPHeader: http.Header{"Origin": {base}},
	})
	if err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("same-origin upgrade without --web: %v %v", err, resp)
	}
	if _, err := New(Options{Web: true, DataDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "--ws-listen") {
		t.Fatalf("--web without --ws-listen: %v", err)
	}
}

// BenchmarkWebReply is what a page request costs the event loop before
// the write: the header scan and the lookup of a prebuilt response.
func BenchmarkWebReply(b *testing.B) {
	p, err := newWebPage()
	if err != nil {
		b.Fatal(err)
	}
	req := []byte("GET /app.js HTTP/1.1\r\nHost: 127.0.0.1:7080\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/156.0.0.0\r\n" +
		"Accept: */*\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US\r\nConnection: keep-alive\r\n\r\n")
	b.ReportAllocs()
	for b.Loop() {
		if resp, ok := p.reply(req); !ok || len(resp) == 0 {
			b.Fatal("no response")
		}
	}
}
