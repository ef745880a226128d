package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/internal/testproc"

	chatpb "github.com/loopchat/loopchat/proto"
)

// nextChat is the next pushed chat message, past presence and other
// notices.
func (rc *rawConn) nextChat() *chatpb.Message {
	rc.t.Helper()
	for {
		if m := rc.nextPush().GetMessage(); m != nil {
			return m
		}
	}
}

// noChatBut asserts no chat message but repeats of ids is pushed within
// d (notices may be).
func (rc *rawConn) noChatBut(ids []uint64, d time.Duration) {
	rc.t.Helper()
	check := func(f *chatpb.Frame) {
		rc.t.Helper()
		if m := f.GetMessage(); m != nil && !slices.Contains(ids, m.MsgId) {
			rc.t.Fatalf("unexpected message %v", f)
		}
	}
	for _, f := range rc.pushes {
		check(f)
	}
	for end := time.Now().Add(d); time.Now().Before(end); {
		f, err := rc.tryRead(time.Until(end))
		if err != nil {
			return
		}
		check(f)
	}
}

func sendWithID(user, text, clientID string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{To: &chatpb.Send_Username{Username: user},
		Text: text, ClientMsgId: clientID}}}
}

func sendGroupWithID(gid uint64, text, clientID string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{To: &chatpb.Send_GroupId{GroupId: gid},
		Text: text, ClientMsgId: clientID}}}
}

func tokenDeviceReq(token, device string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Login{Login: &chatpb.Login{Token: token, DeviceId: device}}}
}

// msgLine is what a reader of a message sees, in one line.
func msgLine(m *chatpb.Message) string {
	return fmt.Sprintf("id=%d seq=%d from=%d to=%d group=%d at=%d %q", m.MsgId, m.Seq, m.FromUserId, m.ToUserId,
		m.GroupId, m.SentAtMs, m.Text)
}

func msgLines(ms []*chatpb.Message) string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = msgLine(m)
	}
	return "[" + strings.Join(out, "; ") + "]"
}

// storeView is every read of users a store answers, by what was read.
func storeView(t *testing.T, s *RedisStore, names []string) map[string]string {
	t.Helper()
	ctx := context.Background()
	v := make(map[string]string)
	put := func(k string, x any, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		v[k] = fmt.Sprint(x)
	}
	users, err := s.Users(ctx, 0, 100)
	put("Users", users, err)
	var uids []uint64
	for _, name := range names {
		u, err := s.Credentials(ctx, name)
		put(name+" Credentials", fmt.Sprintf("%d %s %x %d %d %d", u.ID, u.Name, u.PasswordHash, u.Nonce,
			u.BannedUntilMs, u.TokensRefusedUntilMs), err)
		uid := u.ID
		uids = append(uids, uid)
		a, err := s.Account(ctx, uid)
		put(name+" Account", fmt.Sprintf("%+v", a), err)
		fs, err := s.Friends(ctx, uid)
		put(name+" Friends", fs, err)
		bs, err := s.BlockedUsers(ctx, uid)
		put(name+" BlockedUsers", bs, err)
		gs, err := s.GroupsOf(ctx, uid)
		put(name+" GroupsOf", fmt.Sprintf("%+v", gs), err)
		devs, err := s.Devices(ctx, uid)
		slices.SortFunc(devs, func(a, b Device) int { return a.Slot - b.Slot })
		put(name+" Devices", fmt.Sprintf("%+v", devs), err)
		for _, d := range devs {
			in, err := s.Inbox(ctx, boxOf(uid, d.Slot), 0, 100)
			put(name+" Inbox "+d.ID, msgLines(in), err)
			g, err := s.LatestSession(ctx, uid, d.ID)
			put(name+" LatestSession "+d.ID, g, err)
		}
		list, more, err := s.ListConversations(ctx, uid, 100)
		put(name+" ListConversations more", more, err)
		for _, cs := range list {
			k := name + " conv " + cs.Conv.Key()
			last := ""
			if cs.Last != nil {
				last = msgLine(cs.Last)
			}
			v[k] = fmt.Sprintf("name=%s last=%d read=%d joined=%d unread=%d %s", cs.Name, cs.LastSeq, cs.ReadSeq,
				cs.JoinedSeq, cs.Unread, last)
			for _, q := range []HistoryQuery{{Conv: cs.Conv, Newest: true, Limit: 2}, {Conv: cs.Conv, After: 0, Limit: 100},
				{Conv: cs.Conv, After: 1, Limit: 2}, {Conv: cs.Conv, Newest: true, Before: cs.LastSeq, Limit: 100, Floor: cs.JoinedSeq}} {
				page, err := s.History(ctx, q)
				put(fmt.Sprintf("%s History %+v", k, q), fmt.Sprintf("more=%v %s", page.HasMore, msgLines(page.Messages)), err)
			}
			last2, err := s.LastSeq(ctx, cs.Conv)
			put(k+" LastSeq", last2, err)
			read, err := s.ReadSeq(ctx, uid, cs.Conv)
			put(k+" ReadSeq", read, err)
		}
	}
	ps, err := s.Presence(ctx, uids)
	put("Presence", fmt.Sprintf("%+v", ps), err)
	return v
}

// TestMigrateOneRedisToCluster fills a one-Redis store through a real
// node, moves it onto the Redis Cluster (cut off once midway, then run
// again), and checks every read the cluster store answers is the one-Redis
// store's, that a node on the cluster takes the tokens issued before and
// replays each device's unacked messages, and that another run writes
// nothing.
func TestMigrateOneRedisToCluster(t *testing.T) {
	ctx := context.Background()
	src := oneRedis(t)
	src.prefix = "one:"
	node := backendNodes(t, src, 1, EngineGnet, nil)[0]

	alice, aliceOK := node.device(t, "alice", "phone")
	b1, _ := node.device(t, "bob", "b1")
	b2, bobOK := node.device(t, "bob", "b2")
	carol, _ := node.user(t, "carol")
	node.user(t, "dave")
	for _, f := range []string{"bob", "carol"} {
		expectOK(t, alice.do(&chatpb.Frame{Body: &chatpb.Frame_AddFriend{AddFriend: &chatpb.AddFriend{Username: f}}}))
	}
	created := alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "crew", Description: "d"}}})
	expectOK(t, created)
	gid := created.GetGroupCreated().GetGroupId()
	expectOK(t, b1.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}))
	expectOK(t, carol.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}))
	b1.c.Close()
	b2.c.Close()

	// Bob is offline: every message waits in both his devices' boxes.
	var direct, group []*chatpb.SendOK
	for i, cid := range []string{"c1", "", "c3"} {
		resp := alice.do(sendWithID("bob", fmt.Sprintf("to bob %d", i), cid))
		expectOK(t, resp)
		direct = append(direct, resp.GetSendOk())
	}
	for i, cid := range []string{"g1", "g2"} {
		resp := alice.do(sendGroupWithID(gid, fmt.Sprintf("to crew %d", i), cid))
		expectOK(t, resp)
		group = append(group, resp.GetSendOk())
	}
	expectOK(t, carol.do(sendWithID("alice", "hi alice", "k1")))
	if m := alice.nextChat(); m.Text != "hi alice" {
		t.Fatalf("alice got %+v", m)
	}
	// Carol acks alice's message at once: its body is in no inbox any
	// more, and its dedup entry finds its conversation in the log.
	k2 := alice.do(sendWithID("carol", "to carol", "k2"))
	expectOK(t, k2)
	for {
		if m := carol.nextChat(); m.MsgId == k2.GetSendOk().MsgId {
			carol.sendFrame(ackReq(m.MsgId))
			break
		}
	}
	testproc.WaitUntil(t, "carol's ack stored", 5*time.Second, func() bool {
		return src.client.Exists(ctx, src.prefix+"msg:"+msgMember(k2.GetSendOk().MsgId)).Val() == 0
	})
	// Bob's first device reads and acks the first two, and marks them read.
	b1, _ = node.device(t, "bob", "b1")
	var got []uint64
	for range 5 {
		got = append(got, b1.nextChat().MsgId)
	}
	b1.sendFrame(ackReq(got[0], got[1])) // not answered
	expectOK(t, b1.do(&chatpb.Frame{Body: &chatpb.Frame_MarkRead{MarkRead: &chatpb.MarkRead{PeerUsername: "alice", UpToSeq: direct[1].Seq}}}))
	b1.c.Close()
	// A ban and revoked tokens, through the store.
	srcStore := NewRedisStore(RedisConfig{Client: src.client, Prefix: src.prefix})
	t.Cleanup(func() { srcStore.Close() })
	dave, err := srcStore.Credentials(ctx, "dave")
	if err != nil {
		t.Fatal(err)
	}
	if err := srcStore.SetBan(ctx, dave.ID, time.Now().Add(time.Hour).UnixMilli()); err != nil {
		t.Fatal(err)
	}
	carolU, _ := srcStore.Credentials(ctx, "carol")
	if err := srcStore.RevokeTokens(ctx, carolU.ID, time.Now().Add(time.Hour).UnixMilli()); err != nil {
		t.Fatal(err)
	}
	// Dave blocks carol and alice.
	for _, u := range []uint64{carolU.ID, aliceOK.UserId} {
		if err := srcStore.Block(ctx, dave.ID, u, Limits{}); err != nil {
			t.Fatal(err)
		}
	}

	c := sharedCluster.Get(t)
	to := c.Client()
	t.Cleanup(func() { to.Close() })
	toPrefix := (&redisBackend{}).newPrefix()
	cfg := MigrateConfig{From: src.client, To: to, FromPrefix: src.prefix, ToPrefix: toPrefix, Batch: 7,
		LiveWindow: time.Second, Log: testLogger()}

	if _, err := MigrateToCluster(ctx, cfg); !errors.Is(err, ErrMigrateLiveNodes) {
		t.Fatalf("migration with a live node = %v, want ErrMigrateLiveNodes", err)
	}
	dry := cfg
	dry.DryRun = true
	if rep, err := MigrateToCluster(ctx, dry); err != nil || len(rep.LiveNodes) == 0 {
		t.Fatalf("a dry run with a live node = %+v, %v; want it named", rep, err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := node.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	bob, err := srcStore.Credentials(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	testproc.WaitUntil(t, "bob's ack stored", 5*time.Second, func() bool {
		devs, err := srcStore.Devices(ctx, bob.ID)
		for _, d := range devs {
			if in, _ := srcStore.Inbox(ctx, boxOf(bob.ID, d.Slot), 0, 100); d.ID == "b1" && len(in) == 3 {
				return true
			}
		}
		return err != nil
	})
	// A dedup entry whose message is nowhere (cannot be carried), and a
	// key no loopchat wrote (not copied).
	if err := src.client.Set(ctx, src.prefix+"dedup:1:ghost", "123:9", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if err := src.client.Set(ctx, src.prefix+"mystery", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	names := []string{"alice", "bob", "carol", "dave"}
	before := storeView(t, srcStore, names)
	if n := strings.Count(before["bob Inbox b1"], "id="); n != 3 {
		t.Fatalf("bob's b1 box before the move: %s", before["bob Inbox b1"])
	}

	// A dry run, once the node's presence heartbeat is old enough, writes
	// nothing.
	deadline := time.Now().Add(10 * time.Second)
	for {
		rep, err := MigrateToCluster(ctx, dry)
		if err != nil || !rep.DryRun {
			t.Fatalf("dry run = %+v, %v", rep, err)
		}
		if len(rep.LiveNodes) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stopped node still looks live: %v", rep.LiveNodes)
		}
		time.Sleep(100 * time.Millisecond)
	}
	m := &migration{to: to, dst: toPrefix}
	if k, err := m.anyTargetKey(ctx); err != nil || k != "" {
		t.Fatalf("the dry run wrote %q (%v)", k, err)
	}

	// Cut off after two SCAN steps: no epoch yet, so a node would not use
	// it; the next run completes it.
	cut := cfg
	cut.stopAfter = 2
	if _, err := MigrateToCluster(ctx, cut); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("cut-off run = %v", err)
	}
	if e, err := to.Get(ctx, toPrefix+"{meta}:epoch").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("epoch %q (%v) on a half-copied cluster", e, err)
	}
	rep, err := MigrateToCluster(ctx, cfg)
	if err != nil {
		t.Fatalf("migration: %v (report %+v)", err, rep)
	}
	if !rep.Resumed || rep.AlreadyDone || rep.Epoch != aliceOK.StoreEpoch || !slices.Equal(rep.Unknown, []string{"one:mystery"}) {
		t.Fatalf("report %+v", rep)
	}
	counts := make(map[string]MigrateCount)
	for _, k := range rep.Kinds {
		counts[k.Kind] = k
		t.Logf("%-22s source %3d copied %3d dropped %d target %3d want %3d", k.Kind, k.Source, k.Copied, k.Dropped, k.Target, k.Want)
	}
	// Every box carried with each message's body: bob's two (5 and 3),
	// alice's (carol's message, never acked) and carol's (the group's 2).
	if k := counts[kindInboxes]; k.Source != 4 || k.Target != 4 || k.Dropped != 0 {
		t.Fatalf("inboxes %+v", k)
	}
	if k := counts[kindBodies]; k.Target != 4 {
		t.Fatalf("bodies %+v", k)
	}
	if k := counts[kindMessages]; k.Dropped != 0 || k.Copied != 5+3+1+2 {
		t.Fatalf("messages %+v: want 11 bodies", k)
	}
	if k := counts[kindDedup]; k.Source != 7 || k.Target != 6 || k.Dropped != 1 || k.Want != 6 {
		t.Fatalf("dedup %+v", k)
	}
	if k := counts["blocks"]; k.Source != 1 || k.Target != 1 {
		t.Fatalf("blocks %+v", k)
	}

	dst := NewRedisStore(RedisConfig{Client: to, Prefix: toPrefix})
	t.Cleanup(func() { dst.Close() })
	after := storeView(t, dst, names)
	for _, k := range slices.Sorted(maps.Keys(before)) {
		if before[k] != after[k] {
			t.Errorf("%s:\n one Redis: %s\n cluster:   %s", k, before[k], after[k])
		}
	}
	if len(after) != len(before) {
		t.Errorf("%d reads on the cluster, %d on one Redis", len(after), len(before))
	}
	if t.Failed() {
		t.FailNow()
	}

	// A node on the cluster: the tokens from before log in, each of bob's
	// devices gets its own unacked messages, and a resend of a message
	// sent before is recognised.
	onCluster := &redisBackend{url: c.URL, prefix: toPrefix}
	cnode := backendNodes(t, onCluster, 1, EngineGnet, nil)[0]
	a2 := dial(t, cnode.addr)
	resp := a2.do(tokenDeviceReq(aliceOK.Token, "phone"))
	expectOK(t, resp)
	if ok := resp.GetLoginOk(); ok.UserId != aliceOK.UserId || ok.StoreEpoch != aliceOK.StoreEpoch {
		t.Fatalf("alice's token on the cluster: %+v", ok)
	}
	for dev, want := range map[string][]uint64{
		"b2": {direct[0].MsgId, direct[1].MsgId, direct[2].MsgId, group[0].MsgId, group[1].MsgId},
		"b1": {direct[2].MsgId, group[0].MsgId, group[1].MsgId},
	} {
		rc := dial(t, cnode.addr)
		resp := rc.do(tokenDeviceReq(bobOK.Token, dev))
		expectOK(t, resp)
		if resp.GetLoginOk().UserId != bobOK.UserId {
			t.Fatalf("bob's token as %s: %+v", dev, resp.GetLoginOk())
		}
		// In order; a replay may come twice (the node replays again once
		// its shard subscriptions are placed; clients drop repeats by
		// msg_id), but nothing else may.
		var ids []uint64
		for len(ids) < len(want) {
			m := rc.nextChat()
			if !slices.Contains(want, m.MsgId) {
				t.Fatalf("%s replayed %+v, not one of %v", dev, m, want)
			}
			if !slices.Contains(ids, m.MsgId) {
				ids = append(ids, m.MsgId)
			}
		}
		if !slices.Equal(ids, want) {
			t.Fatalf("%s replayed %v, want %v", dev, ids, want)
		}
		rc.noChatBut(want, 300*time.Millisecond)
		rc.c.Close()
	}
	again := a2.do(sendWithID("bob", "to bob 0", "c1"))
	expectOK(t, again)
	if ok := again.GetSendOk(); ok.MsgId != direct[0].MsgId || ok.Seq != direct[0].Seq {
		t.Fatalf("a resend of c1 on the cluster = %+v, want the first %+v", ok, direct[0])
	}
	again = a2.do(sendGroupWithID(gid, "to crew 1", "g2"))
	expectOK(t, again)
	if ok := again.GetSendOk(); ok.MsgId != group[1].MsgId {
		t.Fatalf("a resend of g2 on the cluster = %+v, want the first %+v", ok, group[1])
	}
	again = a2.do(sendWithID("carol", "to carol", "k2"))
	expectOK(t, again)
	if ok := again.GetSendOk(); ok.MsgId != k2.GetSendOk().MsgId {
		t.Fatalf("a resend of k2 (acked) on the cluster = %+v, want the first %+v", ok, k2.GetSendOk())
	}
	if k := counts[kindUnknown]; k.Source != 1 || k.Target != 0 {
		t.Fatalf("unknown %+v", k)
	}
	fresh := a2.do(sendTo("carol", "after the move"))
	expectOK(t, fresh)
	// Dave's block came along: alice cannot write to him.
	expectCode(t, a2.do(sendTo("dave", "hello?")), chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED)

	// Another run leaves the cluster as it is: the message sent on it
	// stays.
	rep, err = MigrateToCluster(ctx, cfg)
	if err != nil || !rep.AlreadyDone {
		t.Fatalf("second run = %+v, %v", rep, err)
	}
	page, err := dst.History(ctx, HistoryQuery{Conv: DirectConversation(aliceOK.UserId, carolU.ID), Newest: true, Limit: 1})
	if err != nil || len(page.Messages) != 1 || page.Messages[0].MsgId != fresh.GetSendOk().MsgId {
		t.Fatalf("after the second run, the newest message is %v (%v)", msgLines(page.Messages), err)
	}

	// Had the check failed (the migration left "copying" with its epoch
	// written), a node started anyway: the next run must not copy over
	// what it wrote.
	if err := to.HSet(ctx, toPrefix+"{meta}:migration", "state", "copying").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := MigrateToCluster(ctx, cfg); !errors.Is(err, ErrMigrateTargetInUse) {
		t.Fatalf("a run over a cluster a node served = %v, want ErrMigrateTargetInUse", err)
	}

	// A cluster prefix holding something else is refused.
	other := (&redisBackend{}).newPrefix()
	if err := to.Set(ctx, other+"{u:1}:user", "x", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	busy := cfg
	busy.ToPrefix = other
	if _, err := MigrateToCluster(ctx, busy); !errors.Is(err, ErrMigrateTargetInUse) {
		t.Fatalf("migration onto data = %v, want ErrMigrateTargetInUse", err)
	}
}

// TestMigrateKeyKinds: every one-Redis key name maps to a cluster name
// the cluster layout counts as the same kind, hashed by its tag.
func TestMigrateKeyKinds(t *testing.T) {
	for _, tc := range []struct{ src, kind, dst string }{
		{"user:seq", "user:seq", "{meta}:user:seq"},
		{"user:12", "users", "{u:12}:user"},
		{"user:12:groups", "user groups", "{u:12}:groups"},
		{"username:ann.b", "usernames", "{n:ann.b}:username"},
		{"friends:12", "friends", "{u:12}:friends"},
		{"group:3", kindGroups, "{c:g3}:group"},
		{"group:3:members", "group members", "{c:g3}:group:members"},
		{"group:3:joined", "group joined", "{c:g3}:group:joined"},
		{"inbox:12", kindInboxes, "{u:12}:inbox"},
		{"inbox:12:4", kindInboxes, "{u:12}:inbox:4"},
		{"session:12", "sessions", "{u:12}:session"},
		{"presence:nodes", "presence instances", "{meta}:presence:nodes"},
		{"presence:node:n1-ab", "presence instances", "{i:n1-ab}:presence:node"},
		{"presence:dead:n1-ab", "presence instances", "{i:n1-ab}:presence:dead"},
		{"{u:12}:read", "read state", "{u:12}:read"},
		{"{u:12}:pnodes", "presence nodes", "{u:12}:pnodes"},
		{"{u:12}:blocked", "blocks", "{u:12}:blocked"},
		{"{c:d1:2}:log", "conversation logs", "{c:d1:2}:log"},
		{"{c:g3}:seq", "conversation seqs", "{c:g3}:seq"},
		{"token-secret", "token secret", "token-secret"},
	} {
		kind, dst, how := classifyOneRedis(tc.src)
		if kind != tc.kind || dst != tc.dst || how == howSkip || how == howUnknown {
			t.Errorf("%s: %s -> %s (%d), want %s -> %s", tc.src, kind, dst, how, tc.kind, tc.dst)
		}
		if k := classifyCluster(dst); k != kind {
			t.Errorf("%s: the cluster counts %s as %q, want %q", tc.src, dst, k, kind)
		}
	}
	for src, kind := range map[string]string{"msg:0123456789abcdef": kindMessages, "dedup:12:c-1:x": kindDedup,
		"epoch": kindEpoch, "schema": kindSchema, "node:n1": kindRegistry, "nodenum:7": kindRegistry, "nodes": kindRegistry,
		"member:seq": "member:seq", "user:x": kindUnknown, "{u:12}:nonsense": kindUnknown, "inbox:12:x": kindUnknown} {
		if k, _, _ := classifyOneRedis(src); k != kind {
			t.Errorf("%s is %q, want %q", src, k, kind)
		}
	}
	for dst, kind := range map[string]string{"{u:12}:bodies:4": kindBodies, "{c:d1:2}:dedup:1:c-1": kindDedup,
		"{s1a}:epoch": kindCopies, "{meta}:migration": kindState, "{u:12}:fpend": "pending friends"} {
		if k := classifyCluster(dst); k != kind {
			t.Errorf("%s is %q, want %q", dst, k, kind)
		}
	}
	if got := bodiesOf("p:{u:12}:inbox:4"); got != "p:{u:12}:bodies:4" {
		t.Errorf("bodiesOf = %s", got)
	}
}

// TestMigrateRefusesWhatItCannotMove: no store epoch (never used, or
// another prefix), a layout of another schema, a cluster as the source.
func TestMigrateRefusesWhatItCannotMove(t *testing.T) {
	ctx := context.Background()
	src := oneRedis(t)
	to := sharedCluster.Get(t).Client()
	t.Cleanup(func() { to.Close() })
	cfg := MigrateConfig{From: src.client, To: to, ToPrefix: (&redisBackend{}).newPrefix()}
	if _, err := MigrateToCluster(ctx, cfg); !errors.Is(err, ErrMigrateSource) || !strings.Contains(err.Error(), "no store epoch") {
		t.Fatalf("an empty Redis = %v", err)
	}
	if err := src.client.Set(ctx, "loopchat:epoch", "e1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for _, schema := range []string{"", "2", "4"} {
		if schema != "" {
			if err := src.client.Set(ctx, "loopchat:schema", schema, 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := MigrateToCluster(ctx, cfg); !errors.Is(err, ErrMigrateSource) || !strings.Contains(err.Error(), "schema") {
			t.Fatalf("schema %q = %v", schema, err)
		}
	}
	cfg.From = to
	if _, err := MigrateToCluster(ctx, cfg); !errors.Is(err, ErrMigrateSource) {
		t.Fatalf("a cluster as the source = %v", err)
	}
}
