package server

import (
	"context"
	"encoding/json"
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
	Client *redis.Client
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
// (<prefix>user:<id>), all on one pub/sub connection per node. Publishes
// from concurrent requests share pipelines. go-redis re-dials and
// re-subscribes a broken pub/sub connection by itself; the broker notices
// the gap and asks the server to resync every local user from its inbox
// (Event.Resync), since anything published meanwhile was missed live.
type RedisBroker struct {
	rdb     *redis.Client
	p       string
	handler EventHandler
	log     *slog.Logger
	cfg     RedisBrokerConfig
	ps      *redis.PubSub
	batch   *redisBatcher

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
		ps:      cfg.Client.Subscribe(context.Background()),
		batch:   newRedisBatcher(cfg.Client, 4, 1024),
		subs:    make(map[uint64]struct{}),
		waiters: make(map[string][]chan struct{}),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go b.receive()
	return b
}

// Subscribe returns once Redis confirmed the subscription, so a message
// published after it returns reaches this node.
func (b *RedisBroker) Subscribe(ctx context.Context, uid uint64) error {
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

func (b *RedisBroker) Unsubscribe(ctx context.Context, uid uint64) error {
	b.mu.Lock()
	delete(b.subs, uid)
	b.mu.Unlock()
	return redisErr(b.ps.Unsubscribe(ctx, protocol.UserChannel(b.p, uid)))
}

// EncodeChannelEvent is the JSON an Event travels as.
func encodeChannelEvent(ev Event) ([]byte, error) {
	var ce protocol.ChannelEvent
	switch {
	case ev.Message != nil:
		m := ev.Message
		ce = protocol.ChannelEvent{Type: protocol.EventMessage, MsgID: protocol.Uint64(m.MsgId),
			FromUserID: m.FromUserId, FromUsername: m.FromUsername, ToUserID: m.ToUserId,
			GroupID: m.GroupId, Text: m.Text, SentAtMs: m.SentAtMs, Seq: m.Seq, Epoch: ev.Epoch,
			NodeID: ev.OriginNode, ConnID: ev.OriginConn, Device: ev.OriginDevice}
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
			GroupID: n.GroupID, Epoch: ev.Epoch}
	case ev.Kick != nil:
		ce = protocol.ChannelEvent{Type: protocol.EventKick, Text: ev.Kick.Message, Epoch: ev.Epoch}
	case ev.Read != nil:
		r := ev.Read
		ce = protocol.ChannelEvent{Type: protocol.EventRead, ReaderUserID: r.Reader, Conv: r.Conv.Key(),
			UpToSeq: r.UpTo, NodeID: r.NodeID, ConnID: r.ConnID, Epoch: ev.Epoch}
	default:
		return nil, fmt.Errorf("broker: nothing to publish")
	}
	return json.Marshal(ce)
}

func decodeChannelEvent(payload []byte) (Event, error) {
	ce, err := protocol.ParseChannelEvent(payload)
	if err != nil {
		return Event{}, err
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
			out[i] = p.Publish(ctx, protocol.UserChannel(b.p, uid), payload)
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

// Online asks Redis how many subscribers each user channel has: a user is
// online while some node holds their channel. A node that dies loses its
// connection, and with it its subscriptions, at once.
func (b *RedisBroker) Online(ctx context.Context, uids []uint64) ([]bool, error) {
	out := make([]bool, len(uids))
	if len(uids) == 0 {
		return out, nil
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
			uid, ok := protocol.ParseUserChannel(b.p, m.Channel)
			if !ok {
				continue
			}
			ev, err := decodeChannelEvent([]byte(m.Payload))
			if err != nil {
				b.log.Warn("dropped a bad channel payload", "channel", m.Channel, "err", err)
				if b.cfg.OnFrameError != nil {
					b.cfg.OnFrameError()
				}
				continue
			}
			b.handler(uid, ev)
		}
	}
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
