package protocol

import (
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Sends and acks are nearly every request a server decodes. proto.Unmarshal
// allocates each of their messages, oneof wrappers and strings apart (six
// objects for a Send); the decoders below read the usual wire form with
// protowire into one block and one string instead, and give up — Decode
// then runs proto.Unmarshal — on anything else: an unknown or repeated
// field, a wrong wire type, invalid UTF-8. So a payload either decodes
// here to exactly what proto.Unmarshal makes of it (FuzzDecodeFast checks
// that) or is decoded by proto.Unmarshal itself.

// sendBlock is a decoded Send frame in one allocation.
type sendBlock struct {
	frame chatpb.Frame
	body  chatpb.Frame_Send
	send  chatpb.Send
	name  chatpb.Send_Username
	uid   chatpb.Send_UserId
	gid   chatpb.Send_GroupId
}

// ackBlock is a decoded Ack frame in one allocation (its ids are a second).
type ackBlock struct {
	frame chatpb.Frame
	body  chatpb.Frame_Ack
	ack   chatpb.Ack
}

// decodeFast decodes a Send or an Ack frame in its usual wire form; nil
// for anything else.
func decodeFast(payload []byte) *chatpb.Frame {
	var seq uint64
	var body []byte
	var bodyField protowire.Number
	haveSeq := false
	for len(payload) > 0 {
		num, typ, n := protowire.ConsumeTag(payload)
		if n < 0 {
			return nil
		}
		payload = payload[n:]
		switch {
		case num == seqField && typ == protowire.VarintType && !haveSeq:
			v, n := protowire.ConsumeVarint(payload)
			if n < 0 {
				return nil
			}
			seq, haveSeq, payload = v, true, payload[n:]
		case (num == sendField || num == ackField) && typ == protowire.BytesType && bodyField == 0:
			v, n := protowire.ConsumeBytes(payload)
			if n < 0 {
				return nil
			}
			body, bodyField, payload = v, num, payload[n:]
		default:
			return nil
		}
	}
	switch bodyField {
	case sendField:
		return decodeSend(seq, body)
	case ackField:
		return decodeAck(seq, body)
	}
	return nil
}

// decodeSend decodes a Send body whose fields each come at most once (one
// of its recipient fields in all), with valid UTF-8 strings.
func decodeSend(seq uint64, b []byte) *chatpb.Frame {
	// The strings are cut from one copy of the body, as they are read.
	var strs string
	str := func(v []byte, off int) (string, bool) {
		if len(v) == 0 {
			return "", true
		}
		if !utf8.Valid(v) {
			return "", false
		}
		if strs == "" {
			strs = string(b)
		}
		return strs[off : off+len(v)], true
	}
	blk := &sendBlock{}
	blk.frame.Seq = seq
	blk.frame.Body = &blk.body
	blk.body.Send = &blk.send
	var seen uint8 // bit per field number 1..5
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 || num < 1 || num > 5 || seen&(1<<num) != 0 {
			return nil
		}
		seen |= 1 << num
		off += n
		switch num {
		case sendUserID, sendGroupID:
			if typ != protowire.VarintType || blk.send.To != nil {
				return nil
			}
			v, n := protowire.ConsumeVarint(b[off:])
			if n < 0 {
				return nil
			}
			off += n
			if num == sendUserID {
				blk.uid.UserId, blk.send.To = v, &blk.uid
			} else {
				blk.gid.GroupId, blk.send.To = v, &blk.gid
			}
		case sendUsername, sendText, sendClientMsg:
			if typ != protowire.BytesType || num == sendUsername && blk.send.To != nil {
				return nil
			}
			v, n := protowire.ConsumeBytes(b[off:])
			if n < 0 {
				return nil
			}
			s, ok := str(v, off+n-len(v))
			if !ok {
				return nil
			}
			off += n
			switch num {
			case sendUsername:
				blk.name.Username, blk.send.To = s, &blk.name
			case sendText:
				blk.send.Text = s
			default:
				blk.send.ClientMsgId = s
			}
		default:
			return nil
		}
	}
	return &blk.frame
}

// decodeAck decodes an Ack body of msg_ids only, packed or not (a
// parser must take both, and concatenates repeats).
func decodeAck(seq uint64, b []byte) *chatpb.Frame {
	count, ok := ackIDs(b, nil)
	if !ok {
		return nil
	}
	blk := &ackBlock{}
	blk.frame.Seq = seq
	blk.frame.Body = &blk.body
	blk.body.Ack = &blk.ack
	if count > 0 {
		blk.ack.MsgIds = make([]uint64, count)
		ackIDs(b, blk.ack.MsgIds)
	}
	return &blk.frame
}

// ackIDs counts the msg_ids in an Ack body and, given room, stores them
// in ids; false if the body holds anything else or is malformed.
func ackIDs(b []byte, ids []uint64) (int, bool) {
	count := 0
	put := func(v uint64) {
		if ids != nil {
			ids[count] = v
		}
		count++
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num != ackMsgIDsField {
			return 0, false
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return 0, false
			}
			put(v)
			b = b[n:]
		case protowire.BytesType:
			packed, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return 0, false
			}
			for len(packed) > 0 {
				v, m := protowire.ConsumeVarint(packed)
				if m < 0 {
					return 0, false
				}
				put(v)
				packed = packed[m:]
			}
			b = b[n:]
		default:
			return 0, false
		}
	}
	return count, true
}
