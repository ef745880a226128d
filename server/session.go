package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/loopchat/loopchat/codec"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// transport is an engine's write side of one connection. Every method is
// safe for concurrent use and none blocks.
type transport interface {
	// send queues an encoded frame. The transport only reads it, and
	// nothing may change it afterwards: one push's bytes are shared by
	// every connection they go to (fanout.go). When more than the outbound
	// limit is waiting, the connection is closed as a slow consumer
	// instead.
	send(frame []byte)
	// sendAndClose makes frame the last one: nothing is accepted after it,
	// it is written whole after the frames accepted before it, and the
	// connection closes once all of it has been handed to the kernel — or
	// is reset when the client has not read it within writeWait. With
	// dropQueued, frames not yet started may be dropped instead of written
	// (engines that can; the client is not reading them anyway).
	sendAndClose(frame []byte, dropQueued bool)
	// queued estimates the bytes accepted but not yet written to the socket.
	queued() int
	// close closes the connection without a last frame.
	close()
}

// sessionUser is who a session is logged in as.
type sessionUser struct {
	id        uint64
	name      string
	loginAtMs int64
	gen       uint64 // session generation: a higher one of the same device kicks this one
	epoch     string // the store epoch the session logged in under (epoch.go)
	device    string // Login.device_id ("" also when Options.MaxDevices is 1)
	box       uint64 // the device's inbox (device.go)
	from      sender // this session as the sender of its messages
}

// mailItem is one unit of a session's ordered work: a request, or the
// notice that the connection closed (cleanup runs after earlier requests).
type mailItem struct {
	frame  *chatpb.Frame
	size   int // the frame's bytes on the wire, counted against maxPendingBytes
	closed bool
	resync bool          // replay the inbox: live pushes may have been missed
	retry  time.Duration // resync: the wait before this attempt (0: the first)
	// invalid answers frame (which holds only its seq) with this
	// INVALID_ARGUMENT error instead of running it: in its turn, so the
	// answer does not overtake those of the requests before it.
	invalid error
	// broken is the protocol error that ended the stream: Error{PROTOCOL}
	// and Kicked go out after the answers of every request read before it.
	broken error
}

// maxPendingBytes bounds the request bytes one connection may have waiting
// for a worker, beside MaxPending's count: while the store or Redis stalls,
// 256 frames of 64 KiB would hold 16 MiB per connection. Every legitimate
// request is far smaller (the largest, an Ack of 1,024 ids, is ~10 KiB),
// and a frame of any allowed size still fits alone.
func (s *Server) maxPendingBytes() int { return max(1<<20, s.opts.MaxFrame) }

// replayState buffers live pushes while the inbox is being replayed at
// login, so the client sees its inbox oldest first, then live messages,
// each once.
type replayState struct {
	held     []Event
	overflow bool
	sent     map[uint64]struct{}
	// frames are presence and typing pushes held meanwhile (at most
	// maxHeldPushes; beyond, they are dropped), written before the held
	// messages: at login they come after LoginOK, whose friend list they
	// update.
	frames [][]byte
	// again: a resync was asked for while this replay ran (the net engine
	// runs a login's replay beside the worker that takes the resync), so
	// the inbox is read once more before the held pushes go out.
	again bool
}

// maxHeldPushes bounds live pushes buffered during a replay; beyond it the
// replay re-reads the inbox instead (the messages are stored there anyway).
const maxHeldPushes = 4096

// replayPage is how many inbox messages one store read returns.
const replayPage = 256

// requestTimeout bounds each request's store and broker calls.
const requestTimeout = 10 * time.Second

// session is the server's state for one client connection.
//
// Concurrency: the reading side (an event loop, or the net engine's reader
// goroutine) owns broken; limiter is charged there per request, and by
// the worker for a group send's fan-out (rate.Limiter locks). Requests run on one worker at a time
// (mailbox), so handlers see each connection's requests in order. Fields
// read by other goroutines (sweeper, event delivery) are atomics or under mu.
type session struct {
	srv      *Server
	id       uint64
	peer     string                 // the TCP peer address
	remote   atomic.Pointer[string] // the client: peer, or what a trusted PROXY header said
	proxy    proxyState             // reading side only
	out      transport
	openedAt int64 // unix ns
	lastSeen atomic.Int64
	limiter  *rate.Limiter
	// typing limits the Typing notices forwarded (typing.go); made at the
	// first one. Requests run one at a time: no lock.
	typing *rate.Limiter
	broken bool
	// ws is set on a WebSocket connection (websocket.go); its transport
	// holds the same.
	ws     *wsConn
	kicked atomic.Bool
	// loggedInOnce lifts the login deadline for good: a client that logs
	// out and in again (or registers users) is not a lurker.
	loggedInOnce atomic.Bool
	user         atomic.Pointer[sessionUser]
	// reqCtx is handle's only, made at a logged-in session's first
	// request that needs a context: an idle session (pings) keeps none.
	reqCtx *requestCtx
	// anonHeld: counted among its address's connections not logged in
	// (anonKey), until it logs in or goes.
	anonHeld atomic.Bool
	anonKey  netip.Prefix

	mu      sync.Mutex
	queue   []mailItem
	queued  int // bytes of the frames in queue
	running bool
	gone    bool
	// resyncQueued: a resync waits in queue. Another is not queued: the
	// waiting one reads the inbox later than either notice (a cluster
	// failover sends one per batch of channels subscribed again, and each
	// replay pushed every unacked message again).
	resyncQueued bool

	pushMu sync.Mutex
	replay *replayState
	// replayedLate holds ids the last replay pushed that were stored in the
	// last few seconds: their live publish may still be on its way (stored,
	// then published), and must not be pushed a second time.
	replayedLate      map[uint64]struct{}
	replayedLateUntil time.Time
	// transient holds presence and typing pushes (under pushMu) until the
	// transient flusher writes them together (transient.go).
	transient []byte

	// reads is, per reader and conversation, the highest seq this session
	// was told (ReadReceipt) or marked itself (under readsMu; made at the
	// first). Racing marks of one reader (two devices) are stored in one
	// order but published in any, so a lower receipt after a higher one is
	// stale: it is dropped, and receipts never go back.
	readsMu sync.Mutex
	reads   map[readerConv]uint64
}

// readerConv names a read seq: a reader's, in a conversation.
type readerConv struct {
	reader uint64
	conv   Conversation
}

// maxReadsKept bounds session.reads. A stale receipt is in flight for
// milliseconds at most, so the map starts again once full: a receipt
// slips through only if it is stale at that very moment.
const maxReadsKept = 64

// A resync that could not read the user's latest session generation tries
// again after minResyncRetry, doubling up to maxResyncRetry.
const (
	minResyncRetry = 50 * time.Millisecond
	maxResyncRetry = 2 * time.Second
)

// lateLivePush bounds how long after a replay a live publish of a message
// the replay already pushed may still arrive.
const lateLivePush = 5 * time.Second

func (s *Server) newSession(peer net.Addr, out transport) *session {
	now := time.Now().UnixNano()
	c := &session{
		srv:      s,
		id:       s.nextConnID.Add(1),
		peer:     peer.String(),
		proxy:    s.proxyStateFor(peer),
		out:      out,
		openedAt: now,
		limiter:  rate.NewLimiter(rate.Limit(s.opts.RateLimit), s.opts.RateBurst),
	}
	c.lastSeen.Store(now)
	c.remote.Store(&c.peer)
	return c
}

// remoteAddr is the client's address for logs and debug views.
func (c *session) remoteAddr() string { return *c.remote.Load() }

func (c *session) logger() *slog.Logger {
	l := c.srv.log.With("conn", c.id, "remote", c.remoteAddr())
	if u := c.user.Load(); u != nil {
		l = l.With("user_id", u.id, "user", u.name)
	}
	return l
}

// debug logs at debug level, building the connection's attributes only
// when that level is on.
func (c *session) debug(msg string, args ...any) {
	if c.srv.log.Enabled(context.Background(), slog.LevelDebug) {
		c.logger().Debug(msg, args...)
	}
}

// received handles one frame payload on the reading side. With inline the
// request runs right here (net engine); otherwise it is queued for a worker
// (gnet: the event loop must not wait). It returns false after a protocol
// error: the connection is being closed and must not be read further.
//
// Answers keep request order: a malformed frame's INVALID_ARGUMENT is
// queued like a request. Only RATE_LIMITED is answered at once, from the
// reading side, and may overtake answers still being worked on: refusing
// must stay cheap when a client floods (docs/protocol.md says so).
func (c *session) received(payload []byte, inline bool) bool {
	f, err := protocol.Decode(payload)
	var refusal error
	if err != nil {
		// Not inline: a variable errors.As takes the address of is a heap
		// variable for every frame, failed or not.
		if f, refusal = invalidRequest(err); f == nil {
			c.protocolError("garbage", err, inline)
			return false
		}
	}
	if !c.limiter.Allow() {
		c.srv.metrics.rateLimited.Inc()
		c.fail(f.GetSeq(), protocol.Kind(f), ErrRateLimited)
		return true
	}
	switch {
	case inline && refusal != nil:
		c.fail(f.Seq, "invalid", refusal)
		return true
	case inline:
		c.handle(f)
		return true
	}
	if !c.enqueue(mailItem{frame: f, size: len(payload), invalid: refusal}) {
		c.srv.metrics.rateLimited.Inc()
		c.fail(f.GetSeq(), protocol.Kind(f), ErrTooManyPending)
	}
	return true
}

// invalidRequest is what received answers a frame Decode refused with:
// a frame holding only its seq and the INVALID_ARGUMENT to answer it with,
// or nil when the payload is garbage.
func invalidRequest(err error) (*chatpb.Frame, error) {
	var invalid *protocol.InvalidFrameError
	if !errors.As(err, &invalid) {
		return nil, nil
	}
	return &chatpb.Frame{Seq: invalid.Seq}, protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT,
		"malformed request (strings must be valid UTF-8): %v", invalid.Err)
}

// frameError is called by an engine when the framing itself is broken;
// inline as for received.
func (c *session) frameError(err error, inline bool) {
	if errors.Is(err, errAddressBusy) {
		c.broken = true
		c.out.sendAndClose(c.srv.addressBusy, false)
		return
	}
	kind := "garbage"
	switch {
	case errors.Is(err, codec.ErrZeroLength):
		kind = "zero_length"
	case errors.Is(err, codec.ErrFrameTooLarge):
		kind = "too_large"
	case errors.Is(err, codec.ErrProxyHeader):
		kind = "proxy_header"
	}
	c.protocolError(kind, err, inline)
}

// protocolError stops reading at once: the byte stream cannot be trusted
// past this point. The requests read before it are still answered, in
// order; then the client is told what broke and the connection closes.
// With inline they already have been (net engine), so that goes out now;
// otherwise it waits in the mailbox behind them. Writing it from the loop
// would let it overtake their answers, and the close after Kicked would
// then drop those answers although the requests ran.
func (c *session) protocolError(kind string, err error, inline bool) {
	c.broken = true
	c.srv.metrics.frameErrors.WithLabelValues(kind).Inc()
	c.logger().Info("protocol error", "kind", kind, "err", err)
	if inline {
		c.closeBroken(err)
		return
	}
	c.enqueue(mailItem{broken: err}) // never refused: only frames count against the bounds
}

// closeBroken writes Error{PROTOCOL} and Kicked{PROTOCOL_ERROR}, then closes.
func (c *session) closeBroken(err error) {
	c.write(&chatpb.Frame{Body: &chatpb.Frame_Error{Error: &chatpb.Error{
		Code: chatpb.ErrorCode_ERROR_CODE_PROTOCOL, Message: err.Error()}}})
	c.kick(chatpb.KickReason_KICK_REASON_PROTOCOL_ERROR, err.Error())
}

func (c *session) enqueue(it mailItem) bool {
	c.mu.Lock()
	if it.frame != nil && (len(c.queue) >= c.srv.opts.MaxPending ||
		c.queued > 0 && c.queued+it.size > c.srv.maxPendingBytes()) {
		c.mu.Unlock()
		return false
	}
	if it.resync {
		if c.resyncQueued {
			c.mu.Unlock()
			return true
		}
		c.resyncQueued = true
	}
	c.queue = append(c.queue, it)
	c.queued += it.size
	start := !c.running
	c.running = true
	c.mu.Unlock()
	if start {
		c.srv.runq.push(c)
	}
	return true
}

// drain runs the mailbox until it is empty; one worker at a time.
func (c *session) drain() {
	for {
		c.mu.Lock()
		if len(c.queue) == 0 {
			c.queue = nil // an idle connection keeps no buffer
			c.running = false
			c.mu.Unlock()
			return
		}
		it := c.queue[0]
		c.queue[0] = mailItem{}
		c.queue = c.queue[1:]
		c.queued -= it.size
		if it.resync {
			c.resyncQueued = false
		}
		gone := c.gone
		c.mu.Unlock()
		switch {
		case it.closed:
			c.cleanup()
		case it.resync:
			if !gone {
				c.resync(it.retry)
			}
		case it.broken != nil:
			if !gone {
				c.closeBroken(it.broken)
			}
		case it.invalid != nil:
			if !gone {
				c.fail(it.frame.Seq, "invalid", it.invalid)
			}
		case !gone:
			c.handle(it.frame)
		case it.frame.GetAck() != nil && c.user.Load() != nil:
			// A client that acks and hangs up at once still means the ack;
			// it needs no response, so run it though the connection is gone.
			c.handle(it.frame)
		}
	}
}

// closed is called once by the engine when the connection is gone. With
// inline the cleanup runs now; otherwise after the requests already queued.
func (c *session) closed(inline bool) {
	c.mu.Lock()
	c.gone = true
	c.mu.Unlock()
	c.srv.releaseAnonymous(c)
	c.srv.removeConn(c)
	if inline {
		c.cleanup()
		return
	}
	c.enqueue(mailItem{closed: true})
}

func (c *session) isGone() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gone
}

// holds tells whether u is still the user logged in on c. Pushes check it
// under the lock dropUserState takes after a Logout swapped the user out,
// so a push for the user who left is either in what that drops or not
// taken at all: never written to whoever logs in next on the connection.
func (c *session) holds(u *sessionUser) bool { return c.user.Load() == u }

// dropUserState forgets what the session gathered for the user who just
// logged out of it: presence and typing pushes waiting for the transient
// flusher, the ids of the last replay, the read seqs it was told. The
// connection stays open, and the next user on it must see none of that.
func (c *session) dropUserState() {
	c.pushMu.Lock()
	c.transient = nil
	c.replayedLate = nil
	c.pushMu.Unlock()
	c.readsMu.Lock()
	c.reads = nil
	c.readsMu.Unlock()
}

// cleanup logs the user out of this node when the connection ends.
func (c *session) cleanup() {
	if u := c.user.Swap(nil); u != nil {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		c.srv.unbindUser(ctx, u, c)
	}
}

// write encodes f and queues it.
func (c *session) write(f *chatpb.Frame) {
	buf, err := protocol.Encode(f)
	if err != nil {
		c.logger().Error("encode frame", "err", err)
		return
	}
	c.out.send(buf)
}

// readMoved records that k's read seq is at least upTo, and reports
// whether that is news to this session: above what it was told or marked.
// With rr set, rr is written when it is news, under the same lock, so
// receipts delivered at once go out in the order they were let through.
func (c *session) readMoved(u *sessionUser, k readerConv, upTo uint64, rr *chatpb.ReadReceipt) bool {
	c.readsMu.Lock()
	defer c.readsMu.Unlock()
	if !c.holds(u) || upTo <= c.reads[k] {
		return false
	}
	if c.reads == nil || len(c.reads) >= maxReadsKept {
		c.reads = make(map[readerConv]uint64)
	}
	c.reads[k] = upTo
	if rr != nil {
		c.write(&chatpb.Frame{Body: &chatpb.Frame_ReadReceipt{ReadReceipt: rr}})
	}
	return true
}

func (c *session) fail(seq uint64, kind string, err error) {
	pe := clientError(err)
	if pe.Code == chatpb.ErrorCode_ERROR_CODE_INTERNAL || pe.Code == chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE {
		c.logger().Warn("request failed", "type", kind, "err", err)
	}
	c.srv.metrics.requests.WithLabelValues(kind, protocol.CodeName(pe.Code)).Inc()
	c.write(&chatpb.Frame{Seq: seq, Body: &chatpb.Frame_Error{Error: pe.Proto()}})
}

// kick sends Kicked{reason} and closes the connection, once.
func (c *session) kick(reason chatpb.KickReason, msg string) {
	if !c.kicked.CompareAndSwap(false, true) {
		return
	}
	c.srv.metrics.kicks.WithLabelValues(protocol.KickReasonName(reason)).Inc()
	c.logger().Info("kicked", "reason", protocol.KickReasonName(reason))
	if c.ws != nil {
		c.ws.code.CompareAndSwap(0, int32(wsCloseCode(reason))) // a WebSocket error found first keeps its own
	}
	buf, err := protocol.Encode(&chatpb.Frame{Body: &chatpb.Frame_Kicked{Kicked: &chatpb.Kicked{Reason: reason, Message: msg}}})
	if err != nil {
		c.out.close()
		return
	}
	// A slow consumer's queue is what it failed to read: where the engine
	// can, drop it, so the connection holds little while it lingers. Those
	// messages stay in the inbox for the next login.
	c.out.sendAndClose(buf, reason == chatpb.KickReason_KICK_REASON_SLOW_CONSUMER)
}

// slowConsumer is how transports report a client that does not read.
func (c *session) slowConsumer() {
	if !c.kicked.Load() {
		c.srv.metrics.slowConsumers.Inc()
	}
	c.kick(chatpb.KickReason_KICK_REASON_SLOW_CONSUMER, "too much unread data")
}

// push delivers a live message, or holds it while the inbox replays.
func (c *session) push(u *sessionUser, m *chatpb.Message, frame []byte) {
	c.pushMu.Lock()
	defer c.pushMu.Unlock()
	if !c.holds(u) {
		return
	}
	if r := c.replay; r != nil {
		if len(r.held) < maxHeldPushes {
			r.held = append(r.held, Event{Message: m, frame: frame})
		} else {
			r.overflow = true
		}
		return
	}
	if c.replayedLate != nil {
		if time.Now().After(c.replayedLateUntil) {
			c.replayedLate = nil
		} else if _, dup := c.replayedLate[m.MsgId]; dup {
			delete(c.replayedLate, m.MsgId)
			return
		}
	}
	c.writePush(m, frame)
	c.srv.metrics.deliveredLive.Inc()
}

// pushTransient queues a presence or typing push for the transient
// flusher (transient.go), or holds it while the inbox replays: a login's
// LoginOK goes first, and a push that changes a friend's presence after it
// must not come before it.
func (c *session) pushTransient(u *sessionUser, frame []byte) {
	if frame == nil {
		return
	}
	c.pushMu.Lock()
	if !c.holds(u) {
		c.pushMu.Unlock()
		return
	}
	if r := c.replay; r != nil {
		if len(r.frames) < maxHeldPushes {
			r.frames = append(r.frames, frame)
		}
		c.pushMu.Unlock()
		return
	}
	first := len(c.transient) == 0
	c.transient = append(c.transient, frame...)
	full := len(c.transient) >= maxTransientBytes
	var out []byte
	if full {
		out, c.transient = c.transient, nil
	}
	c.pushMu.Unlock()
	switch {
	case full:
		c.out.send(out)
	case first:
		c.srv.transients.add(c)
	}
}

// releaseTransient queues the transient pushes a replay held, to share
// the flusher's write with what comes next. c.pushMu is held.
func (c *session) releaseTransient(frames [][]byte) {
	if len(frames) == 0 {
		return
	}
	first := len(c.transient) == 0
	for _, f := range frames {
		c.transient = append(c.transient, f...)
	}
	if first {
		c.srv.transients.add(c)
	}
}

// flushTransient writes what pushTransient queued, in one write.
func (c *session) flushTransient() {
	c.pushMu.Lock()
	out := c.transient
	c.transient = nil
	c.pushMu.Unlock()
	if len(out) > 0 {
		c.out.send(out)
	}
}

func (c *session) writePush(m *chatpb.Message, frame []byte) {
	if frame == nil {
		var err error
		if frame, err = encodePush(m); err != nil {
			c.logger().Error("encode push", "err", err)
			return
		}
	}
	c.out.send(frame)
}

func encodePush(m *chatpb.Message) ([]byte, error) {
	return protocol.EncodePush(m)
}

// resync replays the inbox of a logged-in session whose live pushes may
// have been lost (the broker reconnected). The client drops the messages it
// already has by msg_id.
func (c *session) resync(retry time.Duration) {
	u := c.user.Load()
	if u == nil {
		return
	}
	// A login notice may be among what was missed: a newer session of
	// this user elsewhere means this one must go.
	ctx := withEpoch(c.srv.ctx, u.epoch)
	latest, err := c.srv.store.LatestSession(ctx, u.id, u.device)
	if err == nil && latest <= u.gen {
		// So may a group_member notice: hear every group of the user's
		// before the replay reads the inbox (fanout.go).
		err = c.srv.hearGroups(ctx, u.id)
	}
	switch {
	case errors.Is(err, ErrStoreReset):
		// Redis came back without this session's store: replaying would
		// read another user's inbox under this id.
		c.srv.pokeEpoch()
		return
	case err != nil:
		// Unknown whether a newer login happened meanwhile, or which
		// groups to hear: ask again soon, from a timer, not by holding a
		// worker. The replay waits too; the inbox keeps everything.
		next := min(max(2*retry, minResyncRetry), maxResyncRetry)
		time.AfterFunc(next, func() {
			if !c.isGone() && !c.kicked.Load() {
				c.enqueue(mailItem{resync: true, retry: next})
			}
		})
		return
	case latest > u.gen:
		c.kick(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE, "logged in elsewhere while this node was cut off")
		return
	}
	c.pushMu.Lock()
	if r := c.replay; r != nil {
		r.again = true // that replay reads the inbox once more
		c.pushMu.Unlock()
		return
	}
	c.replay = &replayState{sent: make(map[uint64]struct{})}
	c.pushMu.Unlock()
	c.replayInbox(c.srv.ctx, u.box)
}

// beginReplay starts holding live pushes; call before subscribing.
func (c *session) beginReplay() {
	c.pushMu.Lock()
	c.replay = &replayState{sent: make(map[uint64]struct{})}
	c.pushMu.Unlock()
}

// endReplay stops holding pushes without replaying (a login that failed).
func (c *session) endReplay() {
	c.pushMu.Lock()
	c.replay = nil
	c.pushMu.Unlock()
}

// replayInbox pushes the stored messages of box (the session's device) oldest first, pacing itself by
// the connection's outbound queue, then the live pushes held meanwhile that
// the inbox did not already contain.
func (c *session) replayInbox(ctx context.Context, box uint64) {
	defer func() {
		c.pushMu.Lock()
		c.replay = nil
		c.pushMu.Unlock()
	}()
	var after uint64
	replayed := 0
	defer func() { c.srv.metrics.inboxReplay.Observe(float64(replayed)) }()
	for {
		for {
			page, err := c.readInbox(ctx, box, after)
			if err != nil {
				c.logger().Warn("inbox replay failed; messages stay stored for the next login", "err", err)
				break
			}
			for _, m := range page {
				if !c.waitWritable() {
					return
				}
				c.pushMu.Lock()
				c.replay.sent[m.MsgId] = struct{}{}
				c.writePush(m, nil)
				c.pushMu.Unlock()
				c.srv.metrics.deliveredReplay.Inc()
				replayed++
				after = m.MsgId
			}
			if len(page) < replayPage {
				break
			}
		}
		c.pushMu.Lock()
		r := c.replay
		if r.overflow {
			// Too many live pushes to hold: they are all in the inbox, so
			// read it again; the sent set keeps each message to one push.
			r.overflow, r.held, r.again, after = false, nil, false, 0
			c.pushMu.Unlock()
			continue
		}
		if r.again {
			r.again, after = false, 0
			c.pushMu.Unlock()
			continue
		}
		c.releaseTransient(r.frames)
		r.frames = nil
		slices.SortFunc(r.held, func(a, b Event) int {
			return compareU64(a.Message.MsgId, b.Message.MsgId)
		})
		for _, ev := range r.held {
			if _, dup := r.sent[ev.Message.MsgId]; !dup {
				c.writePush(ev.Message, ev.frame)
				c.srv.metrics.deliveredLive.Inc()
			}
		}
		c.rememberLate(r.sent)
		c.replay = nil
		c.pushMu.Unlock()
		return
	}
}

// rememberLate keeps the recently stored ids among those a replay pushed
// (see replayedLate). c.pushMu is held.
func (c *session) rememberLate(sent map[uint64]struct{}) {
	now := time.Now()
	floor := msgIDFloor(now.Add(-lateLivePush))
	c.replayedLate = nil
	for id := range sent {
		if id >= floor {
			if c.replayedLate == nil {
				c.replayedLate = make(map[uint64]struct{})
			}
			c.replayedLate[id] = struct{}{}
		}
	}
	c.replayedLateUntil = now.Add(lateLivePush)
}

// readInbox reads one replay page, retrying for a while when the store is
// unavailable: a replay often starts right after Redis came back, when
// pooled connections to the old process still fail once.
func (c *session) readInbox(ctx context.Context, box, after uint64) ([]*chatpb.Message, error) {
	backoff := 20 * time.Millisecond
	deadline := time.Now().Add(10 * time.Second)
	for {
		page, err := c.srv.store.Inbox(ctx, box, after, replayPage)
		if err == nil || !errors.Is(err, errUnavailable) || time.Now().After(deadline) || c.isGone() {
			return page, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func compareU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// waitWritable blocks while half the outbound limit is queued, so a long
// replay never turns a healthy client into a slow consumer. A client that
// reads nothing for 30s is kicked as one.
func (c *session) waitWritable() bool {
	limit := c.srv.opts.MaxOutbound / 2
	deadline := time.Now().Add(30 * time.Second)
	for c.out.queued() > limit {
		if c.isGone() || c.kicked.Load() {
			return false
		}
		if time.Now().After(deadline) {
			c.slowConsumer()
			return false
		}
		if r, ok := c.out.(interface{ refresh() }); ok {
			r.refresh()
		}
		time.Sleep(5 * time.Millisecond)
	}
	return !c.isGone()
}
