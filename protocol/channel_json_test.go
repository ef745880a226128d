package protocol

import (
	"encoding/json"
	"reflect"
	"testing"
)

// channelEventSeeds are the shapes nodes publish, and a few they do not.
var channelEventSeeds = []string{
	`{"type":"message","msg_id":382722139389689856,"from_user_id":2,"from_username":"bob","to_user_id":1,"text":"hi alice!","sent_at_ms":1795315268512,"seq":12,"epoch":"9f0c2d"}`,
	`{"type":"message","msg_id":"382722139389689856","from_user_id":2,"group_id":7,"text":"héllo <b>","sent_at_ms":1,"node_id":"n1","conn_id":17,"device":"phone","to":[1,3,5],"epoch":"e"}`,
	`{"type":"login","node_id":"n2","conn_id":17,"at_ms":1795315268512,"gen":1796406298459123,"device":"phone","epoch":"9f0c"}`,
	`{"type":"read","reader_user_id":77,"conv":"d5:9","up_to_seq":3,"node_id":"n1","conn_id":4}`,
	`{"type":"presence","user_id":3,"username":"carol","online":true}`,
	`{"type":"presence","user_id":3,"last_seen_ms":-5,"online":false}`,
	`{"type":"group_member","user_id":3,"group_id":4,"joined":true,"seq":9}`,
	`{"type":"typing","user_id":3,"group_id":4,"to":[]}`,
	` { "type" : "kick" , "text" : "bye" } `,
	`{"type":"message","text":"a\nb","msg_id":1e3}`,
	`{"Type":"message","text":"x"}`,
	`{"type":"message","msg_id":"007","seq":01}`,
	`{"type":"message","unknown":{"a":[1,2]}}`,
	`{"type":"message","text":null}`,
	`{"type":"message"}x`,
	`{}`,
	`null`,
}

// The fast decoder agrees with encoding/json on everything it accepts.
// `go test -fuzz FuzzChannelEventFast ./protocol`.
func FuzzChannelEventFast(f *testing.F) {
	for _, s := range channelEventSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		var fast ChannelEvent
		if !decodeEventFast(p, &fast) {
			return
		}
		var slow ChannelEvent
		if err := json.Unmarshal([]byte(p), &slow); err != nil {
			t.Fatalf("fast decoder took %q, which encoding/json refuses: %v", p, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q:\nfast %+v\njson %+v", p, fast, slow)
		}
	})
}

// AppendChannelEvent writes what json.Marshal writes, and nodes read
// their own events on the fast path whenever the strings need no escapes.
// `go test -fuzz FuzzAppendChannelEvent ./protocol`.
func FuzzAppendChannelEvent(f *testing.F) {
	f.Add("message", "bob", "hi alice!", "n1", "phone", "9f0c", uint64(382722139389689856), uint64(2), int64(1795315268512), true, []byte{1, 2})
	f.Add("login", "", "", "n2", "", "", uint64(0), uint64(17), int64(-1), false, []byte{})
	f.Add("typing", "a<b>&\"\\", "\x00\b\f\n\r\t\x1f\x7f", "\u2028\u2029", "\xff\xfe", "é", uint64(1), uint64(1), int64(0), false, []byte(nil))
	f.Fuzz(func(t *testing.T, typ, name, text, node, device, epoch string, id, n uint64, ms int64, flag bool, to []byte) {
		ev := ChannelEvent{Type: typ, MsgID: Uint64(id), FromUserID: n, FromUsername: name, ToUserID: n + 1,
			GroupID: id >> 3, Text: text, SentAtMs: ms, Seq: n >> 1, ReaderUserID: n >> 2, Conv: device,
			UpToSeq: id >> 2, UserID: n, Username: name, Online: flag, LastSeenMs: -ms, NodeID: node,
			ConnID: id, AtMs: ms >> 1, Gen: n, Device: device, Joined: !flag, Epoch: epoch}
		for _, b := range to {
			ev.To = append(ev.To, uint64(b)*n)
		}
		want, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		got := AppendChannelEvent(nil, &ev)
		if string(got) != string(want) {
			t.Fatalf("AppendChannelEvent:\n got %s\nwant %s", got, want)
		}
		var back ChannelEvent
		if decodeEventFast(string(got), &back) {
			var slow ChannelEvent
			if err := json.Unmarshal(got, &slow); err != nil || !reflect.DeepEqual(back, slow) {
				t.Fatalf("%s:\nfast %+v\njson %+v (%v)", got, back, slow, err)
			}
		}
	})
}

// What nodes publish for a chat message, with text in any script, is
// read on the fast path: the gain is on the path every message takes.
func TestChannelMessageFastPath(t *testing.T) {
	ev := ChannelEvent{Type: EventMessage, MsgID: 382722139389689856, FromUserID: 2, FromUsername: "bob",
		ToUserID: 1, Text: "héllo, 世界 — see you at 5", SentAtMs: 1795315268512, Seq: 12, Epoch: "9f0c2d",
		NodeID: "n1", ConnID: 17, Device: "phone"}
	p := AppendChannelEvent(nil, &ev)
	var got ChannelEvent
	if !decodeEventFast(string(p), &got) {
		t.Fatalf("%s: not on the fast path", p)
	}
	if !reflect.DeepEqual(got, ev) {
		t.Fatalf("got %+v, want %+v", got, ev)
	}
	parsed, err := ParseChannelEvent(p)
	if err != nil || !reflect.DeepEqual(*parsed, ev) {
		t.Fatalf("ParseChannelEvent: %+v, %v", parsed, err)
	}
	// Escapes and other spellings take encoding/json's path, to the same result.
	for _, s := range []string{
		`{"type":"message","text":"a\nb","from_user_id":2}`,
		`{"TYPE":"message","text":"ab","from_user_id":2}`,
		`{"type":"message","text":"ab","from_user_id":2,"extra":[{}]}`,
	} {
		ev, err := ParseChannelEvent(s)
		if err != nil || ev.Type != EventMessage || ev.FromUserID != 2 {
			t.Fatalf("%s: %+v, %v", s, ev, err)
		}
	}
}

func BenchmarkParseChannelMessage(b *testing.B) {
	ev := ChannelEvent{Type: EventMessage, MsgID: 382722139389689856, FromUserID: 2, FromUsername: "bob",
		ToUserID: 1, Text: "hello there, how are you doing today?", SentAtMs: 1795315268512, Seq: 12, Epoch: "9f0c2d4a9f0c2d4a9f0c2d4a9f0c2d4a"}
	p := string(AppendChannelEvent(nil, &ev))
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ParseChannelEvent(p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding_json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var ev ChannelEvent
			if err := json.Unmarshal([]byte(p), &ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = AppendChannelEvent(make([]byte, 0, 256), &ev)
		}
	})
	b.Run("marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
}
