package server

import (
	"context"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// writeOp is one write waiting for a group commit. fn may run more than
// once (a failed batch is retried one op at a time), so it must set its
// outputs afresh on every run. A *protocol.Error from fn is the op's answer
// and does not abort the batch: fn returns it before writing anything.
type writeOp struct {
	fn   func(*bolt.Tx) error
	done chan error
	// after, if set, is told the outcome once the op's commit is over (on
	// the committer's goroutine, before the next commit starts).
	after func(error)
}

// committer serialises every write into one goroutine that commits
// whatever is queued as one transaction. Under load each fsync serves up to
// maxBatch writes; with one write waiting it commits at once (no timer, so
// no added latency when idle). The queue is bounded: writers wait when it is
// full.
type committer struct {
	db      *bolt.DB
	observe func(d time.Duration, batch int) // commit metrics; may be nil
	// lazy returns pending writes that need no acknowledgement (nil when
	// none): they join the next commit instead of causing one.
	lazy     func() *writeOp
	ops      *opQueue[*writeOp]
	maxBatch int
	done     chan struct{}
}

func newCommitter(db *bolt.DB, maxBatch int, observe func(time.Duration, int), lazy func() *writeOp) *committer {
	c := &committer{db: db, ops: newOpQueue[*writeOp]("store", maxBatch), maxBatch: maxBatch, observe: observe, lazy: lazy,
		done: make(chan struct{})}
	go c.run()
	return c
}

// do queues fn and waits until its batch is committed (or ctx ends: the
// write may still be committed then, and the caller must treat the outcome
// as unknown).
func (c *committer) do(ctx context.Context, fn func(*bolt.Tx) error) error {
	op := &writeOp{fn: fn, done: make(chan error, 1)}
	if err := c.ops.send(ctx, op); err != nil {
		return err
	}
	select {
	case err := <-op.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *committer) close() {
	c.ops.close()
	<-c.done
}

func (c *committer) run() {
	defer close(c.done)
	batch := make([]*writeOp, 0, c.maxBatch)
	// Lazy writes (see piggyback) ride along with the next commit, or go
	// on their own after lazyDelay when nothing else comes.
	tick := time.NewTicker(lazyDelay)
	defer tick.Stop()
	for {
		var op *writeOp
		var ok bool
		select {
		case op, ok = <-c.ops.ch:
			if !ok {
				c.flushLazy(batch)
				return
			}
		case <-tick.C:
			c.flushLazy(batch)
			continue
		}
		batch = c.ops.fill(append(batch[:0], op), c.maxBatch)
		if lazy := c.takeLazy(); lazy != nil {
			// First, so writes queued after an ack see it applied.
			batch = append(batch, nil)
			copy(batch[1:], batch)
			batch[0] = lazy
		}
		c.commit(batch)
	}
}

// lazyDelay bounds how long a lazy write waits for company.
const lazyDelay = 50 * time.Millisecond

func (c *committer) takeLazy() *writeOp {
	if c.lazy == nil {
		return nil
	}
	return c.lazy()
}

func (c *committer) flushLazy(batch []*writeOp) {
	if op := c.takeLazy(); op != nil {
		c.commit(append(batch[:0], op))
	}
}

func (c *committer) commit(batch []*writeOp) {
	start := time.Now()
	defer func() {
		if c.observe != nil {
			c.observe(time.Since(start), len(batch))
		}
	}()
	results := make([]error, len(batch))
	err := c.db.Update(func(tx *bolt.Tx) error {
		for i, op := range batch {
			err := op.fn(tx)
			if err != nil && !isDomainError(err) {
				return err
			}
			results[i] = err
		}
		return nil
	})
	if err != nil {
		if len(batch) == 1 {
			err = fmt.Errorf("store: commit: %w", err)
			if batch[0].done != nil {
				batch[0].done <- err
			}
			if batch[0].after != nil {
				batch[0].after(err)
			}
			return
		}
		// One op broke the transaction; give each its own so only it fails.
		for _, op := range batch {
			c.commit([]*writeOp{op})
		}
		return
	}
	for i, op := range batch {
		if op.done != nil {
			op.done <- results[i]
		}
		if op.after != nil {
			op.after(results[i])
		}
	}
}
