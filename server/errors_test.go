package server

import (
	"errors"
	"fmt"
	"testing"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// A sentinel is only itself: errors that share a wire code are different
// failures (a test wanting ErrGroupFull must not pass on ErrTooManyGroups).
// The code is what reaches the client, unchanged, through clientError.
func TestServerErrorsMatchByIdentity(t *testing.T) {
	if errors.Is(ErrUserNotFound, ErrGroupNotFound) || errors.Is(ErrGroupNotFound, ErrUserNotFound) {
		t.Fatal("ErrUserNotFound and ErrGroupNotFound match each other")
	}
	for _, e := range []error{ErrUserNotFound, ErrGroupNotFound} {
		if c := protocol.CodeOf(e); c != chatpb.ErrorCode_ERROR_CODE_NOT_FOUND {
			t.Errorf("CodeOf(%v) = %v, want NOT_FOUND", e, c)
		}
		if errors.Is(e, protocol.ErrNotFound) {
			t.Errorf("%v matches protocol.ErrNotFound", e)
		}
	}

	all := []*protocol.Error{ErrUsernameTaken, ErrUserNotFound, ErrBadCredentials, ErrBadToken,
		ErrNotLoggedIn, ErrAlreadyLoggedIn, ErrFriendSelf, ErrAlreadyFriends, ErrUnfriendSelf, ErrNotFriends, ErrBlockSelf, ErrBlockSystem, ErrNotBlocked, ErrBlocked, ErrTooManyBlocked,
		ErrGroupNotFound,
		ErrAlreadyMember, ErrNotMember, ErrTooManyFriends, ErrTooManyGroups, ErrGroupFull,
		ErrNoRecipient, ErrNotARequest, ErrTooManyPending, ErrLoginThrottled, ErrFanoutLimited,
		ErrRateLimited, ErrServerFull, ErrAddressBusy}
	for i, a := range all {
		wrapped := fmt.Errorf("store: %w", a)
		for j, b := range all {
			if got := errors.Is(wrapped, b); got != (i == j) {
				t.Errorf("errors.Is(%q, %q) = %v", a.Message, b.Message, got)
			}
		}
		if got := clientError(wrapped); got != a {
			t.Errorf("clientError(%q) = %v, want the error itself", a.Message, got)
		}
	}
	if got := clientError(fmt.Errorf("redis: %w", errUnavailable)); got != protocol.ErrUnavailable {
		t.Errorf("clientError(unavailable) = %v", got)
	}
	if got := clientError(errors.New("disk on fire")); got != protocol.ErrInternal {
		t.Errorf("clientError(fault) = %v", got)
	}
}
