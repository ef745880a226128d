package server

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// RedisBrokerConfig configures the Redis broker. Zero values mean the default.
type RedisBrokerConfig struct {
	// Client is the Redis connection pool; required. The broker does not close it.
	// A *redis.ClusterClient makes the channels shard channels
	// (SSUBSCRIBE, SPUBLISH; pubsub_sharded.go).
	Client redis.UniversalClient
	// Prefix starts channel names. Empty means "loopchat:".
	Prefix string
	// Logger gets the broker's logs. Nil means slog.Default().
	Logger *slog.Logger
	// OnFrameError counts channel payloads that could not be decoded.
	OnFrameError func()
	// OnReconnect is called after the pub/sub connection came back.
	OnReconnect func()
}

// RedisBroker routes events over Redis pub/sub, one channel per user
// (<prefix>user:<id>), one per group some local session is a member of
// (<prefix>group:<id>), and the broadcast channel (<prefix>broadcast),
// all on one pub/sub connection per node. Publishes from concurrent
// requests share pipelines. go-redis re-dials and re-subscribes a broken
// pub/sub connection by itself, every channel in one SUBSCRIBE; the broker
// notices the gap and asks the server to resync every local user from its
// inbox (Event.Resync), since anything published meanwhile was missed live.
type RedisBroker struct {
	rdb     redis.UniversalClient
	p       string
	bcast   string // the broadcast channel
	handler EventHandler
	log     *slog.Logger
	cfg     RedisBrokerConfig
	ps      *redis.PubSub
	batch   *redisBatcher
	// sharded: on a Redis Cluster, the shard channel subscriptions (ps
	// is nil then).
	sharded *shardedSubs

	mu      sync.Mutex
	subs    map[uint64]struct{}
	waiters map[string][]chan struct{} // channel -> Subscribe calls awaiting confirmation

	stop chan struct{}
	done chan struct{}
}

// NewRedisBroker starts the broker's receive loop.
func NewRedisBroker(cfg RedisBrokerConfig, handler EventHandler) *RedisBroker {
	if cfg.Prefix == "" {
		cfg.Prefix = protocol.DefaultPrefix
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	b := &RedisBroker{
		rdb: cfg.Client, p: cfg.Prefix, handler: handler, log: cfg.Logger, cfg: cfg,
		batch:   newRedisBatcher(cfg.Client, 4, 1024, scriptShardSubscribers),
		subs:    make(map[uint64]struct{}),
		waiters: make(map[string][]chan struct{}),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	b.bcast = protocol.BroadcastChannel(b.p)
	if cc, ok := cfg.Client.(*redis.ClusterClient); ok {
		b.sharded = newShardedSubs(cc, b.log)
		go b.receiveSharded()
		// Waited for, up to a second: the broadcast channel is on a
		// connection of its own shard, which a login's subscription does
		// not confirm. One that fails is placed again in the background.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := b.sharded.Subscribe(ctx, b.bcast); err != nil {
			b.log.Warn("broadcast channel not subscribed yet; retried in the background", "err", err)
		}
		cancel()
		return b
	}
	b.ps = cfg.Client.Subscribe(context.Background())
	// Every node hears broadcasts from the start. Not waited for: a
	// login's own SUBSCRIBE follows this one on the same connection, so a
	// node has it by the time it has a session; and should Redis be down
	// now, go-redis keeps the channel and subscribes it when it connects.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	if err := b.ps.Subscribe(ctx, b.bcast); err != nil {
		b.log.Warn("broadcast channel not subscribed yet; retried when pub/sub connects", "err", err)
	}
	cancel()
	go b.receive()
	return b
}

// Subscribe returns once Redis confirmed the subscription, so a message
// published after it returns reaches this node.
func (b *RedisBroker) Subscribe(ctx context.Context, uid uint64) error {
	if b.sharded != nil {
		ch := protocol.ShardUserChannel(b.p, uid)
		b.mu.Lock()
		b.subs[uid] = struct{}{}
		b.mu.Unlock()
		err := b.sharded.Subscribe(ctx, ch)
		if err != nil {
			b.mu.Lock()
			delete(b.subs, uid)
			b.mu.Unlock()
			_ = b.sharded.Unsubscribe(context.Background(), ch)
		}
		return redisErr(err)
	}
	ch := protocol.UserChannel(b.p, uid)
	w := make(chan struct{})
	b.mu.Lock()
	b.subs[uid] = struct{}{}
	b.waiters[ch] = append(b.waiters[ch], w)
	b.mu.Unlock()
	err := b.ps.Subscribe(ctx, ch)
	if err == nil {
		select {
		case <-w:
			return nil
		case <-ctx.Done():
			err = ctx.Err()
		case <-b.stop:
			err = fmt.Errorf("broker closed")
		}
	}
	b.mu.Lock()
	delete(b.subs, uid)
	b.dropWaiter(ch, w)
	b.mu.Unlock()
	_ = b.ps.Unsubscribe(context.Background(), ch)
	return redisErr(err)
}

func (b *RedisBroker) dropWaiter(ch string, w chan struct{}) {
	ws := b.waiters[ch]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(b.waiters, ch)
	} else {
		b.waiters[ch] = ws
	}
}

// SubscribeGroups subscribes the channels of gids in one SUBSCRIBE and
// waits until Redis confirmed each. On failure the channels stay in
// go-redis's set, which a reconnect subscribes again (and the server then
// resyncs every local user): the caller's index of groups keeps them too.
func (b *RedisBroker) SubscribeGroups(ctx context.Context, gids []uint64) error {
	if len(gids) == 0 {
		return nil
	}
	if b.sharded != nil {
		return redisErr(b.sharded.Subscribe(ctx, b.groupChannels(gids)...))
	}
	chans := make([]string, len(gids))
	ws := make([]chan struct{}, len(gids))
	b.mu.Lock()
	for i, gid := range gids {
		chans[i] = protocol.GroupChannel(b.p, gid)
		ws[i] = make(chan struct{})
		b.waiters[chans[i]] = append(b.waiters[chans[i]], ws[i])
	}
	b.mu.Unlock()
	err := b.ps.Subscribe(ctx, chans...)
	for i := 0; err == nil && i < len(ws); i++ {
		select {
		case <-ws[i]:
			continue
		case <-ctx.Done():
			err = ctx.Err()
		case <-b.stop:
			err = fmt.Errorf("broker closed")
		}
	}
	if err != nil {
		b.mu.Lock()
		for i, ch := range chans {
			b.dropWaiter(ch, ws[i])
		}
		b.mu.Unlock()
	}
	return redisErr(err)
}

// UnsubscribeGroups unsubscribes the channels of gids in one UNSUBSCRIBE.
func (b *RedisBroker) UnsubscribeGroups(ctx context.Context, gids []uint64) error {
	if len(gids) == 0 {
		return nil // an UNSUBSCRIBE without channels would drop them all
	}
	if b.sharded != nil {
		return redisErr(b.sharded.Unsubscribe(ctx, b.groupChannels(gids)...))
	}
	chans := make([]string, len(gids))
	for i, gid := range gids {
		chans[i] = protocol.GroupChannel(b.p, gid)
	}
	return redisErr(b.ps.Unsubscribe(ctx, chans...))
}

// groupChannels are the shard channels of gids.
func (b *RedisBroker) groupChannels(gids []uint64) []string {
	chans := make([]string, len(gids))
	for i, gid := range gids {
		chans[i] = protocol.ShardGroupChannel(b.p, gid)
	}
	return chans
}

// userChannel is uid's channel: a shard channel on a cluster.
func (b *RedisBroker) userChannel(uid uint64) string {
	if b.sharded != nil {
		return protocol.ShardUserChannel(b.p, uid)
	}
	return protocol.UserChannel(b.p, uid)
}

// publish is PUBLISH, or SPUBLISH on a cluster.
func (b *RedisBroker) publish(ctx context.Context, p redis.Pipeliner, channel string, payload []byte) *redis.IntCmd {
	if b.sharded != nil {
		return p.SPublish(ctx, channel, payload)
	}
	return p.Publish(ctx, channel, payload)
}

func (b *RedisBroker) Unsubscribe(ctx context.Context, uid uint64) error {
	b.mu.Lock()
	delete(b.subs, uid)
	b.mu.Unlock()
	if b.sharded != nil {
		return redisErr(b.sharded.Unsubscribe(ctx, b.userChannel(uid)))
	}
	return redisErr(b.ps.Unsubscribe(ctx, protocol.UserChannel(b.p, uid)))
}

// encodeChannelEvent is the JSON an Event travels as.
func encodeChannelEvent(ev Event) ([]byte, error) {
	var ce protocol.ChannelEvent
	switch {
	case ev.Message != nil:
		m := ev.Message
		ce = protocol.ChannelEvent{Type: protocol.EventMessage, MsgID: protocol.Uint64(m.MsgId),
			FromUserID: m.FromUserId, FromUsername: m.FromUsername, ToUserID: m.ToUserId,
			GroupID: m.GroupId, Text: m.Text, SentAtMs: m.SentAtMs, Seq: m.Seq, Epoch: ev.Epoch,
			NodeID: ev.OriginNode, ConnID: ev.OriginConn, Device: ev.OriginDevice, To: ev.To}
	case ev.Login != nil:
		ce = protocol.ChannelEvent{Type: protocol.EventLogin, NodeID: ev.Login.NodeID,
			ConnID: ev.Login.ConnID, AtMs: ev.Login.AtMs, Gen: ev.Login.Gen, Epoch: ev.Login.Epoch, Device: ev.Login.Device}
	case ev.DeviceKick != nil:
		ce = protocol.ChannelEvent{Type: protocol.EventDeviceKick, Device: ev.DeviceKick.Device, Gen: ev.DeviceKick.Gen, Epoch: ev.Epoch}
	case ev.Presence != nil:
		n := ev.Presence
		ce = protocol.ChannelEvent{Type: protocol.EventPresence, UserID: n.UserID, Username: n.Username,
			Online: n.Online, LastSeenMs: n.LastSeenMs, Epoch: ev.Epoch}
	case ev.Typing != nil:
		n := ev.Typing
		ce = protocol.ChannelEvent{Type: protocol.EventTyping, UserID: n.UserID, Username: n.Username,
			GroupID: n.GroupID, Epoch: ev.Epoch, To: ev.To}
	case ev.GroupMember != nil:
		n := ev.GroupMember
		ce = protocol.ChannelEvent{Type: protocol.EventGroupMember, UserID: n.UserID, GroupID: n.GroupID,
			Joined: n.Joined, Seq: n.Seq, Epoch: ev.Epoch}
	case ev.Kick != nil:
		ce = protocol.ChannelEvent{Type: protocol.EventKick, Text: ev.Kick.Message, Epoch: ev.Epoch}
	case ev.Read != nil:
		r := ev.Read
		ce = protocol.ChannelEvent{Type: protocol.EventRead, ReaderUserID: r.Reader, Conv: r.Conv.Key(),
			UpToSeq: r.UpTo, NodeID: r.NodeID, ConnID: r.ConnID, Epoch: ev.Epoch}
	default:
		return nil, fmt.Errorf("broker: nothing to publish")
	}
	return protocol.AppendChannelEvent(make([]byte, 0, 192+len(ce.Text)), &ce), nil
}

// decodeChannelEvent reads a user channel's payload.
func decodeChannelEvent[T string | []byte](payload T) (Event, error) {
	ce, err := protocol.ParseChannelEvent(payload)
	if err != nil {
		return Event{}, err
	}
	return eventOf(ce)
}

// decodeGroupEvent reads a payload on the channel of group gid: a message
// or typing notice for the users in Event.To.
func decodeGroupEvent[T string | []byte](payload T, gid uint64) (Event, error) {
	ce, err := protocol.ParseGroupEvent(payload, gid)
	if err != nil {
		return Event{}, err
	}
	ev, err := eventOf(ce)
	ev.To = ce.To
	return ev, err
}

// decodeBroadcastEvent reads a payload on the broadcast channel: a message
// that is never stored, so it has no seq whatever it says.
func decodeBroadcastEvent[T string | []byte](payload T) (Event, error) {
	ce, err := protocol.ParseBroadcastEvent(payload)
	if err != nil {
		return Event{}, err
	}
	ce.Seq = 0
	ev, err := eventOf(ce)
	ev.Broadcast = true
	return ev, err
}

// eventOf is the Event a validated channel event stands for.
func eventOf(ce *protocol.ChannelEvent) (Event, error) {
	if ce.Type == protocol.EventGroupMember {
		return Event{Epoch: ce.Epoch, GroupMember: &GroupMemberNotice{UserID: ce.UserID, GroupID: ce.GroupID, Joined: ce.Joined, Seq: ce.Seq}}, nil
	}
	if ce.Type == protocol.EventRead {
		conv, err := ParseConversationKey(ce.Conv)
		if err != nil {
			return Event{}, err
		}
		return Event{Epoch: ce.Epoch, Read: &ReadNotice{Reader: ce.ReaderUserID, Conv: conv, UpTo: ce.UpToSeq,
			NodeID: ce.NodeID, ConnID: ce.ConnID}}, nil
	}
	if ce.Type == protocol.EventLogin {
		return Event{Login: &LoginNotice{NodeID: ce.NodeID, ConnID: ce.ConnID, AtMs: ce.AtMs, Gen: ce.Gen, Epoch: ce.Epoch,
			Device: ce.Device}}, nil
	}
	if ce.Type == protocol.EventPresence {
		return Event{Epoch: ce.Epoch, Presence: &PresenceNotice{UserID: ce.UserID, Username: ce.Username,
			Online: ce.Online, LastSeenMs: ce.LastSeenMs}}, nil
	}
	if ce.Type == protocol.EventTyping {
		return Event{Epoch: ce.Epoch, Typing: &TypingNotice{UserID: ce.UserID, Username: ce.Username, GroupID: ce.GroupID}}, nil
	}
	if ce.Type == protocol.EventKick {
		return Event{Epoch: ce.Epoch, Kick: &KickNotice{Message: ce.Text}}, nil
	}
	if ce.Type == protocol.EventDeviceKick {
		return Event{Epoch: ce.Epoch, DeviceKick: &DeviceSession{Device: ce.Device, Gen: ce.Gen}}, nil
	}
	m := &chatpb.Message{MsgId: uint64(ce.MsgID), FromUserId: ce.FromUserID,
		FromUsername: ce.FromUsername, ToUserId: ce.ToUserID, GroupId: ce.GroupID, Text: ce.Text,
		SentAtMs: ce.SentAtMs}
	if m.MsgId != 0 {
		// Only a stored message has a place in its conversation; one
		// without an id (another program's live-only push) gets its id
		// from the node, and no seq, whatever it claims.
		m.Seq = ce.Seq
	}
	return Event{Epoch: ce.Epoch, Message: m, OriginNode: ce.NodeID, OriginConn: ce.ConnID, OriginDevice: ce.Device}, nil
}

// Publish sends one PUBLISH per user, all in one shared pipeline, and
// counts the users some node is subscribed for.
func (b *RedisBroker) Publish(ctx context.Context, uids []uint64, ev Event) (int, error) {
	if len(uids) == 0 {
		return 0, nil
	}
	payload, err := encodeChannelEvent(ev)
	if err != nil {
		return 0, err
	}
	cmds, err := b.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		out := make([]redis.Cmder, len(uids))
		for i, uid := range uids {
			out[i] = b.publish(ctx, p, b.userChannel(uid), payload)
		}
		return out
	})
	if err != nil {
		return 0, err
	}
	online := 0
	for _, c := range cmds {
		if n, _ := c.(*redis.IntCmd).Result(); n > 0 {
			online++
		}
	}
	return online, nil
}

// PublishGroup sends one PUBLISH to the group's channel, the recipients
// listed in the payload.
func (b *RedisBroker) PublishGroup(ctx context.Context, gid uint64, to []uint64, ev Event) (int, error) {
	ev.To = to
	if b.sharded != nil {
		return b.publishOne(ctx, protocol.ShardGroupChannel(b.p, gid), ev)
	}
	return b.publishOne(ctx, protocol.GroupChannel(b.p, gid), ev)
}

// Broadcast sends one PUBLISH to the broadcast channel, and counts the
// nodes by the channel's subscribers (every node subscribes it), not by
// PUBLISH's receivers: those include pattern subscribers (a PSUBSCRIBE
// watching the channels), which are no node. Sharded pub/sub has no
// patterns, so there SPUBLISH's count is the nodes.
func (b *RedisBroker) Broadcast(ctx context.Context, ev Event) (int, error) {
	ev.To = nil
	if b.sharded != nil {
		return b.publishOne(ctx, b.bcast, ev)
	}
	payload, err := encodeChannelEvent(ev)
	if err != nil {
		return 0, err
	}
	cmds, err := b.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{p.Publish(ctx, b.bcast, payload), p.PubSubNumSub(ctx, b.bcast)}
	})
	if err != nil {
		return 0, err
	}
	counts, err := cmds[1].(*redis.MapStringIntCmd).Result()
	return int(counts[b.bcast]), redisErr(err)
}

// publishOne publishes ev to channel, through the shared pipelines, and
// returns how many subscribers (nodes) it had.
func (b *RedisBroker) publishOne(ctx context.Context, channel string, ev Event) (int, error) {
	payload, err := encodeChannelEvent(ev)
	if err != nil {
		return 0, err
	}
	cmds, err := b.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{b.publish(ctx, p, channel, payload)}
	})
	if err != nil {
		return 0, err
	}
	n, err := cmds[0].(*redis.IntCmd).Result()
	return int(n), redisErr(err)
}

// Online asks Redis how many subscribers each user channel has: a user is
// online while some node holds their channel. A node that dies loses its
// connection, and with it its subscriptions, at once.
func (b *RedisBroker) Online(ctx context.Context, uids []uint64) ([]bool, error) {
	out := make([]bool, len(uids))
	if len(uids) == 0 {
		return out, nil
	}
	if b.sharded != nil {
		return b.shardOnline(ctx, uids)
	}
	chans := make([]string, len(uids))
	for i, uid := range uids {
		chans[i] = protocol.UserChannel(b.p, uid)
	}
	counts, err := b.rdb.PubSubNumSub(ctx, chans...).Result()
	if err != nil {
		return nil, redisErr(err)
	}
	for i, ch := range chans {
		out[i] = counts[ch] > 0
	}
	return out, nil
}

// Close stops the receive loop and the pub/sub connection.
func (b *RedisBroker) Close() error {
	close(b.stop)
	if b.sharded != nil {
		err := b.sharded.Close()
		<-b.done
		b.batch.close()
		return err
	}
	err := b.ps.Close()
	<-b.done
	b.batch.close()
	return err
}

func (b *RedisBroker) receive() {
	defer close(b.done)
	broken := false
	backoff := 50 * time.Millisecond
	go b.keepalive()
	for {
		msg, err := b.ps.Receive(context.Background())
		if err != nil {
			select {
			case <-b.stop:
				return
			default:
			}
			if !broken {
				b.log.Warn("redis pub/sub connection lost; reconnecting", "err", err)
			}
			broken = true
			select {
			case <-b.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		if broken {
			broken = false
			b.log.Info("redis pub/sub connection back; resyncing local users")
			b.resync()
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				b.mu.Lock()
				ws := b.waiters[m.Channel]
				delete(b.waiters, m.Channel)
				b.mu.Unlock()
				for _, w := range ws {
					close(w)
				}
			}
		case *redis.Message:
			b.deliver(m)
		}
	}
}

// deliver decodes a channel message and hands it to the handler.
func (b *RedisBroker) deliver(m *redis.Message) {
	var uid uint64
	var ev Event
	var err error
	if id, ok := protocol.ParseUserChannel(b.p, m.Channel); ok {
		uid = id
		ev, err = decodeChannelEvent(m.Payload)
	} else if gid, ok := protocol.ParseGroupChannel(b.p, m.Channel); ok {
		ev, err = decodeGroupEvent(m.Payload, gid)
	} else if m.Channel == b.bcast {
		ev, err = decodeBroadcastEvent(m.Payload)
	} else {
		return
	}
	if err != nil {
		b.log.Warn("dropped a bad channel payload", "channel", m.Channel, "err", err)
		if b.cfg.OnFrameError != nil {
			b.cfg.OnFrameError()
		}
		return
	}
	b.handler(uid, ev)
}

// receiveSharded is receive on a Redis Cluster: messages from every
// shard's connection, and after channels were dropped and subscribed
// again (a failover, a slot moved), a resync, as after a reconnect.
func (b *RedisBroker) receiveSharded() {
	defer close(b.done)
	for {
		select {
		case <-b.stop:
			return
		case msg := <-b.sharded.out:
			switch m := msg.(type) {
			case *redis.Message:
				b.deliver(m)
			case lost:
				b.log.Info("redis cluster pub/sub channels back; resyncing local users")
				b.resync()
			}
		}
	}
}

// scriptShardSubscribers counts the subscribers of a shard channel, given
// as its key so that the cluster client sends it to the primary of the
// channel's slot (PUBSUB SHARDNUMSUB answers for its own node only).
var scriptShardSubscribers = redis.NewScript(`return redis.call('PUBSUB', 'SHARDNUMSUB', KEYS[1])[2]`)

// shardOnline is Online on a cluster.
func (b *RedisBroker) shardOnline(ctx context.Context, uids []uint64) ([]bool, error) {
	cmds, err := b.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		out := make([]redis.Cmder, len(uids))
		for i, uid := range uids {
			out[i] = scriptShardSubscribers.EvalSha(ctx, p, []string{b.userChannel(uid)})
		}
		return out
	})
	if err != nil {
		return nil, err
	}
	out := make([]bool, len(uids))
	for i, c := range cmds {
		n, _ := c.(*redis.Cmd).Int64()
		out[i] = n > 0
	}
	return out, nil
}

// resync asks the server to replay every local user's inbox: messages
// published while the pub/sub connection was down reached no one live.
func (b *RedisBroker) resync() {
	b.mu.Lock()
	uids := make([]uint64, 0, len(b.subs))
	for uid := range b.subs {
		uids = append(uids, uid)
	}
	b.mu.Unlock()
	if b.cfg.OnReconnect != nil {
		b.cfg.OnReconnect()
	}
	for _, uid := range uids {
		b.handler(uid, Event{Resync: true})
	}
}

// keepalive pings over the pub/sub connection so a silently dead one is
// noticed (the receive loop then reconnects).
func (b *RedisBroker) keepalive() {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = b.ps.Ping(ctx)
			cancel()
		}
	}
}

var _ Broker = (*RedisBroker)(nil)
