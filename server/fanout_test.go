package server

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

func createGroup(t *testing.T, rc *rawConn, name string) uint64 {
	t.Helper()
	resp := rc.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: name}}})
	expectOK(t, resp)
	return resp.GetGroupCreated().GetGroupId()
}

func joinReq(gid uint64) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}
}

func leaveReq(gid uint64) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_LeaveGroup{LeaveGroup: &chatpb.LeaveGroup{GroupId: gid}}}
}

// groupSubscribers is how many nodes hear group gid's channel.
func groupSubscribers(t *testing.T, rdb *redis.Client, gid uint64) int64 {
	t.Helper()
	n, err := rdb.PubSubNumSub(context.Background(), protocol.GroupChannel(protocol.DefaultPrefix, gid)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n[protocol.GroupChannel(protocol.DefaultPrefix, gid)]
}

// TestClusterGroupFanout: a message to a group of 30 spread over two
// nodes is one PUBLISH (Redis's own count, the append script's included),
// reaches each online member once, the offline ones at login and the
// sender's other device once; not the sending device, not a member who
// left just before on the other node, not a non-member on a node that
// holds members.
func TestClusterGroupFanout(t *testing.T) {
	forEachRedis(t, testClusterGroupFanout)
}

func testClusterGroupFanout(t *testing.T, rb *redisBackend) {
	nodes := backendNodes(t, rb, 2, EngineGnet, nil)
	phone, _ := nodes[0].device(t, "sender", "phone")
	laptop, _ := nodes[1].device(t, "sender", "laptop")
	gid := createGroup(t, phone, "big")

	const members = 30
	online := map[string]*rawConn{}
	var offline []string
	for i := range members {
		name := fmt.Sprintf("member%02d", i)
		rc, _ := nodes[i%2].user(t, name)
		expectOK(t, rc.do(joinReq(gid)))
		if i%8 == 7 {
			rc.c.Close() // member07, 15, 23: offline when it is sent
			offline = append(offline, name)
			continue
		}
		online[name] = rc
	}
	leaver, _ := nodes[1].user(t, "leaver")
	expectOK(t, leaver.do(joinReq(gid)))
	outsider1, _ := nodes[0].user(t, "outsider1")
	outsider2, o2OK := nodes[1].user(t, "outsider2")
	waitFor(t, "both nodes hear the group", func() bool { return rb.groupSubscribers(t, gid) == 2 })
	// Right before the send, on the node that still hears the group.
	expectOK(t, leaver.do(leaveReq(gid)))

	before := rb.publishCalls(t)
	resp := phone.do(sendGroup(gid, "to all thirty"))
	expectOK(t, resp)
	publishes := rb.publishCalls(t) - before
	t.Logf("a message to %d members (%d online) over 2 nodes cost %d PUBLISH", members, len(online), publishes)
	if publishes > 2 {
		t.Fatalf("%d PUBLISH calls, want at most one per node holding members (2)", publishes)
	}
	if publishes != 1 {
		t.Fatalf("%d PUBLISH calls, want 1: the group's channel only", publishes)
	}
	sent := resp.GetSendOk()
	if !sent.Online || sent.Seq != 1 {
		t.Fatalf("SendOK = %v, want online with seq 1", sent)
	}

	// A second message, from a member, marks the end: each online member
	// has the first, then this one, so the first came once.
	marker := online["member00"]
	expectOK(t, marker.do(sendGroup(gid, "marker")))
	for name, rc := range online {
		if m := rc.nextMessage(); m.MsgId != sent.MsgId || m.Text != "to all thirty" || m.GroupId != gid || m.Seq != 1 {
			t.Fatalf("%s got %v first", name, m)
		}
		if name == "member00" {
			continue // its own marker does not come back
		}
		if m := rc.nextMessage(); m.Text != "marker" {
			t.Fatalf("%s got %v after the message, want the marker", name, m)
		}
	}
	// The other device of the sender once; the sending device only the
	// marker.
	if m := laptop.nextMessage(); m.MsgId != sent.MsgId {
		t.Fatalf("the sender's laptop got %v", m)
	}
	if m := laptop.nextMessage(); m.Text != "marker" {
		t.Fatalf("the sender's laptop got %v after the message, want the marker", m)
	}
	if m := phone.nextMessage(); m.Text != "marker" {
		t.Fatalf("the sending device got %v, want only the marker", m)
	}
	// Non-members: their next message is a direct one sent after.
	for name, rc := range map[string]*rawConn{"leaver": leaver, "outsider1": outsider1, "outsider2": outsider2} {
		expectOK(t, marker.do(sendTo(name, "direct")))
		if m := rc.nextMessage(); m.Text != "direct" {
			t.Fatalf("%s, not a member, got %v", name, m)
		}
	}
	// The offline members at login, on either node.
	for i, name := range offline {
		rc, _ := nodes[i%2].user(t, name)
		if m := rc.nextMessage(); m.MsgId != sent.MsgId {
			t.Fatalf("%s's replay = %v", name, m)
		}
	}
	// Added by someone else (a backend), through the node that holds no
	// session of theirs: from then on a member.
	if err := nodes[0].joinGroup(withEpoch(context.Background(), nodes[0].epoch()), gid, o2OK.UserId); err != nil {
		t.Fatal(err)
	}
	expectOK(t, phone.do(sendGroup(gid, "welcome")))
	for {
		if m := outsider2.nextMessage(); m.GroupId == gid {
			if m.Text != "welcome" {
				t.Fatalf("the added member got %v", m)
			}
			break
		}
	}
}

// TestClusterGroupJoinLeaveRace: a user joins and leaves a group over and
// over on a node that holds no other member, while another node sends to
// it nonstop; the user's second device is on a third node, which learns of
// each join from the notice on the user's channel. Each device gets every
// message stored while the user was a member (above the JoinedSeq each
// join recorded), live or by replay, and none sent after a leave returned.
func TestClusterGroupJoinLeaveRace(t *testing.T) {
	forEachRedis(t, testClusterGroupJoinLeaveRace)
}

func testClusterGroupJoinLeaveRace(t *testing.T, rb *redisBackend) {
	nodes := backendNodes(t, rb, 3, EngineGnet, nil)
	ctx := context.Background()
	rdb, keys := rb.client, rb.store(t)
	sender, _ := nodes[0].user(t, "sender")
	gid := createGroup(t, sender, "busy")
	devA, aOK := nodes[1].device(t, "joiner", "a")
	devB, _ := nodes[2].device(t, "joiner", "b")
	uid := aOK.UserId
	seqKey := keys.convKey(GroupConversation(gid)) + "seq"
	lastSeq := func() uint64 {
		n, err := rdb.Get(ctx, seqKey).Uint64()
		if err != nil && err != redis.Nil {
			t.Fatal(err)
		}
		return n
	}

	stop := make(chan struct{})
	senderDone := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				senderDone <- nil
				return
			default:
			}
			seq := sender.sendFrame(sendGroup(gid, "busy"))
			resp, err := sender.tryRead(5 * time.Second)
			if err != nil || resp.Seq != seq || resp.GetSendOk() == nil {
				senderDone <- fmt.Errorf("send: %v, %v", resp, err)
				return
			}
		}
	}()
	var mu sync.Mutex
	gotB := map[uint64]bool{}
	go func() { // device b reads on its own; device a reads between its requests
		for {
			f, err := devB.tryRead(20 * time.Second)
			if err != nil {
				return
			}
			if m := f.GetMessage(); m != nil && m.GroupId == gid {
				mu.Lock()
				gotB[m.Seq] = true
				mu.Unlock()
			}
		}
	}()

	type span struct{ from, to uint64 } // seqs above from, up to to
	var must, mustNot []span
	lastLeft := uint64(0)
	for range 5 {
		expectOK(t, devA.do(joinReq(gid)))
		joined, err := rdb.HGet(ctx, keys.groupKey(gid)+":joined", fmt.Sprint(uid)).Uint64()
		if err != nil {
			t.Fatal(err)
		}
		mustNot = append(mustNot, span{lastLeft, joined})
		time.Sleep(40 * time.Millisecond)
		inside := lastSeq() // stored while a member
		expectOK(t, devA.do(leaveReq(gid)))
		lastLeft = lastSeq() // from here on, stored after the leave
		must = append(must, span{joined, inside})
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	close(stop)
	if err := <-senderDone; err != nil {
		t.Fatal(err)
	}
	mustNot = append(mustNot, span{lastLeft, lastSeq()})

	gotA := map[uint64]bool{}
	takeA := func(f *chatpb.Frame) {
		if m := f.GetMessage(); m != nil && m.GroupId == gid {
			gotA[m.Seq] = true
		}
	}
	for _, f := range devA.pushes {
		takeA(f)
	}
	devA.pushes = nil
	missing := func(got map[uint64]bool) []uint64 {
		var out []uint64
		for _, s := range must {
			for seq := s.from + 1; seq <= s.to; seq++ {
				if !got[seq] {
					out = append(out, seq)
				}
			}
		}
		return out
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(missing(gotA)) > 0 && time.Now().Before(deadline) {
		f, err := devA.tryRead(time.Until(deadline))
		if err != nil {
			break
		}
		takeA(f)
	}
	waitFor(t, "device b has every message sent to a member", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(missing(gotB)) == 0
	})
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, s := range must {
		total += int(s.to - s.from)
	}
	t.Logf("%d messages sent while a member over %d joins, %d stored in all", total, len(must), lastSeq())
	for dev, got := range map[string]map[uint64]bool{"a": gotA, "b": gotB} {
		if m := missing(got); len(m) > 0 {
			t.Fatalf("device %s missed seqs %v of %v", dev, m, must)
		}
		for _, s := range mustNot {
			for seq := s.from + 1; seq <= s.to; seq++ {
				if got[seq] {
					t.Fatalf("device %s got seq %d, stored while not a member (%v)", dev, seq, mustNot)
				}
			}
		}
	}
	if total < 10 {
		t.Fatalf("only %d messages went to the member: the race was not run", total)
	}
}

// TestClusterGroupAfterPubSubReconnect: the nodes' pub/sub connections are
// killed; group messages sent before the node is back arrive by the replay
// that follows, and later ones live on the resubscribed group channel.
func TestClusterGroupAfterPubSubReconnect(t *testing.T) {
	forEachRedis(t, testClusterGroupAfterPubSubReconnect)
}

func testClusterGroupAfterPubSubReconnect(t *testing.T, rb *redisBackend) {
	nodes := backendNodes(t, rb, 2, EngineGnet, nil)
	sender, _ := nodes[0].user(t, "sender")
	gid := createGroup(t, sender, "g")
	member, _ := nodes[1].user(t, "member")
	expectOK(t, member.do(joinReq(gid)))
	waitFor(t, "both nodes hear the group", func() bool { return rb.groupSubscribers(t, gid) == 2 })
	// A join refused leaves no channel behind.
	expectCode(t, member.do(joinReq(gid+1000)), chatpb.ErrorCode_ERROR_CODE_NOT_FOUND)
	waitFor(t, "no channel for a group that does not exist", func() bool {
		return rb.groupSubscribers(t, gid+1000) == 0 && testutil.ToFloat64(nodes[1].metrics.groupChannels) == 1
	})

	want := map[uint64]bool{}
	send := func(text string) {
		resp := sender.do(sendGroup(gid, text))
		expectOK(t, resp)
		want[resp.GetSendOk().MsgId] = true
	}
	send("before")
	reconnects := testutil.ToFloat64(nodes[1].metrics.pubsubReconnects)
	rb.killPubSub(t)
	for i := range 5 {
		send(fmt.Sprint("during ", i))
	}
	waitFor(t, "node 2 reconnected", func() bool {
		return testutil.ToFloat64(nodes[1].metrics.pubsubReconnects) > reconnects
	})
	waitFor(t, "both nodes hear the group again", func() bool { return rb.groupSubscribers(t, gid) == 2 })
	send("after")
	got := map[uint64]bool{}
	for len(got) < len(want) {
		m := member.nextMessage()
		if !want[m.MsgId] {
			t.Fatalf("member got %v, not sent to the group", m)
		}
		got[m.MsgId] = true // a replay repeats what came live: the client drops those
	}
}

// TestClusterBroadcastLive: one broadcast reaches every logged-in session
// on both nodes once (the same msg_id everywhere), not a connection that
// has not logged in; a broadcast another program publishes does too, an
// id per node; bad broadcast payloads are dropped and counted.
func TestClusterBroadcastLive(t *testing.T) {
	forEachRedis(t, testClusterBroadcastLive)
}

func testClusterBroadcastLive(t *testing.T, rb *redisBackend) {
	nodes := backendNodes(t, rb, 2, EngineGnet, nil)
	ctx := context.Background()
	type sess struct {
		rc   *rawConn
		node int
	}
	var all []sess
	for i := range 6 {
		rc, _ := nodes[i%2].user(t, fmt.Sprint("user", i))
		all = append(all, sess{rc, i % 2})
	}
	for i, dev := range []string{"phone", "laptop"} { // one user, a device on each node
		rc, _ := nodes[i].device(t, "twodevices", dev)
		all = append(all, sess{rc, i})
	}
	anon := []*rawConn{dial(t, nodes[0].addr), dial(t, nodes[1].addr)}

	online, err := nodes[0].broadcastLive(ctx, &chatpb.Message{FromUsername: "ops", Text: "maintenance at 5"})
	if err != nil || online != 2 {
		t.Fatalf("broadcastLive = %d, %v; want 2 nodes", online, err)
	}
	if _, err := nodes[1].broadcastLive(ctx, &chatpb.Message{Text: "second"}); err != nil {
		t.Fatal(err)
	}
	var first uint64
	for _, s := range all {
		m := s.rc.nextMessage()
		if m.Text != "maintenance at 5" || m.FromUsername != "ops" || m.MsgId == 0 || m.SentAtMs == 0 || m.Seq != 0 || m.GroupId != 0 || m.ToUserId != 0 {
			t.Fatalf("broadcast push %v", m)
		}
		if first == 0 {
			first = m.MsgId
		} else if m.MsgId != first {
			t.Fatalf("broadcast ids %d and %d differ", first, m.MsgId)
		}
		if m := s.rc.nextMessage(); m.Text != "second" {
			t.Fatalf("after the broadcast %v, want the second one (each once)", m)
		}
	}
	for _, rc := range anon {
		rc.noPush(100 * time.Millisecond)
	}
	if _, err := nodes[0].broadcastLive(ctx, &chatpb.Message{Text: ""}); err == nil {
		t.Fatal("an empty broadcast was accepted")
	}

	// From another program: one id per node, shared by its sessions.
	if err := rb.publishBroadcast(ctx, `{"type":"message","from_username":"billing","text":"from outside"}`); err != nil {
		t.Fatal(err)
	}
	ids := map[int]uint64{}
	for _, s := range all {
		m := s.rc.nextMessage()
		if m.Text != "from outside" || m.MsgId == 0 {
			t.Fatalf("external broadcast push %v", m)
		}
		if id, ok := ids[s.node]; ok && id != m.MsgId {
			t.Fatalf("node %d gave the external broadcast ids %d and %d", s.node, id, m.MsgId)
		}
		ids[s.node] = m.MsgId
	}
	errs := testutil.ToFloat64(nodes[0].metrics.channelErrors)
	for _, p := range []string{`{"type":"message","text":"to one","to_user_id":3}`, `{"type":"message","text":""}`, `{"type":"login","node_id":"x"}`} {
		_ = rb.publishBroadcast(ctx, p)
	}
	waitFor(t, "bad broadcasts counted", func() bool { return testutil.ToFloat64(nodes[0].metrics.channelErrors) == errs+3 })
	for _, s := range all[:2] {
		s.rc.noPush(50 * time.Millisecond)
	}
}

// One node, both engines: a broadcast and a group message reach the
// sessions they are for through the memory broker.
func TestBroadcastAndGroupOneNode(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		a, _ := ts.user(t, "alice")
		b, _ := ts.user(t, "bob")
		c, _ := ts.user(t, "carol")
		if n, err := ts.broadcastLive(context.Background(), &chatpb.Message{Text: "hello all"}); err != nil || n != 1 {
			t.Fatalf("broadcastLive = %d, %v", n, err)
		}
		for _, rc := range []*rawConn{a, b, c} {
			if m := rc.nextMessage(); m.Text != "hello all" {
				t.Fatalf("got %v", m)
			}
		}
		gid := createGroup(t, a, "g")
		expectOK(t, b.do(joinReq(gid)))
		resp := a.do(sendGroup(gid, "members only"))
		if !resp.GetSendOk().GetOnline() {
			t.Fatalf("SendOK %v, want online", resp)
		}
		if m := b.nextMessage(); m.Text != "members only" {
			t.Fatalf("bob got %v", m)
		}
		c.noPush(100 * time.Millisecond)
		expectOK(t, b.do(leaveReq(gid)))
		if resp := a.do(sendGroup(gid, "nobody")); resp.GetSendOk().GetOnline() {
			t.Fatalf("SendOK %v with no other member", resp)
		}
		b.noPush(100 * time.Millisecond)
	})
}

// recordingTransport keeps what is sent to it.
type recordingTransport struct {
	mu     sync.Mutex
	frames [][]byte
}

func (r *recordingTransport) send(f []byte) {
	r.mu.Lock()
	r.frames = append(r.frames, f)
	r.mu.Unlock()
}
func (r *recordingTransport) sendAndClose(f []byte, _ bool) { r.send(f) }
func (r *recordingTransport) queued() int                   { return 0 }
func (r *recordingTransport) close()                        {}

// A group event reaching a node is encoded once: every session of the
// users it lists is handed the same bytes, and no one else anything.
func TestFanoutSharesOneEncoding(t *testing.T) {
	ts := startServer(t, testOptions(t, EngineGnet))
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	var recs []*recordingTransport
	for uid := uint64(1); uid <= 4; uid++ {
		for range 2 { // two devices each
			rec := &recordingTransport{}
			c := ts.newSession(addr, rec)
			c.user.Store(&sessionUser{id: uid, epoch: ts.epoch(), device: fmt.Sprint(len(recs))})
			st := &ts.users.stripes[uid%uint64(len(ts.users.stripes))]
			st.mu.Lock()
			st.m[uid] = append(st.m[uid], c)
			st.mu.Unlock()
			recs = append(recs, rec)
		}
	}
	ts.onEvent(0, Event{Message: &chatpb.Message{MsgId: 7, FromUserId: 9, GroupId: 3, Text: "once"}, To: []uint64{1, 2, 3}})
	var first []byte
	for i, rec := range recs {
		rec.mu.Lock()
		n := len(rec.frames)
		var f []byte
		if n > 0 {
			f = rec.frames[0]
		}
		rec.mu.Unlock()
		if i >= 6 { // user 4's devices: not listed
			if n != 0 {
				t.Fatalf("session %d of a user not listed got %d frames", i, n)
			}
			continue
		}
		if n != 1 {
			t.Fatalf("session %d got %d frames", i, n)
		}
		if first == nil {
			first = f
		} else if &f[0] != &first[0] {
			t.Fatalf("session %d was handed its own encoding", i)
		}
	}
	m, err := protocol.Decode(first[4:])
	if err != nil || m.GetMessage().GetText() != "once" {
		t.Fatalf("shared frame decodes to %v, %v", m, err)
	}
}
