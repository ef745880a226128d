package protocol

import (
	"errors"
	"fmt"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Error is a request failure as the client sees it: a code from the wire
// schema and a human-readable message. Handlers return it; the server turns
// it into an Error response with the request's seq.
//
// errors.Is matches an *Error by identity: each sentinel (this package's,
// one per code, and the server's finer ones such as ErrUserNotFound and
// ErrGroupNotFound, which share NOT_FOUND) is only itself. To branch on the
// code, which is all the wire carries, use CodeOf or HasCode. The one
// exception is an error decoded from a wire response (ErrorFromProto, which
// the client SDK uses): the receiver cannot know which of the server's
// errors it was, so it also matches the sentinel of its code, and
// errors.Is(err, ErrNotFound) holds for any NOT_FOUND the server answered.
type Error struct {
	Code    chatpb.ErrorCode
	Message string
	// fromWire marks an error made by ErrorFromProto (see Is).
	fromWire bool
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s", CodeName(e.Code), e.Message)
}

// Is makes an error decoded from the wire match the sentinel of its code,
// and nothing else beyond itself (which errors.Is checks before calling
// Is). Errors made on this side never match by code: two different
// failures that share a code must not be mistaken for each other.
func (e *Error) Is(target error) bool {
	s := codeSentinel(e.Code)
	return e.fromWire && s != nil && target == error(s)
}

// ErrorFromProto is the Go error for a wire Error response. Unlike other
// *Error values it matches the sentinel of its code under errors.Is (see
// Error).
func ErrorFromProto(e *chatpb.Error) *Error {
	return &Error{Code: e.GetCode(), Message: e.GetMessage(), fromWire: true}
}

// CodeOf is the wire code of the first *Error in err's chain, or
// ERROR_CODE_UNSPECIFIED if there is none (nil, or a fault that is not an
// answer for the client).
func CodeOf(err error) chatpb.ErrorCode {
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	return chatpb.ErrorCode_ERROR_CODE_UNSPECIFIED
}

// HasCode reports whether err's chain holds an *Error with code: the test
// for "any NOT_FOUND", whichever sentinel or message it came with.
func HasCode(err error, code chatpb.ErrorCode) bool {
	var pe *Error
	return errors.As(err, &pe) && pe.Code == code
}

// Proto is the wire form of e.
func (e *Error) Proto() *chatpb.Error {
	return &chatpb.Error{Code: e.Code, Message: e.Message}
}

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code chatpb.ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Sentinels, one per code; their messages are generic. errors.Is matches
// them by identity, and also for errors decoded from the wire (see Error).
var (
	// ErrInvalidArgument: a field is missing, malformed or out of range.
	ErrInvalidArgument = &Error{Code: chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Message: "invalid argument"}
	// ErrUnauthenticated: the request needs a logged-in session, or the credentials are wrong.
	ErrUnauthenticated = &Error{Code: chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, Message: "log in first"}
	// ErrNotFound: the user or group named does not exist.
	ErrNotFound = &Error{Code: chatpb.ErrorCode_ERROR_CODE_NOT_FOUND, Message: "not found"}
	// ErrAlreadyExists: the username is taken, or the friendship or membership already exists.
	ErrAlreadyExists = &Error{Code: chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS, Message: "already exists"}
	// ErrPermissionDenied: the session's user may not do this (e.g. send to a group it is not in).
	ErrPermissionDenied = &Error{Code: chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, Message: "permission denied"}
	// ErrRateLimited: the connection sent requests faster than its limit allows.
	ErrRateLimited = &Error{Code: chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED, Message: "rate limited"}
	// ErrUnavailable: a dependency (store, Redis) is down; the request was not carried out.
	ErrUnavailable = &Error{Code: chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE, Message: "service unavailable, retry later"}
	// ErrInternal: an unexpected server fault.
	ErrInternal = &Error{Code: chatpb.ErrorCode_ERROR_CODE_INTERNAL, Message: "internal error"}
	// ErrProtocol: the byte stream broke the framing; the connection is closed.
	ErrProtocol = &Error{Code: chatpb.ErrorCode_ERROR_CODE_PROTOCOL, Message: "protocol error"}
)

// codeSentinel is the sentinel for code, or nil for a code without one.
func codeSentinel(code chatpb.ErrorCode) *Error {
	switch code {
	case chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT:
		return ErrInvalidArgument
	case chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED:
		return ErrUnauthenticated
	case chatpb.ErrorCode_ERROR_CODE_NOT_FOUND:
		return ErrNotFound
	case chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS:
		return ErrAlreadyExists
	case chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED:
		return ErrPermissionDenied
	case chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED:
		return ErrRateLimited
	case chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE:
		return ErrUnavailable
	case chatpb.ErrorCode_ERROR_CODE_INTERNAL:
		return ErrInternal
	case chatpb.ErrorCode_ERROR_CODE_PROTOCOL:
		return ErrProtocol
	}
	return nil
}

// CodeName is the short lower-case name of a code, as used in logs, metrics
// and the CLI's JSON ("invalid_argument", "not_found", ...).
func CodeName(c chatpb.ErrorCode) string {
	switch c {
	case chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT:
		return "invalid_argument"
	case chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED:
		return "unauthenticated"
	case chatpb.ErrorCode_ERROR_CODE_NOT_FOUND:
		return "not_found"
	case chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS:
		return "already_exists"
	case chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED:
		return "permission_denied"
	case chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED:
		return "rate_limited"
	case chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE:
		return "unavailable"
	case chatpb.ErrorCode_ERROR_CODE_INTERNAL:
		return "internal"
	case chatpb.ErrorCode_ERROR_CODE_PROTOCOL:
		return "protocol"
	}
	return "unspecified"
}

// KickReasonName is the short lower-case name of a kick reason.
func KickReasonName(r chatpb.KickReason) string {
	switch r {
	case chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE:
		return "logged_in_elsewhere"
	case chatpb.KickReason_KICK_REASON_SERVER_SHUTTING_DOWN:
		return "server_shutting_down"
	case chatpb.KickReason_KICK_REASON_SLOW_CONSUMER:
		return "slow_consumer"
	case chatpb.KickReason_KICK_REASON_IDLE_TIMEOUT:
		return "idle_timeout"
	case chatpb.KickReason_KICK_REASON_PROTOCOL_ERROR:
		return "protocol_error"
	case chatpb.KickReason_KICK_REASON_LOGIN_TIMEOUT:
		return "login_timeout"
	case chatpb.KickReason_KICK_REASON_STORE_RESET:
		return "store_reset"
	case chatpb.KickReason_KICK_REASON_DEVICE_LIMIT:
		return "device_limit"
	case chatpb.KickReason_KICK_REASON_DISCONNECTED_BY_SERVER:
		return "disconnected_by_server"
	}
	return "unspecified"
}
