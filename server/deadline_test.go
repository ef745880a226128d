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
	start := time.Now()
	a, b := d.context(), d.context()
	if a != b {
		t.Error("requests within one slack got different contexts")
	}
	until, ok := a.Deadline()
	if !ok || until.Before(start.Add(d.timeout)) || until.After(time.Now().Add(d.timeout+d.slack)) {
		t.Fatalf("deadline %v not within [timeout, timeout+slack] of now", until.Sub(start))
	}
	time.Sleep(2 * d.slack)
	c := d.context()
	if c == a {
		t.Fatal("a context was handed out with less than the timeout left")
	}
	select {
	case <-a.Done():
		t.Fatal("an older context ended before its deadline")
	default:
	}
	<-a.Done()
	if !errors.Is(a.Err(), context.DeadlineExceeded) {
		t.Errorf("expired context's error = %v, want deadline exceeded", a.Err())
	}
	if waited := time.Since(start); waited < d.timeout {
		t.Errorf("context ended after %v, before the %v timeout", waited, d.timeout)
	}
	// Contexts past their deadline are released when the next is made.
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
