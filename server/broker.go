package server

import (
	"context"
	"sync"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Event is what travels on a user's channel: a chat message to push, or a
// notice that the user logged in somewhere (so older sessions elsewhere
// must go: newest login wins). On a group's channel it is a message or
// typing notice for the users in To; on the broadcast channel, a message
// for everyone.
type Event struct {
	Message    *chatpb.Message
	Login      *LoginNotice
	Read       *ReadNotice
	DeviceKick *DeviceSession  // that device's session, at or below Gen, goes (DEVICE_LIMIT)
	Presence   *PresenceNotice // a friend of the user came online or went offline
	Typing     *TypingNotice   // someone is typing in a conversation of the user's
	Kick       *KickNotice     // every session of the user goes (DISCONNECTED_BY_SERVER, accounts.go)
	// GroupMember says the user joined or left a group: nodes holding a
	// session of theirs start (or may stop) hearing the group's channel.
	GroupMember *GroupMemberNotice
	// To is the users a group event is for (Broker.PublishGroup): each
	// node pushes it to its own sessions of them, and to no one else.
	// Broadcast marks a message for every logged-in session of every node
	// (Broker.Broadcast). The handler gets either with uid 0.
	To        []uint64
	Broadcast bool
	// OriginNode and OriginConn name the session that sent Message, and
	// OriginDevice its device: on the sender's own channel (their other
	// devices) every session of that device is left out, not only the
	// sending one, since the event may arrive after that session is gone
	// and the device is back on another connection.
	OriginNode   string
	OriginConn   uint64
	OriginDevice string
	// Resync says live events for the user may have been missed (the
	// broker lost its connection); the user's inbox must be replayed.
	Resync bool
	// Epoch is the store epoch a message was stored under (epoch.go),
	// empty from other programs: a session of other store contents, whose
	// user id now means someone else, drops it.
	Epoch string

	// frame is Message (or Presence) already encoded as a push, shared by
	// every local recipient so a fan-out encodes once. Nil means encode on
	// delivery.
	frame []byte
}

// LoginNotice names the session that logged in last.
type LoginNotice struct {
	NodeID string
	ConnID uint64
	AtMs   int64 // login time, for logs and for notices without Gen
	// Gen is the session generation (Store.NewSession): sessions of the
	// user with a lower one are kicked. Zero only from nodes older than
	// generations, whose notices are ordered by AtMs as they were then.
	Gen uint64
	// Epoch is the store epoch of the login (epoch.go): generations of
	// different store contents are not compared.
	Epoch string
	// Device is the device that logged in: only its older sessions go.
	Device string
}

// ReadNotice says Reader read Conv up to UpTo (MarkRead); the session that
// marked it (NodeID, ConnID) is not told.
type ReadNotice struct {
	Reader uint64
	Conv   Conversation
	UpTo   uint64
	NodeID string
	ConnID uint64
}

// GroupMemberNotice says UserID joined GroupID (Joined) or left it. Seq
// is a join's JoinedSeq (the group conversation's seq then): a node that
// starts hearing the group later has missed nothing live if it is still
// the group's last seq.
type GroupMemberNotice struct {
	UserID  uint64
	GroupID uint64
	Joined  bool
	Seq     uint64
}

// EventHandler receives events for users subscribed on this node (uid),
// and group and broadcast events for this node (uid 0, Event.To or
// Event.Broadcast set). It is called from the broker's goroutines and must
// not block.
type EventHandler func(uid uint64, ev Event)

// Broker routes events to users wherever they are logged in. The memory
// broker serves one node; the Redis broker spans a cluster with one pub/sub
// channel per user, one per group that some node holds a member of, and
// one for broadcasts. Both pass the conformance suite in
// broker_conformance_test.go. All methods are safe for concurrent use and
// may block, so they are never called on an event loop.
type Broker interface {
	// Subscribe starts delivering uid's events to this node's handler.
	Subscribe(ctx context.Context, uid uint64) error
	// Unsubscribe stops it.
	Unsubscribe(ctx context.Context, uid uint64) error
	// Publish sends ev to each of uids and returns how many of them were
	// subscribed somewhere (online) when it was sent.
	Publish(ctx context.Context, uids []uint64, ev Event) (online int, err error)
	// Online reports for each uid whether it is subscribed anywhere.
	Online(ctx context.Context, uids []uint64) ([]bool, error)

	// SubscribeGroups starts delivering the events published to each of
	// gids (PublishGroup) to this node's handler, and returns once every
	// subscription is confirmed: an event published after it returns
	// reaches this node. After an error the subscriptions may still come
	// about (the Redis broker keeps them for its reconnect); they hold
	// until UnsubscribeGroups either way.
	SubscribeGroups(ctx context.Context, gids []uint64) error
	// UnsubscribeGroups stops it.
	UnsubscribeGroups(ctx context.Context, gids []uint64) error
	// PublishGroup sends ev, with To set to to, once to every node
	// subscribed to gid, however many users to names, and returns how
	// many nodes those were.
	PublishGroup(ctx context.Context, gid uint64, to []uint64, ev Event) (nodes int, err error)
	// Broadcast sends ev, with Broadcast set, once to every node (every
	// node subscribes at start), and returns how many nodes got it.
	Broadcast(ctx context.Context, ev Event) (nodes int, err error)

	// Close stops delivery.
	Close() error
}

// MemoryBroker is the single-node Broker: subscriptions are a set, and
// Publish calls the handler directly.
type MemoryBroker struct {
	handler EventHandler
	mu      sync.RWMutex
	subs    map[uint64]struct{}
	groups  map[uint64]struct{}
}

// NewMemoryBroker returns a broker delivering to handler.
func NewMemoryBroker(handler EventHandler) *MemoryBroker {
	return &MemoryBroker{handler: handler, subs: make(map[uint64]struct{}), groups: make(map[uint64]struct{})}
}

func (b *MemoryBroker) Subscribe(_ context.Context, uid uint64) error {
	b.mu.Lock()
	b.subs[uid] = struct{}{}
	b.mu.Unlock()
	return nil
}

func (b *MemoryBroker) Unsubscribe(_ context.Context, uid uint64) error {
	b.mu.Lock()
	delete(b.subs, uid)
	b.mu.Unlock()
	return nil
}

func (b *MemoryBroker) Publish(_ context.Context, uids []uint64, ev Event) (int, error) {
	online := 0
	for _, uid := range uids {
		b.mu.RLock()
		_, ok := b.subs[uid]
		b.mu.RUnlock()
		if ok {
			online++
			b.handler(uid, ev)
		}
	}
	return online, nil
}

func (b *MemoryBroker) Online(_ context.Context, uids []uint64) ([]bool, error) {
	out := make([]bool, len(uids))
	b.mu.RLock()
	defer b.mu.RUnlock()
	for i, uid := range uids {
		_, out[i] = b.subs[uid]
	}
	return out, nil
}

func (b *MemoryBroker) SubscribeGroups(_ context.Context, gids []uint64) error {
	b.mu.Lock()
	for _, gid := range gids {
		b.groups[gid] = struct{}{}
	}
	b.mu.Unlock()
	return nil
}

func (b *MemoryBroker) UnsubscribeGroups(_ context.Context, gids []uint64) error {
	b.mu.Lock()
	for _, gid := range gids {
		delete(b.groups, gid)
	}
	b.mu.Unlock()
	return nil
}

func (b *MemoryBroker) PublishGroup(_ context.Context, gid uint64, to []uint64, ev Event) (int, error) {
	b.mu.RLock()
	_, ok := b.groups[gid]
	b.mu.RUnlock()
	if !ok {
		return 0, nil
	}
	ev.To = to
	b.handler(0, ev)
	return 1, nil
}

func (b *MemoryBroker) Broadcast(_ context.Context, ev Event) (int, error) {
	ev.Broadcast = true
	b.handler(0, ev)
	return 1, nil
}

func (b *MemoryBroker) Close() error { return nil }

var _ Broker = (*MemoryBroker)(nil)
