package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
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
	forEachRedis(t, func(t *testing.T, rb *redisBackend) {
		testStoreConformance(t, func(t *testing.T, inboxLimit int) Store {
			// Each store gets its own key prefix in the shared server.
			s := NewRedisStore(RedisConfig{Client: rb.client, Prefix: rb.newPrefix(), InboxLimit: inboxLimit})
			t.Cleanup(func() { s.Close() })
			return s
		})
		testHistoryConformance(t, func(t *testing.T, lim HistoryLimits) Store {
			s := NewRedisStore(RedisConfig{Client: rb.client, Prefix: rb.newPrefix(), History: lim})
			t.Cleanup(func() { s.Close() })
			return s
		})
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
		ev.Message.FromUserId != a.ID || m.Seq != 1 || ev.Message.Seq != m.Seq {
		t.Fatalf("published %q decodes to %+v, %v; want message %d from %d with seq 1", got.Payload, ev.Message, err, m.MsgId, a.ID)
	}
	for _, uid := range []uint64{b.ID, c.ID} {
		if in, err := s.Inbox(ctx, uid, 0, 10); err != nil || len(in) != 1 || in[0].MsgId != m.MsgId || in[0].Seq != m.Seq {
			t.Fatalf("inbox of %d = %v, %v; want the message with its seq", uid, in, err)
		}
	}
	// Pushes reuse Encoded: it is the stored body, seq included, byte for
	// byte, in the inbox copy and in the conversation's log.
	stored, err := rdb.HGet(ctx, "pub:msg:"+msgMember(m.MsgId), "body").Result()
	if err != nil || stored != string(res.Encoded) {
		t.Fatalf("stored body %x, %v; Encoded %x", stored, err, res.Encoded)
	}
	logged, err := rdb.HGet(ctx, "pub:{c:"+ConversationOf(m).Key()+"}:log", "1").Result()
	if err != nil || len(logged) < 8 || logged[8:] != string(res.Encoded) ||
		int64(binary.BigEndian.Uint64([]byte(logged[:8]))) != m.SentAtMs {
		t.Fatalf("logged value %x, %v; want sent_at %d then %x", logged, err, m.SentAtMs, res.Encoded)
	}
	var decoded chatpb.Message
	if err := proto.Unmarshal(res.Encoded, &decoded); err != nil || !proto.Equal(&decoded, m) {
		t.Fatalf("Encoded decodes to %v, %v; want %v", &decoded, err, m)
	}

	dup, err := s.AppendMessage(ctx, testMessage(ids, a, "hello b and c"), []uint64{b.ID, c.ID}, "cid-1")
	if err != nil || !dup.Duplicate || dup.Published || dup.Message.MsgId != m.MsgId || dup.Message.Seq != m.Seq {
		t.Fatalf("resend = %+v, %v; want a duplicate of %d (seq %d), not published", dup, err, m.MsgId, m.Seq)
	}
	if extra, err := ps.ReceiveTimeout(ctx, 200*time.Millisecond); err == nil {
		t.Fatalf("the duplicate was published again: %v", extra)
	}
}

// Retention as the append script does it: counted in HistoryTrimmed,
// bounded per append, by age from the oldest end but never the message
// being appended, and the log and its first seq expire together when idle
// for MaxAge, without seqs starting over.
func TestRedisStoreHistoryRetention(t *testing.T) {
	ctx := context.Background()
	_, rdb := testRedis(t)
	open := func(prefix string, lim HistoryLimits) *RedisStore {
		s := NewRedisStore(RedisConfig{Client: rdb, Prefix: prefix, History: lim})
		t.Cleanup(func() { s.Close() })
		return s
	}
	seqsOf := func(s *RedisStore, q HistoryQuery) ([]uint64, bool) {
		t.Helper()
		page, err := s.History(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		var out []uint64
		for _, m := range page.Messages {
			out = append(out, m.Seq)
		}
		return out, page.HasMore
	}
	var node uint64
	send := func(s *RedisStore, from, to User, sentAt time.Time) AppendResult {
		t.Helper()
		m := &chatpb.Message{FromUserId: from.ID, FromUsername: from.Name, ToUserId: to.ID, Text: "x"}
		// A generator (and node number, so ids differ) per message: one
		// generator never goes back in time.
		node++
		m.MsgId, m.SentAtMs = newMsgIDGen(node).next(sentAt)
		res, err := s.AppendMessage(ctx, m, []uint64{to.ID}, "")
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	t.Run("by count, bounded per append", func(t *testing.T) {
		s := open("count:", HistoryLimits{MaxMessages: 3, MaxAge: -1})
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		var trims []int
		for range 5 {
			trims = append(trims, send(s, a, b, time.Now()).HistoryTrimmed)
		}
		if !slices.Equal(trims, []int{0, 0, 0, 1, 1}) {
			t.Fatalf("HistoryTrimmed per append %v, want 0 0 0 1 1", trims)
		}
		ck := "count:{c:" + DirectConversation(a.ID, b.ID).Key() + "}:"
		for _, k := range []string{"log", "first"} {
			if ttl := rdb.PTTL(ctx, ck+k).Val(); ttl != -1 {
				t.Fatalf("%s has TTL %v with MaxAge unbounded", k, ttl)
			}
		}
		// Unbounded: 100 messages stay. Then a store with a lower limit
		// catches up at most 64 seqs per append.
		u := open("count:", HistoryLimits{MaxMessages: -1, MaxAge: -1})
		c, _ := u.CreateUser(ctx, "c", nil)
		for range 100 {
			if res := send(u, a, c, time.Now()); res.HistoryTrimmed != 0 {
				t.Fatalf("unbounded retention trimmed %d", res.HistoryTrimmed)
			}
		}
		low := open("count:", HistoryLimits{MaxMessages: 5, MaxAge: -1})
		if n := send(low, c, a, time.Now()).HistoryTrimmed; n != 64 {
			t.Fatalf("first append under the lower limit trimmed %d, want 64", n)
		}
		if n := send(low, c, a, time.Now()).HistoryTrimmed; n != 102-5-64 {
			t.Fatalf("second append trimmed %d, want %d", n, 102-5-64)
		}
		got, more := seqsOf(low, HistoryQuery{Conv: DirectConversation(a.ID, c.ID), Newest: true, Limit: 10})
		if !slices.Equal(got, []uint64{102, 101, 100, 99, 98}) || more {
			t.Fatalf("kept %v more %v, want 102..98", got, more)
		}
	})

	t.Run("by age", func(t *testing.T) {
		s := open("age:", HistoryLimits{MaxMessages: -1, MaxAge: time.Hour})
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		conv := DirectConversation(a.ID, b.ID)
		if n := send(s, a, b, time.Now().Add(-2*time.Hour)).HistoryTrimmed; n != 0 {
			t.Fatalf("the message being appended was trimmed (%d)", n)
		}
		// Kept until the next append trims it, but never shown: too old.
		if got, more := seqsOf(s, HistoryQuery{Conv: conv, Newest: true, Limit: 10}); len(got) != 0 || more {
			t.Fatalf("history %v more %v, want nothing: the message is past MaxAge", got, more)
		}
		if n := send(s, b, a, time.Now()).HistoryTrimmed; n != 1 {
			t.Fatalf("the next append trimmed %d, want the old one", n)
		}
		if n := send(s, a, b, time.Now()).HistoryTrimmed; n != 0 {
			t.Fatalf("a young message was trimmed (%d)", n)
		}
		if got, more := seqsOf(s, HistoryQuery{Conv: conv, After: 0, Limit: 10}); !slices.Equal(got, []uint64{2, 3}) || more {
			t.Fatalf("history %v more %v, want 2 3", got, more)
		}
		ck := "age:{c:" + conv.Key() + "}:"
		for _, k := range []string{"log", "first"} {
			// After an append: at least MaxAge, at most MaxAge/64 more
			// (luaSeqAndLog).
			if ttl := rdb.PTTL(ctx, ck+k).Val(); ttl < time.Hour-time.Second || ttl > time.Hour+time.Hour/64 {
				t.Fatalf("%s has TTL %v, want MaxAge to MaxAge + MaxAge/64", k, ttl)
			}
		}
		// The TTL is set again only once less than MaxAge is left: an
		// append with more left does not touch it (nor the first key,
		// unchanged), one with less sets both to MaxAge + MaxAge/64.
		high := time.Hour + 30*time.Second
		for _, k := range []string{"log", "first"} {
			rdb.PExpire(ctx, ck+k, high)
		}
		send(s, b, a, time.Now())
		for _, k := range []string{"log", "first"} {
			if ttl := rdb.PTTL(ctx, ck+k).Val(); ttl > high || ttl < high-10*time.Second {
				t.Fatalf("%s has TTL %v after an append with %v left, want it left alone", k, ttl, high)
			}
		}
		for _, k := range []string{"log", "first"} {
			rdb.PExpire(ctx, ck+k, time.Hour-time.Second)
		}
		send(s, a, b, time.Now())
		for _, k := range []string{"log", "first"} {
			if ttl := rdb.PTTL(ctx, ck+k).Val(); ttl < time.Hour+time.Hour/64-10*time.Second || ttl > time.Hour+time.Hour/64 {
				t.Fatalf("%s has TTL %v after an append with less than MaxAge left, want MaxAge + MaxAge/64", k, ttl)
			}
		}
		// Idle past MaxAge both go (as their TTL does it): the seq goes
		// on from the counter, and the history holds what came after.
		if err := rdb.Del(ctx, ck+"log", ck+"first").Err(); err != nil {
			t.Fatal(err)
		}
		if got, more := seqsOf(s, HistoryQuery{Conv: conv, Newest: true, Limit: 10}); len(got) != 0 || more {
			t.Fatalf("history of an expired log %v more %v", got, more)
		}
		if res := send(s, a, b, time.Now()); res.Message.Seq != 6 || res.HistoryTrimmed != 0 {
			t.Fatalf("after expiry: seq %d trimmed %d, want seq 6", res.Message.Seq, res.HistoryTrimmed)
		}
		if got, more := seqsOf(s, HistoryQuery{Conv: conv, After: 0, Limit: 10}); !slices.Equal(got, []uint64{6}) || more {
			t.Fatalf("history after expiry %v more %v, want 6", got, more)
		}
		if got, more := seqsOf(s, HistoryQuery{Conv: conv, Newest: true, Before: 6, Limit: 10}); len(got) != 0 || more {
			t.Fatalf("history below the expired seqs %v more %v", got, more)
		}
		// A node without MaxAge removes the TTL an earlier one left.
		send(open("age:", HistoryLimits{MaxMessages: -1, MaxAge: -1}), b, a, time.Now())
		for _, k := range []string{"log", "first"} {
			if ttl := rdb.PTTL(ctx, ck+k).Val(); ttl != -1 {
				t.Fatalf("%s has TTL %v after an append without MaxAge", k, ttl)
			}
		}
	})
}

// A keyspace written before conversations keeps working: a dedup value
// that is a bare msg_id still names the first send (seq 0), an inbox body
// without a seq replays with seq 0 and acks as before, and conversations
// start counting at 1 with no history from before.
func TestRedisStoreReadsTheOldKeyspace(t *testing.T) {
	ctx := context.Background()
	_, rdb := testRedis(t)
	s := NewRedisStore(RedisConfig{Client: rdb, Prefix: "old:"})
	defer s.Close()
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	ids := newMsgIDGen(1)
	// What the old append script left: the body without seq in msg:<id>
	// with its refs, the member in the inbox, the bare id as dedup value.
	old := &chatpb.Message{FromUserId: a.ID, FromUsername: a.Name, ToUserId: b.ID, Text: "from before"}
	old.MsgId, old.SentAtMs = ids.next(time.Now())
	body, err := proto.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	member := msgMember(old.MsgId)
	if err := rdb.HSet(ctx, "old:msg:"+member, "body", body, "refs", 1).Err(); err != nil {
		t.Fatal(err)
	}
	rdb.ZAdd(ctx, "old:inbox:"+fmt.Sprint(b.ID), redis.Z{Member: member})
	rdb.Set(ctx, fmt.Sprintf("old:dedup:%d:cid-old", a.ID), old.MsgId, time.Hour)

	if _, err := s.Epoch(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := rdb.Get(ctx, "old:schema").Result(); v != fmt.Sprint(redisSchema) {
		t.Fatalf("schema after Epoch = %q, want %d", v, redisSchema)
	}
	resend := &chatpb.Message{FromUserId: a.ID, FromUsername: a.Name, ToUserId: b.ID, Text: "from before"}
	resend.MsgId, resend.SentAtMs = ids.next(time.Now())
	dup, err := s.AppendMessage(ctx, resend, []uint64{b.ID}, "cid-old")
	if err != nil || !dup.Duplicate || dup.Message.MsgId != old.MsgId || dup.Message.Seq != 0 {
		t.Fatalf("resend of an old client_msg_id = %+v, %v; want a duplicate of %d with seq 0", dup, err, old.MsgId)
	}
	next := &chatpb.Message{FromUserId: a.ID, FromUsername: a.Name, ToUserId: b.ID, Text: "after"}
	next.MsgId, next.SentAtMs = ids.next(time.Now())
	if _, err := s.AppendMessage(ctx, next, []uint64{b.ID}, "cid-new"); err != nil || next.Seq != 1 {
		t.Fatalf("first message with a seq: %d, %v; want 1", next.Seq, err)
	}
	inbox, err := s.Inbox(ctx, b.ID, 0, 10)
	if err != nil || len(inbox) != 2 || inbox[0].MsgId != old.MsgId || inbox[0].Seq != 0 ||
		inbox[1].MsgId != next.MsgId || inbox[1].Seq != 1 {
		t.Fatalf("inbox = %v, %v; want the old message (seq 0), then the new (seq 1)", inbox, err)
	}
	page, err := s.History(ctx, HistoryQuery{Conv: DirectConversation(a.ID, b.ID), Newest: true, Limit: 10})
	if err != nil || len(page.Messages) != 1 || page.Messages[0].MsgId != next.MsgId || page.HasMore {
		t.Fatalf("history = %+v, %v; want only the new message", page, err)
	}
	if err := s.Ack(ctx, b.ID, []uint64{old.MsgId}); err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(ctx, "old:msg:"+member).Val(); n != 0 {
		t.Fatal("the acked old message's body is still stored")
	}
	if dup, err := s.AppendMessage(ctx, next, []uint64{b.ID}, "cid-new"); err != nil || !dup.Duplicate || dup.Message.Seq != 1 {
		t.Fatalf("resend of a new client_msg_id = %+v, %v; want a duplicate with seq 1", dup, err)
	}
}

// Epoch marks the keyspace with its schema and refuses one written by a
// newer loopchat, changing nothing in it.
func TestRedisStoreSchema(t *testing.T) {
	ctx := context.Background()
	_, rdb := testRedis(t)
	s := NewRedisStore(RedisConfig{Client: rdb, Prefix: "sc:"})
	defer s.Close()
	e, err := s.Epoch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := rdb.Get(ctx, "sc:schema").Result(); v != fmt.Sprint(redisSchema) {
		t.Fatalf("schema = %q, want %d", v, redisSchema)
	}
	for _, newer := range []string{fmt.Sprint(redisSchema + 1), "v3"} {
		rdb.Set(ctx, "sc:schema", newer, 0)
		rdb.Del(ctx, "sc:epoch") // would make a new epoch, were the schema known
		_, err := s.Epoch(ctx)
		if !errors.Is(err, errSchemaNewer) || !strings.Contains(err.Error(), "schema version "+newer) ||
			!strings.Contains(err.Error(), "newer") {
			t.Fatalf("Epoch over schema %q = %v; want errSchemaNewer naming the version", newer, err)
		}
		if v, _ := rdb.Get(ctx, "sc:schema").Result(); v != newer || rdb.Exists(ctx, "sc:epoch").Val() != 0 {
			t.Fatalf("the refused keyspace was changed: schema %q", v)
		}
	}
	rdb.Set(ctx, "sc:schema", redisSchema, 0)
	rdb.Set(ctx, "sc:epoch", e, 0)
	if again, err := s.Epoch(ctx); err != nil || again != e {
		t.Fatalf("Epoch over its own schema = %q, %v", again, err)
	}
}

// A group message is stored for the group's members as the append script
// finds them, whatever recipients the caller passed, and published once,
// to the group's channel, listing the members online; joins and leaves
// publish group_member on the user's channel in the same script.
func TestRedisStoreGroupAppendPublishesOnce(t *testing.T) {
	ctx := context.Background()
	_, rdb := testRedis(t)
	s := NewRedisStore(RedisConfig{Client: rdb, Prefix: "pub:", PublishMessages: true})
	defer s.Close()
	var us []User
	for _, n := range []string{"ann", "ben", "cat", "dan"} {
		u, err := s.CreateUser(ctx, n, []byte("h"))
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	a, b, c, d := us[0], us[1], us[2], us[3]
	// a, b and d are "online" (their channels have a subscriber), and the
	// group_member notices on them show.
	ps := rdb.Subscribe(ctx, "pub:user:"+fmt.Sprint(a.ID), "pub:user:"+fmt.Sprint(b.ID), "pub:user:"+fmt.Sprint(d.ID))
	defer ps.Close()
	for range 3 {
		if _, err := ps.Receive(ctx); err != nil {
			t.Fatal(err)
		}
	}
	notice := func(u User) GroupMemberNotice {
		t.Helper()
		got, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := decodeChannelEvent([]byte(got.Payload))
		if err != nil || got.Channel != "pub:user:"+fmt.Sprint(u.ID) || ev.GroupMember == nil {
			t.Fatalf("on %s: %s (%v), want a group_member notice on %s's channel", got.Channel, got.Payload, err, u.Name)
		}
		return *ev.GroupMember
	}
	g, err := s.CreateGroup(ctx, a.ID, "g", "", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if n := notice(a); n != (GroupMemberNotice{UserID: a.ID, GroupID: g.ID, Joined: true}) {
		t.Fatalf("the creator's notice %+v", n)
	}
	if err := ps.Subscribe(ctx, "pub:group:"+fmt.Sprint(g.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	for _, u := range []User{b, c, d} {
		if err := s.JoinGroup(ctx, g.ID, u.ID, Limits{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.LeaveGroup(ctx, g.ID, d.ID); err != nil {
		t.Fatal(err)
	}
	for _, want := range []GroupMemberNotice{{UserID: b.ID, GroupID: g.ID, Joined: true}, {UserID: d.ID, GroupID: g.ID, Joined: true},
		{UserID: d.ID, GroupID: g.ID}} {
		if n := notice(map[uint64]User{b.ID: b, d.ID: d}[want.UserID]); n != want {
			t.Fatalf("notice %+v, want %+v", n, want)
		}
	}

	before := publishCalls(t, rdb)
	m := testMessage(newMsgIDGen(0), a, "to the group")
	m.GroupId = g.ID
	// The caller's list is stale (d left, c is missing): the script's own
	// reading of the members decides.
	res, err := s.AppendMessage(ctx, m, []uint64{b.ID, d.ID}, "")
	if err != nil {
		t.Fatal(err)
	}
	if n := publishCalls(t, rdb) - before; n != 1 {
		t.Fatalf("a group message cost %d PUBLISH calls, want 1", n)
	}
	if !res.Published || res.Online != 1 || res.Recipients != 2 {
		t.Fatalf("append result Published=%v Online=%d Recipients=%d, want true, 1 (b), 2 (b, c)", res.Published, res.Online, res.Recipients)
	}
	got, err := ps.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := decodeGroupEvent([]byte(got.Payload), g.ID)
	if err != nil || got.Channel != "pub:group:"+fmt.Sprint(g.ID) || ev.Message.GetMsgId() != m.MsgId || ev.Message.Seq != 1 ||
		!slices.Equal(ev.To, []uint64{b.ID}) {
		t.Fatalf("on %s: %s decodes to %+v, %v; want the message with seq 1 for b only", got.Channel, got.Payload, ev, err)
	}
	for _, u := range us[1:] {
		in, err := s.Inbox(ctx, u.ID, 0, 10)
		if err != nil || (len(in) == 1) != (u.ID != d.ID) {
			t.Fatalf("inbox of %s = %v, %v", u.Name, in, err)
		}
	}
	if extra, err := ps.ReceiveTimeout(ctx, 100*time.Millisecond); err == nil {
		t.Fatalf("published again: %v", extra)
	}
	// A join's notice carries its JoinedSeq.
	if err := s.JoinGroup(ctx, g.ID, d.ID, Limits{}); err != nil {
		t.Fatal(err)
	}
	if n := notice(d); n != (GroupMemberNotice{UserID: d.ID, GroupID: g.ID, Joined: true, Seq: 1}) {
		t.Fatalf("d's rejoin notice %+v, want seq 1", n)
	}
}

// publishCalls is Redis's count of PUBLISH commands run so far, those
// scripts ran included.
func publishCalls(t *testing.T, rdb *redis.Client) int {
	return commandCalls(t, rdb, "publish")
}

// commandCalls is how many times this Redis ran command (INFO
// commandstats), in scripts too.
func commandCalls(t *testing.T, rdb *redis.Client, command string) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+command+":calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}
