package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// storeFactory opens a fresh, empty store with the given inbox limit.
type storeFactory func(t *testing.T, inboxLimit int) Store

// testStoreConformance is the contract every Store implementation meets.
// The embedded store runs it here; the Redis store runs it in cluster mode.
func testStoreConformance(t *testing.T, open storeFactory) {
	ctx := context.Background()
	t.Run("accounts", func(t *testing.T) {
		s := open(t, 100)
		a, err := s.CreateUser(ctx, "Alice", []byte("hash-a"))
		if err != nil || a.Nonce == 0 {
			t.Fatalf("CreateUser = %+v, %v; want a nonce", a, err)
		}
		b, _ := s.CreateUser(ctx, "bob", []byte("hash-b"))
		if b.Nonce == a.Nonce {
			t.Fatal("two accounts share a nonce")
		}
		if got, err := s.Account(ctx, a.ID); err != nil || got.Name != "Alice" || got.Nonce != a.Nonce || got.PasswordHash != nil {
			t.Fatalf("Account = %+v, %v", got, err)
		}
		if got, err := s.Credentials(ctx, "alice"); err != nil || got.Nonce != a.Nonce || string(got.PasswordHash) != "hash-a" {
			t.Fatalf("Credentials = %+v, %v", got, err)
		}
		if _, err := s.Account(ctx, 999999); !errors.Is(err, ErrUserNotFound) {
			t.Fatalf("Account of an unknown id = %v", err)
		}
	})
	t.Run("bans and token revocation", func(t *testing.T) {
		s := open(t, 100)
		a, _ := s.CreateUser(ctx, "alice", []byte("hash-a"))
		b, _ := s.CreateUser(ctx, "bob", []byte("hash-b"))
		if err := s.SetBan(ctx, a.ID, 1234); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Credentials(ctx, "alice"); err != nil || got.BannedUntilMs != 1234 || string(got.PasswordHash) != "hash-a" {
			t.Fatalf("Credentials of a banned user = %+v, %v", got, err)
		}
		if got, err := s.Account(ctx, a.ID); err != nil || got.BannedUntilMs != 1234 || got.Nonce != a.Nonce {
			t.Fatalf("Account of a banned user = %+v, %v", got, err)
		}
		if got, _ := s.Account(ctx, b.ID); got.BannedUntilMs != 0 || got.TokensRefusedUntilMs != 0 {
			t.Fatalf("bob, neither banned nor revoked: %+v", got)
		}
		if got, _ := s.UserByName(ctx, "alice"); got.ID != a.ID || got.BannedUntilMs != 0 || got.PasswordHash != nil {
			t.Fatalf("UserByName gives login state: %+v", got)
		}
		if err := s.SetBan(ctx, a.ID, 0); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Credentials(ctx, "alice"); got.BannedUntilMs != 0 {
			t.Fatalf("ban not lifted: %+v", got)
		}
		if err := s.RevokeTokens(ctx, a.ID, 5678); err != nil {
			t.Fatal(err)
		}
		got, err := s.Account(ctx, a.ID)
		if err != nil || got.Nonce == a.Nonce || got.Nonce == 0 || got.TokensRefusedUntilMs != 5678 || got.Name != "alice" {
			t.Fatalf("Account after RevokeTokens = %+v, %v; want a new nonce and the window", got, err)
		}
		if c, _ := s.Credentials(ctx, "alice"); string(c.PasswordHash) != "hash-a" || c.Nonce != got.Nonce {
			t.Fatalf("RevokeTokens touched the password or the name: %+v", c)
		}
		if err := s.RevokeTokens(ctx, a.ID, 0); err != nil {
			t.Fatal(err)
		}
		if again, _ := s.Account(ctx, a.ID); again.Nonce == got.Nonce || again.TokensRefusedUntilMs != 0 {
			t.Fatalf("second RevokeTokens = %+v", again)
		}
		for _, err := range []error{s.SetBan(ctx, 999999, 1), s.RevokeTokens(ctx, 999999, 1)} {
			if !errors.Is(err, ErrUserNotFound) {
				t.Fatalf("on an unknown user: %v, want ErrUserNotFound", err)
			}
		}
		if _, err := s.Account(ctx, 999999); !errors.Is(err, ErrUserNotFound) {
			t.Fatalf("a failed ban made user 999999: %v", err)
		}
	})
	t.Run("user list", func(t *testing.T) {
		s := open(t, 100)
		if got, err := s.Users(ctx, 0, 10); err != nil || len(got) != 0 {
			t.Fatalf("Users of an empty store = %v, %v", got, err)
		}
		var want []User
		for i := range 7 {
			u, err := s.CreateUser(ctx, fmt.Sprintf("user%d", i), []byte("h"))
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, User{ID: u.ID, Name: u.Name})
		}
		var got []User
		for after := uint64(0); ; {
			page, err := s.Users(ctx, after, 3)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			if len(page) > 3 {
				t.Fatalf("a page of %d, limit 3", len(page))
			}
			got = append(got, page...)
			after = page[len(page)-1].ID
		}
		same := func(a, b []User) bool {
			return slices.EqualFunc(a, b, func(x, y User) bool { return x.ID == y.ID && x.Name == y.Name && x.PasswordHash == nil })
		}
		if !same(got, want) {
			t.Fatalf("Users pages = %v, want %v", got, want)
		}
		if got, _ := s.Users(ctx, want[5].ID, 100); !same(got, want[6:]) {
			t.Fatalf("Users after the sixth = %v", got)
		}
	})
	t.Run("session generations", func(t *testing.T) {
		s := open(t, 100)
		if g, err := s.LatestSession(ctx, 7, ""); err != nil || g != 0 {
			t.Fatalf("LatestSession before any login = %d, %v; want 0", g, err)
		}
		// Concurrent logins of one user get distinct generations, and the
		// latest is the highest handed out; another user counts apart.
		const logins = 50
		gens := make(chan uint64, logins)
		var wg sync.WaitGroup
		for range logins {
			wg.Go(func() {
				g, err := s.NewSession(ctx, 7, "")
				if err != nil {
					t.Error(err)
				}
				gens <- g
			})
		}
		wg.Wait()
		close(gens)
		seen := map[uint64]bool{}
		var highest uint64
		for g := range gens {
			if g == 0 || seen[g] {
				t.Fatalf("generation %d handed out twice or zero", g)
			}
			seen[g] = true
			highest = max(highest, g)
		}
		if g, err := s.LatestSession(ctx, 7, ""); err != nil || g != highest {
			t.Fatalf("LatestSession = %d, %v; want %d", g, err, highest)
		}
		if g, err := s.NewSession(ctx, 8, ""); err != nil || g == 0 {
			t.Fatalf("another user's first generation = %d, %v", g, err)
		}
		if g, _ := s.LatestSession(ctx, 7, ""); g != highest {
			t.Fatalf("another user's login moved user 7 to %d", g)
		}
	})
	t.Run("users", func(t *testing.T) {
		s := open(t, 100)
		u, err := s.CreateUser(ctx, "Alice", []byte("hash-a"))
		if err != nil || u.ID == 0 || u.Name != "Alice" {
			t.Fatalf("CreateUser = %v, %v", u, err)
		}
		if _, err := s.CreateUser(ctx, "alice", []byte("x")); !errors.Is(err, ErrUsernameTaken) {
			t.Fatalf("duplicate (other case) = %v, want ErrUsernameTaken", err)
		}
		b, _ := s.CreateUser(ctx, "bob", []byte("hash-b"))
		if b.ID == u.ID {
			t.Fatal("two users share an id")
		}
		got, err := s.Credentials(ctx, "ALICE")
		if err != nil || got.ID != u.ID || got.Name != "Alice" || string(got.PasswordHash) != "hash-a" {
			t.Fatalf("Credentials = %v, %v", got, err)
		}
		if got, err := s.UserByName(ctx, "alice"); err != nil || got.ID != u.ID || got.Name != "Alice" {
			t.Fatalf("UserByName = %v, %v", got, err)
		}
		if _, err := s.Credentials(ctx, "nobody"); !errors.Is(err, ErrUserNotFound) {
			t.Fatalf("Credentials of nobody = %v", err)
		}
		if got, err := s.UserByID(ctx, b.ID); err != nil || got.Name != "bob" {
			t.Fatalf("UserByID = %v, %v", got, err)
		}
		if _, err := s.UserByName(ctx, "carol"); !errors.Is(err, ErrUserNotFound) {
			t.Fatalf("unknown name = %v", err)
		}
		if _, err := s.UserByID(ctx, 999999); !errors.Is(err, ErrUserNotFound) {
			t.Fatalf("unknown id = %v", err)
		}
	})

	t.Run("friends", func(t *testing.T) {
		s := open(t, 100)
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		c, _ := s.CreateUser(ctx, "c", nil)
		if err := s.AddFriend(ctx, a.ID, c.ID, Limits{}); err != nil {
			t.Fatal(err)
		}
		if err := s.AddFriend(ctx, b.ID, a.ID, Limits{}); err != nil {
			t.Fatal(err)
		}
		if err := s.AddFriend(ctx, a.ID, b.ID, Limits{}); !errors.Is(err, ErrAlreadyFriends) {
			t.Fatalf("repeat = %v", err)
		}
		if err := s.AddFriend(ctx, a.ID, a.ID, Limits{}); !errors.Is(err, ErrFriendSelf) {
			t.Fatalf("self = %v", err)
		}
		if err := s.AddFriend(ctx, a.ID, 999999, Limits{}); !errors.Is(err, ErrUserNotFound) {
			t.Fatalf("unknown = %v", err)
		}
		fa, _ := s.Friends(ctx, a.ID)
		if len(fa) != 2 || fa[0].ID != c.ID || fa[1].ID != b.ID || fa[0].Name != "c" {
			t.Fatalf("a's friends = %v (want c then b, in add order)", fa)
		}
		if fa[0].PasswordHash != nil {
			t.Fatal("Friends leaks password hashes")
		}
		if fb, _ := s.Friends(ctx, b.ID); len(fb) != 1 || fb[0].ID != a.ID {
			t.Fatalf("b's friends = %v", fb)
		}
		if fn, err := s.Friends(ctx, 999999); err != nil || len(fn) != 0 {
			t.Fatalf("friends of nobody = %v, %v", fn, err)
		}
	})

	t.Run("remove friend", func(t *testing.T) {
		s := open(t, 100)
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		c, _ := s.CreateUser(ctx, "c", nil)
		for _, p := range [][2]User{{a, b}, {a, c}, {c, b}} {
			if err := s.AddFriend(ctx, p[0].ID, p[1].ID, Limits{}); err != nil {
				t.Fatal(err)
			}
		}
		m := testMessage(newMsgIDGen(0), a, "before")
		m.ToUserId = b.ID
		if _, err := s.AppendMessage(ctx, m, []uint64{b.ID}, ""); err != nil {
			t.Fatal(err)
		}
		// Removed by the side that did not add: both sides go.
		if err := s.RemoveFriend(ctx, b.ID, a.ID); err != nil {
			t.Fatal(err)
		}
		if got := userIDs(t, s, a.ID); !slices.Equal(got, []uint64{c.ID}) {
			t.Fatalf("a's friends = %v, want c only", got)
		}
		if got := userIDs(t, s, b.ID); !slices.Equal(got, []uint64{c.ID}) {
			t.Fatalf("b's friends = %v, want c only", got)
		}
		if err := s.RemoveFriend(ctx, a.ID, b.ID); !errors.Is(err, ErrNotFriends) {
			t.Fatalf("again = %v, want ErrNotFriends", err)
		}
		if err := s.RemoveFriend(ctx, a.ID, a.ID); !errors.Is(err, ErrUnfriendSelf) {
			t.Fatalf("self = %v", err)
		}
		if err := s.RemoveFriend(ctx, a.ID, 999999); !errors.Is(err, ErrNotFriends) {
			t.Fatalf("unknown = %v", err)
		}
		// The conversation and its history stay.
		page, err := s.History(ctx, HistoryQuery{Conv: DirectConversation(a.ID, b.ID), Newest: true, Limit: 10})
		if err != nil || len(page.Messages) != 1 || page.Messages[0].Text != "before" {
			t.Fatalf("history after the removal = %+v, %v", page, err)
		}
		if cs, _, err := s.ListConversations(ctx, b.ID, 10); err != nil || len(cs) != 1 {
			t.Fatalf("b's conversations after the removal = %+v, %v", cs, err)
		}
		// Friends again, last in the add order now.
		if err := s.AddFriend(ctx, a.ID, b.ID, Limits{}); err != nil {
			t.Fatal(err)
		}
		if got := userIDs(t, s, a.ID); !slices.Equal(got, []uint64{c.ID, b.ID}) {
			t.Fatalf("a's friends after befriending again = %v", got)
		}
		if got := userIDs(t, s, b.ID); !slices.Equal(got, []uint64{c.ID, a.ID}) {
			t.Fatalf("b's friends after befriending again = %v", got)
		}
		// A removal makes room under the limit.
		lim := Limits{FriendsPerUser: 2}
		if err := s.AddFriend(ctx, b.ID, c.ID, lim); !errors.Is(err, ErrAlreadyFriends) {
			t.Fatal(err)
		}
		d, _ := s.CreateUser(ctx, "d", nil)
		if err := s.AddFriend(ctx, a.ID, d.ID, lim); !errors.Is(err, ErrTooManyFriends) {
			t.Fatalf("at the limit = %v", err)
		}
		if err := s.RemoveFriend(ctx, a.ID, c.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.AddFriend(ctx, a.ID, d.ID, lim); err != nil {
			t.Fatalf("after a removal = %v", err)
		}
	})

	t.Run("block", func(t *testing.T) {
		s := open(t, 100)
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		c, _ := s.CreateUser(ctx, "c", nil)
		ids := newMsgIDGen(0)
		send := func(from, to User) (AppendResult, error) {
			m := testMessage(ids, from, "x")
			m.ToUserId = to.ID
			return s.AppendMessage(ctx, m, []uint64{to.ID}, "")
		}
		blocked := func(x, y User) bool {
			t.Helper()
			v, err := s.Blocked(ctx, x.ID, y.ID)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		blockedBy := func(u User) []uint64 {
			t.Helper()
			us, err := s.BlockedUsers(ctx, u.ID)
			if err != nil {
				t.Fatal(err)
			}
			out := []uint64{}
			for _, x := range us {
				out = append(out, x.ID)
			}
			return out
		}
		for _, o := range []User{b, c} {
			if err := s.AddFriend(ctx, a.ID, o.ID, Limits{}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := send(a, b); err != nil {
			t.Fatal(err)
		}
		conv := DirectConversation(a.ID, b.ID)

		// A block ends the friendship, both sides, and is mutual in effect.
		if err := s.Block(ctx, b.ID, a.ID, Limits{}); err != nil {
			t.Fatal(err)
		}
		if got := userIDs(t, s, a.ID); !slices.Equal(got, []uint64{c.ID}) {
			t.Fatalf("a's friends after b blocked a = %v, want c", got)
		}
		if got := userIDs(t, s, b.ID); len(got) != 0 {
			t.Fatalf("b's friends = %v", got)
		}
		if !blocked(a, b) || !blocked(b, a) || blocked(a, c) {
			t.Fatal("Blocked is not what was blocked")
		}
		if got := blockedBy(b); !slices.Equal(got, []uint64{a.ID}) {
			t.Fatalf("b blocks %v", got)
		}
		if got := blockedBy(a); len(got) != 0 {
			t.Fatalf("a blocks %v", got)
		}
		for _, p := range [][2]User{{a, b}, {b, a}} {
			if err := s.AddFriend(ctx, p[0].ID, p[1].ID, Limits{}); !errors.Is(err, ErrBlocked) {
				t.Fatalf("AddFriend %s -> %s = %v, want ErrBlocked", p[0].Name, p[1].Name, err)
			}
			if _, err := send(p[0], p[1]); !errors.Is(err, ErrBlocked) {
				t.Fatalf("send %s -> %s = %v, want ErrBlocked", p[0].Name, p[1].Name, err)
			}
		}
		// Nothing of the refused sends: no seq taken, not in history, no inbox.
		if last, err := s.LastSeq(ctx, conv); err != nil || last != 1 {
			t.Fatalf("last seq after refused sends = %d, %v; want 1", last, err)
		}
		if in := inboxIDs(t, s, a.ID); len(in) != 0 {
			t.Fatalf("a's inbox = %v", in)
		}
		if _, err := send(a, c); err != nil {
			t.Fatalf("a to c = %v", err)
		}
		// Twice changes nothing; the other side blocking too is its own.
		if err := s.Block(ctx, b.ID, a.ID, Limits{}); err != nil {
			t.Fatal(err)
		}
		if err := s.Block(ctx, a.ID, b.ID, Limits{}); err != nil {
			t.Fatal(err)
		}
		if err := s.Unblock(ctx, b.ID, a.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.Unblock(ctx, b.ID, a.ID); !errors.Is(err, ErrNotBlocked) {
			t.Fatalf("unblock again = %v", err)
		}
		if _, err := send(b, a); !errors.Is(err, ErrBlocked) || !blocked(b, a) {
			t.Fatalf("send while a still blocks b = %v", err)
		}
		if err := s.Unblock(ctx, a.ID, b.ID); err != nil {
			t.Fatal(err)
		}
		r, err := send(b, a)
		if err != nil || r.Message.Seq != 2 {
			t.Fatalf("send after both unblocked = %+v, %v; want seq 2", r.Message, err)
		}
		if err := s.AddFriend(ctx, a.ID, b.ID, Limits{}); err != nil {
			t.Fatalf("AddFriend after = %v", err)
		}
		if err := s.Block(ctx, a.ID, a.ID, Limits{}); !errors.Is(err, ErrBlockSelf) {
			t.Fatalf("self = %v", err)
		}
		if err := s.Block(ctx, a.ID, 999999, Limits{}); !errors.Is(err, ErrUserNotFound) {
			t.Fatalf("unknown = %v", err)
		}
		if err := s.Unblock(ctx, a.ID, 999999); !errors.Is(err, ErrNotBlocked) {
			t.Fatalf("unblock unknown = %v", err)
		}
		// The limit counts one's own blocks; blocking again at it is fine.
		lim := Limits{BlockedPerUser: 1}
		if err := s.Block(ctx, c.ID, a.ID, lim); err != nil {
			t.Fatal(err)
		}
		if err := s.Block(ctx, c.ID, b.ID, lim); !errors.Is(err, ErrTooManyBlocked) {
			t.Fatalf("past the limit = %v", err)
		}
		if err := s.Block(ctx, c.ID, a.ID, lim); err != nil {
			t.Fatalf("again at the limit = %v", err)
		}
		if err := s.Block(ctx, b.ID, c.ID, lim); err != nil {
			t.Fatalf("another user's block = %v", err)
		}
		if got := blockedBy(c); !slices.Equal(got, []uint64{a.ID}) {
			t.Fatalf("c blocks %v", got)
		}
	})

	t.Run("groups", func(t *testing.T) {
		s := open(t, 100)
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		c, _ := s.CreateUser(ctx, "c", nil)
		g, err := s.CreateGroup(ctx, a.ID, "hikers", "weekends", Limits{})
		if err != nil || g.ID == 0 || len(g.Members) != 1 || g.Members[0].Role != chatpb.Role_ROLE_CREATOR {
			t.Fatalf("CreateGroup = %v, %v", g, err)
		}
		g2, _ := s.CreateGroup(ctx, b.ID, "other", "", Limits{})
		if g2.ID == g.ID {
			t.Fatal("two groups share an id")
		}
		if err := s.JoinGroup(ctx, g.ID, c.ID, Limits{}); err != nil {
			t.Fatal(err)
		}
		if err := s.JoinGroup(ctx, g.ID, b.ID, Limits{}); err != nil {
			t.Fatal(err)
		}
		if err := s.JoinGroup(ctx, g.ID, b.ID, Limits{}); !errors.Is(err, ErrAlreadyMember) {
			t.Fatalf("join twice = %v", err)
		}
		if err := s.JoinGroup(ctx, 999999, b.ID, Limits{}); !errors.Is(err, ErrGroupNotFound) {
			t.Fatalf("join unknown = %v", err)
		}
		got, err := s.Group(ctx, g.ID)
		if err != nil || got.Name != "hikers" || got.Description != "weekends" || len(got.Members) != 3 {
			t.Fatalf("Group = %v, %v", got, err)
		}
		order := []uint64{got.Members[0].UserID, got.Members[1].UserID, got.Members[2].UserID}
		if order[0] != a.ID || order[1] != c.ID || order[2] != b.ID || got.Members[1].Username != "c" ||
			got.Members[1].Role != chatpb.Role_ROLE_MEMBER {
			t.Fatalf("members = %v (want a, c, b in join order)", got.Members)
		}
		if !got.HasMember(c.ID) || got.HasMember(999999) {
			t.Fatal("HasMember is wrong")
		}
		if err := s.LeaveGroup(ctx, g.ID, c.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.LeaveGroup(ctx, g.ID, c.ID); !errors.Is(err, ErrNotMember) {
			t.Fatalf("leave twice = %v", err)
		}
		if err := s.LeaveGroup(ctx, 999999, c.ID); !errors.Is(err, ErrGroupNotFound) {
			t.Fatalf("leave unknown = %v", err)
		}
		got, _ = s.Group(ctx, g.ID)
		if len(got.Members) != 2 || got.HasMember(c.ID) {
			t.Fatalf("after leave = %v", got.Members)
		}
		// Rejoining puts c at the end.
		_ = s.JoinGroup(ctx, g.ID, c.ID, Limits{})
		got, _ = s.Group(ctx, g.ID)
		if got.Members[2].UserID != c.ID {
			t.Fatalf("after rejoin = %v", got.Members)
		}
		bg, err := s.GroupsOf(ctx, b.ID)
		if err != nil || len(bg) != 2 {
			t.Fatalf("b's groups = %v, %v", bg, err)
		}
		ids, err := s.GroupIDs(ctx, b.ID)
		if err != nil || !slices.Equal(ids, []uint64{min(g.ID, g2.ID), max(g.ID, g2.ID)}) {
			t.Fatalf("b's group ids = %v, %v; want %d and %d", ids, err, g.ID, g2.ID)
		}
		if err := s.LeaveGroup(ctx, g.ID, b.ID); err != nil {
			t.Fatal(err)
		}
		if ids, err := s.GroupIDs(ctx, b.ID); err != nil || !slices.Equal(ids, []uint64{g2.ID}) {
			t.Fatalf("b's group ids after leaving %d = %v, %v", g.ID, ids, err)
		}
		if ids, err := s.GroupIDs(ctx, 999999); err != nil || len(ids) != 0 {
			t.Fatalf("group ids of nobody = %v, %v", ids, err)
		}
		if _, err := s.Group(ctx, 999999); !errors.Is(err, ErrGroupNotFound) {
			t.Fatalf("unknown group = %v", err)
		}
	})

	t.Run("limits", func(t *testing.T) {
		s := open(t, 100)
		var u [5]User
		for i := range u {
			u[i], _ = s.CreateUser(ctx, fmt.Sprintf("u%d", i), nil)
		}
		lim := Limits{FriendsPerUser: 2, GroupsPerUser: 2, MembersPerGroup: 3}

		for _, f := range []User{u[1], u[2]} {
			if err := s.AddFriend(ctx, u[0].ID, f.ID, lim); err != nil {
				t.Fatalf("AddFriend under the limit = %v", err)
			}
		}
		if err := s.AddFriend(ctx, u[0].ID, u[3].ID, lim); !errors.Is(err, ErrTooManyFriends) {
			t.Fatalf("third friend of u0 = %v, want ErrTooManyFriends", err)
		}
		if err := s.AddFriend(ctx, u[3].ID, u[0].ID, lim); !errors.Is(err, ErrTooManyFriends) {
			t.Fatalf("befriending u0, who is full = %v, want ErrTooManyFriends", err)
		}
		if err := s.AddFriend(ctx, u[0].ID, u[1].ID, lim); !errors.Is(err, ErrAlreadyFriends) {
			t.Fatalf("existing friendship at the limit = %v, want ErrAlreadyFriends", err)
		}
		if err := s.AddFriend(ctx, u[3].ID, u[4].ID, lim); err != nil {
			t.Fatalf("others are not limited by u0's count: %v", err)
		}
		if fr, _ := s.Friends(ctx, u[0].ID); len(fr) != 2 {
			t.Fatalf("u0 has %d friends, want 2", len(fr))
		}

		g, err := s.CreateGroup(ctx, u[0].ID, "g", "", lim)
		if err != nil {
			t.Fatalf("CreateGroup = %v", err)
		}
		for _, m := range []User{u[1], u[2]} {
			if err := s.JoinGroup(ctx, g.ID, m.ID, lim); err != nil {
				t.Fatalf("JoinGroup under the limit = %v", err)
			}
		}
		if err := s.JoinGroup(ctx, g.ID, u[3].ID, lim); !errors.Is(err, ErrGroupFull) {
			t.Fatalf("fourth member = %v, want ErrGroupFull", err)
		}
		if err := s.JoinGroup(ctx, g.ID, u[1].ID, lim); !errors.Is(err, ErrAlreadyMember) {
			t.Fatalf("rejoin of a full group = %v, want ErrAlreadyMember", err)
		}
		if got, _ := s.Group(ctx, g.ID); len(got.Members) != 3 {
			t.Fatalf("group has %d members, want 3", len(got.Members))
		}
		if err := s.LeaveGroup(ctx, g.ID, u[2].ID); err != nil {
			t.Fatal(err)
		}
		if err := s.JoinGroup(ctx, g.ID, u[3].ID, lim); err != nil {
			t.Fatalf("join after a member left = %v", err)
		}

		if _, err := s.CreateGroup(ctx, u[0].ID, "g2", "", lim); err != nil {
			t.Fatalf("second group of u0 = %v", err)
		}
		if _, err := s.CreateGroup(ctx, u[0].ID, "g3", "", lim); !errors.Is(err, ErrTooManyGroups) {
			t.Fatalf("third group of u0 = %v, want ErrTooManyGroups", err)
		}
		h, _ := s.CreateGroup(ctx, u[4].ID, "h", "", lim)
		if err := s.JoinGroup(ctx, h.ID, u[0].ID, lim); !errors.Is(err, ErrTooManyGroups) {
			t.Fatalf("u0 joining a third group = %v, want ErrTooManyGroups", err)
		}
		if gs, _ := s.GroupsOf(ctx, u[0].ID); len(gs) != 2 {
			t.Fatalf("u0 is in %d groups, want 2", len(gs))
		}
		if err := s.JoinGroup(ctx, h.ID, u[0].ID, Limits{}); err != nil {
			t.Fatalf("zero Limits mean none: %v", err)
		}
	})

	t.Run("inbox", func(t *testing.T) {
		s := open(t, 100)
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		c, _ := s.CreateUser(ctx, "c", nil)
		ids := newMsgIDGen(1)
		var sent []uint64
		for i := range 10 {
			m := testMessage(ids, a, fmt.Sprintf("m%d", i))
			res, err := s.AppendMessage(ctx, m, []uint64{b.ID, c.ID}, "")
			if err != nil || res.Duplicate || res.Message.MsgId != m.MsgId {
				t.Fatalf("AppendMessage = %v, %v", res, err)
			}
			sent = append(sent, m.MsgId)
		}
		got, err := s.Inbox(ctx, b.ID, 0, 4)
		if err != nil || len(got) != 4 || got[0].MsgId != sent[0] || got[0].Text != "m0" || got[0].FromUsername != "a" {
			t.Fatalf("first page = %v, %v", got, err)
		}
		got, _ = s.Inbox(ctx, b.ID, got[3].MsgId, 100)
		if len(got) != 6 || got[0].MsgId != sent[4] || got[5].MsgId != sent[9] {
			t.Fatalf("second page = %v", got)
		}
		if err := s.Ack(ctx, b.ID, []uint64{sent[0], sent[2], 424242}); err != nil {
			t.Fatal(err)
		}
		got, _ = s.Inbox(ctx, b.ID, 0, 100)
		if len(got) != 8 || got[0].MsgId != sent[1] || got[1].MsgId != sent[3] {
			t.Fatalf("after ack = %v", got)
		}
		// c's copy is independent of b's acks.
		if got, _ := s.Inbox(ctx, c.ID, 0, 100); len(got) != 10 {
			t.Fatalf("c's inbox = %d messages", len(got))
		}
		if got, _ := s.Inbox(ctx, a.ID, 0, 100); len(got) != 0 {
			t.Fatalf("sender's inbox = %v", got)
		}
	})

	t.Run("devices", func(t *testing.T) {
		s := open(t, 100)
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		ids := newMsgIDGen(1)
		send := func(from User, to uint64, atMs int64, dev *sender) *chatpb.Message {
			t.Helper()
			m := testMessage(ids, from, "x")
			m.SentAtMs = atMs
			c := ctx
			if dev != nil {
				c = withSendingDevice(ctx, *dev)
			}
			res, err := s.AppendMessage(c, m, []uint64{to}, "")
			if err != nil {
				t.Fatal(err)
			}
			return res.Message
		}
		// A client without a device id is a device on record too, and the
		// first one takes slot 0: a named device after it gets a box of
		// its own, and the two never share one.
		c, _ := s.CreateUser(ctx, "c", nil)
		if reg, err := s.RegisterDevice(ctx, c.ID, "", 1000); err != nil || reg.Slot != 0 || reg.Forgot {
			t.Fatalf("RegisterDevice(\"\") = %+v, %v", reg, err)
		}
		if devs, _ := s.Devices(ctx, c.ID); len(devs) != 1 || devs[0].ID != "" || devs[0].Slot != 0 {
			t.Fatalf("devices after a login without an id: %+v", devs)
		}
		if reg, err := s.RegisterDevice(ctx, c.ID, "tablet", 1200); err != nil || reg.Slot != 1 {
			t.Fatalf("RegisterDevice(tablet) after \"\" = %+v, %v", reg, err)
		}
		toC := send(a, c.ID, 1300, nil)
		for slot := range 2 {
			if got := inboxIDs(t, s, boxOf(c.ID, slot)); !slices.Equal(got, []uint64{toC.MsgId}) {
				t.Fatalf("c's box %d = %v, want [%d]", slot, got, toC.MsgId)
			}
		}
		// Before any login the user's messages wait in slot 0's box.
		m0 := send(a, b.ID, 1500, nil)
		// The first device on record takes slot 0, with what its inbox holds.
		if reg, err := s.RegisterDevice(ctx, b.ID, "phone", 2000); err != nil || reg.Slot != 0 {
			t.Fatalf("RegisterDevice(phone) = %+v, %v", reg, err)
		}
		if got := inboxIDs(t, s, boxOf(b.ID, 0)); !slices.Equal(got, []uint64{m0.MsgId}) {
			t.Fatalf("phone's box %v, want the message from before", got)
		}
		// A later one starts at its registration.
		if reg, err := s.RegisterDevice(ctx, b.ID, "laptop", 3000); err != nil || reg.Slot != 1 {
			t.Fatalf("RegisterDevice(laptop) = %+v, %v", reg, err)
		}
		early := send(a, b.ID, 2999, nil) // sent before the laptop came
		m1 := send(a, b.ID, 3000, nil)
		if got := inboxIDs(t, s, boxOf(b.ID, 1)); !slices.Equal(got, []uint64{m1.MsgId}) {
			t.Fatalf("laptop's box %v, want only [%d]", got, m1.MsgId)
		}
		// Acks are per box.
		if err := s.Ack(ctx, boxOf(b.ID, 0), []uint64{m0.MsgId, early.MsgId, m1.MsgId}); err != nil {
			t.Fatal(err)
		}
		if got := inboxIDs(t, s, boxOf(b.ID, 0)); len(got) != 0 {
			t.Fatalf("phone's box after its acks: %v", got)
		}
		if got := inboxIDs(t, s, boxOf(b.ID, 1)); !slices.Equal(got, []uint64{m1.MsgId}) {
			t.Fatalf("laptop's box after the phone's acks: %v", got)
		}
		// Sent from the phone: the laptop gets it, the phone does not.
		own := send(b, a.ID, 4000, &sender{box: boxOf(b.ID, 0), node: "n", conn: 1})
		if got := inboxIDs(t, s, boxOf(b.ID, 1)); !slices.Equal(got, []uint64{m1.MsgId, own.MsgId}) {
			t.Fatalf("laptop's box %v, want its own user's message too", got)
		}
		if got := inboxIDs(t, s, boxOf(b.ID, 0)); len(got) != 0 {
			t.Fatalf("the sending device's box %v", got)
		}
		if got := inboxIDs(t, s, a.ID); !slices.Equal(got, []uint64{own.MsgId}) {
			t.Fatalf("recipient's box %v", got)
		}
		// Past maxKnownDevices the oldest login is forgotten, its box
		// emptied, its slot given to the newcomer.
		for i := 2; i < maxKnownDevices; i++ {
			if reg, err := s.RegisterDevice(ctx, b.ID, fmt.Sprint("d", i), int64(5000+i)); err != nil || reg.Slot != i {
				t.Fatalf("RegisterDevice(d%d) = %+v, %v", i, reg, err)
			}
		}
		reg, err := s.RegisterDevice(ctx, b.ID, "one too many", 9000)
		if err != nil || !reg.Forgot || reg.Evicted != "phone" || reg.Slot != 0 {
			t.Fatalf("RegisterDevice past the limit = %+v, %v; want phone (oldest login) forgotten", reg, err)
		}
		send(a, b.ID, 8999, nil) // before the newcomer: not in its box
		if got := inboxIDs(t, s, boxOf(b.ID, 0)); len(got) != 0 {
			t.Fatalf("the reused slot's box %v", got)
		}
		if devs, _ := s.Devices(ctx, b.ID); len(devs) != maxKnownDevices || slices.ContainsFunc(devs, func(d Device) bool { return d.ID == "phone" }) {
			t.Fatalf("devices %+v", devs)
		}
	})

	t.Run("sending marks read", func(t *testing.T) {
		s := open(t, 100)
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		ids := newMsgIDGen(1)
		conv := Conversation{A: a.ID, B: b.ID}
		var last uint64
		for i, from := range []User{b, b, a, b} {
			m := testMessage(ids, from, fmt.Sprint(i))
			to := a.ID
			if from.ID == a.ID {
				to = b.ID
			}
			m.ToUserId = to
			res, err := s.AppendMessage(withSendingDevice(ctx, sender{box: from.ID}), m, []uint64{to}, "")
			if err != nil {
				t.Fatal(err)
			}
			last = res.Message.Seq
		}
		// a sent seq 3, b sent seq 4 last: a has read up to 3, b up to 4.
		if got, err := s.ReadSeq(ctx, a.ID, conv); err != nil || got != 3 {
			t.Fatalf("a's read seq = %d, %v; want 3, where a's own message is", got, err)
		}
		if got, _ := s.ReadSeq(ctx, b.ID, conv); got != last {
			t.Fatalf("b's read seq = %d; want %d", got, last)
		}
		// Never backwards: a MarkRead below it changes nothing.
		if seq, moved, err := s.MarkRead(ctx, b.ID, conv, 1); err != nil || moved || seq != last {
			t.Fatalf("MarkRead below = %d, %v, %v", seq, moved, err)
		}
		// A message not sent from a session (a program's) marks nothing.
		prog := testMessage(ids, a, "program")
		prog.ToUserId = b.ID
		if _, err := s.AppendMessage(ctx, prog, []uint64{b.ID}, ""); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.ReadSeq(ctx, a.ID, conv); got != 3 {
			t.Fatalf("a's read seq = %d after a message not from a device; want 3", got)
		}
	})

	t.Run("devices online", func(t *testing.T) {
		s := open(t, 100)
		u, _ := s.CreateUser(ctx, "u", nil)
		gen := func(dev string) uint64 {
			g, err := s.NewSession(ctx, u.ID, dev)
			if err != nil {
				t.Fatal(err)
			}
			if l, _ := s.LatestSession(ctx, u.ID, dev); l != g {
				t.Fatalf("LatestSession(%s) = %d, want %d", dev, l, g)
			}
			return g
		}
		online := func(dev string, g uint64) []DeviceSession {
			k, err := s.DeviceOnline(ctx, u.ID, dev, g, 2)
			if err != nil {
				t.Fatal(err)
			}
			return k
		}
		gx, gy, gz := gen("x"), gen("y"), gen("z")
		if !(gx < gy && gy < gz) {
			t.Fatalf("generations across devices not increasing: %d %d %d", gx, gy, gz)
		}
		if k := online("x", gx); len(k) != 0 {
			t.Fatalf("kicked %v", k)
		}
		if k := online("y", gy); len(k) != 0 {
			t.Fatalf("kicked %v", k)
		}
		if k := online("z", gz); !slices.Equal(k, []DeviceSession{{"x", gx}}) {
			t.Fatalf("third device online kicked %v, want x", k)
		}
		if err := s.DeviceOffline(ctx, u.ID, "y", gy); err != nil {
			t.Fatal(err)
		}
		gw := gen("w")
		if k := online("w", gw); len(k) != 0 {
			t.Fatalf("kicked %v after y went offline", k)
		}
		// A stale offline (an older session of z) changes nothing.
		if err := s.DeviceOffline(ctx, u.ID, "z", gz-1); err != nil {
			t.Fatal(err)
		}
		gv := gen("v")
		if k := online("v", gv); !slices.Equal(k, []DeviceSession{{"z", gz}}) {
			t.Fatalf("kicked %v, want z", k)
		}
	})

	t.Run("presence and last seen", func(t *testing.T) {
		s := open(t, 100)
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		presence := func(want ...PresenceState) {
			t.Helper()
			got, err := s.Presence(ctx, []uint64{a.ID, b.ID})
			if err != nil || !slices.Equal(got, want) {
				t.Fatalf("Presence = %v, %v; want %v", got, err, want)
			}
		}
		change := func(ch PresenceChange, err error) PresenceChange {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
			if ch.Published {
				t.Fatal("published by a store not asked to publish")
			}
			return ch
		}
		want := func(what string, ch PresenceChange, announce bool, st PresenceState, hidden bool) {
			t.Helper()
			if ch.Announce != announce || ch.State != st || ch.Hidden != hidden {
				t.Fatalf("%s: %+v; want announce %v, %+v, hidden %v", what, ch, announce, st, hidden)
			}
		}
		leave := func(node string, wantLast bool) {
			t.Helper()
			if last, err := s.PresenceLeave(ctx, a.ID, node); err != nil || last != wantLast {
				t.Fatalf("PresenceLeave(%s) = %v, %v; want %v", node, last, err, wantLast)
			}
		}
		on, off := PresenceState{Online: true}, PresenceState{}
		presence(off, off) // never seen: offline, no last seen

		// The first node announces; a second one does not.
		want("first join", change(s.PresenceJoin(ctx, a.ID, "n1")), true, on, false)
		want("second join", change(s.PresenceJoin(ctx, a.ID, "n2")), false, on, false)
		presence(on, off)
		leave("n1", false)
		want("settle with n2 left", change(s.PresenceSettle(ctx, a.ID, "n1", 1000)), false, on, false)
		leave("n2", true)
		presence(on, off) // online until settled: the grace
		want("last settle", change(s.PresenceSettle(ctx, a.ID, "n2", 12345)), true, PresenceState{LastSeenMs: 12345}, false)
		presence(PresenceState{LastSeenMs: 12345}, off)
		want("settle again", change(s.PresenceSettle(ctx, a.ID, "n2", 20000)), false, PresenceState{LastSeenMs: 12345}, false)

		// Back on another node within the grace: the settle of the node
		// left finds it, and nothing is announced.
		want("join", change(s.PresenceJoin(ctx, a.ID, "n1")), true, on, false)
		leave("n1", true)
		want("join elsewhere", change(s.PresenceJoin(ctx, a.ID, "n2")), false, on, false)
		want("stale settle", change(s.PresenceSettle(ctx, a.ID, "n1", 30000)), false, on, false)
		presence(on, off)

		// Hidden: friends see offline with no last seen, and nothing of
		// what happens meanwhile; the last seen is kept for when it shows.
		want("hide", change(s.SetPresenceVisible(ctx, a.ID, false)), true, off, true)
		want("hide again", change(s.SetPresenceVisible(ctx, a.ID, false)), false, off, true)
		presence(off, off)
		leave("n2", true)
		want("hidden settle", change(s.PresenceSettle(ctx, a.ID, "n2", 40000)), false, off, true)
		want("hidden join", change(s.PresenceJoin(ctx, a.ID, "n1")), false, off, true)
		leave("n1", true)
		want("hidden settle", change(s.PresenceSettle(ctx, a.ID, "n1", 50000)), false, off, true)
		presence(off, off)
		want("show", change(s.SetPresenceVisible(ctx, a.ID, true)), true, PresenceState{LastSeenMs: 50000}, false)
		presence(PresenceState{LastSeenMs: 50000}, off)
		want("show again", change(s.SetPresenceVisible(ctx, a.ID, true)), false, PresenceState{LastSeenMs: 50000}, false)
		want("join", change(s.PresenceJoin(ctx, a.ID, "n1")), true, on, false)
		want("hide while online", change(s.SetPresenceVisible(ctx, a.ID, false)), true, off, true)
		want("show while online", change(s.SetPresenceVisible(ctx, a.ID, true)), true, on, false)
		presence(on, off)
		if _, err := s.Presence(ctx, nil); err != nil {
			t.Fatalf("Presence of nobody: %v", err)
		}
	})

	t.Run("idempotent client_msg_id", func(t *testing.T) {
		s := open(t, 100)
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		ids := newMsgIDGen(1)
		first := testMessage(ids, a, "once")
		r1, err := s.AppendMessage(ctx, first, []uint64{b.ID}, "k1")
		if err != nil || r1.Duplicate {
			t.Fatal(r1, err)
		}
		retry := testMessage(ids, a, "once")
		r2, err := s.AppendMessage(ctx, retry, []uint64{b.ID}, "k1")
		if err != nil || !r2.Duplicate || r2.Message.MsgId != first.MsgId || r2.Message.SentAtMs != first.SentAtMs {
			t.Fatalf("retry = %v, %v", r2, err)
		}
		// Another sender may use the same key.
		other := testMessage(ids, b, "mine")
		if r3, _ := s.AppendMessage(ctx, other, []uint64{a.ID}, "k1"); r3.Duplicate {
			t.Fatal("client_msg_id leaked across senders")
		}
		if got, _ := s.Inbox(ctx, b.ID, 0, 100); len(got) != 1 {
			t.Fatalf("b's inbox after retry = %d messages", len(got))
		}
	})

	t.Run("inbox limit trims oldest", func(t *testing.T) {
		s := open(t, 5)
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		ids := newMsgIDGen(1)
		var sent []uint64
		for i := range 8 {
			m := testMessage(ids, a, fmt.Sprint(i))
			if _, err := s.AppendMessage(ctx, m, []uint64{b.ID}, ""); err != nil {
				t.Fatal(err)
			}
			sent = append(sent, m.MsgId)
		}
		got, _ := s.Inbox(ctx, b.ID, 0, 100)
		if len(got) != 5 || got[0].MsgId != sent[3] {
			t.Fatalf("kept %d from %v; want the newest 5", len(got), got[0].GetMsgId())
		}
		// Acks free room: after acking two, two more fit and the oldest
		// unacked message stays.
		_ = s.Ack(ctx, b.ID, []uint64{sent[3], sent[4]})
		for i := range 2 {
			if _, err := s.AppendMessage(ctx, testMessage(ids, a, fmt.Sprint("x", i)), []uint64{b.ID}, ""); err != nil {
				t.Fatal(err)
			}
		}
		got, _ = s.Inbox(ctx, b.ID, 0, 100)
		if len(got) != 5 || got[0].MsgId != sent[5] || got[4].Text != "x1" {
			t.Fatalf("after acks and two more: %d messages from %v", len(got), got[0].GetMsgId())
		}
	})

	t.Run("concurrent writes all land", func(t *testing.T) {
		s := open(t, 100000)
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		ids := newMsgIDGen(1)
		var wg sync.WaitGroup
		const writers, each = 16, 50
		errs := make(chan error, writers)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					if _, err := s.AppendMessage(ctx, testMessage(ids, a, fmt.Sprint(w, "-", i)), []uint64{b.ID}, fmt.Sprint(w, "-", i)); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		// Registrations racing for one name: exactly one wins.
		wins := make(chan bool, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := s.CreateUser(ctx, "contested", nil)
				wins <- err == nil
			}()
		}
		wg.Wait()
		close(errs)
		close(wins)
		for err := range errs {
			t.Fatal(err)
		}
		n := 0
		for w := range wins {
			if w {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d registrations of one name succeeded", n)
		}
		got, _ := s.Inbox(ctx, b.ID, 0, writers*each+1)
		if len(got) != writers*each {
			t.Fatalf("inbox holds %d of %d messages", len(got), writers*each)
		}
		for i := 1; i < len(got); i++ {
			if got[i].MsgId <= got[i-1].MsgId {
				t.Fatal("inbox not in msg_id order")
			}
		}
	})

	t.Run("errors are protocol errors", func(t *testing.T) {
		s := open(t, 10)
		_, err := s.UserByName(ctx, "ghost")
		if !errors.Is(err, ErrUserNotFound) || errors.Is(err, ErrGroupNotFound) ||
			!protocol.HasCode(err, chatpb.ErrorCode_ERROR_CODE_NOT_FOUND) {
			t.Fatalf("unknown user = %v, want ErrUserNotFound (not_found)", err)
		}
		_, err = s.Group(ctx, 999999)
		if !errors.Is(err, ErrGroupNotFound) || errors.Is(err, ErrUserNotFound) ||
			!protocol.HasCode(err, chatpb.ErrorCode_ERROR_CODE_NOT_FOUND) {
			t.Fatalf("unknown group = %v, want ErrGroupNotFound (not_found)", err)
		}
	})
}

// crashableStore is a store for testAcksSurviveACrash. checkpoint marks
// the latest state a crash may leave of what the store writes lazily (the
// embedded store's bbolt file); crash stops the store as SIGKILL would and
// returns a store opened on what survived.
type crashableStore struct {
	Store
	checkpoint func()
	crash      func() Store
}

// testAcksSurviveACrash: once Ack returns, the acked messages are gone
// for good: a crash right after it does not bring them back. Half the
// acked messages had reached the store's indexes before the acks, half
// were sent just before them (on the embedded store: still only in the
// message log).
func testAcksSurviveACrash(t *testing.T, open func(t *testing.T) crashableStore) {
	ctx := context.Background()
	s := open(t)
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	ids := newMsgIDGen(1)
	var sent []uint64
	send := func(n int) {
		for range n {
			m := testMessage(ids, a, fmt.Sprint("m", len(sent)))
			if _, err := s.AppendMessage(ctx, m, []uint64{b.ID}, ""); err != nil {
				t.Fatal(err)
			}
			sent = append(sent, m.MsgId)
		}
	}
	send(10)
	if got, err := s.Inbox(ctx, b.ID, 0, 100); err != nil || len(got) != 10 {
		t.Fatalf("inbox = %d messages, %v", len(got), err)
	}
	s.checkpoint()
	send(10)
	var acked, kept []uint64
	for i, id := range sent {
		if i%2 == 0 {
			acked = append(acked, id)
		} else {
			kept = append(kept, id)
		}
	}
	if err := s.Ack(ctx, b.ID, acked[:5]); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(ctx, b.ID, append(acked[5:], 424242)); err != nil {
		t.Fatal(err)
	}
	r := s.crash()
	gotIDs := inboxIDs(t, r, b.ID)
	if !slices.Equal(gotIDs, kept) {
		back := 0
		for _, id := range gotIDs {
			if slices.Contains(acked, id) {
				back++
			}
		}
		t.Fatalf("after the crash the inbox holds %d messages, %d of them acked before it; want the %d not acked",
			len(gotIDs), back, len(kept))
	}
}

func testMessage(ids *msgIDGen, from User, text string) *chatpb.Message {
	m := &chatpb.Message{FromUserId: from.ID, FromUsername: from.Name, Text: text}
	m.MsgId, m.SentAtMs = ids.next(time.Now())
	return m
}

func openTestBolt(t *testing.T, inboxLimit int) Store {
	s, err := OpenBoltStore(BoltConfig{Path: filepath.Join(t.TempDir(), "test.db"), InboxLimit: inboxLimit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestBoltStoreConformance(t *testing.T) {
	testStoreConformance(t, openTestBolt)
	testHistoryConformance(t, func(t *testing.T, lim HistoryLimits) Store {
		s, err := OpenBoltStore(BoltConfig{Path: filepath.Join(t.TempDir(), "test.db"), History: lim})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestBoltStoreAcksSurviveACrash(t *testing.T) {
	testAcksSurviveACrash(t, func(t *testing.T) crashableStore {
		dir := t.TempDir()
		s, err := OpenBoltStore(BoltConfig{Path: filepath.Join(dir, "live", "test.db")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		base := filepath.Join(dir, "base.db")
		return crashableStore{Store: s,
			// bbolt as of now: the acks' lazy commit may not have happened
			// when the crash comes, so what survives must not need it.
			checkpoint: func() {
				if err := s.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(base, 0o600) }); err != nil {
					t.Fatal(err)
				}
			},
			crash: func() Store {
				img := filepath.Join(dir, "img", "test.db")
				crashImage(t, s, base, img)
				r, err := OpenBoltStore(BoltConfig{Path: img})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { r.Close() })
				return r
			},
		}
	})
}

func TestBoltStoreSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "test.db")
	s, err := OpenBoltStore(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.CreateUser(ctx, "a", []byte("h"))
	b, _ := s.CreateUser(ctx, "b", []byte("h"))
	m := testMessage(newMsgIDGen(0), a, "kept")
	if _, err := s.AppendMessage(ctx, m, []uint64{b.ID}, "k"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenBoltStore(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, _ := s.Inbox(ctx, b.ID, 0, 10)
	if len(got) != 1 || got[0].Text != "kept" {
		t.Fatalf("inbox after reopen = %v", got)
	}
	if res, _ := s.AppendMessage(ctx, testMessage(newMsgIDGen(0), a, "kept"), []uint64{b.ID}, "k"); !res.Duplicate {
		t.Fatal("client_msg_id forgotten across reopen")
	}
	if c, err := s.CreateUser(ctx, "c", nil); err != nil || c.ID <= b.ID {
		t.Fatalf("user ids restarted: %v %v", c, err)
	}
}

func TestBoltStoreExpiresDedup(t *testing.T) {
	ctx := context.Background()
	s := openTestBolt(t, 10).(*BoltStore)
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	ids := newMsgIDGen(0)
	m := testMessage(ids, a, "old")
	if _, err := s.AppendMessage(ctx, m, []uint64{b.ID}, "k"); err != nil {
		t.Fatal(err)
	}
	if err := s.expireDedup(ctx, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if res, _ := s.AppendMessage(ctx, testMessage(ids, a, "new"), []uint64{b.ID}, "k"); res.Duplicate {
		t.Fatal("client_msg_id remembered past its window")
	}
	// The inbox itself is untouched by expiry.
	if got, _ := s.Inbox(ctx, b.ID, 0, 10); len(got) != 2 {
		t.Fatalf("inbox = %d messages", len(got))
	}
}

func TestMsgIDsAreOrderedAndUnique(t *testing.T) {
	g := newMsgIDGen(5)
	now := time.Now()
	seen := map[uint64]bool{}
	var last uint64
	for i := range 10000 { // far more than 4096 in one millisecond
		id, ms := g.next(now)
		if id <= last || seen[id] {
			t.Fatalf("id %d at %d is not increasing", id, i)
		}
		if ms < now.UnixMilli() {
			t.Fatalf("timestamp %d before now", ms)
		}
		seen[id], last = true, id
	}
	// The clock stepping back does not make ids go back.
	id, _ := g.next(now.Add(-time.Hour))
	if id <= last {
		t.Fatal("id went back with the clock")
	}
	if floor := msgIDFloor(now.Add(time.Hour)); floor <= id {
		t.Fatal("msgIDFloor of a later time is not above current ids")
	}
}

// inboxIDs lists the msg_ids of uid's inbox, oldest first (at most 100).
// userIDs is uid's friends' ids, in Friends' order.
func userIDs(t *testing.T, s Store, uid uint64) []uint64 {
	t.Helper()
	fs, err := s.Friends(context.Background(), uid)
	if err != nil {
		t.Fatal(err)
	}
	out := []uint64{}
	for _, f := range fs {
		out = append(out, f.ID)
	}
	return out
}

func inboxIDs(t *testing.T, s Store, uid uint64) []uint64 {
	t.Helper()
	got, err := s.Inbox(context.Background(), uid, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for _, m := range got {
		ids = append(ids, m.MsgId)
	}
	return ids
}
