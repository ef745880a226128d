package server

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

// convRow is what a test checks of one list entry.
type convRow struct {
	name                     string // peer username or group name
	last, read, joined, left uint64 // last seq, read seq, join point, unread
	text                     string // the last message's text ("": none)
}

func rowsOf(list []ConversationSummary) []convRow {
	out := make([]convRow, 0, len(list))
	for _, cs := range list {
		r := convRow{name: cs.Name, last: cs.LastSeq, read: cs.ReadSeq, joined: cs.JoinedSeq, left: cs.Unread}
		if cs.Last != nil {
			r.text = cs.Last.Text
		}
		out = append(out, r)
	}
	return out
}

// listOf lists uid's conversations and checks what every list must hold:
// each entry agrees with LastSeq and with History's latest page as uid
// sees it (from the join point in a group), and is named from uid's side.
func listOf(t *testing.T, s Store, uid uint64, limit int) ([]ConversationSummary, bool) {
	t.Helper()
	ctx := context.Background()
	list, more, err := s.ListConversations(ctx, uid, limit)
	if err != nil {
		t.Fatalf("ListConversations(%d): %v", uid, err)
	}
	for _, cs := range list {
		if last, err := s.LastSeq(ctx, cs.Conv); err != nil || last < cs.LastSeq {
			t.Fatalf("%s: last seq %d, LastSeq %d, %v", cs.Name, cs.LastSeq, last, err)
		}
		page, err := s.History(ctx, HistoryQuery{Conv: cs.Conv, Newest: true, Limit: 1, Floor: cs.JoinedSeq})
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case cs.Last == nil && len(page.Messages) != 0:
			t.Fatalf("%s: no last message, History has seq %d", cs.Name, page.Messages[0].Seq)
		case cs.Last != nil && (len(page.Messages) != 1 || page.Messages[0].MsgId != cs.Last.MsgId):
			t.Fatalf("%s: last message seq %d, History's latest %v", cs.Name, cs.Last.Seq, page.Messages)
		case cs.Last != nil && ConversationOf(cs.Last) != cs.Conv:
			t.Fatalf("%s: last message of another conversation: %+v", cs.Name, cs.Last)
		}
		if cs.Conv.GroupID == 0 && cs.Conv.A != uid && cs.Conv.B != uid {
			t.Fatalf("user %d lists a conversation not theirs: %+v", uid, cs.Conv)
		}
	}
	return list, more
}

// testConvListConformance is the conversation list contract every Store
// meets: the index, the order, the limit, the unread counts, group join
// points, retention, and that nothing appended is missing.
func testConvListConformance(t *testing.T, open historyFactory) {
	ctx := context.Background()
	// send appends a message sent at a time (never earlier than the
	// store's last one: ids come from one generator per store). A group
	// message goes to nobody's inbox: the list must not depend on it.
	var gensMu sync.Mutex
	gens := map[Store]*msgIDGen{}
	send := func(t *testing.T, s Store, from User, to, gid uint64, text string, at time.Time) *chatpb.Message {
		t.Helper()
		gensMu.Lock()
		ids := gens[s]
		if ids == nil {
			ids = newMsgIDGen(0)
			gens[s] = ids
		}
		gensMu.Unlock()
		m := &chatpb.Message{FromUserId: from.ID, FromUsername: from.Name, ToUserId: to, GroupId: gid, Text: text}
		m.MsgId, m.SentAtMs = ids.next(at)
		var recipients []uint64
		if to != 0 {
			recipients = []uint64{to}
		}
		if _, err := s.AppendMessage(ctx, m, recipients, ""); err != nil {
			t.Fatal(err)
		}
		return m
	}
	users := func(t *testing.T, s Store, names ...string) []User {
		t.Helper()
		var out []User
		for _, n := range names {
			u, err := s.CreateUser(ctx, n, nil)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, u)
		}
		return out
	}

	t.Run("a 1:1 conversation is listed for both users from its first message", func(t *testing.T) {
		s := open(t, HistoryLimits{})
		us := users(t, s, "ann", "ben", "cid")
		a, b, c := us[0], us[1], us[2]
		for _, u := range us {
			if list, more := listOf(t, s, u.ID, 10); len(list) != 0 || more {
				t.Fatalf("%s lists %v before any message", u.Name, rowsOf(list))
			}
		}
		now := time.Now()
		send(t, s, a, b.ID, 0, "hi ben", now)
		want := []convRow{{name: "ben", last: 1, left: 1, text: "hi ben"}}
		if list, _ := listOf(t, s, a.ID, 10); !slices.Equal(rowsOf(list), want) {
			t.Fatalf("the sender's list %v, want %v", rowsOf(list), want)
		}
		want = []convRow{{name: "ann", last: 1, left: 1, text: "hi ben"}}
		if list, _ := listOf(t, s, b.ID, 10); !slices.Equal(rowsOf(list), want) {
			t.Fatalf("the recipient's list %v, want %v", rowsOf(list), want)
		}
		if list, _ := listOf(t, s, c.ID, 10); len(list) != 0 {
			t.Fatalf("a bystander lists %v", rowsOf(list))
		}
		// The other direction is the same conversation; a stranger's
		// message (no friendship needed) starts another.
		send(t, s, b, a.ID, 0, "hi ann", now.Add(time.Second))
		send(t, s, c, b.ID, 0, "who are you", now.Add(2*time.Second))
		want = []convRow{{name: "cid", last: 1, left: 1, text: "who are you"}, {name: "ann", last: 2, left: 2, text: "hi ann"}}
		list, _ := listOf(t, s, b.ID, 10)
		if !slices.Equal(rowsOf(list), want) {
			t.Fatalf("ben's list %v, want %v", rowsOf(list), want)
		}
		if list[0].Peer(b.ID) != c.ID || list[1].Peer(b.ID) != a.ID || list[1].Conv != DirectConversation(a.ID, b.ID) {
			t.Fatalf("ben's peers: %+v", list)
		}
		want = []convRow{{name: "ben", last: 1, left: 1, text: "who are you"}}
		if list, _ := listOf(t, s, c.ID, 10); !slices.Equal(rowsOf(list), want) {
			t.Fatalf("cid's list %v, want %v", rowsOf(list), want)
		}
		// A conversation with oneself is listed once.
		send(t, s, c, c.ID, 0, "note to self", now.Add(3*time.Second))
		list, _ = listOf(t, s, c.ID, 10)
		if len(list) != 2 || list[0].Name != "cid" || list[0].Peer(c.ID) != c.ID || list[0].LastSeq != 1 {
			t.Fatalf("cid's list with a note to self: %v", rowsOf(list))
		}
	})

	t.Run("newest first, then by last seq; the limit keeps the newest", func(t *testing.T) {
		s := open(t, HistoryLimits{})
		us := users(t, s, "ann", "ben", "cid", "dan", "eve")
		a, b, c, d, e := us[0], us[1], us[2], us[3], us[4]
		g, err := s.CreateGroup(ctx, a.ID, "club", "", Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateGroup(ctx, a.ID, "silent", "", Limits{}); err != nil {
			t.Fatal(err)
		}
		base := time.Now().Add(-time.Hour)
		at := func(sec int) time.Time { return base.Add(time.Duration(sec) * time.Second) }
		send(t, s, a, b.ID, 0, "b1", at(1))
		send(t, s, c, a.ID, 0, "c1", at(2))
		send(t, s, a, 0, g.ID, "g1", at(3))
		send(t, s, a, b.ID, 0, "b2", at(4))
		send(t, s, d, a.ID, 0, "d1", at(5))
		// Sent in the same millisecond: the higher last seq first.
		send(t, s, a, e.ID, 0, "e1", at(6))
		send(t, s, a, c.ID, 0, "c2", at(6))
		// The empty group is not listed: it has no last seq.
		want := []string{"cid", "eve", "dan", "ben", "club"}
		list, more := listOf(t, s, a.ID, 10)
		var got []string
		for _, cs := range list {
			got = append(got, cs.Name)
		}
		if !slices.Equal(got, want) || more {
			t.Fatalf("order %v more %v, want %v", got, more, want)
		}
		if list[0].Last.Text != "c2" || list[3].LastSeq != 2 || list[4].Conv != GroupConversation(g.ID) || list[4].Last.Text != "g1" {
			t.Fatalf("entries: %v", rowsOf(list))
		}
		for limit := 1; limit <= 6; limit++ {
			short, more := listOf(t, s, a.ID, limit)
			n := min(limit, len(want))
			if len(short) != n || more != (limit < len(want)) || !slices.Equal(rowsOf(short), rowsOf(list[:n])) {
				t.Fatalf("limit %d: %v more %v; want the first %d of %v", limit, rowsOf(short), more, n, rowsOf(list))
			}
		}
	})

	t.Run("unread is last seq less read seq, never negative", func(t *testing.T) {
		s := open(t, HistoryLimits{})
		us := users(t, s, "ann", "ben")
		a, b := us[0], us[1]
		conv := DirectConversation(a.ID, b.ID)
		for i := range 3 {
			send(t, s, a, b.ID, 0, fmt.Sprint(i), time.Now())
		}
		for _, st := range []struct{ mark, read, unread uint64 }{{0, 0, 3}, {2, 2, 1}, {1, 2, 1}, {99, 3, 0}} {
			if st.mark > 0 {
				if _, _, err := s.MarkRead(ctx, b.ID, conv, st.mark); err != nil {
					t.Fatal(err)
				}
			}
			list, _ := listOf(t, s, b.ID, 10)
			if len(list) != 1 || list[0].ReadSeq != st.read || list[0].Unread != st.unread {
				t.Fatalf("after MarkRead(%d): %v; want read %d, unread %d", st.mark, rowsOf(list), st.read, st.unread)
			}
		}
		// Each user's read seq is their own: ann (who sent all three)
		// has read none of them.
		if list, _ := listOf(t, s, a.ID, 10); len(list) != 1 || list[0].ReadSeq != 0 || list[0].Unread != 3 {
			t.Fatalf("ann's list %v", rowsOf(list))
		}
		send(t, s, b, a.ID, 0, "reply", time.Now())
		if list, _ := listOf(t, s, b.ID, 10); len(list) != 1 || list[0].Unread != 1 || list[0].Last.Text != "reply" {
			t.Fatalf("ben's list after his reply: %v", rowsOf(list))
		}
	})

	t.Run("a group member sees it from their join point", func(t *testing.T) {
		s := open(t, HistoryLimits{})
		us := users(t, s, "ann", "ben", "cid")
		a, b, c := us[0], us[1], us[2]
		g, err := s.CreateGroup(ctx, a.ID, "club", "", Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if list, _ := listOf(t, s, a.ID, 10); len(list) != 0 {
			t.Fatalf("a group without messages is listed: %v", rowsOf(list))
		}
		for i := 1; i <= 3; i++ {
			send(t, s, a, 0, g.ID, fmt.Sprint("g", i), time.Now())
		}
		if err := s.JoinGroup(ctx, g.ID, b.ID, Limits{}); err != nil {
			t.Fatal(err)
		}
		// Ben joined at 3: the group is his conversation at once, with
		// nothing for him to see or read yet.
		want := []convRow{{name: "club", last: 3, joined: 3}}
		if list, _ := listOf(t, s, b.ID, 10); !slices.Equal(rowsOf(list), want) {
			t.Fatalf("ben's list on joining %v, want %v", rowsOf(list), want)
		}
		send(t, s, a, 0, g.ID, "g4", time.Now())
		want = []convRow{{name: "club", last: 4, joined: 3, left: 1, text: "g4"}}
		if list, _ := listOf(t, s, b.ID, 10); !slices.Equal(rowsOf(list), want) {
			t.Fatalf("ben's list %v, want %v", rowsOf(list), want)
		}
		// A read seq below the join point counts as the join point.
		if _, _, err := s.MarkRead(ctx, b.ID, GroupConversation(g.ID), 2); err != nil {
			t.Fatal(err)
		}
		want = []convRow{{name: "club", last: 4, read: 2, joined: 3, left: 1, text: "g4"}}
		if list, _ := listOf(t, s, b.ID, 10); !slices.Equal(rowsOf(list), want) {
			t.Fatalf("ben's list after reading below his join point %v, want %v", rowsOf(list), want)
		}
		want = []convRow{{name: "club", last: 4, left: 4, text: "g4"}}
		if list, _ := listOf(t, s, a.ID, 10); !slices.Equal(rowsOf(list), want) {
			t.Fatalf("ann's list %v, want %v", rowsOf(list), want)
		}
		if list, _ := listOf(t, s, c.ID, 10); len(list) != 0 {
			t.Fatalf("a non-member lists %v", rowsOf(list))
		}
		if err := s.LeaveGroup(ctx, g.ID, b.ID); err != nil {
			t.Fatal(err)
		}
		if list, _ := listOf(t, s, b.ID, 10); len(list) != 0 {
			t.Fatalf("ben lists the group he left: %v", rowsOf(list))
		}
	})

	t.Run("a conversation whose messages retention dropped stays, without a last message", func(t *testing.T) {
		s := open(t, HistoryLimits{MaxMessages: 2, MaxAge: time.Hour})
		us := users(t, s, "ann", "ben", "cid")
		a, b, c := us[0], us[1], us[2]
		send(t, s, a, b.ID, 0, "old 1", time.Now().Add(-2*time.Hour))
		send(t, s, a, b.ID, 0, "old 2", time.Now().Add(-2*time.Hour))
		for i := range 5 {
			send(t, s, a, c.ID, 0, fmt.Sprint("new ", i), time.Now())
		}
		want := []convRow{{name: "cid", last: 5, left: 5, text: "new 4"}, {name: "ben", last: 2, left: 2}}
		if list, _ := listOf(t, s, a.ID, 10); !slices.Equal(rowsOf(list), want) {
			t.Fatalf("ann's list %v, want %v", rowsOf(list), want)
		}
	})

	t.Run("every appended message is in both users' lists at once", func(t *testing.T) {
		s := open(t, HistoryLimits{})
		us := users(t, s, "ann", "ben", "cid", "dan")
		a := us[0]
		g, err := s.CreateGroup(ctx, a.ID, "club", "", Limits{})
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range us[1:] {
			if err := s.JoinGroup(ctx, g.ID, u.ID, Limits{}); err != nil {
				t.Fatal(err)
			}
		}
		ids := newMsgIDGen(3)
		// Concurrent senders, each checking right after its append that
		// both sides list the conversation with the message or a later
		// one (the group has other senders).
		var wg sync.WaitGroup
		var fails atomic.Int32
		for i, from := range us[1:] {
			wg.Go(func() {
				for n := range 20 {
					to, gid := a.ID, uint64(0)
					if n%4 == 3 {
						to, gid = 0, g.ID
					}
					m := &chatpb.Message{FromUserId: from.ID, FromUsername: from.Name, ToUserId: to, GroupId: gid, Text: fmt.Sprint(i, n)}
					m.MsgId, m.SentAtMs = ids.next(time.Now())
					recipients := []uint64{to}
					if gid != 0 {
						recipients = nil
						for _, u := range us {
							if u.ID != from.ID {
								recipients = append(recipients, u.ID)
							}
						}
					}
					if _, err := s.AppendMessage(ctx, m, recipients, ""); err != nil {
						t.Error(err)
						return
					}
					for _, uid := range []uint64{from.ID, a.ID} {
						list, _, err := s.ListConversations(ctx, uid, 500)
						if err != nil {
							t.Error(err)
							return
						}
						i := slices.IndexFunc(list, func(cs ConversationSummary) bool { return cs.Conv == ConversationOf(m) })
						if i < 0 || list[i].LastSeq < m.Seq || list[i].Last == nil || list[i].Last.Seq < m.Seq {
							if fails.Add(1) < 5 {
								t.Errorf("user %d's list after seq %d of %v: %v", uid, m.Seq, ConversationOf(m), rowsOf(list))
							}
						}
					}
				}
			})
		}
		wg.Wait()
	})
}

func TestBoltConversationListConformance(t *testing.T) {
	testConvListConformance(t, func(t *testing.T, lim HistoryLimits) Store {
		s, err := OpenBoltStore(BoltConfig{Path: filepath.Join(t.TempDir(), "test.db"), History: lim})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestRedisConversationListConformance(t *testing.T) {
	forEachRedis(t, func(t *testing.T, rb *redisBackend) {
		testConvListConformance(t, func(t *testing.T, lim HistoryLimits) Store {
			s := NewRedisStore(RedisConfig{Client: rb.client, Prefix: rb.newPrefix(), History: lim})
			t.Cleanup(func() { s.Close() })
			return s
		})
	})
}
