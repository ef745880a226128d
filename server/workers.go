package server

import "sync"

// runQueue holds sessions that have requests waiting. A session is in it
// at most once (its mailbox's running flag), so its length is bounded by
// the number of connections, and pushing never blocks an event loop.
type runQueue struct {
	mu     sync.Mutex
	cond   sync.Cond
	items  []*session
	head   int
	closed bool
}

func newRunQueue() *runQueue {
	q := &runQueue{}
	q.cond.L = &q.mu
	return q
}

func (q *runQueue) push(c *session) {
	q.mu.Lock()
	q.items = append(q.items, c)
	q.mu.Unlock()
	q.cond.Signal()
}

// pop waits for a session; it returns nil once the queue is closed and empty.
func (q *runQueue) pop() *session {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.head == len(q.items) {
		if q.closed {
			return nil
		}
		q.cond.Wait()
	}
	c := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	} else if q.head > 1024 && q.head*2 > len(q.items) {
		n := copy(q.items, q.items[q.head:])
		q.items, q.head = q.items[:n], 0
	}
	return c
}

func (q *runQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

// work runs sessions' mailboxes until the queue closes. Each mailbox is
// drained by one worker at a time, so a connection's requests run in order.
func (s *Server) work() {
	defer s.workers.Done()
	for {
		c := s.runq.pop()
		if c == nil {
			return
		}
		c.drain()
	}
}
