package server

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

func listConvsReq(limit uint32) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_ListConversations{ListConversations: &chatpb.ListConversations{Limit: limit}}}
}

// convList asks for rc's conversations and returns them.
func convList(t *testing.T, rc *rawConn, limit uint32) *chatpb.ConversationList {
	t.Helper()
	resp := rc.do(listConvsReq(limit))
	l := resp.GetConversationList()
	if l == nil {
		t.Fatalf("expected a ConversationList, got %v", resp)
	}
	return l
}

// convEntry describes one entry as the tests compare it: "peer:NAME" or
// "group:NAME", then last seq, read seq, unread and the last text.
func convEntry(c *chatpb.ConversationSummary) string {
	who := "peer:" + c.PeerUsername
	if c.GroupId != 0 {
		who = "group:" + c.GroupName
	}
	return fmt.Sprintf("%s last=%d read=%d unread=%d %q", who, c.LastSeq, c.ReadSeq, c.Unread, c.GetLastMessage().GetText())
}

func convEntries(l *chatpb.ConversationList) []string {
	var out []string
	for _, c := range l.Conversations {
		out = append(out, convEntry(c))
	}
	return out
}

// ListConversations over the wire, on one node and across two: names
// from the caller's side, newest first, unread counts that follow
// MarkRead, the limit, and the errors.
func TestConversationListOverTheWire(t *testing.T) {
	run := func(t *testing.T, a, b *testServer) {
		alice, aliceOK := a.user(t, "alice")
		bob, bobOK := b.user(t, "bob")
		carol, carolOK := a.user(t, "carol")
		dave, _ := b.user(t, "dave")
		// Sends a millisecond apart at least, so send times order them.
		step := func() { time.Sleep(3 * time.Millisecond) }
		for _, text := range []string{"one", "two"} {
			expectOK(t, alice.do(sendTo("bob", text)))
			bob.nextMessage()
			step()
		}
		expectOK(t, bob.do(sendTo("alice", "three")))
		alice.nextMessage()
		step()
		expectOK(t, carol.do(sendTo("alice", "a stranger says hi"))) // no friendship needed
		alice.nextMessage()
		step()
		gid := alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "club"}}}).GetGroupCreated().GetGroupId()
		expectOK(t, bob.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}))
		expectOK(t, alice.do(sendGroup(gid, "welcome")))
		bob.nextMessage()

		l := convList(t, alice, 0)
		// Sending marks read: alice sent seqs 1-2 to bob and the welcome.
		want := []string{`group:club last=1 read=1 unread=0 "welcome"`, `peer:carol last=1 read=0 unread=1 "a stranger says hi"`,
			`peer:bob last=3 read=2 unread=1 "three"`}
		if got := convEntries(l); !slices.Equal(got, want) || l.HasMore {
			t.Fatalf("alice's list\n%s\nmore %v; want\n%s", strings.Join(got, "\n"), l.HasMore, strings.Join(want, "\n"))
		}
		if c := l.Conversations[0]; c.GroupId != gid || c.PeerUserId != 0 {
			t.Fatalf("the group's entry: %v", c)
		}
		if c := l.Conversations[1]; c.PeerUserId != carolOK.UserId || c.LastMessage.FromUserId != carolOK.UserId || c.LastMessage.Seq != 1 {
			t.Fatalf("carol's entry: %v", c)
		}
		if c := l.Conversations[2]; c.PeerUserId != bobOK.UserId {
			t.Fatalf("bob's entry: %v", c)
		}
		// Bob, on the other node, sees the same conversations from his side.
		l = convList(t, bob, 0)
		want = []string{`group:club last=1 read=0 unread=1 "welcome"`, `peer:alice last=3 read=3 unread=0 "three"`}
		if got := convEntries(l); !slices.Equal(got, want) {
			t.Fatalf("bob's list\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		expectOK(t, bob.do(&chatpb.Frame{Body: &chatpb.Frame_MarkRead{MarkRead: &chatpb.MarkRead{GroupId: gid, UpToSeq: 1}}}))
		l = convList(t, bob, 0)
		want = []string{`group:club last=1 read=1 unread=0 "welcome"`, `peer:alice last=3 read=3 unread=0 "three"`}
		if got := convEntries(l); !slices.Equal(got, want) {
			t.Fatalf("bob's list\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if c := l.Conversations[1]; c.PeerUserId != aliceOK.UserId {
			t.Fatalf("bob's entry for alice: %v", c)
		}

		if l := convList(t, alice, 2); len(l.Conversations) != 2 || !l.HasMore {
			t.Fatalf("limit 2: %v", convEntries(l))
		}
		if l := convList(t, alice, 500); len(l.Conversations) != 3 || l.HasMore {
			t.Fatalf("limit 500: %v", convEntries(l))
		}
		if l := convList(t, dave, 0); len(l.Conversations) != 0 || l.HasMore {
			t.Fatalf("dave has no conversations: %v", convEntries(l))
		}
		expectCode(t, alice.do(listConvsReq(501)), codeInvalid)
		expectCode(t, dial(t, a.addr).do(listConvsReq(0)), codeUnauth)
	}
	onOneNodeAndTwo(t, run)
}

// A message that got SendOK is in the sender's and the recipient's lists
// right after, wherever each is connected: the embedded store copies the
// message log first, the Redis one indexes in the append.
func TestConversationListHasEverySentMessage(t *testing.T) {
	run := func(t *testing.T, a, b *testServer) {
		type user struct {
			rc   *rawConn
			id   uint64
			name string
		}
		var us []user
		for i, name := range []string{"ann", "ben", "cid", "dan"} {
			node := a
			if i%2 == 1 {
				node = b
			}
			rc, ok := node.user(t, name)
			us = append(us, user{rc, ok.UserId, name})
		}
		gid := us[0].rc.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "all"}}}).GetGroupCreated().GetGroupId()
		for _, u := range us[1:] {
			expectOK(t, u.rc.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}))
		}
		has := func(who user, ok *chatpb.SendOK, peer uint64, group bool) {
			t.Helper()
			for _, c := range convList(t, who.rc, 500).Conversations {
				if (group && c.GroupId == gid) || (!group && c.GroupId == 0 && c.PeerUserId == peer) {
					if c.GetLastMessage().GetMsgId() != ok.MsgId || c.LastSeq != ok.Seq {
						t.Fatalf("%s's entry after SendOK %v: %v", who.name, ok, c)
					}
					return
				}
			}
			t.Fatalf("%s's list after SendOK %v lacks the conversation", who.name, ok)
		}
		for i := range 24 {
			from, to := us[i%4], us[(i/4+i+1)%4]
			if from.id == to.id {
				to = us[(i+2)%4]
			}
			if i%6 == 5 {
				resp := from.rc.do(sendGroup(gid, fmt.Sprint("g", i)))
				expectOK(t, resp)
				has(from, resp.GetSendOk(), 0, true)
				has(to, resp.GetSendOk(), 0, true)
				continue
			}
			resp := from.rc.do(sendTo(to.name, fmt.Sprint(i)))
			expectOK(t, resp)
			has(from, resp.GetSendOk(), to.id, false)
			has(to, resp.GetSendOk(), from.id, false)
		}
	}
	onOneNodeAndTwo(t, run)
}
