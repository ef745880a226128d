package protocol

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Any payload decodes to a frame that encodes back to itself, or to an
// error; a malformed body with intact wire format still yields its seq.
// `go test -fuzz FuzzDecodeFrame ./protocol`.
func FuzzDecodeFrame(f *testing.F) {
	for _, fr := range []*chatpb.Frame{
		{Seq: 1, Body: &chatpb.Frame_Register{Register: &chatpb.Register{Username: "alice", Password: "hunter2hunter2"}}},
		{Seq: 2, Body: &chatpb.Frame_Send{Send: &chatpb.Send{To: &chatpb.Send_Username{Username: "bob"}, Text: "hi", ClientMsgId: "c1"}}},
		{Seq: 3, Body: &chatpb.Frame_Ack{Ack: &chatpb.Ack{MsgIds: []uint64{1, 2, 1 << 60}}}},
		{Seq: 1 << 63, Body: &chatpb.Frame_Ping{Ping: &chatpb.Ping{}}},
		{Seq: 4, Body: &chatpb.Frame_History{History: &chatpb.History{PeerUsername: "bob", BeforeSeq: proto.Uint64(7), Limit: 50}}},
		{Seq: 5, Body: &chatpb.Frame_History{History: &chatpb.History{GroupId: 3, AfterSeq: proto.Uint64(0)}}},
		{Seq: 6, Body: &chatpb.Frame_ListConversations{ListConversations: &chatpb.ListConversations{Limit: 20}}},
		{Seq: 7, Body: &chatpb.Frame_SetPresenceVisible{SetPresenceVisible: &chatpb.SetPresenceVisible{Visible: true}}},
		{Seq: 8, Body: &chatpb.Frame_Typing{Typing: &chatpb.Typing{PeerUsername: "bob"}}},
		{Seq: 9, Body: &chatpb.Frame_Typing{Typing: &chatpb.Typing{GroupId: 3}}},
		{Seq: 10, Body: &chatpb.Frame_RemoveFriend{RemoveFriend: &chatpb.RemoveFriend{Username: "bob"}}},
		{Seq: 11, Body: &chatpb.Frame_Block{Block: &chatpb.Block{Username: "bob"}}},
		{Seq: 12, Body: &chatpb.Frame_BlockList{BlockList: &chatpb.BlockList{Users: []*chatpb.BlockedUser{{UserId: 2, Username: "bob"}}}}},
		{Body: &chatpb.Frame_TypingNotice{TypingNotice: &chatpb.TypingNotice{UserId: 2, Username: "bob", GroupId: 3}}},
		{Body: &chatpb.Frame_Presence{Presence: &chatpb.Presence{UserId: 2, Username: "bob", LastSeenMs: 1795315268512}}},
	} {
		b, err := proto.Marshal(fr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x08, 0x05, 0x52, 0x03, 0x0a, 0x01, 0xff}) // seq 5, a username that is not UTF-8
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, payload []byte) {
		fr, err := Decode(payload)
		var invalid *InvalidFrameError
		switch {
		case errors.As(err, &invalid):
			if seq, ok := wireSeq(payload); !ok || seq != invalid.Seq {
				t.Fatalf("InvalidFrameError seq %d, wire format says %d (%v)", invalid.Seq, seq, ok)
			}
			return
		case err != nil:
			if _, ok := wireSeq(payload); ok {
				t.Fatalf("well-formed wire format refused without its seq: %v", err)
			}
			return
		}
		b, err := Encode(fr)
		if err != nil {
			t.Fatalf("decoded frame does not encode: %v", err)
		}
		again, err := Decode(b[4:])
		if err != nil || !proto.Equal(fr, again) {
			t.Fatalf("round trip: %v, %v != %v", err, again, fr)
		}
	})
}

// Anything published on a user, group or the broadcast channel either
// parses into an event that passes a client's own checks and that
// channel's rules and survives a round trip, or is refused. Each payload
// is tried on all three (as the channel of its own group_id for a group).
// `go test -fuzz FuzzParseChannelEvent ./protocol`.
func FuzzParseChannelEvent(f *testing.F) {
	f.Add([]byte(`{"type":"message","msg_id":382722139389689856,"from_user_id":2,"from_username":"bob","to_user_id":1,"text":"hi alice!","sent_at_ms":1795315268512,"seq":7}`))
	f.Add([]byte(`{"type":"message","msg_id":"382722139389689856","from_username":"billing","text":"your invoice is ready"}`))
	f.Add([]byte(`{"type":"message","msg_id":382722139389689857,"from_user_id":1,"to_user_id":2,"text":"mine","node_id":"n1","conn_id":9,"device":"phone"}`))
	f.Add([]byte(`{"type":"message","from_username":"no spaces allowed","text":"x"}`))
	f.Add([]byte(`{"type":"message","text":""}`))
	f.Add([]byte(`{"type":"login","node_id":"n2","conn_id":17,"at_ms":1795315268512}`))
	f.Add([]byte(`{"type":"login"}`))
	f.Add([]byte(`{"type":"device_kick","device":"laptop","gen":1796406298459000,"epoch":"9f0c"}`))
	f.Add([]byte(`{"type":"device_kick","device":"laptop"}`))
	f.Add([]byte(`{"type":"read","reader_user_id":2,"conv":"d1:2","up_to_seq":17,"node_id":"n1","conn_id":9,"epoch":"9f0c"}`))
	f.Add([]byte(`{"type":"read","conv":"g5"}`))
	f.Add([]byte(`{"type":"presence","user_id":2,"online":true,"username":"bob","epoch":"9f0c"}`))
	f.Add([]byte(`{"type":"presence","user_id":2,"online":false,"last_seen_ms":1795315268512,"username":"bob"}`))
	f.Add([]byte(`{"type":"presence","user_id":2,"online":true,"last_seen_ms":5}`))
	f.Add([]byte(`{"type":"presence","user_id":0,"username":"no spaces"}`))
	f.Add([]byte(`{"type":"typing","user_id":2,"username":"bob","epoch":"9f0c"}`))
	f.Add([]byte(`{"type":"typing","user_id":2,"group_id":5}`))
	f.Add([]byte(`{"type":"typing","username":"bob"}`))
	f.Add([]byte(`{"type":"typing","user_id":2,"username":"b\u0000b"}`))
	f.Add([]byte(`{"type":"kick","text":"banned for spam","epoch":"9f0c"}`))
	f.Add([]byte(`{"type":"kick"}`))
	f.Add([]byte(`{"type":"kick","text":"\xff"}`))
	f.Add([]byte(`{"type":"other"}`))
	f.Add([]byte(`{"type":"message","text":"\ud800"}`))
	f.Add([]byte(`[1,2`))
	f.Add([]byte(`{"type":"group_member","user_id":2,"group_id":5,"joined":true,"epoch":"9f0c"}`))
	f.Add([]byte(`{"type":"group_member","user_id":2,"group_id":5}`))
	f.Add([]byte(`{"type":"group_member","user_id":2}`))
	f.Add([]byte(`{"type":"message","msg_id":382722139389689856,"from_user_id":2,"from_username":"bob","group_id":5,"text":"hi all","sent_at_ms":1795315268512,"seq":3,"to":[1,3,4]}`))
	f.Add([]byte(`{"type":"message","from_user_id":2,"group_id":5,"text":"hi","node_id":"n1","conn_id":4,"device":"phone","to":[2,7]}`))
	f.Add([]byte(`{"type":"message","group_id":5,"text":"nobody","to":[]}`))
	f.Add([]byte(`{"type":"message","group_id":5,"text":"zero","to":[0]}`))
	f.Add([]byte(`{"type":"message","group_id":5,"to_user_id":3,"text":"both","to":[3]}`))
	f.Add([]byte(`{"type":"message","to_user_id":3,"text":"to on a user channel","to":[3]}`))
	f.Add([]byte(`{"type":"typing","user_id":2,"username":"bob","group_id":5,"to":[1,3]}`))
	f.Add([]byte(`{"type":"message","msg_id":382722139389689858,"from_username":"ops","text":"maintenance at 5","sent_at_ms":1795315268512}`))
	f.Add([]byte(`{"type":"message","text":"everyone","to":[-1]}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		if ev, err := ParseChannelEvent(payload); err == nil {
			checkChannelEvent(t, ev)
			if len(ev.To) > 0 {
				t.Fatalf("user channel accepted \"to\" %v", ev.To)
			}
			roundTrip(t, ev, ParseChannelEvent)
		}
		if ev, err := ParseBroadcastEvent(payload); err == nil {
			checkChannelEvent(t, ev)
			if ev.Type != EventMessage || ev.ToUserID != 0 || ev.GroupID != 0 || len(ev.To) > 0 {
				t.Fatalf("broadcast channel accepted %+v", ev)
			}
			roundTrip(t, ev, ParseBroadcastEvent)
		}
		var probe struct {
			GroupID uint64 `json:"group_id"`
		}
		if json.Unmarshal(payload, &probe) != nil {
			probe.GroupID = 5
		}
		if ev, err := ParseGroupEvent(payload, probe.GroupID); err == nil {
			checkChannelEvent(t, ev)
			if ev.Type != EventMessage && ev.Type != EventTyping || ev.GroupID != probe.GroupID || ev.ToUserID != 0 ||
				len(ev.To) == 0 || len(ev.To) > MaxGroupRecipients || slices.Contains(ev.To, 0) {
				t.Fatalf("group channel %d accepted %+v", probe.GroupID, ev)
			}
			roundTrip(t, ev, func(b []byte) (*ChannelEvent, error) { return ParseGroupEvent(b, probe.GroupID) })
		}
	})
}

// checkChannelEvent fails t unless ev passes the checks of its type that
// every channel applies.
func checkChannelEvent(t *testing.T, ev *ChannelEvent) {
	t.Helper()
	switch ev.Type {
	case EventMessage:
		if ValidateText(ev.Text) != nil || !utf8.ValidString(ev.Text) {
			t.Fatalf("accepted text %q", ev.Text)
		}
		if ev.FromUsername != "" && ValidateUsername(ev.FromUsername) != nil {
			t.Fatalf("accepted from_username %q", ev.FromUsername)
		}
		if len(ev.Device) > maxDeviceID {
			t.Fatalf("accepted device of %d bytes", len(ev.Device))
		}
	case EventLogin:
		if ev.NodeID == "" || len(ev.NodeID) > maxNodeID {
			t.Fatalf("accepted node_id %q", ev.NodeID)
		}
	case EventDeviceKick:
		if ev.Gen == 0 || len(ev.Device) > maxDeviceID {
			t.Fatalf("accepted device_kick event %+v", ev)
		}
	case EventRead:
		if ev.ReaderUserID == 0 || ev.UpToSeq == 0 || ev.Conv == "" || len(ev.Conv) > maxConvKey {
			t.Fatalf("accepted read event %+v", ev)
		}
	case EventTyping:
		if ev.UserID == 0 || ev.Username != "" && ValidateUsername(ev.Username) != nil {
			t.Fatalf("accepted typing event %+v", ev)
		}
	case EventPresence:
		if ev.UserID == 0 || ev.LastSeenMs < 0 || ev.Online && ev.LastSeenMs != 0 ||
			ev.Username != "" && ValidateUsername(ev.Username) != nil {
			t.Fatalf("accepted presence event %+v", ev)
		}
	case EventGroupMember:
		if ev.UserID == 0 || ev.GroupID == 0 {
			t.Fatalf("accepted group_member event %+v", ev)
		}
	case EventKick:
		if ValidateKickText(ev.Text) != nil {
			t.Fatalf("accepted kick event %+v", ev)
		}
	default:
		t.Fatalf("accepted type %q", ev.Type)
	}
}

// roundTrip fails t unless ev encodes to JSON that parse reads back as ev.
func roundTrip(t *testing.T, ev *ChannelEvent, parse func([]byte) (*ChannelEvent, error)) {
	t.Helper()
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	again, err := parse(b)
	if err != nil || !reflect.DeepEqual(ev, again) {
		t.Fatalf("round trip of %s: %v, %+v != %+v", b, err, again, ev)
	}
}
