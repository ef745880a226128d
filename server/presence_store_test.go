package server

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/protocol"
)

// presenceOn reads the next presence event on a subscription.
func presenceOn(t *testing.T, ps *redis.PubSub) *protocol.ChannelEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := ps.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := protocol.ParseChannelEvent([]byte(m.Payload))
	if err != nil || ev.Type != protocol.EventPresence {
		t.Fatalf("published %q: %+v, %v; want a valid presence event", m.Payload, ev, err)
	}
	return ev
}

func subscribed(t *testing.T, rb *redisBackend, prefix string, uid uint64) *redis.PubSub {
	t.Helper()
	var ps *redis.PubSub
	if rb.c != nil {
		ps = rb.client.SSubscribe(context.Background(), protocol.ShardUserChannel(prefix, uid))
	} else {
		ps = rb.client.Subscribe(context.Background(), protocol.UserChannel(prefix, uid))
	}
	t.Cleanup(func() { ps.Close() })
	if _, err := ps.Receive(context.Background()); err != nil { // the confirmation
		t.Fatal(err)
	}
	return ps
}

func nothingOn(t *testing.T, ps *redis.PubSub) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if m, err := ps.ReceiveMessage(ctx); err == nil {
		t.Fatalf("unexpected event %q", m.Payload)
	}
}

// The Redis store publishes each presence change to the user's friends (on
// one Redis in the script that makes it, so friends see changes in the
// order they were made; on a cluster right after), and to no one else; a
// dead instance's users are settled by the sweep of a live one, last seen
// at the dead one's last heartbeat.
func TestRedisStorePresencePublishAndSweep(t *testing.T) {
	forEachRedis(t, testRedisStorePresencePublishAndSweep)
}

func testRedisStorePresencePublishAndSweep(t *testing.T, rb *redisBackend) {
	ctx := context.Background()
	prefix := rb.newPrefix()
	s := NewRedisStore(RedisConfig{Client: rb.client, Prefix: prefix, PublishMessages: true})
	defer s.Close()
	ann, _ := s.CreateUser(ctx, "ann", nil)
	ben, _ := s.CreateUser(ctx, "ben", nil)
	cat, _ := s.CreateUser(ctx, "cat", nil)
	if err := s.AddFriend(ctx, ann.ID, ben.ID, Limits{}); err != nil {
		t.Fatal(err)
	}
	benCh := subscribed(t, rb, prefix, ben.ID)
	catCh := subscribed(t, rb, prefix, cat.ID)

	ch, err := s.PresenceJoin(ctx, ann.ID, "i1")
	if err != nil || !ch.Announce || !ch.Published {
		t.Fatalf("join = %+v, %v; want announced and published", ch, err)
	}
	if ev := presenceOn(t, benCh); ev.UserID != ann.ID || !ev.Online || ev.Username != "ann" || ev.LastSeenMs != 0 {
		t.Fatalf("ben got %+v", ev)
	}
	if last, err := s.PresenceLeave(ctx, ann.ID, "i1"); err != nil || !last {
		t.Fatalf("leave = %v, %v", last, err)
	}
	if ch, err := s.PresenceSettle(ctx, ann.ID, "i1", 777); err != nil || !ch.Published {
		t.Fatalf("settle = %+v, %v", ch, err)
	}
	if ev := presenceOn(t, benCh); ev.UserID != ann.ID || ev.Online || ev.LastSeenMs != 777 {
		t.Fatalf("ben got %+v", ev)
	}
	nothingOn(t, catCh) // not ann's friend

	// Node death: instance "dead" stops beating with ann on it; cat is on
	// it and on "live" too.
	const ttl = 300 * time.Millisecond
	for _, inst := range []string{"dead", "live"} {
		if ok, err := s.PresenceBeat(ctx, inst, true); err != nil || !ok {
			t.Fatalf("first beat of %s = %v, %v", inst, ok, err)
		}
	}
	deadBeat := time.Now()
	for _, j := range []struct {
		uid  uint64
		inst string
	}{{ann.ID, "dead"}, {cat.ID, "dead"}, {cat.ID, "live"}} {
		if _, err := s.PresenceJoin(ctx, j.uid, j.inst); err != nil {
			t.Fatal(err)
		}
	}
	presenceOn(t, benCh) // ann online
	if swept, _, err := s.PresenceSweep(ctx, ttl.Milliseconds(), 100); err != nil || len(swept) != 0 {
		t.Fatalf("sweep before the TTL = %v, %v", swept, err)
	}
	time.Sleep(ttl + 100*time.Millisecond)
	if ok, err := s.PresenceBeat(ctx, "live", false); err != nil || !ok {
		t.Fatalf("live beat = %v, %v", ok, err)
	}
	swept, more, err := s.PresenceSweep(ctx, ttl.Milliseconds(), 100)
	if err != nil || more || len(swept) != 2 {
		t.Fatalf("sweep = %+v, more %v, %v; want ann and cat", swept, more, err)
	}
	for _, u := range swept {
		switch u.UID {
		case ann.ID:
			at := time.UnixMilli(u.Change.State.LastSeenMs)
			if !u.Change.Announce || u.Change.State.Online || at.Before(deadBeat.Add(-time.Second)) || at.After(deadBeat.Add(time.Second)) {
				t.Fatalf("ann swept: %+v; want offline, last seen at the dead instance's beat (%v)", u.Change, deadBeat)
			}
		case cat.ID:
			if u.Change.Announce || !u.Change.State.Online {
				t.Fatalf("cat swept: %+v; want still online (on the live instance)", u.Change)
			}
		}
	}
	if ev := presenceOn(t, benCh); ev.UserID != ann.ID || ev.Online || ev.LastSeenMs == 0 {
		t.Fatalf("ben got %+v", ev)
	}
	if st, _ := s.Presence(ctx, []uint64{ann.ID, cat.ID}); st[0].Online || !st[1].Online {
		t.Fatalf("presence after the sweep %v", st)
	}
	// Swept once: the next sweep forgets the instance, which finds itself
	// gone if it beats again.
	if swept, more, err := s.PresenceSweep(ctx, ttl.Milliseconds(), 100); err != nil || more || len(swept) != 0 {
		t.Fatalf("second sweep = %v, %v, %v", swept, more, err)
	}
	if n, _ := rb.client.ZCard(ctx, s.metaKey("presence:dead")).Result(); n != 0 {
		t.Fatalf("%d dead instances left after sweeping", n)
	}
	if ok, err := s.PresenceBeat(ctx, "dead", false); err != nil || ok {
		t.Fatalf("beat of the swept instance = %v, %v; want false", ok, err)
	}
	nothingOn(t, catCh)
}

// The embedded store keeps last seen and the hidden flag in its file; who
// is online dies with the process, as every session does.
func TestBoltStorePresenceSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "test.db")
	s, err := OpenBoltStore(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	c, _ := s.CreateUser(ctx, "c", nil)
	for _, uid := range []uint64{a.ID, b.ID, c.ID} {
		if _, err := s.PresenceJoin(ctx, uid, "n"); err != nil {
			t.Fatal(err)
		}
	}
	for _, uid := range []uint64{a.ID, b.ID} {
		if _, err := s.PresenceLeave(ctx, uid, "n"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.PresenceSettle(ctx, uid, "n", 4242); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.SetPresenceVisible(ctx, b.ID, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenBoltStore(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Presence(ctx, []uint64{a.ID, b.ID, c.ID})
	want := []PresenceState{{LastSeenMs: 4242}, {}, {}}
	if err != nil || !slices.Equal(st, want) {
		t.Fatalf("presence after reopen = %v, %v; want %v", st, err, want)
	}
	if ch, err := s.SetPresenceVisible(ctx, b.ID, true); err != nil || !ch.Announce || ch.State.LastSeenMs != 4242 {
		t.Fatalf("b shown again = %+v, %v; want its last seen kept while hidden", ch, err)
	}
}
