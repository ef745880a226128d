package protocol

import (
	"unicode/utf8"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Limits on client-supplied fields. They are part of the protocol: a client
// that respects them never gets ErrInvalidArgument for size.
const (
	MinUsername      = 3
	MaxUsername      = 32
	MinPassword      = 8
	MaxPassword      = 128
	MaxText          = 4096 // bytes of UTF-8
	MaxGroupName     = 64   // bytes of UTF-8
	MaxGroupDesc     = 512  // bytes of UTF-8
	MaxClientMsgID   = 64   // bytes
	MaxAckIDs        = 1024 // ids per Ack
	MaxHistoryLimit  = 200  // messages per History page
	DefHistoryLimit  = 50   // messages per History page when limit is 0
	MaxConvListLimit = 500  // conversations per ListConversations
	DefConvListLimit = 100  // conversations per ListConversations when limit is 0
	MaxTokenLength   = 512
	MaxKickText      = 256 // bytes of UTF-8 in Kicked.message from the API (a disconnect's reason)
	LoginDeadlineSec = 10  // default seconds to log in after connecting
)

// ValidateUsername checks 3–32 characters of [a-zA-Z0-9_.-].
func ValidateUsername(name string) error {
	if len(name) < MinUsername || len(name) > MaxUsername {
		return Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT,
			"username must be %d-%d characters", MinUsername, MaxUsername)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '_' || c == '.' || c == '-'
		if !ok {
			return Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT,
				"username may contain only letters, digits, '_', '.' and '-'")
		}
	}
	return nil
}

// ValidatePassword checks 8–128 bytes. Any bytes are allowed: the password
// is only ever hashed.
func ValidatePassword(pw string) error {
	if len(pw) < MinPassword || len(pw) > MaxPassword {
		return Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT,
			"password must be %d-%d bytes", MinPassword, MaxPassword)
	}
	return nil
}

// ValidateText checks a message body: valid UTF-8, 1–4096 bytes.
func ValidateText(text string) error {
	return validateUTF8("text", text, 1, MaxText)
}

// ValidateGroupName checks a group name: valid UTF-8, 1–64 bytes.
func ValidateGroupName(name string) error {
	return validateUTF8("group name", name, 1, MaxGroupName)
}

// ValidateGroupDescription checks a group description: valid UTF-8, 0–512 bytes.
func ValidateGroupDescription(desc string) error {
	return validateUTF8("group description", desc, 0, MaxGroupDesc)
}

// ValidateKickText checks what a kick tells the client: valid UTF-8,
// 0–256 bytes.
func ValidateKickText(text string) error {
	return validateUTF8("reason", text, 0, MaxKickText)
}

// ValidateClientMsgID checks an idempotency key: at most 64 bytes (empty
// means the send is not idempotent).
func ValidateClientMsgID(id string) error {
	if len(id) > MaxClientMsgID {
		return Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT,
			"client_msg_id must be at most %d bytes", MaxClientMsgID)
	}
	return nil
}

func validateUTF8(field, s string, minLen, maxLen int) error {
	if len(s) < minLen || len(s) > maxLen {
		return Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT,
			"%s must be %d-%d bytes", field, minLen, maxLen)
	}
	if !utf8.ValidString(s) {
		return Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "%s is not valid UTF-8", field)
	}
	return nil
}
