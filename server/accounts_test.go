package server

import (
	"context"
	"math"
	"testing"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

// A ban refuses password and token logins (after the password check, so a
// wrong password still reads as one) until it ends or is lifted; a token
// revocation refuses every earlier token for good, and token logins (not
// password ones) until its window ends; a disconnect kicks every session.
func TestBannedAndRevokedLogins(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, testOptions(t, EngineGnet))
	alice, ok := ts.user(t, "alice")
	token := ok.Token

	if had, err := ts.disconnect(withEpoch(ctx, ts.epoch()), ok.UserId, "bye"); err != nil || !had {
		t.Fatalf("disconnect = %v, %v", had, err)
	}
	alice.expectKicked(chatpb.KickReason_KICK_REASON_DISCONNECTED_BY_SERVER)

	if err := ts.store.SetBan(ctx, ok.UserId, math.MaxInt64); err != nil {
		t.Fatal(err)
	}
	rc := dial(t, ts.addr)
	expectCode(t, rc.do(loginReq("alice", "wrong password")), chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED)
	expectCode(t, rc.do(loginReq("alice", pw)), chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED)
	expectCode(t, rc.do(tokenReq(token)), chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED)
	// A ban that has run out is no ban.
	if err := ts.store.SetBan(ctx, ok.UserId, time.Now().Add(-time.Second).UnixMilli()); err != nil {
		t.Fatal(err)
	}
	expectOK(t, rc.do(tokenReq(token)))
	expectOK(t, rc.do(&chatpb.Frame{Body: &chatpb.Frame_Logout{Logout: &chatpb.Logout{}}}))

	window := 500 * time.Millisecond
	until := time.Now().Add(window)
	if err := ts.store.RevokeTokens(ctx, ok.UserId, until.UnixMilli()); err != nil {
		t.Fatal(err)
	}
	expectCode(t, rc.do(tokenReq(token)), chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED)
	resp := rc.do(loginReq("alice", pw))
	expectOK(t, resp)
	fresh := resp.GetLoginOk().Token
	expectOK(t, rc.do(&chatpb.Frame{Body: &chatpb.Frame_Logout{Logout: &chatpb.Logout{}}}))
	// Inside the window even a token issued after the revocation is
	// refused; after it, that one works and the older one never again.
	resp = rc.do(tokenReq(fresh))
	expectCode(t, resp, chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED)
	if resp.GetError().Message != ErrTokensRefused.Message {
		t.Fatalf("token login inside the window: %q", resp.GetError().Message)
	}
	time.Sleep(time.Until(until) + 10*time.Millisecond)
	expectOK(t, rc.do(tokenReq(fresh)))
	expectCode(t, dial(t, ts.addr).do(tokenReq(token)), chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED)
}
