package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/loopchat/loopchat/codec"
	chatpb "github.com/loopchat/loopchat/proto"
)

// ClientMaxFrame is the largest frame a client accepts from a server. It is
// far above the server's request limit because some responses (a GroupList
// of large groups) are big, and a client has no reason to be strict.
const ClientMaxFrame = 16 << 20

// AppendFrame appends f to dst as one length-prefixed frame.
func AppendFrame(dst []byte, f *chatpb.Frame) ([]byte, error) {
	return appendSized(dst, f, proto.Size(f))
}

// appendSized is AppendFrame for a frame whose size was just computed,
// which proto caches in the message: marshalling reuses it rather than
// walking the frame a second time.
func appendSized(dst []byte, f *chatpb.Frame, size int) ([]byte, error) {
	start := len(dst)
	dst = codec.AppendHeader(dst, size)
	dst, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(dst, f)
	if err != nil {
		return dst[:start], fmt.Errorf("protocol: encode frame: %w", err)
	}
	if len(dst)-start-codec.HeaderSize != size {
		// Changed by another goroutine since Size: a caller's bug, but
		// never a frame whose header lies about its length.
		return dst[:start], fmt.Errorf("protocol: encode frame: %w", errConcurrentChange)
	}
	return dst, nil
}

// errConcurrentChange reports a frame modified while it was being encoded.
var errConcurrentChange = errors.New("frame changed while encoding")

// EncodeMessagePush returns the frame that pushes a Message, given the
// Message already in wire form (stores encode it to keep it): a Frame that
// holds only a message is that field's header followed by the message, so
// the message is not encoded twice.
func EncodeMessagePush(message []byte) []byte {
	size := protowire.SizeTag(messageField) + protowire.SizeBytes(len(message))
	buf := codec.AppendHeader(make([]byte, 0, codec.HeaderSize+size), size)
	buf = protowire.AppendTag(buf, messageField, protowire.BytesType)
	return protowire.AppendBytes(buf, message)
}

// MessagePushRoom is the room MessagePushInPlace needs before a message:
// a frame header, the field's tag and the message's length.
const MessagePushRoom = codec.HeaderSize + 2 + binary.MaxVarintLen32

// MessagePushInPlace is EncodeMessagePush without a copy: buf[at:] is the
// message in wire form, and at >= MessagePushRoom bytes before it are free;
// it writes the frame's header into the last of those and returns the
// frame, which ends where buf does. A store that encodes a message with
// that room ahead of it so pushes it without another allocation.
func MessagePushInPlace(buf []byte, at int) []byte {
	size := protowire.SizeTag(messageField) + protowire.SizeBytes(len(buf)-at)
	start := at - (codec.HeaderSize + size - (len(buf) - at))
	head := codec.AppendHeader(buf[start:start], size)
	head = protowire.AppendTag(head, messageField, protowire.BytesType)
	protowire.AppendVarint(head, uint64(len(buf)-at))
	return buf[start:]
}

// EncodePush returns the frame that pushes m: Encode's bytes (a fuzzer
// checks), built with protowire in one allocation instead of through
// reflection and three. Every message a node receives from Redis or
// replays from an inbox is encoded this way. A message carrying unknown
// fields (stored by a newer node) goes through Encode, which keeps them,
// and so does one Encode refuses (invalid UTF-8), to say why as it does.
func EncodePush(m *chatpb.Message) ([]byte, error) {
	if len(m.ProtoReflect().GetUnknown()) > 0 || !utf8.ValidString(m.FromUsername) || !utf8.ValidString(m.Text) {
		return Encode(&chatpb.Frame{Body: &chatpb.Frame_Message{Message: m}})
	}
	// The message is written after room for the frame's header, which
	// MessagePushInPlace then fills in: no sizing pass. At most six
	// varint fields of a tag and 10 bytes, two strings of a tag and a
	// length of 5.
	bound := 6*11 + 2*6 + len(m.FromUsername) + len(m.Text)
	buf := make([]byte, MessagePushRoom, MessagePushRoom+bound)
	varint := func(num protowire.Number, v uint64) {
		if v != 0 {
			buf = protowire.AppendVarint(protowire.AppendTag(buf, num, protowire.VarintType), v)
		}
	}
	str := func(num protowire.Number, v string) {
		if v != "" {
			buf = protowire.AppendString(protowire.AppendTag(buf, num, protowire.BytesType), v)
		}
	}
	varint(msgIDField, m.MsgId)
	varint(msgFromID, m.FromUserId)
	str(msgFromName, m.FromUsername)
	varint(msgToID, m.ToUserId)
	varint(msgGroupID, m.GroupId)
	str(msgText, m.Text)
	varint(msgSentAt, uint64(m.SentAtMs))
	varint(msgSeq, m.Seq)
	return MessagePushInPlace(buf, MessagePushRoom), nil
}

// EncodeSendOK returns the frame answering request seq with
// SendOK{msg_id, sent_at_ms, online, seq: msgSeq}: the reply to every send,
// the most frequent frame a server writes, built without the three
// messages and the reflection Encode would use. The bytes are Encode's (a
// test checks).
func EncodeSendOK(seq, msgID uint64, sentAtMs int64, online bool, msgSeq uint64) []byte {
	var scratch [SendOKMaxSize]byte
	return append([]byte(nil), AppendSendOK(scratch[:0], seq, msgID, sentAtMs, online, msgSeq)...)
}

// SendOKMaxSize bounds the bytes of a SendOK frame, header included: its
// seq and four fields at their widest take 53.
const SendOKMaxSize = 64

// AppendSendOK appends EncodeSendOK's frame to dst, for a writer that
// encodes it straight into its own buffer.
func AppendSendOK(dst []byte, seq, msgID uint64, sentAtMs int64, online bool, msgSeq uint64) []byte {
	var scratch [48]byte // four tagged varints fit
	body := scratch[:0]
	if msgID != 0 {
		body = protowire.AppendVarint(protowire.AppendTag(body, sendOKMsgID, protowire.VarintType), msgID)
	}
	if sentAtMs != 0 {
		body = protowire.AppendVarint(protowire.AppendTag(body, sendOKSent, protowire.VarintType), uint64(sentAtMs))
	}
	if online {
		body = protowire.AppendVarint(protowire.AppendTag(body, sendOKLive, protowire.VarintType), 1)
	}
	if msgSeq != 0 {
		body = protowire.AppendVarint(protowire.AppendTag(body, sendOKSeq, protowire.VarintType), msgSeq)
	}
	size := protowire.SizeTag(sendOKField) + protowire.SizeBytes(len(body))
	if seq != 0 {
		size += protowire.SizeTag(seqField) + protowire.SizeVarint(seq)
	}
	dst = codec.AppendHeader(dst, size)
	if seq != 0 {
		dst = protowire.AppendVarint(protowire.AppendTag(dst, seqField, protowire.VarintType), seq)
	}
	dst = protowire.AppendTag(dst, sendOKField, protowire.BytesType)
	return protowire.AppendBytes(dst, body)
}

// Encode returns f as one length-prefixed frame in a new buffer of exactly
// its size.
func Encode(f *chatpb.Frame) ([]byte, error) {
	size := proto.Size(f)
	return appendSized(make([]byte, 0, codec.HeaderSize+size), f, size)
}

// InvalidFrameError reports a payload that is well-formed protobuf but not
// a valid Frame (invalid UTF-8 in a string, a wrong wire type for a known
// field). The framing is intact, so a server answers the request's Seq with
// an error and keeps the connection; any other decode error is garbage.
type InvalidFrameError struct {
	Seq uint64
	Err error
}

func (e *InvalidFrameError) Error() string { return "protocol: invalid frame: " + e.Err.Error() }

func (e *InvalidFrameError) Unwrap() error { return e.Err }

// Decode parses one frame payload (without its length prefix). The result
// does not alias payload. A payload that is valid protobuf but not a valid
// Frame returns an *InvalidFrameError.
func Decode(payload []byte) (*chatpb.Frame, error) {
	if f := decodeFast(payload); f != nil {
		return f, nil
	}
	f := new(chatpb.Frame)
	if err := proto.Unmarshal(payload, f); err != nil {
		if seq, ok := wireSeq(payload); ok {
			return nil, &InvalidFrameError{Seq: seq, Err: err}
		}
		return nil, fmt.Errorf("protocol: payload is not a Frame: %w", err)
	}
	return f, nil
}

// wireSeq walks the top-level fields of payload and returns field 1 (seq)
// if the whole payload is well-formed protobuf wire format.
func wireSeq(payload []byte) (seq uint64, ok bool) {
	for len(payload) > 0 {
		num, typ, n := protowire.ConsumeTag(payload)
		if n < 0 {
			return 0, false
		}
		payload = payload[n:]
		if num == 1 && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(payload)
			if m < 0 {
				return 0, false
			}
			seq, payload = v, payload[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, payload)
		if m < 0 {
			return 0, false
		}
		payload = payload[m:]
	}
	return seq, true
}

// Kind names the body of f: "register", "login", "send", "message", ...
// "empty" when no body is set, which is also what an unknown (newer) body
// type decodes to.
func Kind(f *chatpb.Frame) string {
	switch f.GetBody().(type) {
	case *chatpb.Frame_Register:
		return "register"
	case *chatpb.Frame_Login:
		return "login"
	case *chatpb.Frame_Logout:
		return "logout"
	case *chatpb.Frame_Ping:
		return "ping"
	case *chatpb.Frame_Send:
		return "send"
	case *chatpb.Frame_Ack:
		return "ack"
	case *chatpb.Frame_AddFriend:
		return "add_friend"
	case *chatpb.Frame_ListFriends:
		return "list_friends"
	case *chatpb.Frame_CreateGroup:
		return "create_group"
	case *chatpb.Frame_JoinGroup:
		return "join_group"
	case *chatpb.Frame_LeaveGroup:
		return "leave_group"
	case *chatpb.Frame_ListGroups:
		return "list_groups"
	case *chatpb.Frame_History:
		return "history"
	case *chatpb.Frame_MarkRead:
		return "mark_read"
	case *chatpb.Frame_ListConversations:
		return "list_conversations"
	case *chatpb.Frame_Typing:
		return "typing"
	case *chatpb.Frame_SetPresenceVisible:
		return "set_presence_visible"
	case *chatpb.Frame_RemoveFriend:
		return "remove_friend"
	case *chatpb.Frame_Block:
		return "block"
	case *chatpb.Frame_Unblock:
		return "unblock"
	case *chatpb.Frame_ListBlocked:
		return "list_blocked"
	case *chatpb.Frame_BlockList:
		return "block_list"
	case *chatpb.Frame_ConversationList:
		return "conversation_list"
	case *chatpb.Frame_ReadReceipt:
		return "read_receipt"
	case *chatpb.Frame_HistoryPage:
		return "history_page"
	case *chatpb.Frame_RegisterOk:
		return "register_ok"
	case *chatpb.Frame_LoginOk:
		return "login_ok"
	case *chatpb.Frame_Ok:
		return "ok"
	case *chatpb.Frame_Pong:
		return "pong"
	case *chatpb.Frame_SendOk:
		return "send_ok"
	case *chatpb.Frame_FriendList:
		return "friend_list"
	case *chatpb.Frame_GroupCreated:
		return "group_created"
	case *chatpb.Frame_GroupList:
		return "group_list"
	case *chatpb.Frame_Error:
		return "error"
	case *chatpb.Frame_Message:
		return "message"
	case *chatpb.Frame_Kicked:
		return "kicked"
	case *chatpb.Frame_Presence:
		return "presence"
	case *chatpb.Frame_TypingNotice:
		return "typing_notice"
	}
	return "empty"
}

// IsRequest reports whether f's body is a request a client may send.
func IsRequest(f *chatpb.Frame) bool {
	switch f.GetBody().(type) {
	case *chatpb.Frame_Register, *chatpb.Frame_Login, *chatpb.Frame_Logout, *chatpb.Frame_Ping,
		*chatpb.Frame_Send, *chatpb.Frame_Ack, *chatpb.Frame_AddFriend, *chatpb.Frame_ListFriends,
		*chatpb.Frame_CreateGroup, *chatpb.Frame_JoinGroup, *chatpb.Frame_LeaveGroup,
		*chatpb.Frame_ListGroups, *chatpb.Frame_History, *chatpb.Frame_MarkRead,
		*chatpb.Frame_ListConversations, *chatpb.Frame_Typing, *chatpb.Frame_SetPresenceVisible,
		*chatpb.Frame_RemoveFriend, *chatpb.Frame_Block, *chatpb.Frame_Unblock, *chatpb.Frame_ListBlocked:
		return true
	}
	return false
}

// NeedsLogin reports whether a request needs an authenticated session:
// every request but Register, Login and Ping.
func NeedsLogin(f *chatpb.Frame) bool {
	switch f.GetBody().(type) {
	case *chatpb.Frame_Register, *chatpb.Frame_Login, *chatpb.Frame_Ping:
		return false
	}
	return true
}
