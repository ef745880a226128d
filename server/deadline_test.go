package server

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestSharedDeadline(t *testing.T) {
	parent, stop := context.WithCancel(context.Background())
	d := newSharedDeadline(parent, 200*time.Millisecond)
	// Which requests share a context depends only on the clock d reads, so
	// step that clock instead of hoping the box runs two calls within 4 ms.
	start := time.Now()
	clock := start
	d.now = func() time.Time { return clock }

	a, b := d.context(), d.context()
	if a != b {
		t.Error("requests within one slack got different contexts")
	}
	until, ok := a.Deadline()
	if !ok || !until.Equal(start.Add(d.timeout+d.slack)) {
		t.Fatalf("deadline %v after start, want timeout+slack = %v", until.Sub(start), d.timeout+d.slack)
	}
	clock = start.Add(d.slack)
	if d.context() != a {
		t.Error("a request exactly one slack later did not share the context")
	}
	clock = start.Add(2 * d.slack)
	if d.context() == a {
		t.Fatal("a context was handed out with less than the timeout left")
	}

	// The contexts themselves end on the real clock, never before their deadline.
	<-a.Done()
	if now := time.Now(); now.Before(until) {
		t.Errorf("context ended %v before its deadline", until.Sub(now))
	}
	if !errors.Is(a.Err(), context.DeadlineExceeded) {
		t.Errorf("expired context's error = %v, want deadline exceeded", a.Err())
	}
	// Contexts past their deadline are released when the next is made.
	clock = until.Add(time.Millisecond)
	d.context()
	d.mu.Lock()
	for _, l := range d.live {
		if l.ctx == a {
			t.Error("an expired context is still held")
		}
	}
	d.mu.Unlock()
	stop()
	<-d.context().Done() // shutdown ends them all
}
