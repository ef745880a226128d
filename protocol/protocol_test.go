package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/loopchat/loopchat/codec"
	chatpb "github.com/loopchat/loopchat/proto"
)

func TestValidation(t *testing.T) {
	cases := []struct {
		name string
		err  error
	}{
		{"abc", ValidateUsername("abc")},
		{"a.b-c_9", ValidateUsername("a.b-c_9")},
		{strings.Repeat("u", 32), ValidateUsername(strings.Repeat("u", 32))},
		{"password 8", ValidatePassword("12345678")},
		{"password 128", ValidatePassword(strings.Repeat("p", 128))},
		{"text 1", ValidateText("x")},
		{"text 4096", ValidateText(strings.Repeat("é", 2048))},
		{"desc empty", ValidateGroupDescription("")},
		{"no client msg id", ValidateClientMsgID("")},
	}
	for _, c := range cases {
		if c.err != nil {
			t.Errorf("%s: unexpected %v", c.name, c.err)
		}
	}
	bad := []struct {
		name string
		err  error
	}{
		{"short username", ValidateUsername("ab")},
		{"long username", ValidateUsername(strings.Repeat("u", 33))},
		{"space in username", ValidateUsername("a b")},
		{"unicode username", ValidateUsername("alicé")},
		{"short password", ValidatePassword("1234567")},
		{"long password", ValidatePassword(strings.Repeat("p", 129))},
		{"empty text", ValidateText("")},
		{"long text", ValidateText(strings.Repeat("x", 4097))},
		{"invalid utf-8 text", ValidateText("ok\xffno")},
		{"empty group name", ValidateGroupName("")},
		{"long group name", ValidateGroupName(strings.Repeat("g", 65))},
		{"long description", ValidateGroupDescription(strings.Repeat("d", 513))},
		{"long client msg id", ValidateClientMsgID(strings.Repeat("k", 65))},
	}
	for _, c := range bad {
		if !HasCode(c.err, chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT) {
			t.Errorf("%s: got %v, want invalid_argument", c.name, c.err)
		}
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	in := &chatpb.Frame{Seq: 42, Body: &chatpb.Frame_Send{Send: &chatpb.Send{
		To: &chatpb.Send_GroupId{GroupId: 7}, Text: "héllo", ClientMsgId: "c1"}}}
	buf, err := Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	r := codec.NewReader(strings.NewReader(string(buf)), codec.DefaultMaxFrame)
	payload, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	out, err := Decode(payload)
	if err != nil {
		t.Fatal(err)
	}
	if out.Seq != 42 || out.GetSend().GetGroupId() != 7 || out.GetSend().Text != "héllo" || Kind(out) != "send" {
		t.Fatalf("round trip = %v", out)
	}
	// AppendFrame appends after existing bytes.
	two, _ := AppendFrame(append([]byte(nil), buf...), in)
	if len(two) != 2*len(buf) || string(two[len(buf):]) != string(buf) {
		t.Fatal("AppendFrame did not append a second identical frame")
	}
}

func TestEncodeMessagePushMatchesEncode(t *testing.T) {
	for _, text := range []string{"", "hi", strings.Repeat("é", 200)} { // 1- and 2-byte lengths
		m := &chatpb.Message{MsgId: 1 << 40, FromUserId: 3, FromUsername: "alice", ToUserId: 4, Text: text, SentAtMs: 1700000000000}
		want, err := Encode(&chatpb.Frame{Body: &chatpb.Frame_Message{Message: m}})
		if err != nil {
			t.Fatal(err)
		}
		encoded, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got := EncodeMessagePush(encoded)
		if string(got) != string(want) {
			t.Fatalf("text %d bytes: EncodeMessagePush = %x, Encode = %x", len(text), got, want)
		}
		f, err := Decode(got[codec.HeaderSize:])
		if err != nil || f.GetMessage().GetText() != text || f.GetMessage().GetMsgId() != m.MsgId {
			t.Fatalf("decoded push = %v, %v", f, err)
		}
	}
}

func TestDecodeDistinguishesInvalidFromGarbage(t *testing.T) {
	// Well-formed wire format, but a string field holds invalid UTF-8.
	invalid := []byte{0x08, 0x05, 0x72, 0x07, 0x12, 0x01, 'b', 0x22, 0x02, 0xff, 0xfe}
	_, err := Decode(invalid)
	var ife *InvalidFrameError
	if !errors.As(err, &ife) || ife.Seq != 5 {
		t.Fatalf("invalid UTF-8: %v, want InvalidFrameError with seq 5", err)
	}
	// Not protobuf at all.
	_, err = Decode([]byte{0xff, 0xff, 0xff, 0xff, 0xff})
	if err == nil || errors.As(err, &ife) {
		t.Fatalf("garbage: %v, want a plain decode error", err)
	}
	// An unknown field decodes to an empty body: not a request.
	f, err := Decode([]byte{0x08, 0x01, 0xc0, 0x0c, 0x01})
	if err != nil || f.Body != nil || Kind(f) != "empty" || IsRequest(f) {
		t.Fatalf("unknown body = %v, %v", f, err)
	}
}

func TestRequestClassification(t *testing.T) {
	reqs := map[string]*chatpb.Frame{
		"register": {Body: &chatpb.Frame_Register{}},
		"login":    {Body: &chatpb.Frame_Login{}},
		"ping":     {Body: &chatpb.Frame_Ping{}},
		"send":     {Body: &chatpb.Frame_Send{}},
		"ack":      {Body: &chatpb.Frame_Ack{}},

		"list_conversations": {Body: &chatpb.Frame_ListConversations{}},
		"typing":             {Body: &chatpb.Frame_Typing{}},

		"set_presence_visible": {Body: &chatpb.Frame_SetPresenceVisible{}},
		"remove_friend":        {Body: &chatpb.Frame_RemoveFriend{}},
		"block":                {Body: &chatpb.Frame_Block{}},
		"unblock":              {Body: &chatpb.Frame_Unblock{}},
		"list_blocked":         {Body: &chatpb.Frame_ListBlocked{}},
	}
	for kind, f := range reqs {
		if !IsRequest(f) || Kind(f) != kind {
			t.Errorf("%s: IsRequest=%v Kind=%q", kind, IsRequest(f), Kind(f))
		}
	}
	for _, f := range []*chatpb.Frame{{Body: &chatpb.Frame_Register{}}, {Body: &chatpb.Frame_Login{}}, {Body: &chatpb.Frame_Ping{}}} {
		if NeedsLogin(f) {
			t.Errorf("%s needs login", Kind(f))
		}
	}
	if !NeedsLogin(&chatpb.Frame{Body: &chatpb.Frame_Send{}}) {
		t.Error("send does not need login")
	}
	for _, f := range []*chatpb.Frame{{Body: &chatpb.Frame_ListConversations{}}, {Body: &chatpb.Frame_Typing{}}, {Body: &chatpb.Frame_SetPresenceVisible{}},
		{Body: &chatpb.Frame_RemoveFriend{}}, {Body: &chatpb.Frame_Block{}}, {Body: &chatpb.Frame_Unblock{}}, {Body: &chatpb.Frame_ListBlocked{}}} {
		if !NeedsLogin(f) {
			t.Errorf("%s does not need login", Kind(f))
		}
	}
	for _, f := range []*chatpb.Frame{{Body: &chatpb.Frame_Pong{}}, {Body: &chatpb.Frame_Message{}}, {Body: &chatpb.Frame_Kicked{}},
		{Body: &chatpb.Frame_ConversationList{}}, {Body: &chatpb.Frame_Presence{}}, {Body: &chatpb.Frame_TypingNotice{}}, {Body: &chatpb.Frame_BlockList{}}, {}} {
		if IsRequest(f) {
			t.Errorf("%s counted as a request", Kind(f))
		}
	}
}

// Errors match by identity: two errors that share a code are different
// failures. Code-level questions go through CodeOf and HasCode; only an
// error decoded from the wire, which knows no more than its code, also
// matches the sentinel of that code.
func TestErrorIdentityAndCodes(t *testing.T) {
	notFound, invalid := chatpb.ErrorCode_ERROR_CODE_NOT_FOUND, chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT
	err := Errorf(notFound, "no such group")
	if errors.Is(err, ErrNotFound) || errors.Is(ErrNotFound, err) {
		t.Fatal("an error matches another by code")
	}
	wrapped := fmt.Errorf("store: %w", err)
	if !errors.Is(wrapped, err) {
		t.Fatal("a wrapped error does not match itself")
	}
	if CodeOf(wrapped) != notFound || !HasCode(wrapped, notFound) || HasCode(wrapped, invalid) {
		t.Fatalf("CodeOf = %v; HasCode does not follow it", CodeOf(wrapped))
	}
	unspecified := chatpb.ErrorCode_ERROR_CODE_UNSPECIFIED
	for _, e := range []error{nil, errors.New("disk on fire")} {
		if CodeOf(e) != unspecified || HasCode(e, unspecified) {
			t.Fatalf("%v: CodeOf = %v, HasCode(unspecified) = %v", e, CodeOf(e), HasCode(e, unspecified))
		}
	}
	if err.Error() != "not_found: no such group" {
		t.Fatalf("Error() = %q", err.Error())
	}

	sentinels := []*Error{ErrInvalidArgument, ErrUnauthenticated, ErrNotFound, ErrAlreadyExists,
		ErrPermissionDenied, ErrRateLimited, ErrUnavailable, ErrInternal, ErrProtocol}
	if len(sentinels) != len(chatpb.ErrorCode_name)-1 {
		t.Fatalf("%d sentinels for %d codes", len(sentinels), len(chatpb.ErrorCode_name)-1)
	}
	for _, s := range sentinels {
		wire := ErrorFromProto(&chatpb.Error{Code: s.Code, Message: "said the server"})
		if CodeOf(wire) != s.Code || wire.Message != "said the server" {
			t.Fatalf("ErrorFromProto = %+v", wire)
		}
		for _, other := range sentinels {
			if got := errors.Is(fmt.Errorf("call: %w", wire), other); got != (other == s) {
				t.Errorf("wire %s matches %s: %v", CodeName(s.Code), CodeName(other.Code), got)
			}
			if got := errors.Is(s, other); got != (other == s) {
				t.Errorf("sentinel %s matches %s: %v", CodeName(s.Code), CodeName(other.Code), got)
			}
		}
		if errors.Is(wire, Errorf(s.Code, "generic")) {
			t.Errorf("wire %s matches a non-sentinel error of its code", CodeName(s.Code))
		}
	}
	if wire := ErrorFromProto(&chatpb.Error{Code: 99}); errors.Is(wire, ErrInternal) || CodeOf(wire) != 99 {
		t.Fatal("an unknown wire code matches a sentinel or loses its code")
	}
	for c := range chatpb.ErrorCode_name {
		if CodeName(chatpb.ErrorCode(c)) == "" {
			t.Errorf("code %d has no name", c)
		}
	}
}

// The byte-by-byte example in docs/protocol.md, read from the doc itself
// so that the doc cannot drift from what Encode writes.
func TestDocumentedBytes(t *testing.T) {
	blocks := documentedFrames(t, "../docs/protocol.md", "## A session, byte by byte")
	want := []*chatpb.Frame{
		{Seq: 1, Body: &chatpb.Frame_Register{Register: &chatpb.Register{Username: "alice", Password: "hunter2hunter2"}}},
		{Seq: 1, Body: &chatpb.Frame_RegisterOk{RegisterOk: &chatpb.RegisterOK{UserId: 1}}},
	}
	if len(blocks) != len(want) {
		t.Fatalf("the doc shows %d frames, want %d", len(blocks), len(want))
	}
	for i, f := range want {
		enc, err := Encode(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc, blocks[i]) {
			t.Errorf("%s: the doc shows\n%x\nEncode writes\n%x", Kind(f), blocks[i], enc)
		}
	}
}

// documentedFrames returns the bytes of each indented hex block in the
// section of doc that starts at heading: on each line, the hex pairs before
// the first run of two spaces (the rest is the line's explanation).
func documentedFrames(t *testing.T, doc, heading string) [][]byte {
	t.Helper()
	raw, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	start := strings.Index(text, "\n"+heading+"\n")
	if start < 0 {
		t.Fatalf("%s has no section %q", doc, heading)
	}
	section := text[start+len(heading)+2:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var blocks [][]byte
	var cur []byte
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "    ") {
			if cur != nil {
				blocks, cur = append(blocks, cur), nil
			}
			continue
		}
		hexPart, _, _ := strings.Cut(strings.TrimSpace(line), "  ")
		b, err := hex.DecodeString(strings.ReplaceAll(hexPart, " ", ""))
		if err != nil {
			t.Fatalf("%s: line %q does not start with hex bytes: %v", doc, line, err)
		}
		cur = append(cur, b...)
	}
	if cur != nil {
		blocks = append(blocks, cur)
	}
	return blocks
}
