package protocol

import (
	"errors"
	"fmt"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Error is a request failure as the client sees it: a code from the wire
// schema and a human-readable message. Handlers return it; the server turns
// it into an Error response with the request's seq.
type Error struct {
	Code    chatpb.ErrorCode
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s", CodeName(e.Code), e.Message)
}

// Is makes errors.Is match any *Error with the same code, so callers can
// test errors.Is(err, protocol.ErrNotFound) whatever the message says.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code
}

// Proto is the wire form of e.
func (e *Error) Proto() *chatpb.Error {
	return &chatpb.Error{Code: e.Code, Message: e.Message}
}

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code chatpb.ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Sentinels, one per code, for errors.Is; their messages are generic.
var (
	// ErrInvalidArgument: a field is missing, malformed or out of range.
	ErrInvalidArgument = &Error{chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "invalid argument"}
	// ErrUnauthenticated: the request needs a logged-in session, or the credentials are wrong.
	ErrUnauthenticated = &Error{chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, "log in first"}
	// ErrNotFound: the user or group named does not exist.
	ErrNotFound = &Error{chatpb.ErrorCode_ERROR_CODE_NOT_FOUND, "not found"}
	// ErrAlreadyExists: the username is taken, or the friendship or membership already exists.
	ErrAlreadyExists = &Error{chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS, "already exists"}
	// ErrPermissionDenied: the session's user may not do this (e.g. send to a group it is not in).
	ErrPermissionDenied = &Error{chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "permission denied"}
	// ErrRateLimited: the connection sent requests faster than its limit allows.
	ErrRateLimited = &Error{chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED, "rate limited"}
	// ErrUnavailable: a dependency (store, Redis) is down; the request was not carried out.
	ErrUnavailable = &Error{chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE, "service unavailable, retry later"}
	// ErrInternal: an unexpected server fault.
	ErrInternal = &Error{chatpb.ErrorCode_ERROR_CODE_INTERNAL, "internal error"}
	// ErrProtocol: the byte stream broke the framing; the connection is closed.
	ErrProtocol = &Error{chatpb.ErrorCode_ERROR_CODE_PROTOCOL, "protocol error"}
)

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
	}
	return "unspecified"
}
