package server

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

func removeFriendReq(name string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_RemoveFriend{RemoveFriend: &chatpb.RemoveFriend{Username: name}}}
}

// friendNames is the names in a friend list, in its order.
func friendNames(fs []*chatpb.Friend) []string {
	out := []string{}
	for _, f := range fs {
		out = append(out, f.Username)
	}
	return out
}

// TestRemoveFriend: on one node (both engines, bbolt) and across two on
// one Redis and on a Redis Cluster, RemoveFriend ends the friendship on
// both sides at once: neither lists the other (ListFriends, LoginOK),
// neither is pushed the other's presence, while a friend of both still
// is; their conversation and its history stay, and the errors are as
// docs/protocol.md says.
func TestRemoveFriend(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		grace := a.opts.PresenceGrace
		alice, _ := a.user(t, "alice")
		bob, bobOK := b.device(t, "bob", "phone")
		carol, _ := a.user(t, "carol")
		expectOK(t, alice.do(addFriendReq("bob")))
		expectOK(t, carol.do(addFriendReq("bob")))
		expectOK(t, carol.do(addFriendReq("alice")))
		expectOK(t, alice.do(sendTo("bob", "before")))
		if m := bob.nextMessage(); m.Text != "before" {
			t.Fatalf("bob got %v", m)
		}

		expectOK(t, alice.do(removeFriendReq("BOB"))) // names ignore case
		expectCode(t, alice.do(removeFriendReq("bob")), chatpb.ErrorCode_ERROR_CODE_NOT_FOUND)
		expectCode(t, bob.do(removeFriendReq("alice")), chatpb.ErrorCode_ERROR_CODE_NOT_FOUND)
		expectCode(t, alice.do(removeFriendReq("nobody")), chatpb.ErrorCode_ERROR_CODE_NOT_FOUND)
		expectCode(t, alice.do(removeFriendReq("alice")), chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
		expectCode(t, alice.do(removeFriendReq("x")), chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
		if got := friendNames(alice.do(listFriendsReq()).GetFriendList().GetFriends()); !slices.Equal(got, []string{"carol"}) {
			t.Fatalf("alice's friends = %v, want carol", got)
		}
		if got := friendNames(bob.do(listFriendsReq()).GetFriendList().GetFriends()); !slices.Equal(got, []string{"carol"}) {
			t.Fatalf("bob's friends = %v, want carol", got)
		}

		// bob goes and comes back: carol is told, alice not.
		bob.c.Close()
		if p := carol.nextPresence(); p.UserId != bobOK.UserId || p.Online {
			t.Fatalf("carol got %v, want bob offline", p)
		}
		bob, _ = b.device(t, "bob", "phone")
		if m := bob.nextMessage(); m.Text != "before" { // unacknowledged: from the inbox
			t.Fatalf("bob got %v", m)
		}
		if p := carol.nextPresence(); p.UserId != bobOK.UserId || !p.Online {
			t.Fatalf("carol got %v, want bob online", p)
		}
		alice.noPush(200 * time.Millisecond)

		// alice goes and comes back (on the other node): carol is told,
		// bob not; her LoginOK lists carol only.
		alice.c.Close()
		if p := carol.nextPresence(); p.Username != "alice" || p.Online {
			t.Fatalf("carol got %v, want alice offline", p)
		}
		alice, aliceOK := b.user(t, "alice")
		if got := friendNames(aliceOK.Friends); !slices.Equal(got, []string{"carol"}) {
			t.Fatalf("alice's LoginOK friends = %v, want carol", got)
		}
		if p := carol.nextPresence(); p.Username != "alice" || !p.Online {
			t.Fatalf("carol got %v, want alice online", p)
		}
		bob.noPush(grace)

		// The conversation stays, with its history, and they can still
		// write to each other.
		convs := alice.do(listConvsReq(10)).GetConversationList().GetConversations()
		if len(convs) != 1 || convs[0].PeerUsername != "bob" || convs[0].LastMessage.GetText() != "before" {
			t.Fatalf("alice's conversations = %v", convs)
		}
		page := bob.do(historyReq(&chatpb.History{PeerUsername: "alice", Limit: 10})).GetHistoryPage()
		if len(page.GetMessages()) != 1 || page.Messages[0].Text != "before" {
			t.Fatalf("bob's history with alice = %v", page)
		}
		expectOK(t, bob.do(sendTo("alice", "after")))
		if m := alice.nextMessage(); m.Text != "after" {
			t.Fatalf("alice got %v", m)
		}

		// Friends again: presence flows again.
		expectOK(t, bob.do(addFriendReq("alice")))
		bob.c.Close()
		if p := alice.nextPresence(); p.UserId != bobOK.UserId || p.Online {
			t.Fatalf("alice got %v, want bob offline", p)
		}
	})
}

// The embedded store checks sends against blocks it keeps in memory:
// they are read back from bbolt when it opens.
func TestBoltBlocksSurviveReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "test.db")
	s, err := OpenBoltStore(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.CreateUser(ctx, "a", []byte("h"))
	b, _ := s.CreateUser(ctx, "b", []byte("h"))
	if err := s.Block(ctx, a.ID, b.ID, Limits{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenBoltStore(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := testMessage(newMsgIDGen(0), b, "after the reopen")
	m.ToUserId = a.ID
	if _, err := s.AppendMessage(ctx, m, []uint64{a.ID}, ""); !errors.Is(err, ErrBlocked) {
		t.Fatalf("send after reopen = %v, want ErrBlocked", err)
	}
}
