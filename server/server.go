package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/loopchat/loopchat/internal/admin"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// Server is one loopchat node: an engine serving client connections, the
// request handlers, a store and a broker.
type Server struct {
	opts      Options
	log       *slog.Logger
	store     Store
	ownsStore bool
	broker    Broker
	tokens    atomic.Pointer[tokens] // swapped when a store reset brings a new shared secret
	hasher    *hasher
	guard     *loginGuard
	ids       *msgIDGen
	metrics   *metrics
	engine    engine
	runq      *runQueue

	rdb      redis.UniversalClient // cluster mode only: one Redis or a Redis Cluster
	registry *registry             // cluster mode only
	addr     net.Addr              // where the engine listens
	admin    *admin.Server         // nil unless Options.AdminAddr
	api      *api                  // nil unless Options.APIAddr

	startedAt  time.Time
	nextConnID atomic.Uint64
	closing    atomic.Bool

	curEpoch   atomic.Pointer[string] // the store epoch served under (epoch.go)
	resetUntil atomic.Int64           // unix ns: requests refused until then after a new epoch
	epochPoke  chan struct{}          // capacity 1: check the epoch now
	epochStop  chan struct{}          // cluster mode: ends watchEpoch
	epochDone  chan struct{}

	connsMu sync.Mutex
	conns   map[uint64]*session // every open connection

	users      userTable // logged-in users on this node
	presence   *presence
	transients *transientFlusher
	groups     *groupIndex // the group channels this node hears (fanout.go)
	// memberLocks order each user's joins and leaves made here
	// (memberLock); storePublishes says the store's scripts publish
	// group_member notices themselves (cluster mode).
	memberLocks    [64]sync.Mutex
	storePublishes bool
	// groupOrders order a group's sends with its joins and leaves where
	// the node picks a message's recipients (groupOrder).
	groupOrders [64]sync.RWMutex

	// ctx is cancelled when the server has shut down; request handlers use it.
	ctx    context.Context
	cancel context.CancelFunc
	// deadlines hands requests contexts under ctx that time out after
	// requestTimeout.
	deadlines *sharedDeadline

	workers      sync.WaitGroup
	sweepStop    chan struct{}
	sweepDone    chan struct{}
	failed       chan error    // the engine stopped on its own (Failed)
	slots        atomic.Int64  // connections admitted and not yet removed (admit)
	anon         *anonymous    // connections not logged in, per address
	serverFull   []byte        // what a connection past MaxConns reads (refusalFrame)
	addressBusy  []byte        // what a connection refused for its address reads
	shuttingDown []byte        // what a connection arriving during the drain reads (drainedFrame)
	web          *webPage      // --web's responses; nil when off
	gcDone       chan struct{} // the GC tuner has put GOGC back; nil without one
	shutdownOnce sync.Once
	stopBgOnce   sync.Once
	shutdownErr  error
}

// engine accepts connections and moves bytes; the handlers are shared.
type engine interface {
	// start begins serving and returns once the listener accepts.
	start() (net.Addr, error)
	// stop stops accepting and closes every connection.
	stop(ctx context.Context) error
	// exit is closed when the engine has stopped serving, and then tells
	// why (nil after stop).
	exit() (<-chan struct{}, func() error)
	// wsAddr is the WebSocket listener's address once started (nil: none).
	wsAddr() net.Addr
}

// New prepares a server: it opens the store and builds the broker but does
// not listen until Start.
func New(o Options) (*Server, error) {
	opts, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if n := largestLoginOK(opts.limits(), opts.NodeID); n > opts.MaxOutbound/2 || n > protocol.ClientMaxFrame {
		opts.Logger.Warn("the friend and group limits allow a LoginOK too big to deliver: users near them may be unable to log in; raise --max-outbound or lower the limits",
			"largest_login_ok_bytes", n, "max_outbound", opts.MaxOutbound, "client_max_frame", protocol.ClientMaxFrame)
	}
	s := &Server{
		opts:         opts,
		log:          opts.Logger.With("node", opts.NodeID),
		hasher:       newHasher(opts.BcryptCost, max(1, opts.Loops)),
		guard:        newLoginGuard(opts.LoginFailures),
		ids:          newMsgIDGen(0),
		metrics:      newMetrics(),
		conns:        make(map[uint64]*session),
		startedAt:    time.Now(),
		sweepStop:    make(chan struct{}),
		sweepDone:    make(chan struct{}),
		failed:       make(chan error, 1),
		anon:         newAnonymous(opts.MaxAnonymousPerAddress),
		epochPoke:    make(chan struct{}, 1),
		serverFull:   refusalFrame(ErrServerFull),
		addressBusy:  refusalFrame(ErrAddressBusy),
		shuttingDown: drainedFrame(),
	}
	if opts.Web {
		if s.web, err = newWebPage(); err != nil {
			return nil, err
		}
	}
	s.users.init()
	s.presence = newPresence(s)
	s.transients = newTransientFlusher()
	s.groups = newGroupIndex(s)
	tk := newTokens(opts.TokenSecret, opts.TokenTTL)
	s.tokens.Store(&tk)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.deadlines = newSharedDeadline(s.ctx, requestTimeout)
	if opts.Redis != "" {
		if err := s.joinCluster(); err != nil {
			return nil, err
		}
	}
	if s.store == nil {
		s.store = opts.Store
	}
	if s.store == nil {
		st, err := OpenBoltStore(BoltConfig{Path: opts.storePath(), InboxLimit: opts.InboxLimit, History: opts.History,
			ObserveHistoryTrim: func(n int) { s.metrics.historyTrimmed.Add(float64(n)) },
			ObserveCommit: func(d time.Duration, n int) {
				s.metrics.storeCommit.Observe(d.Seconds())
				s.metrics.storeBatch.Observe(float64(n))
			},
			ObserveLog: func(d time.Duration, n int) {
				s.metrics.logSync.Observe(d.Seconds())
				s.metrics.logBatch.Observe(float64(n))
			},
			ObserveTrim: func(n int) { s.metrics.inboxTrimmed.Add(float64(n)) }})
		if err != nil {
			return nil, err
		}
		s.store, s.ownsStore = st, true
	}
	if s.tokens.Load().secret == nil {
		return nil, errors.New("no token secret")
	}
	ectx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err = s.initEpoch(ectx)
	cancel()
	if err != nil {
		_ = s.closeDeps() // the store, and in a cluster the broker and the Redis client
		return nil, fmt.Errorf("store epoch: %w", err)
	}
	switch {
	case s.broker != nil:
	case opts.NewBroker != nil:
		s.broker, err = opts.NewBroker(s.onEvent)
		if err != nil {
			s.closeStore()
			return nil, fmt.Errorf("broker: %w", err)
		}
	default:
		s.broker = NewMemoryBroker(s.onEvent)
	}
	switch opts.Engine {
	case EngineNet:
		s.engine = newNetEngine(s)
	default:
		s.engine = newGnetEngine(s)
	}
	return s, nil
}

// Start listens and serves in the background; it returns once connections
// are accepted.
func (s *Server) Start() (net.Addr, error) {
	s.runq = newRunQueue()
	for range s.opts.Workers {
		s.workers.Add(1)
		go s.work()
	}
	go s.sweep()
	go s.transients.run()
	go s.groups.run()
	if s.registry != nil {
		s.epochStop, s.epochDone = make(chan struct{}), make(chan struct{})
		go s.watchEpoch(s.epochStop, s.epochDone)
	}
	if s.opts.GCHeadroom > 0 {
		s.gcDone = make(chan struct{})
		go func() {
			defer close(s.gcDone)
			newGCTuner(uint64(s.opts.GCHeadroom)).run(s.sweepStop)
		}()
	}
	addr, err := s.engine.start()
	if err != nil {
		s.stopBackground()
		s.closeDeps()
		return nil, err
	}
	s.addr = addr
	go s.watchEngine()
	if s.opts.AdminAddr != "" {
		if s.admin, err = admin.Start(s.opts.AdminAddr, s.adminMux(), s.log); err != nil {
			_ = s.Shutdown(context.Background())
			return nil, err
		}
		s.log.Info("admin endpoints", "addr", s.admin.Addr().String())
	}
	if s.opts.APIAddr != "" {
		s.api = newAPI(s)
		if err := s.api.start(s.opts.APIAddr); err != nil {
			_ = s.Shutdown(context.Background())
			return nil, err
		}
		s.log.Info("HTTP API", "addr", s.api.ln.Addr().String(), "keys", len(s.opts.APIKeys))
	}
	if s.registry != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.registry.start(ctx); err != nil {
			_ = s.Shutdown(ctx)
			return nil, fmt.Errorf("cluster registry: %w", err)
		}
	}
	pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.presence.start(pctx); err != nil {
		_ = s.Shutdown(pctx)
		return nil, fmt.Errorf("presence: %w", err)
	}
	s.log.Info("serving", "addr", addr.String(), "engine", s.opts.Engine, "loops", s.opts.Loops)
	if a := s.WSAddr(); a != nil {
		s.log.Info("serving WebSocket", "addr", a.String(), "subprotocol", WSSubprotocol, "web_page", s.web != nil)
	}
	return addr, nil
}

// NodeID is the name this node reports in LoginOK.
func (s *Server) NodeID() string { return s.opts.NodeID }

// Shutdown tells every client the server is going away (Kicked{server
// shutting down}), waits up to ctx for them to be written and closed, then
// stops the engine, finishes queued work and closes broker and store.
// Failed yields an error when the server has stopped serving on its own —
// its network engine gave up, so it neither accepts nor keeps connections.
// The caller should then Shutdown and exit, for a supervisor to restart it.
func (s *Server) Failed() <-chan error { return s.failed }

func (s *Server) watchEngine() {
	done, why := s.engine.exit()
	<-done
	if s.closing.Load() {
		return // Shutdown stopped it
	}
	err := fmt.Errorf("network engine stopped serving: %w", why())
	s.log.Error("the network engine stopped on its own; this node serves nothing until restarted", "err", err)
	s.failed <- err
}

func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() { s.shutdownErr = s.shutdown(ctx) })
	return s.shutdownErr
}

func (s *Server) shutdown(ctx context.Context) error {
	s.closing.Store(true) // refuse new connections; /readyz turns 503
	if s.registry != nil {
		// Tell the registry (and so `loopchat lb`) at once, not a tick later.
		hctx, cancel := context.WithTimeout(ctx, time.Second)
		if err := s.registry.beat(hctx); err != nil {
			s.log.Warn("could not mark this node draining", "err", err)
		}
		cancel()
	}
	// The API stops taking calls while the clients drain; calls under way
	// get until the drain is over, or 5 s, to finish.
	apiClosed := make(chan struct{})
	go func() {
		defer close(apiClosed)
		if s.api != nil {
			actx, cancel := context.WithTimeout(ctx, max(s.opts.DrainWindow, 5*time.Second))
			defer cancel()
			s.api.close(actx)
		}
	}()
	s.drain(ctx)
	stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errEngine error
	if s.addr != nil {
		errEngine = s.engine.stop(stopCtx)
	}
	s.stopBackground()
	s.presence.close() // settles what waits on one node: before the store closes
	s.cancel()
	<-apiClosed
	if s.api != nil {
		s.api.wait() // what still runs saw s.ctx end: before the store closes
	}
	if s.registry != nil {
		s.registry.close(stopCtx)
	}
	errDeps := s.closeDeps()
	if s.admin != nil {
		_ = s.admin.Close(stopCtx)
	}
	s.log.Info("stopped")
	return errors.Join(errEngine, errDeps)
}

// closeDeps closes the broker and what the server opened itself.
func (s *Server) closeDeps() error {
	var errBroker error
	if s.broker != nil {
		errBroker = s.broker.Close()
	}
	errStore := s.closeStore()
	var errRedis error
	if s.rdb != nil {
		errRedis = s.rdb.Close()
	}
	return errors.Join(errBroker, errStore, errRedis)
}

// drain kicks every client with Kicked{server shutting down}, spread
// evenly over DrainWindow so that their reconnects do not all land on the
// other nodes in the same instant. Clients not yet kicked are served as
// usual. It returns when every connection is gone, or two seconds after
// the window ends, or when ctx ends.
func (s *Server) drain(ctx context.Context) {
	const tick = 50 * time.Millisecond
	start := time.Now()
	window := s.opts.DrainWindow
	giveUp := start.Add(window + 2*time.Second)
	total := s.connCount()
	s.log.Info("draining", "connections", total, "window", window)
	kicked := 0
	for s.connCount() > 0 && time.Now().Before(giveUp) {
		// By now, this share of the connections we started with should
		// have been told to go (all of them once the window is over).
		due := total
		if elapsed := time.Since(start); elapsed < window {
			due = int((int64(total)*int64(elapsed) + int64(window) - 1) / int64(window))
		}
		for _, c := range s.snapshotConns() {
			if kicked >= due && time.Since(start) < window {
				break
			}
			if c.kicked.Load() {
				continue
			}
			c.kick(chatpb.KickReason_KICK_REASON_SERVER_SHUTTING_DOWN, "server shutting down")
			kicked++
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(tick):
		}
	}
}

// stopBackground ends the sweeper and the workers after the work queued.
func (s *Server) stopBackground() {
	s.stopBgOnce.Do(func() {
		if s.runq == nil {
			return // never started
		}
		close(s.sweepStop)
		<-s.sweepDone
		s.transients.close()
		if s.epochStop != nil {
			close(s.epochStop)
			<-s.epochDone
		}
		if s.gcDone != nil {
			<-s.gcDone
		}
		s.runq.close()
		s.workers.Wait()
		s.groups.close()
	})
}

func (s *Server) closeStore() error {
	if s.ownsStore && s.store != nil {
		return s.store.Close()
	}
	return nil
}

func (s *Server) addConn(c *session) {
	s.connsMu.Lock()
	s.conns[c.id] = c
	s.connsMu.Unlock()
	s.metrics.connsOpen.Inc()
	s.metrics.connsTotal.Inc()
}

func (s *Server) removeConn(c *session) {
	s.connsMu.Lock()
	delete(s.conns, c.id)
	s.connsMu.Unlock()
	s.metrics.connsOpen.Dec()
	s.slots.Add(-1)
}

func (s *Server) connCount() int {
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	return len(s.conns)
}

func (s *Server) snapshotConns() []*session {
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	out := make([]*session, 0, len(s.conns))
	for _, c := range s.conns {
		out = append(out, c)
	}
	return out
}

// sweep closes connections that missed the login deadline or went idle.
// One pass over all connections per tick is far cheaper than a timer per
// connection, and gnet has no deadlines of its own.
func (s *Server) sweep() {
	defer close(s.sweepDone)
	interval := min(time.Second, s.opts.IdleTimeout/4, s.opts.LoginTimeout/4)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.sweepStop:
			return
		case now := <-t.C:
			s.guard.forget(now)
			nowNs := now.UnixNano()
			for _, c := range s.snapshotConns() {
				switch {
				case !c.loggedInOnce.Load() && nowNs-c.openedAt > int64(s.opts.LoginTimeout):
					c.kick(chatpb.KickReason_KICK_REASON_LOGIN_TIMEOUT, "not logged in within "+s.opts.LoginTimeout.String())
				case nowNs-c.lastSeen.Load() > int64(s.opts.IdleTimeout):
					c.kick(chatpb.KickReason_KICK_REASON_IDLE_TIMEOUT, "silent for more than "+s.opts.IdleTimeout.String())
				}
			}
		}
	}
}

// onEvent is the broker's handler: route an event to this node's sessions
// of uid (one per device), if any; a group event to those of the users it
// lists, a broadcast to every session (fanout.go).
func (s *Server) onEvent(uid uint64, ev Event) {
	switch {
	case ev.Broadcast:
		s.fanoutAll(ev)
		return
	case ev.To != nil:
		s.fanout(ev)
		return
	case ev.GroupMember != nil:
		s.onGroupMember(uid, ev)
		return
	}
	cs := s.users.get(uid)
	if len(cs) > 1 {
		ev = s.shared(ev) // once for all the user's devices here
	}
	for _, c := range cs {
		s.deliver(c, uid, ev)
	}
}

// deliver hands one event to one session of user uid (0: of whoever is
// logged in on it, a broadcast). The session was looked up before this
// call, and may have logged out since — and in again, as someone else:
// the connection stays open after a Logout. So the user is checked here,
// and again under the lock that pushes take (session.holds).
func (s *Server) deliver(c *session, uid uint64, ev Event) {
	u := c.user.Load()
	if u == nil || uid != 0 && u.id != uid {
		return
	}
	if ev.Epoch != "" && ev.Epoch != u.epoch {
		// Stored under other store contents, where this user id is
		// someone else: never theirs to see. This node's epoch is stale
		// (or the sender's): look now.
		s.metrics.staleEvents.Inc()
		s.pokeEpoch()
		return
	}
	switch {
	case ev.Resync:
		c.enqueue(mailItem{resync: true})
	case ev.Message != nil:
		m := ev.Message
		if ev.OriginConn != 0 && ev.OriginConn == c.id && ev.OriginNode == s.opts.NodeID {
			return // the sending session: it has its SendOK
		}
		if ev.OriginConn != 0 && m.FromUserId == u.id && m.ToUserId != u.id && ev.OriginDevice == u.device {
			// Sent from this device by an earlier session of it, and come
			// late (a pub/sub reconnect, a slow node): the device has the
			// SendOK, and its box leaves the message out as well.
			return
		}
		if m.MsgId == 0 {
			// Published by another program: give it an id so the client
			// can tell it apart (it is pushed live only, never stored).
			m = proto.Clone(m).(*chatpb.Message)
			m.MsgId, m.SentAtMs = s.ids.next(time.Now())
			s.metrics.externalPushes.Inc()
		}
		c.push(u, m, ev.frame)
	case ev.Read != nil:
		r := ev.Read
		if r.NodeID == s.opts.NodeID && r.ConnID == c.id {
			return
		}
		// Anyone who can PUBLISH can write a read event: a receipt reaches
		// a user only about a conversation of theirs, from its other user
		// (1:1) or from themselves (their own read state, any conversation).
		inPair := func(id uint64) bool { return id == r.Conv.A || id == r.Conv.B }
		if r.Conv.GroupID != 0 && r.Reader != u.id || r.Conv.GroupID == 0 && (!inPair(u.id) || !inPair(r.Reader)) {
			s.metrics.channelErrors.Inc()
			return
		}
		rr := &chatpb.ReadReceipt{ReaderUserId: r.Reader, UpToSeq: r.UpTo, GroupId: r.Conv.GroupID}
		if r.Conv.GroupID == 0 {
			rr.PeerUserId = r.Conv.A + r.Conv.B - u.id // the other of the pair, from this user's side
		}
		c.readMoved(u, readerConv{reader: r.Reader, conv: r.Conv}, r.UpTo, rr)
	case ev.Presence != nil:
		if ev.Presence.UserID == u.id {
			return // your own presence is not news to you
		}
		frame := ev.frame
		if frame == nil {
			frame = ev.Presence.encode()
		}
		c.pushTransient(u, frame)
	case ev.Typing != nil:
		if ev.Typing.UserID == u.id {
			return // your own typing, from another device
		}
		frame := ev.frame
		if frame == nil {
			frame = ev.Typing.encode()
		}
		c.pushTransient(u, frame)
	case ev.Kick != nil:
		if c.holds(u) {
			c.kick(kickFor(ev.Kick))
		}
	case ev.DeviceKick != nil:
		if ev.DeviceKick.Device == u.device && u.gen <= ev.DeviceKick.Gen {
			c.kick(chatpb.KickReason_KICK_REASON_DEVICE_LIMIT,
				fmt.Sprintf("more than %d devices online; log in again only when the user asks", s.opts.MaxDevices))
		}
	case ev.Login != nil:
		if ev.Login.Device != u.device {
			return // another device of the user: both may stay
		}
		newer := ev.Login.Gen > u.gen
		if ev.Login.Epoch != "" && ev.Login.Epoch != u.epoch {
			// A login of other store contents: its generation counts
			// from another counter, and whichever session is stale goes
			// with its store (epoch.go), not by this comparison.
			s.pokeEpoch()
			return
		}
		if ev.Login.Gen == 0 {
			// From a node that predates generations: its clock decides, as
			// it did then; same-node logins replace sessions in the table.
			newer = ev.Login.NodeID != s.opts.NodeID && u.loginAtMs <= ev.Login.AtMs
		}
		if newer {
			c.kick(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE, "logged in on node "+ev.Login.NodeID)
		}
	}
}

// userTable maps logged-in users to their sessions on this node, one per
// device.
//
// Two locks per stripe: op serialises bind and unbind of a user, and is
// held across the broker (un)subscribe, so a late Unsubscribe from an old
// session can never undo a newer session's Subscribe; mu guards the map
// itself and is never held across a call out. Event delivery (get) takes
// only mu: the broker's receive loop must never wait for a login that is
// itself waiting for that loop to confirm its subscription. A user's
// slice is replaced, never changed in place, so get can hand it out.
type userTable struct {
	stripes [64]struct {
		op sync.Mutex
		mu sync.RWMutex
		m  map[uint64][]*session
	}
}

func (t *userTable) init() {
	for i := range t.stripes {
		t.stripes[i].m = make(map[uint64][]*session)
	}
}

// get is uid's sessions here (read-only).
func (t *userTable) get(uid uint64) []*session {
	st := &t.stripes[uid%uint64(len(t.stripes))]
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.m[uid]
}

// count is how many users have a session here.
func (t *userTable) count() int {
	n := 0
	for i := range t.stripes {
		st := &t.stripes[i]
		st.mu.RLock()
		n += len(st.m)
		st.mu.RUnlock()
	}
	return n
}

// bindUser makes c (logged in as me) the session of me's device, subscribing
// the node when uid had no session here, and returns the session of that
// device it replaced. A session of the device here with a higher
// generation of the same store epoch stays, and bindUser fails with
// errSuperseded; one of another epoch always goes.
func (s *Server) bindUser(ctx context.Context, uid uint64, c *session, me *sessionUser) (old *session, err error) {
	st := &s.users.stripes[uid%uint64(len(s.users.stripes))]
	st.op.Lock()
	defer st.op.Unlock()
	cur := s.users.get(uid)
	i := slices.IndexFunc(cur, func(o *session) bool {
		u := o.user.Load()
		return u != nil && u.device == me.device
	})
	if i >= 0 {
		old = cur[i]
		if u := old.user.Load(); u != nil && u.epoch == me.epoch && u.gen > me.gen {
			return nil, errSuperseded
		}
	}
	if len(cur) == 0 {
		if err := s.broker.Subscribe(ctx, uid); err != nil {
			return nil, err
		}
	}
	next := slices.DeleteFunc(slices.Clone(cur), func(o *session) bool { return o == old || o == c })
	next = append(next, c)
	st.mu.Lock()
	st.m[uid] = next
	st.mu.Unlock()
	return old, nil
}

// unbindUser removes c from u's sessions, unsubscribing when it was the
// last, and records its device offline (Store.DeviceOffline).
func (s *Server) unbindUser(ctx context.Context, u *sessionUser, c *session) {
	uid := u.id
	st := &s.users.stripes[uid%uint64(len(s.users.stripes))]
	st.op.Lock()
	defer st.op.Unlock()
	cur := s.users.get(uid)
	if !slices.Contains(cur, c) {
		return
	}
	next := slices.DeleteFunc(slices.Clone(cur), func(o *session) bool { return o == c })
	st.mu.Lock()
	if len(next) == 0 {
		delete(st.m, uid)
	} else {
		st.m[uid] = next
	}
	st.mu.Unlock()
	if err := s.store.DeviceOffline(withEpoch(ctx, u.epoch), uid, u.device, u.gen); err != nil {
		s.log.Debug("device offline not recorded", "user_id", uid, "err", err)
	}
	if len(next) > 0 {
		return
	}
	s.presence.leave(ctx, u)
	if err := s.broker.Unsubscribe(ctx, uid); err != nil {
		s.log.Warn("unsubscribe failed", "user_id", uid, "err", err)
	}
	s.groups.gone(uid)
}
