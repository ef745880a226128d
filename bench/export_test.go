package bench

import "time"

// SetSettleAfterFriends shortens the login scenario's wait after
// befriending, for the tiny runs; it returns the undo.
func SetSettleAfterFriends(d time.Duration) func() {
	old := settleAfterFriends
	settleAfterFriends = d
	return func() { settleAfterFriends = old }
}
