package server

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// recorder is an EventHandler that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	events map[uint64][]Event
	signal chan struct{}
}

func newRecorder() *recorder {
	return &recorder{events: make(map[uint64][]Event), signal: make(chan struct{}, 1024)}
}

func (r *recorder) handle(uid uint64, ev Event) {
	r.mu.Lock()
	r.events[uid] = append(r.events[uid], ev)
	r.mu.Unlock()
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

func (r *recorder) get(uid uint64) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events[uid]...)
}

// waitN waits until uid has n events.
func (r *recorder) waitN(t *testing.T, uid uint64, n int) []Event {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		if evs := r.get(uid); len(evs) >= n {
			return evs
		}
		select {
		case <-r.signal:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("user %d got %d events, want %d", uid, len(r.get(uid)), n)
		}
	}
}

// brokerFactory makes a broker delivering to h; brokers made by one
// factory call share their transport (nodes of one cluster).
type brokerFactory func(t *testing.T, h EventHandler) Broker

// testBrokerConformance is the contract of every Broker.
func testBrokerConformance(t *testing.T, newBroker brokerFactory) {
	ctx := context.Background()
	rec := newRecorder()
	b := newBroker(t, rec.handle)

	if n, err := b.Publish(ctx, []uint64{1}, Event{Message: &chatpb.Message{MsgId: 1, Text: "nobody home"}}); err != nil || n != 0 {
		t.Fatalf("publish to no subscriber = %d, %v", n, err)
	}
	if on, err := b.Online(ctx, []uint64{1, 2}); err != nil || on[0] || on[1] {
		t.Fatalf("online before subscribe = %v, %v", on, err)
	}
	for _, uid := range []uint64{1, 2} {
		if err := b.Subscribe(ctx, uid); err != nil {
			t.Fatal(err)
		}
	}
	msg := &chatpb.Message{MsgId: 42, FromUserId: 7, FromUsername: "alice", ToUserId: 1, Text: "héllo", SentAtMs: 1234, Seq: 5}
	n, err := b.Publish(ctx, []uint64{1, 3}, Event{Message: msg})
	if err != nil || n != 1 {
		t.Fatalf("publish to one of two = %d, %v", n, err)
	}
	got := rec.waitN(t, 1, 1)[0].Message
	if got.MsgId != 42 || got.FromUsername != "alice" || got.Text != "héllo" || got.ToUserId != 1 || got.SentAtMs != 1234 || got.Seq != 5 {
		t.Fatalf("delivered %v", got)
	}
	// A group message to two subscribers, in one call.
	gm := &chatpb.Message{MsgId: 43, FromUserId: 7, GroupId: 9, Text: "all"}
	if n, _ := b.Publish(ctx, []uint64{1, 2}, Event{Message: gm}); n != 2 {
		t.Fatalf("group publish reached %d", n)
	}
	if ev := rec.waitN(t, 2, 1)[0]; ev.Message.GroupId != 9 {
		t.Fatalf("group delivery %v", ev.Message)
	}
	// Login notices travel too.
	if _, err := b.Publish(ctx, []uint64{2}, Event{Login: &LoginNotice{NodeID: "n2", ConnID: 5, AtMs: 99}}); err != nil {
		t.Fatal(err)
	}
	if ev := rec.waitN(t, 2, 2)[1]; ev.Login == nil || ev.Login.NodeID != "n2" || ev.Login.ConnID != 5 || ev.Login.AtMs != 99 {
		t.Fatalf("login notice %+v", ev)
	}
	if on, _ := b.Online(ctx, []uint64{1, 2, 3}); !on[0] || !on[1] || on[2] {
		t.Fatalf("online = %v", on)
	}
	// Order from one publisher to one user is kept.
	for i := range 50 {
		_, _ = b.Publish(ctx, []uint64{1}, Event{Message: &chatpb.Message{MsgId: uint64(100 + i), Text: "x"}})
	}
	evs := rec.waitN(t, 1, 52)
	for i, ev := range evs[2:] {
		if ev.Message.MsgId != uint64(100+i) {
			t.Fatalf("event %d has id %d: out of order", i, ev.Message.MsgId)
		}
	}
	if err := b.Unsubscribe(ctx, 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "user 1 offline", func() bool {
		on, _ := b.Online(ctx, []uint64{1})
		return !on[0]
	})
	if n, _ := b.Publish(ctx, []uint64{1}, Event{Message: &chatpb.Message{MsgId: 200, Text: "gone"}}); n != 0 {
		t.Fatalf("publish after unsubscribe reached %d", n)
	}
	// A user's notice of joining a group travels on their channel.
	if _, err := b.Publish(ctx, []uint64{2}, Event{Epoch: "e1", GroupMember: &GroupMemberNotice{UserID: 2, GroupID: 9, Joined: true, Seq: 12}}); err != nil {
		t.Fatal(err)
	}
	if ev := rec.waitN(t, 2, 3)[2]; ev.GroupMember == nil || *ev.GroupMember != (GroupMemberNotice{UserID: 2, GroupID: 9, Joined: true, Seq: 12}) || ev.Epoch != "e1" {
		t.Fatalf("group member notice %+v", ev)
	}

	testBrokerGroups(t, b, rec)
}

// testBrokerGroups is the contract of group channels and broadcasts, on a
// broker whose handler is rec's and which has nothing for uid 0 yet.
func testBrokerGroups(t *testing.T, b Broker, rec *recorder) {
	ctx := context.Background()
	gm := &chatpb.Message{MsgId: 300, FromUserId: 7, FromUsername: "alice", GroupId: 9, Text: "to the group", SentAtMs: 99, Seq: 4}
	// Nobody holds the group: nothing is delivered.
	if n, err := b.PublishGroup(ctx, 9, []uint64{1, 2}, Event{Message: gm}); err != nil || n != 0 {
		t.Fatalf("group publish without a subscriber = %d, %v", n, err)
	}
	if err := b.SubscribeGroups(ctx, []uint64{9, 10}); err != nil {
		t.Fatal(err)
	}
	// One delivery to the node, whatever the number of users, with them
	// listed; the origin travels too (the sender's other devices are among
	// them, the sending device is not to get it).
	to := []uint64{1, 2, 5, 7}
	n, err := b.PublishGroup(ctx, 9, to, Event{Message: gm, Epoch: "e1", OriginNode: "n1", OriginConn: 3, OriginDevice: "phone"})
	if err != nil || n != 1 {
		t.Fatalf("group publish = %d, %v; want one node", n, err)
	}
	ev := rec.waitN(t, 0, 1)[0]
	if m := ev.Message; m == nil || m.MsgId != 300 || m.GroupId != 9 || m.Text != "to the group" || m.FromUsername != "alice" || m.SentAtMs != 99 || m.Seq != 4 {
		t.Fatalf("group delivery %+v", ev)
	}
	if !slices.Equal(ev.To, to) || ev.Epoch != "e1" || ev.OriginNode != "n1" || ev.OriginConn != 3 || ev.OriginDevice != "phone" || ev.Broadcast {
		t.Fatalf("group delivery to %v, epoch %q, origin %q/%d/%q", ev.To, ev.Epoch, ev.OriginNode, ev.OriginConn, ev.OriginDevice)
	}
	// A typing notice in the group, likewise.
	if n, _ := b.PublishGroup(ctx, 10, []uint64{1}, Event{Typing: &TypingNotice{UserID: 7, Username: "alice", GroupID: 10}}); n != 1 {
		t.Fatalf("group typing reached %d nodes", n)
	}
	if ev := rec.waitN(t, 0, 2)[1]; ev.Typing == nil || ev.Typing.GroupID != 10 || ev.Typing.UserID != 7 || !slices.Equal(ev.To, []uint64{1}) {
		t.Fatalf("group typing %+v", ev)
	}
	// Order on one group's channel is kept.
	for i := range 20 {
		_, _ = b.PublishGroup(ctx, 9, []uint64{1}, Event{Message: &chatpb.Message{MsgId: uint64(400 + i), GroupId: 9, Text: "x"}})
	}
	evs := rec.waitN(t, 0, 22)
	for i, ev := range evs[2:] {
		if ev.Message.MsgId != uint64(400+i) {
			t.Fatalf("group event %d has id %d: out of order", i, ev.Message.MsgId)
		}
	}
	// A broadcast reaches the node once, for everyone.
	if n, err := b.Broadcast(ctx, Event{Message: &chatpb.Message{MsgId: 500, FromUsername: "ops", Text: "maintenance at 5"}}); err != nil || n != 1 {
		t.Fatalf("broadcast = %d, %v", n, err)
	}
	if ev := rec.waitN(t, 0, 23)[22]; !ev.Broadcast || ev.To != nil || ev.Message.GetText() != "maintenance at 5" || ev.Message.MsgId != 500 {
		t.Fatalf("broadcast delivery %+v", ev)
	}
	// Unsubscribed, the group's events stop; the other group's go on.
	if err := b.UnsubscribeGroups(ctx, []uint64{9}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "group 9 unsubscribed", func() bool {
		n, _ := b.PublishGroup(ctx, 9, []uint64{1}, Event{Message: &chatpb.Message{MsgId: 600, GroupId: 9, Text: "gone"}})
		return n == 0
	})
	if n, _ := b.PublishGroup(ctx, 10, []uint64{1}, Event{Message: &chatpb.Message{MsgId: 601, GroupId: 10, Text: "still"}}); n != 1 {
		t.Fatalf("the other group's publish reached %d nodes", n)
	}
	waitFor(t, "group 10 still delivered", func() bool {
		evs := rec.get(0)
		return evs[len(evs)-1].Message.GetMsgId() == 601
	})
	if err := b.UnsubscribeGroups(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if n, _ := b.PublishGroup(ctx, 10, []uint64{1}, Event{Message: &chatpb.Message{MsgId: 602, GroupId: 10, Text: "none dropped"}}); n != 1 {
		t.Fatalf("unsubscribing no groups dropped group 10: publish reached %d", n)
	}
}

func TestMemoryBrokerConformance(t *testing.T) {
	testBrokerConformance(t, func(t *testing.T, h EventHandler) Broker { return NewMemoryBroker(h) })
}

func TestRedisBrokerConformance(t *testing.T) {
	forEachRedis(t, func(t *testing.T, rb *redisBackend) {
		testBrokerConformance(t, func(t *testing.T, h EventHandler) Broker {
			b := NewRedisBroker(RedisBrokerConfig{Client: rb.client, Prefix: rb.prefix, Logger: testLogger()}, h)
			t.Cleanup(func() { b.Close() })
			return b
		})
	})
}

func TestRedisBrokerResyncsAfterReconnect(t *testing.T) {
	r, rdb := testRedis(t)
	rec := newRecorder()
	reconnects := make(chan struct{}, 4)
	b := NewRedisBroker(RedisBrokerConfig{Client: rdb, Logger: testLogger(),
		OnReconnect: func() { reconnects <- struct{}{} }}, rec.handle)
	defer b.Close()
	ctx := context.Background()
	if err := b.Subscribe(ctx, 5); err != nil {
		t.Fatal(err)
	}
	r.Kill()
	if _, err := b.Publish(ctx, []uint64{5}, Event{Message: &chatpb.Message{MsgId: 1, Text: "x"}}); err == nil {
		t.Fatal("publish succeeded with Redis down")
	}
	r.Start()
	select {
	case <-reconnects:
	case <-time.After(10 * time.Second):
		t.Fatal("broker did not reconnect")
	}
	if ev := rec.waitN(t, 5, 1)[0]; !ev.Resync {
		t.Fatalf("first event after reconnect = %+v, want a resync", ev)
	}
	// The subscription is back: live delivery works again.
	waitFor(t, "resubscribed", func() bool {
		on, _ := b.Online(ctx, []uint64{5})
		return on[0]
	})
	if n, err := b.Publish(ctx, []uint64{5}, Event{Message: &chatpb.Message{MsgId: 2, Text: "back"}}); err != nil || n != 1 {
		t.Fatalf("publish after reconnect = %d, %v", n, err)
	}
	if ev := rec.waitN(t, 5, 2)[1]; ev.Message.GetText() != "back" {
		t.Fatalf("after reconnect got %+v", ev)
	}
}

// Across two nodes: a broadcast reaches both, a group's events only the
// node that subscribed to it, and group subscriptions survive a pub/sub
// reconnect like user ones.
func TestRedisBrokerGroupsAcrossNodes(t *testing.T) {
	forEachRedis(t, testRedisBrokerGroupsAcrossNodes)
}

func testRedisBrokerGroupsAcrossNodes(t *testing.T, rb *redisBackend) {
	ctx := context.Background()
	rec1, rec2 := newRecorder(), newRecorder()
	b1 := NewRedisBroker(RedisBrokerConfig{Client: rb.client, Prefix: rb.prefix, Logger: testLogger()}, rec1.handle)
	defer b1.Close()
	reconnects := make(chan struct{}, 4)
	b2 := NewRedisBroker(RedisBrokerConfig{Client: rb.client, Prefix: rb.prefix, Logger: testLogger(),
		OnReconnect: func() { reconnects <- struct{}{} }}, rec2.handle)
	defer b2.Close()
	// A subscription on each confirms the connection (and with it the
	// broadcast channel, subscribed first).
	for _, b := range []Broker{b1, b2} {
		if err := b.Subscribe(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := b1.Broadcast(ctx, Event{Message: &chatpb.Message{Text: "all nodes"}}); err != nil || n != 2 {
		t.Fatalf("broadcast reached %d nodes, %v", n, err)
	}
	for _, rec := range []*recorder{rec1, rec2} {
		if ev := rec.waitN(t, 0, 1)[0]; !ev.Broadcast || ev.Message.GetText() != "all nodes" {
			t.Fatalf("broadcast delivery %+v", ev)
		}
	}
	if err := b2.SubscribeGroups(ctx, []uint64{9}); err != nil {
		t.Fatal(err)
	}
	if n, _ := b1.PublishGroup(ctx, 9, []uint64{4}, Event{Message: &chatpb.Message{MsgId: 1, GroupId: 9, Text: "g"}}); n != 1 {
		t.Fatalf("group publish reached %d nodes, want the one subscribed", n)
	}
	if ev := rec2.waitN(t, 0, 2)[1]; ev.Message.GetGroupId() != 9 || !slices.Equal(ev.To, []uint64{4}) {
		t.Fatalf("group delivery %+v", ev)
	}
	// Anything on a group or the broadcast channel that breaks its rules
	// is dropped and counted.
	for _, p := range []string{`{"type":"message","group_id":8,"text":"other group","to":[4]}`, `{"type":"message","group_id":9,"text":"no one"}`,
		`{"type":"login","node_id":"n1","to":[4]}`, `not json`} {
		if rb.c != nil {
			_ = rb.client.SPublish(ctx, protocol.ShardGroupChannel(rb.keyPrefix(), 9), p).Err()
		} else {
			_ = rb.client.Publish(ctx, protocol.GroupChannel(rb.keyPrefix(), 9), p).Err()
		}
	}
	_ = rb.publishBroadcast(ctx, `{"type":"message","to_user_id":4,"text":"not everyone"}`)
	time.Sleep(100 * time.Millisecond)
	if evs := rec2.get(0); len(evs) != 2 {
		t.Fatalf("bad payloads delivered: %+v", evs[2:])
	}
	if n := len(rec1.get(0)); n != 1 {
		t.Fatalf("node 1 got %d events for uid 0, want the broadcast only", n)
	}

	// Kill node 2's pub/sub connection: it comes back with the group.
	rb.killPubSub(t)
	select {
	case <-reconnects:
	case <-time.After(10 * time.Second):
		t.Fatal("broker 2 did not reconnect")
	}
	waitFor(t, "group resubscribed", func() bool {
		n, _ := b1.PublishGroup(ctx, 9, []uint64{4}, Event{Message: &chatpb.Message{MsgId: 2, GroupId: 9, Text: "back"}})
		return n == 1
	})
	waitFor(t, "group delivery after the reconnect", func() bool {
		evs := rec2.get(0)
		return evs[len(evs)-1].Message.GetText() == "back"
	})
}
