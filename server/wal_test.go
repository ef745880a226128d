package server

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
)

func TestWALRecordRoundTrip(t *testing.T) {
	in := walRecord{message: []byte("hello"), recipients: []uint64{1, 300, 1 << 40}, clientMsgID: "c-1"}
	buf := appendWALRecord(nil, &in)
	out, err := parseWALRecord(buf[walHeaderSize:])
	if err != nil {
		t.Fatal(err)
	}
	if string(out.message) != "hello" || !slices.Equal(out.recipients, in.recipients) || out.clientMsgID != "c-1" {
		t.Fatalf("round trip: %+v", out)
	}
	for cut := walHeaderSize; cut < len(buf)-1; cut++ {
		if _, err := parseWALRecord(buf[walHeaderSize:cut]); err == nil {
			t.Fatalf("record cut at %d parsed", cut)
		}
	}

	// An ack record: no message, a user and the ids it acknowledged.
	ack := walRecord{ackUser: 7, acked: []uint64{1, 1 << 62, 300}}
	buf = appendWALRecord(nil, &ack)
	out, err = parseWALRecord(buf[walHeaderSize:])
	if err != nil {
		t.Fatal(err)
	}
	if !out.isAck() || out.ackUser != 7 || !slices.Equal(out.acked, ack.acked) || out.recipients != nil {
		t.Fatalf("ack round trip: %+v", out)
	}
	for cut := walHeaderSize; cut < len(buf); cut++ {
		if _, err := parseWALRecord(buf[walHeaderSize:cut]); err == nil {
			t.Fatalf("ack record cut at %d parsed", cut)
		}
	}
}

// replayAll returns the messages replayWAL yields from the start.
func replayAll(t *testing.T, dir string) []string {
	t.Helper()
	var got []string
	if _, err := replayWAL(dir, walPos{}, func(r walRecord, _ walPos) error {
		got = append(got, string(r.message))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestWALReplayStopsAtTornTailAndSkipsToNextSegment(t *testing.T) {
	dir := t.TempDir()
	l, err := createWAL(dir, 1, 4096)
	if err != nil {
		t.Fatal(err)
	}
	write := func(msgs ...string) {
		var buf []byte
		for _, m := range msgs {
			buf = appendWALRecord(buf, &walRecord{message: []byte(m), recipients: []uint64{2}})
		}
		if _, err := l.write(buf); err != nil {
			t.Fatal(err)
		}
	}
	write("a", "b")
	write("c")
	if got := replayAll(t, dir); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("replay = %v", got)
	}
	// A torn batch: a header promising more than was written, then junk.
	torn := appendWALRecord(nil, &walRecord{message: []byte("torn"), recipients: []uint64{2}})
	if _, err := l.f.WriteAt(torn[:len(torn)-3], l.pos.off); err != nil {
		t.Fatal(err)
	}
	if got := replayAll(t, dir); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("replay with a torn tail = %v", got)
	}
	// After a failed write the log moves to a new segment; what follows
	// the torn record is still found there.
	l.broken = true
	write("d")
	if l.pos.seg != 2 {
		t.Fatalf("still in segment %d after a failed write", l.pos.seg)
	}
	// Filling a segment moves to the next too.
	big := make([]byte, 3000)
	write(string(big))
	write(string(big))
	if l.pos.seg != 3 {
		t.Fatalf("segment %d after filling", l.pos.seg)
	}
	got := replayAll(t, dir)
	if len(got) != 6 || got[3] != "d" {
		t.Fatalf("replay across segments = %d records, 4th %q", len(got), got[3])
	}
	// A flipped bit fails the checksum and ends that segment.
	data, _ := os.ReadFile(segmentPath(dir, 1))
	data[walHeaderSize+2] ^= 1
	if err := os.WriteFile(segmentPath(dir, 1), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := replayAll(t, dir); len(got) != 3 || got[0] != "d" {
		t.Fatalf("replay with a corrupt first record = %d records", len(got))
	}
	l.close()
}

// crashImage copies what a crash at this instant would leave on disk for
// s, but with bbolt as of base: the database file from base, and the
// message log as it is now.
func crashImage(t *testing.T, s *BoltStore, base, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst+".log", 0o700); err != nil {
		t.Fatal(err)
	}
	copyFile(t, base, dst)
	segs, err := listSegments(s.logDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, seg := range segs {
		copyFile(t, segmentPath(s.logDir(), seg), segmentPath(dst+".log", seg))
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
}

// A message that got its answer is in the log even if bbolt never saw it:
// after a crash, reopening copies it into the inbox, its client_msg_id
// still dedups, and a torn record at the tail is ignored.
func TestBoltStoreRecoversLoggedMessagesAfterCrash(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenBoltStore(BoltConfig{Path: filepath.Join(dir, "live", "test.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	base := filepath.Join(dir, "base.db")
	if err := s.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(base, 0o600) }); err != nil {
		t.Fatal(err)
	}
	ids := newMsgIDGen(0)
	var sent []uint64
	for i := range 50 {
		m := testMessage(ids, a, fmt.Sprint("m", i))
		if _, err := s.AppendMessage(ctx, m, []uint64{b.ID}, fmt.Sprint("k", i)); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, m.MsgId)
	}
	img := filepath.Join(dir, "img", "test.db")
	crashImage(t, s, base, img)
	// The crash interrupted a batch mid-write.
	torn := appendWALRecord(nil, &walRecord{message: []byte("never answered"), recipients: []uint64{b.ID}})
	f, err := os.OpenFile(segmentPath(img+".log", s.log.pos.seg), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(torn[:len(torn)/2], s.log.pos.off); err != nil {
		t.Fatal(err)
	}
	f.Close()

	r, err := OpenBoltStore(BoltConfig{Path: img})
	if err != nil {
		t.Fatal(err)
	}
	gotIDs := inboxIDs(t, r, b.ID)
	if !slices.Equal(gotIDs, sent) {
		t.Fatalf("after the crash the inbox has %d of %d messages", len(gotIDs), len(sent))
	}
	res, err := r.AppendMessage(ctx, testMessage(ids, a, "again"), []uint64{b.ID}, "k7")
	if err != nil || !res.Duplicate || res.Message.MsgId != sent[7] {
		t.Fatalf("client_msg_id after recovery: %+v %v", res, err)
	}
	// The old segments are gone once copied; the store keeps working and
	// survives a clean reopen.
	if segs, _ := listSegments(img + ".log"); len(segs) != 1 {
		t.Fatalf("segments after recovery: %v", segs)
	}
	if _, err := r.AppendMessage(ctx, testMessage(ids, a, "after"), []uint64{b.ID}, ""); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r, err = OpenBoltStore(BoltConfig{Path: img})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, _ := r.Inbox(ctx, b.ID, 0, 100); len(got) != 51 || got[50].Text != "after" {
		t.Fatalf("after reopen: %d messages", len(got))
	}
}

// Acks that arrive before a message reaches bbolt keep it out of bbolt,
// and the log is removed behind the copy.
func TestBoltStoreAckedMessagesSkipTheInbox(t *testing.T) {
	ctx := context.Background()
	s := openTestBolt(t, 100).(*BoltStore)
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	ids := newMsgIDGen(0)
	m1, m2 := testMessage(ids, a, "1"), testMessage(ids, a, "2")
	for _, m := range []*chatpb.Message{m1, m2} {
		if _, err := s.AppendMessage(ctx, m, []uint64{b.ID}, ""); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.Ack(ctx, b.ID, []uint64{m1.MsgId})
	got, _ := s.Inbox(ctx, b.ID, 0, 10)
	if len(got) != 1 || got[0].MsgId != m2.MsgId {
		t.Fatalf("inbox = %v", got)
	}
	if stored := boltInboxEntries(s); stored != 1 {
		t.Fatalf("bbolt holds %d inbox entries, want only the unacked one", stored)
	}
}

// boltInboxEntries counts the inbox entries bbolt itself holds.
func boltInboxEntries(s *BoltStore) int {
	var n int
	_ = s.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketInbox).Stats().KeyN
		return nil
	})
	return n
}

// A big group's early acks (more than the short list holds) leave exactly
// those members out of the copy.
func TestBoltStoreGroupAcksSkipTheInbox(t *testing.T) {
	ctx := context.Background()
	s := openTestBolt(t, 100).(*BoltStore)
	sender, _ := s.CreateUser(ctx, "sender", nil)
	members := make([]uint64, 2*ackersListMax+2)
	for i := range members {
		u, err := s.CreateUser(ctx, fmt.Sprintf("m%d", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		members[i] = u.ID
	}
	m := testMessage(newMsgIDGen(0), sender, "to all")
	if _, err := s.AppendMessage(ctx, m, members, ""); err != nil {
		t.Fatal(err)
	}
	acked := members[2:]
	for _, uid := range acked {
		for range 2 { // a repeated ack changes nothing
			if err := s.Ack(ctx, uid, []uint64{m.MsgId}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, uid := range members {
		got, err := s.Inbox(ctx, uid, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if want := i < 2; (len(got) == 1) != want {
			t.Errorf("member %d: inbox %v, want the message: %v", i, got, want)
		}
	}
	if stored := boltInboxEntries(s); stored != 2 {
		t.Fatalf("bbolt holds %d inbox entries, want the 2 members who did not ack", stored)
	}
}

// Records come back from disk, where anything can happen: parsing never
// panics, and what parses survives re-encoding unchanged.
func FuzzParseWALRecord(f *testing.F) {
	f.Add(appendWALRecord(nil, &walRecord{message: []byte("hi"), recipients: []uint64{1, 2}, clientMsgID: "c"})[walHeaderSize:])
	f.Add(appendWALRecord(nil, &walRecord{message: nil, recipients: nil})[walHeaderSize:])
	f.Add(appendWALRecord(nil, &walRecord{ackUser: 3, acked: []uint64{5, 1 << 60}})[walHeaderSize:])
	f.Add([]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, payload []byte) {
		r, err := parseWALRecord(payload)
		if err != nil {
			return
		}
		again := appendWALRecord(nil, &r)[walHeaderSize:]
		back, err := parseWALRecord(again)
		if err != nil || string(back.message) != string(r.message) || !slices.Equal(back.recipients, r.recipients) ||
			back.clientMsgID != r.clientMsgID || back.ackUser != r.ackUser || !slices.Equal(back.acked, r.acked) {
			t.Fatalf("re-encoded record differs: %+v vs %+v (%v)", back, r, err)
		}
	})
}

func TestAckersSet(t *testing.T) {
	var a ackers
	for round := 0; round < 3; round++ { // repeats add nothing
		for uid := uint64(1); uid <= 3*ackersListMax; uid += 2 {
			a.add(uid)
		}
	}
	for uid := uint64(0); uid < 3*ackersListMax; uid++ {
		if want := uid%2 == 1; a.has(uid) != want {
			t.Errorf("has(%d) = %v, want %v", uid, !want, want)
		}
	}
	if n := len(a.few) + len(a.many); n != 3*ackersListMax/2 {
		t.Errorf("holds %d ids, want %d (each once)", n, 3*ackersListMax/2)
	}
	var one ackers
	one.add(7)
	one.add(7)
	if !one.has(7) || one.has(8) || len(one.few) != 1 || one.many != nil {
		t.Errorf("a single acker: %+v", one)
	}
}

// An ack queued while sends are waiting for the log rides their batch:
// one fdatasync for both, so acks add none while sends flow.
func TestBoltStoreAcksShareTheSendsSync(t *testing.T) {
	ctx := context.Background()
	gate := make(chan struct{})
	batches := make(chan int, 10)
	var first sync.Once
	s, err := OpenBoltStore(BoltConfig{Path: filepath.Join(t.TempDir(), "test.db"),
		ObserveLog: func(_ time.Duration, records int) {
			batches <- records
			first.Do(func() { <-gate }) // hold the writer after its first batch
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	ids := newMsgIDGen(0)
	m0, m1 := testMessage(ids, a, "0"), testMessage(ids, a, "1")
	errs := make(chan error, 3)
	go func() { _, err := s.AppendMessage(ctx, m0, []uint64{b.ID}, ""); errs <- err }()
	if n := <-batches; n != 1 {
		t.Fatalf("first batch carried %d records", n)
	}
	// While the writer is held, a send and an ack queue up behind it.
	go func() { _, err := s.AppendMessage(ctx, m1, []uint64{b.ID}, ""); errs <- err }()
	go func() { errs <- s.Ack(ctx, b.ID, []uint64{m0.MsgId}) }()
	testproc.WaitUntil(t, "a send and an ack queued", 10*time.Second, func() bool { return len(s.appends.ch) == 2 })
	close(gate)
	if n := <-batches; n != 2 {
		t.Fatalf("the send and the ack took a batch of %d records, want one batch of both", n)
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := s.Inbox(ctx, b.ID, 0, 10); len(got) != 1 || got[0].MsgId != m1.MsgId {
		t.Fatalf("inbox = %v, want only the unacked message", got)
	}
}

// TestWALRecordKeepsTheSendingDevice: a send's record carries the sending
// device's box, so that after a crash the copy still gives the sender's
// other devices the message and leaves out the one that sent it; records
// without one (and from before devices) read as none.
func TestWALRecordKeepsTheSendingDevice(t *testing.T) {
	for _, rec := range []walRecord{
		{message: []byte("m"), recipients: []uint64{7, 9}, clientMsgID: "c", senderBox: boxOf(3, 2), fromDevice: true},
		{message: []byte("m"), recipients: []uint64{7}, senderBox: 3, fromDevice: true},
		{message: []byte("m"), recipients: []uint64{7}},
	} {
		buf := appendWALRecord(nil, &rec)
		got, err := parseWALRecord(buf[walHeaderSize:])
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.recipients, rec.recipients) || got.senderBox != rec.senderBox || got.fromDevice != rec.fromDevice || got.clientMsgID != rec.clientMsgID {
			t.Fatalf("record %+v read back as %+v", rec, got)
		}
	}
}
