package server

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// sharedDeadline hands out request contexts that end between timeout and
// timeout+slack from now. Requests that arrive within one slack share a
// context, so a send costs no timer and no context of its own: at ten
// thousand sends a second those were a tenth of the server's garbage, and
// garbage is what sets how often the collector runs (and stalls the loops).
type sharedDeadline struct {
	parent         context.Context
	timeout, slack time.Duration
	// now is time.Now; tests step it to check which requests share a context.
	now func() time.Time

	cur  atomic.Pointer[deadlineCtx]
	mu   sync.Mutex     // serialises making the next context
	live []*deadlineCtx // guarded by mu: handed out, deadline not yet passed
}

type deadlineCtx struct {
	ctx    context.Context
	until  time.Time
	cancel context.CancelFunc
}

func newSharedDeadline(parent context.Context, timeout time.Duration) *sharedDeadline {
	return &sharedDeadline{parent: parent, timeout: timeout, slack: timeout / 50, now: time.Now}
}

// context returns a context that ends no sooner than timeout from now.
func (d *sharedDeadline) context() context.Context {
	now := d.now()
	if c := d.cur.Load(); c != nil && !c.until.Before(now.Add(d.timeout)) {
		return c.ctx
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.cur.Load(); c != nil && !c.until.Before(now.Add(d.timeout)) {
		return c.ctx
	}
	// A context may not be cancelled before its deadline, as requests
	// may still be using it; past it, cancelling only releases it. At
	// most timeout/slack+1 are live.
	kept := d.live[:0]
	for _, c := range d.live {
		if c.until.Before(now) {
			c.cancel()
		} else {
			kept = append(kept, c)
		}
	}
	clear(d.live[len(kept):])
	until := now.Add(d.timeout + d.slack)
	ctx, cancel := context.WithDeadline(d.parent, until)
	c := &deadlineCtx{ctx: ctx, until: until, cancel: cancel}
	d.live = append(kept, c)
	d.cur.Store(c)
	return ctx
}
