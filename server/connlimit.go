package server

import (
	"fmt"

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
	s.metrics.connsRefused.Inc()
	return false
}

// fullFrame is what a refused connection reads before it is closed.
func fullFrame() []byte {
	b, err := protocol.Encode(&chatpb.Frame{Body: &chatpb.Frame_Error{Error: ErrServerFull.Proto()}})
	if err != nil {
		panic(err) // a constant frame
	}
	return b
}
