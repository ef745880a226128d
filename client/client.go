// Package client is the Go SDK for loopchat: dial, register, log in with a
// password or token, send, receive pushes, acknowledge, manage friends and
// groups, keep the connection alive with pings, and reconnect with backoff
// and a token re-login when the connection drops.
//
// A Client is safe for concurrent use. Requests may be issued from many
// goroutines; responses are matched by seq. Pushes (messages, kicks) and
// connection events arrive on Events(), which must be drained: when it is
// full the reader waits, and a server kicks a client that stops reading.
package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/loopchat/loopchat/codec"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

var (
	// ErrDisconnected: the connection dropped before the response came.
	ErrDisconnected = errors.New("client: disconnected")
	// ErrClosed: the Client was closed.
	ErrClosed = errors.New("client: closed")
)

// Options configures a Client. Zero values mean the documented default.
type Options struct {
	// Addr is the server (or nginx) address, host:port. Required.
	Addr string
	// LocalAddr binds the client's source IP (e.g. "127.0.0.7"); the port
	// is picked by the kernel. Empty means any.
	LocalAddr string
	// DialTimeout bounds one connection attempt. Zero means 5s.
	DialTimeout time.Duration
	// RequestTimeout bounds a request whose context has no deadline. Zero means 10s.
	RequestTimeout time.Duration
	// PingInterval is the keepalive period (servers close connections idle
	// for 90s by default). A ping unanswered within RequestTimeout drops
	// the connection (and reconnects, if enabled). Zero means 30s; negative
	// disables pings.
	PingInterval time.Duration
	// Reconnect re-dials after the connection drops and logs in again with
	// the last token. It does not after Close, Logout, or a kick for
	// logging in elsewhere, for the device limit or by the server's API
	// (DISCONNECTED_BY_SERVER).
	Reconnect bool
	// MinBackoff and MaxBackoff bound the reconnect delay, which doubles
	// with jitter. Zero means 100ms and 5s.
	MinBackoff, MaxBackoff time.Duration
	// EventBuffer is the capacity of Events(). Zero means 1024.
	EventBuffer int
	// Logger gets the client's debug logs. Nil means none.
	Logger *slog.Logger
	// DeviceID names this installation to the server (Login.device_id):
	// each device has its own inbox and may be online beside the user's
	// other devices. Keep it stable across runs. Empty is the device every
	// client without an id shares.
	DeviceID string
}

// Event is one push or connection event; exactly one field is set, but for
// Reconnecting, which goes with Disconnected.
type Event struct {
	// Message is a chat message; Ack it once it is shown.
	Message *chatpb.Message
	// Kicked says the server is closing the connection, and why.
	Kicked *chatpb.Kicked
	// Read is a read receipt: the peer (or you, on another session) read a
	// conversation up to a seq.
	Read *chatpb.ReadReceipt
	// Presence is a friend's presence change: online, or offline with
	// when they were last seen. It carries the friend's whole state; apply
	// it over the friend list of the last LoginOK.
	Presence *chatpb.Presence
	// Typing says someone is typing in a conversation of yours: show it
	// for 5 s, or until their next message there.
	Typing *chatpb.TypingNotice
	// Error is an error pushed without a request (e.g. a protocol error).
	Error *chatpb.Error
	// Disconnected reports a lost connection, with the cause.
	Disconnected error
	// Reconnecting, with Disconnected, says the client is trying to
	// reconnect: Reconnected follows once it has, or another Disconnected
	// if an attempt fails after connecting. False means it has given up
	// (no token, Options.Reconnect off, logged out, kicked for a newer
	// login, or the token refused): requests fail until a new Client is
	// dialed. A display can tell "reconnecting…" from "offline" by it.
	Reconnecting bool
	// Reconnected reports a new connection logged in with the token.
	Reconnected *chatpb.LoginOK
}

// Client is a connection to a loopchat server.
type Client struct {
	opts   Options
	events chan Event

	mu       sync.Mutex
	conn     net.Conn
	w        *bufio.Writer
	pending  map[uint64]chan *chatpb.Frame
	seq      uint64
	token    string
	stopRe   bool          // no reconnect (closed, logged out, kicked for a newer login)
	backoff  time.Duration // next reconnect delay; reset by a successful reconnect
	username string        // from the last LoginOK
	userID   uint64        // likewise
	closed   bool
	done     chan struct{}
	wg       sync.WaitGroup
}

// Dial connects to opts.Addr.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 10 * time.Second
	}
	if opts.PingInterval == 0 {
		opts.PingInterval = 30 * time.Second
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.EventBuffer <= 0 {
		opts.EventBuffer = 1024
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{opts: opts, events: make(chan Event, opts.EventBuffer),
		pending: make(map[uint64]chan *chatpb.Frame), done: make(chan struct{})}
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	c.attach(conn)
	if opts.PingInterval > 0 {
		c.wg.Add(1)
		go c.keepalive()
	}
	return c, nil
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: c.opts.DialTimeout}
	if c.opts.LocalAddr != "" {
		ip := net.ParseIP(c.opts.LocalAddr)
		if ip == nil {
			return nil, fmt.Errorf("client: bad local address %q", c.opts.LocalAddr)
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	conn, err := d.DialContext(ctx, "tcp", c.opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", c.opts.Addr, err)
	}
	return conn, nil
}

// attach makes conn the current connection and starts its reader.
func (c *Client) attach(conn net.Conn) {
	c.mu.Lock()
	c.conn = conn
	c.w = bufio.NewWriter(conn)
	c.mu.Unlock()
	c.wg.Add(1)
	go c.readLoop(conn)
}

// Events delivers pushes and connection events. It is closed by Close.
func (c *Client) Events() <-chan Event { return c.events }

// Token is the last login token, for resuming elsewhere.
func (c *Client) Token() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

// Username is who the last LoginOK said we are ("" before any login).
func (c *Client) Username() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.username
}

// UserID is who the last LoginOK said we are (0 before any login). A
// Message from this id is the user's own, sent from another device.
func (c *Client) UserID() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.userID
}

// Close closes the connection and stops reconnecting; Events is closed once
// the reader has stopped.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed, c.stopRe = true, true
	close(c.done)
	conn := c.conn
	c.mu.Unlock()
	var err error
	if conn != nil {
		err = conn.Close()
	}
	c.wg.Wait()
	close(c.events)
	return err
}

func (c *Client) readLoop(conn net.Conn) {
	defer c.wg.Done()
	r := codec.NewReader(bufio.NewReader(conn), protocol.ClientMaxFrame)
	var err error
	for {
		var payload []byte
		if payload, err = r.Next(); err != nil {
			break
		}
		var f *chatpb.Frame
		if f, err = protocol.Decode(payload); err != nil {
			break
		}
		if f.Seq != 0 {
			c.mu.Lock()
			if ok := f.GetLoginOk(); ok != nil {
				// Recorded before reading on, so pushes that follow the
				// LoginOK already see who we are.
				c.username, c.userID = ok.Username, ok.UserId
			}
			ch := c.pending[f.Seq]
			delete(c.pending, f.Seq)
			c.mu.Unlock()
			if ch != nil {
				ch <- f
			}
			continue
		}
		switch b := f.Body.(type) {
		case *chatpb.Frame_Message:
			c.emit(Event{Message: b.Message})
		case *chatpb.Frame_Kicked:
			switch b.Kicked.Reason {
			case chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE, chatpb.KickReason_KICK_REASON_DEVICE_LIMIT,
				chatpb.KickReason_KICK_REASON_DISCONNECTED_BY_SERVER:
				// Coming back by ourselves would undo what kicked us.
				c.mu.Lock()
				c.stopRe = true
				c.mu.Unlock()
			}
			c.emit(Event{Kicked: b.Kicked})
		case *chatpb.Frame_Error:
			c.emit(Event{Error: b.Error})
		case *chatpb.Frame_ReadReceipt:
			c.emit(Event{Read: b.ReadReceipt})
		case *chatpb.Frame_Presence:
			c.emit(Event{Presence: b.Presence})
		case *chatpb.Frame_TypingNotice:
			c.emit(Event{Typing: b.TypingNotice})
		}
	}
	conn.Close()
	c.mu.Lock()
	for seq, ch := range c.pending {
		close(ch)
		delete(c.pending, seq)
	}
	if c.conn == conn {
		c.conn = nil
	}
	closed, reconnect := c.closed, c.opts.Reconnect && !c.stopRe && c.token != ""
	c.mu.Unlock()
	if closed {
		return
	}
	c.emit(Event{Disconnected: err, Reconnecting: reconnect})
	if reconnect {
		c.wg.Add(1)
		go c.reconnect()
	}
}

// emit delivers an event, waiting while the buffer is full unless closed.
func (c *Client) emit(ev Event) {
	select {
	case c.events <- ev:
	case <-c.done:
	}
}

func (c *Client) reconnect() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		backoff := max(c.backoff, c.opts.MinBackoff)
		c.backoff = min(2*backoff, c.opts.MaxBackoff)
		c.mu.Unlock()
		select {
		case <-c.done:
			return
		case <-time.After(jitter(backoff)):
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.DialTimeout)
		conn, err := c.dial(ctx)
		cancel()
		if err != nil {
			c.opts.Logger.Debug("reconnect: dial failed", "err", err)
			continue
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			conn.Close()
			return
		}
		token := c.token
		c.mu.Unlock()
		c.attach(conn)
		ok, err := c.LoginToken(context.Background(), token)
		if err != nil {
			c.opts.Logger.Debug("reconnect: token login failed", "err", err)
			if protocol.HasCode(err, chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED) {
				// The token is no good; retrying cannot help.
				c.mu.Lock()
				c.stopRe = true
				c.mu.Unlock()
			}
			// Closing makes conn's reader report the disconnect and, unless
			// stopped, start the next attempt.
			conn.Close()
			return
		}
		c.mu.Lock()
		c.backoff = 0
		c.mu.Unlock()
		c.emit(Event{Reconnected: ok})
		return
	}
}

func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(time.Now().UnixNano()%int64(d/2+1))
}

func (c *Client) keepalive() {
	defer c.wg.Done()
	t := time.NewTicker(c.opts.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), c.opts.RequestTimeout)
			_, err := c.Ping(ctx)
			cancel()
			if errors.Is(err, context.DeadlineExceeded) {
				// The server (or the path to it) hangs: drop the connection
				// so the reader reports it and, if enabled, we reconnect.
				c.mu.Lock()
				if c.conn != nil {
					c.conn.Close()
				}
				c.mu.Unlock()
			}
		}
	}
}

// Do sends a request frame and waits for its response. A server Error
// response is returned as a *protocol.Error made by protocol.ErrorFromProto:
// the wire carries only a code and a message, so such an error matches the
// code's sentinel, and errors.Is(err, protocol.ErrNotFound) holds for any
// NOT_FOUND the server answered. It never matches the server package's
// finer sentinels (server.ErrUserNotFound and the like), which the client
// cannot tell apart; protocol.CodeOf and protocol.HasCode give the code.
func (c *Client) Do(ctx context.Context, req *chatpb.Frame) (*chatpb.Frame, error) {
	ch, err := c.write(req, true)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.RequestTimeout)
		defer cancel()
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			return nil, ErrDisconnected
		}
		if e := resp.GetError(); e != nil {
			return nil, protocol.ErrorFromProto(e)
		}
		return resp, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, req.Seq)
		c.mu.Unlock()
		return nil, ctx.Err()
	}
}

// write assigns req a seq and writes it; with wait it registers for the response.
func (c *Client) write(req *chatpb.Frame, wait bool) (chan *chatpb.Frame, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.conn == nil {
		return nil, ErrDisconnected
	}
	c.seq++
	req.Seq = c.seq
	buf, err := protocol.Encode(req)
	if err != nil {
		return nil, err
	}
	var ch chan *chatpb.Frame
	if wait {
		ch = make(chan *chatpb.Frame, 1)
		c.pending[req.Seq] = ch
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.opts.RequestTimeout))
	if _, err = c.w.Write(buf); err == nil {
		err = c.w.Flush()
	}
	if err != nil {
		delete(c.pending, req.Seq)
		c.conn.Close() // the reader notices and reports the disconnect
		return nil, fmt.Errorf("%w: %v", ErrDisconnected, err)
	}
	return ch, nil
}
