package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/loopchat/loopchat/codec"
)

// gnetEngine runs the handlers on gnet: the main reactor accepts and hands
// connections round-robin (or to the least loaded) to Loops sub-reactors,
// each an event loop locked to its OS thread. Callbacks only decode frames
// and queue requests; everything that waits runs on the workers.
type gnetEngine struct {
	gnet.BuiltinEventEngine
	srv     *Server
	loopsMu sync.Mutex
	loops   map[gnet.EventLoop]*gnetLoop
	// outbufs holds the buffers transports gather frames in between
	// flushes (*[]byte), so an idle connection keeps none.
	outbufs sync.Pool
	eng     gnet.Engine
	booted  chan struct{}
	exited  chan struct{} // closed when gnet.Run returns
	runErr  error         // what it returned; read after exited
	// wsBound is the WebSocket listener's address (nil: none), set in
	// OnBoot before any connection opens; OnOpen tells its connections
	// from the TCP listener's by their local address.
	wsBound *net.TCPAddr
}

func newGnetEngine(s *Server) *gnetEngine {
	return &gnetEngine{srv: s, booted: make(chan struct{}), exited: make(chan struct{}),
		loops:   make(map[gnet.EventLoop]*gnetLoop),
		outbufs: sync.Pool{New: func() any { b := make([]byte, 0, outbufSize); return &b }}}
}

func (e *gnetEngine) start() (net.Addr, error) {
	lb := gnet.RoundRobin
	if e.srv.opts.LeastConnections {
		lb = gnet.LeastConnections
	}
	go func() {
		defer close(e.exited)
		addrs := []string{"tcp://" + e.srv.opts.Listen}
		if e.srv.opts.WSListen != "" {
			addrs = append(addrs, "tcp://"+wsListenAddr(e.srv.opts.WSListen, e.srv.opts.Listen))
		}
		err := gnet.Rotate(e, addrs,
			gnet.WithMulticore(true),
			gnet.WithNumEventLoop(e.srv.opts.Loops),
			gnet.WithLoadBalancing(lb),
			gnet.WithLockOSThread(e.srv.opts.LockLoops),
			gnet.WithReusePort(false),
			gnet.WithReuseAddr(true), // restart on the same port while old sockets linger
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithLogger(gnetLogger{e.srv.log}),
		)
		if err != nil || e.runErr == nil {
			e.runErr = err
		}
	}()
	select {
	case <-e.booted:
	case <-e.exited:
		return nil, fmt.Errorf("gnet: listen %s: %w", e.srv.opts.Listen, e.runErr)
	}
	return configureListener(e.eng, "tcp", e.srv.opts.Listen)
}

func (e *gnetEngine) wsAddr() net.Addr {
	if e.wsBound == nil {
		return nil // not a nil *net.TCPAddr in an interface
	}
	return e.wsBound
}

func (e *gnetEngine) exit() (<-chan struct{}, func() error) {
	return e.exited, func() error { return e.runErr }
}

// configureListener shortens the accept queue gnet made (the kernel's
// maximum) to listenBacklog — listen(2) again on a listening socket
// resizes its queue — and asks the kernel which address the listener is
// bound to, which tells the port when Listen asked for port 0.
func configureListener(eng gnet.Engine, network, addr string) (*net.TCPAddr, error) {
	fd, err := eng.DupListener(network, addr)
	if err != nil {
		return nil, fmt.Errorf("gnet: listener fd: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Listen(fd, listenBacklog); err != nil {
		return nil, fmt.Errorf("gnet: listen backlog: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("gnet: getsockname: %w", err)
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}, nil
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}, nil
	}
	return nil, errors.New("gnet: listener is not TCP")
}

func (e *gnetEngine) stop(ctx context.Context) error {
	err := e.eng.Stop(ctx)
	select {
	case <-e.exited:
	case <-ctx.Done():
	}
	return err
}

func (e *gnetEngine) OnBoot(eng gnet.Engine) gnet.Action {
	e.eng = eng
	if e.srv.opts.WSListen != "" {
		a, err := configureListener(eng, "tcp", wsListenAddr(e.srv.opts.WSListen, e.srv.opts.Listen))
		if err != nil {
			e.runErr = fmt.Errorf("websocket listener %s: %w", e.srv.opts.WSListen, err) // Rotate returns nil after Shutdown
			return gnet.Shutdown
		}
		e.wsBound = a
	}
	close(e.booted)
	return gnet.None
}

func (e *gnetEngine) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	isWS := isWSConn(e.wsBound, c)
	if e.srv.closing.Load() {
		if isWS {
			return wsShuttingDown, gnet.Close
		}
		return e.srv.shuttingDown, gnet.Close
	}
	if !e.srv.admit() {
		if isWS {
			return wsServerFull, gnet.Close
		}
		return e.srv.serverFull, gnet.Close
	}
	loop := e.loop(c)
	t := &gnetTransport{c: c, loop: loop, limit: int64(e.srv.opts.MaxOutbound), wait: e.srv.opts.lingerWait}
	if isWS {
		t.ws = &wsConn{}
	}
	s := e.srv.newSession(c.RemoteAddr(), t)
	s.ws = t.ws
	t.sess = s
	if s.proxy == proxyNone && !e.srv.holdAnonymous(s) {
		e.srv.slots.Add(-1) // never added: no OnClose work to undo it
		if isWS {
			return wsAddressBusy, gnet.Close
		}
		return e.srv.addressBusy, gnet.Close
	}
	c.SetContext(s)
	e.srv.addConn(s)
	loop.conns.Inc()
	return nil, gnet.None
}

// loop is what the engine keeps for c's event loop; its gauge is
// labelled "0", "1", ... in the order the loops are first seen.
func (e *gnetEngine) loop(c gnet.Conn) *gnetLoop {
	el := c.EventLoop()
	e.loopsMu.Lock()
	defer e.loopsMu.Unlock()
	l, ok := e.loops[el]
	if !ok {
		l = &gnetLoop{el: el, bufs: &e.outbufs,
			conns: e.srv.metrics.connsByLoop.WithLabelValues(strconv.Itoa(len(e.loops)))}
		e.loops[el] = l
	}
	return l
}

func (e *gnetEngine) OnClose(c gnet.Conn, err error) gnet.Action {
	s, _ := c.Context().(*session)
	var t *gnetTransport
	if s != nil {
		t, _ = s.out.(*gnetTransport)
	}
	if err == nil && (c.OutboundBuffered() > 0 || t != nil && t.pending.Load() > 0) {
		// The server is closing (lingerWait ran out, or the engine stops)
		// with bytes still unwritten: in gnet's buffer, where gnet would
		// write what the socket takes and end the stream wherever that
		// stops, maybe inside a frame; or accepted and never written, so
		// a clean end would hide that frames are missing. A reset tells
		// the client the stream is broken instead.
		_ = c.SetLinger(0)
	}
	if s != nil {
		if t != nil {
			t.gone = true
			t.loop.conns.Dec()
		}
		s.closed(false)
	}
	return gnet.None
}

func (e *gnetEngine) OnTraffic(c gnet.Conn) gnet.Action {
	s, ok := c.Context().(*session)
	if !ok {
		return gnet.Close
	}
	if s.broken || s.kicked.Load() {
		// After a protocol error the rest of the stream is noise, and a
		// kicked client gets no more answers; drop its input while the
		// last frames are flushed and the close happens.
		_, _ = c.Discard(c.InboundBuffered())
		return gnet.None
	}
	s.lastSeen.Store(time.Now().UnixNano())
	if s.proxy != proxyDone {
		buf, _ := c.Peek(min(c.InboundBuffered(), maxProxyHeader))
		size, done, err := s.takeProxyHeader(buf)
		switch {
		case err != nil:
			s.frameError(err, false)
			_, _ = c.Discard(c.InboundBuffered())
			return gnet.None
		case !done:
			return gnet.None
		}
		if size > 0 { // gnet's Discard(0) discards everything
			_, _ = c.Discard(size)
		}
	}
	if s.ws != nil {
		s.wsRead(c, s.ws, s.out.(*gnetTransport), false)
		return gnet.None
	}
	for {
		payload, size, err := codec.PeekFrame(c, e.srv.opts.MaxFrame)
		if err != nil {
			s.frameError(err, false)
			_, _ = c.Discard(c.InboundBuffered())
			return gnet.None
		}
		if payload == nil {
			return gnet.None
		}
		ok := s.received(payload, false) // decodes into a fresh Frame: nothing aliases the buffer
		_, _ = c.Discard(size)
		if !ok {
			_, _ = c.Discard(c.InboundBuffered())
			return gnet.None
		}
	}
}

// gnetTransport writes with AsyncWrite, which is safe from any goroutine.
// gnet's outbound buffer is unbounded, so it tracks how much waits: bytes
// handed to AsyncWrite not yet taken by the loop, plus the outbound buffer
// as last seen on the loop. Over the limit the client is a slow consumer.
//
// A last frame (Kicked, or a refusal) must reach the client whole and after
// every frame before it, but gnet's Close writes only what the socket takes
// at once and drops the rest of the outbound buffer, cutting the stream
// anywhere. So sendAndClose refuses further frames, writes the last one on
// the loop once every frame accepted before it has been written, and closes
// only when the outbound buffer is empty — everything is in the kernel —
// polling for that from a timer (gnet calls nothing when a buffer drains),
// or resets the connection after lingerWait (OnClose).
//
// Frames are not handed to gnet one AsyncWrite each (a closure, a task and
// a queue node apiece, and a wakeup of the loop): send appends them to
// the transport's out buffer, and the loop's writer (gnetLoop) writes
// every waiting transport's frames in one pass on the loop, each
// transport's in one write.
type gnetTransport struct {
	c        gnet.Conn
	loop     *gnetLoop
	sess     *session
	limit    int64
	wait     time.Duration             // lingerWait
	pending  atomic.Int64              // accepted by send, not yet written on the loop
	buffered atomic.Int64              // OutboundBuffered() at the last write
	last     atomic.Pointer[lastWrite] // set once: no more frames; this one goes last

	mu    sync.Mutex
	out   *[]byte // frames waiting for the loop's writer; nil while none wait
	ready bool    // in the loop's ready list

	// ws is set on a WebSocket connection (websocket.go): frames are sent
	// as binary messages once it is opened, and dropped before (nothing
	// but a refusal is written before the upgrade).
	ws *wsConn

	// Loop only.
	gone bool // OnClose ran: the fd may already be another connection's
	// Loop only, once last is set.
	lastWritten bool
	giveUpAt    time.Time
	pollEvery   time.Duration
}

// outbufSize is the capacity of a pooled out buffer. One grown past
// outbufKeep (a big LoginOK, a burst to a slow reader) is not pooled.
const (
	outbufSize = 4 << 10
	outbufKeep = 64 << 10
)

// gnetLoop is the engine's state for one event loop: its connection
// gauge, and the writer that flushes transports' frames on the loop.
type gnetLoop struct {
	el    gnet.EventLoop
	conns prometheus.Gauge
	bufs  *sync.Pool

	mu        sync.Mutex
	ready     []*gnetTransport // with frames waiting, in the order they got them
	spare     []*gnetTransport // the other list, swapped in by each flush
	scheduled bool             // a flush is queued on the loop and has not started
}

// add puts t, which got its first waiting frame, in the ready list, and
// queues a flush unless one is queued already: under load one flush, one
// task and one wakeup serve many frames.
func (l *gnetLoop) add(t *gnetTransport) {
	l.mu.Lock()
	l.ready = append(l.ready, t)
	schedule := !l.scheduled
	l.scheduled = true
	l.mu.Unlock()
	if schedule {
		if err := l.el.Execute(context.Background(), l); err != nil {
			// The engine is stopping: nothing will be written any more.
			l.mu.Lock()
			l.scheduled = false
			l.mu.Unlock()
		}
	}
}

// Run flushes every ready transport; on the loop (gnet.Runnable).
func (l *gnetLoop) Run(context.Context) error {
	l.mu.Lock()
	ready := l.ready
	l.ready, l.spare = l.spare[:0], nil
	l.scheduled = false // sends from here on queue another flush
	l.mu.Unlock()
	for i, t := range ready {
		t.flush()
		ready[i] = nil
	}
	l.mu.Lock()
	if l.spare == nil {
		l.spare = ready[:0]
	}
	l.mu.Unlock()
	return nil
}

// lastWrite is a connection's last frame (gnetTransport.last).
type lastWrite struct {
	frame []byte
	// ws: frame is a length-prefixed frame for a WebSocket connection,
	// turned into its last bytes (wsConn.last) on the loop, where the
	// upgrade happens: a binary message and a close frame, or an HTTP
	// refusal if the upgrade has not been answered.
	ws bool
}

// noLastFrame marks a transport closed by close(): nothing more to write.
var noLastFrame = &lastWrite{}

func (t *gnetTransport) send(frame []byte) {
	if t.ws != nil {
		if !t.ws.opened.Load() {
			return
		}
		t.queue(frame, int64(wsWireSize(frame)), true)
		return
	}
	t.queue(frame, int64(len(frame)), false)
}

// sendRaw queues bytes written as they are (a WebSocket pong).
func (t *gnetTransport) sendRaw(b []byte) { t.queue(b, int64(len(b)), false) }

// upgrade writes the 101 on the loop, unless a last frame was set first.
// finish, which turns a WebSocket last frame into bytes, runs on the loop
// too, so it sees the connection either opened or not, never in between.
func (t *gnetTransport) upgrade(resp []byte) bool {
	if t.last.Load() != nil {
		return false
	}
	if _, err := t.c.Write(resp); err != nil {
		return false
	}
	t.ws.opened.Store(true)
	return true
}

// queue appends frame, n bytes on the wire, to the out buffer; with wrap
// each length-prefixed frame becomes a binary WebSocket message.
func (t *gnetTransport) queue(frame []byte, n int64, wrap bool) {
	// Count the frame before looking at last: a frame counted while last
	// was still unset is written before it (finish waits for pending to
	// drain), and one counted after sees it set and backs out.
	p := t.pending.Add(n)
	if t.last.Load() != nil {
		t.retract(n)
		return
	}
	if p+t.buffered.Load() > t.limit {
		t.retract(n)
		t.sess.slowConsumer()
		return
	}
	t.mu.Lock()
	if t.out == nil {
		t.out = t.loop.bufs.Get().(*[]byte)
	}
	if wrap {
		*t.out = wsAppendFrames(*t.out, frame)
	} else {
		*t.out = append(*t.out, frame...)
	}
	first := !t.ready
	t.ready = true
	t.mu.Unlock()
	if first {
		t.loop.add(t)
	}
}

// flush writes the frames waiting in out, on the loop.
func (t *gnetTransport) flush() {
	t.mu.Lock()
	out := t.out
	t.out, t.ready = nil, false
	t.mu.Unlock()
	if out == nil {
		return
	}
	n := int64(len(*out))
	var err error
	if t.gone {
		err = net.ErrClosed
	} else {
		// What the socket does not take now, gnet copies into its
		// outbound buffer: out can go back to the pool.
		_, err = t.c.Write(*out)
	}
	if cap(*out) <= outbufKeep {
		*out = (*out)[:0]
		t.loop.bufs.Put(out)
	}
	rest := t.pending.Add(-n)
	if t.last.Load() != nil {
		if rest == 0 && err == nil {
			t.finish(t.c)
		}
		return
	}
	if err != nil {
		return
	}
	ob := int64(t.c.OutboundBuffered())
	t.buffered.Store(ob)
	if ob > t.limit {
		t.sess.slowConsumer()
	}
}

// retract uncounts a frame that was not handed to the loop after all.
func (t *gnetTransport) retract(n int64) {
	if t.pending.Add(-n) == 0 && t.last.Load() != nil {
		// finish may have seen this frame counted and be waiting for
		// pending to drain; no callback will tell it, so do.
		t.onLoop(t.finish)
	}
}

// onLoop runs fn on the connection's loop, unless the connection is gone. A
// zero-byte AsyncWrite is the cheapest way to run code there.
func (t *gnetTransport) onLoop(fn func(gnet.Conn)) {
	_ = t.c.AsyncWrite(nil, func(c gnet.Conn, err error) error {
		if err == nil {
			fn(c)
		}
		return nil
	})
}

// sendAndClose queues frame to be written after everything accepted so
// far, then closes. gnet offers no way to take frames back out of its
// outbound buffer, so dropQueued cannot be honoured: a slow consumer's
// queue (at most about the outbound limit) is held until it is written or
// lingerWait runs out.
func (t *gnetTransport) sendAndClose(frame []byte, _ bool) {
	t.setLast(&lastWrite{frame: frame, ws: t.ws != nil})
}

// sendRawAndClose is sendAndClose with frame written as it is.
func (t *gnetTransport) sendRawAndClose(frame []byte) { t.setLast(&lastWrite{frame: frame}) }

func (t *gnetTransport) setLast(l *lastWrite) {
	if !t.last.CompareAndSwap(nil, l) {
		return
	}
	t.onLoop(t.finish)
}

// finish runs on the loop once last is set: when every frame accepted
// before the last one has been written, it writes that one, then waits
// for the outbound buffer to empty.
func (t *gnetTransport) finish(c gnet.Conn) {
	if t.lastWritten || t.pending.Load() != 0 {
		return // done already, or a frame accepted earlier is still on its way (its callback calls again)
	}
	t.lastWritten = true
	t.giveUpAt = time.Now().Add(t.wait)
	l := t.last.Load()
	frame := l.frame
	if l.ws {
		frame = t.ws.last(frame, ws.StatusCode(t.ws.code.Load()))
	}
	if len(frame) > 0 {
		if _, err := c.Write(frame); err != nil {
			return // gnet has closed the connection
		}
	}
	t.closeWhenWritten(c)
}

// closeWhenWritten closes once the outbound buffer is empty — the stream
// then ends right after the last frame — checking again from a timer,
// less often as time goes by. A client that reads nothing until lingerWait
// runs out is closed with bytes unwritten, which OnClose turns into a reset.
func (t *gnetTransport) closeWhenWritten(c gnet.Conn) {
	if c.OutboundBuffered() == 0 || !time.Now().Before(t.giveUpAt) {
		_ = c.Close()
		return
	}
	t.pollEvery = min(max(2*t.pollEvery, time.Millisecond), 100*time.Millisecond)
	time.AfterFunc(t.pollEvery, func() {
		if !t.sess.isGone() { // closed meanwhile (the engine stopping): its loop may be gone too
			t.onLoop(t.closeWhenWritten)
		}
	})
}

func (t *gnetTransport) queued() int { return int(t.pending.Load() + t.buffered.Load()) }

// refresh re-reads the outbound buffer size on the loop.
func (t *gnetTransport) refresh() {
	t.onLoop(func(c gnet.Conn) { t.buffered.Store(int64(c.OutboundBuffered())) })
}

func (t *gnetTransport) close() {
	t.last.CompareAndSwap(nil, noLastFrame)
	_ = t.c.Close()
}

// gnetLogger sends gnet's own logs to slog.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Info(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "component", "gnet") }

// isWSConn tells whether c came through the WebSocket listener at ln.
// gnet's LocalAddr is the address its listener was asked for (port 0
// stays 0), so the socket itself is asked: one getsockname per accepted
// connection, only while a WebSocket listener runs.
func isWSConn(ln *net.TCPAddr, c gnet.Conn) bool {
	if ln == nil {
		return false
	}
	sa, err := unix.Getsockname(c.Fd())
	if err != nil {
		return false
	}
	var ta net.TCPAddr
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		ta = net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	case *unix.SockaddrInet6:
		ta = net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	default:
		return false
	}
	if ta.Port != ln.Port {
		return false
	}
	if ln.IP == nil || ln.IP.IsUnspecified() {
		return true
	}
	a, _ := netip.AddrFromSlice(ta.IP)
	b, _ := netip.AddrFromSlice(ln.IP)
	return a.Unmap() == b.Unmap()
}
