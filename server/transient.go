package server

import (
	"sync"
	"time"
)

// Presence and typing pushes are small and come in bursts: when many users
// log in at once, each of their online friends gets a push per friend
// that came, and a write to the socket per push costs far more than the
// push itself (a login storm with 50 friends a user spent half the
// server's CPU in write(2), docs/BENCHMARKS.md). So these pushes are
// gathered per session and written together: the first one queued starts a
// transientDelay, after which the flusher writes everything the session
// gathered meanwhile in one write. Messages are not delayed; they do not
// go through here.
//
// Order: a session's transient pushes keep their order among themselves.
// They may overtake or be overtaken by its messages, which they are
// independent of.

// transientDelay is how long a transient push may wait for others to
// share its write: short against what it tells (presence, "is typing"),
// long against a login storm's pace.
const transientDelay = 50 * time.Millisecond

// maxTransientBytes bounds what one session gathers: past it the pushes
// are written at once.
const maxTransientBytes = 32 << 10

// transientFlusher writes the gathered pushes of the sessions that have
// some, transientDelay after the first. Its list holds each such session
// once (it is added when its buffer goes from empty to not), so it is
// bounded by the number of connections.
type transientFlusher struct {
	mu      sync.Mutex
	due     []*session
	started time.Time // when the first of due was added
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func newTransientFlusher() *transientFlusher {
	return &transientFlusher{wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

func (f *transientFlusher) add(c *session) {
	f.mu.Lock()
	if len(f.due) == 0 {
		f.started = time.Now()
	}
	f.due = append(f.due, c)
	n := len(f.due)
	f.mu.Unlock()
	if n == 1 {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
}

// run flushes a batch transientDelay after its first session was added;
// sessions added meanwhile go with it.
func (f *transientFlusher) run() {
	defer close(f.done)
	for {
		select {
		case <-f.stop:
			f.flush()
			return
		case <-f.wake:
		}
		f.mu.Lock()
		wait := transientDelay - time.Since(f.started)
		f.mu.Unlock()
		if wait > 0 {
			select {
			case <-f.stop:
				f.flush()
				return
			case <-time.After(wait):
			}
		}
		f.flush()
	}
}

func (f *transientFlusher) flush() {
	f.mu.Lock()
	due := f.due
	f.due = nil
	f.mu.Unlock()
	for _, c := range due {
		c.flushTransient()
	}
}

func (f *transientFlusher) close() {
	close(f.stop)
	<-f.done
}
