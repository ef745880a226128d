package protocol

import (
	"strconv"
	"unicode/utf8"
)

// Channel events by hand (issue 21): every cross-node message is encoded
// once by the sending node and decoded once by each receiving node, and
// encoding/json's reflection was ~4 µs of the ~12 µs a node spent per
// message received from Redis. AppendChannelEvent writes exactly what
// json.Marshal writes; decodeEventFast reads the objects that nodes (and
// most programs) write, and says no to anything else, which
// json.Unmarshal then reads as before (FuzzChannelEventFast holds both to
// encoding/json).

// AppendChannelEvent appends ev as JSON to dst: the bytes json.Marshal
// makes of it, field for field.
func AppendChannelEvent(dst []byte, ev *ChannelEvent) []byte {
	dst = append(dst, `{"type":`...)
	dst = appendJSONString(dst, ev.Type)
	dst = appendUintField(dst, `,"msg_id":`, uint64(ev.MsgID))
	dst = appendUintField(dst, `,"from_user_id":`, ev.FromUserID)
	dst = appendStringField(dst, `,"from_username":`, ev.FromUsername)
	dst = appendUintField(dst, `,"to_user_id":`, ev.ToUserID)
	dst = appendUintField(dst, `,"group_id":`, ev.GroupID)
	dst = appendStringField(dst, `,"text":`, ev.Text)
	dst = appendIntField(dst, `,"sent_at_ms":`, ev.SentAtMs)
	dst = appendUintField(dst, `,"seq":`, ev.Seq)
	dst = appendUintField(dst, `,"reader_user_id":`, ev.ReaderUserID)
	dst = appendStringField(dst, `,"conv":`, ev.Conv)
	dst = appendUintField(dst, `,"up_to_seq":`, ev.UpToSeq)
	dst = appendUintField(dst, `,"user_id":`, ev.UserID)
	dst = appendStringField(dst, `,"username":`, ev.Username)
	if ev.Online {
		dst = append(dst, `,"online":true`...)
	}
	dst = appendIntField(dst, `,"last_seen_ms":`, ev.LastSeenMs)
	dst = appendStringField(dst, `,"node_id":`, ev.NodeID)
	dst = appendUintField(dst, `,"conn_id":`, ev.ConnID)
	dst = appendIntField(dst, `,"at_ms":`, ev.AtMs)
	dst = appendUintField(dst, `,"gen":`, ev.Gen)
	dst = appendStringField(dst, `,"device":`, ev.Device)
	if len(ev.To) > 0 {
		dst = append(dst, `,"to":[`...)
		for i, uid := range ev.To {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = strconv.AppendUint(dst, uid, 10)
		}
		dst = append(dst, ']')
	}
	if ev.Joined {
		dst = append(dst, `,"joined":true`...)
	}
	dst = appendStringField(dst, `,"epoch":`, ev.Epoch)
	return append(dst, '}')
}

func appendUintField(dst []byte, name string, v uint64) []byte {
	if v == 0 {
		return dst // omitempty
	}
	return strconv.AppendUint(append(dst, name...), v, 10)
}

func appendIntField(dst []byte, name string, v int64) []byte {
	if v == 0 {
		return dst
	}
	return strconv.AppendInt(append(dst, name...), v, 10)
}

func appendStringField(dst []byte, name, v string) []byte {
	if v == "" {
		return dst
	}
	return appendJSONString(append(dst, name...), v)
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s as encoding/json does (HTML escaping on):
// \" \\ \b \f \n \r \t, other control bytes and < > & as \u00XX, invalid
// UTF-8 as \ufffd, U+2028 and U+2029 as \u2028 and \u2029.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case c == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case c == '\u2028' || c == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// decodeEventFast decodes p into ev (zero on entry) when p is one JSON
// object whose keys are ChannelEvent's own names, spelt exactly, with
// strings without escapes, integers as json.Unmarshal reads them without
// a type error, and msg_id a number or a quoted one. It reports false for
// anything else (and ev is then to be zeroed again): json.Unmarshal reads
// that, tolerating what this does not look at and refusing what is not
// JSON. The strings in ev are substrings of p.
func decodeEventFast(p string, ev *ChannelEvent) bool {
	i := skipJSONSpace(p, 0)
	if i >= len(p) || p[i] != '{' {
		return false
	}
	i = skipJSONSpace(p, i+1)
	if i < len(p) && p[i] == '}' {
		return skipJSONSpace(p, i+1) == len(p)
	}
	for {
		key, j, ok := plainJSONString(p, i)
		if !ok {
			return false
		}
		i = skipJSONSpace(p, j)
		if i >= len(p) || p[i] != ':' {
			return false
		}
		i = skipJSONSpace(p, i+1)
		switch key {
		case "type":
			ev.Type, i, ok = plainJSONString(p, i)
		case "msg_id":
			var v uint64
			if i < len(p) && p[i] == '"' {
				v, i, ok = quotedJSONUint(p, i)
			} else {
				v, i, ok = jsonUint(p, i)
			}
			ev.MsgID = Uint64(v)
		case "from_user_id":
			ev.FromUserID, i, ok = jsonUint(p, i)
		case "from_username":
			ev.FromUsername, i, ok = plainJSONString(p, i)
		case "to_user_id":
			ev.ToUserID, i, ok = jsonUint(p, i)
		case "group_id":
			ev.GroupID, i, ok = jsonUint(p, i)
		case "text":
			ev.Text, i, ok = plainJSONString(p, i)
		case "sent_at_ms":
			ev.SentAtMs, i, ok = jsonInt(p, i)
		case "seq":
			ev.Seq, i, ok = jsonUint(p, i)
		case "reader_user_id":
			ev.ReaderUserID, i, ok = jsonUint(p, i)
		case "conv":
			ev.Conv, i, ok = plainJSONString(p, i)
		case "up_to_seq":
			ev.UpToSeq, i, ok = jsonUint(p, i)
		case "user_id":
			ev.UserID, i, ok = jsonUint(p, i)
		case "username":
			ev.Username, i, ok = plainJSONString(p, i)
		case "online":
			ev.Online, i, ok = jsonBool(p, i)
		case "last_seen_ms":
			ev.LastSeenMs, i, ok = jsonInt(p, i)
		case "node_id":
			ev.NodeID, i, ok = plainJSONString(p, i)
		case "conn_id":
			ev.ConnID, i, ok = jsonUint(p, i)
		case "at_ms":
			ev.AtMs, i, ok = jsonInt(p, i)
		case "gen":
			ev.Gen, i, ok = jsonUint(p, i)
		case "device":
			ev.Device, i, ok = plainJSONString(p, i)
		case "to":
			ev.To, i, ok = jsonUintArray(p, i)
		case "joined":
			ev.Joined, i, ok = jsonBool(p, i)
		case "epoch":
			ev.Epoch, i, ok = plainJSONString(p, i)
		default:
			return false
		}
		if !ok {
			return false
		}
		i = skipJSONSpace(p, i)
		if i >= len(p) {
			return false
		}
		switch p[i] {
		case ',':
			i = skipJSONSpace(p, i+1)
		case '}':
			return skipJSONSpace(p, i+1) == len(p)
		default:
			return false
		}
	}
}

func skipJSONSpace(p string, i int) int {
	for i < len(p) && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r') {
		i++
	}
	return i
}

// plainJSONString reads the string starting at p[i] when it has no
// escapes, no control bytes and is valid UTF-8 (json.Unmarshal would
// otherwise unescape or replace bytes); it returns what follows it.
func plainJSONString(p string, i int) (string, int, bool) {
	if i >= len(p) || p[i] != '"' {
		return "", i, false
	}
	start := i + 1
	ascii := true
	for j := start; j < len(p); j++ {
		switch b := p[j]; {
		case b == '"':
			s := p[start:j]
			if !ascii && !utf8.ValidString(s) {
				return "", i, false
			}
			return s, j + 1, true
		case b == '\\' || b < 0x20:
			return "", i, false
		case b >= utf8.RuneSelf:
			ascii = false
		}
	}
	return "", i, false
}

// jsonDigits scans the digits of a JSON integer from i: at most max of
// them, no leading zero, and no fraction or exponent after (those make
// json.Unmarshal fail for an integer, or succeed in ways not worth
// copying). It returns where they end.
func jsonDigits(p string, i, max int) (int, bool) {
	j := i
	for j < len(p) && p[j] >= '0' && p[j] <= '9' {
		j++
	}
	if j == i || j-i > max || p[i] == '0' && j-i > 1 {
		return i, false
	}
	if j < len(p) && (p[j] == '.' || p[j] == 'e' || p[j] == 'E') {
		return i, false
	}
	return j, true
}

// jsonUint reads an unsigned JSON integer without sign that fits in 64
// bits.
func jsonUint(p string, i int) (uint64, int, bool) {
	j, ok := jsonDigits(p, i, 20)
	if !ok {
		return 0, i, false
	}
	v, err := strconv.ParseUint(p[i:j], 10, 64)
	return v, j, err == nil
}

// jsonInt is jsonUint for a signed integer.
func jsonInt(p string, i int) (int64, int, bool) {
	j := i
	if j < len(p) && p[j] == '-' {
		j++
	}
	k, ok := jsonDigits(p, j, 19)
	if !ok {
		return 0, i, false
	}
	v, err := strconv.ParseInt(p[i:k], 10, 64)
	return v, k, err == nil
}

// quotedJSONUint reads msg_id as a quoted number, "123" (Uint64's
// UnmarshalJSON: leading zeros and all).
func quotedJSONUint(p string, i int) (uint64, int, bool) {
	j := i + 1
	for j < len(p) && p[j] >= '0' && p[j] <= '9' {
		j++
	}
	if j == i+1 || j >= len(p) || p[j] != '"' {
		return 0, i, false
	}
	v, err := strconv.ParseUint(p[i+1:j], 10, 64)
	return v, j + 1, err == nil
}

func jsonBool(p string, i int) (bool, int, bool) {
	switch {
	case len(p)-i >= 4 && p[i:i+4] == "true":
		return true, i + 4, true
	case len(p)-i >= 5 && p[i:i+5] == "false":
		return false, i + 5, true
	}
	return false, i, false
}

// jsonUintArray reads an array of jsonUint, maybe empty.
func jsonUintArray(p string, i int) ([]uint64, int, bool) {
	if i >= len(p) || p[i] != '[' {
		return nil, i, false
	}
	i = skipJSONSpace(p, i+1)
	out := []uint64{}
	if i < len(p) && p[i] == ']' {
		return out, i + 1, true
	}
	for {
		v, j, ok := jsonUint(p, i)
		if !ok {
			return nil, i, false
		}
		out = append(out, v)
		i = skipJSONSpace(p, j)
		if i >= len(p) {
			return nil, i, false
		}
		switch p[i] {
		case ',':
			i = skipJSONSpace(p, i+1)
		case ']':
			return out, i + 1, true
		default:
			return nil, i, false
		}
	}
}
