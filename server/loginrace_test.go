package server

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// raceOutcome is what one of the racing connections saw.
type raceOutcome struct {
	loginOK  bool // answered LoginOK
	kicked   chatpb.KickReason
	gotProbe bool // received the message sent after every login answered
	err      error
}

// Logins of one user racing on two nodes (and two on one node) leave
// exactly one session: the others are kicked with LOGGED_IN_ELSEWHERE, and
// only the survivor receives the next message.
func TestRacingLoginsLeaveExactlyOneSession(t *testing.T) {
	forEachRedisEngine(t, func(t *testing.T, rb *redisBackend, engine string) {
		nodes := backendNodes(t, rb, 2, engine, nil)
		sender, _ := nodes[0].user(t, "sender")
		const trials = 25
		for i := range trials {
			name := fmt.Sprintf("racer%d", i)
			first, ok := nodes[i%2].user(t, name)
			first.c.Close() // its token is what the racers use: no bcrypt, so they overlap
			login, err := protocol.Encode(&chatpb.Frame{Seq: 1, Body: &chatpb.Frame_Login{Login: &chatpb.Login{Token: ok.Token}}})
			if err != nil {
				t.Fatal(err)
			}
			racers := []*rawConn{dial(t, nodes[0].addr), dial(t, nodes[1].addr), dial(t, nodes[i%2].addr)}
			outcomes := make([]raceOutcome, len(racers))
			answered := make(chan struct{}, len(racers))
			start := make(chan struct{})
			var wg sync.WaitGroup
			for j, rc := range racers {
				wg.Go(func() {
					<-start
					out := &outcomes[j]
					if _, out.err = rc.c.Write(login); out.err != nil {
						answered <- struct{}{}
						return
					}
					said := false
					for {
						f, err := rc.tryRead(10 * time.Second)
						if err != nil {
							if !said {
								answered <- struct{}{}
							}
							if out.kicked == 0 {
								out.err = err
							}
							return
						}
						switch {
						case f.GetLoginOk() != nil:
							out.loginOK = true
						case f.GetKicked() != nil:
							out.kicked = f.GetKicked().Reason
						case f.GetError() != nil:
							out.err = fmt.Errorf("login answered %v", f.GetError())
						case f.GetMessage() != nil:
							out.gotProbe = true
							_ = rc.c.Close()
							return
						}
						if !said && (out.loginOK || out.kicked != 0 || out.err != nil) {
							said = true
							answered <- struct{}{}
							if out.err != nil {
								return
							}
						}
						// Read on: to the close after a kick, else to the probe.
					}
				})
			}
			close(start)
			for range racers {
				select {
				case <-answered:
				case <-time.After(15 * time.Second):
					t.Fatalf("trial %d: a racing login was not answered", i)
				}
			}
			// Sent after every login answered, on the same user channel as
			// the login notices, so no kick can still be on its way behind it.
			expectOK(t, sender.do(sendTo(name, fmt.Sprintf("probe %d", i))))
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				for _, rc := range racers {
					rc.c.Close()
				}
				<-done
				t.Fatalf("trial %d: a racer neither got the probe nor was closed: %+v", i, outcomes)
			}
			survivors := 0
			for j, o := range outcomes {
				switch {
				case o.gotProbe && o.loginOK && o.kicked == 0:
					survivors++
				case o.kicked == chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE && !o.gotProbe:
				default:
					t.Errorf("trial %d racer %d: %+v", i, j, o)
				}
			}
			if survivors != 1 {
				t.Fatalf("trial %d: %d sessions survived, want exactly 1: %+v", i, survivors, outcomes)
			}
		}
	})
}

// clusterNode starts one cluster node whose Server wrap may adjust before
// it starts (a failing broker or store around the real one).
func clusterNode(t *testing.T, r *testproc.Redis, id, engine string, wrap func(*Server)) *testServer {
	t.Helper()
	return backendNode(t, &redisBackend{url: r.URL}, id, engine, wrap)
}

// backendNode is clusterNode on rb.
func backendNode(t *testing.T, rb *redisBackend, id, engine string, wrap func(*Server)) *testServer {
	t.Helper()
	opts := testOptions(t, engine)
	opts.Redis, opts.RedisPrefix, opts.NodeID, opts.Heartbeat = rb.url, rb.prefix, id, 200*time.Millisecond
	srv, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if wrap != nil {
		wrap(srv)
	}
	addr, err := srv.Start()
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &testServer{Server: srv, addr: addr.String(), opts: opts}
}

// receives reports whether rc gets a message with text before it is
// kicked or closed.
func receives(rc *rawConn, text string) bool {
	for {
		f, err := rc.tryRead(3 * time.Second)
		if err != nil || f.GetKicked() != nil {
			return false
		}
		if m := f.GetMessage(); m != nil && m.Text == text {
			return true
		}
	}
}

// failingLoginNotices fails the login notices it is told to.
type failingLoginNotices struct {
	Broker
	fail atomic.Bool
}

func (b *failingLoginNotices) Publish(ctx context.Context, uids []uint64, ev Event) (int, error) {
	if ev.Login != nil && b.fail.Load() {
		return 0, fmt.Errorf("injected: %w", errUnavailable)
	}
	return b.Broker.Publish(ctx, uids, ev)
}

// A login whose notice cannot be published fails, rather than leave the
// older session elsewhere alive beside it for good.
func TestLoginWithoutItsNoticeFails(t *testing.T) {
	forEachRedis(t, testLoginWithoutItsNoticeFails)
}

func testLoginWithoutItsNoticeFails(t *testing.T, rb *redisBackend) {
	n1 := backendNode(t, rb, "node-1", EngineGnet, nil)
	var fb *failingLoginNotices
	n2 := backendNode(t, rb, "node-2", EngineGnet, func(s *Server) { fb = &failingLoginNotices{Broker: s.broker}; s.broker = fb })
	bob, _ := n1.user(t, "bob")
	older, aliceOK := n1.user(t, "alice")
	fb.fail.Store(true)
	newer := dial(t, n2.addr)
	expectCode(t, newer.do(loginReq("alice", pw)), chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE)
	fb.fail.Store(false)
	expectOK(t, bob.do(sendTo("alice", "probe")))
	if !receives(older, "probe") {
		t.Fatal("the older session lost its message to a login that failed")
	}
	// The failed login left nothing bound on node-2.
	if len(n2.users.get(aliceOK.UserId)) != 0 {
		t.Fatal("a failed login left a session bound")
	}
}

// flakyLatest fails LatestSession the number of times it is told to.
type flakyLatest struct {
	Store
	fail atomic.Int32
}

func (s *flakyLatest) LatestSession(ctx context.Context, uid uint64, device string) (uint64, error) {
	if s.fail.Add(-1) >= 0 {
		return 0, fmt.Errorf("injected: %w", errUnavailable)
	}
	return s.Store.LatestSession(ctx, uid, device)
}

// A node that missed a login notice while its pub/sub connection was down
// asks the store after reconnecting, and asks again if that fails, so the
// older session goes all the same.
func TestResyncRetriesTheGenerationCheck(t *testing.T) {
	forEachRedis(t, testResyncRetriesTheGenerationCheck)
}

func testResyncRetriesTheGenerationCheck(t *testing.T, rb *redisBackend) {
	var fs *flakyLatest
	n1 := backendNode(t, rb, "node-1", EngineGnet, func(s *Server) { fs = &flakyLatest{Store: s.store}; s.store = fs })
	n2 := backendNode(t, rb, "node-2", EngineGnet, nil)
	bob, _ := n2.user(t, "bob")
	older, ok := n1.user(t, "alice")
	ctx := context.Background()
	b := n1.broker.(*RedisBroker)
	ch := b.userChannel(ok.UserId)
	unsubscribe, subscribe := func() error { return b.ps.Unsubscribe(ctx, ch) }, func() error { return b.ps.Subscribe(ctx, ch) }
	if b.sharded != nil {
		unsubscribe, subscribe = func() error { return b.sharded.Unsubscribe(ctx, ch) }, func() error { return b.sharded.Subscribe(ctx, ch) }
	}
	// node-1 misses the next notice, as if its pub/sub connection were down.
	if err := unsubscribe(); err != nil {
		t.Fatal(err)
	}
	testproc.WaitUntil(t, "node-1 to leave alice's channel", 5*time.Second, func() bool {
		on, err := n2.broker.Online(ctx, []uint64{ok.UserId})
		return err == nil && !on[0]
	})
	newer, _ := n2.user(t, "alice")
	if err := subscribe(); err != nil {
		t.Fatal(err)
	}
	fs.fail.Store(2)
	n1.onEvent(ok.UserId, Event{Resync: true}) // what the broker does after a reconnect
	older.expectKicked(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE)
	expectOK(t, bob.do(sendTo("alice", "probe")))
	if !receives(newer, "probe") {
		t.Fatal("the newer session did not get the probe")
	}
}

// A session counter that went back (Redis lost recent writes) still lets
// the newest login win: generations follow Redis's clock past the counter.
func TestNewestLoginWinsAfterTheCounterWentBack(t *testing.T) {
	forEachRedis(t, testNewestLoginWinsAfterTheCounterWentBack)
}

func testNewestLoginWinsAfterTheCounterWentBack(t *testing.T, rb *redisBackend) {
	n1 := backendNode(t, rb, "node-1", EngineGnet, nil)
	n2 := backendNode(t, rb, "node-2", EngineGnet, nil)
	bob, _ := n2.user(t, "bob")
	var ok *chatpb.LoginOK
	for range 3 {
		_, ok = n1.user(t, "alice")
	}
	key := rb.store(t).sessionKey(ok.UserId)
	if err := rb.client.Set(context.Background(), key, 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	sameNode, _ := n1.user(t, "alice") // must not be refused as older
	other, _ := n2.user(t, "alice")
	sameNode.expectKicked(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE)
	expectOK(t, bob.do(sendTo("alice", "probe")))
	if !receives(other, "probe") {
		t.Fatal("the newest login did not get the probe")
	}
}
