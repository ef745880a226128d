package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loopchat/loopchat/codec"
)

// netEngine is the goroutine-per-connection baseline on package net: one
// goroutine reads and runs each request inline (the connection's order is
// simply the loop's order), another writes. Same handlers, same limits.
type netEngine struct {
	srv    *Server
	ln     net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	exited chan struct{} // closed when the accept loop returns
}

func newNetEngine(s *Server) *netEngine {
	return &netEngine{srv: s, conns: make(map[net.Conn]struct{}), exited: make(chan struct{})}
}

// exit: the accept loop ends only when the listener is closed, by stop.
func (e *netEngine) exit() (<-chan struct{}, func() error) {
	return e.exited, func() error { return nil }
}

func (e *netEngine) start() (net.Addr, error) {
	ln, err := net.Listen("tcp", e.srv.opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("net: %w", err)
	}
	e.ln = ln
	e.wg.Add(1)
	go e.accept()
	return ln.Addr(), nil
}

func (e *netEngine) accept() {
	defer e.wg.Done()
	defer close(e.exited)
	var backoff time.Duration
	for {
		conn, err := e.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors and the like: wait a little, like net/http.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			e.srv.log.Warn("accept failed", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if e.srv.closing.Load() {
			conn.Close()
			continue
		}
		if !e.srv.admit() {
			// A fresh socket's send buffer is empty: this write does not wait.
			_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = conn.Write(e.srv.serverFull)
			conn.Close()
			continue
		}
		e.mu.Lock()
		e.conns[conn] = struct{}{}
		e.mu.Unlock()
		e.wg.Add(1)
		go e.serve(conn)
	}
}

func (e *netEngine) serve(conn net.Conn) {
	defer e.wg.Done()
	t := newNetTransport(conn, int64(e.srv.opts.MaxOutbound))
	s := e.srv.newSession(conn.RemoteAddr(), t)
	t.sess = s
	if s.proxy == proxyNone && !e.srv.holdAnonymous(s) {
		e.srv.slots.Add(-1) // admitted, but never added
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = conn.Write(e.srv.addressBusy)
		e.mu.Lock()
		delete(e.conns, conn)
		e.mu.Unlock()
		conn.Close()
		return
	}
	e.srv.addConn(s)
	go t.writeLoop()
	defer func() {
		t.close()
		e.mu.Lock()
		delete(e.conns, conn)
		e.mu.Unlock()
		s.closed(true)
	}()
	br := bufio.NewReader(conn)
	if err := s.readProxyHeader(br); err != nil {
		if errors.Is(err, codec.ErrProxyHeader) || errors.Is(err, errAddressBusy) {
			s.frameError(err, true)
			t.waitClosed(time.Second)
		}
		return
	}
	r := codec.NewReader(br, e.srv.opts.MaxFrame)
	for {
		payload, err := r.Next()
		if err != nil {
			var fe *codec.FrameError
			if errors.As(err, &fe) {
				s.frameError(err, true)
				t.waitClosed(time.Second)
			}
			return
		}
		s.lastSeen.Store(time.Now().UnixNano())
		if !s.received(payload, true) {
			t.waitClosed(time.Second)
			return
		}
	}
}

func (e *netEngine) stop(ctx context.Context) error {
	err := e.ln.Close()
	e.mu.Lock()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return err
}

// netTransport queues frames for the connection's writer goroutine. The
// queue is bounded in bytes by the outbound limit (slow consumer past it),
// not in frames, so a burst of tiny responses is never mistaken for one.
type netTransport struct {
	conn    net.Conn
	sess    *session
	limit   int64
	pending atomic.Int64
	closing atomic.Bool
	wake    chan struct{} // capacity 1: "the queue is not empty"
	done    chan struct{}
	once    sync.Once

	mu        sync.Mutex
	queue     [][]byte
	lastFrame bool // close after writing the queue
}

func newNetTransport(conn net.Conn, limit int64) *netTransport {
	return &netTransport{conn: conn, limit: limit, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (t *netTransport) send(frame []byte) {
	if t.closing.Load() {
		return
	}
	n := int64(len(frame))
	if t.pending.Add(n) > t.limit {
		t.pending.Add(-n)
		t.sess.slowConsumer()
		return
	}
	t.enqueue(frame, false)
}

func (t *netTransport) enqueue(frame []byte, last bool) {
	t.mu.Lock()
	t.queue = append(t.queue, frame)
	t.lastFrame = t.lastFrame || last
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *netTransport) sendAndClose(frame []byte) {
	if !t.closing.CompareAndSwap(false, true) {
		return
	}
	t.enqueue(frame, true)
}

func (t *netTransport) queued() int { return int(t.pending.Load()) }

func (t *netTransport) close() {
	t.closing.Store(true)
	t.once.Do(func() {
		close(t.done)
		t.conn.Close()
	})
}

// waitClosed gives the writer a moment to flush a last frame.
func (t *netTransport) waitClosed(d time.Duration) {
	select {
	case <-t.done:
	case <-time.After(d):
	}
}

func (t *netTransport) writeLoop() {
	w := bufio.NewWriter(t.conn)
	var batch [][]byte
	for {
		select {
		case <-t.wake:
		case <-t.done:
			return
		}
		t.mu.Lock()
		batch, t.queue = t.queue, batch[:0]
		last := t.lastFrame
		t.mu.Unlock()
		_ = t.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		var err error
		for i, frame := range batch {
			if err == nil {
				_, err = w.Write(frame)
			}
			t.pending.Add(-int64(len(frame)))
			batch[i] = nil
		}
		if err == nil {
			err = w.Flush()
		}
		if err != nil || last {
			if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				t.sess.logger().Debug("write failed", "err", err)
			}
			t.close()
			return
		}
	}
}
