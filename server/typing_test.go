package server

import (
	"testing"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

func typingReq(t *chatpb.Typing) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Typing{Typing: t}}
}

// nextTyping returns the next push, which must be a TypingNotice.
func (rc *rawConn) nextTyping() *chatpb.TypingNotice {
	rc.t.Helper()
	f := rc.nextPush()
	n := f.GetTypingNotice()
	if n == nil {
		rc.t.Fatalf("expected a TypingNotice push, got %v", f)
	}
	return n
}

// TestTyping: on one node and across two, Typing reaches every session of
// the peer, or of the group's other members, and none of the typer's own;
// it is answered OK, stored nowhere, and checked like a Send.
func TestTyping(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		alice, aliceOK := a.device(t, "alice", "phone")
		aliceLaptop, _ := b.device(t, "alice", "laptop")
		bobPhone, bobOK := b.device(t, "bob", "phone")
		bobLaptop, _ := a.device(t, "bob", "laptop")
		carol, carolOK := a.user(t, "carol")

		expectOK(t, alice.do(typingReq(&chatpb.Typing{PeerUsername: "bob"})))
		for _, rc := range []*rawConn{bobPhone, bobLaptop} {
			if n := rc.nextTyping(); n.UserId != aliceOK.UserId || n.Username != "alice" || n.GroupId != 0 {
				t.Fatalf("bob got %v; want alice typing to him", n)
			}
		}
		aliceLaptop.noPush(200 * time.Millisecond)
		carol.noPush(10 * time.Millisecond)
		// By id too, back the other way.
		expectOK(t, bobPhone.do(typingReq(&chatpb.Typing{PeerUserId: aliceOK.UserId})))
		for _, rc := range []*rawConn{alice, aliceLaptop} {
			if n := rc.nextTyping(); n.UserId != bobOK.UserId || n.GroupId != 0 {
				t.Fatalf("alice got %v", n)
			}
		}
		bobLaptop.noPush(200 * time.Millisecond)

		// Not stored: nothing in history, the conversation list or an inbox.
		if seqs, _ := pageSeqs(t, alice.do(historyReq(&chatpb.History{PeerUsername: "bob"}))); len(seqs) != 0 {
			t.Fatalf("history after typing: %v", seqs)
		}
		if l := alice.do(&chatpb.Frame{Body: &chatpb.Frame_ListConversations{ListConversations: &chatpb.ListConversations{}}}); len(l.GetConversationList().GetConversations()) != 0 {
			t.Fatalf("conversations after typing: %v", l)
		}
		tablet, _ := b.device(t, "bob", "tablet")
		tablet.noPush(200 * time.Millisecond)

		// A group: its other members, not the typer.
		gid := alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "g"}}}).GetGroupCreated().GetGroupId()
		for _, rc := range []*rawConn{bobPhone, carol} {
			expectOK(t, rc.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}))
		}
		expectOK(t, carol.do(typingReq(&chatpb.Typing{GroupId: gid})))
		for _, rc := range []*rawConn{alice, aliceLaptop, bobPhone, bobLaptop, tablet} {
			if n := rc.nextTyping(); n.UserId != carolOK.UserId || n.Username != "carol" || n.GroupId != gid {
				t.Fatalf("got %v; want carol typing in group %d", n, gid)
			}
		}
		carol.noPush(200 * time.Millisecond)

		// Checked like a Send.
		expectCode(t, alice.do(typingReq(&chatpb.Typing{})), codeInvalid)
		expectCode(t, alice.do(typingReq(&chatpb.Typing{PeerUsername: "bob", GroupId: gid})), codeInvalid)
		expectCode(t, alice.do(typingReq(&chatpb.Typing{PeerUsername: "nobody"})), chatpb.ErrorCode_ERROR_CODE_NOT_FOUND)
		expectCode(t, alice.do(typingReq(&chatpb.Typing{GroupId: 99999})), chatpb.ErrorCode_ERROR_CODE_NOT_FOUND)
		expectCode(t, alice.do(typingReq(&chatpb.Typing{PeerUsername: "no spaces"})), codeInvalid)
		dave, _ := a.user(t, "dave")
		expectCode(t, dave.do(typingReq(&chatpb.Typing{GroupId: gid})), chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED)
		expectCode(t, dial(t, a.addr).do(typingReq(&chatpb.Typing{PeerUsername: "bob"})), codeUnauth)
		// Typing to yourself tells no one, not even your other devices.
		expectOK(t, alice.do(typingReq(&chatpb.Typing{PeerUsername: "alice"})))
		aliceLaptop.noPush(200 * time.Millisecond)
		for _, rc := range []*rawConn{alice, bobPhone, bobLaptop, tablet, carol} {
			rc.noPush(10 * time.Millisecond)
		}
	})
}

// TestTypingRateLimit: one connection's notices past the typing burst are
// answered OK and dropped.
func TestTypingRateLimit(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		alice, _ := a.user(t, "alice")
		bob, _ := b.user(t, "bob")
		for range 10 {
			expectOK(t, alice.do(typingReq(&chatpb.Typing{PeerUsername: "bob"})))
		}
		got := 0
		for {
			f, err := bob.tryRead(500 * time.Millisecond)
			if err != nil {
				break
			}
			if f.GetTypingNotice() == nil {
				t.Fatalf("unexpected frame %v", f)
			}
			got++
		}
		if got != typingBurst {
			t.Fatalf("bob got %d of 10 notices sent at once; want the burst, %d", got, typingBurst)
		}
		// The rate refills: a second later one more goes.
		time.Sleep(time.Second / typingRate)
		expectOK(t, alice.do(typingReq(&chatpb.Typing{PeerUsername: "bob"})))
		bob.nextTyping()
	})
}

// TestLogoutLeavesNothingForTheNextUser: after a Logout the connection
// stays open, and whoever logs in on it next gets nothing meant for the
// user who left — here a typing notice to alice that was still waiting
// for the transient flusher (50 ms) when she logged out and bob logged in.
func TestLogoutLeavesNothingForTheNextUser(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		bobFirst, bobOK := a.user(t, "bob")
		bobFirst.c.Close()
		shared, _ := a.user(t, "alice")
		carol, _ := b.user(t, "carol")

		expectOK(t, carol.do(typingReq(&chatpb.Typing{PeerUsername: "alice"})))
		time.Sleep(10 * time.Millisecond) // delivered (across nodes too), not yet flushed
		logout := shared.sendFrame(&chatpb.Frame{Body: &chatpb.Frame_Logout{Logout: &chatpb.Logout{}}})
		login := shared.sendFrame(tokenReq(bobOK.Token))
		for _, want := range []uint64{logout, login} {
			f := shared.read()
			if f.Seq != want {
				t.Fatalf("got %v while waiting for the answer to %d", f, want)
			}
			expectOK(t, f)
		}
		shared.noPush(300 * time.Millisecond)
	})
}
