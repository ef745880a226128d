package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/loopchat/loopchat/client"
	"github.com/loopchat/loopchat/internal/testnode"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
	"github.com/loopchat/loopchat/server"
)

func startServer(t *testing.T, opts server.Options) (*server.Server, string) {
	t.Helper()
	return testnode.Start(t, opts)
}

func dial(t *testing.T, opts client.Options) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func nextEvent(t *testing.T, c *client.Client) client.Event {
	t.Helper()
	select {
	case ev, ok := <-c.Events():
		if !ok {
			t.Fatal("events closed")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return client.Event{}
}

func TestChatThroughTheSDK(t *testing.T) {
	_, addr := startServer(t, server.Options{DataDir: t.TempDir()})
	ctx := context.Background()
	alice := dial(t, client.Options{Addr: addr})
	bob := dial(t, client.Options{Addr: addr})
	if _, err := alice.Register(ctx, "alice", "password1"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Register(ctx, "bob", "password1"); err != nil {
		t.Fatal(err)
	}
	_, err := alice.Register(ctx, "bob", "password1")
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS || pe.Message == "" {
		t.Fatalf("duplicate register = %v, want a protocol error already_exists", err)
	}
	// Documented on Do: a wire error matches the sentinel of its code, and
	// only that one; the server's finer sentinels are not knowable here.
	if !errors.Is(err, protocol.ErrAlreadyExists) || errors.Is(err, protocol.ErrNotFound) ||
		errors.Is(err, server.ErrUsernameTaken) {
		t.Fatalf("duplicate register = %v: errors.Is does not follow the SDK's documented matching", err)
	}
	if _, err := alice.Login(ctx, "alice", "password1"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Login(ctx, "bob", "password1"); err != nil {
		t.Fatal(err)
	}
	if alice.Token() == "" {
		t.Fatal("no token after login")
	}
	ok, err := alice.SendToUser(ctx, "bob", "hi bob")
	if err != nil || !ok.Online {
		t.Fatalf("send = %v, %v", ok, err)
	}
	ev := nextEvent(t, bob)
	if ev.Message == nil || ev.Message.Text != "hi bob" || ev.Message.MsgId != ok.MsgId {
		t.Fatalf("bob's event = %+v", ev)
	}
	if err := bob.Ack(ev.Message.MsgId); err != nil {
		t.Fatal(err)
	}
	gid, err := alice.CreateGroup(ctx, "g", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := bob.JoinGroup(ctx, gid); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.SendToGroup(ctx, gid, "hi group"); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, alice); ev.Message.GetGroupId() != gid {
		t.Fatalf("alice's event = %+v", ev)
	}
	groups, err := alice.ListGroups(ctx)
	if err != nil || len(groups) != 1 || len(groups[0].Members) != 2 {
		t.Fatalf("groups = %v, %v", groups, err)
	}
	if err := alice.AddFriend(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if fl, err := bob.ListFriends(ctx); err != nil || len(fl) != 1 || !fl[0].Online {
		t.Fatalf("friends = %v, %v", fl, err)
	}
	if err := bob.RemoveFriend(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if fl, err := alice.ListFriends(ctx); err != nil || len(fl) != 0 {
		t.Fatalf("alice's friends after bob's RemoveFriend = %v, %v", fl, err)
	}
	if err := bob.RemoveFriend(ctx, "alice"); protocol.CodeOf(err) != chatpb.ErrorCode_ERROR_CODE_NOT_FOUND {
		t.Fatalf("RemoveFriend again = %v, want NOT_FOUND", err)
	}
	if err := bob.Block(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if bl, err := bob.ListBlocked(ctx); err != nil || len(bl) != 1 || bl[0].Username != "alice" {
		t.Fatalf("ListBlocked = %v, %v", bl, err)
	}
	if _, err := alice.SendToUser(ctx, "bob", "blocked?"); protocol.CodeOf(err) != chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED {
		t.Fatalf("a send to who blocks you = %v, want PERMISSION_DENIED", err)
	}
	if err := bob.Unblock(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := bob.Unblock(ctx, "alice"); protocol.CodeOf(err) != chatpb.ErrorCode_ERROR_CODE_NOT_FOUND {
		t.Fatalf("Unblock again = %v, want NOT_FOUND", err)
	}
	if _, err := alice.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestReconnectsWithTokenAndGetsMissedMessages(t *testing.T) {
	dir := t.TempDir()
	srv, addr := startServer(t, server.Options{DataDir: dir})
	ctx := context.Background()
	bob := dial(t, client.Options{Addr: addr, Reconnect: true, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if _, err := bob.Register(ctx, "bob", "password1"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Login(ctx, "bob", "password1"); err != nil {
		t.Fatal(err)
	}

	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, bob); ev.Kicked.GetReason() != chatpb.KickReason_KICK_REASON_SERVER_SHUTTING_DOWN {
		t.Fatalf("first event = %+v, want the shutdown kick", ev)
	}
	if ev := nextEvent(t, bob); ev.Disconnected == nil || !ev.Reconnecting {
		t.Fatalf("second event = %+v, want Disconnected, reconnecting", ev)
	}
	// While bob is away a message is stored for him on the new server.
	startServer(t, server.Options{DataDir: dir, Listen: addr})
	alice := dial(t, client.Options{Addr: addr})
	_, _ = alice.Register(ctx, "alice", "password1")
	if _, err := alice.Login(ctx, "alice", "password1"); err != nil {
		t.Fatal(err)
	}
	sent, err := alice.SendToUser(ctx, "bob", "while you were away")
	if err != nil {
		t.Fatal(err)
	}
	// Until the new server listens, attempts may fail (and report another
	// disconnect), and one that reaches the old server while it drains
	// reads its shutdown kick first; what matters is the reconnect and
	// the missed message.
	var reconnected *chatpb.LoginOK
	var missed *chatpb.Message
	for reconnected == nil || missed == nil {
		ev := nextEvent(t, bob)
		switch {
		case ev.Reconnected != nil:
			reconnected = ev.Reconnected
		case ev.Message != nil:
			missed = ev.Message
		case ev.Kicked.GetReason() == chatpb.KickReason_KICK_REASON_SERVER_SHUTTING_DOWN:
		case ev.Disconnected == nil:
			t.Fatalf("unexpected event %+v", ev)
		}
	}
	if reconnected.GetUsername() != "bob" || missed.MsgId != sent.MsgId {
		t.Fatalf("reconnected as %v, missed message %v (want %d)", reconnected, missed, sent.MsgId)
	}
	if _, err := bob.Ping(ctx); err != nil {
		t.Fatalf("ping after reconnect: %v", err)
	}
}

func TestNoReconnectWhenLoggedInElsewhere(t *testing.T) {
	_, addr := startServer(t, server.Options{DataDir: t.TempDir()})
	ctx := context.Background()
	first := dial(t, client.Options{Addr: addr, Reconnect: true, MinBackoff: 20 * time.Millisecond})
	_, _ = first.Register(ctx, "dup", "password1")
	if _, err := first.Login(ctx, "dup", "password1"); err != nil {
		t.Fatal(err)
	}
	second := dial(t, client.Options{Addr: addr})
	if _, err := second.LoginToken(ctx, first.Token()); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, first); ev.Kicked.GetReason() != chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE {
		t.Fatalf("event = %+v", ev)
	}
	if ev := nextEvent(t, first); ev.Disconnected == nil || ev.Reconnecting {
		t.Fatalf("event = %+v, want Disconnected, not reconnecting", ev)
	}
	select {
	case ev := <-first.Events():
		t.Fatalf("reconnected after being replaced: %+v", ev)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := second.Ping(ctx); err != nil {
		t.Fatalf("the newer session was disturbed: %v", err)
	}
}

func TestKeepalivePingsHoldTheConnection(t *testing.T) {
	_, addr := startServer(t, server.Options{DataDir: t.TempDir(), IdleTimeout: 600 * time.Millisecond})
	ctx := context.Background()
	c := dial(t, client.Options{Addr: addr, PingInterval: 150 * time.Millisecond})
	_, _ = c.Register(ctx, "pinger", "password1")
	if _, err := c.Login(ctx, "pinger", "password1"); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-c.Events():
		t.Fatalf("event while pinging: %+v", ev)
	case <-time.After(1500 * time.Millisecond):
	}
	quiet := dial(t, client.Options{Addr: addr, PingInterval: -1})
	_, _ = quiet.Register(ctx, "quiet", "password1")
	if _, err := quiet.Login(ctx, "quiet", "password1"); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, quiet); ev.Kicked.GetReason() != chatpb.KickReason_KICK_REASON_IDLE_TIMEOUT {
		t.Fatalf("a client without pings got %+v, want the idle kick", ev)
	}
}

// Friends' presence changes arrive as Event.Presence; SetPresenceVisible
// hides the user's; typing arrives as Event.Typing.
func TestPresenceThroughTheSDK(t *testing.T) {
	_, addr := startServer(t, server.Options{DataDir: t.TempDir(), PresenceGrace: 200 * time.Millisecond})
	ctx := context.Background()
	alice := dial(t, client.Options{Addr: addr})
	bob := dial(t, client.Options{Addr: addr})
	for c, name := range map[*client.Client]string{alice: "alice", bob: "bob"} {
		if _, err := c.Register(ctx, name, "password1"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Login(ctx, name, "password1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := alice.AddFriend(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	presence := func() *chatpb.Presence {
		t.Helper()
		ev := nextEvent(t, alice)
		if ev.Presence == nil {
			t.Fatalf("event %+v; want a presence change", ev)
		}
		return ev.Presence
	}
	if err := bob.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if p := presence(); p.Username != "bob" || p.Online || p.LastSeenMs == 0 {
		t.Fatalf("after bob's logout: %v", p)
	}
	if fl, err := alice.ListFriends(ctx); err != nil || len(fl) != 1 || fl[0].Online || fl[0].LastSeenMs == 0 {
		t.Fatalf("friends %v, %v; want bob offline with a last seen", fl, err)
	}
	if _, err := bob.Login(ctx, "bob", "password1"); err != nil {
		t.Fatal(err)
	}
	if p := presence(); !p.Online {
		t.Fatalf("after bob's login: %v", p)
	}
	if err := bob.SetPresenceVisible(ctx, false); err != nil {
		t.Fatal(err)
	}
	if p := presence(); p.Online || p.LastSeenMs != 0 {
		t.Fatalf("after bob hid: %v", p)
	}
	// Typing is not presence: it reaches alice though bob hides.
	if err := bob.TypingTo(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, alice); ev.Typing == nil || ev.Typing.Username != "bob" || ev.Typing.GroupId != 0 {
		t.Fatalf("event %+v; want bob typing", ev)
	}
}
