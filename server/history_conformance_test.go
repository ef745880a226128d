package server

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

// historyFactory opens a fresh, empty store keeping history within lim.
type historyFactory func(t *testing.T, lim HistoryLimits) Store

// testHistoryConformance is the conversation contract every Store meets:
// seqs, history paging, join points and retention.
func testHistoryConformance(t *testing.T, open historyFactory) {
	ctx := context.Background()
	seqsOf := func(msgs []*chatpb.Message) []uint64 {
		out := make([]uint64, 0, len(msgs))
		for _, m := range msgs {
			out = append(out, m.Seq)
		}
		return out
	}
	direct := func(ids *msgIDGen, from, to User, text string) *chatpb.Message {
		m := testMessage(ids, from, text)
		m.ToUserId = to.ID
		return m
	}

	t.Run("seqs count each conversation from 1 without gaps", func(t *testing.T) {
		s := open(t, HistoryLimits{})
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		c, _ := s.CreateUser(ctx, "c", nil)
		ids := newMsgIDGen(1)
		for i, pair := range [][2]User{{a, b}, {b, a}, {a, b}, {a, c}, {b, a}} {
			m := direct(ids, pair[0], pair[1], fmt.Sprint(i))
			res, err := s.AppendMessage(ctx, m, []uint64{pair[1].ID}, "")
			if err != nil {
				t.Fatal(err)
			}
			want := map[int]uint64{0: 1, 1: 2, 2: 3, 3: 1, 4: 4}[i]
			if m.Seq != want || res.Message.Seq != want {
				t.Fatalf("message %d: seq %d (result %d), want %d", i, m.Seq, res.Message.Seq, want)
			}
		}
		// A retry with the same client_msg_id is the first message, seq
		// and all, and takes no seq.
		first := direct(ids, a, b, "once")
		if _, err := s.AppendMessage(ctx, first, []uint64{b.ID}, "k1"); err != nil {
			t.Fatal(err)
		}
		res, err := s.AppendMessage(ctx, direct(ids, a, b, "once"), []uint64{b.ID}, "k1")
		if err != nil || !res.Duplicate || res.Message.Seq != first.Seq {
			t.Fatalf("duplicate = %+v, %v; want the first's seq %d", res, err, first.Seq)
		}
		next := direct(ids, a, b, "after")
		if _, err := s.AppendMessage(ctx, next, []uint64{b.ID}, ""); err != nil || next.Seq != first.Seq+1 {
			t.Fatalf("after a duplicate: seq %d, %v; want %d", next.Seq, err, first.Seq+1)
		}
		if last, err := s.LastSeq(ctx, DirectConversation(b.ID, a.ID)); err != nil || last != next.Seq {
			t.Fatalf("LastSeq = %d, %v; want %d", last, err, next.Seq)
		}
		if last, _ := s.LastSeq(ctx, GroupConversation(77)); last != 0 {
			t.Fatalf("LastSeq of an empty conversation = %d", last)
		}
		// The inbox copy carries the seq too.
		inbox, err := s.Inbox(ctx, b.ID, 0, 100)
		if err != nil || len(inbox) == 0 || inbox[0].Seq != 1 || inbox[len(inbox)-1].Seq != next.Seq {
			t.Fatalf("inbox seqs %v, %v", seqsOf(inbox), err)
		}
	})

	t.Run("concurrent sends get every seq once", func(t *testing.T) {
		s := open(t, HistoryLimits{})
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		ids := newMsgIDGen(1)
		const n = 200
		got := make(chan uint64, n)
		var wg sync.WaitGroup
		for i := range n {
			from, to := a, b
			if i%2 == 1 {
				from, to = b, a
			}
			m := direct(ids, from, to, fmt.Sprint(i))
			wg.Go(func() {
				if _, err := s.AppendMessage(ctx, m, []uint64{to.ID}, ""); err != nil {
					t.Error(err)
				}
				got <- m.Seq
			})
		}
		wg.Wait()
		close(got)
		var seqs []uint64
		for q := range got {
			seqs = append(seqs, q)
		}
		slices.Sort(seqs)
		for i, q := range seqs {
			if q != uint64(i+1) {
				t.Fatalf("seqs %v... are not 1..%d", seqs[:min(len(seqs), i+3)], n)
			}
		}
		page, err := s.History(ctx, HistoryQuery{Conv: DirectConversation(a.ID, b.ID), Limit: n})
		if err != nil || len(page.Messages) != n || page.HasMore {
			t.Fatalf("history of %d: %d messages, more %v, %v", n, len(page.Messages), page.HasMore, err)
		}
	})

	t.Run("pages neither repeat nor skip", func(t *testing.T) {
		s := open(t, HistoryLimits{})
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		ids := newMsgIDGen(1)
		for i := range 10 {
			if _, err := s.AppendMessage(ctx, direct(ids, a, b, fmt.Sprint(i+1)), []uint64{b.ID}, ""); err != nil {
				t.Fatal(err)
			}
		}
		conv := DirectConversation(a.ID, b.ID)
		type step struct {
			q    HistoryQuery
			want []uint64
			more bool
		}
		for _, st := range []step{
			{HistoryQuery{Newest: true, Limit: 3}, []uint64{10, 9, 8}, true},
			{HistoryQuery{Newest: true, Before: 8, Limit: 3}, []uint64{7, 6, 5}, true},
			{HistoryQuery{Newest: true, Before: 5, Limit: 3}, []uint64{4, 3, 2}, true},
			{HistoryQuery{Newest: true, Before: 2, Limit: 3}, []uint64{1}, false},
			{HistoryQuery{Newest: true, Before: 1, Limit: 3}, []uint64{}, false},
			{HistoryQuery{After: 0, Limit: 4}, []uint64{1, 2, 3, 4}, true},
			{HistoryQuery{After: 4, Limit: 4}, []uint64{5, 6, 7, 8}, true},
			{HistoryQuery{After: 8, Limit: 4}, []uint64{9, 10}, false},
			{HistoryQuery{After: 10, Limit: 4}, []uint64{}, false},
			{HistoryQuery{After: 99, Limit: 4}, []uint64{}, false},
			// A group member who joined at seq 4 sees from 5 on.
			{HistoryQuery{Newest: true, Before: 7, Limit: 5, Floor: 4}, []uint64{6, 5}, false},
			{HistoryQuery{After: 0, Limit: 2, Floor: 4}, []uint64{5, 6}, true},
			{HistoryQuery{After: 2, Limit: 20, Floor: 4}, []uint64{5, 6, 7, 8, 9, 10}, false},
		} {
			q := st.q
			q.Conv = conv
			page, err := s.History(ctx, q)
			if err != nil {
				t.Fatalf("%+v: %v", q, err)
			}
			if got := seqsOf(page.Messages); !slices.Equal(got, st.want) || page.HasMore != st.more {
				t.Fatalf("%+v: seqs %v more %v, want %v more %v", q, got, page.HasMore, st.want, st.more)
			}
			for _, m := range page.Messages {
				if m.Text != fmt.Sprint(m.Seq) || m.FromUserId != a.ID || m.ToUserId != b.ID {
					t.Fatalf("seq %d holds %+v", m.Seq, m)
				}
			}
		}
	})

	t.Run("a member sees the group from when they joined", func(t *testing.T) {
		s := open(t, HistoryLimits{})
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		g, err := s.CreateGroup(ctx, a.ID, "g", "", Limits{})
		if err != nil {
			t.Fatal(err)
		}
		ids := newMsgIDGen(1)
		for i := range 3 {
			m := testMessage(ids, a, fmt.Sprint(i))
			m.GroupId = g.ID
			if _, err := s.AppendMessage(ctx, m, nil, ""); err != nil || m.Seq != uint64(i+1) {
				t.Fatalf("group message %d: seq %d, %v", i, m.Seq, err)
			}
		}
		if err := s.JoinGroup(ctx, g.ID, b.ID, Limits{}); err != nil {
			t.Fatal(err)
		}
		got, err := s.Group(ctx, g.ID)
		if err != nil {
			t.Fatal(err)
		}
		joined := map[uint64]uint64{}
		for _, m := range got.Members {
			joined[m.UserID] = m.JoinedSeq
		}
		if joined[a.ID] != 0 || joined[b.ID] != 3 {
			t.Fatalf("joined seqs %v; want creator 0, b 3", joined)
		}
		groups, err := s.GroupsOf(ctx, b.ID)
		if err != nil || len(groups) != 1 || groups[0].Members[1].JoinedSeq != 3 {
			t.Fatalf("GroupsOf = %+v, %v", groups, err)
		}
	})

	t.Run("read seqs only move forward, up to the last seq", func(t *testing.T) {
		s := open(t, HistoryLimits{})
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		ids := newMsgIDGen(1)
		for i := range 5 {
			if _, err := s.AppendMessage(ctx, direct(ids, a, b, fmt.Sprint(i)), []uint64{b.ID}, ""); err != nil {
				t.Fatal(err)
			}
		}
		conv := DirectConversation(a.ID, b.ID)
		for _, st := range []struct {
			upTo, want uint64
			moved      bool
		}{{3, 3, true}, {2, 3, false}, {3, 3, false}, {99, 5, true}, {4, 5, false}} {
			seq, moved, err := s.MarkRead(ctx, b.ID, conv, st.upTo)
			if err != nil || seq != st.want || moved != st.moved {
				t.Fatalf("MarkRead(%d) = %d, %v, %v; want %d, %v", st.upTo, seq, moved, err, st.want, st.moved)
			}
		}
		if seq, err := s.ReadSeq(ctx, b.ID, conv); err != nil || seq != 5 {
			t.Fatalf("ReadSeq = %d, %v", seq, err)
		}
		// Each user's read state is their own, per conversation.
		if seq, _ := s.ReadSeq(ctx, a.ID, conv); seq != 0 {
			t.Fatalf("a's read seq moved with b's: %d", seq)
		}
		if seq, moved, err := s.MarkRead(ctx, b.ID, GroupConversation(9), 3); err != nil || seq != 0 || moved {
			t.Fatalf("MarkRead of an empty conversation = %d, %v, %v", seq, moved, err)
		}
	})

	t.Run("retention keeps the latest messages", func(t *testing.T) {
		s := open(t, HistoryLimits{MaxMessages: 5, MaxAge: time.Hour})
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		conv := DirectConversation(a.ID, b.ID)
		old := newMsgIDGen(1)
		for i := range 2 { // sent two hours ago: past MaxAge
			m := &chatpb.Message{FromUserId: a.ID, FromUsername: a.Name, ToUserId: b.ID, Text: fmt.Sprint("old", i)}
			m.MsgId, m.SentAtMs = old.next(time.Now().Add(-2 * time.Hour))
			if _, err := s.AppendMessage(ctx, m, []uint64{b.ID}, ""); err != nil {
				t.Fatal(err)
			}
		}
		ids := newMsgIDGen(2)
		for i := range 8 {
			if _, err := s.AppendMessage(ctx, direct(ids, a, b, fmt.Sprint(i)), []uint64{b.ID}, ""); err != nil {
				t.Fatal(err)
			}
		}
		// Seqs go on from the trimmed ones: 1-2 (too old), 3-10; the
		// latest 5 are 6-10.
		page, err := s.History(ctx, HistoryQuery{Conv: conv, Newest: true, Limit: 20})
		if err != nil {
			t.Fatal(err)
		}
		if got := seqsOf(page.Messages); !slices.Equal(got, []uint64{10, 9, 8, 7, 6}) || page.HasMore {
			t.Fatalf("kept seqs %v more %v; want 10..6 and no more", got, page.HasMore)
		}
		page, err = s.History(ctx, HistoryQuery{Conv: conv, After: 0, Limit: 2})
		if err != nil || !slices.Equal(seqsOf(page.Messages), []uint64{6, 7}) || !page.HasMore {
			t.Fatalf("from the start: %v more %v, %v", seqsOf(page.Messages), page.HasMore, err)
		}
		if last, _ := s.LastSeq(ctx, conv); last != 10 {
			t.Fatalf("LastSeq after trimming = %d, want 10", last)
		}
	})
}
