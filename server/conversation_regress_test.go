package server

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
)

// A read event from the channel (anyone can PUBLISH) whose reader and
// conversation do not include the recipient is dropped, not pushed as a
// receipt with a made-up peer.
func TestForgedReadEventsAreDropped(t *testing.T) {
	ts := startServer(t, testOptions(t, "net"))
	carol, ok := ts.user(t, "carol")
	ev, err := decodeChannelEvent([]byte(fmt.Sprintf(
		`{"type":"read","reader_user_id":77,"conv":"d5:9","up_to_seq":3,"epoch":%q}`, ok.StoreEpoch)))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	ts.Server.onEvent(ok.UserId, ev)
	// Not in d5:9, so nothing for carol; a receipt would arrive at once.
	carol.noPush(300 * time.Millisecond)
	// Her own read state, and a receipt from her peer, do reach her.
	for _, raw := range []string{
		`{"type":"read","reader_user_id":%d,"conv":"g4","up_to_seq":3,"epoch":%q}`,
		`{"type":"read","reader_user_id":%d,"conv":"d1:9","up_to_seq":3,"epoch":%q}`,
	} {
		ev, err := decodeChannelEvent([]byte(fmt.Sprintf(raw, ok.UserId, ok.StoreEpoch)))
		if err != nil {
			t.Fatal(err)
		}
		ts.Server.onEvent(ok.UserId, ev)
		if rr := carol.nextPush().GetReadReceipt(); rr == nil || rr.UpToSeq != 3 {
			t.Fatalf("a genuine receipt did not arrive: %v", rr)
		}
	}
}

// Redis trims by age only as messages are appended, so a quiet
// conversation holds messages older than MaxAge; History must not return
// them (the embedded store hides them too). Two stores on one prefix stand
// in for time passing: the second reads with a 1h MaxAge what is 2h old.
func TestRedisHistoryHidesMessagesPastMaxAge(t *testing.T) {
	ctx := context.Background()
	_, rdb := testRedis(t)
	w := NewRedisStore(RedisConfig{Client: rdb, Prefix: "r2:", History: HistoryLimits{MaxAge: 10 * time.Hour}})
	t.Cleanup(func() { w.Close() })
	a, _ := w.CreateUser(ctx, "a", nil)
	b, _ := w.CreateUser(ctx, "b", nil)
	ids := newMsgIDGen(1)
	m1 := &chatpb.Message{FromUserId: a.ID, ToUserId: b.ID, Text: "old"}
	m1.MsgId, m1.SentAtMs = ids.next(time.Now().Add(-2 * time.Hour))
	m2 := &chatpb.Message{FromUserId: a.ID, ToUserId: b.ID, Text: "new"}
	m2.MsgId, m2.SentAtMs = ids.next(time.Now())
	for _, m := range []*chatpb.Message{m1, m2} {
		if _, err := w.AppendMessage(ctx, m, []uint64{b.ID}, ""); err != nil {
			t.Fatal(err)
		}
	}
	r := NewRedisStore(RedisConfig{Client: rdb, Prefix: "r2:", History: HistoryLimits{MaxAge: time.Hour}})
	t.Cleanup(func() { r.Close() })
	page, err := r.History(ctx, HistoryQuery{Conv: DirectConversation(a.ID, b.ID), Newest: true, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range page.Messages {
		if m.SentAtMs < time.Now().Add(-time.Hour).UnixMilli() {
			t.Fatalf("History returned seq %d sent %v ago, past MaxAge 1h (bolt hides it)", m.Seq,
				time.Since(time.UnixMilli(m.SentAtMs)).Round(time.Minute))
		}
	}
}

// Two sends with one client_msg_id in one log batch whose write fails:
// both fail; the second must not be answered as the first's duplicate
// (SendOK) when nothing was stored.
func TestDuplicateOfAFailedWriteIsNotAcknowledged(t *testing.T) {
	ctx := context.Background()
	st := openTestBolt(t, 0).(*BoltStore)
	a, _ := st.CreateUser(ctx, "a", nil)
	b, _ := st.CreateUser(ctx, "b", nil)
	ids := newMsgIDGen(1)
	mk := func() *appendOp {
		m := &chatpb.Message{FromUserId: a.ID, ToUserId: b.ID, Text: "x"}
		m.MsgId, m.SentAtMs = ids.next(time.Now())
		enc, _ := proto.Marshal(m)
		return &appendOp{done: make(chan struct{}, 1), entry: &walEntry{msg: m, message: enc, conv: ConversationOf(m),
			msgID: m.MsgId, sender: a.ID, recipients: []uint64{b.ID}, clientMsgID: "k"}}
	}
	op1, op2 := mk(), mk()
	st.log.f.Close() // the next log write fails, as on a full disk
	st.logBatch([]*appendOp{op1, op2}, nil)
	if op1.err == nil {
		t.Fatal("the write did not fail")
	}
	if op2.err == nil && op2.res.Duplicate {
		t.Fatalf("second send answered as a duplicate (msg_id %d, seq %d) of a message that was never stored",
			op2.res.Message.MsgId, op2.res.Message.Seq)
	}
}
