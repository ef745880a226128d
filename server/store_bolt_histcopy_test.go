package server

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The history copy waits for its conversation's turn (historyCopyPeriod),
// apart from the inbox copy. These tests hold it back altogether
// (historyPeriod -1: only History, backpressure and Close copy) to check
// that nothing depends on it having happened.

func openHistoryDeferred(t *testing.T, cfg BoltConfig) *BoltStore {
	t.Helper()
	if cfg.Path == "" {
		cfg.Path = filepath.Join(t.TempDir(), "test.db")
	}
	if cfg.historyPeriod == 0 {
		cfg.historyPeriod = -1
	}
	s, err := OpenBoltStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// walPoints reads how far bbolt says the inbox copy and the whole copy
// have gone.
func walPoints(t *testing.T, s *BoltStore) (applied, inbox walPos) {
	t.Helper()
	if err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		applied, inbox = parseWALPos(meta.Get(keyWALApplied)), parseWALPos(meta.Get(keyWALInbox))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return applied, inbox
}

// storedInboxCount is the inbox_count bbolt holds for uid.
func storedInboxCount(t *testing.T, s *BoltStore, uid uint64) uint64 {
	t.Helper()
	var n uint64
	if err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketInboxCount).Get(u64(uid)); len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// A message whose history copy has not happened is in History as soon as
// its send returned, and counts for LastSeq and MarkRead; History copies
// only its own conversation.
func TestBoltHistoryDeferredCopyIsReadAtOnce(t *testing.T) {
	ctx := context.Background()
	s := openHistoryDeferred(t, BoltConfig{})
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	c, _ := s.CreateUser(ctx, "c", nil)
	g, err := s.CreateGroup(ctx, a.ID, "g", "", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	ab, ac, group := DirectConversation(a.ID, b.ID), DirectConversation(a.ID, c.ID), GroupConversation(g.ID)
	ids := newMsgIDGen(0)
	for q := uint64(1); q <= 5; q++ {
		sendText(t, s, ids, a, b.ID, 0, q)
	}
	for q := uint64(1); q <= 3; q++ {
		sendText(t, s, ids, c, a.ID, 0, q)
		sendText(t, s, ids, a, 0, g.ID, q)
	}
	for _, conv := range []Conversation{ab, ac, group} {
		if n := convLogKeys(t, s, conv); n != 0 {
			t.Fatalf("%v: %d messages copied before anything asked", conv, n)
		}
	}
	if last, err := s.LastSeq(ctx, ac); err != nil || last != 3 {
		t.Fatalf("LastSeq before the copy = %d, %v; want 3", last, err)
	}
	if seq, moved, err := s.MarkRead(ctx, c.ID, ac, 100); err != nil || seq != 3 || !moved {
		t.Fatalf("MarkRead(100) before the copy = %d, %v, %v; want 3, moved", seq, moved, err)
	}
	if got := historySeqs(t, s, ab); !slices.Equal(got, seqRange(1, 5)) {
		t.Fatalf("history right after the sends: %v", got)
	}
	if n := convLogKeys(t, s, ab); n != 5 {
		t.Fatalf("History copied %d of its conversation, want 5", n)
	}
	if n := convLogKeys(t, s, ac); n != 0 {
		t.Fatalf("History of one conversation copied %d of another", n)
	}
	sendText(t, s, ids, b, a.ID, 0, 6)
	page, err := s.History(ctx, HistoryQuery{Conv: ab, Newest: true, Limit: 1})
	if err != nil || len(page.Messages) != 1 || page.Messages[0].Seq != 6 || !page.HasMore {
		t.Fatalf("newest page after one more send: %v, %v", page, err)
	}
	if got := historySeqs(t, s, group); !slices.Equal(got, seqRange(1, 3)) {
		t.Fatalf("group history: %v", got)
	}
	if got := historySeqs(t, s, ac); !slices.Equal(got, seqRange(1, 3)) {
		t.Fatalf("history of ac: %v", got)
	}
}

// Sends and History pages at once, the history copy on its period: every
// page holds every seq whose send had returned when the page was asked
// for, with no gap and nothing twice.
func TestBoltHistoryPagesSeeEverySentMessage(t *testing.T) {
	ctx := context.Background()
	s := openHistoryDeferred(t, BoltConfig{historyPeriod: 20 * time.Millisecond})
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	conv := DirectConversation(a.ID, b.ID)
	ids := newMsgIDGen(0)
	var sent atomic.Uint64 // the highest seq whose send returned
	var wg sync.WaitGroup
	for _, from := range []User{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 150 {
				m := testMessage(ids, from, "x")
				m.ToUserId = a.ID + b.ID - from.ID
				if _, err := s.AppendMessage(ctx, m, []uint64{m.ToUserId}, ""); err != nil {
					t.Error(err)
					return
				}
				for {
					old := sent.Load()
					if m.Seq <= old || sent.CompareAndSwap(old, m.Seq) {
						break
					}
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for pages := 0; ; pages++ {
		select {
		case <-done:
			if pages == 0 {
				t.Fatal("no page read while sending")
			}
			return
		default:
		}
		want := sent.Load()
		page, err := s.History(ctx, HistoryQuery{Conv: conv, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range page.Messages {
			if m.Seq != uint64(i+1) {
				t.Fatalf("page %d: message %d has seq %d", pages, i, m.Seq)
			}
		}
		if got := uint64(len(page.Messages)); got < want {
			t.Fatalf("page %d ends at seq %d, but seq %d had been sent", pages, got, want)
		}
	}
}

// A crash after the inbox copy and before the history copy loses no
// history, copies no inbox twice, and the log keeps every segment until
// both copies of everything in it are in bbolt.
func TestBoltHistoryCrashBetweenInboxAndHistoryCopies(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openHistoryDeferred(t, BoltConfig{Path: filepath.Join(dir, "live", "test.db"), segmentSize: 2048})
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	c, _ := s.CreateUser(ctx, "c", nil)
	ab, ac := DirectConversation(a.ID, b.ID), DirectConversation(a.ID, c.ID)
	ids := newMsgIDGen(0)
	// Wholly copied (History, then Inbox): the segments behind go.
	for q := uint64(1); q <= 100; q++ {
		sendText(t, s, ids, a, b.ID, 0, q)
	}
	historySeqs(t, s, ab)
	if got, err := s.Inbox(ctx, b.ID, 0, 1000); err != nil || len(got) != 100 {
		t.Fatalf("b's inbox: %d, %v", len(got), err)
	}
	if segs, err := listSegments(s.logDir()); err != nil || len(segs) != 1 || segs[0] != s.log.pos.seg || segs[0] < 3 {
		t.Fatalf("segments once everything is copied: %v, %v (writing %d)", segs, err, s.log.pos.seg)
	}
	// In the inboxes only: the history copy waits.
	for q := uint64(101); q <= 150; q++ {
		sendText(t, s, ids, a, b.ID, 0, q)
	}
	for q := uint64(1); q <= 30; q++ {
		sendText(t, s, ids, c, a.ID, 0, q)
	}
	if got, err := s.Inbox(ctx, b.ID, 0, 1000); err != nil || len(got) != 150 {
		t.Fatalf("b's inbox: %d, %v", len(got), err)
	}
	if got, err := s.Inbox(ctx, a.ID, 0, 1000); err != nil || len(got) != 30 {
		t.Fatalf("a's inbox: %d, %v", len(got), err)
	}
	if n, m := convLogKeys(t, s, ab), convLogKeys(t, s, ac); n != 100 || m != 0 {
		t.Fatalf("history copied: ab %d, ac %d; want 100 and 0", n, m)
	}
	applied, inbox := walPoints(t, s)
	if inbox != s.log.pos {
		t.Fatalf("inbox copy at %v, log at %v", inbox, s.log.pos)
	}
	s.mem.Lock()
	held := slices.Clone(s.held[s.heldHead:])
	s.mem.Unlock()
	if len(held) != 80 {
		t.Fatalf("%d messages held, want the 80 whose history waits", len(held))
	}
	if !applied.before(held[0].end) {
		t.Fatalf("log copied up to %v, past the first message with history pending (%v)", applied, held[0].end)
	}
	for _, e := range held {
		if _, err := os.Stat(segmentPath(s.logDir(), e.end.seg)); err != nil {
			t.Fatalf("the segment of seq %d (history pending) is gone: %v", e.seq, err)
		}
	}
	if held[0].end.seg == s.log.pos.seg {
		t.Fatal("the test wants the pending history to span segments")
	}

	base := filepath.Join(dir, "base.db")
	if err := s.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(base, 0o600) }); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "img", "test.db")
	crashImage(t, s, base, img)
	r, err := OpenBoltStore(BoltConfig{Path: img})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := historySeqs(t, r, ab); !slices.Equal(got, seqRange(1, 150)) {
		t.Fatalf("ab after the crash: %v", got)
	}
	if got := historySeqs(t, r, ac); !slices.Equal(got, seqRange(1, 30)) {
		t.Fatalf("ac after the crash: %v", got)
	}
	if n, m := convLogKeys(t, r, ab), convLogKeys(t, r, ac); n != 150 || m != 30 {
		t.Fatalf("bbolt after the crash: ab %d, ac %d", n, m)
	}
	// Copied into the inboxes before the crash: not again (a second
	// copy would count them twice).
	for uid, want := range map[uint64]int{b.ID: 150, a.ID: 30} {
		if got, err := r.Inbox(ctx, uid, 0, 1000); err != nil || len(got) != want {
			t.Fatalf("user %d's inbox after the crash: %d messages, %v; want %d", uid, len(got), err, want)
		}
		if n := storedInboxCount(t, r, uid); n != uint64(want) {
			t.Fatalf("user %d's inbox count after the crash: %d, want %d", uid, n, want)
		}
	}
	sendText(t, r, ids, b, a.ID, 0, 151)
	sendText(t, r, ids, a, c.ID, 0, 31)
	if segs, _ := listSegments(img + ".log"); len(segs) != 1 {
		t.Fatalf("segments after recovery: %v", segs)
	}
}

// A crash after the history copy (and retention) and before the inbox
// copy: replay fills the inboxes and leaves the history as it was,
// bringing back nothing retention dropped.
func TestBoltHistoryCrashAfterHistoryCopyBeforeInboxCopy(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var trims atomic.Int64
	lim := HistoryLimits{MaxMessages: 5, MaxAge: -1}
	s := openHistoryDeferred(t, BoltConfig{Path: filepath.Join(dir, "live", "test.db"), History: lim,
		ObserveHistoryTrim: func(n int) { trims.Add(int64(n)) }})
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	ab := DirectConversation(a.ID, b.ID)
	ids := newMsgIDGen(0)
	for q := uint64(1); q <= 12; q++ {
		sendText(t, s, ids, a, b.ID, 0, q)
	}
	if got := historySeqs(t, s, ab); !slices.Equal(got, seqRange(8, 12)) {
		t.Fatalf("history: %v", got)
	}
	if n := convLogKeys(t, s, ab); n != 5 || trims.Load() != 7 {
		t.Fatalf("bbolt keeps %d, %d trimmed; want 5 and 7", n, trims.Load())
	}
	base := filepath.Join(dir, "base.db")
	if err := s.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(base, 0o600) }); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "img", "test.db")
	crashImage(t, s, base, img)
	trims.Store(0)
	r, err := OpenBoltStore(BoltConfig{Path: img, History: lim, ObserveHistoryTrim: func(n int) { trims.Add(int64(n)) }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := historySeqs(t, r, ab); !slices.Equal(got, seqRange(8, 12)) {
		t.Fatalf("history after the crash: %v", got)
	}
	if n := convLogKeys(t, r, ab); n != 5 {
		t.Fatalf("bbolt keeps %d after the crash, want 5", n)
	}
	if got := inboxIDs(t, r, b.ID); len(got) != 12 {
		t.Fatalf("b's inbox after the crash: %d messages, want 12", len(got))
	}
	if n := storedInboxCount(t, r, b.ID); n != 12 {
		t.Fatalf("b's inbox count after the crash: %d", n)
	}
	sendText(t, r, ids, b, a.ID, 0, 13)
	if got := historySeqs(t, r, ab); !slices.Equal(got, seqRange(9, 13)) {
		t.Fatalf("history after one more: %v", got)
	}
}

// On its period, with nothing asking, each conversation's history is
// copied, the messages let go and the log's old segments removed.
func TestBoltHistoryCopiesOnItsPeriod(t *testing.T) {
	ctx := context.Background()
	s := openHistoryDeferred(t, BoltConfig{historyPeriod: 200 * time.Millisecond, segmentSize: 4096})
	a, _ := s.CreateUser(ctx, "a", nil)
	var convs []Conversation
	ids := newMsgIDGen(0)
	for i := range 5 {
		p, err := s.CreateUser(ctx, fmt.Sprint("p", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		convs = append(convs, DirectConversation(a.ID, p.ID))
		for q := uint64(1); q <= 20; q++ {
			sendText(t, s, ids, p, a.ID, 0, q)
		}
	}
	if err := s.Ack(ctx, a.ID, inboxIDs(t, s, a.ID)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mem.Lock()
		held := len(s.held) - s.heldHead
		s.mem.Unlock()
		segs, err := listSegments(s.logDir())
		if err != nil {
			t.Fatal(err)
		}
		copied := true
		for _, conv := range convs {
			copied = copied && convLogKeys(t, s, conv) == 20
		}
		if copied && held == 0 && len(segs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not copied: %d held, segments %v", held, segs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, conv := range convs {
		if got := historySeqs(t, s, conv); !slices.Equal(got, seqRange(1, 20)) {
			t.Fatalf("%v: %v", conv, got)
		}
	}
}

// The log is copied up to the end of the last batch whose messages are
// all copied, both ways: a batch partly copied keeps it before the batch.
func TestBoltAppliedStopsBeforeAPartlyCopiedBatch(t *testing.T) {
	s := &BoltStore{applied: walPos{seg: 1, off: 10}}
	one, two := walPos{seg: 1, off: 100}, walPos{seg: 2, off: 50}
	e1 := &walEntry{end: one, inboxDone: true, histDone: true}
	e2 := &walEntry{end: one, inboxDone: true}
	e3 := &walEntry{end: two, histDone: true}
	s.held = []*walEntry{e1, e2, e3}
	if got := s.appliedAfterLocked(); got != s.applied {
		t.Fatalf("with the first batch's history partly pending: %v", got)
	}
	e2.histTaken = true
	if got := s.appliedAfterLocked(); got != one {
		t.Fatalf("with it in this commit: %v, want %v", got, one)
	}
	e2.histTaken, e2.histDone = false, true
	if got := s.appliedAfterLocked(); got != one {
		t.Fatalf("with the second batch's inbox copy pending: %v, want %v", got, one)
	}
	e3.taken = true
	if got := s.appliedAfterLocked(); got != two {
		t.Fatalf("with everything copied: %v, want %v", got, two)
	}
	s.releaseHeldLocked()
	if len(s.held)-s.heldHead != 1 {
		t.Fatalf("%d held after the release, want the one whose inbox copy is only under way", len(s.held)-s.heldHead)
	}
}

// Conversations crowding one slot (a user with many) have their history
// copied over the next commits, a share at a time, not all in one.
func TestBoltHistoryCopySpreadsACrowdedSlot(t *testing.T) {
	t0 := time.Now()
	const period = 2 * time.Second
	s := &BoltStore{cfg: BoltConfig{historyPeriod: period}, histEpoch: t0, histTakenAt: t0}
	crowded := historySlot(DirectConversation(1, 2))
	var all []*convState
	hold := func(c Conversation) {
		cs := &convState{conv: c, slot: historySlot(c)}
		all = append(all, cs)
		s.holdHistoryLocked(&walEntry{conv: c, seq: 1, cs: cs})
	}
	for i := range 1000 {
		hold(DirectConversation(1, uint64(1000+i)))
	}
	for i := range historySlots {
		hold(DirectConversation(uint64(historyRun*(i+1)), 1_000_000))
	}
	if got := len(s.histSlots[crowded]); got < 1000 {
		t.Fatalf("the crowded slot holds %d", got)
	}
	most, commits := 0, 0
	for now := t0; now.Before(t0.Add(2 * period)); now = now.Add(50 * time.Millisecond) {
		convs, hist := s.takeHistoryLocked(now, false)
		if len(hist) != len(convs) {
			t.Fatalf("%d messages from %d conversations", len(hist), len(convs))
		}
		for i, cs := range convs {
			if i > 0 && compareConvKeys(convs[i-1].conv, cs.conv) >= 0 {
				t.Fatal("conversations out of key order")
			}
			cs.hist, cs.histTaken = nil, 0 // as a committed copy leaves them
		}
		most = max(most, len(convs))
		if len(convs) > 0 {
			commits++
		}
	}
	for _, cs := range all {
		if len(cs.hist) != 0 || cs.queued {
			t.Fatalf("%v: history not copied within two periods", cs.conv)
		}
	}
	if s.histQueued != 0 {
		t.Fatalf("%d still counted as queued", s.histQueued)
	}
	// The average share is 1,064 × 50 ms / 2 s ≈ 27 a commit; the budget
	// allows twice that, and never less than historyTakeMin.
	if most > historyTakeMin || commits < 1000/historyTakeMin {
		t.Fatalf("up to %d conversations in one commit, %d commits", most, commits)
	}
}

// Between a message's inbox copy and its history copy, what a user sees of
// their conversations is whole: the list has the new conversation with
// its last message, and the read mark its sending made. MarkRead below
// that mark does not move it, nor report a move.
func TestBoltListAndReadMarksBetweenTheTwoCopies(t *testing.T) {
	ctx := context.Background()
	s := openHistoryDeferred(t, BoltConfig{})
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	ab := DirectConversation(a.ID, b.ID)
	ids := newMsgIDGen(0)
	from := withSendingDevice(ctx, sender{box: a.ID, node: "n1", conn: 1})
	for q := uint64(1); q <= 3; q++ {
		m := testMessage(ids, a, fmt.Sprint("seq ", q))
		m.ToUserId = b.ID
		if _, err := s.AppendMessage(from, m, []uint64{b.ID}, ""); err != nil || m.Seq != q {
			t.Fatalf("send %d: seq %d, %v", q, m.Seq, err)
		}
	}
	// b's inbox read copies the inboxes, and leaves the history waiting.
	if msgs, err := s.Inbox(ctx, b.ID, 0, 10); err != nil || len(msgs) != 3 {
		t.Fatalf("b's inbox: %d messages, %v", len(msgs), err)
	}
	if n := convLogKeys(t, s, ab); n != 0 {
		t.Fatalf("%d of the history copied with the inboxes", n)
	}
	if seq, moved, err := s.MarkRead(ctx, a.ID, ab, 2); err != nil || seq != 3 || moved {
		t.Fatalf("a's MarkRead(2) after sending 3 = %d, %v, %v; want 3, not moved", seq, moved, err)
	}
	for _, st := range []struct {
		u          User
		read, want uint64
	}{{a, 3, 0}, {b, 0, 3}} {
		list, _ := listOf(t, s, st.u.ID, 10)
		if len(list) != 1 || list[0].Conv != ab || list[0].LastSeq != 3 || list[0].ReadSeq != st.read ||
			list[0].Unread != st.want || list[0].Last == nil || list[0].Last.Text != "seq 3" {
			t.Fatalf("%s's conversations: %+v", st.u.Name, list)
		}
	}
}
