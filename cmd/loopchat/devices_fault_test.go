package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/loopchat/loopchat/client"
	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// The zero-loss rule of issue 16 with several devices per user: nothing
// that got SendOK is ever missing from the recipient's history or from
// any of its devices' delivery, across node SIGKILLs (one node on bbolt,
// two on Redis) and Redis SIGKILLs (AOF, fsync always).
//
// Users with a phone and a laptop each chat 1:1 with their neighbours on
// a ring and in one group, from both devices, every Send with a
// client_msg_id retried until SendOK. Devices ack every push, drop
// offline now and then (the churn), and reconnect with their token and
// device id, on another node when theirs is down. At the end, with every
// device back and the pushes settled, each device logs in once more to
// drain its inbox, and then every SendOK'd message must have reached each
// device of its recipients and each other device of its sender exactly
// once after dedup by msg_id (and not the device it was sent from), with
// the seq and text the sender was told; no device may get a message that
// is not its user's, or one that never got SendOK; and each
// conversation's history must hold seqs 1..N without a gap, exactly the
// SendOK'd messages under their seqs.

// TestFaultDevicesOneNode: one node on bbolt, SIGKILLed twice mid-load
// and started again on its --data, then restarted with SIGTERM.
func TestFaultDevicesOneNode(t *testing.T) {
	w := newFaultWorld(t, 1, nil)
	w.setup(8)
	w.load(func() {
		for range 2 {
			w.pause(1500 * time.Millisecond)
			w.killNode(0)
			w.pause(300 * time.Millisecond)
			w.restartNode(0)
		}
		w.pause(1000 * time.Millisecond)
		w.stopNode(0)
		w.restartNode(0)
		w.pause(1000 * time.Millisecond)
	})
	w.settleAndCheck()
}

// TestFaultDevicesCluster: two nodes on one real Redis, each user's
// devices on different nodes. One node is SIGKILLed (its devices move to
// the other) and started again, Redis is SIGKILLed and started again on
// its AOF, the other node is SIGKILLed and started again, and last both
// are restarted in turn with SIGTERM (a rolling restart).
func TestFaultDevicesCluster(t *testing.T) {
	r := testproc.StartRedis(t)
	w := newFaultWorld(t, 2, func(i int) []string {
		return []string{"--redis", r.URL, "--node-id", fmt.Sprint("n", i+1), "--heartbeat", "200ms"}
	})
	w.setup(8)
	w.load(func() {
		w.pause(1500 * time.Millisecond)
		w.killNode(0)
		w.pause(1500 * time.Millisecond)
		w.restartNode(0)
		w.pause(1000 * time.Millisecond)
		w.logf("SIGKILL redis")
		r.Kill()
		w.pause(1000 * time.Millisecond)
		r.Start()
		w.logf("redis restarted")
		w.pause(1500 * time.Millisecond)
		w.killNode(1)
		w.pause(300 * time.Millisecond)
		w.restartNode(1)
		w.pause(1000 * time.Millisecond)
		for i := range 2 {
			w.stopNode(i)
			w.restartNode(i)
			w.pause(700 * time.Millisecond)
		}
	})
	w.settleAndCheck()
}

// TestFaultDevicesRedisCluster: two nodes on a Redis Cluster of three
// primaries with a replica each, every write waiting for a replica
// (--redis-min-replicas 1). A primary is SIGKILLed (by PID) under load:
// its replica takes over, the nodes find it by themselves (the client
// reloads the cluster's layout; the pub/sub connections to the dead
// primary are placed again, and every local user replays), and the killed
// server is started again, coming back as the new primary's replica.
// Then another primary, the same way. Nothing that got SendOK is lost.
func TestFaultDevicesRedisCluster(t *testing.T) {
	c := testproc.StartCluster(t)
	w := newFaultWorld(t, 2, func(i int) []string {
		return []string{"--redis", c.URL, "--node-id", fmt.Sprint("n", i+1), "--heartbeat", "200ms",
			"--redis-min-replicas", "1", "--redis-replica-timeout", "500ms"}
	})
	w.setup(8)
	ctx := w.ctx
	killPrimary := func(skip *testproc.ClusterNode) *testproc.ClusterNode {
		ps, err := c.Primaries(ctx)
		if err != nil {
			t.Error(err)
			return nil
		}
		victim := ps[0]
		if victim == skip && len(ps) > 1 {
			victim = ps[1]
		}
		w.logf("SIGKILL redis primary %s (pid %d)", victim.Addr, victim.Pid())
		if err := syscall.Kill(victim.Pid(), syscall.SIGKILL); err != nil {
			t.Error(err)
		}
		victim.Kill() // reaps it
		for {
			if ps, err := c.Primaries(ctx); err == nil && len(ps) == 3 {
				break
			}
			if ctx.Err() != nil {
				t.Error("no failover")
				return victim
			}
			time.Sleep(50 * time.Millisecond)
		}
		w.logf("a replica took over from %s", victim.Addr)
		w.pause(500 * time.Millisecond)
		if err := victim.StartAgain(); err != nil {
			t.Error(err)
		}
		if err := c.WaitHealthy(30 * time.Second); err != nil {
			t.Error(err)
		}
		w.logf("%s is back, as a replica", victim.Addr)
		return victim
	}
	w.load(func() {
		w.pause(1500 * time.Millisecond)
		first := killPrimary(nil)
		w.pause(1500 * time.Millisecond)
		killPrimary(first)
		w.pause(1500 * time.Millisecond)
	})
	w.settleAndCheck()
}

// faultArgs are every test node's flags: no request rate limit (a device
// acks every push), a history that keeps every message, so that the check
// sees every seq, and a short drain on SIGTERM.
var faultArgs = []string{"--rate-limit", "1e9", "--rate-burst", "1000000000", "--history-max-messages", "-1",
	"--drain-window", "300ms"}

const faultPassword = "hunter2hunter2"

// faultWorld is the nodes, the users and their devices, and what was sent.
type faultWorld struct {
	t      *testing.T
	ctx    context.Context
	start  time.Time
	addrs  []string // node i's address, the same across its restarts
	dirs   []string
	args   [][]string
	nodes  []*node
	users  []*faultUser
	group  uint64
	devs   []*faultDevice
	runs   sync.WaitGroup // device connection loops
	stopRn atomic.Bool    // the connection loops end

	mu        sync.Mutex
	sent      map[uint64]*faultMsg // by msg_id: every SendOK
	kicks     map[string]int       // by reason
	sendErrs  map[string]int       // failed Send attempts, by cause
	abandoned int                  // sends given up without SendOK
	pushes    atomic.Int64         // every Message push, for the quiet check
	retried   atomic.Int64         // sends that needed more than one attempt
}

type faultUser struct {
	name string
	id   uint64
	devs []*faultDevice
}

// faultDevice is one device of a user: a connection loop that logs in
// with the device id (and token), acks what it gets, and records it.
type faultDevice struct {
	w    *faultWorld
	user *faultUser
	id   string // the device id
	home int    // the node it prefers

	mu      sync.Mutex
	c       *client.Client // logged in; nil while offline
	token   string
	logins  int
	got     map[uint64]int             // msg_id -> pushes
	first   map[uint64]*chatpb.Message // msg_id -> the first push
	trail   []string                   // its logins and disconnects, for failure reports
	arrived map[uint64]string          // msg_id -> when and in which login, for failure reports
}

// note adds to the device's trail.
func (d *faultDevice) note(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.trail = append(d.trail, fmt.Sprintf("%.3fs ", time.Since(d.w.start).Seconds())+fmt.Sprintf(format, args...))
}

// faultMsg is a message that got SendOK.
type faultMsg struct {
	id, seq uint64
	from    *faultDevice
	to      *faultUser // nil: to the group
	text    string
	tries   int
	okAt    time.Duration // since the start
}

func (d *faultDevice) String() string { return d.user.name + "/" + d.id }

func newFaultWorld(t *testing.T, nodes int, nodeArgs func(i int) []string) *faultWorld {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	w := &faultWorld{t: t, ctx: ctx, start: time.Now(), sent: map[uint64]*faultMsg{}, kicks: map[string]int{}, sendErrs: map[string]int{}}
	for i := range nodes {
		args := slices.Clone(faultArgs)
		if nodeArgs != nil {
			args = append(args, nodeArgs(i)...)
		}
		dir := t.TempDir()
		n := startNode(t, dir, args...)
		w.addrs, w.dirs, w.args, w.nodes = append(w.addrs, n.addr), append(w.dirs, dir), append(w.args, args), append(w.nodes, n)
	}
	t.Cleanup(w.stopDevices)
	return w
}

func (w *faultWorld) logf(format string, args ...any) {
	w.t.Helper()
	w.t.Logf("%6.2fs "+format, append([]any{time.Since(w.start).Seconds()}, args...)...)
}

func (w *faultWorld) pause(d time.Duration) {
	select {
	case <-time.After(d):
	case <-w.ctx.Done():
	}
}

func (w *faultWorld) killNode(i int) {
	w.t.Helper()
	w.logf("SIGKILL node %d (%d acknowledged so far)", i+1, w.acknowledged())
	if err := w.nodes[i].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		w.t.Fatal(err)
	}
	_ = w.nodes[i].wait(w.t, 5*time.Second)
}

// stopNode stops node i with SIGTERM: it kicks its clients with
// SERVER_SHUTTING_DOWN over its drain window and exits.
func (w *faultWorld) stopNode(i int) {
	w.t.Helper()
	w.logf("SIGTERM node %d (%d acknowledged so far)", i+1, w.acknowledged())
	if err := w.nodes[i].cmd.Process.Signal(syscall.SIGTERM); err != nil {
		w.t.Fatal(err)
	}
	if err := w.nodes[i].wait(w.t, 20*time.Second); err != nil {
		w.t.Fatalf("node %d exited with %v after SIGTERM", i+1, err)
	}
}

// restartNode starts node i again on its address and data directory.
func (w *faultWorld) restartNode(i int) {
	w.t.Helper()
	w.nodes[i] = startNodeAt(w.t, w.addrs[i], w.dirs[i], w.args[i]...)
	w.logf("node %d restarted", i+1)
}

func (w *faultWorld) acknowledged() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.sent)
}

// setup registers the users, logs every device in once (a device never
// seen before starts "now", so each must be known before the load), and
// puts every user in one group. The devices of a user start on different
// nodes when there are several.
func (w *faultWorld) setup(users int) {
	w.t.Helper()
	c, err := client.Dial(w.ctx, client.Options{Addr: w.addrs[0]})
	if err != nil {
		w.t.Fatal(err)
	}
	for i := range users {
		u := &faultUser{name: fmt.Sprintf("fault%d", i)}
		if u.id, err = c.Register(w.ctx, u.name, faultPassword); err != nil {
			w.t.Fatal(err)
		}
		for k, dev := range []string{"phone", "laptop"} {
			d := &faultDevice{w: w, user: u, id: dev, home: (i + k) % len(w.addrs),
				got: map[uint64]int{}, first: map[uint64]*chatpb.Message{}, arrived: map[uint64]string{}}
			u.devs = append(u.devs, d)
			w.devs = append(w.devs, d)
		}
		w.users = append(w.users, u)
	}
	c.Close()
	for _, d := range w.devs {
		w.runs.Add(1)
		go d.run()
	}
	w.waitConnected("every device's first login")
	phone := func(u *faultUser) *client.Client { return u.devs[0].client() }
	if w.group, err = phone(w.users[0]).CreateGroup(w.ctx, "fault", ""); err != nil {
		w.t.Fatal(err)
	}
	for _, u := range w.users[1:] {
		if err := phone(u).JoinGroup(w.ctx, w.group); err != nil {
			w.t.Fatal(err)
		}
	}
	w.logf("%d users with %d devices on %d node(s) logged in, group %d", len(w.users), len(w.devs), len(w.addrs), w.group)
}

func (w *faultWorld) waitConnected(what string) {
	w.t.Helper()
	testproc.WaitUntil(w.t, what, 30*time.Second, func() bool {
		for _, d := range w.devs {
			if d.client() == nil {
				return false
			}
		}
		return true
	})
}

// load runs the senders (every device) and the churn while faults runs.
func (w *faultWorld) load(faults func()) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, d := range w.devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.sendLoop(stop, uint64(i))
		}()
	}
	wg.Add(1)
	go func() { // now and then a device goes offline for a moment
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			case <-time.After(150 * time.Millisecond):
			}
			w.devs[rng.IntN(len(w.devs))].drop()
		}
	}()
	faults()
	close(stop)
	w.logf("load stopped; finishing the sends in flight")
	wg.Wait()
	w.mu.Lock()
	w.logf("%d acknowledged, %d sends retried (failed attempts: %v)", len(w.sent), w.retried.Load(), w.sendErrs)
	w.mu.Unlock()
}

// sendLoop sends until stop, a message at a time, each to a ring
// neighbour or (one in five) to the group.
func (d *faultDevice) sendLoop(stop <-chan struct{}, seed uint64) {
	w := d.w
	rng := rand.New(rand.NewPCG(seed, 7))
	ui := slices.Index(w.users, d.user)
	peers := []*faultUser{w.users[(ui+1)%len(w.users)], w.users[(ui+len(w.users)-1)%len(w.users)]}
	for k := 0; ; k++ {
		select {
		case <-stop:
			return
		default:
		}
		msg := &faultMsg{from: d, text: fmt.Sprintf("%s-%d", d, k)}
		req := &chatpb.Send{Text: msg.text, ClientMsgId: msg.text}
		if rng.IntN(5) == 0 {
			req.To = &chatpb.Send_GroupId{GroupId: w.group}
		} else {
			msg.to = peers[rng.IntN(len(peers))]
			req.To = &chatpb.Send_UserId{UserId: msg.to.id}
		}
		ok, tries := d.sendUntilOK(req)
		if ok == nil {
			return
		}
		msg.id, msg.seq, msg.tries, msg.okAt = ok.MsgId, ok.Seq, tries, time.Since(w.start)
		w.mu.Lock()
		if prev := w.sent[ok.MsgId]; prev != nil {
			w.t.Errorf("SendOK for %s repeats msg_id %d of %s", msg.text, ok.MsgId, prev.text)
		}
		w.sent[ok.MsgId] = msg
		w.mu.Unlock()
		time.Sleep(time.Duration(20+rng.IntN(40)) * time.Millisecond)
	}
}

// sendUntilOK sends req on whatever connection the device has, again
// with the same client_msg_id until SendOK: after a disconnect, a
// timeout or UNAVAILABLE. It returns nil after an error no retry can fix,
// or after a minute.
func (d *faultDevice) sendUntilOK(req *chatpb.Send) (*chatpb.SendOK, int) {
	w := d.w
	deadline := time.Now().Add(time.Minute)
	for try := 0; ; try++ {
		if time.Now().After(deadline) || w.ctx.Err() != nil {
			w.mu.Lock()
			w.abandoned++
			w.mu.Unlock()
			w.t.Errorf("%s: no SendOK for %s within a minute", d, req.ClientMsgId)
			return nil, try
		}
		c := d.client()
		if c == nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
		ok, err := c.Send(ctx, req)
		cancel()
		if err == nil {
			if try > 0 {
				w.retried.Add(1)
			}
			return ok, try + 1
		}
		cause := "other"
		switch code := protocol.CodeOf(err); {
		case errors.Is(err, client.ErrDisconnected), errors.Is(err, client.ErrClosed):
			cause = "disconnected"
		case errors.Is(err, context.DeadlineExceeded):
			cause = "timeout"
		case code == chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, code == chatpb.ErrorCode_ERROR_CODE_NOT_FOUND,
			code == chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, code == chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED:
			w.t.Errorf("%s: send %s: %v", d, req.ClientMsgId, err)
			return nil, try
		case code != chatpb.ErrorCode_ERROR_CODE_UNSPECIFIED:
			cause = protocol.CodeName(code)
		}
		w.mu.Lock()
		w.sendErrs[cause]++
		w.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *faultDevice) client() *client.Client {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.c
}

// drop closes the device's connection: it is offline until its loop
// reconnects.
func (d *faultDevice) drop() {
	if c := d.client(); c != nil {
		c.Close()
	}
}

// run is the device's connection loop: log in (on its home node, else
// the next one up), take pushes until the connection ends, stay offline
// a moment, and again, until the world stops.
func (d *faultDevice) run() {
	defer d.w.runs.Done()
	rng := rand.New(rand.NewPCG(uint64(len(d.id)), d.user.id))
	next := d.home
	for !d.w.stopRn.Load() && d.w.ctx.Err() == nil {
		c, err := d.login(d.w.addrs[next%len(d.w.addrs)])
		if err != nil {
			next++
			time.Sleep(50 * time.Millisecond)
			continue
		}
		d.mu.Lock()
		if d.w.stopRn.Load() {
			d.mu.Unlock()
			c.Close()
			return
		}
		d.c = c
		d.mu.Unlock()
		d.consume(c)
		d.mu.Lock()
		d.c = nil
		d.mu.Unlock()
		c.Close()
		d.note("offline")
		next = d.home
		time.Sleep(time.Duration(20+rng.IntN(200)) * time.Millisecond)
	}
}

// login connects to addr as the device: with its token once it has one.
func (d *faultDevice) login(addr string) (*client.Client, error) {
	ctx, cancel := context.WithTimeout(d.w.ctx, 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Options{Addr: addr, DeviceID: d.id, RequestTimeout: 5 * time.Second,
		PingInterval: time.Second, EventBuffer: 1 << 14})
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	token := d.token
	d.mu.Unlock()
	var ok *chatpb.LoginOK
	if token != "" {
		ok, err = c.LoginToken(ctx, token)
	} else {
		ok, err = c.Login(ctx, d.user.name, faultPassword)
	}
	if err != nil {
		c.Close()
		if protocol.HasCode(err, chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED) {
			d.w.t.Errorf("%s: login refused: %v", d, err)
		}
		return nil, err
	}
	if ok.UserId != d.user.id || ok.DeviceId != d.id {
		d.w.t.Errorf("%s: LoginOK for user %d device %q", d, ok.UserId, ok.DeviceId)
	}
	d.mu.Lock()
	d.token = ok.Token
	d.logins++
	d.mu.Unlock()
	d.note("login %d on %s", d.logins, ok.NodeId)
	return c, nil
}

// consume records and acks every push until the connection ends.
func (d *faultDevice) consume(c *client.Client) {
	for ev := range c.Events() {
		switch {
		case ev.Message != nil:
			d.record(ev.Message)
			_ = c.Ack(ev.Message.MsgId)
		case ev.Kicked != nil:
			reason := protocol.KickReasonName(ev.Kicked.Reason)
			d.note("kicked: %s", reason)
			d.w.mu.Lock()
			d.w.kicks[reason]++
			d.w.mu.Unlock()
		case ev.Disconnected != nil:
			return
		}
	}
}

func (d *faultDevice) record(m *chatpb.Message) {
	d.mu.Lock()
	d.got[m.MsgId]++
	if d.first[m.MsgId] == nil {
		d.first[m.MsgId] = m
		d.arrived[m.MsgId] = fmt.Sprintf("%.3fs in login %d", time.Since(d.w.start).Seconds(), d.logins)
	}
	d.mu.Unlock()
	d.w.pushes.Add(1)
}

// stopDevices ends every connection loop.
func (w *faultWorld) stopDevices() {
	w.stopRn.Store(true)
	for _, d := range w.devs {
		d.drop()
	}
	w.runs.Wait()
}

// settleAndCheck waits until every device is back and no push has come
// for a while, then logs each device in once more (on another node than
// its own, when there are several) to drain what its inbox still holds,
// and checks every device's deliveries and every conversation's history.
func (w *faultWorld) settleAndCheck() {
	t := w.t
	t.Helper()
	w.waitConnected("every device back online")
	quiet, last := time.Now(), w.pushes.Load()
	deadline := time.Now().Add(30 * time.Second)
	for time.Since(quiet) < time.Second {
		if time.Now().After(deadline) {
			t.Fatal("pushes still coming 30s after the load stopped")
		}
		time.Sleep(50 * time.Millisecond)
		if n := w.pushes.Load(); n != last {
			quiet, last = time.Now(), n
		}
	}
	live := len(w.missing())
	w.stopDevices()

	// The last login of each device: its inbox replay comes before the
	// Pong to the next request.
	final := map[*faultDevice]*client.Client{}
	for _, d := range w.devs {
		// UNAVAILABLE says "retry later", and a client does: just after a
		// failover the store may still be catching up (a replica resyncing
		// for WAIT).
		c, err := d.login(w.addrs[(d.home+1)%len(w.addrs)])
		for retry := time.Now().Add(15 * time.Second); err != nil && protocol.HasCode(err, chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE) && time.Now().Before(retry); {
			time.Sleep(200 * time.Millisecond)
			c, err = d.login(w.addrs[(d.home+1)%len(w.addrs)])
		}
		if err != nil {
			t.Fatalf("%s: last login: %v", d, err)
		}
		t.Cleanup(func() { c.Close() })
		final[d] = c
		if _, err := c.Ping(w.ctx); err != nil {
			t.Fatalf("%s: ping after the last login: %v", d, err)
		}
		for drained := false; !drained; {
			select {
			case ev := <-c.Events():
				if ev.Message != nil {
					d.record(ev.Message)
					_ = c.Ack(ev.Message.MsgId)
				}
			default:
				drained = true
			}
		}
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	pushes, dups, logins := 0, 0, 0
	for _, d := range w.devs {
		logins += d.logins
		for _, n := range d.got {
			pushes += n
			dups += n - 1
		}
	}
	t.Logf("%d acknowledged messages; %d pushes to %d devices, %d of them duplicates dropped by msg_id; %d logins; kicks %v",
		len(w.sent), pushes, len(w.devs), dups, logins, w.kicks)
	// Every acknowledged message reached every device that should have it.
	lost := w.missingLocked()
	if live > 0 {
		t.Logf("%d deliveries were still missing when the pushes had settled; the last logins' replays brought %d of them",
			live, live-len(lost))
	}
	suspects := map[*faultDevice]bool{}
	for i, miss := range lost {
		if i == 20 {
			t.Errorf("... and %d more", len(lost)-20)
			break
		}
		t.Errorf("LOST: %s", miss.what)
		suspects[miss.to] = true
	}
	// What each device got is its user's, was acknowledged, and is what
	// the sender was told.
	for _, d := range w.devs {
		for id, m := range d.first {
			if m.GroupId != 0 && m.GroupId != w.group || m.GroupId == 0 && m.ToUserId != d.user.id && m.FromUserId != d.user.id {
				t.Errorf("%s got message %d from %d to user %d / group %d: not its user's", d, id, m.FromUserId, m.ToUserId, m.GroupId)
				continue
			}
			s := w.sent[id]
			if s == nil {
				if w.abandoned == 0 {
					t.Errorf("%s got message %d (%q) that never got SendOK", d, id, m.Text)
				}
				continue
			}
			if !s.addressedTo(d) {
				t.Errorf("%s got %s (msg %d, SendOK at %.3fs after %d tries, arrived %s), which is not for this device", d, s.text, id, s.okAt.Seconds(), s.tries, d.arrived[id])
				suspects[d] = true
			}
			if m.Text != s.text || m.Seq != s.seq || m.FromUserId != s.from.user.id {
				t.Errorf("%s got msg %d as %q seq %d from %d; SendOK said %q seq %d from %d",
					d, id, m.Text, m.Seq, m.FromUserId, s.text, s.seq, s.from.user.id)
			}
		}
	}
	for d := range suspects {
		t.Logf("%s's logins: %s", d, strings.Join(d.trail, ", "))
	}
	if w.kicks["device_limit"] > 0 || w.kicks["logged_in_elsewhere"] > 0 {
		t.Errorf("devices kicked each other: %v", w.kicks)
	}
	w.checkHistory(final)
	if len(w.sent) < 200 {
		t.Errorf("only %d messages acknowledged: too little load to mean anything", len(w.sent))
	}
}

// addressedTo says whether d should get s: every device of its recipient
// (each member but the sender, in the group), and the sender's other
// devices.
func (s *faultMsg) addressedTo(d *faultDevice) bool {
	if d.user == s.from.user {
		return d != s.from
	}
	return s.to == nil || s.to == d.user
}

// delivery is one that did not happen: a message and a device that
// should have got it.
type delivery struct {
	what string
	to   *faultDevice
}

func (w *faultWorld) missing() []delivery {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.missingLocked()
}

// missingLocked lists the deliveries that did not happen.
func (w *faultWorld) missingLocked() []delivery {
	var out []delivery
	for _, s := range w.sent {
		for _, d := range w.devs {
			if !s.addressedTo(d) {
				continue
			}
			d.mu.Lock()
			n := d.got[s.id]
			d.mu.Unlock()
			if n == 0 {
				out = append(out, delivery{fmt.Sprintf("%s (msg %d, seq %d, SendOK at %.3fs) never reached %s",
					s.text, s.id, s.seq, s.okAt.Seconds(), d), d})
			}
		}
	}
	slices.SortFunc(out, func(a, b delivery) int { return strings.Compare(a.what, b.what) })
	return out
}

// checkHistory reads every conversation from its start: its seqs must be
// 1..N without a gap, each holding the message SendOK named (and none
// that did not get one).
func (w *faultWorld) checkHistory(final map[*faultDevice]*client.Client) {
	t := w.t
	type conv struct {
		name string
		by   *faultUser // reads it
		peer uint64     // the other user, or
		gid  uint64     // the group
	}
	bySeq := map[string]map[uint64]*faultMsg{}
	convOf := func(s *faultMsg) conv {
		if s.to == nil {
			return conv{name: "group", by: w.users[0], gid: w.group}
		}
		a, b := s.from.user, s.to
		if a.id > b.id {
			a, b = b, a
		}
		return conv{name: a.name + "+" + b.name, by: a, peer: b.id}
	}
	convs := map[string]conv{}
	for _, s := range w.sent {
		c := convOf(s)
		convs[c.name] = c
		if bySeq[c.name] == nil {
			bySeq[c.name] = map[uint64]*faultMsg{}
		}
		if prev := bySeq[c.name][s.seq]; prev != nil {
			t.Errorf("%s: seq %d given to both %s and %s", c.name, s.seq, prev.text, s.text)
		}
		bySeq[c.name][s.seq] = s
	}
	total := 0
	for name, c := range convs {
		cl := final[c.by.devs[0]]
		var seqs []uint64
		after := uint64(0)
		for {
			page, err := cl.History(w.ctx, &chatpb.History{PeerUserId: c.peer, GroupId: c.gid, AfterSeq: &after, Limit: 200})
			if err != nil {
				t.Fatalf("%s: history after %d: %v", name, after, err)
			}
			for _, m := range page.Messages {
				seqs = append(seqs, m.Seq)
				s := bySeq[name][m.Seq]
				switch {
				case s == nil && w.abandoned == 0:
					t.Errorf("%s: history seq %d is %q (msg %d), which never got SendOK", name, m.Seq, m.Text, m.MsgId)
				case s != nil && (s.id != m.MsgId || s.text != m.Text):
					t.Errorf("%s: history seq %d is %q (msg %d); SendOK gave it to %q (msg %d)", name, m.Seq, m.Text, m.MsgId, s.text, s.id)
				}
				after = m.Seq
			}
			if !page.HasMore {
				break
			}
			if len(page.Messages) == 0 {
				t.Fatalf("%s: history after %d: an empty page with has_more", name, after)
			}
		}
		total += len(seqs)
		for i, seq := range seqs {
			if seq != uint64(i+1) {
				t.Errorf("%s: history seqs are not 1..%d: position %d holds seq %d", name, len(seqs), i+1, seq)
				break
			}
		}
		for seq, s := range bySeq[name] {
			if seq == 0 || seq > uint64(len(seqs)) {
				t.Errorf("%s: %s (seq %d) is not in history (%d messages)", name, s.text, seq, len(seqs))
			}
		}
	}
	t.Logf("history: %d conversations, %d messages read", len(convs), total)
	if len(convs) != len(w.users)+1 {
		t.Errorf("only %d conversations had messages, want %d", len(convs), len(w.users)+1)
	}
}
