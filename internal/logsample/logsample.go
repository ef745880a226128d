// Package logsample keeps a flood of one log line from becoming a flood of
// output: while Redis is down or the disk is full, every refused request
// would log the same warning, thousands a second.
package logsample

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// maxKeys bounds the messages tracked; past it new ones pass unsampled.
// Log messages are constant strings in code, so this is never reached in
// practice.
const maxKeys = 1024

// Handler passes at most perSecond records per message (and level) in each
// second and drops the rest; the first record let through after a drop
// carries suppressed=N, the count dropped since the last one passed.
// Errors are never dropped. Handlers made by WithAttrs and WithGroup share
// the count, so a message logged through many per-connection loggers is
// still one message.
type Handler struct {
	next slog.Handler
	s    *sampler
}

type sampler struct {
	perSecond int
	now       func() time.Time

	mu   sync.Mutex
	keys map[key]*window
}

type key struct {
	level slog.Level
	msg   string
}

type window struct {
	start      time.Time
	passed     int
	suppressed int
}

// New wraps next. perSecond <= 0 means no sampling.
func New(next slog.Handler, perSecond int) *Handler {
	return &Handler{next: next, s: &sampler{perSecond: perSecond, now: time.Now, keys: make(map[key]*window)}}
}

func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError || h.s.perSecond <= 0 {
		return h.next.Handle(ctx, r)
	}
	pass, suppressed := h.s.admit(key{r.Level, r.Message})
	if !pass {
		return nil
	}
	if suppressed > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", suppressed))
	}
	return h.next.Handle(ctx, r)
}

func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &Handler{next: h.next.WithAttrs(as), s: h.s}
}

func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(name), s: h.s}
}

// admit counts one record of k and says whether it passes, and how many
// of k were dropped before it.
func (s *sampler) admit(k key) (pass bool, suppressed int) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.keys[k]
	if w == nil {
		if len(s.keys) >= maxKeys {
			return true, 0
		}
		w = &window{start: now}
		s.keys[k] = w
	}
	if now.Sub(w.start) >= time.Second {
		w.start, w.passed = now, 0
	}
	if w.passed >= s.perSecond {
		w.suppressed++
		return false, 0
	}
	w.passed++
	suppressed, w.suppressed = w.suppressed, 0
	return true, suppressed
}
