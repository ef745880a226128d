package server

import (
	"testing"
	"time"

	"github.com/loopchat/loopchat/internal/testproc"
	"github.com/loopchat/loopchat/protocol"
)

// TestClusterDeliveryAfterResharding: the slots of a user's keys and
// channel, and of a group's, move to another primary (as `redis-cli
// --cluster reshard` moves them: MIGRATE, then SETSLOT NODE) while both
// are heard by a node; Redis drops the node's subscriptions there
// (SUNSUBSCRIBE), the node subscribes them again where the slots are now,
// and messages sent after the move arrive live, stored in the keys that
// moved.
func TestClusterDeliveryAfterResharding(t *testing.T) {
	rb := onCluster(t)
	nodes := backendNodes(t, rb, 2, EngineGnet, nil)
	ctx := testproc.Ctx(t, 60*time.Second)
	alice, _ := nodes[0].user(t, "alice")
	bob, bobOK := nodes[1].user(t, "bob")
	gid := createGroup(t, alice, "moving")
	expectOK(t, bob.do(joinReq(gid)))
	waitFor(t, "both nodes hear the group", func() bool { return rb.groupSubscribers(t, gid) == 2 })
	expectOK(t, alice.do(sendTo("bob", "before")))
	if m := bob.nextMessage(); m.Text != "before" {
		t.Fatalf("bob got %v", m)
	} else {
		bob.sendFrame(ackReq(m.MsgId))
	}

	primaries, err := rb.c.Primaries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for _, ch := range []string{protocol.ShardUserChannel(rb.prefix, bobOK.UserId), protocol.ShardGroupChannel(rb.prefix, gid)} {
		slot := keySlot(ch)
		from, err := rb.c.SlotOwner(ctx, slot)
		if err != nil {
			t.Fatal(err)
		}
		to := primaries[0]
		if to == from {
			to = primaries[1]
		}
		if err := rb.c.MoveSlot(ctx, slot, to); err != nil {
			t.Fatal(err)
		}
		testproc.WaitUntil(t, "every node sees the slot moved", 10*time.Second, func() bool {
			o, err := rb.c.SlotOwner(ctx, slot)
			return err == nil && o == to
		})
		moved++
	}
	t.Logf("moved %d slots", moved)
	waitFor(t, "the nodes hear bob's channel and the group's where they are now", func() bool {
		on, err := nodes[0].broker.Online(ctx, []uint64{bobOK.UserId})
		return err == nil && on[0] && rb.groupSubscribers(t, gid) == 2
	})
	resp := alice.do(sendTo("bob", "after"))
	expectOK(t, resp)
	if !resp.GetSendOk().Online {
		t.Fatal("bob counted offline after the move")
	}
	expectOK(t, alice.do(sendGroup(gid, "group after")))
	got := map[string]bool{}
	for len(got) < 2 {
		m := bob.nextMessage()
		if m.Text == "before" {
			continue // the resync after the move replays what is not acked
		}
		got[m.Text] = true
	}
	if !got["after"] || !got["group after"] {
		t.Fatalf("bob got %v after the move", got)
	}
	// What moved is still there: bob's inbox and the conversation's log.
	page := bob.do(historyWith("alice")).GetHistoryPage()
	if len(page.GetMessages()) != 2 {
		t.Fatalf("bob's history with alice = %v", page)
	}
}
