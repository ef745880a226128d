package server

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
)

// On a Redis Cluster with a replica per primary, a write is acknowledged
// only once a replica has it (--redis-min-replicas defaults to 1 there).
// With the replica of the recipient's shard down, a send fails
// (UNAVAILABLE, no SendOK) after --redis-replica-timeout; once the replica
// is back, the same send (client_msg_id) goes through, once.
func TestWritesWaitForAReplica(t *testing.T) {
	c, rb := startClusterBackend(t, "w:")
	nodes := backendNodes(t, rb, 1, EngineGnet, func(o *Options) { o.RedisReplicaTimeout = 300 * time.Millisecond })
	alice, _ := nodes[0].user(t, "alice")
	bob, bobOK := nodes[0].user(t, "bob")
	send := func(cid, text string) *chatpb.Frame {
		return alice.do(&chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{
			To: &chatpb.Send_Username{Username: "bob"}, Text: text, ClientMsgId: cid}}})
	}
	expectOK(t, send("c0", "replicated"))
	if m := bob.nextMessage(); m.Text != "replicated" {
		t.Fatalf("bob got %v", m)
	}

	ctx := testproc.Ctx(t, time.Minute)
	replica := killReplicaOf(ctx, t, c, rb.store(t).userKey(bobOK.UserId))
	start := time.Now()
	expectCode(t, send("c1", "not replicated"), chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE)
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("refused after %v, before the replica timeout", d)
	}
	if n := testutil.ToFloat64(nodes[0].metrics.redisErrors.WithLabelValues("wait")); n < 1 {
		t.Fatalf("%v short WAITs counted", n)
	}
	if err := replica.StartAgain(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	resp := send("c1", "not replicated")
	expectOK(t, resp)
	// The retry delivered it; the first attempt's push (its step ran on
	// the primary before the WAIT came back short) may have come too.
	for {
		m := bob.nextMessage()
		if m.MsgId == resp.GetSendOk().MsgId {
			break
		}
	}
	page := bob.do(historyWith("alice")).GetHistoryPage()
	if len(page.GetMessages()) != 2 {
		t.Fatalf("history holds %d messages, want 2 (the retry is the first attempt's)", len(page.GetMessages()))
	}
	// The replica has what was acknowledged.
	rc := replica.Client()
	defer rc.Close()
	if err := rc.Do(ctx, "READONLY").Err(); err != nil {
		t.Fatal(err)
	}
	inbox := rb.store(t).inboxKey(boxOf(bobOK.UserId, 0))
	if n, err := rc.ZCard(ctx, inbox).Result(); err != nil || n != 2 {
		t.Fatalf("the replica holds %d messages of bob's inbox (%v), want both", n, err)
	}
}

// TestAckNotReplicatedIsUnavailable: on a Redis Cluster, an Ack whose
// write does not reach a replica in time is answered UNAVAILABLE, as
// protocol.md says of a failed ack ("send it again"), not INTERNAL; the
// same comes of a primary that dies under it (the outside fault run saw
// INTERNAL for acks when a primary was SIGKILLed). The retry, once the
// replica is back, is stored: the message is not pushed again at the next
// login.
func TestAckNotReplicatedIsUnavailable(t *testing.T) {
	c, rb := startClusterBackend(t, "a:")
	nodes := backendNodes(t, rb, 1, EngineGnet, func(o *Options) { o.RedisReplicaTimeout = 300 * time.Millisecond })
	alice, _ := nodes[0].user(t, "alice")
	bob, bobOK := nodes[0].user(t, "bob")
	expectOK(t, alice.do(sendTo("bob", "ack me")))
	m := bob.nextMessage()

	ctx := testproc.Ctx(t, time.Minute)
	replica := killReplicaOf(ctx, t, c, rb.store(t).inboxKey(boxOf(bobOK.UserId, 0)))
	seq := bob.sendFrame(ackReq(m.MsgId))
	resp := bob.read()
	if resp.Seq != seq {
		t.Fatalf("answer %v, want the ack's error (seq %d)", resp, seq)
	}
	expectCode(t, resp, chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE)

	if err := replica.StartAgain(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	bob.sendFrame(ackReq(m.MsgId))
	if pong := bob.do(pingReq()); pong.GetPong() == nil {
		t.Fatalf("after the ack: %v", pong)
	}
	again := dial(t, nodes[0].addr)
	expectOK(t, again.do(tokenReq(bobOK.Token)))
	again.noPush(500 * time.Millisecond)
}

// startClusterBackend starts a Redis Cluster (3 primaries, a replica each)
// for nodes made with backendNodes, keys under prefix.
func startClusterBackend(t *testing.T, prefix string) (*testproc.Cluster, *redisBackend) {
	t.Helper()
	c := testproc.StartCluster(t)
	cc := c.Client()
	t.Cleanup(func() { cc.Close() })
	return c, &redisBackend{name: "cluster", url: c.URL, c: c, prefix: prefix, client: cc}
}

// killReplicaOf kills the replica of the shard holding key, and returns it
// (to start again).
func killReplicaOf(ctx context.Context, t *testing.T, c *testproc.Cluster, key string) *testproc.ClusterNode {
	t.Helper()
	primary, err := c.SlotOwner(ctx, keySlot(key))
	if err != nil {
		t.Fatal(err)
	}
	replica := c.ReplicaOf(ctx, primary)
	if replica == nil {
		t.Fatalf("no replica of the shard of %s", key)
	}
	replica.Kill()
	return replica
}
