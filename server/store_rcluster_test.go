package server

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// The Redis Cluster store's operations that span slots run as steps
// (store_rcluster.go). These tests stop an operation after one of its
// steps, as a node that died there would, and check what the rest of the
// system sees and how it is mended, as docs/cluster.md says.

// clusterStore is a store on the shared cluster under a prefix of its own.
func clusterStore(t *testing.T) (*RedisStore, *redisBackend) {
	t.Helper()
	rb := onCluster(t)
	s := NewRedisStore(RedisConfig{Client: rb.client, Prefix: rb.prefix, PublishMessages: true})
	t.Cleanup(func() { s.Close() })
	return s, rb
}

func TestClusterRegistrationCutOff(t *testing.T) {
	s, _ := clusterStore(t)
	ctx := context.Background()
	step := func(script *redis.Script, key string, args ...any) int64 {
		t.Helper()
		n, err := s.runInt(ctx, script, []string{key}, args...)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Cut off after the record, before the name: no user.
	id := uint64(step(scriptClusterIncr, s.metaKey("user:seq")))
	step(scriptClusterUserRecord, s.userKey(id), "ghost", "h", "1")
	if _, err := s.Account(ctx, id); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("Account of a pending record = %v, want not found", err)
	}
	if us, err := s.Users(ctx, 0, 10); err != nil || len(us) != 0 {
		t.Fatalf("Users lists a pending record: %v, %v", us, err)
	}
	if _, err := s.Credentials(ctx, "ghost"); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("Credentials of a name never claimed = %v", err)
	}
	u, err := s.CreateUser(ctx, "ghost", []byte("h2"))
	if err != nil || u.ID == id {
		t.Fatalf("registering the name after = %+v, %v; want a new user", u, err)
	}

	// Cut off after the name was claimed, before the record was final: the
	// user exists, and their first password login finishes it.
	id = uint64(step(scriptClusterIncr, s.metaKey("user:seq")))
	step(scriptClusterUserRecord, s.userKey(id), "late", "hash-l", "7")
	step(scriptClusterClaimName, s.usernameKey("late"), id)
	if _, err := s.Account(ctx, id); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("a token login before the first password login = %v, want not found", err)
	}
	if _, err := s.CreateUser(ctx, "Late", []byte("x")); !errors.Is(err, ErrUsernameTaken) {
		t.Fatalf("the claimed name registered again: %v", err)
	}
	c, err := s.Credentials(ctx, "late")
	if err != nil || c.ID != id || string(c.PasswordHash) != "hash-l" || c.Nonce != 7 {
		t.Fatalf("Credentials = %+v, %v", c, err)
	}
	if a, err := s.Account(ctx, id); err != nil || a.Name != "late" {
		t.Fatalf("Account after the login finished the registration = %+v, %v", a, err)
	}
}

func TestClusterFriendshipCutOff(t *testing.T) {
	s, rb := clusterStore(t)
	ctx := context.Background()
	var us []User
	for _, n := range []string{"a", "b", "c"} {
		u, err := s.CreateUser(ctx, n, []byte("h"))
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	a, b, c := us[0], us[1], us[2]
	ids := func(uid uint64) []uint64 {
		t.Helper()
		fs, err := s.Friends(ctx, uid)
		if err != nil {
			t.Fatal(err)
		}
		var out []uint64
		for _, f := range fs {
			out = append(out, f.ID)
		}
		return out
	}
	// a -> b stopped after a's pending side; a -> c after c's side too.
	for _, other := range []User{b, c} {
		if n, err := s.runInt(ctx, scriptClusterFriendPropose, []string{s.friendsKey(a.ID), s.userTagKey(a.ID, "fpend")},
			other.ID, 1, 0, time.Now().UnixMilli()); err != nil || n != 1 {
			t.Fatalf("propose = %d, %v", n, err)
		}
	}
	if _, err := s.runInt(ctx, scriptClusterFriendAccept, []string{s.friendsKey(c.ID), s.userTagKey(c.ID, "fpend")}, a.ID, 1, 0); err != nil {
		t.Fatal(err)
	}
	// Pending and young (an AddFriend may still be under way): not listed.
	if got := ids(a.ID); len(got) != 0 {
		t.Fatalf("a lists %v while its sides are pending", got)
	}
	// Older than any AddFriend under way: a's read mends them, taken back
	// where the other side lacks a, made final where it has a.
	old := float64(time.Now().Add(-2 * friendRepairAfter).UnixMilli())
	for _, other := range []User{b, c} {
		z := redis.Z{Score: old, Member: strconv.FormatUint(other.ID, 10)}
		if err := rb.client.ZAdd(ctx, s.userTagKey(a.ID, "fpend"), z).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if got := ids(a.ID); len(got) != 1 || got[0] != c.ID {
		t.Fatalf("a's friends after the repair = %v, want c only", got)
	}
	if got := ids(c.ID); len(got) != 1 || got[0] != a.ID {
		t.Fatalf("c's friends = %v", got)
	}
	if n, _ := rb.client.ZCard(ctx, s.userTagKey(a.ID, "fpend")).Result(); n != 0 {
		t.Fatalf("%d sides still pending", n)
	}
	// b can be made a friend as usual now.
	if err := s.AddFriend(ctx, a.ID, b.ID, Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := ids(b.ID); len(got) != 1 || got[0] != a.ID {
		t.Fatalf("b's friends = %v", got)
	}
}

func TestClusterUnfriendCutOff(t *testing.T) {
	s, rb := clusterStore(t)
	ctx := context.Background()
	var us []User
	for _, n := range []string{"a", "b", "c", "d"} {
		u, err := s.CreateUser(ctx, n, []byte("h"))
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	a, b, c, d := us[0], us[1], us[2], us[3]
	for _, o := range []User{b, c, d} {
		if err := s.AddFriend(ctx, a.ID, o.ID, Limits{}); err != nil {
			t.Fatal(err)
		}
	}
	step := func(script *redis.Script, x, y uint64, args ...any) {
		t.Helper()
		if _, err := s.runInt(ctx, script, []string{s.friendsKey(x), s.userTagKey(x, "fpend")}, append([]any{y}, args...)...); err != nil {
			t.Fatal(err)
		}
	}
	// a unfriends b, stopped after step 1; c, after step 2; d, after
	// step 1 too, and then retried.
	for _, o := range []User{b, c, d} {
		step(scriptClusterFriendUnpropose, a.ID, o.ID, time.Now().UnixMilli())
	}
	step(scriptClusterFriendDrop, c.ID, a.ID)
	// a lists none of them at once; b and d still list a, c does not.
	if got := userIDs(t, s, a.ID); len(got) != 0 {
		t.Fatalf("a lists %v during the removals", got)
	}
	for _, o := range []User{b, d} {
		if got := userIDs(t, s, o.ID); !slices.Equal(got, []uint64{a.ID}) {
			t.Fatalf("%s's friends = %v", o.Name, got)
		}
	}
	if got := userIDs(t, s, c.ID); len(got) != 0 {
		t.Fatalf("c's friends = %v", got)
	}
	// The retry finishes d's removal at once.
	if err := s.RemoveFriend(ctx, a.ID, d.ID); err != nil {
		t.Fatal(err)
	}
	if got := userIDs(t, s, d.ID); len(got) != 0 {
		t.Fatalf("d's friends after the retry = %v", got)
	}
	// Older than any call under way: a's read mends the rest. b's side
	// still has a, so that removal never happened; c's lacks a, so it
	// is finished.
	old := float64(time.Now().Add(-2 * friendRepairAfter).UnixMilli())
	for _, o := range []User{b, c} {
		z := redis.Z{Score: old, Member: strconv.FormatUint(o.ID, 10)}
		if err := rb.client.ZAdd(ctx, s.userTagKey(a.ID, "fpend"), z).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if got := userIDs(t, s, a.ID); !slices.Equal(got, []uint64{b.ID}) {
		t.Fatalf("a's friends after the repair = %v, want b", got)
	}
	if n, _ := rb.client.ZCard(ctx, s.userTagKey(a.ID, "fpend")).Result(); n != 0 {
		t.Fatalf("%d sides still pending", n)
	}
	if err := s.RemoveFriend(ctx, a.ID, c.ID); !errors.Is(err, ErrNotFriends) {
		t.Fatalf("removing c again = %v, want ErrNotFriends", err)
	}
}

// A Block cut off after its first step (the block) left the friendship:
// AddFriend and sends are refused at once, and the retry ends it.
func TestClusterBlockCutOff(t *testing.T) {
	s, _ := clusterStore(t)
	ctx := context.Background()
	a, _ := s.CreateUser(ctx, "a", []byte("h"))
	b, _ := s.CreateUser(ctx, "b", []byte("h"))
	if err := s.AddFriend(ctx, a.ID, b.ID, Limits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.runInt(ctx, scriptClusterBlockAdd, []string{s.blockedKey(a.ID)}, b.ID, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.AddFriend(ctx, b.ID, a.ID, Limits{}); !errors.Is(err, ErrAlreadyFriends) {
		t.Fatalf("AddFriend = %v (still friends)", err)
	}
	m := testMessage(newMsgIDGen(0), b, "x")
	m.ToUserId = a.ID
	if _, err := s.AppendMessage(ctx, m, []uint64{a.ID}, ""); !errors.Is(err, ErrBlocked) {
		t.Fatalf("send = %v, want ErrBlocked", err)
	}
	if err := s.Block(ctx, a.ID, b.ID, Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := userIDs(t, s, a.ID); len(got) != 0 {
		t.Fatalf("a's friends after the retry = %v", got)
	}
	if got := userIDs(t, s, b.ID); len(got) != 0 {
		t.Fatalf("b's friends after the retry = %v", got)
	}
	if err := s.AddFriend(ctx, b.ID, a.ID, Limits{}); !errors.Is(err, ErrBlocked) {
		t.Fatalf("AddFriend after = %v, want ErrBlocked", err)
	}
}

func TestClusterSendCutOffAfterTheLog(t *testing.T) {
	s, _ := clusterStore(t)
	ctx := context.Background()
	a, _ := s.CreateUser(ctx, "a", []byte("h"))
	b, _ := s.CreateUser(ctx, "b", []byte("h"))
	ids := newMsgIDGen(1)
	m := testMessage(ids, a, "cut off")
	m.ToUserId = b.ID
	// Step 1 alone, as a node that died after it would leave it.
	body, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	conv := ConversationOf(m)
	ck := s.convKey(conv)
	var sentAt [8]byte
	binary.BigEndian.PutUint64(sentAt[:], uint64(m.SentAtMs))
	res, err := s.run(ctx, scriptClusterAppendConv, []string{ck + "seq", ck + "log", ck + "first",
		ck + "dedup:" + strconv.FormatUint(a.ID, 10) + ":c1"}, body, sentAt[:], 0, 0, 0, 3600, m.MsgId, a.ID,
		time.Now().UnixMilli()).Slice()
	if err != nil || res[0] != int64(0) {
		t.Fatalf("step 1 = %v, %v", res, err)
	}
	if in, _ := s.Inbox(ctx, boxOf(b.ID, 0), 0, 10); len(in) != 0 {
		t.Fatalf("b's inbox after step 1 = %v", in)
	}
	if page, _ := s.History(ctx, HistoryQuery{Conv: conv, Newest: true, Limit: 10}); len(page.Messages) != 1 {
		t.Fatalf("history after step 1 = %v", page.Messages)
	}
	// The client sends it again with the same client_msg_id: the first
	// message, delivered now.
	again := testMessage(ids, a, "cut off")
	again.ToUserId = b.ID
	r, err := s.AppendMessage(ctx, again, []uint64{b.ID}, "c1")
	if err != nil || !r.Duplicate || r.Message.MsgId != m.MsgId || r.Message.Seq != 1 {
		t.Fatalf("resend = %+v, %v; want the first message, seq 1", r, err)
	}
	in, err := s.Inbox(ctx, boxOf(b.ID, 0), 0, 10)
	if err != nil || len(in) != 1 || in[0].MsgId != m.MsgId || in[0].Seq != 1 || in[0].Text != "cut off" {
		t.Fatalf("b's inbox after the resend = %v, %v", in, err)
	}
	list, _, err := s.ListConversations(ctx, b.ID, 10)
	if err != nil || len(list) != 1 {
		t.Fatalf("b's conversations = %v, %v", list, err)
	}
	// Once delivered, a resend delivers nothing again: b acks, resends.
	if err := s.Ack(ctx, boxOf(b.ID, 0), []uint64{m.MsgId}); err != nil {
		t.Fatal(err)
	}
	nothingNew := func() bool {
		third := testMessage(ids, a, "cut off")
		third.ToUserId = b.ID
		r, err := s.AppendMessage(ctx, third, []uint64{b.ID}, "c1")
		if err != nil || !r.Duplicate {
			t.Fatalf("third send = %+v, %v", r, err)
		}
		in, _ := s.Inbox(ctx, boxOf(b.ID, 0), 0, 10)
		return len(in) == 0
	}
	waitFor(t, "the dedup entry marked done", nothingNew)
}

func TestClusterGroupMembershipCutOff(t *testing.T) {
	s, _ := clusterStore(t)
	ctx := context.Background()
	owner, _ := s.CreateUser(ctx, "owner", []byte("h"))
	u, _ := s.CreateUser(ctx, "joiner", []byte("h"))
	g, err := s.CreateGroup(ctx, owner.ID, "g", "", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	gk := s.groupKey(g.ID)
	seqKey := s.convKey(GroupConversation(g.ID)) + "seq"
	listed := func() bool {
		t.Helper()
		gids, err := s.GroupIDs(ctx, u.ID)
		if err != nil {
			t.Fatal(err)
		}
		return len(gids) == 1
	}
	// A join stopped after the member was added: a member, not listed.
	if _, err := s.run(ctx, scriptClusterGroupJoin, []string{gk, gk + ":members", gk + ":roles", gk + ":joined", seqKey},
		u.ID, 1, 0).Result(); err != nil {
		t.Fatal(err)
	}
	if listed() {
		t.Fatal("listed before step 2")
	}
	m := testMessage(newMsgIDGen(1), owner, "to members")
	m.GroupId = g.ID
	if _, err := s.AppendMessage(ctx, m, nil, ""); err != nil {
		t.Fatal(err)
	}
	if in, _ := s.Inbox(ctx, boxOf(u.ID, 0), 0, 10); len(in) != 1 {
		t.Fatalf("a member (step 1 done) got %v", in)
	}
	// Joining again mends it.
	if err := s.JoinGroup(ctx, g.ID, u.ID, Limits{}); !errors.Is(err, ErrAlreadyMember) || !listed() {
		t.Fatalf("join again = %v, listed %v", err, listed())
	}
	// A leave stopped after the member was removed: listed, not a member;
	// GroupsOf leaves it out, and leaving again finishes it.
	if _, err := s.run(ctx, scriptClusterGroupLeave, []string{gk, gk + ":members", gk + ":roles", gk + ":joined", seqKey},
		u.ID).Result(); err != nil {
		t.Fatal(err)
	}
	if gs, err := s.GroupsOf(ctx, u.ID); err != nil || len(gs) != 0 {
		t.Fatalf("GroupsOf after a cut-off leave = %v, %v", gs, err)
	}
	if err := s.LeaveGroup(ctx, g.ID, u.ID); !errors.Is(err, ErrNotMember) || listed() {
		t.Fatalf("leave again = %v, listed %v", err, listed())
	}
}

// A shard that loses its data (both its primary and replica restarted
// empty) takes the store's copies of the epoch in its slots with it; the
// next Epoch finds one gone and replaces the epoch, as when one Redis
// comes back empty, and writes under the old one are refused everywhere.
func TestClusterShardLossResetsTheEpoch(t *testing.T) {
	s, rb := clusterStore(t)
	ctx := context.Background()
	e, err := s.Epoch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.UseEpoch(e)
	if again, err := s.Epoch(ctx); err != nil || again != e {
		t.Fatalf("Epoch again = %q, %v; want %q", again, err, e)
	}
	// Every slot has its copy.
	for _, slot := range []int{0, 5000, 16383} {
		if v, err := rb.client.Get(ctx, s.slotKey(slot, "epoch")).Result(); err != nil || v != e {
			t.Fatalf("slot %d's copy = %q, %v", slot, v, err)
		}
	}
	var users []User
	for i := range 6 {
		u, err := s.CreateUser(withEpoch(ctx, e), "u"+strconv.Itoa(i), []byte("h"))
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}
	// One shard loses everything of this store.
	victim, err := rb.c.SlotOwner(ctx, keySlot(s.userKey(users[0].ID)))
	if err != nil {
		t.Fatal(err)
	}
	vc := victim.Client()
	defer vc.Close()
	var cursor uint64
	for {
		keys, next, err := vc.Scan(ctx, cursor, globEscape(rb.prefix)+"*", 1000).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			vc.Del(ctx, k)
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	e2, err := s.Epoch(ctx)
	if err != nil || e2 == e {
		t.Fatalf("Epoch after a shard lost its data = %q, %v; want a new one", e2, err)
	}
	// Under the old epoch, writes are refused on every shard.
	for _, u := range users {
		if err := s.SetBan(withEpoch(ctx, e), u.ID, 1); !errors.Is(err, ErrStoreReset) && !errors.Is(err, ErrUserNotFound) {
			t.Fatalf("a write under the old epoch = %v, want refused", err)
		}
		if _, err := s.NewSession(withEpoch(ctx, e), u.ID, ""); !errors.Is(err, ErrStoreReset) && !errors.Is(err, ErrStoreResetting) {
			t.Fatalf("a session under the old epoch = %v, want refused", err)
		}
	}

	// Less than a shard: one slot's keys deleted by hand. The copy there
	// is gone, a write in that slot is refused, and the next Epoch looks
	// at that slot's copy too, and replaces the epoch.
	s.UseEpoch(e2)
	u, err := s.CreateUser(withEpoch(ctx, e2), "after", []byte("h"))
	if err != nil {
		t.Fatal(err)
	}
	slot := keySlot(s.userKey(u.ID))
	if err := rb.client.Del(ctx, s.slotKey(slot, "epoch")).Err(); err != nil {
		t.Fatal(err)
	}
	if again, err := s.Epoch(ctx); err != nil || again != e2 {
		t.Fatalf("Epoch before any refusal = %q, %v (it samples the first slot of each range only)", again, err)
	}
	if err := s.SetBan(withEpoch(ctx, e2), u.ID, 1); !errors.Is(err, ErrStoreReset) {
		t.Fatalf("a write where the copy is gone = %v, want refused", err)
	}
	if e3, err := s.Epoch(ctx); err != nil || e3 == e2 {
		t.Fatalf("Epoch after a refusal in a slot that lost its copy = %q, %v; want a new one", e3, err)
	}
}
