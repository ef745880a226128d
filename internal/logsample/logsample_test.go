package logsample

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestFloodIsSampledAndCounted(t *testing.T) {
	var out bytes.Buffer
	h := New(slog.NewTextHandler(&out, nil), 3)
	clock := time.Unix(1_700_000_000, 0)
	h.s.now = func() time.Time { return clock }
	log := slog.New(h)

	for i := range 1000 {
		// Per-connection loggers, as the server makes them: one count.
		log.With("conn", i).Warn("request failed", "err", "redis down")
	}
	log.Info("other message")
	log.Error("an error is never dropped")
	log.Error("an error is never dropped")
	if got := strings.Count(out.String(), "request failed"); got != 3 {
		t.Fatalf("%d lines of a 1000-line flood in one second, want 3:\n%s", got, out.String())
	}
	if !strings.Contains(out.String(), "other message") || strings.Count(out.String(), "never dropped") != 2 {
		t.Fatalf("other lines were dropped:\n%s", out.String())
	}

	out.Reset()
	clock = clock.Add(time.Second)
	log.With("conn", 5).Warn("request failed", "err", "redis down")
	if line := out.String(); !strings.Contains(line, "suppressed=997") || !strings.Contains(line, "conn=5") {
		t.Fatalf("the next second's first line = %q, want suppressed=997 and its own attrs", line)
	}
	out.Reset()
	log.Warn("request failed")
	if strings.Contains(out.String(), "suppressed") {
		t.Fatalf("the count was reported twice: %q", out.String())
	}
}

func TestZeroMeansNoSampling(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(New(slog.NewTextHandler(&out, nil), 0))
	for range 50 {
		log.Warn("same")
	}
	if got := strings.Count(out.String(), "same"); got != 50 {
		t.Fatalf("%d of 50 lines without sampling", got)
	}
}
