package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// This node's side of presence (docs/presence.md; the state and its
// transitions are the store's, presence_store.go):
//
//   - A login joins the user (Store.PresenceJoin) once its session is
//     bound; a user who was offline comes online, and friends are told.
//   - When the user's last session on this node ends, the node leaves
//     (Store.PresenceLeave). If no node has a session of the user any
//     more, it settles the user after the grace (Options.PresenceGrace):
//     offline, last seen when that session ended, unless a session came
//     back meanwhile, here or anywhere. So a reconnect within the grace
//     tells friends nothing.
//   - In a cluster the node heartbeats its presence instance, and sweeps
//     up after instances silent for the node TTL: their users who have no
//     session elsewhere go offline, last seen at that instance's last
//     heartbeat. A node that dies leaves its users online for the TTL
//     and a heartbeat at most.
//
// The Redis store publishes each change to the user's friends in the
// script that makes it. With the embedded store the node publishes,
// holding the user's lock from the change to the publish, so that friends
// see one user's changes in the order they were made.
type presence struct {
	s     *Server
	grace time.Duration
	locks [256]sync.Mutex
	inst  atomic.Pointer[string] // this process's presence instance

	mu       sync.Mutex
	left     map[uint64]int64 // uid -> when its last session here ended (ms), while not settled
	queue    []pendingSettle  // in due order: one grace for all
	wake     chan struct{}    // capacity 1: the queue changed
	stop     chan struct{}
	done     chan struct{} // the heartbeat ended
	loopDone chan struct{} // settleLoop ended
	running  bool
}

type pendingSettle struct {
	uid   uint64
	atMs  int64
	epoch string
	due   time.Time
}

// maxSettling bounds the settles run at once.
const maxSettling = 32

// maxSweep bounds the users one sweep settles; a sweep with more left goes
// on at once, up to sweepRounds times a heartbeat.
const (
	maxSweep    = 1024
	sweepRounds = 8
)

func newPresence(s *Server) *presence {
	p := &presence{s: s, grace: s.opts.PresenceGrace, left: make(map[uint64]int64),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}), loopDone: make(chan struct{})}
	p.newInstance()
	return p
}

// newInstance names this process's presence afresh: the node id and a
// random suffix, so that a restarted node (or one declared dead while cut
// off) is never taken for what it was before.
func (p *presence) newInstance() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	inst := p.s.opts.NodeID + "/" + hex.EncodeToString(b[:])
	p.inst.Store(&inst)
	return inst
}

func (p *presence) instance() string { return *p.inst.Load() }

func (p *presence) lock(uid uint64) *sync.Mutex {
	m := &p.locks[uid%uint64(len(p.locks))]
	m.Lock()
	return m
}

// start registers the instance (in a cluster) and runs the settles and
// the heartbeat.
func (p *presence) start(ctx context.Context) error {
	if rs, ok := p.s.store.(*RedisStore); ok && p.s.registry != nil {
		if _, err := rs.PresenceBeat(withEpoch(ctx, p.s.epoch()), p.instance(), true); err != nil {
			return err
		}
		go p.heartbeat(rs)
	} else {
		close(p.done)
	}
	p.running = true
	go p.settleLoop()
	return nil
}

// join records uid online on this node, telling friends when the user
// was offline; friends, when known (the login read them), spares reading
// them again. It returns whether the user hides their presence. A failure
// is logged: the login goes on, and the user shows offline to friends
// until their next change.
func (p *presence) join(ctx context.Context, u *sessionUser, friends []User) bool {
	m := p.lock(u.id)
	defer m.Unlock()
	p.mu.Lock()
	delete(p.left, u.id) // back within the grace: nothing to settle
	p.mu.Unlock()
	ch, err := p.s.store.PresenceJoin(ctx, u.id, p.instance())
	if err != nil {
		p.s.metrics.presenceErrors.Inc()
		p.s.log.Warn("presence: join not recorded", "user_id", u.id, "err", err)
		return false
	}
	p.announce(ctx, u.id, u.name, u.epoch, ch, friends)
	return ch.Hidden
}

// leave is called when u's last session on this node ended (unbindUser).
func (p *presence) leave(ctx context.Context, u *sessionUser) {
	m := p.lock(u.id)
	last, err := p.s.store.PresenceLeave(withEpoch(ctx, u.epoch), u.id, p.instance())
	m.Unlock()
	if err != nil {
		// The settle removes this node again (idempotent).
		p.s.metrics.presenceErrors.Inc()
		last = true
	}
	if last {
		p.schedule(pendingSettle{uid: u.id, atMs: time.Now().UnixMilli(), epoch: u.epoch})
	}
}

func (p *presence) schedule(ps pendingSettle) {
	if ps.due.IsZero() {
		ps.due = time.Now().Add(p.grace)
	}
	p.mu.Lock()
	p.left[ps.uid] = ps.atMs
	p.queue = append(p.queue, ps)
	p.s.metrics.presencePending.Set(float64(len(p.left)))
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// settleLoop settles users whose grace is over, at most maxSettling at
// once. The queue is in due order, since one grace is for all, except for
// retries (requeue): the loop stops at the first entry not due, so a retry
// may wait behind a later one, for at most the grace.
func (p *presence) settleLoop() {
	defer close(p.loopDone)
	sem := make(chan struct{}, maxSettling)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		p.mu.Lock()
		var next time.Duration = -1
		var due []pendingSettle
		now := time.Now()
		for len(p.queue) > 0 {
			head := p.queue[0]
			if head.due.After(now) {
				next = head.due.Sub(now)
				break
			}
			p.queue[0] = pendingSettle{}
			p.queue = p.queue[1:]
			if at, ok := p.left[head.uid]; !ok || at != head.atMs {
				continue // joined again, or left again later: that one settles
			}
			due = append(due, head)
		}
		if len(p.queue) == 0 {
			p.queue = nil
		}
		p.mu.Unlock()
		for i, ps := range due {
			select {
			case sem <- struct{}{}:
			case <-p.stop:
				// Back in the queue, for close to settle on one node.
				p.mu.Lock()
				p.queue = append(slices.Clone(due[i:]), p.queue...)
				p.mu.Unlock()
				return
			}
			wg.Go(func() {
				defer func() { <-sem }()
				p.settle(ps)
			})
		}
		if next < 0 {
			next = time.Hour
		}
		timer.Reset(next)
		select {
		case <-p.stop:
			return
		case <-p.wake:
		case <-timer.C:
		}
	}
}

// settle ends one grace: unless the user has a session here again, the
// store records them offline if no node has one, and friends are told.
func (p *presence) settle(ps pendingSettle) {
	m := p.lock(ps.uid)
	defer m.Unlock()
	p.mu.Lock()
	if at, ok := p.left[ps.uid]; !ok || at != ps.atMs {
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	if len(p.s.users.get(ps.uid)) > 0 {
		p.forget(ps)
		return
	}
	ctx, cancel := context.WithTimeout(withEpoch(context.Background(), ps.epoch), requestTimeout)
	defer cancel()
	ch, err := p.s.store.PresenceSettle(ctx, ps.uid, p.instance(), ps.atMs)
	switch {
	case errors.Is(err, ErrStoreReset):
		p.forget(ps) // the store it was online in is gone
		return
	case err != nil:
		p.s.metrics.presenceErrors.Inc()
		p.s.log.Warn("presence: settle failed; retrying", "user_id", ps.uid, "err", err)
		if !p.stopping() {
			ps.due = time.Now().Add(max(time.Second, p.grace/4))
			p.requeue(ps)
		}
		return
	}
	p.forget(ps)
	if ch.Announce {
		name := ""
		if u, err := p.s.store.UserByID(ctx, ps.uid); err == nil {
			name = u.Name
		}
		p.announce(ctx, ps.uid, name, ps.epoch, ch, nil)
	}
}

func (p *presence) stopping() bool {
	select {
	case <-p.stop:
		return true
	default:
		return false
	}
}

// forget ends ps's wait, unless a later leave took its place.
func (p *presence) forget(ps pendingSettle) {
	p.mu.Lock()
	if at, ok := p.left[ps.uid]; ok && at == ps.atMs {
		delete(p.left, ps.uid)
	}
	p.s.metrics.presencePending.Set(float64(len(p.left)))
	p.mu.Unlock()
}

// requeue puts a failed settle back, at the end of the queue.
func (p *presence) requeue(ps pendingSettle) {
	p.mu.Lock()
	if at, ok := p.left[ps.uid]; ok && at == ps.atMs {
		p.queue = append(p.queue, ps)
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// announce tells uid's friends of a change the store did not publish
// itself. friends, when nil, are read.
func (p *presence) announce(ctx context.Context, uid uint64, name, epoch string, ch PresenceChange, friends []User) {
	if !ch.Announce {
		return
	}
	if ch.State.Online {
		p.s.metrics.presenceChanges.WithLabelValues("online").Inc()
	} else {
		p.s.metrics.presenceChanges.WithLabelValues("offline").Inc()
	}
	if ch.Published {
		return
	}
	if friends == nil {
		var err error
		if friends, err = p.s.store.Friends(ctx, uid); err != nil {
			p.s.metrics.presenceErrors.Inc()
			p.s.log.Warn("presence: friends not told", "user_id", uid, "err", err)
			return
		}
	}
	if len(friends) == 0 {
		return
	}
	ids := make([]uint64, len(friends))
	for i, f := range friends {
		ids[i] = f.ID
	}
	n := &PresenceNotice{UserID: uid, Username: name, Online: ch.State.Online, LastSeenMs: ch.State.LastSeenMs}
	ev := Event{Presence: n, Epoch: epoch, frame: n.encode()}
	if _, err := p.s.broker.Publish(ctx, ids, ev); err != nil {
		p.s.metrics.presenceErrors.Inc()
		p.s.log.Warn("presence: friends not told", "user_id", uid, "err", err)
	}
}

// heartbeat keeps this instance alive in Redis and sweeps up after dead
// ones, every heartbeat.
func (p *presence) heartbeat(rs *RedisStore) {
	defer close(p.done)
	t := time.NewTicker(p.s.opts.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(withEpoch(context.Background(), p.s.epoch()), max(p.s.opts.Heartbeat, time.Second))
		p.beat(ctx, rs)
		cancel()
	}
}

func (p *presence) beat(ctx context.Context, rs *RedisStore) {
	alive, err := rs.PresenceBeat(ctx, p.instance(), false)
	switch {
	case err != nil:
		p.s.log.Warn("presence heartbeat failed", "err", err)
		return
	case !alive:
		// Silent for longer than the TTL: another node declared this one
		// dead and settled its users. Start over, and join them again.
		p.s.log.Warn("presence: this node was declared dead while cut off; announcing its users again")
		if _, err := rs.PresenceBeat(ctx, p.newInstance(), true); err != nil {
			p.s.log.Warn("presence heartbeat failed", "err", err)
		}
		p.rejoinAll()
	}
	for range sweepRounds {
		swept, more, err := rs.PresenceSweep(ctx, p.s.opts.NodeTTL.Milliseconds(), maxSweep)
		for _, u := range swept {
			p.s.metrics.presenceSwept.Inc()
			if u.Change.Announce {
				name := ""
				if us, err := rs.UserByID(ctx, u.UID); err == nil {
					name = us.Name
				}
				p.announce(ctx, u.UID, name, p.s.epoch(), u.Change, nil)
			}
		}
		if err != nil {
			p.s.log.Warn("presence sweep failed", "err", err)
			return
		}
		if !more {
			return
		}
	}
}

// rejoinAll joins every user with a session here again, under the
// current instance.
func (p *presence) rejoinAll() {
	for i := range p.s.users.stripes {
		st := &p.s.users.stripes[i]
		st.mu.RLock()
		var us []*sessionUser
		for _, cs := range st.m {
			for _, c := range cs {
				if u := c.user.Load(); u != nil {
					us = append(us, u)
					break
				}
			}
		}
		st.mu.RUnlock()
		for _, u := range us {
			ctx, cancel := context.WithTimeout(withEpoch(context.Background(), u.epoch), requestTimeout)
			p.join(ctx, u, nil)
			cancel()
		}
	}
}

// close stops the loops. On one node the users still waiting for their
// grace are settled now (their last seen is kept); in a cluster their
// instance, silent from now on, is swept by the other nodes after the
// node TTL, which gives the users this node's drain sent elsewhere that
// long to come back without a flap.
func (p *presence) close() {
	if !p.running {
		return
	}
	close(p.stop)
	<-p.done
	<-p.loopDone // after the settles under way
	p.mu.Lock()
	rest := p.queue
	p.queue = nil
	p.mu.Unlock()
	if p.s.registry != nil {
		return
	}
	for _, ps := range rest {
		p.settle(ps)
	}
}

// PresenceNotice is a friend's presence change on its way to a user.
type PresenceNotice struct {
	UserID     uint64
	Username   string
	Online     bool
	LastSeenMs int64
}

func (n *PresenceNotice) encode() []byte {
	b, err := protocol.Encode(&chatpb.Frame{Body: &chatpb.Frame_Presence{Presence: &chatpb.Presence{
		UserId: n.UserID, Username: n.Username, Online: n.Online, LastSeenMs: n.LastSeenMs}}})
	if err != nil {
		return nil
	}
	return b
}
