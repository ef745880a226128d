package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/loopchat/loopchat/codec"
)

// netEngine is the goroutine-per-connection baseline on package net: one
// goroutine reads and runs each request inline (the connection's order is
// simply the loop's order), another writes. Same handlers, same limits.
type netEngine struct {
	srv    *Server
	ln     net.Listener
	wsLn   net.Listener // the WebSocket listener; nil when off
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]*netTransport // nil until serve made it
	exited chan struct{}              // closed when the accept loops return
}

func newNetEngine(s *Server) *netEngine {
	return &netEngine{srv: s, conns: make(map[net.Conn]*netTransport), exited: make(chan struct{})}
}

// exit: the accept loops end only when the listeners are closed, by stop.
func (e *netEngine) exit() (<-chan struct{}, func() error) {
	return e.exited, func() error { return nil }
}

func (e *netEngine) wsAddr() net.Addr {
	if e.wsLn == nil {
		return nil
	}
	return e.wsLn.Addr()
}

func (e *netEngine) start() (net.Addr, error) {
	ln, err := net.Listen("tcp", e.srv.opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("net: %w", err)
	}
	if e.srv.opts.WSListen != "" {
		wsLn, err := net.Listen("tcp", wsListenAddr(e.srv.opts.WSListen, e.srv.opts.Listen))
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("net: websocket listener: %w", err)
		}
		e.wsLn = wsLn
	}
	e.ln = ln
	var accepting sync.WaitGroup
	for _, l := range []net.Listener{e.ln, e.wsLn} {
		if l == nil {
			continue
		}
		e.wg.Add(1)
		accepting.Add(1)
		go func() {
			defer accepting.Done()
			e.accept(l, l == e.wsLn)
		}()
	}
	go func() {
		accepting.Wait()
		close(e.exited)
	}()
	return ln.Addr(), nil
}

// accept serves ln's connections: WebSocket ones when isWS.
func (e *netEngine) accept(ln net.Listener, isWS bool) {
	defer e.wg.Done()
	serverFull, shuttingDown := e.srv.serverFull, e.srv.shuttingDown
	if isWS {
		serverFull, shuttingDown = wsServerFull, wsShuttingDown
	}
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
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
		var refused []byte
		switch {
		case e.srv.closing.Load():
			refused = shuttingDown
		case !e.srv.admit():
			refused = serverFull
		}
		if refused != nil {
			// A fresh socket's send buffer is empty: this write does not wait.
			_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = conn.Write(refused)
			conn.Close()
			continue
		}
		e.mu.Lock()
		e.conns[conn] = nil
		e.mu.Unlock()
		e.wg.Add(1)
		go e.serve(conn, isWS)
	}
}

func (e *netEngine) serve(conn net.Conn, isWS bool) {
	defer e.wg.Done()
	t := newNetTransport(conn, int64(e.srv.opts.MaxOutbound), e.srv.opts.writeWait, e.srv.opts.lingerWait)
	addressBusy := e.srv.addressBusy
	if isWS {
		t.ws = &wsConn{}
		addressBusy = wsAddressBusy
	}
	s := e.srv.newSession(conn.RemoteAddr(), t)
	s.ws = t.ws
	t.sess = s
	if s.proxy == proxyNone && !e.srv.holdAnonymous(s) {
		e.srv.slots.Add(-1) // admitted, but never added
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = conn.Write(addressBusy)
		e.mu.Lock()
		delete(e.conns, conn)
		e.mu.Unlock()
		conn.Close()
		return
	}
	e.mu.Lock()
	e.conns[conn] = t // for stop
	e.mu.Unlock()
	e.srv.addConn(s)
	go t.writeLoop()
	defer func() {
		// Reading stops when the client hangs up, the writer closes, or
		// after a protocol error; a last frame queued still goes out whole.
		t.waitLastFrame()
		e.mu.Lock()
		delete(e.conns, conn)
		e.mu.Unlock()
		s.closed(true)
	}()
	br := bufio.NewReader(conn)
	if err := s.readProxyHeader(br); err != nil {
		if errors.Is(err, codec.ErrProxyHeader) || errors.Is(err, errAddressBusy) {
			s.frameError(err, true)
		}
		return
	}
	if s.ws != nil {
		readWS(conn, br, s, t)
		return
	}
	r := codec.NewReader(br, e.srv.opts.MaxFrame)
	for {
		payload, err := r.Next()
		if err != nil {
			var fe *codec.FrameError
			if errors.As(err, &fe) {
				s.frameError(err, true)
			}
			return
		}
		if s.kicked.Load() {
			continue // a kicked client gets no more answers; read on until the writer closes
		}
		s.lastSeen.Store(time.Now().UnixNano())
		if !s.received(payload, true) {
			return
		}
	}
}

// readWS reads a WebSocket connection with the code gnet runs on its
// loops (wsRead), requests inline.
func readWS(conn net.Conn, br *bufio.Reader, s *session, t *netTransport) {
	in := newWSInbound(conn, br)
	for {
		if s.kicked.Load() {
			// A kicked client gets no more answers; read on until the
			// writer closes.
			_, _ = in.Discard(in.InboundBuffered())
		} else {
			s.wsRead(in, s.ws, t, true)
		}
		if s.broken {
			return
		}
		if err := in.fill(); err != nil {
			return
		}
		s.lastSeen.Store(time.Now().UnixNano())
	}
}

func (e *netEngine) stop(ctx context.Context) error {
	err := e.ln.Close()
	if e.wsLn != nil {
		err = errors.Join(err, e.wsLn.Close())
	}
	e.mu.Lock()
	for c, t := range e.conns {
		if t != nil {
			t.stop()
		} else {
			c.Close()
		}
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
//
// The writer hands each batch to the kernel with one writev and keeps
// what is left of it after a timeout, so it can always finish the frame in
// progress: a stream never ends inside a frame. A batch not taken within
// writeWait makes the client a slow consumer; once a last frame is queued
// (sendAndClose) the writer has until writeWait after that to write it, and
// resets the connection if the client has not read it by then.
type netTransport struct {
	conn    net.Conn
	sess    *session
	limit   int64
	wait    time.Duration // writeWait
	linger  time.Duration // lingerWait
	pending atomic.Int64
	closing atomic.Bool
	giveUp  atomic.Int64 // unix ns, set after closing by sendAndClose: when to stop waiting for the client to read
	drop    atomic.Bool  // drop whole frames not yet started (a slow consumer); the last frame is never among them
	// ws is set on a WebSocket connection (websocket.go): frames are sent
	// as binary messages once it is opened, and dropped before.
	ws   *wsConn
	wake chan struct{} // capacity 1: "the queue is not empty"
	done chan struct{}
	once sync.Once

	// The writer's: the batch it writes (iov, kept for its array) and
	// what is left of it to write (bufs).
	iov  [][]byte
	bufs net.Buffers

	mu        sync.Mutex
	queue     [][]byte
	lastFrame bool // the last frame is queued: accept no more, close after writing it
}

func newNetTransport(conn net.Conn, limit int64, wait, linger time.Duration) *netTransport {
	return &netTransport{conn: conn, limit: limit, wait: wait, linger: linger, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (t *netTransport) send(frame []byte) {
	if t.ws != nil {
		if !t.ws.opened.Load() {
			return
		}
		frame = wsAppendFrames(make([]byte, 0, wsWireSize(frame)), frame)
	}
	t.sendRaw(frame)
}

// sendRaw queues bytes written as they are (a WebSocket pong, or a frame
// send has wrapped).
func (t *netTransport) sendRaw(frame []byte) {
	if t.closing.Load() {
		return
	}
	n := int64(len(frame))
	if t.pending.Add(n) > t.limit {
		t.pending.Add(-n)
		t.sess.slowConsumer()
		return
	}
	if !t.enqueue(frame) {
		t.pending.Add(-n)
	}
}

// enqueue queues frame for the writer, unless the last frame is queued
// already: a send that raced with sendAndClose must not follow Kicked.
func (t *netTransport) enqueue(frame []byte) bool {
	t.mu.Lock()
	if t.lastFrame {
		t.mu.Unlock()
		return false
	}
	t.queue = append(t.queue, frame)
	t.mu.Unlock()
	t.signal()
	return true
}

func (t *netTransport) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// upgrade queues the 101 ahead of every frame, under the lock that
// sendAndClose turns a WebSocket last frame into bytes under: the two see
// the connection either opened or not, never in between.
func (t *netTransport) upgrade(resp []byte) bool {
	t.mu.Lock()
	if t.lastFrame {
		t.mu.Unlock()
		return false
	}
	t.pending.Add(int64(len(resp)))
	t.queue = append(t.queue, resp)
	t.ws.opened.Store(true)
	t.mu.Unlock()
	t.signal()
	return true
}

func (t *netTransport) sendAndClose(frame []byte, dropQueued bool) {
	t.closeWith(frame, dropQueued, t.ws != nil)
}

// sendRawAndClose is sendAndClose with frame written as it is.
func (t *netTransport) sendRawAndClose(frame []byte) { t.closeWith(frame, false, false) }

// closeWith queues the last frame; with wrap, frame is turned into a
// WebSocket connection's last bytes (wsConn.last) first.
func (t *netTransport) closeWith(frame []byte, dropQueued, wrap bool) {
	if !t.closing.CompareAndSwap(false, true) {
		return
	}
	t.giveUp.Store(time.Now().Add(t.linger).UnixNano())
	t.mu.Lock()
	if wrap {
		frame = t.ws.last(frame, ws.StatusCode(t.ws.code.Load()))
	}
	t.pending.Add(int64(len(frame)))
	if dropQueued {
		for i, f := range t.queue {
			t.pending.Add(-int64(len(f)))
			t.queue[i] = nil
		}
		t.queue = t.queue[:0]
		t.drop.Store(true)
	}
	t.queue = append(t.queue, frame)
	t.lastFrame = true
	t.mu.Unlock()
	t.signal()
	if dropQueued {
		// Interrupt a writer blocked on this client, so it drops the rest
		// of its batch now rather than hold it while the connection lingers.
		_ = t.conn.SetWriteDeadline(time.Now())
	}
}

func (t *netTransport) queued() int { return int(t.pending.Load()) }

func (t *netTransport) close() {
	t.closing.Store(true)
	t.once.Do(func() {
		close(t.done)
		t.conn.Close()
	})
}

// After the last frame the writer half-closes, then reads and drops what
// the client still sends, until it closes its end, is quiet for
// drainQuiet, or drainMax (or the last frame's give-up time) has passed.
const (
	drainQuiet = 250 * time.Millisecond
	drainMax   = 2 * time.Second
)

// finish closes once the last frame is in the kernel. A close with input
// left unread (a broken frame's payload, requests after a kick) is a TCP
// reset, and a reset discards what the kernel has not sent yet: the
// answers and the Kicked could be lost on a slow network, and the client
// would read a reset, not the clean end of stream it is promised. So:
// FIN after everything written, then drain, then close. The session's
// reader may read concurrently; a kicked session ignores what it reads.
func (t *netTransport) finish() {
	tc, ok := t.conn.(*net.TCPConn)
	if !ok || tc.CloseWrite() != nil {
		t.close()
		return
	}
	end := time.Now().Add(drainMax)
	if g := t.giveUp.Load(); g != 0 && time.Unix(0, g).Before(end) {
		end = time.Unix(0, g)
	}
	var buf [512]byte
	for now := time.Now(); now.Before(end); now = time.Now() {
		quiet := now.Add(drainQuiet)
		if end.Before(quiet) {
			quiet = end
		}
		_ = tc.SetReadDeadline(quiet)
		if _, err := tc.Read(buf[:]); err != nil {
			break // the client's end of stream, quiet, or gone
		}
	}
	t.close()
}

// reset closes the connection with a TCP reset, discarding what the kernel
// still holds: for giving up with a frame part-written, where a plain close
// would let the client read a clean end of stream inside a frame.
func (t *netTransport) reset() {
	if tc, ok := t.conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	t.close()
}

// stop closes for the engine's stop: plainly if everything queued has been
// written, else with a reset.
func (t *netTransport) stop() {
	if t.pending.Load() > 0 {
		t.reset()
		return
	}
	t.close()
}

// waitLastFrame waits for the writer to write the last frame and close,
// which it does within lingerWait of sendAndClose, then makes sure the
// connection is closed.
func (t *netTransport) waitLastFrame() {
	if !t.closing.Load() {
		t.close()
		return
	}
	timer := time.NewTimer(t.linger + time.Second)
	defer timer.Stop()
	select {
	case <-t.done:
	case <-timer.C:
		t.reset()
	}
}

// deadline is when the next write attempt gives up.
func (t *netTransport) deadline() time.Time {
	if g := t.giveUp.Load(); g != 0 {
		return time.Unix(0, g)
	}
	return time.Now().Add(t.wait)
}

func (t *netTransport) writeLoop() {
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
		err := t.writeBatch(batch)
		clear(batch)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				t.sess.logger().Debug("write failed", "err", err)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.reset() // gave up on a client that does not read, maybe inside a frame
			} else {
				t.close()
			}
			return
		}
		if last {
			t.finish() // everything up to the last frame is in the kernel
			return
		}
	}
}

// writeBatch writes batch with writev. After a timeout it carries on with
// what is left: a healthy connection is kicked as a slow consumer, and one
// with a last frame queued keeps going until its give-up time. When frames
// are to be dropped, only the one in progress is finished.
func (t *netTransport) writeBatch(batch [][]byte) error {
	var n int64
	for _, f := range batch {
		n += int64(len(f))
	}
	defer t.pending.Add(-n)
	// WriteTo consumes what it writes from the slice it is called on, so
	// it works on a copy of batch, the writer's own: a net.Buffers made
	// here would escape, an allocation per write.
	t.iov = append(t.iov[:0], batch...)
	t.bufs = t.iov
	defer func() { clear(t.iov); t.bufs = nil }()
	for len(t.bufs) > 0 {
		if t.drop.Load() && len(t.bufs) > 1 {
			clear(t.bufs[1:]) // whole frames not yet started: let them go
			t.bufs = t.bufs[:1]
		}
		_ = t.conn.SetWriteDeadline(t.deadline())
		_, err := t.bufs.WriteTo(t.conn)
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		g := t.giveUp.Load()
		switch {
		case g != 0 && !time.Now().Before(time.Unix(0, g)):
			return err // the last frame's time is up
		case !t.closing.Load():
			t.sess.slowConsumer() // this batch found no room for writeWait: queues Kicked
		}
	}
	return nil
}
