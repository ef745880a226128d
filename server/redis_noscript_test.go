package server

import (
	"testing"
	"time"

	"github.com/loopchat/loopchat/internal/testproc"
)

// TestNoScriptRerunsOnlyWhatDidNotRun: a primary that lost its script
// cache (a replica promoted by a failover: Redis 7 does not copy the
// cache) answers NOSCRIPT, and the store loads its scripts and runs the
// command again. Only that command: the others of the same request ran
// already on their own primaries. A 1:1 send whose sender's step lands on
// the flushed primary used to run the recipient's step twice, so bob was
// pushed the message twice, and a device that acked it in between (the
// inbox replay after the failover pushes it) had it put back in its inbox
// (the outside fault run found 2–8 messages a failover back at the next
// login, after a durable ack).
func TestNoScriptRerunsOnlyWhatDidNotRun(t *testing.T) {
	c, rb := startClusterBackend(t, "ns:")
	nodes := backendNodes(t, rb, 1, EngineGnet, nil)
	ctx := testproc.Ctx(t, time.Minute)
	st := rb.store(t)
	alice, aliceOK := nodes[0].user(t, "alice")
	owner, err := c.SlotOwner(ctx, keySlot(st.userKey(aliceOK.UserId)))
	if err != nil {
		t.Fatal(err)
	}
	// bob: a user on another primary than alice's.
	var bobName string
	for i := range 50 {
		name := "bob" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		rc, ok := nodes[0].user(t, name)
		o, err := c.SlotOwner(ctx, keySlot(st.userKey(ok.UserId)))
		if err != nil {
			t.Fatal(err)
		}
		if o != owner {
			bobName = name
			defer rc.c.Close()
			expectOK(t, alice.do(sendTo(name, "warm-up")))
			if m := rc.nextMessage(); m.Text != "warm-up" {
				t.Fatalf("%s got %v", name, m)
			}
			if err := owner.Client().ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			resp := alice.do(sendTo(name, "once"))
			expectOK(t, resp)
			m := rc.nextMessage()
			if m.MsgId != resp.GetSendOk().MsgId {
				t.Fatalf("%s got %v, want the message sent", name, m)
			}
			rc.noPush(500 * time.Millisecond)
			break
		}
		rc.c.Close()
	}
	if bobName == "" {
		t.Fatal("no user on another primary than alice's")
	}
}
