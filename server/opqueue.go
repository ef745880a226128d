package server

import (
	"context"
	"fmt"
	"sync"
)

// opQueue is the bounded queue in front of a goroutine that works in
// batches (the committer, the message log writer). Senders wait while it
// is full; closing it is safe while they do.
type opQueue[T any] struct {
	name   string // for the error once closed
	ch     chan T
	mu     sync.RWMutex // guards closed against sends on a closed channel
	closed bool
}

func newOpQueue[T any](name string, size int) *opQueue[T] {
	return &opQueue[T]{name: name, ch: make(chan T, size)}
}

// send queues v, or fails once the queue is closed or ctx ends.
func (q *opQueue[T]) send(ctx context.Context, v T) error {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		return fmt.Errorf("%s closed: %w", q.name, errUnavailable)
	}
	select {
	case q.ch <- v:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fill appends to batch whatever is queued, without waiting, until batch
// holds max items.
func (q *opQueue[T]) fill(batch []T, max int) []T {
	for len(batch) < max {
		select {
		case v, ok := <-q.ch:
			if !ok {
				return batch
			}
			batch = append(batch, v)
		default:
			return batch
		}
	}
	return batch
}

// close makes further sends fail; the consumer sees the channel close
// after draining what was queued.
func (q *opQueue[T]) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		close(q.ch)
	}
}
