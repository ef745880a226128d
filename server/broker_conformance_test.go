package server

import (
	"context"
	"sync"
	"testing"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
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
}

func TestMemoryBrokerConformance(t *testing.T) {
	testBrokerConformance(t, func(t *testing.T, h EventHandler) Broker { return NewMemoryBroker(h) })
}

func TestRedisBrokerConformance(t *testing.T) {
	_, rdb := testRedis(t)
	testBrokerConformance(t, func(t *testing.T, h EventHandler) Broker {
		b := NewRedisBroker(RedisBrokerConfig{Client: rdb, Logger: testLogger()}, h)
		t.Cleanup(func() { b.Close() })
		return b
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
