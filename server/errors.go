package server

import (
	"errors"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// Errors a request can fail with. Each is a *protocol.Error, so it reaches
// the client as is. errors.Is matches each only by identity, so tests and
// callers can tell apart errors that share a code (ErrGroupFull and
// ErrTooManyGroups are both PERMISSION_DENIED); protocol.CodeOf and
// protocol.HasCode answer by code.
var (
	// ErrUsernameTaken: Register with a name already registered (ignoring case).
	ErrUsernameTaken = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS, "username is taken")
	// ErrUserNotFound: no user has that name or id.
	ErrUserNotFound = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_NOT_FOUND, "no such user")
	// ErrBadCredentials: unknown username or wrong password (deliberately not saying which).
	ErrBadCredentials = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, "wrong username or password")
	// ErrBadToken: the token is malformed, forged or expired.
	ErrBadToken = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, "invalid or expired token")
	// ErrNotLoggedIn: the request needs a logged-in session.
	ErrNotLoggedIn = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, "log in first")
	// ErrAlreadyLoggedIn: Login on a session that is logged in; Logout first.
	// (Register is allowed then: it creates an account and changes no session.)
	ErrAlreadyLoggedIn = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "already logged in; log out first")
	// ErrFriendSelf: AddFriend naming the caller.
	ErrFriendSelf = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "you cannot befriend yourself")
	// ErrAlreadyFriends: AddFriend for an existing friendship.
	ErrAlreadyFriends = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS, "already friends")
	// ErrUnfriendSelf: RemoveFriend naming the caller.
	ErrUnfriendSelf = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "you cannot unfriend yourself")
	// ErrNotFriends: RemoveFriend for someone who is not the caller's friend.
	ErrNotFriends = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_NOT_FOUND, "not friends")
	// ErrBlockSelf: Block or Unblock naming the caller.
	ErrBlockSelf = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "you cannot block yourself")
	// ErrBlockSystem: Block naming the account the server API sends as.
	ErrBlockSystem = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "the server's own account cannot be blocked")
	// ErrNotBlocked: Unblock for someone the caller does not block.
	ErrNotBlocked = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_NOT_FOUND, "you do not block this user")
	// ErrBlocked: a 1:1 Send or an AddFriend between two users one of whom blocks the other.
	ErrBlocked = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "blocked: one of you blocks the other, so you cannot message or befriend each other")
	// ErrTooManyBlocked: Block by a user who blocks as many users as the server allows.
	ErrTooManyBlocked = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "you block as many users as allowed; unblock one first")
	// ErrGroupNotFound: no group has that id.
	ErrGroupNotFound = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_NOT_FOUND, "no such group")
	// ErrAlreadyMember: JoinGroup for a group the caller is in.
	ErrAlreadyMember = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS, "already a member of this group")
	// ErrNotMember: LeaveGroup or a group Send for a group the caller is not in.
	ErrNotMember = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "not a member of this group")
	// ErrTooManyFriends: AddFriend when either side has as many friends as the server allows.
	ErrTooManyFriends = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "friend limit reached (yours or theirs)")
	// ErrTooManyGroups: CreateGroup or JoinGroup by a user in as many groups as the server allows.
	ErrTooManyGroups = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "you are in as many groups as allowed; leave one first")
	// ErrGroupFull: JoinGroup for a group with as many members as the server allows.
	ErrGroupFull = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "the group is full")
	// ErrNoRecipient: Send without a user or group.
	ErrNoRecipient = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "send needs a user_id, username or group_id")
	// ErrConversationTarget: History or MarkRead naming no conversation, or more than one.
	ErrConversationTarget = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "name exactly one of peer_user_id, peer_username and group_id")
	// ErrHistoryBothBounds: History with both before_seq and after_seq.
	ErrHistoryBothBounds = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "history takes before_seq or after_seq, not both")
	// ErrNotARequest: a frame whose body is a response, a push, or unknown.
	ErrNotARequest = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "unknown or missing request type")
	// ErrTooManyPending: the connection has too many requests waiting to be handled.
	ErrTooManyPending = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED, "too many requests in flight; wait for responses")
	// ErrLoginThrottled: a password login from an address that has failed too many recently.
	ErrLoginThrottled = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED, "too many failed logins from your address; try again in a minute")
	// ErrFanoutLimited: a group send past the rate limit, which charges big groups by their size.
	ErrFanoutLimited = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED, "group message rate limit: a send to a big group counts as one request per 100 members")
	// ErrRateLimited: the connection exceeded its request rate.
	ErrRateLimited = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED, "request rate limit exceeded")
	// ErrBanned: a login (with the right password, or a valid token) of an account the API banned.
	ErrBanned = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "this account is banned")
	// ErrTokensRefused: a token login while the API has the account's token logins refused; the password works.
	ErrTokensRefused = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, "token logins of this account are refused for now; log in with the password")
	// ErrUsernameReserved: Register (or the API's user creation) of the name the API sends as (--api-system-user).
	ErrUsernameReserved = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS, "username is reserved")
)

// clientError converts err into what the client is told: protocol errors
// (however wrapped) pass through with their message; any other fault
// becomes ErrInternal or, for a dependency that is down, ErrUnavailable,
// without leaking internals.
func clientError(err error) *protocol.Error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe
	}
	if errors.Is(err, errUnavailable) {
		return protocol.ErrUnavailable
	}
	return protocol.ErrInternal
}

// errUnavailable marks storage or broker faults that are likely transient
// (the store is closing, Redis is unreachable); the client may retry.
var errUnavailable = errors.New("dependency unavailable")
