package server

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// historySeqs pages through all of conv, oldest first, checking each
// message's text is what sendText gave it.
func historySeqs(t *testing.T, s Store, conv Conversation) []uint64 {
	t.Helper()
	page, err := s.History(context.Background(), HistoryQuery{Conv: conv, Limit: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	if page.HasMore {
		t.Fatal("history has more than 10,000 messages")
	}
	var seqs []uint64
	for _, m := range page.Messages {
		if want := fmt.Sprint("seq ", m.Seq); m.Text != want {
			t.Fatalf("seq %d holds %q, want %q", m.Seq, m.Text, want)
		}
		seqs = append(seqs, m.Seq)
	}
	return seqs
}

// sendText appends a message from one user to another (to.ID) or to a
// group (gid), whose text names the seq it expects, and checks the seq.
func sendText(t *testing.T, s Store, ids *msgIDGen, from User, to, gid, wantSeq uint64) *chatpb.Message {
	t.Helper()
	m := testMessage(ids, from, fmt.Sprint("seq ", wantSeq))
	m.ToUserId, m.GroupId = to, gid
	recipients := []uint64{to}
	if gid != 0 {
		recipients = nil
	}
	res, err := s.AppendMessage(context.Background(), m, recipients, "")
	if err != nil {
		t.Fatal(err)
	}
	if m.Seq != wantSeq {
		t.Fatalf("seq %d, want %d", m.Seq, wantSeq)
	}
	// The embedded store hands back the push made in place: the
	// message as stored, seq included.
	if _, bolt := s.(*BoltStore); bolt && res.Push == nil {
		t.Fatal("no push frame from the embedded store")
	}
	if res.Push != nil {
		want, err := protocol.Encode(&chatpb.Frame{Body: &chatpb.Frame_Message{Message: m}})
		if err != nil {
			t.Fatal(err)
		}
		if string(res.Push) != string(want) {
			t.Fatalf("push %x, want %x", res.Push, want)
		}
	}
	return m
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for q := from; q <= to; q++ {
		out = append(out, q)
	}
	return out
}

// Every message whose send returned is in its conversation after a
// crash, under the seq it was given, whether bbolt had it or only the
// message log; the next send goes on from there.
func TestBoltHistorySurvivesACrash(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenBoltStore(BoltConfig{Path: filepath.Join(dir, "live", "test.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	g, err := s.CreateGroup(ctx, a.ID, "g", "", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.JoinGroup(ctx, g.ID, b.ID, Limits{}); err != nil {
		t.Fatal(err)
	}
	direct, group := DirectConversation(a.ID, b.ID), GroupConversation(g.ID)
	ids := newMsgIDGen(0)
	for q := uint64(1); q <= 5; q++ {
		sendText(t, s, ids, a, b.ID, 0, q)
		sendText(t, s, ids, b, 0, g.ID, q)
	}
	// Copied into bbolt, which the crash keeps as of now.
	if got := historySeqs(t, s, direct); !slices.Equal(got, seqRange(1, 5)) {
		t.Fatalf("direct history before the crash: %v", got)
	}
	if got := historySeqs(t, s, group); !slices.Equal(got, seqRange(1, 5)) {
		t.Fatalf("group history before the crash: %v", got)
	}
	base := filepath.Join(dir, "base.db")
	if err := s.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(base, 0o600) }); err != nil {
		t.Fatal(err)
	}
	// These reach only the log before the crash (the lazy copy waits
	// logCopyDelay, and the crash image takes bbolt from base anyway).
	for q := uint64(6); q <= 9; q++ {
		sendText(t, s, ids, b, a.ID, 0, q)
	}
	sendText(t, s, ids, a, 0, g.ID, 6)
	img := filepath.Join(dir, "img", "test.db")
	crashImage(t, s, base, img)

	r, err := OpenBoltStore(BoltConfig{Path: img})
	if err != nil {
		t.Fatal(err)
	}
	if got := historySeqs(t, r, direct); !slices.Equal(got, seqRange(1, 9)) {
		t.Fatalf("direct history after the crash: %v", got)
	}
	if got := historySeqs(t, r, group); !slices.Equal(got, seqRange(1, 6)) {
		t.Fatalf("group history after the crash: %v", got)
	}
	for conv, want := range map[Conversation]uint64{direct: 9, group: 6} {
		if last, err := r.LastSeq(ctx, conv); err != nil || last != want {
			t.Fatalf("LastSeq(%v) after the crash = %d, %v; want %d", conv, last, err, want)
		}
	}
	// The inbox copies replayed from the log carry their seqs too.
	inbox, err := r.Inbox(ctx, a.ID, 0, 100)
	if err != nil || len(inbox) != 4 || inbox[0].Seq != 6 || inbox[3].Seq != 9 {
		t.Fatalf("a's inbox after the crash: %d messages, %v", len(inbox), err)
	}
	sendText(t, r, ids, a, b.ID, 0, 10)
	sendText(t, r, ids, a, 0, g.ID, 7)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	// And once more across a clean restart.
	r, err = OpenBoltStore(BoltConfig{Path: img})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := historySeqs(t, r, direct); !slices.Equal(got, seqRange(1, 10)) {
		t.Fatalf("direct history after a restart: %v", got)
	}
	sendText(t, r, ids, b, a.ID, 0, 11)
	sendText(t, r, ids, b, 0, g.ID, 8)
}

// A send whose log write fails takes no seq: the next one gets it, so
// the conversation has no gap, live or after a restart.
func TestBoltHistorySeqGivenBackWhenTheLogWriteFails(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "test.db")
	s, err := OpenBoltStore(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	ids := newMsgIDGen(0)
	sendText(t, s, ids, a, b.ID, 0, 1)
	// The writer is idle (the send returned): closing its segment under
	// it makes the next write fail as an I/O error would. The send below
	// orders this before the writer's next use of it.
	s.log.f.Close()
	failed := testMessage(ids, a, "lost")
	failed.ToUserId = b.ID
	if _, err := s.AppendMessage(ctx, failed, []uint64{b.ID}, ""); err == nil {
		t.Fatal("a send with a failed log write succeeded")
	}
	if failed.Seq != 0 {
		t.Fatalf("a failed send kept seq %d", failed.Seq)
	}
	sendText(t, s, ids, a, b.ID, 0, 2) // the log moved to a new segment
	conv := DirectConversation(a.ID, b.ID)
	if got := historySeqs(t, s, conv); !slices.Equal(got, seqRange(1, 2)) {
		t.Fatalf("history after a failed write: %v", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenBoltStore(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sendText(t, s, ids, b, a.ID, 0, 3)
	if got := historySeqs(t, s, conv); !slices.Equal(got, seqRange(1, 3)) {
		t.Fatalf("history after a restart: %v", got)
	}
}

// convLogKeys counts what bbolt itself keeps of a conversation.
func convLogKeys(t *testing.T, s *BoltStore, conv Conversation) int {
	t.Helper()
	ck := convKey(conv)
	n := 0
	if err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketConvLog).Cursor()
		for k, _ := c.Seek(ck); k != nil && hasPrefix(k, ck); k, _ = c.Next() {
			n++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// Retention drops messages from bbolt as the copy writes new ones, and
// says how many; what it has yet to drop (a lowered limit, a silent
// conversation growing old) History hides meanwhile. Seqs go on past
// trimmed messages, across restarts too, even when none is left.
func TestBoltHistoryRetention(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "test.db")
	var observed atomic.Int64
	open := func(lim HistoryLimits) *BoltStore {
		t.Helper()
		s, err := OpenBoltStore(BoltConfig{Path: path, History: lim,
			ObserveHistoryTrim: func(n int) { observed.Add(int64(n)) }})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open(HistoryLimits{MaxMessages: 100, MaxAge: -1})
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	c, _ := s.CreateUser(ctx, "c", nil)
	ab, ac := DirectConversation(a.ID, b.ID), DirectConversation(a.ID, c.ID)
	ids := newMsgIDGen(0)
	old := newMsgIDGen(1)
	sendOld := func(s Store, to User, seq uint64) {
		t.Helper()
		m := &chatpb.Message{FromUserId: a.ID, FromUsername: a.Name, ToUserId: to.ID, Text: fmt.Sprint("seq ", seq)}
		m.MsgId, m.SentAtMs = old.next(time.Now().Add(-2 * time.Hour))
		if _, err := s.AppendMessage(ctx, m, []uint64{to.ID}, ""); err != nil || m.Seq != seq {
			t.Fatalf("old message: seq %d, %v; want %d", m.Seq, err, seq)
		}
	}
	for q := uint64(1); q <= 70; q++ {
		sendText(t, s, ids, a, b.ID, 0, q)
	}
	sendOld(s, c, 1)
	sendOld(s, c, 2)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := observed.Load(); n != 0 {
		t.Fatalf("%d trimmed within the limits", n)
	}

	// Lower limits: nothing is copied yet, yet History keeps to them.
	s = open(HistoryLimits{MaxMessages: 3, MaxAge: time.Hour})
	if got := historySeqs(t, s, ab); !slices.Equal(got, seqRange(68, 70)) {
		t.Fatalf("history under a lowered MaxMessages: %v", got)
	}
	page, err := s.History(ctx, HistoryQuery{Conv: ab, Newest: true, Limit: 2})
	if err != nil || len(page.Messages) != 2 || !page.HasMore {
		t.Fatalf("newest 2 of 3: %d, more %v, %v", len(page.Messages), page.HasMore, err)
	}
	if got := historySeqs(t, s, ac); len(got) != 0 {
		t.Fatalf("history past MaxAge: %v", got)
	}
	if n := convLogKeys(t, s, ab); n != 70 {
		t.Fatalf("bbolt keeps %d of ab before any copy, want all 70", n)
	}
	// Each copied message drops at most maxHistoryTrim of the backlog.
	sendText(t, s, ids, a, b.ID, 0, 71)
	historySeqs(t, s, ab) // copies it
	if n := convLogKeys(t, s, ab); n != 71-maxHistoryTrim {
		t.Fatalf("bbolt keeps %d of ab after one copy, want %d", n, 71-maxHistoryTrim)
	}
	sendText(t, s, ids, a, b.ID, 0, 72)
	if got := historySeqs(t, s, ab); !slices.Equal(got, seqRange(70, 72)) {
		t.Fatalf("history after trimming: %v", got)
	}
	if n := convLogKeys(t, s, ab); n != 3 {
		t.Fatalf("bbolt keeps %d of ab, want 3", n)
	}
	if n := observed.Load(); n != 72-3 {
		t.Fatalf("observed %d trimmed, want %d", n, 72-3)
	}
	// A conversation whose every message is too old keeps its last seq.
	sendOld(s, c, 3)
	historySeqs(t, s, ac)
	if n := convLogKeys(t, s, ac); n != 0 {
		t.Fatalf("bbolt keeps %d messages past MaxAge", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(HistoryLimits{MaxMessages: 3, MaxAge: time.Hour})
	defer s.Close()
	if last, err := s.LastSeq(ctx, ac); err != nil || last != 3 {
		t.Fatalf("LastSeq of an emptied conversation = %d, %v; want 3", last, err)
	}
	sendText(t, s, ids, a, c.ID, 0, 4)
	if got := historySeqs(t, s, ac); !slices.Equal(got, []uint64{4}) {
		t.Fatalf("history of the emptied conversation: %v", got)
	}
}

// A file from before conversations (schema 1: no conversation buckets,
// no version, one-byte member values, unsequenced messages in bbolt and
// in the message log) opens and works on: its messages keep Seq 0 and
// are in no history, members read as JoinedSeq 0, and conversations
// count from 1.
func TestBoltStoreOpensASchema1Database(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "test.db")
	s, err := OpenBoltStore(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	c, _ := s.CreateUser(ctx, "c", nil)
	g, err := s.CreateGroup(ctx, a.ID, "g", "", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.JoinGroup(ctx, g.ID, b.ID, Limits{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ids := newMsgIDGen(0)
	inBolt, inLog := testMessage(ids, a, "stored by the old version"), testMessage(ids, a, "logged by the old version")
	inBolt.ToUserId, inLog.ToUserId = b.ID, b.ID
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketConvLog, bucketConvMeta} {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketMeta).Delete(keySchema); err != nil {
			return err
		}
		members := tx.Bucket(bucketMembers)
		var keys [][]byte
		_ = members.ForEach(func(k, _ []byte) error { keys = append(keys, k); return nil })
		for _, k := range keys {
			if err := members.Put(k, members.Get(k)[:1]); err != nil {
				return err
			}
		}
		enc, _ := proto.Marshal(inBolt)
		if err := tx.Bucket(bucketInbox).Put(key2(b.ID, inBolt.MsgId), enc); err != nil {
			return err
		}
		return tx.Bucket(bucketInboxCount).Put(u64(b.ID), u64(1))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	// A record the old version logged and never copied: a new segment,
	// past the one the last run left.
	segs, err := listSegments(path + ".log")
	if err != nil || len(segs) == 0 {
		t.Fatalf("segments %v, %v", segs, err)
	}
	l, err := createWAL(path+".log", segs[len(segs)-1]+1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := proto.Marshal(inLog)
	if _, err := l.write(appendWALRecord(nil, &walRecord{message: enc, recipients: []uint64{b.ID}})); err != nil {
		t.Fatal(err)
	}
	l.close()

	s, err = OpenBoltStore(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	inbox, err := s.Inbox(ctx, b.ID, 0, 10)
	if err != nil || len(inbox) != 2 || inbox[0].Text != inBolt.Text || inbox[1].Text != inLog.Text ||
		inbox[0].Seq != 0 || inbox[1].Seq != 0 {
		t.Fatalf("old inbox: %v, %v", inbox, err)
	}
	ab := DirectConversation(a.ID, b.ID)
	if got := historySeqs(t, s, ab); len(got) != 0 {
		t.Fatalf("old messages in history: %v", got)
	}
	if last, err := s.LastSeq(ctx, ab); err != nil || last != 0 {
		t.Fatalf("LastSeq of an old conversation = %d, %v", last, err)
	}
	got, err := s.Group(ctx, g.ID)
	if err != nil || len(got.Members) != 2 || got.Members[0].Role != chatpb.Role_ROLE_CREATOR ||
		got.Members[1].Role != chatpb.Role_ROLE_MEMBER || got.Members[1].JoinedSeq != 0 {
		t.Fatalf("old members: %+v, %v", got.Members, err)
	}
	sendText(t, s, ids, a, b.ID, 0, 1)
	sendText(t, s, ids, b, a.ID, 0, 2)
	sendText(t, s, ids, a, 0, g.ID, 1)
	if err := s.JoinGroup(ctx, g.ID, c.ID, Limits{}); err != nil {
		t.Fatal(err)
	}
	groups, err := s.GroupsOf(ctx, c.ID)
	if err != nil || len(groups) != 1 || len(groups[0].Members) != 3 ||
		groups[0].Members[1].JoinedSeq != 0 || groups[0].Members[2].JoinedSeq != 1 {
		t.Fatalf("members after the upgrade: %+v, %v", groups, err)
	}
	if got := historySeqs(t, s, ab); !slices.Equal(got, seqRange(1, 2)) {
		t.Fatalf("history after the upgrade: %v", got)
	}
	var schema uint64
	_ = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keySchema); len(v) == 8 {
			schema = uint64(v[7])
		}
		return nil
	})
	if schema != boltSchema {
		t.Fatalf("schema after opening = %d, want %d", schema, boltSchema)
	}
}

// A file written by a later loopchat is refused, and left as it was.
func TestBoltStoreRefusesANewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "test.db")
	s, err := OpenBoltStore(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	setSchema := func(v uint64) {
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, u64(v)) }); err != nil {
			t.Fatal(err)
		}
	}
	setSchema(boltSchema + 1)
	_, err = OpenBoltStore(BoltConfig{Path: path})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprint("schema version ", boltSchema+1)) ||
		!strings.Contains(err.Error(), "newer loopchat") {
		t.Fatalf("opening a newer file: %v", err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keySchema); string(v) != string(u64(boltSchema+1)) {
			t.Errorf("the refused file's schema became %x", v)
		}
		return nil
	})
	db.Close()
	setSchema(boltSchema)
	s, err = OpenBoltStore(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// The seq state of conversations is dropped from memory once they have
// nothing waiting for bbolt, past a bound, and read back from bbolt when
// they send again.
func TestBoltHistoryDropsIdleConversationState(t *testing.T) {
	ctx := context.Background()
	s := openHistoryDeferred(t, BoltConfig{InboxLimit: 100}) // no copy unless asked
	s.maxConvs = 4
	a, _ := s.CreateUser(ctx, "a", nil)
	var peers []User
	for i := range 10 {
		u, err := s.CreateUser(ctx, fmt.Sprint("peer", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, u)
	}
	ids := newMsgIDGen(0)
	states := func() (n, pending int) {
		s.mem.Lock()
		defer s.mem.Unlock()
		for _, cs := range s.convs {
			pending += len(cs.hist)
		}
		return len(s.convs), pending
	}
	for _, p := range peers {
		sendText(t, s, ids, a, p.ID, 0, 1)
	}
	if n, pending := states(); n != len(peers) || pending != len(peers) {
		t.Fatalf("%d states with %d pending, want %d of each", n, pending, len(peers))
	}
	// Copied: nothing pending, so all may go.
	for _, p := range peers {
		historySeqs(t, s, DirectConversation(a.ID, p.ID))
	}
	if n, pending := states(); n != len(peers) || pending != 0 {
		t.Fatalf("after the copy: %d states with %d pending", n, pending)
	}
	sendText(t, s, ids, a, peers[0].ID, 0, 2)
	if n, _ := states(); n != 1 {
		t.Fatalf("%d states kept past a bound of %d, want only the one just used", n, s.maxConvs)
	}
	for i, p := range peers {
		want := uint64(1)
		if i == 0 {
			want = 2
		}
		if last, err := s.LastSeq(ctx, DirectConversation(p.ID, a.ID)); err != nil || last != want {
			t.Fatalf("LastSeq with peer %d = %d, %v; want %d", p.ID, last, err, want)
		}
	}
	for _, p := range peers[1:] {
		sendText(t, s, ids, p, a.ID, 0, 2)
	}
	for _, p := range peers {
		if got := historySeqs(t, s, DirectConversation(a.ID, p.ID)); !slices.Equal(got, seqRange(1, 2)) {
			t.Fatalf("history with peer %d: %v", p.ID, got)
		}
	}
}

// convMetaSeq reads conv_meta's entry for conv (0: none).
func convMetaSeq(t *testing.T, s *BoltStore, conv Conversation) uint64 {
	t.Helper()
	var seq uint64
	if err := s.db.View(func(tx *bolt.Tx) error {
		seq = storedMetaSeq(tx, convKey(conv))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return seq
}

// A conversation's last seq in bbolt is its last conv_log key: the copy
// writes no conv_meta entry until retention empties the conversation,
// and the seq carries on across restarts either way.
func TestBoltHistoryLastSeqIsTheLastKey(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "test.db")
	open := func() *BoltStore {
		t.Helper()
		s, err := OpenBoltStore(BoltConfig{Path: path, History: HistoryLimits{MaxMessages: 2, MaxAge: time.Hour}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	c, _ := s.CreateUser(ctx, "c", nil)
	ab, ac := DirectConversation(a.ID, b.ID), DirectConversation(a.ID, c.ID)
	ids, old := newMsgIDGen(0), newMsgIDGen(1)
	for q := uint64(1); q <= 3; q++ {
		sendText(t, s, ids, a, b.ID, 0, q)
		// Too old, all of them: retention empties ac.
		m := &chatpb.Message{FromUserId: c.ID, FromUsername: c.Name, ToUserId: a.ID, Text: fmt.Sprint("seq ", q)}
		m.MsgId, m.SentAtMs = old.next(time.Now().Add(-2 * time.Hour))
		if _, err := s.AppendMessage(ctx, m, []uint64{a.ID}, ""); err != nil || m.Seq != q {
			t.Fatalf("old message: seq %d, %v; want %d", m.Seq, err, q)
		}
	}
	if got := historySeqs(t, s, ab); !slices.Equal(got, seqRange(2, 3)) {
		t.Fatalf("history of ab: %v", got)
	}
	if got := historySeqs(t, s, ac); len(got) != 0 {
		t.Fatalf("history of ac: %v", got)
	}
	if n, seq := convLogKeys(t, s, ab), convMetaSeq(t, s, ab); n != 2 || seq != 0 {
		t.Fatalf("ab: %d keys, conv_meta %d; want 2 and none", n, seq)
	}
	if n, seq := convLogKeys(t, s, ac), convMetaSeq(t, s, ac); n != 0 || seq != 3 {
		t.Fatalf("ac, emptied by retention: %d keys, conv_meta %d; want none and 3", n, seq)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open()
	defer s.Close()
	for conv, want := range map[Conversation]uint64{ab: 3, ac: 3} {
		if last, err := s.LastSeq(ctx, conv); err != nil || last != want {
			t.Fatalf("LastSeq(%v) after a restart = %d, %v; want %d", conv, last, err, want)
		}
	}
	sendText(t, s, ids, a, b.ID, 0, 4)
	sendText(t, s, ids, a, c.ID, 0, 4)
	if got := historySeqs(t, s, ab); !slices.Equal(got, seqRange(3, 4)) {
		t.Fatalf("history of ab after a restart: %v", got)
	}
	if got := historySeqs(t, s, ac); !slices.Equal(got, []uint64{4}) {
		t.Fatalf("history of ac after a restart: %v", got)
	}
}
