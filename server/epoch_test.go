package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/codec"
	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// The Redis store refuses writes, logins and resyncs under another epoch
// than the one it (or the request) is bound to, and finds a new epoch
// when the old one is gone or the store went back to an older snapshot.
func TestRedisStoreEpochGuard(t *testing.T) {
	_, rdb := testRedis(t)
	ctx := context.Background()
	s := NewRedisStore(RedisConfig{Client: rdb, Prefix: "ep:"})
	t.Cleanup(func() { s.Close() })
	e1, err := s.Epoch(ctx)
	if err != nil || e1 == "" {
		t.Fatalf("Epoch = %q, %v", e1, err)
	}
	if again, _ := s.Epoch(ctx); again != e1 {
		t.Fatalf("a second Epoch made another one: %q then %q", e1, again)
	}
	s.UseEpoch(e1)
	a, err := s.CreateUser(ctx, "alice", []byte("h"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.CreateUser(ctx, "bob", []byte("h"))
	m := testMessage(newMsgIDGen(0), a, "under e1")
	if _, err := s.AppendMessage(ctx, m, []uint64{b.ID}, ""); err != nil {
		t.Fatal(err)
	}
	// A request made under another epoch changes nothing.
	stale := withEpoch(ctx, "some-older-epoch")
	checks := map[string]func() error{
		"CreateUser": func() error { _, err := s.CreateUser(stale, "carol", []byte("h")); return err },
		"AppendMessage": func() error {
			_, err := s.AppendMessage(stale, testMessage(newMsgIDGen(0), a, "stale"), []uint64{b.ID}, "")
			return err
		},
		"Ack":           func() error { return s.Ack(stale, b.ID, []uint64{m.MsgId}) },
		"AddFriend":     func() error { return s.AddFriend(stale, a.ID, b.ID, Limits{}) },
		"CreateGroup":   func() error { _, err := s.CreateGroup(stale, a.ID, "g", "", Limits{}); return err },
		"NewSession":    func() error { _, err := s.NewSession(stale, a.ID, ""); return err },
		"LatestSession": func() error { _, err := s.LatestSession(stale, a.ID, ""); return err },
		// Reads of a conversation too: under other contents its key names
		// other users' conversation.
		"History": func() error {
			_, err := s.History(stale, HistoryQuery{Conv: DirectConversation(a.ID, b.ID), Newest: true, Limit: 10})
			return err
		},
		"LastSeq": func() error { _, err := s.LastSeq(stale, DirectConversation(a.ID, b.ID)); return err },
	}
	for name, call := range checks {
		if err := call(); !errors.Is(err, ErrStoreReset) {
			t.Errorf("%s under another epoch = %v, want ErrStoreReset", name, err)
		}
	}
	if inbox, _ := s.Inbox(ctx, b.ID, 0, 10); len(inbox) != 1 {
		t.Fatalf("bob's inbox after refused writes = %d messages, want the 1 from before", len(inbox))
	}
	if _, err := s.Credentials(ctx, "carol"); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("the refused CreateUser made carol: %v", err)
	}

	// Wiped: the store's own epoch is gone, so its writes fail too, until
	// Epoch makes a new one.
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateUser(ctx, "mallory", []byte("h")); !errors.Is(err, ErrStoreReset) {
		t.Fatalf("CreateUser after the wipe = %v, want ErrStoreReset", err)
	}
	e2, err := s.Epoch(ctx)
	if err != nil || e2 == "" || e2 == e1 {
		t.Fatalf("Epoch after the wipe = %q, %v; want a new one", e2, err)
	}
	s.UseEpoch(e2)
	// The cached name of the old alice is forgotten: mallory, who now has
	// alice's id, is not found under alice's name.
	mallory, err := s.CreateUser(ctx, "mallory", []byte("h"))
	if err != nil || mallory.ID != a.ID {
		t.Fatalf("mallory = %+v, %v; want the reused id %d", mallory, err, a.ID)
	}
	if u, err := s.UserByName(ctx, "alice"); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("alice after the wipe = %+v, %v", u, err)
	}
	if u, err := s.UserByID(ctx, a.ID); err != nil || u.Name != "mallory" {
		t.Fatalf("user %d after the wipe = %+v, %v", a.ID, u, err)
	}

	// Rolled back: the user counter goes below an id this node has seen.
	for _, n := range []string{"n1", "n2", "n3"} {
		if _, err := s.CreateUser(ctx, n, []byte("h")); err != nil {
			t.Fatal(err)
		}
	}
	if err := rdb.Set(ctx, "ep:user:seq", 2, 0).Err(); err != nil {
		t.Fatal(err)
	}
	e3, err := s.Epoch(ctx)
	if err != nil || e3 == e2 {
		t.Fatalf("Epoch after a rollback = %q, %v; want a new one", e3, err)
	}
	if got, _ := rdb.Get(ctx, "ep:epoch").Result(); got != e3 {
		t.Fatalf("the new epoch %q is not the stored one %q", e3, got)
	}
}

// A Redis (or a Redis Cluster) wiped under a running two-node cluster
// hands no one's identity
// or messages to anyone else: sessions are kicked, sends fail instead of
// being acknowledged, old tokens are refused, and the ids handed out again
// do not inherit what the old users were sent.
func TestWipedRedisUnderACluster(t *testing.T) {
	for _, backend := range []string{"redis", "cluster"} {
		t.Run(backend, func(t *testing.T) {
			forEachEngine(t, func(t *testing.T, engine string) {
				rb := oneRedis(t)
				if backend == "cluster" {
					rb = privateCluster(t) // wiped: not the shared one
				}
				testWipedRedisUnderACluster(t, rb, engine)
			})
		})
	}
}

func testWipedRedisUnderACluster(t *testing.T, rb *redisBackend, engine string) {
	nodes := backendNodes(t, rb, 2, engine, nil)
	alice, aliceOK := nodes[0].user(t, "alice")
	bob, bobOK := nodes[1].user(t, "bob")
	_, carolOK := nodes[1].user(t, "carol") // stays connected
	expectOK(t, alice.do(sendTo("bob", "before the wipe")))
	if m := bob.nextMessage(); m.Text != "before the wipe" {
		t.Fatalf("bob got %v", m)
	}

	rb.wipe(t)
	// Whatever a session sends now is refused, never acknowledged: its
	// recipient no longer exists.
	seq := alice.sendFrame(sendTo("bob", "into the void"))
	for {
		f := alice.read()
		if f.GetKicked() != nil {
			if f.GetKicked().Reason != chatpb.KickReason_KICK_REASON_STORE_RESET {
				t.Fatalf("alice kicked with %v", f.GetKicked())
			}
			break
		}
		if f.Seq == seq {
			if f.GetSendOk() != nil {
				t.Fatalf("a send after the wipe was acknowledged: %v", f)
			}
			expectCode(t, f, chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE)
			alice.expectKicked(chatpb.KickReason_KICK_REASON_STORE_RESET)
			break
		}
	}
	bob.expectKicked(chatpb.KickReason_KICK_REASON_STORE_RESET)

	// Once the nodes serve again (both: on a cluster, shards flushed
	// one after another may take the nodes through a second reset),
	// the users of the new store get the old ids, and nothing of the
	// old users.
	waitFor(t, "both nodes on the new epoch", func() bool {
		return !nodes[0].storeResetting() && !nodes[1].storeResetting() && nodes[0].epoch() == nodes[1].epoch()
	})
	var dave *rawConn
	var daveOK *chatpb.LoginOK
	testproc.WaitUntil(t, "a node to serve registrations again", 10*time.Second, func() bool {
		// A node may still find a shard reset late (the first script
		// since to touch its slots): it then refuses, or kicks, once
		// more. Dave tries again, as a client would.
		rc := dial(t, nodes[1].addr)
		resp, ok := doUnlessReset(t, rc, registerReq("dave", pw))
		if !ok || resp.GetError().GetCode() == chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE {
			return false
		}
		if e := resp.GetError(); e != nil && e.Code != chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS {
			t.Fatalf("register dave: %v", e)
		}
		resp, ok = doUnlessReset(t, rc, loginReq("dave", pw))
		if !ok || resp.GetError().GetCode() == chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE {
			return false
		}
		expectOK(t, resp)
		dave, daveOK = rc, resp.GetLoginOk()
		return true
	})
	if daveOK.UserId != aliceOK.UserId {
		t.Fatalf("dave got id %d; the test expects the wiped store to hand out alice's %d again", daveOK.UserId, aliceOK.UserId)
	}
	mallory, malloryOK := nodes[0].user(t, "mallory")
	if malloryOK.UserId != bobOK.UserId {
		t.Fatalf("mallory got id %d, want bob's old %d", malloryOK.UserId, bobOK.UserId)
	}
	// Old tokens name old users: refused on both nodes, whoever holds
	// their ids now.
	for _, n := range nodes {
		for _, tok := range []string{aliceOK.Token, bobOK.Token, carolOK.Token} {
			expectCode(t, dial(t, n.addr).do(tokenReq(tok)), chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED)
		}
	}
	// Old names are gone, on the node that cached them too.
	for _, n := range nodes {
		rc, _ := n.user(t, fmt.Sprintf("probe-%s", n.NodeID()))
		expectCode(t, rc.do(sendTo("bob", "to the old bob")), chatpb.ErrorCode_ERROR_CODE_NOT_FOUND)
		expectCode(t, rc.do(sendTo("carol", "to the old carol")), chatpb.ErrorCode_ERROR_CODE_NOT_FOUND)
	}
	dave.noPush(300 * time.Millisecond)
	mallory.noPush(0)
	// And the new store works across nodes.
	expectOK(t, dave.do(sendTo("mallory", "fresh start")))
	if m := mallory.nextMessage(); m.Text != "fresh start" || m.FromUsername != "dave" {
		t.Fatalf("mallory got %v", m)
	}
}

// doUnlessReset is rc.do, except that a store reset kicking the
// connection (Kicked{STORE_RESET}, or the close after it) reports false.
func doUnlessReset(t *testing.T, rc *rawConn, f *chatpb.Frame) (*chatpb.Frame, bool) {
	t.Helper()
	seq := rc.sendFrame(f)
	for {
		resp, err := rc.tryRead(5 * time.Second)
		switch {
		case err != nil:
			return nil, false
		case resp.GetKicked() != nil:
			if r := resp.GetKicked().Reason; r != chatpb.KickReason_KICK_REASON_STORE_RESET {
				t.Fatalf("kicked with %v", r)
			}
			return nil, false
		case resp.Seq == seq:
			return resp, true
		}
		rc.pushes = append(rc.pushes, resp)
	}
}

// A single node whose --data was replaced refuses the tokens of the old
// store, even with the same --token-secret: another user has that id now.
func TestReplacedDataDirRefusesOldTokens(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.TokenSecret = []byte("the same secret on both runs")
		first := startServer(t, opts)
		_, aliceOK := first.user(t, "alice")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := first.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}

		opts.DataDir = t.TempDir()
		second := startServer(t, opts)
		_, malloryOK := second.user(t, "mallory")
		if malloryOK.UserId != aliceOK.UserId {
			t.Fatalf("mallory got id %d; the test expects alice's %d again", malloryOK.UserId, aliceOK.UserId)
		}
		expectCode(t, dial(t, second.addr).do(tokenReq(aliceOK.Token)), chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED)
		// The new store's own tokens work.
		expectOK(t, dial(t, second.addr).do(tokenReq(malloryOK.Token)))
	})
}

// After a wipe, a kicked session of the old store that does not read (so
// its connection lingers) does not stand in the way of the new store's
// user who got its id.
func TestLingeringSessionOfTheOldStoreYields(t *testing.T) {
	r := testproc.StartRedis(t)
	n1 := clusterNode(t, r, "node-1", EngineGnet, nil)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	_, ok := n1.user(t, "alice")
	// A second login of alice on a connection that stops reading.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
	}}
	conn, err := d.Dial("tcp", n1.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stuck := &rawConn{t: t, c: conn, r: codec.NewReader(bufio.NewReader(conn), protocol.ClientMaxFrame)}
	expectOK(t, stuck.do(loginReq("alice", pw)))
	bob, _ := n1.user(t, "bob")
	big := strings.Repeat("x", 3000)
	for i := 0; ; i++ {
		expectOK(t, bob.do(sendTo("alice", big)))
		if s := n1.users.get(ok.UserId); len(s) == 1 && s[0].out.queued() > 512<<10 {
			break
		}
		if i > 6000 {
			t.Fatal("could not back up alice's connection")
		}
	}
	if err := rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	var dave *rawConn
	testproc.WaitUntil(t, "the node to serve registrations again", 10*time.Second, func() bool {
		rc := dial(t, n1.addr)
		resp := rc.do(registerReq("dave", pw))
		if resp.GetError().GetCode() == chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE {
			return false
		}
		expectOK(t, resp)
		if resp.GetRegisterOk().UserId != ok.UserId {
			t.Fatalf("dave got id %d; the test expects alice's %d again", resp.GetRegisterOk().UserId, ok.UserId)
		}
		dave = rc
		return true
	})
	resp := dave.do(loginReq("dave", pw))
	if resp.GetLoginOk() == nil {
		t.Fatalf("dave, a user of the new store, could not log in: %v", resp)
	}
	dave.noPush(300 * time.Millisecond)
}

// A store restored from an older copy (the nodes stopped, as the docs ask)
// keeps its epoch, and gives out again the ids of users made after the
// copy: their tokens do not log in as the new holders.
func TestRestoredStoreRefusesTokensOfLostAccounts(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		r := testproc.StartRedis(t)
		rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
		t.Cleanup(func() { rdb.Close() })
		ctx := context.Background()
		n1 := clusterNode(t, r, "node-1", engine, nil)
		n1.user(t, "bob")
		_, aliceOK := n1.user(t, "alice")
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := n1.Shutdown(sctx); err != nil {
			t.Fatal(err)
		}
		// The copy from before alice registered.
		id, p := strconv.FormatUint(aliceOK.UserId, 10), protocol.DefaultPrefix
		if err := rdb.Del(ctx, p+"username:alice", p+"user:"+id, p+"session:"+id).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.Set(ctx, p+"user:seq", aliceOK.UserId-1, 0).Err(); err != nil {
			t.Fatal(err)
		}
		n1 = clusterNode(t, r, "node-1", engine, nil)
		if _, carolOK := n1.user(t, "carol"); carolOK.UserId != aliceOK.UserId {
			t.Fatalf("carol got id %d; the test expects alice's %d again", carolOK.UserId, aliceOK.UserId)
		}
		expectCode(t, dial(t, n1.addr).do(tokenReq(aliceOK.Token)), chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED)
	})
}

// A node started just after a wipe, while another still serves sessions of
// the lost contents, waits out the quiet period, and the new store's
// messages never reach the old sessions, even from a node whose heartbeat
// is slower.
func TestNodeStartedAfterAWipe(t *testing.T) {
	r := testproc.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	opts := testOptions(t, EngineGnet)
	opts.Redis, opts.NodeID, opts.Heartbeat = r.URL, "node-a", time.Second // the default
	a := startServer(t, opts)
	alice, aliceOK := a.user(t, "alice")
	if err := rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	c := clusterNode(t, r, "node-c", EngineGnet, nil)
	var dave *rawConn
	testproc.WaitUntil(t, "node-c to serve registrations", 10*time.Second, func() bool {
		rc := dial(t, c.addr)
		resp := rc.do(registerReq("dave", pw))
		if resp.GetError().GetCode() == chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE {
			return false
		}
		expectOK(t, resp)
		dave = rc
		return true
	})
	daveOK := dave.do(loginReq("dave", pw)).GetLoginOk()
	if daveOK.GetUserId() != aliceOK.UserId {
		t.Fatalf("dave got id %d; the test expects alice's %d again", daveOK.GetUserId(), aliceOK.UserId)
	}
	eve, _ := c.user(t, "eve")
	expectOK(t, eve.do(sendTo("dave", "for dave only")))
	if m := dave.nextMessage(); m.Text != "for dave only" {
		t.Fatalf("dave got %v", m)
	}
	for {
		f, err := alice.tryRead(2 * time.Second)
		if err != nil {
			break
		}
		if m := f.GetMessage(); m != nil {
			t.Fatalf("alice (old store) received the new store's message to dave: %q", m.Text)
		}
		if f.GetKicked() != nil {
			if f.GetKicked().Reason != chatpb.KickReason_KICK_REASON_STORE_RESET {
				t.Fatalf("alice kicked with %v", f.GetKicked())
			}
			break
		}
	}
}
