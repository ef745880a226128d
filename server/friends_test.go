package server

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
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

func blockReq(name string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Block{Block: &chatpb.Block{Username: name}}}
}

func unblockReq(name string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Unblock{Unblock: &chatpb.Unblock{Username: name}}}
}

// blockedNames is what ListBlocked answers rc, by name.
func blockedNames(t *testing.T, rc *rawConn) []string {
	t.Helper()
	resp := rc.do(&chatpb.Frame{Body: &chatpb.Frame_ListBlocked{ListBlocked: &chatpb.ListBlocked{}}})
	expectOK(t, resp)
	out := []string{}
	for _, u := range resp.GetBlockList().GetUsers() {
		out = append(out, u.Username)
	}
	return out
}

// TestBlock: on one node (both engines, bbolt) and across two on one
// Redis and on a Redis Cluster, a block ends the friendship and, while it
// lasts, refuses 1:1 sends both ways before anything is stored, refuses
// AddFriend both ways and drops typing notices, while group messages
// still arrive; unblocking restores it all, with no seq lost.
func TestBlock(t *testing.T) {
	onOneNodeAndTwoWith(t, func(o *Options) { o.MaxBlocked = 2 }, func(t *testing.T, a, b *testServer) {
		alice, aliceOK := a.user(t, "alice")
		bob, _ := b.user(t, "bob")
		carol, _ := a.user(t, "carol")
		a.user(t, "dave")
		expectOK(t, alice.do(addFriendReq("bob")))
		gid := alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "g"}}}).GetGroupCreated().GetGroupId()
		expectOK(t, bob.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}))
		expectOK(t, alice.do(sendTo("bob", "before")))
		if m := bob.nextMessage(); m.Text != "before" {
			t.Fatalf("bob got %v", m)
		}

		expectOK(t, bob.do(blockReq("ALICE")))
		expectOK(t, bob.do(blockReq("alice"))) // again: nothing changes
		if got := blockedNames(t, bob); !slices.Equal(got, []string{"alice"}) {
			t.Fatalf("bob blocks %v", got)
		}
		if got := blockedNames(t, alice); len(got) != 0 {
			t.Fatalf("alice blocks %v", got)
		}
		if got := friendNames(alice.do(listFriendsReq()).GetFriendList().GetFriends()); len(got) != 0 {
			t.Fatalf("alice's friends after bob blocked her = %v", got)
		}

		// 1:1 both ways: refused, nothing stored.
		for _, tc := range []struct {
			rc *rawConn
			to string
		}{{alice, "bob"}, {bob, "alice"}} {
			resp := tc.rc.do(sendWithID(tc.to, "blocked?", "c-"+tc.to))
			expectCode(t, resp, chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED)
			if !strings.Contains(resp.GetError().Message, "block") {
				t.Fatalf("the refusal does not say why: %q", resp.GetError().Message)
			}
			expectCode(t, tc.rc.do(addFriendReq(tc.to)), chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED)
		}
		page := bob.do(historyReq(&chatpb.History{PeerUsername: "alice", Limit: 10})).GetHistoryPage()
		if len(page.GetMessages()) != 1 || page.Messages[0].Text != "before" {
			t.Fatalf("bob's history with alice = %v", page)
		}
		// Typing: carol's reaches bob, alice's does not (and alice is
		// answered OK, as for any dropped notice).
		expectOK(t, carol.do(typingReq(&chatpb.Typing{PeerUsername: "bob"})))
		if n := bob.nextTyping(); n.Username != "carol" {
			t.Fatalf("bob got %v", n)
		}
		expectOK(t, alice.do(typingReq(&chatpb.Typing{PeerUsername: "bob"})))
		expectOK(t, bob.do(typingReq(&chatpb.Typing{PeerUsername: "alice"})))
		bob.noPush(200 * time.Millisecond)
		alice.noPush(50 * time.Millisecond)
		// The group is not affected.
		expectOK(t, alice.do(sendGroup(gid, "to the group")))
		if m := bob.nextMessage(); m.Text != "to the group" || m.GroupId != gid {
			t.Fatalf("bob got %v", m)
		}

		// Errors and the limit (2 here).
		expectCode(t, bob.do(blockReq("bob")), chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
		expectCode(t, bob.do(blockReq("nobody")), chatpb.ErrorCode_ERROR_CODE_NOT_FOUND)
		expectCode(t, bob.do(unblockReq("carol")), chatpb.ErrorCode_ERROR_CODE_NOT_FOUND)
		expectOK(t, bob.do(blockReq("carol")))
		expectCode(t, bob.do(blockReq("dave")), chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED)
		expectOK(t, bob.do(unblockReq("carol")))
		expectOK(t, bob.do(blockReq("dave")))

		// Unblocked: the next message takes the next seq, as if the
		// refused ones never were; friends again only by asking.
		expectOK(t, bob.do(unblockReq("alice")))
		resp := alice.do(sendTo("bob", "after"))
		expectOK(t, resp)
		if resp.GetSendOk().Seq != 2 {
			t.Fatalf("seq after the block = %d, want 2", resp.GetSendOk().Seq)
		}
		if m := bob.nextMessage(); m.Text != "after" || m.FromUserId != aliceOK.UserId {
			t.Fatalf("bob got %v", m)
		}
		if got := friendNames(bob.do(listFriendsReq()).GetFriendList().GetFriends()); len(got) != 0 {
			t.Fatalf("bob's friends after the unblock = %v", got)
		}
		expectOK(t, bob.do(addFriendReq("alice")))
	})
}

// An API publish from a named user follows the user's blocks: refused to
// someone who blocks them (403), and a durable broadcast from them leaves
// that user out. The system account is not a user one can block.
func TestAPIPublishFollowsBlocks(t *testing.T) {
	ts := startServer(t, apiOptions(t))
	api := newAPIClient(t, ts)
	ts.user(t, "alice")
	bob, _ := ts.user(t, "bob")
	carol, _ := ts.user(t, "carol")
	expectOK(t, bob.do(blockReq("alice")))

	msg := api.fails("POST", "/api/v1/publish", map[string]any{"to_user": "bob", "from": "alice", "text": "hi"},
		http.StatusForbidden, "PERMISSION_DENIED")
	if !strings.Contains(msg, "block") {
		t.Fatalf("the refusal says %q", msg)
	}
	api.publish(map[string]any{"to_user": "bob", "text": "from the system"})
	if m := bob.nextMessage(); m.Text != "from the system" {
		t.Fatalf("bob got %v", m)
	}
	expectCode(t, bob.do(blockReq("system")), chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)

	var br struct {
		Recipients int `json:"recipients"`
	}
	api.ok("POST", "/api/v1/broadcast", map[string]any{"text": "from alice to all", "from": "alice", "durable": true}, http.StatusOK, &br)
	if m := carol.nextMessage(); m.Text != "from alice to all" {
		t.Fatalf("carol got %v", m)
	}
	bob.noPush(200 * time.Millisecond)
	page := bob.do(historyWith("alice")).GetHistoryPage()
	if len(page.GetMessages()) != 0 {
		t.Fatalf("bob's history with alice = %v", page)
	}
	if br.Recipients != 2 { // carol and the system account; not bob, not alice
		t.Fatalf("the broadcast counted %d recipients, want 2", br.Recipients)
	}
}
