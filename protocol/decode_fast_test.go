package protocol

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Whatever the hand decoder takes, it decodes exactly as proto.Unmarshal
// does; what it leaves, Decode hands to proto.Unmarshal.
// `go test -fuzz FuzzDecodeFast ./protocol`.
func FuzzDecodeFast(f *testing.F) {
	for _, fr := range fastFrames() {
		b, err := proto.Marshal(fr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x08, 0x05, 0x72, 0x03, 0x12, 0x01, 0xff})             // seq 5, a username that is not UTF-8
	f.Add([]byte{0x72, 0x04, 0x12, 0x01, 'a', 0x08})                    // a username, then a user_id: the oneof's last wins
	f.Add([]byte{0x7a, 0x03, 0x08, 0x01, 0x0a, 0x7a, 0x02, 0x08, 0x02}) // an ack, truncated
	f.Add([]byte{0x7a, 0x02, 0x08, 0x01, 0x7a, 0x02, 0x08, 0x02})       // two acks: they merge
	f.Add([]byte{0x08, 0x01, 0x08, 0x02, 0x72, 0x00})                   // seq twice: the last wins
	f.Add([]byte{0x72, 0x02, 0x22, 0x00, 0x7a, 0x00})                   // a send, then an ack: the last body wins
	f.Add([]byte{0x72, 0x06, 0x22, 0x01, 'x', 0x30, 0x01, 0x00})        // an unknown field in Send
	f.Fuzz(func(t *testing.T, payload []byte) {
		got := decodeFast(payload)
		if got == nil {
			return
		}
		want := new(chatpb.Frame)
		if err := proto.Unmarshal(payload, want); err != nil {
			t.Fatalf("hand decoder took %x, which proto.Unmarshal refuses: %v", payload, err)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("hand decoder: %v, proto.Unmarshal: %v", got, want)
		}
	})
}

// fastFrames are frames in the forms the hand decoder takes.
func fastFrames() []*chatpb.Frame {
	return []*chatpb.Frame{
		{Seq: 2, Body: &chatpb.Frame_Send{Send: &chatpb.Send{To: &chatpb.Send_Username{Username: "bob"}, Text: "hi", ClientMsgId: "c1"}}},
		{Seq: 3, Body: &chatpb.Frame_Send{Send: &chatpb.Send{To: &chatpb.Send_UserId{UserId: 7}, Text: "héllo ☃"}}},
		{Seq: 1 << 40, Body: &chatpb.Frame_Send{Send: &chatpb.Send{To: &chatpb.Send_GroupId{GroupId: 0}, Text: "to group 0"}}},
		{Body: &chatpb.Frame_Send{Send: &chatpb.Send{To: &chatpb.Send_Username{Username: ""}}}},
		{Body: &chatpb.Frame_Send{Send: &chatpb.Send{}}},
		{Seq: 4, Body: &chatpb.Frame_Ack{Ack: &chatpb.Ack{MsgIds: []uint64{1, 2, 1 << 60}}}},
		{Seq: 5, Body: &chatpb.Frame_Ack{Ack: &chatpb.Ack{}}},
	}
}

// The forms clients send are the ones decoded by hand, and a Send costs
// two allocations there (the frame's block and its strings), not six.
func TestDecodeFastTakesTheUsualForms(t *testing.T) {
	for _, fr := range fastFrames() {
		b, err := proto.Marshal(fr)
		if err != nil {
			t.Fatal(err)
		}
		got := decodeFast(b)
		if got == nil {
			t.Fatalf("%v: not decoded by hand", fr)
		}
		if !proto.Equal(got, fr) {
			t.Fatalf("decoded %v, sent %v", got, fr)
		}
		d, err := Decode(b)
		if err != nil || !proto.Equal(d, fr) {
			t.Fatalf("Decode: %v, %v", d, err)
		}
	}
	// Unpacked ids are msg_ids too.
	unpacked := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 9)
	unpacked = protowire.AppendVarint(protowire.AppendTag(unpacked, 1, protowire.VarintType), 10)
	b := protowire.AppendBytes(protowire.AppendTag(nil, 15, protowire.BytesType), unpacked)
	if got := decodeFast(b); got == nil || !proto.Equal(got, &chatpb.Frame{Body: &chatpb.Frame_Ack{Ack: &chatpb.Ack{MsgIds: []uint64{9, 10}}}}) {
		t.Fatalf("unpacked ack: %v", got)
	}

	send, _ := proto.Marshal(fastFrames()[0])
	if n := testing.AllocsPerRun(100, func() { _, _ = Decode(send) }); n > 2 {
		t.Errorf("decoding a Send allocates %v times, want at most 2", n)
	}
}

// What the hand decoder leaves is still decoded, by proto.Unmarshal,
// with its rules: the last seq and the last oneof member win, repeated
// messages merge, unknown fields are kept, bad UTF-8 is an invalid frame.
func TestDecodeFastLeavesTheRest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload []byte
	}{
		{"seq twice", []byte{0x08, 0x01, 0x08, 0x02, 0x72, 0x00}},
		{"username then user_id", []byte{0x72, 0x05, 0x12, 0x01, 'a', 0x08, 0x07}},
		{"two acks", []byte{0x7a, 0x02, 0x08, 0x01, 0x7a, 0x02, 0x08, 0x02}},
		{"unknown field", []byte{0x72, 0x05, 0x22, 0x01, 'x', 0x30, 0x01}},
		{"ping", []byte{0x08, 0x01, 0x6a, 0x00}},
	} {
		if decodeFast(tc.payload) != nil {
			t.Errorf("%s: decoded by hand", tc.name)
		}
		want := new(chatpb.Frame)
		if err := proto.Unmarshal(tc.payload, want); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, err := Decode(tc.payload)
		if err != nil || !proto.Equal(got, want) {
			t.Errorf("%s: Decode = %v, %v; want %v", tc.name, got, err, want)
		}
	}
	_, err := Decode([]byte{0x08, 0x05, 0x72, 0x03, 0x12, 0x01, 0xff})
	if ie, ok := err.(*InvalidFrameError); !ok || ie.Seq != 5 {
		t.Errorf("a username that is not UTF-8: %v, want an InvalidFrameError for seq 5", err)
	}
}
