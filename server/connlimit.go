package server

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// listenBacklog is the accept queue the listener gets (nginx's default on
// Linux). gnet's acceptor drains the whole queue at once, so the queue is
// also the most descriptors a burst can take before a refused connection
// gives its back: fdReserve must hold it.
const listenBacklog = 511

// fdReserve is what the default connection cap leaves of the descriptor
// limit: the accept queue, plus the store's files, Redis connections, the
// admin server, epoll and event descriptors, with room to spare.
const fdReserve = listenBacklog + 257

// ErrServerFull: a connection past --max-conns, told so and closed.
var ErrServerFull = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE, "server is at its connection limit; retry later or on another node")

// defaultMaxConns is the descriptor limit less fdReserve. Past the limit
// accept(2) fails with EMFILE, and gnet's acceptor then stops the whole
// engine, every connection with it; the cap keeps the node short of that.
func defaultMaxConns() (int, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("descriptor limit: %w", err)
	}
	n := int64(lim.Cur) - fdReserve
	if lim.Cur == unix.RLIM_INFINITY || n > 1<<30 {
		n = 1 << 30
	}
	if n < 1 {
		return 0, fmt.Errorf("descriptor limit %d leaves no room for connections (the server keeps %d): raise ulimit -n", lim.Cur, fdReserve)
	}
	return int(n), nil
}

// admit takes a connection slot, or reports (and counts) that none is
// left under MaxConns. An admitted connection gives its slot back in
// removeConn. The count is taken before the engine does anything else
// with the connection, so concurrent accepts cannot overshoot.
func (s *Server) admit() bool {
	if s.slots.Add(1) <= int64(s.opts.MaxConns) {
		return true
	}
	s.slots.Add(-1)
	s.metrics.connsRefused.WithLabelValues("max_conns").Inc()
	return false
}

// refusalFrame is the one frame a refused connection reads before it is
// closed: an Error push with seq 0.
func refusalFrame(e *protocol.Error) []byte {
	b, err := protocol.Encode(&chatpb.Frame{Body: &chatpb.Frame_Error{Error: e.Proto()}})
	if err != nil {
		panic(err) // a constant frame
	}
	return b
}

// drainedFrame is the one frame a connection arriving while the node
// drains reads before it is closed: the Kicked{SERVER_SHUTTING_DOWN} that
// the connections already open get, so a client tells a node going away
// (reconnect, through the load balancer, to another) from a broken one.
func drainedFrame() []byte {
	b, err := protocol.Encode(&chatpb.Frame{Body: &chatpb.Frame_Kicked{Kicked: &chatpb.Kicked{
		Reason: chatpb.KickReason_KICK_REASON_SERVER_SHUTTING_DOWN, Message: "server shutting down"}}})
	if err != nil {
		panic(err) // a constant frame
	}
	return b
}

// ErrAddressBusy: a connection from an address that already has
// MaxAnonymousPerAddress connections not yet logged in.
var ErrAddressBusy = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED, "too many connections from your address have not logged in; log in on those or retry later")

// errAddressBusy is how takeProxyHeader reports ErrAddressBusy to the engine.
var errAddressBusy = errors.New("address has too many connections not logged in")

// anonymous counts, per client address (IPv6: per /64, as the login guard
// does), the connections that have not logged in yet. The connection cap
// alone lets one host take every slot with connections that never log in,
// reconnecting as the login deadline closes them; this keeps each address
// to a share, while a logged-in connection no longer counts.
type anonymous struct {
	limit int // <= 0: no limit
	mu    sync.Mutex
	n     map[netip.Prefix]int
}

func newAnonymous(limit int) *anonymous {
	return &anonymous{limit: limit, n: make(map[netip.Prefix]int)}
}

// holdAnonymous counts c under its (now final) client address, or reports that the
// address has no room; a refusal is counted.
func (s *Server) holdAnonymous(c *session) bool {
	a := s.anon
	if a.limit <= 0 {
		return true
	}
	key, ok := source(c.remoteAddr())
	if !ok {
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n[key] >= a.limit {
		s.metrics.connsRefused.WithLabelValues("address").Inc()
		return false
	}
	a.n[key]++
	c.anonKey = key
	c.anonHeld.Store(true)
	return true
}

// releaseAnonymous stops counting c: it logged in, or it is gone.
func (s *Server) releaseAnonymous(c *session) {
	if !c.anonHeld.CompareAndSwap(true, false) {
		return
	}
	a := s.anon
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n[c.anonKey]--; a.n[c.anonKey] <= 0 {
		delete(a.n, c.anonKey)
	}
}
