package protocol

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
)

// The hand-written encoders must produce exactly what protobuf would, for
// any values: `go test -fuzz FuzzEncodeSendOK ./protocol` searches for one
// that does not.
func FuzzEncodeSendOK(f *testing.F) {
	f.Add(uint64(1), uint64(1)<<40, int64(1700000000000), true, uint64(1))
	f.Add(uint64(0), uint64(0), int64(0), false, uint64(0)) // every field at its zero value is omitted
	f.Add(^uint64(0), ^uint64(0), int64(-1), false, ^uint64(0))
	f.Add(^uint64(0), ^uint64(0), int64(-1), true, ^uint64(0)) // the widest
	f.Add(uint64(300), uint64(7), int64(1), true, uint64(300))
	f.Fuzz(func(t *testing.T, seq, msgID uint64, sentAtMs int64, online bool, msgSeq uint64) {
		want, err := Encode(&chatpb.Frame{Seq: seq, Body: &chatpb.Frame_SendOk{SendOk: &chatpb.SendOK{
			MsgId: msgID, SentAtMs: sentAtMs, Online: online, Seq: msgSeq}}})
		if err != nil {
			t.Fatal(err)
		}
		if got := EncodeSendOK(seq, msgID, sentAtMs, online, msgSeq); string(got) != string(want) {
			t.Fatalf("EncodeSendOK(%d, %d, %d, %v, %d) = %x, Encode = %x", seq, msgID, sentAtMs, online, msgSeq, got, want)
		}
		if len(want) > SendOKMaxSize {
			t.Fatalf("%d bytes, SendOKMaxSize is %d", len(want), SendOKMaxSize)
		}
		prefix := []byte("before")
		if got := AppendSendOK(prefix, seq, msgID, sentAtMs, online, msgSeq); string(got) != "before"+string(want) {
			t.Fatalf("AppendSendOK = %x, want %x after the prefix", got, want)
		}
	})
}

func FuzzEncodeMessagePush(f *testing.F) {
	f.Add(uint64(1)<<40, uint64(3), "alice", uint64(4), uint64(0), "hi", int64(1700000000000))
	f.Add(uint64(0), uint64(0), "", uint64(0), uint64(9), "", int64(0))
	f.Add(uint64(5), uint64(3), "alice", uint64(4), uint64(0), strings.Repeat("a long message ", 300), int64(1))
	f.Add(uint64(6), uint64(3), "alice", uint64(4), uint64(0), "not \xff UTF-8", int64(-1))
	f.Fuzz(func(t *testing.T, msgID, from uint64, fromName string, to, group uint64, text string, sentAtMs int64) {
		m := &chatpb.Message{MsgId: msgID, FromUserId: from, FromUsername: fromName, ToUserId: to,
			GroupId: group, Text: text, SentAtMs: sentAtMs, Seq: msgID ^ from}
		encoded, err := proto.Marshal(m)
		if err != nil {
			if _, perr := EncodePush(m); perr == nil {
				t.Fatalf("EncodePush took what proto.Marshal refuses: %v", err)
			}
			return // invalid UTF-8: not a message a store could have encoded
		}
		want, err := Encode(&chatpb.Frame{Body: &chatpb.Frame_Message{Message: m}})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := EncodePush(m); err != nil || string(got) != string(want) {
			t.Fatalf("EncodePush = %x, %v; Encode = %x", got, err, want)
		}
		if got := EncodeMessagePush(encoded); string(got) != string(want) {
			t.Fatalf("EncodeMessagePush = %x, Encode = %x", got, want)
		}
		buf := append(make([]byte, MessagePushRoom), encoded...)
		for i := range MessagePushRoom {
			buf[i] = 0xee // what the room held: overwritten only where the header goes
		}
		if got := MessagePushInPlace(buf, MessagePushRoom); string(got) != string(want) {
			t.Fatalf("MessagePushInPlace = %x, Encode = %x", got, want)
		}
		if string(buf[MessagePushRoom:]) != string(encoded) {
			t.Fatal("MessagePushInPlace changed the message")
		}
	})
}

// EncodePush writes Message's fields by hand: a field added to the schema
// must be added there too, and this fails until it is.
func TestEncodePushKnowsEveryMessageField(t *testing.T) {
	fields := (&chatpb.Message{}).ProtoReflect().Descriptor().Fields()
	if fields.Len() != 8 {
		t.Fatalf("Message has %d fields; EncodePush writes 8", fields.Len())
	}
	// Unknown fields (a newer node's) are kept, as Encode keeps them.
	m := &chatpb.Message{MsgId: 1, Text: "hi"}
	m.ProtoReflect().SetUnknown([]byte{0x48, 0x01}) // field 9, varint 1
	want, err := Encode(&chatpb.Frame{Body: &chatpb.Frame_Message{Message: m}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := EncodePush(m); err != nil || string(got) != string(want) {
		t.Fatalf("EncodePush = %x, %v; want %x", got, err, want)
	}
}
