package server

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	chatpb "github.com/loopchat/loopchat/proto"
)

func addFriendReq(name string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_AddFriend{AddFriend: &chatpb.AddFriend{Username: name}}}
}

func listFriendsReq() *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_ListFriends{ListFriends: &chatpb.ListFriends{}}}
}

func presenceVisibleReq(visible bool) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_SetPresenceVisible{SetPresenceVisible: &chatpb.SetPresenceVisible{Visible: visible}}}
}

// nextPresence returns the next push, which must be a Presence.
func (rc *rawConn) nextPresence() *chatpb.Presence {
	rc.t.Helper()
	f := rc.nextPush()
	p := f.GetPresence()
	if p == nil {
		rc.t.Fatalf("expected a Presence push, got %v", f)
	}
	return p
}

// friendOf returns uid's entry in rc's friend list.
func friendOf(t *testing.T, rc *rawConn, uid uint64) *chatpb.Friend {
	t.Helper()
	resp := rc.do(listFriendsReq())
	expectOK(t, resp)
	for _, f := range resp.GetFriendList().GetFriends() {
		if f.UserId == uid {
			return f
		}
	}
	t.Fatalf("user %d is not in the friend list %v", uid, resp.GetFriendList())
	return nil
}

// TestPresenceOverTheWire: on one node and across two on real Redis, a
// friend's first device coming online and last device going offline (after
// the grace) are pushed to the user's friends who are online, with the
// last seen, and to no one else; FriendList and LoginOK carry the same.
func TestPresenceOverTheWire(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		alice, _ := a.user(t, "alice")
		bob, bobOK := b.device(t, "bob", "phone")
		carol, _ := a.user(t, "carol") // not bob's friend
		expectOK(t, alice.do(addFriendReq("bob")))
		if f := friendOf(t, alice, bobOK.UserId); !f.Online || f.LastSeenMs != 0 {
			t.Fatalf("bob in alice's list: %v; want online, no last seen", f)
		}

		// A second device of bob's changes nothing; the first going
		// neither.
		laptop, _ := a.device(t, "bob", "laptop")
		bob.c.Close()
		alice.noPush(a.opts.PresenceGrace + 300*time.Millisecond)

		// The last device goes: offline, last seen when it went.
		closedAt := time.Now()
		laptop.c.Close()
		p := alice.nextPresence()
		lastSeen := time.UnixMilli(p.LastSeenMs)
		if p.UserId != bobOK.UserId || p.Username != "bob" || p.Online ||
			lastSeen.Before(closedAt.Add(-time.Second)) || lastSeen.After(closedAt.Add(time.Second)) {
			t.Fatalf("alice got %v; want bob offline, last seen about %v", p, closedAt)
		}
		if since := time.Since(closedAt); since < a.opts.PresenceGrace-50*time.Millisecond {
			t.Fatalf("offline told %v after the close, before the grace of %v", since, a.opts.PresenceGrace)
		}
		if f := friendOf(t, alice, bobOK.UserId); f.Online || f.LastSeenMs != p.LastSeenMs {
			t.Fatalf("bob in alice's list: %v; want offline, last seen %d", f, p.LastSeenMs)
		}
		// A login of alice's (another device, the other node) lists it.
		phone, aliceOK := b.device(t, "alice", "phone")
		if len(aliceOK.Friends) != 1 || aliceOK.Friends[0].Online || aliceOK.Friends[0].LastSeenMs != p.LastSeenMs {
			t.Fatalf("alice's LoginOK friends %v; want bob offline, last seen %d", aliceOK.Friends, p.LastSeenMs)
		}

		// Back: every session of every friend is told, the non-friend not,
		// and bob not of himself.
		bob, _ = b.device(t, "bob", "phone")
		for _, rc := range []*rawConn{alice, phone} {
			if p := rc.nextPresence(); p.UserId != bobOK.UserId || !p.Online || p.LastSeenMs != 0 || p.Username != "bob" {
				t.Fatalf("got %v; want bob online", p)
			}
		}
		if f := friendOf(t, alice, bobOK.UserId); !f.Online || f.LastSeenMs != 0 {
			t.Fatalf("bob in alice's list: %v", f)
		}
		carol.noPush(200 * time.Millisecond)
		bob.noPush(100 * time.Millisecond)
	})
}

// TestPresenceGrace: a connection that drops and comes back within the
// grace (on the same node or the other) tells friends nothing; one that
// stays away is told once, after the grace.
func TestPresenceGrace(t *testing.T) {
	const grace = 1500 * time.Millisecond
	onOneNodeAndTwoWith(t, func(o *Options) { o.PresenceGrace = grace }, func(t *testing.T, a, b *testServer) {
		alice, _ := a.user(t, "alice")
		bob, bobOK := b.user(t, "bob")
		expectOK(t, bob.do(addFriendReq("alice")))
		for _, ts := range []*testServer{b, a, b} {
			bob.c.Close()
			time.Sleep(100 * time.Millisecond)
			bob, _ = ts.user(t, "bob")
		}
		alice.noPush(grace + 500*time.Millisecond)
		if f := friendOf(t, alice, bobOK.UserId); !f.Online {
			t.Fatalf("bob shown offline after quick reconnects: %v", f)
		}
		closedAt := time.Now()
		bob.c.Close()
		alice.noPush(grace - 300*time.Millisecond)
		if p := alice.nextPresence(); p.Online || p.UserId != bobOK.UserId {
			t.Fatalf("alice got %v; want bob offline", p)
		}
		if since := time.Since(closedAt); since < grace {
			t.Fatalf("offline told after %v, within the grace of %v", since, grace)
		}
		alice.noPush(300 * time.Millisecond) // once
	})
}

// TestPresenceHidden: a user who hides their presence shows offline with
// no last seen to their friends, who are told when it changes and of
// nothing meanwhile; LoginOK says it is hidden. Non-friends get nothing.
func TestPresenceHidden(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		alice, _ := a.user(t, "alice")
		carol, _ := a.user(t, "carol")
		bob, bobOK := b.user(t, "bob")
		if bobOK.PresenceHidden {
			t.Fatal("presence hidden by default")
		}
		expectOK(t, bob.do(addFriendReq("alice")))

		expectOK(t, bob.do(presenceVisibleReq(false)))
		if p := alice.nextPresence(); p.UserId != bobOK.UserId || p.Online || p.LastSeenMs != 0 {
			t.Fatalf("alice got %v; want bob offline, no last seen", p)
		}
		if f := friendOf(t, alice, bobOK.UserId); f.Online || f.LastSeenMs != 0 {
			t.Fatalf("hidden bob in alice's list: %v", f)
		}
		expectOK(t, bob.do(presenceVisibleReq(false))) // no change, nothing told
		// Hidden, bob comes and goes unseen; his last seen is kept.
		bob.c.Close()
		alice.noPush(a.opts.PresenceGrace + 400*time.Millisecond)
		bob, bobOK = a.user(t, "bob")
		if !bobOK.PresenceHidden {
			t.Fatal("LoginOK does not say presence is hidden")
		}
		alice.noPush(300 * time.Millisecond)
		if _, aliceOK := b.device(t, "alice", "tablet"); aliceOK.Friends[0].Online || aliceOK.Friends[0].LastSeenMs != 0 {
			t.Fatalf("hidden bob in a LoginOK: %v", aliceOK.Friends[0])
		}
		alice.noPush(300 * time.Millisecond) // alice's other device logging in is not news to her

		expectOK(t, bob.do(presenceVisibleReq(true)))
		if p := alice.nextPresence(); p.UserId != bobOK.UserId || !p.Online {
			t.Fatalf("alice got %v; want bob online", p)
		}
		carol.noPush(300 * time.Millisecond)
	})
}

// TestPresenceShutdownKeepsLastSeen: a node that shuts down cleanly
// settles everyone at once, those still in their grace and those still
// connected: their last seen is in the store when it opens again.
func TestPresenceShutdownKeepsLastSeen(t *testing.T) {
	opts := testOptions(t, EngineGnet)
	opts.PresenceGrace = time.Minute
	ts := startServer(t, opts)
	alice, aliceOK := ts.user(t, "alice")
	_, bobOK := ts.user(t, "bob")
	before := time.Now()
	alice.c.Close()
	time.Sleep(100 * time.Millisecond) // alice's cleanup: she is in her grace
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := OpenBoltStore(BoltConfig{Path: opts.storePath()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Presence(ctx, []uint64{aliceOK.UserId, bobOK.UserId})
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range st {
		if seen := time.UnixMilli(p.LastSeenMs); p.Online || seen.Before(before.Add(-time.Second)) || seen.After(time.Now()) {
			t.Fatalf("user %d after the shutdown: %+v; want offline, last seen since %v", i, p, before)
		}
	}
}

// TestPresenceNodeDeclaredDead: a node whose presence heartbeat looks
// older than the node TTL (cut off from Redis) is swept by another: its
// users' friends are told they went offline. When its heartbeat gets
// through again it finds itself swept, starts over as a new instance and
// joins its users again: friends are told they are back.
func TestPresenceNodeDeclaredDead(t *testing.T) {
	forEachRedis(t, testPresenceNodeDeclaredDead)
}

func testPresenceNodeDeclaredDead(t *testing.T, rb *redisBackend) {
	nodes := backendNodes(t, rb, 2, EngineGnet, nil)
	a, b := nodes[0], nodes[1]
	alice, _ := a.user(t, "alice")
	_, bobOK := b.user(t, "bob")
	expectOK(t, alice.do(addFriendReq("bob")))

	rdb, nodesKey := rb.client, rb.store(t).metaKey("presence:nodes")
	old := b.presence.instance()
	// As if b had not beaten for a minute: the next sweep claims it, unless
	// b's own beat comes first and refreshes it; try until a sweep wins.
	var p *chatpb.Presence
	for range 50 {
		// XX: not once a sweep claimed it (b's next beat must find itself
		// gone).
		if err := rdb.ZAddXX(context.Background(), nodesKey, redis.Z{Score: 1, Member: old}).Err(); err != nil {
			t.Fatal(err)
		}
		if f, err := alice.tryRead(150 * time.Millisecond); err == nil {
			p = f.GetPresence()
			break
		}
	}
	if p == nil || p.UserId != bobOK.UserId || p.Online || p.LastSeenMs == 0 {
		t.Fatalf("alice got %v; want bob swept offline, last seen at his node's last heartbeat", p)
	}
	if p := alice.nextPresence(); p.UserId != bobOK.UserId || !p.Online {
		t.Fatalf("alice got %v; want bob back online once his node beat again", p)
	}
	if inst := b.presence.instance(); inst == old {
		t.Fatal("the swept node kept its presence instance")
	}
	if f := friendOf(t, alice, bobOK.UserId); !f.Online {
		t.Fatalf("bob in alice's list: %v", f)
	}
}

// LoginOK lists the user's groups with the members' presence as
// ListGroups does right after: the user who just logged in among them
// online (an outside client saw itself offline there, its first device
// not yet counted), or offline while it hides its presence.
func TestLoginOKGroupsShowYouOnline(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		alice, _ := a.user(t, "alice")
		gid := alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "g"}}}).GetGroupCreated().GetGroupId()
		bob, _ := b.user(t, "bob")
		expectOK(t, bob.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}))
		bob.c.Close()
		time.Sleep(a.opts.PresenceGrace + 500*time.Millisecond) // offline now
		self := func(ok *chatpb.LoginOK) *chatpb.Member {
			t.Helper()
			for _, g := range ok.Groups {
				for _, m := range g.Members {
					if m.UserId == ok.UserId {
						return m
					}
				}
			}
			t.Fatalf("LoginOK groups %v do not list the user", ok.Groups)
			return nil
		}
		// bob's first device, then a second one on the other node.
		phone, ok := b.device(t, "bob", "phone")
		if !self(ok).Online {
			t.Fatalf("bob's LoginOK lists him offline: %v", ok.Groups)
		}
		if _, ok := a.device(t, "bob", "laptop"); !self(ok).Online {
			t.Fatalf("bob's second LoginOK lists him offline: %v", ok.Groups)
		}
		expectOK(t, phone.do(&chatpb.Frame{Body: &chatpb.Frame_SetPresenceVisible{SetPresenceVisible: &chatpb.SetPresenceVisible{Visible: false}}}))
		if _, ok := a.device(t, "bob", "tablet"); self(ok).Online || !ok.PresenceHidden {
			t.Fatalf("bob hidden, his LoginOK lists him online: %v", ok)
		}
	})
}
