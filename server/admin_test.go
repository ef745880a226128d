package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/loopchat/loopchat/codec"
	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape reads /metrics into name{labels} -> value.
func scrape(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	code, body := httpGet(t, "http://"+admin+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.Metric {
			key := name
			for _, l := range m.Label {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[key+"_count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

func TestMetricsMoveWithTraffic(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.AdminAddr = "127.0.0.1:0"
		opts.LoginFailures = 1
		ts := startServer(t, opts)
		admin := ts.AdminAddr().String()

		if code, _ := httpGet(t, "http://"+admin+"/healthz"); code != 200 {
			t.Fatalf("/healthz = %d", code)
		}
		if code, body := httpGet(t, "http://"+admin+"/readyz"); code != 200 {
			t.Fatalf("/readyz = %d %s", code, body)
		}
		if code, _ := httpGet(t, "http://"+admin+"/debug/pprof/"); code != 200 {
			t.Fatalf("/debug/pprof/ = %d", code)
		}
		before := scrape(t, admin)
		if before["go_goroutines"] == 0 || before["process_resident_memory_bytes"] == 0 {
			t.Fatal("Go runtime and process metrics missing")
		}

		alice, _ := ts.user(t, "alice")
		bob, _ := ts.user(t, "bob")
		expectOK(t, alice.do(sendTo("bob", "counted")))
		bob.nextMessage()
		junk := dial(t, ts.addr)
		junk.writeRaw(codec.AppendHeader(nil, 0))
		junk.expectKicked(chatpb.KickReason_KICK_REASON_PROTOCOL_ERROR)
		_, _ = ts.user(t, "alice") // kicks the older alice
		alice.expectKicked(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE)
		expectCode(t, dial(t, ts.addr).do(loginReq("alice", "wrong password")), codeUnauth)
		expectCode(t, dial(t, ts.addr).do(loginReq("alice", "wrong again")), codeRateLimited)

		after := scrape(t, admin)
		for _, c := range []struct {
			key  string
			want float64
		}{
			{"loopchat_logins_total", 3},
			{"loopchat_login_failures_total", 2},
			{"loopchat_login_throttled_total", 1},
			{"loopchat_messages_sent_total", 1},
			{"loopchat_messages_delivered_live_total", 1},
			{"loopchat_requests_total{result=ok}{type=send}", 1},
			{"loopchat_requests_total{result=unauthenticated}{type=login}", 1},
			{"loopchat_frame_errors_total{kind=zero_length}", 1},
			{"loopchat_kicks_total{reason=protocol_error}", 1},
			{"loopchat_kicks_total{reason=logged_in_elsewhere}", 1},
		} {
			if got := after[c.key] - before[c.key]; got != c.want {
				t.Errorf("%s moved by %v, want %v", c.key, got, c.want)
			}
		}
		if after["loopchat_connections_open"] < 2 {
			t.Errorf("connections_open = %v", after["loopchat_connections_open"])
		}
		if engine == EngineGnet {
			perLoop := 0.0
			for k, v := range after {
				if strings.HasPrefix(k, "loopchat_loop_connections_open{") {
					perLoop += v
				}
			}
			if perLoop != after["loopchat_connections_open"] {
				t.Errorf("per-loop connections sum to %v, total %v", perLoop, after["loopchat_connections_open"])
			}
		}
		if after["loopchat_store_commit_seconds_count"] == 0 {
			t.Error("store commit latency not observed")
		}
		if got := after["loopchat_store_log_sync_seconds_count"] - before["loopchat_store_log_sync_seconds_count"]; got != 1 {
			t.Errorf("message log writes moved by %v, want 1 for the one send", got)
		}
	})
}

func TestReadyzWhileDrainingAndWithoutRedis(t *testing.T) {
	r := testproc.StartRedis(t)
	opts := testOptions(t, EngineGnet)
	opts.Redis = r.URL
	opts.AdminAddr = "127.0.0.1:0"
	opts.DrainWindow = 2 * time.Second
	ts := startServer(t, opts)
	readyz := "http://" + ts.AdminAddr().String() + "/readyz"
	if code, body := httpGet(t, readyz); code != 200 {
		t.Fatalf("/readyz = %d %s", code, body)
	}

	r.Kill()
	if code, body := httpGet(t, readyz); code != 503 || !strings.Contains(body, "store") {
		t.Fatalf("/readyz with Redis down = %d %q", code, body)
	}
	r.Start()
	waitFor(t, "ready after Redis is back", func() bool {
		code, _ := httpGet(t, readyz)
		return code == 200
	})

	// Draining: clients are kicked over the window, /readyz says 503 meanwhile,
	// and clients not yet kicked are still served.
	var clients []*rawConn
	for _, name := range []string{"user1", "user2", "user3", "user4"} {
		rc, _ := ts.user(t, name)
		clients = append(clients, rc)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- ts.Shutdown(context.Background()) }()
	waitFor(t, "draining", func() bool { return ts.closing.Load() })
	if code, body := httpGet(t, readyz); code != 503 || !strings.Contains(body, "draining") {
		t.Fatalf("/readyz while draining = %d %q", code, body)
	}
	// The kicks come one at a time, in no set order; meanwhile the others
	// are served.
	served := 0
	var kickedAt []time.Duration
	pending := clients[:0:0]
	for _, rc := range clients {
		seq := rc.sendFrame(pingReq())
		f, err := rc.tryRead(5 * time.Second)
		switch {
		case err == nil && f.Seq == seq:
			served++
			pending = append(pending, rc)
		case err == nil && f.GetKicked() != nil:
			rc.expectClosed()
			kickedAt = append(kickedAt, time.Since(start))
		default:
			t.Fatalf("ping while draining: %v %v", f, err)
		}
	}
	if served == 0 {
		t.Fatal("no client was served while the node drained")
	}
	for _, rc := range pending {
		rc.expectKicked(chatpb.KickReason_KICK_REASON_SERVER_SHUTTING_DOWN)
		kickedAt = append(kickedAt, time.Since(start))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if spread := kickedAt[len(kickedAt)-1]; spread < time.Second {
		t.Fatalf("all kicks within %v: not spread over the 2s window", spread)
	}
}

func TestNoSecretsInLogs(t *testing.T) {
	var logs testproc.SyncBuffer
	opts := testOptions(t, EngineGnet)
	opts.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.TokenSecret = []byte("super-secret-token-key")
	const apiKey, wrongKey, apiPassword = "super-secret-api-key", "wrong-secret-api-key", "api-made-password"
	opts.APIAddr, opts.APIKeys = "127.0.0.1:0", []APIKey{apiKey}
	ts := startServer(t, opts)
	opts.Logger.Info("the options, as a careless operator might log them", "opts", fmt.Sprintf("%+v", opts), "keys", opts.APIKeys)
	api := newAPIClient(t, ts)
	api.key = apiKey
	api.ok("POST", "/api/v1/users", map[string]any{"username": "yan", "password": apiPassword}, http.StatusCreated, nil)
	api.ok("POST", "/api/v1/publish", map[string]any{"to_user": "yan", "text": "hello"}, http.StatusOK, nil)
	api.key = wrongKey
	api.fails("GET", "/api/v1/stats", nil, http.StatusUnauthorized, "UNAUTHENTICATED")
	const password = "very-secret-password"
	rc := dial(t, ts.addr)
	expectOK(t, rc.do(registerReq("zed", password)))
	expectCode(t, rc.do(loginReq("zed", password+"x")), codeUnauth)
	resp := rc.do(loginReq("zed", password))
	expectOK(t, resp)
	token := resp.GetLoginOk().Token
	expectOK(t, dial(t, ts.addr).do(tokenReq(token)))
	rc.expectKicked(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = ts.Shutdown(ctx)

	out := logs.String()
	if !strings.Contains(out, `"user":"zed"`) || !strings.Contains(out, `"conn":`) || !strings.Contains(out, `"remote":"127.0.0.1:`) {
		t.Fatalf("connection log lines lack conn, user or remote:\n%s", out)
	}
	if !strings.Contains(out, `"route":"GET /api/v1/stats","status":401`) {
		t.Fatalf("the refused API call is not logged:\n%s", out)
	}
	for _, secret := range []string{password, token, "super-secret-token-key", token[strings.LastIndex(token, ".")+1:],
		apiKey, wrongKey, apiPassword} {
		if strings.Contains(out, secret) {
			t.Fatalf("a secret (%q...) reached the logs", secret[:4])
		}
	}
}
