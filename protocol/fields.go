package protocol

import (
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Field numbers, from the schema, of the frames this package encodes or
// decodes by hand with protowire (frame.go, decode_fast.go): looked up by
// name, so a renumbered field cannot go unnoticed (the lookup panics on a
// renamed one at start).
var (
	seqField     = fieldNumber(&chatpb.Frame{}, "seq")
	sendField    = fieldNumber(&chatpb.Frame{}, "send")
	ackField     = fieldNumber(&chatpb.Frame{}, "ack")
	sendOKField  = fieldNumber(&chatpb.Frame{}, "send_ok")
	messageField = fieldNumber(&chatpb.Frame{}, "message") // the Frame field that pushes a Message

	sendUserID    = fieldNumber(&chatpb.Send{}, "user_id")
	sendUsername  = fieldNumber(&chatpb.Send{}, "username")
	sendGroupID   = fieldNumber(&chatpb.Send{}, "group_id")
	sendText      = fieldNumber(&chatpb.Send{}, "text")
	sendClientMsg = fieldNumber(&chatpb.Send{}, "client_msg_id")

	ackMsgIDsField = fieldNumber(&chatpb.Ack{}, "msg_ids")

	sendOKMsgID = fieldNumber(&chatpb.SendOK{}, "msg_id")
	sendOKSent  = fieldNumber(&chatpb.SendOK{}, "sent_at_ms")
	sendOKLive  = fieldNumber(&chatpb.SendOK{}, "online")
	sendOKSeq   = fieldNumber(&chatpb.SendOK{}, "seq")

	msgIDField  = fieldNumber(&chatpb.Message{}, "msg_id")
	msgFromID   = fieldNumber(&chatpb.Message{}, "from_user_id")
	msgFromName = fieldNumber(&chatpb.Message{}, "from_username")
	msgToID     = fieldNumber(&chatpb.Message{}, "to_user_id")
	msgGroupID  = fieldNumber(&chatpb.Message{}, "group_id")
	msgText     = fieldNumber(&chatpb.Message{}, "text")
	msgSentAt   = fieldNumber(&chatpb.Message{}, "sent_at_ms")
	msgSeq      = fieldNumber(&chatpb.Message{}, "seq")
)

func fieldNumber(m proto.Message, name protoreflect.Name) protowire.Number {
	return m.ProtoReflect().Descriptor().Fields().ByName(name).Number()
}
