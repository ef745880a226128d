package admin

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/loopchat/loopchat/internal/testproc"
)

// A handler that panics is reported through the caller's logger, as one
// JSON line when that logger writes JSON, never as a bare standard-log line.
func TestHTTPErrorsGoToTheLogger(t *testing.T) {
	var out testproc.SyncBuffer
	log := slog.New(slog.NewJSONHandler(&out, nil))
	mux := Mux(prometheus.NewRegistry(), func(context.Context) error { return nil }, map[string]http.Handler{
		"GET /boom": http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }),
	})
	a, err := Start("127.0.0.1:0", mux, log)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	if resp, err := http.Get("http://" + a.Addr().String() + "/boom"); err == nil {
		resp.Body.Close() // net/http drops the connection; either way it logs
	}
	testproc.WaitUntil(t, "the panic in the log", 5*time.Second, func() bool { return strings.Contains(out.String(), "boom") })
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON log line: %q", line)
		}
		if rec["level"] != "WARN" || rec["component"] != "admin-http" {
			t.Errorf("panic logged as %v", rec)
		}
	}
}
