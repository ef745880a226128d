package server

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
)

func historyReq(h *chatpb.History) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_History{History: h}}
}

func pageSeqs(t *testing.T, resp *chatpb.Frame) ([]uint64, bool) {
	t.Helper()
	p := resp.GetHistoryPage()
	if p == nil {
		t.Fatalf("expected a HistoryPage, got %v", resp)
	}
	var out []uint64
	for _, m := range p.Messages {
		out = append(out, m.Seq)
	}
	return out, p.HasMore
}

func u64p(v uint64) *uint64 { return &v }

// Seqs reach the sender (SendOK) and the recipient (the push), and History
// pages through a conversation from either side, on one node and across
// two nodes of a cluster.
func TestHistoryOverTheWire(t *testing.T) {
	run := func(t *testing.T, a, b *testServer) {
		alice, aliceOK := a.user(t, "alice")
		bob, bobOK := b.user(t, "bob")
		if aliceOK.StoreEpoch == "" || aliceOK.StoreEpoch != bobOK.StoreEpoch {
			t.Fatalf("store epochs %q and %q", aliceOK.StoreEpoch, bobOK.StoreEpoch)
		}
		for i := 1; i <= 7; i++ {
			from, to, name := alice, bob, "bob"
			if i%3 == 0 {
				from, to, name = bob, alice, "alice"
			}
			resp := from.do(sendTo(name, fmt.Sprint(i)))
			expectOK(t, resp)
			if got := resp.GetSendOk().Seq; got != uint64(i) {
				t.Fatalf("SendOK of message %d has seq %d", i, got)
			}
			if m := to.nextMessage(); m.Seq != uint64(i) || m.Text != fmt.Sprint(i) {
				t.Fatalf("push of message %d: %+v", i, m)
			}
		}
		// Latest first, then back; by name or id, from either side.
		seqs, more := pageSeqs(t, alice.do(historyReq(&chatpb.History{PeerUsername: "bob", Limit: 3})))
		if !slices.Equal(seqs, []uint64{7, 6, 5}) || !more {
			t.Fatalf("latest page %v more %v", seqs, more)
		}
		seqs, more = pageSeqs(t, bob.do(historyReq(&chatpb.History{PeerUserId: aliceOK.UserId, BeforeSeq: u64p(5), Limit: 10})))
		if !slices.Equal(seqs, []uint64{4, 3, 2, 1}) || more {
			t.Fatalf("older page %v more %v", seqs, more)
		}
		seqs, more = pageSeqs(t, bob.do(historyReq(&chatpb.History{PeerUserId: aliceOK.UserId, AfterSeq: u64p(0), Limit: 4})))
		if !slices.Equal(seqs, []uint64{1, 2, 3, 4}) || !more {
			t.Fatalf("from the start %v more %v", seqs, more)
		}
		seqs, _ = pageSeqs(t, bob.do(historyReq(&chatpb.History{PeerUsername: "alice", BeforeSeq: u64p(1)})))
		if len(seqs) != 0 {
			t.Fatalf("below seq 1: %v", seqs)
		}
		// Bad requests are refused, and the connection goes on.
		expectCode(t, alice.do(historyReq(&chatpb.History{})), codeInvalid)
		expectCode(t, alice.do(historyReq(&chatpb.History{PeerUsername: "bob", GroupId: 1})), codeInvalid)
		expectCode(t, alice.do(historyReq(&chatpb.History{PeerUsername: "bob", BeforeSeq: u64p(3), AfterSeq: u64p(1)})), codeInvalid)
		expectCode(t, alice.do(historyReq(&chatpb.History{PeerUsername: "bob", Limit: 201})), codeInvalid)
		expectCode(t, alice.do(historyReq(&chatpb.History{PeerUsername: "nobody"})), chatpb.ErrorCode_ERROR_CODE_NOT_FOUND)
		expectCode(t, dial(t, a.addr).do(historyReq(&chatpb.History{PeerUsername: "bob"})), codeUnauth)

		// A group: members see it from when they joined; others not at all.
		gid := alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "g"}}}).GetGroupCreated().GetGroupId()
		for i := 1; i <= 3; i++ {
			resp := alice.do(sendGroup(gid, fmt.Sprint("g", i)))
			expectOK(t, resp)
			if resp.GetSendOk().Seq != uint64(i) {
				t.Fatalf("group message %d has seq %d", i, resp.GetSendOk().Seq)
			}
		}
		expectCode(t, bob.do(historyReq(&chatpb.History{GroupId: gid})), chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED)
		expectOK(t, bob.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}))
		expectOK(t, alice.do(sendGroup(gid, "g4")))
		if m := bob.nextMessage(); m.Seq != 4 || m.GroupId != gid {
			t.Fatalf("bob's first group push: %+v", m)
		}
		seqs, more = pageSeqs(t, bob.do(historyReq(&chatpb.History{GroupId: gid})))
		if !slices.Equal(seqs, []uint64{4}) || more {
			t.Fatalf("bob's group history %v more %v; he joined after seq 3", seqs, more)
		}
		seqs, _ = pageSeqs(t, alice.do(historyReq(&chatpb.History{GroupId: gid})))
		if !slices.Equal(seqs, []uint64{4, 3, 2, 1}) {
			t.Fatalf("the creator's group history %v", seqs)
		}
	}
	onOneNodeAndTwo(t, run)
}

// MarkRead moves the read seq forward only; the peer of a 1:1 conversation
// gets a ReadReceipt when it moves, and nobody when it does not; a group's
// other members get nothing.
func TestReadReceipts(t *testing.T) {
	run := func(t *testing.T, a, b *testServer) {
		alice, aliceOK := a.user(t, "alice")
		bob, bobOK := b.user(t, "bob")
		for i := 1; i <= 3; i++ {
			expectOK(t, alice.do(sendTo("bob", fmt.Sprint(i))))
			bob.nextMessage()
		}
		markRead := func(rc *rawConn, h *chatpb.MarkRead) *chatpb.Frame {
			return rc.do(&chatpb.Frame{Body: &chatpb.Frame_MarkRead{MarkRead: h}})
		}
		expectOK(t, markRead(bob, &chatpb.MarkRead{PeerUsername: "alice", UpToSeq: 2}))
		rr := alice.nextPush().GetReadReceipt()
		if rr == nil || rr.PeerUserId != bobOK.UserId || rr.ReaderUserId != bobOK.UserId || rr.UpToSeq != 2 || rr.GroupId != 0 {
			t.Fatalf("alice's receipt: %v", rr)
		}
		// Backwards, or no further: nothing to tell.
		expectOK(t, markRead(bob, &chatpb.MarkRead{PeerUserId: aliceOK.UserId, UpToSeq: 1}))
		alice.noPush(200 * time.Millisecond)
		// Past the end: clamped to the last message.
		expectOK(t, markRead(bob, &chatpb.MarkRead{PeerUsername: "alice", UpToSeq: 99}))
		if rr := alice.nextPush().GetReadReceipt(); rr == nil || rr.UpToSeq != 3 {
			t.Fatalf("alice's second receipt: %v", rr)
		}
		bob.noPush(100 * time.Millisecond) // the marking session is not told
		expectCode(t, markRead(bob, &chatpb.MarkRead{UpToSeq: 1}), codeInvalid)
		expectCode(t, markRead(bob, &chatpb.MarkRead{GroupId: 12345, UpToSeq: 1}), chatpb.ErrorCode_ERROR_CODE_NOT_FOUND)

		gid := alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "g"}}}).GetGroupCreated().GetGroupId()
		expectOK(t, bob.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}))
		expectOK(t, alice.do(sendGroup(gid, "hello group")))
		bob.nextMessage()
		expectOK(t, markRead(bob, &chatpb.MarkRead{GroupId: gid, UpToSeq: 1}))
		alice.noPush(200 * time.Millisecond)
	}
	onOneNodeAndTwo(t, run)
}

func TestConversationKeysRoundTrip(t *testing.T) {
	for _, c := range []Conversation{GroupConversation(1), GroupConversation(1 << 63), DirectConversation(7, 3), DirectConversation(5, 5)} {
		got, err := ParseConversationKey(c.Key())
		if err != nil || got != c {
			t.Fatalf("%+v -> %q -> %+v, %v", c, c.Key(), got, err)
		}
	}
	for _, bad := range []string{"", "g", "g0", "gx", "d1", "d2:1", "d0:1", "x1", "d1:2:3"} {
		if _, err := ParseConversationKey(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// onOneNodeAndTwo runs a test of two users, on each engine: both on one
// node (a and b the same), on two nodes sharing a real Redis, and on two
// nodes sharing the Redis Cluster.
func onOneNodeAndTwo(t *testing.T, run func(t *testing.T, a, b *testServer)) {
	onOneNodeAndTwoWith(t, nil, run)
}

// onOneNodeAndTwoWith is onOneNodeAndTwo with tweak (if set) applied to
// every node's options.
func onOneNodeAndTwoWith(t *testing.T, tweak func(*Options), run func(t *testing.T, a, b *testServer)) {
	forEachEngine(t, func(t *testing.T, engine string) {
		t.Run("one node", func(t *testing.T) {
			opts := testOptions(t, engine)
			if tweak != nil {
				tweak(&opts)
			}
			ts := startServer(t, opts)
			run(t, ts, ts)
		})
		t.Run("two nodes", func(t *testing.T) {
			nodes := clusterNodesWith(t, testproc.StartRedis(t), 2, engine, tweak)
			run(t, nodes[0], nodes[1])
		})
		t.Run("two nodes on a Redis Cluster", func(t *testing.T) {
			nodes := backendNodes(t, onCluster(t), 2, engine, tweak)
			run(t, nodes[0], nodes[1])
		})
	})
}

// Receipts never go back. Marks of one reader racing on two devices are
// stored in one order and published in any (an outside client saw bob
// told 9, then 2, then 10); a session is pushed a receipt only when it
// is above the highest it was told, or marked itself, for that reader
// and conversation. The late receipt is published here as the losing
// device's node would have.
func TestReadReceiptsNeverGoBack(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		alice, aliceOK := a.user(t, "alice")
		phone, bobOK := b.device(t, "bob", "phone")
		laptop, _ := a.device(t, "bob", "laptop")
		for i := 1; i <= 10; i++ {
			expectOK(t, alice.do(sendTo("bob", fmt.Sprint(i))))
			phone.nextMessage()
			laptop.nextMessage()
		}
		mark := func(rc *rawConn, upTo uint64) {
			t.Helper()
			expectOK(t, rc.do(&chatpb.Frame{Body: &chatpb.Frame_MarkRead{MarkRead: &chatpb.MarkRead{PeerUsername: "alice", UpToSeq: upTo}}}))
		}
		receipt := func(rc *rawConn, want uint64) {
			t.Helper()
			if rr := rc.nextPush().GetReadReceipt(); rr == nil || rr.ReaderUserId != bobOK.UserId || rr.UpToSeq != want {
				t.Fatalf("receipt %v, want bob up to %d", rr, want)
			}
		}
		mark(phone, 9)
		receipt(alice, 9)
		receipt(laptop, 9)
		// The laptop's racing mark up to 2, moved first, published last.
		conv := DirectConversation(aliceOK.UserId, bobOK.UserId)
		late := Event{Epoch: bobOK.StoreEpoch, Read: &ReadNotice{Reader: bobOK.UserId, Conv: conv, UpTo: 2, NodeID: a.opts.NodeID, ConnID: 1 << 40}}
		if _, err := a.broker.Publish(context.Background(), []uint64{aliceOK.UserId, bobOK.UserId}, late); err != nil {
			t.Fatal(err)
		}
		// Nobody is told bob read less than he had: not alice, not the
		// laptop told 9, not the phone that marked 9.
		alice.noPush(200 * time.Millisecond)
		laptop.noPush(50 * time.Millisecond)
		phone.noPush(50 * time.Millisecond)
		mark(laptop, 10)
		receipt(alice, 10)
		receipt(phone, 10)
	})
}
