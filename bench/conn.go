package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/loopchat/loopchat/codec"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// errClosed: the connection is gone.
var errClosed = errors.New("bench: connection closed")

// Conn is one load-generator connection, over TCP or WebSocket.
type Conn struct {
	c   net.Conn
	r   frameReader
	ws  bool // frames go out as masked binary WebSocket messages
	wmu sync.Mutex
	w   *bufio.Writer
	seq atomic.Uint64

	mu      sync.Mutex
	pending map[uint64]func(*chatpb.Frame, error)

	onPush atomic.Pointer[func(*chatpb.Frame)]
	done   chan struct{}
	err    error
}

// SourceIP returns the i-th client source address, spread over 127.0.0.0/8
// (127.1.0.1, 127.1.0.2, ...): one address per connection keeps every
// 4-tuple unique however many connections and generator processes run.
func SourceIP(i int) netip.Addr {
	i %= 254 * 254 * 250
	return netip.AddrFrom4([4]byte{127, byte(1 + i/(254*254)), byte((i / 254) % 254), byte(1 + i%254)})
}

// synRetries bounds how long a connect to an unanswering address can
// take (SYN retransmits after 1+2+4 s, then failure at about 15 s), in
// place of a dial timeout: a timeout arms a timer per dial, and a
// cancellable context a watcher goroutine, both measurable per login in
// a storm of tens of thousands of dials.
const synRetries = 3

// dialer makes connections as cheaply as the net package allows: no
// keepalive probes (four setsockopts per dial; the bench's connections
// live for one run), and the source address bound with
// IP_BIND_ADDRESS_NO_PORT, so the kernel picks the port at connect time
// per destination instead of reserving one per source address at bind.
func dialer(src netip.Addr) *net.Dialer {
	d := &net.Dialer{KeepAlive: -1}
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	d.Control = func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_SYNCNT, synRetries)
			if serr == nil && src.IsValid() {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
	return d
}

// connBuffer sizes each connection's read and write buffers: frames here
// are a few hundred bytes, and 19,000 connections per process add up.
const connBuffer = 1024

// frameReader reads frame payloads: codec.Reader over TCP, wsReader over
// WebSocket.
type frameReader interface {
	Next() ([]byte, error)
}

// Dial connects to addr from src (the zero Addr for any), speaking
// transport (TransportTCP or TransportWS; empty is TCP). A cancelled ctx
// stops new dials; a connect already under way is not interrupted
// (synRetries bounds it), which spares a watcher goroutine per dial.
func Dial(ctx context.Context, transport, addr string, src netip.Addr) (*Conn, error) {
	c, err := dial(ctx, transport, addr, src)
	if err != nil {
		return nil, err
	}
	go c.read()
	return c, nil
}

// DialLogin connects and logs in with token on the calling goroutine —
// one write, then read until the answer — and only then starts the
// reader: when thousands connect at once that spares a hand-off between
// goroutines per login. ctx being cancelled closes a connection still
// waiting.
func DialLogin(ctx context.Context, transport, addr string, src netip.Addr, token string) (*Conn, error) {
	c, err := dialLogin(ctx, transport, addr, src, token)
	if err != nil {
		return nil, err
	}
	go c.read()
	return c, nil
}

// holdLogin is DialLogin for a connection that will only be held open and
// closed, as in a login storm: with no reader goroutine (one goroutine,
// read and park fewer per connection), requests on it fail with
// errClosed and Close does not wait for a reader.
func holdLogin(ctx context.Context, transport, addr string, src netip.Addr, token string) (*Conn, error) {
	c, err := dialLogin(ctx, transport, addr, src, token)
	if err != nil {
		return nil, err
	}
	c.pending = nil
	close(c.done)
	return c, nil
}

// dialLogin connects and logs in, without starting the reader.
func dialLogin(ctx context.Context, transport, addr string, src netip.Addr, token string) (*Conn, error) {
	c, err := dial(ctx, transport, addr, src)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Conn, error) {
		c.c.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.c.Close() })
	defer stop()
	f := &chatpb.Frame{Seq: c.seq.Add(1), Body: &chatpb.Frame_Login{Login: &chatpb.Login{Token: token}}}
	buf, err := protocol.Encode(f)
	if err != nil {
		return fail(err)
	}
	if err = c.writeFrame(buf); err == nil {
		err = c.w.Flush()
	}
	if err != nil {
		return fail(err)
	}
	for {
		p, err := c.r.Next()
		if err != nil {
			return fail(err)
		}
		resp, err := protocol.Decode(p)
		if err != nil {
			return fail(err)
		}
		if resp.Seq != f.Seq {
			continue // nothing is pushed before LoginOK; skip rather than guess
		}
		if e := resp.GetError(); e != nil {
			return fail(protocol.ErrorFromProto(e))
		}
		if resp.GetLoginOk() == nil {
			return fail(fmt.Errorf("bench: login answered with %T", resp.Body))
		}
		break
	}
	if !stop() {
		return nil, ctx.Err() // the connection was closed under us
	}
	return c, nil
}

// dial connects (and upgrades, over WebSocket) without starting the reader.
func dial(ctx context.Context, transport, addr string, src netip.Addr) (*Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	nc, err := dialer(src).DialContext(context.WithoutCancel(ctx), "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &Conn{c: nc, w: bufio.NewWriterSize(nc, connBuffer), pending: make(map[uint64]func(*chatpb.Frame, error)),
		done: make(chan struct{})}
	switch transport {
	case "", TransportTCP:
		c.r = codec.NewReader(bufio.NewReaderSize(nc, connBuffer), protocol.ClientMaxFrame)
	case TransportWS:
		stop := context.AfterFunc(ctx, func() { nc.Close() })
		rest, err := wsUpgrade(nc, addr)
		if !stop() && err == nil {
			err = ctx.Err()
		}
		if err != nil {
			nc.Close()
			return nil, err
		}
		if rest == nil {
			rest = nc
		}
		c.r, c.ws = newWSReader(bufio.NewReaderSize(rest, connBuffer), protocol.ClientMaxFrame), true
	default:
		nc.Close()
		return nil, CheckTransport(transport)
	}
	return c, nil
}

// writeFrame buffers one encoded frame (length-prefixed), as a masked
// binary message over WebSocket; c.wmu held, or c not yet shared.
func (c *Conn) writeFrame(buf []byte) error {
	if c.ws {
		return writeWS(c.w, buf)
	}
	_, err := c.w.Write(buf)
	return err
}

// OnPush sets the handler of server pushes (seq 0); it runs on the reader.
func (c *Conn) OnPush(f func(*chatpb.Frame)) { c.onPush.Store(&f) }

func (c *Conn) read() {
	r := c.r
	var err error
	for {
		var p []byte
		if p, err = r.Next(); err != nil {
			break
		}
		var f *chatpb.Frame
		if f, err = protocol.Decode(p); err != nil {
			break
		}
		if f.Seq == 0 {
			if h := c.onPush.Load(); h != nil {
				(*h)(f)
			}
			continue
		}
		c.mu.Lock()
		cb := c.pending[f.Seq]
		delete(c.pending, f.Seq)
		c.mu.Unlock()
		if cb != nil {
			cb(f, nil)
		}
	}
	c.mu.Lock()
	c.err = err
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	close(c.done)
	for _, cb := range pending {
		cb(nil, errClosed)
	}
}

// Go sends a request; cb gets the response (or an error) on the reader.
// flush=false lets several requests share one write (call Flush after).
func (c *Conn) Go(f *chatpb.Frame, flush bool, cb func(*chatpb.Frame, error)) error {
	f.Seq = c.seq.Add(1)
	buf, err := protocol.Encode(f)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.pending == nil {
		c.mu.Unlock()
		return errClosed
	}
	if cb != nil {
		c.pending[f.Seq] = cb
	}
	c.mu.Unlock()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.writeFrame(buf); err != nil {
		return err
	}
	if flush {
		return c.w.Flush()
	}
	return nil
}

// Flush writes what Go buffered.
func (c *Conn) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.w.Flush()
}

// Call sends a request and waits for its response; an Error response is
// returned as a *protocol.Error from protocol.ErrorFromProto, which matches
// the sentinel of its code.
func (c *Conn) Call(ctx context.Context, f *chatpb.Frame) (*chatpb.Frame, error) {
	type result struct {
		f   *chatpb.Frame
		err error
	}
	ch := make(chan result, 1)
	if err := c.Go(f, true, func(r *chatpb.Frame, err error) { ch <- result{r, err} }); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		if e := r.f.GetError(); e != nil {
			return nil, protocol.ErrorFromProto(e)
		}
		return r.f, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close closes the connection.
func (c *Conn) Close() error {
	err := c.c.Close()
	<-c.done
	return err
}
