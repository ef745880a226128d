package server

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// clusterNodes starts n nodes sharing one Redis; no token secret is given,
// so they must agree on the one kept in Redis.
func clusterNodes(t *testing.T, r *testproc.Redis, n int, engine string) []*testServer {
	return clusterNodesWith(t, r, n, engine, nil)
}

// clusterNodesWith is clusterNodes with tweak (if set) applied to each
// node's options.
func clusterNodesWith(t *testing.T, r *testproc.Redis, n int, engine string, tweak func(*Options)) []*testServer {
	return backendNodes(t, &redisBackend{url: r.URL}, n, engine, tweak)
}

// backendNodes starts n nodes on rb (one Redis, or the Redis Cluster
// under the test's own prefix), with tweak (if set) applied to each
// node's options.
func backendNodes(t *testing.T, rb *redisBackend, n int, engine string, tweak func(*Options)) []*testServer {
	var nodes []*testServer
	for i := range n {
		opts := testOptions(t, engine)
		if tweak != nil {
			tweak(&opts)
		}
		opts.Redis, opts.RedisPrefix = rb.url, rb.prefix
		opts.NodeID = fmt.Sprintf("node-%d", i+1)
		opts.Heartbeat = 200 * time.Millisecond
		nodes = append(nodes, startServer(t, opts))
	}
	return nodes
}

// forEachRedisEngine runs fn for each engine on one Redis and on the
// Redis Cluster.
func forEachRedisEngine(t *testing.T, fn func(t *testing.T, rb *redisBackend, engine string)) {
	for _, name := range []string{"redis", "cluster"} {
		t.Run(name, func(t *testing.T) {
			forEachEngine(t, func(t *testing.T, engine string) {
				// A Redis, or a prefix on the cluster, of each engine's own.
				if name == "redis" {
					fn(t, oneRedis(t), engine)
				} else {
					fn(t, onCluster(t), engine)
				}
			})
		})
	}
}

func TestClusterChatAcrossNodes(t *testing.T) {
	forEachRedisEngine(t, func(t *testing.T, rb *redisBackend, engine string) {
		nodes := backendNodes(t, rb, 2, engine, nil)
		a, b := nodes[0], nodes[1]

		alice, aliceOK := a.user(t, "alice")
		bob, bobOK := b.user(t, "bob")
		if aliceOK.NodeId != "node-1" || bobOK.NodeId != "node-2" {
			t.Fatalf("node ids %q %q", aliceOK.NodeId, bobOK.NodeId)
		}
		// One to one, both ways.
		resp := alice.do(sendTo("bob", "hi from node 1"))
		expectOK(t, resp)
		if !resp.GetSendOk().Online {
			t.Fatal("bob on the other node counted offline")
		}
		if m := bob.nextMessage(); m.Text != "hi from node 1" || m.FromUserId != aliceOK.UserId || m.MsgId != resp.GetSendOk().MsgId {
			t.Fatalf("bob got %v", m)
		}
		expectOK(t, bob.do(sendTo("alice", "hi from node 2")))
		m := alice.nextMessage()
		if m.Text != "hi from node 2" {
			t.Fatalf("alice got %v", m)
		}
		alice.sendFrame(ackReq(m.MsgId))
		// A burst written back to back, without waiting for SendOK, arrives
		// in send order on the other node, each once.
		const burst = 50
		for i := range burst {
			alice.sendFrame(sendTo("bob", fmt.Sprintf("burst %d", i)))
		}
		for i := range burst {
			if resp := alice.read(); resp.GetSendOk() == nil || !resp.GetSendOk().Online {
				t.Fatalf("burst send %d answered %v, want SendOK with bob online", i, resp)
			}
		}
		for i := range burst {
			if m := bob.nextMessage(); m.Text != fmt.Sprintf("burst %d", i) {
				t.Fatalf("bob's message %d of the burst = %q", i, m.Text)
			}
		}
		// A user logged in nowhere counts as offline in SendOK.
		dave, _ := a.user(t, "dave")
		dave.c.Close()
		waitFor(t, "dave offline", func() bool {
			r := bob.do(sendTo("dave", "are you there?"))
			expectOK(t, r)
			return !r.GetSendOk().Online
		})
		// Friends and presence across nodes.
		expectOK(t, alice.do(&chatpb.Frame{Body: &chatpb.Frame_AddFriend{AddFriend: &chatpb.AddFriend{Username: "bob"}}}))
		fl := alice.do(&chatpb.Frame{Body: &chatpb.Frame_ListFriends{ListFriends: &chatpb.ListFriends{}}}).GetFriendList().GetFriends()
		if len(fl) != 1 || !fl[0].Online {
			t.Fatalf("alice's friends = %v", fl)
		}
		// Groups across nodes, with an offline member who logs in on the
		// other node.
		carol, _ := b.user(t, "carol")
		gid := alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "g"}}}).GetGroupCreated().GetGroupId()
		for _, rc := range []*rawConn{bob, carol} {
			expectOK(t, rc.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}))
		}
		carol.c.Close()
		waitFor(t, "carol offline", func() bool {
			gl := alice.do(&chatpb.Frame{Body: &chatpb.Frame_ListGroups{ListGroups: &chatpb.ListGroups{}}}).GetGroupList().GetGroups()
			return len(gl) == 1 && len(gl[0].Members) == 3 && !gl[0].Members[2].Online && gl[0].Members[1].Online
		})
		expectOK(t, alice.do(sendGroup(gid, "group across nodes")))
		if m := bob.nextMessage(); m.GroupId != gid || m.Text != "group across nodes" {
			t.Fatalf("bob got %v", m)
		}
		carol, _ = a.user(t, "carol")
		if m := carol.nextMessage(); m.Text != "group across nodes" {
			t.Fatalf("carol's replay on the other node = %v", m)
		}
		// A token from one node logs in on the other (shared secret), and
		// the newest login wins across nodes.
		alice2 := dial(t, b.addr)
		expectOK(t, alice2.do(tokenReq(aliceOK.Token)))
		alice.expectKicked(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE)
		expectOK(t, bob.do(sendTo("alice", "to your new session")))
		if m := alice2.nextMessage(); m.Text != "to your new session" {
			t.Fatalf("alice's new session got %v", m)
		}
	})
}

func TestThirdPartyPublishReachesUser(t *testing.T) {
	forEachRedis(t, testThirdPartyPublishReachesUser)
}

func testThirdPartyPublishReachesUser(t *testing.T, rb *redisBackend) {
	nodes := backendNodes(t, rb, 1, EngineGnet, nil)
	dave, ok := nodes[0].user(t, "dave")
	// A seq on a message without msg_id is ignored: a live-only push was
	// never stored, so it has no place in a conversation.
	payload := `{"type":"message","from_username":"billing","text":"your invoice is ready","seq":9}`
	n, err := rb.publishUser(context.Background(), ok.UserId, payload)
	if err != nil || n != 1 {
		t.Fatalf("PUBLISH = %d, %v", n, err)
	}
	m := dave.nextMessage()
	if m.Text != "your invoice is ready" || m.FromUsername != "billing" || m.MsgId == 0 || m.SentAtMs == 0 || m.Seq != 0 {
		t.Fatalf("dave got %v", m)
	}
	// Malformed payloads are dropped and counted, none reaches dave, and
	// he is unharmed: an empty text, a sender name no client could have,
	// a payload past the size bound, a device longer than any login's.
	bad := []string{
		`{"type":"message","text":""}`,
		`{"type":"message","from_username":"` + strings.Repeat("x", 1000) + `","text":"spoofed"}`,
		`{"type":"message","from_username":"bill ing","text":"spoofed"}`,
		`{"type":"message","text":"` + strings.Repeat("y", protocol.MaxChannelEvent) + `"}`,
		`{"type":"message","text":"spoofed","device":"` + strings.Repeat("d", 65) + `"}`,
	}
	for _, p := range bad {
		_, _ = rb.publishUser(context.Background(), ok.UserId, p)
	}
	waitFor(t, "bad payloads counted", func() bool {
		return testutil.ToFloat64(nodes[0].metrics.channelErrors) == float64(len(bad))
	})
	expectOK(t, dave.do(pingReq()))
	dave.noPush(100 * time.Millisecond)
}

// TestRedisCrashLosesNothingAcknowledged kills Redis with SIGKILL while
// senders on both nodes write continuously, then restarts it. Every message
// that got SendOK must reach its recipient exactly once after dedup by msg_id.
func TestRedisCrashLosesNothingAcknowledged(t *testing.T) {
	r := testproc.StartRedis(t)
	nodes := clusterNodes(t, r, 2, EngineGnet)
	const pairs = 4
	type pair struct {
		sender, receiver *rawConn
		name             string
	}
	var ps []pair
	for i := range pairs {
		s, _ := nodes[i%2].user(t, fmt.Sprintf("sender%d", i))
		rc, _ := nodes[(i+1)%2].user(t, fmt.Sprintf("receiver%d", i))
		ps = append(ps, pair{s, rc, fmt.Sprintf("receiver%d", i)})
	}

	var sentOK, refused atomic.Int64
	acked := make([]map[uint64]bool, pairs) // msg ids that got SendOK
	ackedOnline := make([]map[uint64]bool, pairs)
	received := make([]map[uint64]int, pairs) // msg id -> times pushed
	var mu sync.Mutex
	stopSend := make(chan struct{})
	var wg sync.WaitGroup
	for i, p := range ps {
		acked[i], received[i], ackedOnline[i] = map[uint64]bool{}, map[uint64]int{}, map[uint64]bool{}
		wg.Add(1)
		go func() { // sender: one request at a time, retrying with the same client_msg_id
			defer wg.Done()
			for k := 0; ; k++ {
				select {
				case <-stopSend:
					return
				default:
				}
				f := &chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{
					To: &chatpb.Send_Username{Username: p.name}, Text: fmt.Sprint("m", k), ClientMsgId: fmt.Sprint(i, "-", k)}}}
				seq := p.sender.sendFrame(f)
				resp, err := p.sender.tryRead(10 * time.Second)
				if err != nil || resp.Seq != seq {
					t.Errorf("sender %d: %v %v", i, resp, err)
					return
				}
				if ok := resp.GetSendOk(); ok != nil {
					sentOK.Add(1)
					mu.Lock()
					acked[i][ok.MsgId] = true
					ackedOnline[i][ok.MsgId] = ok.Online
					mu.Unlock()
				} else {
					refused.Add(1)
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
		go func() { // receiver: count pushes by id, ack as it goes
			for {
				f, err := p.receiver.tryRead(30 * time.Second)
				if err != nil {
					return
				}
				if m := f.GetMessage(); m != nil {
					mu.Lock()
					received[i][m.MsgId]++
					mu.Unlock()
					p.receiver.sendFrame(ackReq(m.MsgId))
				}
			}
		}()
	}
	time.Sleep(700 * time.Millisecond)
	killedAt := time.Now()
	r.Kill()
	time.Sleep(1500 * time.Millisecond)
	r.Start()
	restartedAt := time.Now()
	time.Sleep(1500 * time.Millisecond)
	close(stopSend)
	wg.Wait()

	// Everything acknowledged arrives (the resync after the pub/sub
	// reconnect delivers what was stored but not pushed live).
	missing := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for i := range ps {
			for id := range acked[i] {
				if received[i][id] == 0 {
					n++
				}
			}
		}
		return n
	}
	deadline := time.Now().Add(15 * time.Second)
	for missing() > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	delivered, dups := 0, 0
	for i := range ps {
		for _, n := range received[i] {
			delivered++
			dups += n - 1
		}
	}
	mu.Unlock()
	t.Logf("sent with SendOK: %d, refused while Redis was down: %d, distinct delivered: %d, duplicate pushes dropped by msg_id: %d",
		sentOK.Load(), refused.Load(), delivered, dups)
	if m := missing(); m > 0 {
		mu.Lock()
		for i := range ps {
			for id, on := range ackedOnline[i] {
				if received[i][id] == 0 {
					dbg := redis.NewClient(&redis.Options{Addr: r.Addr})
					ex := dbg.Exists(context.Background(), "loopchat:msg:"+msgMember(id)).Val()
					dbg.Close()
					t.Logf("pair %d missing msg %d (online=%v, sent at %v) in redis: %d", i, id, on, time.UnixMilli(msgIDUnixMs(id)).Format("15:04:05.000"), ex)
				}
			}
		}
		mu.Unlock()
		t.Logf("redis killed at %v, restarted at %v", killedAt.Format("15:04:05.000"), restartedAt.Format("15:04:05.000"))
		t.Fatalf("%d acknowledged messages never arrived", m)
	}
	if refused.Load() == 0 {
		t.Fatal("no send was refused: Redis was not down while traffic flowed")
	}
	if sentOK.Load() < 20 {
		t.Fatalf("only %d messages went through", sentOK.Load())
	}
}

// A message's seq reaches a recipient on another node both in the live
// push (the channel JSON, to which the append script added it) and in the
// inbox replay at their next login (the stored body, likewise). Each
// conversation counts its own.
func TestClusterSeqsReachOtherNodes(t *testing.T) {
	forEachRedis(t, testClusterSeqsReachOtherNodes)
}

func testClusterSeqsReachOtherNodes(t *testing.T, rb *redisBackend) {
	nodes := backendNodes(t, rb, 2, EngineGnet, nil)
	alice, _ := nodes[0].user(t, "alice")
	bob, _ := nodes[1].user(t, "bob")
	for i := 1; i <= 2; i++ {
		expectOK(t, alice.do(sendTo("bob", fmt.Sprint("live ", i))))
		if m := bob.nextMessage(); m.Text != fmt.Sprint("live ", i) || m.Seq != uint64(i) {
			t.Fatalf("bob's live push %d = %v, want seq %d", i, m, i)
		}
	}
	expectOK(t, bob.do(sendTo("alice", "back")))
	if m := alice.nextMessage(); m.Text != "back" || m.Seq != 3 {
		t.Fatalf("alice's live push = %v, want seq 3 (one conversation both ways)", m)
	}
	gid := alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "g"}}}).GetGroupCreated().GetGroupId()
	expectOK(t, bob.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}))
	expectOK(t, alice.do(sendGroup(gid, "to the group")))
	if m := bob.nextMessage(); m.GroupId != gid || m.Seq != 1 {
		t.Fatalf("bob's group push = %v, want seq 1 (the group's own count)", m)
	}

	// Bob never acked: after he leaves, his next login on the other node
	// replays everything, seqs and all, with what was sent meanwhile.
	bob.c.Close()
	expectOK(t, alice.do(sendTo("bob", "while away")))
	bob, _ = nodes[0].user(t, "bob")
	for _, want := range []struct {
		text string
		seq  uint64
	}{{"live 1", 1}, {"live 2", 2}, {"to the group", 1}, {"while away", 4}} {
		if m := bob.nextMessage(); m.Text != want.text || m.Seq != want.seq {
			t.Fatalf("bob's replay: %v, want %q with seq %d", m, want.text, want.seq)
		}
	}
}
