package server

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/internal/testproc"
)

// testRedis starts one redis-server for a test and returns a client.
func testRedis(t *testing.T) (*testproc.Redis, *redis.Client) {
	t.Helper()
	r := testproc.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1,
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
	t.Cleanup(func() { rdb.Close() })
	return r, rdb
}

func TestRedisStoreConformance(t *testing.T) {
	_, rdb := testRedis(t)
	var n atomic.Int64
	testStoreConformance(t, func(t *testing.T, inboxLimit int) Store {
		// Each store gets its own key prefix in the shared server.
		s := NewRedisStore(RedisConfig{Client: rdb, Prefix: fmt.Sprintf("t%d:", n.Add(1)), InboxLimit: inboxLimit})
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestRedisStoreAcksSurviveACrash(t *testing.T) {
	testAcksSurviveACrash(t, func(t *testing.T) crashableStore {
		r, rdb := testRedis(t)
		s := NewRedisStore(RedisConfig{Client: rdb})
		t.Cleanup(func() { s.Close() })
		return crashableStore{Store: s,
			checkpoint: func() {}, // nothing lazy: Redis has it all once it answered
			crash: func() Store {
				r.Kill() // SIGKILL: only what the AOF fsynced survives
				r.Start()
				// The pool's connections died with the old process; each
				// failed call drops one, so a new store sees the new one.
				testproc.WaitUntil(t, "the client reconnects", 10*time.Second, func() bool {
					return rdb.Ping(context.Background()).Err() == nil
				})
				n := NewRedisStore(RedisConfig{Client: rdb})
				t.Cleanup(func() { n.Close() })
				return n
			},
		}
	})
}

func TestRedisStoreSurvivesRedisRestart(t *testing.T) {
	ctx := context.Background()
	r, rdb := testRedis(t)
	s := NewRedisStore(RedisConfig{Client: rdb})
	defer s.Close()
	a, _ := s.CreateUser(ctx, "a", []byte("h"))
	b, _ := s.CreateUser(ctx, "b", []byte("h"))
	m := testMessage(newMsgIDGen(0), a, "fsynced")
	if _, err := s.AppendMessage(ctx, m, []uint64{b.ID}, ""); err != nil {
		t.Fatal(err)
	}
	r.Kill() // SIGKILL: only what the AOF fsynced survives
	if _, err := s.AppendMessage(ctx, testMessage(newMsgIDGen(0), a, "lost"), []uint64{b.ID}, ""); err == nil {
		t.Fatal("append succeeded with Redis down")
	} else if clientError(err).Code.String() != "ERROR_CODE_UNAVAILABLE" {
		t.Fatalf("append with Redis down = %v, want unavailable", err)
	}
	r.Start()
	// The script cache is gone after a restart; the batcher reloads it.
	m2 := testMessage(newMsgIDGen(0), a, "after restart")
	if _, err := s.AppendMessage(ctx, m2, []uint64{b.ID}, ""); err != nil {
		t.Fatalf("append after restart: %v", err)
	}
	got, err := s.Inbox(ctx, b.ID, 0, 10)
	if err != nil || len(got) != 2 || got[0].Text != "fsynced" || got[1].Text != "after restart" {
		t.Fatalf("inbox after restart = %v, %v", got, err)
	}
}

// With PublishMessages the append script also publishes: a subscriber of
// the recipient's channel gets the message as channel JSON, SendOK's online
// count comes from the same reply, and a duplicate is neither stored nor
// published again.
func TestRedisStorePublishesInTheAppendScript(t *testing.T) {
	ctx := context.Background()
	_, rdb := testRedis(t)
	s := NewRedisStore(RedisConfig{Client: rdb, Prefix: "pub:", PublishMessages: true})
	defer s.Close()
	// Names as registration allows them: a node drops channel messages
	// whose from_username a client could not have.
	a, _ := s.CreateUser(ctx, "ann", []byte("h"))
	b, _ := s.CreateUser(ctx, "ben", []byte("h"))
	c, _ := s.CreateUser(ctx, "cat", []byte("h"))

	ps := rdb.Subscribe(ctx, "pub:user:"+fmt.Sprint(b.ID))
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // the subscribe confirmation
		t.Fatal(err)
	}
	ids := newMsgIDGen(0)
	m := testMessage(ids, a, "hello b and c")
	res, err := s.AppendMessage(ctx, m, []uint64{b.ID, c.ID}, "cid-1")
	if err != nil {
		t.Fatal(err)
	}
	if !res.Published || res.Online != 1 {
		t.Fatalf("append result Published=%v Online=%d, want true and 1 (b subscribed, c not)", res.Published, res.Online)
	}
	got, err := ps.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := decodeChannelEvent([]byte(got.Payload))
	if err != nil || ev.Message == nil || ev.Message.MsgId != m.MsgId || ev.Message.Text != m.Text ||
		ev.Message.FromUserId != a.ID {
		t.Fatalf("published %q decodes to %+v, %v; want message %d from %d", got.Payload, ev.Message, err, m.MsgId, a.ID)
	}
	for _, uid := range []uint64{b.ID, c.ID} {
		if in, err := s.Inbox(ctx, uid, 0, 10); err != nil || len(in) != 1 || in[0].MsgId != m.MsgId {
			t.Fatalf("inbox of %d = %v, %v; want the message", uid, in, err)
		}
	}

	dup, err := s.AppendMessage(ctx, testMessage(ids, a, "hello b and c"), []uint64{b.ID, c.ID}, "cid-1")
	if err != nil || !dup.Duplicate || dup.Published || dup.Message.MsgId != m.MsgId {
		t.Fatalf("resend = %+v, %v; want a duplicate of %d, not published", dup, err, m.MsgId)
	}
	if extra, err := ps.ReceiveTimeout(ctx, 200*time.Millisecond); err == nil {
		t.Fatalf("the duplicate was published again: %v", extra)
	}
}
