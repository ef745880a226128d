package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// Per-node fan-out (docs/cluster.md, "Groups and broadcasts").
//
// A group message is published once, to the group's channel, listing the
// users it is for; Redis hands it to every node subscribed to that channel,
// and each node pushes it to its own sessions of the users listed, encoded
// once, the same bytes written to every connection. A node subscribes to a
// group's channel while it holds a session of a member: groupIndex keeps,
// per group, the local users it knows to be members.
//
// The list in the event decides who sees a message, never the index: a
// stale entry (a user who left, a group nobody here is in any more) only
// makes the node hear a channel it did not need to. What the index must
// never miss is a member with a session here, or that session loses live
// messages. So it keeps one rule:
//
//	a user is in a group's entry only once the node hears the group's
//	channel, and either heard it from before the user became a member,
//	or every session of theirs here replays its inbox after the entry
//	was made, or the group stored nothing in between.
//
// Each way in keeps it: a login subscribes its user's channel, then the
// groups it reads, and replays the inbox after both; a JoinGroup made here
// subscribes before the store commits the membership (tentatively: a
// refused join takes it back); a group_member notice (published on the
// user's channel by the store's create, join and leave scripts, in the
// same atomic step as the change, so they reach every node in the order
// they happened) adds the group, then replays the user's inbox if the
// group's last seq moved past the join's (catchUp); a resync (after a
// pub/sub reconnect, which may have lost notices) reads the user's groups
// again and adds them before its replay. Entries only leave with a leave
// notice, in that same order, or when the user's last session here ends: a
// later join always comes after the leave on the user's channel, and puts
// the entry back by way of that notice.

// groupIndex is the node's index of group channels: which local users are
// members of which groups, as far as this node knows, and the broker
// subscriptions that follow from it. One goroutine applies every change,
// in batches: the channels a batch newly needs go out in one SUBSCRIBE,
// confirmed before anyone waiting on the batch goes on, and before the
// next batch, so a SUBSCRIBE never races an UNSUBSCRIBE of the same
// channel.
type groupIndex struct {
	srv *Server

	mu      sync.Mutex
	queue   []*groupOp
	stopped bool
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}

	// Owned by run. An entry is confirmed once the store said the user is
	// a member (a read of their groups, a notice); a JoinGroup's entry is
	// tentative until then, and undone if the join is refused.
	members map[uint64]map[uint64]bool // gid -> local users in it -> confirmed
	of      map[uint64]map[uint64]bool // uid -> its gids here
}

// groupOpKind is what a groupOp does.
type groupOpKind uint8

const (
	opAdd       groupOpKind = iota // the store says uid is in gids
	opTentative                    // uid is about to join gids (JoinGroup, before the store)
	opUndo                         // the join was refused: drop the tentative entries
	opLeave                        // a notice says uid left gids
	opGone                         // uid's last session here ended
)

// groupOp is one change to the index.
type groupOp struct {
	kind groupOpKind
	uid  uint64
	gids []uint64
	// notice: opAdd for a notice that uid joined gids[0] at JoinedSeq seq.
	// When the group was new to uid here, its sessions replay their
	// inboxes if the group has stored anything since (or the subscription
	// failed).
	notice bool
	seq    uint64
	done   chan groupResult // capacity 1; nil when nobody waits
}

type groupResult struct {
	added int // groups new to the user
	err   error
}

// groupSubscribeTimeout bounds one batch's wait for its SUBSCRIBE.
const groupSubscribeTimeout = 5 * time.Second

var errIndexClosed = errors.New("server: group index closed")

func newGroupIndex(s *Server) *groupIndex {
	return &groupIndex{srv: s, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		members: make(map[uint64]map[uint64]bool), of: make(map[uint64]map[uint64]bool)}
}

// add puts uid, which the store says is a member, in each of gids' entries
// and returns once the node hears every one of them, with how many were
// new to uid.
func (g *groupIndex) add(ctx context.Context, uid uint64, gids []uint64) (int, error) {
	return g.wait(ctx, &groupOp{kind: opAdd, uid: uid, gids: gids})
}

// tentative is add for a join not yet stored: undo takes it back if the
// store refuses the join (unless the store said otherwise meanwhile), so
// joins of groups that do not exist leave no subscriptions behind.
func (g *groupIndex) tentative(ctx context.Context, uid, gid uint64) (int, error) {
	return g.wait(ctx, &groupOp{kind: opTentative, uid: uid, gids: []uint64{gid}})
}

func (g *groupIndex) wait(ctx context.Context, op *groupOp) (int, error) {
	if len(op.gids) == 0 {
		return 0, nil
	}
	op.done = make(chan groupResult, 1)
	if !g.enqueue(op) {
		return 0, errIndexClosed
	}
	select {
	case r := <-op.done:
		return r.added, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// undo drops uid's tentative entry of gid, if it is still tentative.
func (g *groupIndex) undo(uid, gid uint64) {
	g.enqueue(&groupOp{kind: opUndo, uid: uid, gids: []uint64{gid}})
}

// joined handles a notice that uid joined gid when its conversation was at
// seq: added as by add, and when that was news, uid's sessions here replay
// their inboxes if the group stored a message since (catchUp).
func (g *groupIndex) joined(uid, gid, seq uint64) {
	g.enqueue(&groupOp{kind: opAdd, uid: uid, gids: []uint64{gid}, notice: true, seq: seq})
}

// left takes uid out of gids' entries.
func (g *groupIndex) left(uid uint64, gids ...uint64) {
	g.enqueue(&groupOp{kind: opLeave, uid: uid, gids: gids})
}

// gone takes uid out of every entry, unless it has a session here again.
func (g *groupIndex) gone(uid uint64) { g.enqueue(&groupOp{kind: opGone, uid: uid}) }

func (g *groupIndex) enqueue(op *groupOp) bool {
	g.mu.Lock()
	if g.stopped {
		g.mu.Unlock()
		return false
	}
	g.queue = append(g.queue, op)
	g.mu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
	return true
}

func (g *groupIndex) run() {
	defer close(g.done)
	for {
		select {
		case <-g.stop:
			return
		case <-g.wake:
		}
		for {
			g.mu.Lock()
			ops := g.queue
			g.queue = nil
			g.mu.Unlock()
			if len(ops) == 0 {
				break
			}
			g.apply(ops)
		}
	}
}

// close stops the index; waiters still queued get errIndexClosed.
func (g *groupIndex) close() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	close(g.stop)
	<-g.done
	g.mu.Lock()
	ops := g.queue
	g.queue = nil
	g.mu.Unlock()
	for _, op := range ops {
		if op.done != nil {
			op.done <- groupResult{err: errIndexClosed}
		}
	}
}

// apply makes one batch of changes and the subscriptions they need.
func (g *groupIndex) apply(ops []*groupOp) {
	had := make(map[uint64]bool) // each group touched: had members before the batch
	touch := func(gid uint64) {
		if _, ok := had[gid]; !ok {
			had[gid] = len(g.members[gid]) > 0
		}
	}
	drop := func(uid, gid uint64) {
		touch(gid)
		delete(g.members[gid], uid)
		if len(g.members[gid]) == 0 {
			delete(g.members, gid)
		}
		delete(g.of[uid], gid)
		if len(g.of[uid]) == 0 {
			delete(g.of, uid)
		}
	}
	added := make([][]uint64, len(ops))
	for i, op := range ops {
		local := len(g.srv.users.get(op.uid)) > 0
		switch op.kind {
		case opGone:
			if local {
				continue // logged in here again since
			}
			for gid := range g.of[op.uid] {
				drop(op.uid, gid)
			}
		case opLeave:
			for _, gid := range op.gids {
				drop(op.uid, gid)
			}
		case opUndo:
			for _, gid := range op.gids {
				if confirmed, in := g.members[gid][op.uid]; in && !confirmed {
					drop(op.uid, gid)
				}
			}
		case opAdd, opTentative:
			if !local {
				continue // gone meanwhile: nothing of theirs to hear
			}
			confirm := op.kind == opAdd
			for _, gid := range op.gids {
				if confirmed, in := g.members[gid][op.uid]; in {
					if confirm && !confirmed {
						g.members[gid][op.uid], g.of[op.uid][gid] = true, true
					}
					continue
				}
				touch(gid)
				if g.members[gid] == nil {
					g.members[gid] = make(map[uint64]bool)
				}
				g.members[gid][op.uid] = confirm
				if g.of[op.uid] == nil {
					g.of[op.uid] = make(map[uint64]bool)
				}
				g.of[op.uid][gid] = confirm
				added[i] = append(added[i], gid)
			}
		}
	}
	var sub, unsub []uint64
	newSub := make(map[uint64]bool)
	for gid, before := range had {
		switch now := len(g.members[gid]) > 0; {
		case now && !before:
			sub = append(sub, gid)
			newSub[gid] = true
		case !now && before:
			unsub = append(unsub, gid)
		}
	}
	g.srv.metrics.groupChannels.Set(float64(len(g.members)))
	ctx, cancel := context.WithTimeout(context.Background(), groupSubscribeTimeout)
	defer cancel()
	if err := g.srv.broker.UnsubscribeGroups(ctx, unsub); err != nil {
		g.srv.log.Warn("group channels not unsubscribed", "groups", len(unsub), "err", err)
	}
	// On failure the entries stay: the channels stay in the broker's set
	// too (Broker.SubscribeGroups), and the reconnect that follows a
	// broken pub/sub connection resyncs every local user.
	err := g.srv.broker.SubscribeGroups(ctx, sub)
	if err != nil {
		g.srv.log.Warn("group channels not subscribed", "groups", len(sub), "err", err)
	}
	for i, op := range ops {
		r := groupResult{added: len(added[i])}
		if err != nil {
			for _, gid := range added[i] {
				if newSub[gid] {
					r.err = err
					break
				}
			}
		}
		if op.done != nil {
			op.done <- r
		}
		switch {
		case op.notice && r.err != nil:
			g.srv.resyncUser(op.uid)
		case op.notice && r.added > 0:
			go g.srv.catchUp(op.uid, op.gids[0], op.seq)
		}
	}
}

// catchUp replays uid's inbox on its sessions here if group gid stored a
// message after seq: the node has heard the group only from now on, and
// such a message, stored for uid, was published before. In the usual
// case, a notice handled in the instant after the join, nothing was.
func (s *Server) catchUp(uid, gid, seq uint64) {
	ctx, cancel := context.WithTimeout(s.ctx, requestTimeout)
	defer cancel()
	last, err := s.store.LastSeq(withEpoch(ctx, s.epoch()), GroupConversation(gid))
	if err != nil || last > seq {
		s.resyncUser(uid)
	}
}

// resyncUser has each of uid's sessions here replay its inbox.
func (s *Server) resyncUser(uid uint64) {
	for _, c := range s.users.get(uid) {
		c.enqueue(mailItem{resync: true})
	}
}

// hearGroups reads uid's groups and returns once the node hears each of
// them (groupIndex.add): a login, and a resync, before they read the inbox.
func (s *Server) hearGroups(ctx context.Context, uid uint64) error {
	gids, err := s.store.GroupIDs(ctx, uid)
	if err != nil {
		return err
	}
	_, err = s.groups.add(ctx, uid, gids)
	return err
}

// memberLock orders one user's joins and leaves made through this node,
// with what they publish.
func (s *Server) memberLock(uid uint64) *sync.Mutex {
	return &s.memberLocks[uid%uint64(len(s.memberLocks))]
}

// groupOrder orders gid's sends with its joins and leaves on the embedded
// store, where the node reads a message's recipients before the append: a
// send holds it shared from reading the members until the message is
// stored, a join or leave holds it alone while stored. So a message stored
// after a join (a seq above the joiner's join point, from which its history
// shows the group) had the joiner among its recipients, and one stored
// before it did not. nil on Redis, whose append script reads the members
// itself, atomically with the seq.
func (s *Server) groupOrder(gid uint64) *sync.RWMutex {
	if s.storePublishes {
		return nil
	}
	return &s.groupOrders[gid%uint64(len(s.groupOrders))]
}

// joinGroup makes uid a member of gid: a client's JoinGroup, or a backend
// adding someone. When uid has a session here, the node hears the group
// before the membership is stored, so every message stored with uid among
// its recipients reaches this node live; other nodes with sessions of uid
// learn of it from the group_member notice on uid's channel.
func (s *Server) joinGroup(ctx context.Context, gid, uid uint64) error {
	mu := s.memberLock(uid)
	mu.Lock()
	defer mu.Unlock()
	fresh := false
	if len(s.users.get(uid)) > 0 {
		n, err := s.groups.tentative(ctx, uid, gid)
		if err != nil {
			return err
		}
		fresh = n > 0
	}
	if order := s.groupOrder(gid); order != nil {
		order.Lock()
		defer order.Unlock()
	}
	err := s.store.JoinGroup(ctx, gid, uid, s.opts.limits())
	switch {
	case err == nil:
		// The notice confirms the entry (in a cluster the join's script
		// published it already).
		s.memberNotice(ctx, gid, uid, true)
	case errors.Is(err, ErrAlreadyMember):
		if fresh {
			// A member already (another device joined), and this node
			// heard the group only now: what it published meanwhile is in
			// the inbox.
			s.groups.add(ctx, uid, []uint64{gid})
			s.resyncUser(uid)
		}
	case errors.Is(err, ErrGroupNotFound), errors.Is(err, ErrUserNotFound), errors.Is(err, ErrGroupFull), errors.Is(err, ErrTooManyGroups):
		// Not a member: no subscription stays behind for it (a client
		// could otherwise pile them up by joining groups that do not
		// exist). Any other failure may have stored the join after all,
		// and keeps the entry.
		if fresh {
			s.groups.undo(uid, gid)
		}
	}
	return err
}

// createGroup makes a group with creator as its first member. The node
// can hear the group only once it exists: should a message reach it
// before that (someone joined and sent at once), catchUp replays it.
// Other nodes with sessions of the creator learn of the group from the
// notice on the creator's channel.
func (s *Server) createGroup(ctx context.Context, creator uint64, name, desc string) (Group, error) {
	mu := s.memberLock(creator)
	mu.Lock()
	defer mu.Unlock()
	g, err := s.store.CreateGroup(ctx, creator, name, desc, s.opts.limits())
	if err != nil {
		return g, err
	}
	if len(s.users.get(creator)) > 0 {
		n, err := s.groups.add(ctx, creator, []uint64{g.ID})
		switch {
		case err != nil:
			// Created all the same; the broker subscribes the channel once
			// it can, and the reconnect resyncs (groupIndex.apply).
			s.log.Warn("new group not heard yet", "group_id", g.ID, "err", err)
		case n > 0:
			go s.catchUp(creator, g.ID, 0)
		}
	}
	s.memberNotice(ctx, g.ID, creator, true)
	return g, nil
}

// leaveGroup ends uid's membership of gid. The node stops hearing the
// group for uid when the leave notice comes back on uid's channel, in
// order with any later join.
func (s *Server) leaveGroup(ctx context.Context, gid, uid uint64) error {
	mu := s.memberLock(uid)
	mu.Lock()
	defer mu.Unlock()
	if order := s.groupOrder(gid); order != nil {
		order.Lock()
		defer order.Unlock()
	}
	err := s.store.LeaveGroup(ctx, gid, uid)
	if err == nil {
		s.memberNotice(ctx, gid, uid, false)
	}
	return err
}

// memberNotice publishes a group_member notice on uid's channel, unless
// the store's script did so with the change (cluster). Here it goes out
// under memberLock, so notices follow the order of the changes.
func (s *Server) memberNotice(ctx context.Context, gid, uid uint64, joined bool) {
	if s.storePublishes {
		return
	}
	ev := Event{Epoch: requestEpoch(ctx), GroupMember: &GroupMemberNotice{UserID: uid, GroupID: gid, Joined: joined}}
	if _, err := s.broker.Publish(ctx, []uint64{uid}, ev); err != nil {
		s.log.Warn("group member notice not published", "user_id", uid, "group_id", gid, "err", err)
	}
}

// onGroupMember handles a group_member notice on uid's channel.
func (s *Server) onGroupMember(uid uint64, ev Event) {
	n := ev.GroupMember
	if n.UserID != uid {
		// Anyone who can PUBLISH can write one: only about the channel's user.
		s.metrics.channelErrors.Inc()
		return
	}
	if ev.Epoch != "" && ev.Epoch != s.epoch() {
		s.metrics.staleEvents.Inc()
		s.pokeEpoch()
		return
	}
	if len(s.users.get(uid)) == 0 {
		return
	}
	if n.Joined {
		s.groups.joined(uid, n.GroupID, n.Seq)
	} else {
		s.groups.left(uid, n.GroupID)
	}
}

// publishGroupMessage pushes a stored group message to its recipients
// online (when the store did not publish it) and the sender's other
// devices: one PublishGroup. It returns how many recipients were online.
func (s *Server) publishGroupMessage(ctx context.Context, gid uint64, recipients []uint64, sender uint64, ev Event) (int, error) {
	flags, err := s.broker.Online(ctx, recipients)
	if err != nil {
		return 0, err
	}
	to := make([]uint64, 0, len(recipients)+1)
	for i, on := range flags {
		if on {
			to = append(to, recipients[i])
		}
	}
	online := len(to)
	if sender != 0 {
		to = append(to, sender)
	}
	if len(to) > 0 {
		_, err = s.broker.PublishGroup(ctx, gid, to, ev)
	}
	return online, err
}

// broadcastLive pushes m to every session logged in on any node, live
// only: it is not stored, and a user who is offline (or whose session is
// replaying its inbox with more than maxHeldPushes waiting) never sees it.
// m needs text (and may name a sender); it gets a msg_id and sent_at here,
// as pushes other programs publish get them on arrival, the same for every
// session; to, group and seq are cleared. One publish whatever the number
// of nodes; each node encodes the push once. online is the number of nodes
// it reached, each of which pushed it to all its logged-in sessions.
func (s *Server) broadcastLive(ctx context.Context, m *chatpb.Message) (online int, err error) {
	if err := protocol.ValidateText(m.GetText()); err != nil {
		return 0, err
	}
	if m.FromUsername != "" {
		if err := protocol.ValidateUsername(m.FromUsername); err != nil {
			return 0, err
		}
	}
	b := &chatpb.Message{FromUserId: m.FromUserId, FromUsername: m.FromUsername, Text: m.Text}
	b.MsgId, b.SentAtMs = s.ids.next(time.Now())
	return s.broker.Broadcast(ctx, Event{Message: b})
}

// shared prepares ev for many sessions: a message another program
// published without an id gets one (once, so every session here shows
// the same), and the push is encoded once, its bytes shared by every
// connection it is written to (transports only read them).
func (s *Server) shared(ev Event) Event {
	if ev.frame != nil {
		return ev
	}
	switch {
	case ev.Message != nil:
		if ev.Message.MsgId == 0 {
			m := proto.Clone(ev.Message).(*chatpb.Message)
			m.MsgId, m.SentAtMs = s.ids.next(time.Now())
			s.metrics.externalPushes.Inc()
			ev.Message = m
		}
		if f, err := encodePush(ev.Message); err == nil {
			ev.frame = f
		}
	case ev.Presence != nil:
		ev.frame = ev.Presence.encode()
	case ev.Typing != nil:
		ev.frame = ev.Typing.encode()
	}
	return ev
}

// fanout delivers a group event to this node's sessions of the users it
// lists, and to no one else.
func (s *Server) fanout(ev Event) {
	ev = s.shared(ev)
	for _, uid := range ev.To {
		for _, c := range s.users.get(uid) {
			s.deliver(c, uid, ev)
		}
	}
}

// fanoutAll delivers a broadcast to every logged-in session here.
func (s *Server) fanoutAll(ev Event) {
	if ev.Message == nil {
		return
	}
	ev = s.shared(ev)
	s.metrics.broadcasts.Inc()
	var cs []*session
	for i := range s.users.stripes {
		st := &s.users.stripes[i]
		st.mu.RLock()
		for _, list := range st.m {
			cs = append(cs, list...)
		}
		st.mu.RUnlock()
		for _, c := range cs {
			s.deliver(c, 0, ev)
		}
		cs = cs[:0]
	}
}
