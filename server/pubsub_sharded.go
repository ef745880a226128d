package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// shardedSubs holds a node's shard channel subscriptions on a Redis
// Cluster (SSUBSCRIBE). A shard channel lives in a hash slot like a key,
// and is heard only on the primary serving that slot, so:
//
//   - there is one pub/sub connection per primary serving a slot of some
//     channel the node wants, and a channel is subscribed on the one of
//     its slot's primary;
//   - each SSUBSCRIBE names channels of one slot: Redis refuses one that
//     spans slots (CROSSSLOT), even slots of one primary;
//   - when a slot moves to another primary (resharding), Redis tells the
//     subscribers of its channels with an unsolicited SUNSUBSCRIBE; when a
//     primary dies (failover), its connection breaks. Either way the
//     channels are subscribed again where their slot is now, once the
//     cluster's new layout is known, and the receiver is told (lost) that
//     it may have missed messages meanwhile.
//
// go-redis's ClusterClient.SSubscribe gives one connection, to the primary
// of the first channel's slot, and on a reconnect subscribes every channel
// again in one SSUBSCRIBE (redis/go-redis#3133, #3806): it suits channels
// of one slot only. So each connection here is a go-redis PubSub of one
// primary, never left to reconnect by itself: on any error it is closed,
// and its channels placed again.
type shardedSubs struct {
	rdb *redis.ClusterClient
	log *slog.Logger
	// out carries *redis.Message, and lost{} once channels that were
	// dropped have been subscribed again.
	out chan any

	mu    sync.Mutex
	want  map[string]*subState  // wanted channel -> where it is subscribed
	conns map[string]*shardConn // primary address -> its connection
	// owners is each slot's primary as last learned (CLUSTER SHARDS, or a
	// MOVED); nil until first needed, and after a connection broke.
	owners  []string
	clients map[string]*redis.Client // primary address -> a client of it
	waiters map[string][]chan struct{}
	again   map[string]struct{} // channels to place again
	kick    chan struct{}       // wakes the replacer

	stop chan struct{}
	wg   sync.WaitGroup
}

// lost tells the receiver that channels were dropped (a primary died, a
// slot moved) and are subscribed again: messages published in between
// were missed.
type lost struct{}

// subState is where a wanted channel is subscribed: on c (nil: nowhere
// yet), confirmed by Redis or not yet.
type subState struct {
	c  *shardConn
	ok bool
}

// shardConn is one pub/sub connection, to one primary.
type shardConn struct {
	addr  string
	ps    *redis.PubSub
	chans map[string]struct{}
	dead  bool
}

func newShardedSubs(rdb *redis.ClusterClient, log *slog.Logger) *shardedSubs {
	s := &shardedSubs{rdb: rdb, log: log, out: make(chan any, 1024),
		want: make(map[string]*subState), conns: make(map[string]*shardConn), clients: make(map[string]*redis.Client),
		waiters: make(map[string][]chan struct{}), again: make(map[string]struct{}),
		kick: make(chan struct{}, 1), stop: make(chan struct{})}
	s.wg.Add(1)
	go s.replacer()
	return s
}

// Subscribe subscribes channels and returns once Redis confirmed each. A
// channel that could not be placed stays wanted, and is placed again in
// the background (the receiver then gets lost{}); Unsubscribe gives it up.
func (s *shardedSubs) Subscribe(ctx context.Context, channels ...string) error {
	var ws []chan struct{}
	var waiting []string
	s.mu.Lock()
	for _, ch := range channels {
		st := s.want[ch]
		if st == nil {
			st = &subState{}
			s.want[ch] = st
		}
		if !st.ok {
			w := make(chan struct{})
			ws = append(ws, w)
			waiting = append(waiting, ch)
			s.waiters[ch] = append(s.waiters[ch], w)
		}
	}
	s.mu.Unlock()
	err := s.place(ctx, channels)
	for i := 0; err == nil && i < len(ws); i++ {
		select {
		case <-ws[i]:
		case <-ctx.Done():
			err = ctx.Err()
		case <-s.stop:
			err = errShardedSubsClosed
		}
	}
	if err != nil {
		s.mu.Lock()
		for i, ch := range waiting {
			s.dropWaiter(ch, ws[i])
		}
		s.mu.Unlock()
	}
	return err
}

// Unsubscribe gives channels up.
func (s *shardedSubs) Unsubscribe(ctx context.Context, channels ...string) error {
	bySlot := make(map[*shardConn]map[int][]string)
	s.mu.Lock()
	for _, ch := range channels {
		st := s.want[ch]
		delete(s.want, ch)
		delete(s.again, ch)
		if st == nil || st.c == nil {
			continue
		}
		c := st.c
		delete(c.chans, ch)
		if bySlot[c] == nil {
			bySlot[c] = make(map[int][]string)
		}
		bySlot[c][keySlot(ch)] = append(bySlot[c][keySlot(ch)], ch)
	}
	s.mu.Unlock()
	var first error
	for c, slots := range bySlot {
		for _, chs := range slots {
			if err := c.ps.SUnsubscribe(ctx, chs...); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

// place subscribes channels on their slots' primaries, one SSUBSCRIBE per
// slot. What fails is left to the replacer.
func (s *shardedSubs) place(ctx context.Context, channels []string) error {
	bySlot := make(map[int][]string)
	for _, ch := range channels {
		bySlot[keySlot(ch)] = append(bySlot[keySlot(ch)], ch)
	}
	var first error
	for _, chs := range bySlot {
		if err := s.placeSlot(ctx, chs); err != nil {
			if first == nil {
				first = err
			}
			s.placeLater(chs)
		}
	}
	return first
}

// ownerOf is the primary serving slot, as last learned; it asks the
// cluster (CLUSTER SHARDS) when it does not know. The go-redis cluster
// client's own view reloads lazily, in the background: a channel placed
// again right after a slot moved needs the news now.
func (s *shardedSubs) ownerOf(ctx context.Context, slot int) (string, error) {
	s.mu.Lock()
	owners := s.owners
	s.mu.Unlock()
	if owners == nil {
		var err error
		if owners, err = slotOwners(ctx, s.rdb); err != nil {
			return "", err
		}
		s.mu.Lock()
		s.owners = owners
		s.mu.Unlock()
	}
	if owners[slot] == "" {
		// Learned mid-failover (a failed primary is no owner): ask again
		// next time rather than keep the gap until a MOVED, which a slot
		// never asked cannot bring.
		s.forgetOwners()
		return "", fmt.Errorf("slot %d is not served", slot)
	}
	return owners[slot], nil
}

// forgetOwners drops what was learned of the slots' primaries.
func (s *shardedSubs) forgetOwners() {
	s.mu.Lock()
	s.owners = nil
	s.mu.Unlock()
}

// moved records that slot is served by addr now (a MOVED redirection).
func (s *shardedSubs) moved(slot int, addr string) {
	s.mu.Lock()
	if s.owners != nil && addr != "" {
		owners := slices.Clone(s.owners)
		owners[slot] = addr
		s.owners = owners
	} else {
		s.owners = nil
	}
	s.mu.Unlock()
}

// client is a client of the primary at addr, with the cluster client's
// options.
func (s *shardedSubs) client(addr string) *redis.Client {
	c := s.clients[addr]
	if c == nil {
		o := s.rdb.Options()
		c = redis.NewClient(&redis.Options{Addr: addr, Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig,
			Dialer: o.Dialer, Protocol: o.Protocol, DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout,
			WriteTimeout: o.WriteTimeout, MaxRetries: -1})
		s.clients[addr] = c
	}
	return c
}

// errShardedSubsClosed is what a subscription gets once the subscriber is
// closing.
var errShardedSubsClosed = errors.New("broker closed")

// placeSlot subscribes channels of one slot on its primary.
func (s *shardedSubs) placeSlot(ctx context.Context, chs []string) error {
	addr, err := s.ownerOf(ctx, keySlot(chs[0]))
	if err != nil {
		return err
	}
	s.mu.Lock()
	select {
	case <-s.stop:
		// Close has taken its list of connections to close: one made now
		// would never be closed, and Close would wait on its reader.
		s.mu.Unlock()
		return errShardedSubsClosed
	default:
	}
	c := s.conns[addr]
	if c == nil {
		c = &shardConn{addr: addr, ps: s.client(addr).SSubscribe(context.Background()), chans: make(map[string]struct{})}
		s.conns[addr] = c
		s.wg.Add(2)
		go s.receive(c)
		go s.keepalive(c)
	}
	var todo []string
	for _, ch := range chs {
		// One already on this primary is confirmed, or will be.
		if st := s.want[ch]; st != nil && st.c != c {
			if st.c != nil {
				delete(st.c.chans, ch)
			}
			st.c, st.ok = c, false
			c.chans[ch] = struct{}{}
			todo = append(todo, ch)
		}
	}
	s.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	if err := c.ps.SSubscribe(ctx, todo...); err != nil {
		s.drop(c, err)
		return err
	}
	return nil
}

// placeLater queues channels for the replacer.
func (s *shardedSubs) placeLater(chs []string) {
	s.mu.Lock()
	for _, ch := range chs {
		if _, ok := s.want[ch]; ok {
			s.again[ch] = struct{}{}
		}
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// drop closes a connection that failed, and queues its channels.
func (s *shardedSubs) drop(c *shardConn, why error) {
	s.mu.Lock()
	if c.dead {
		s.mu.Unlock()
		return
	}
	c.dead = true
	if s.conns[c.addr] == c {
		delete(s.conns, c.addr)
	}
	var chs []string
	for ch := range c.chans {
		if st := s.want[ch]; st != nil && st.c == c {
			st.c, st.ok = nil, false
			chs = append(chs, ch)
		}
	}
	s.owners = nil // a failover may be why
	s.mu.Unlock()
	select {
	case <-s.stop:
	default:
		s.log.Warn("redis cluster pub/sub connection lost; subscribing its channels again where their slots are",
			"primary", c.addr, "channels", len(chs), "err", why)
	}
	_ = c.ps.Close()
	s.placeLater(chs)
}

// receive reads one connection until it fails or the subscriber closes.
func (s *shardedSubs) receive(c *shardConn) {
	defer s.wg.Done()
	for {
		msg, err := c.ps.Receive(context.Background())
		if err != nil {
			if moved, slot, addr := movedSlot(err); moved {
				s.moved(slot, addr)
				s.reslot(c, slot)
				continue
			}
			s.drop(c, err)
			return
		}
		switch m := msg.(type) {
		case *redis.Message:
			select {
			case s.out <- m:
			case <-s.stop:
				return
			}
		case *redis.Subscription:
			switch m.Kind {
			case "ssubscribe":
				s.mu.Lock()
				var ws []chan struct{}
				if st := s.want[m.Channel]; st != nil && st.c == c {
					st.ok = true
					ws = s.waiters[m.Channel]
					delete(s.waiters, m.Channel)
				}
				s.mu.Unlock()
				for _, w := range ws {
					close(w)
				}
			case "sunsubscribe":
				// Unsolicited when the slot moved away from this primary:
				// the channel is still wanted here.
				s.mu.Lock()
				st := s.want[m.Channel]
				still := st != nil && st.c == c
				if still {
					st.c, st.ok = nil, false
					delete(c.chans, m.Channel)
				}
				s.mu.Unlock()
				if still {
					s.forgetOwners()
					s.placeLater([]string{m.Channel})
				}
			}
		}
	}
}

// reslot queues the channels of slot that c holds: Redis answered MOVED
// for it (the slot moved before the SSUBSCRIBE got there).
func (s *shardedSubs) reslot(c *shardConn, slot int) {
	var chs []string
	s.mu.Lock()
	for ch := range c.chans {
		if st := s.want[ch]; keySlot(ch) == slot && st != nil && st.c == c {
			st.c, st.ok = nil, false
			delete(c.chans, ch)
			chs = append(chs, ch)
		}
	}
	s.mu.Unlock()
	s.placeLater(chs)
}

// movedSlot reads a MOVED or ASK redirection: the slot, and where it is
// served ("" if not said).
func movedSlot(err error) (bool, int, string) {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false, 0, ""
	}
	f := strings.Fields(err.Error())
	if len(f) < 2 || (f[0] != "MOVED" && f[0] != "ASK") {
		return false, 0, ""
	}
	slot, convErr := strconv.Atoi(f[1])
	addr := ""
	if len(f) > 2 && f[0] == "MOVED" {
		addr = f[2]
	}
	return convErr == nil && slot >= 0 && slot < clusterSlots, slot, addr
}

// keepalive pings a connection, so that a silent one is found dead.
func (s *shardedSubs) keepalive(c *shardConn) {
	defer s.wg.Done()
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.mu.Lock()
			dead := c.dead
			s.mu.Unlock()
			if dead {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := c.ps.Ping(ctx)
			cancel()
			if err != nil {
				s.drop(c, err)
				return
			}
		}
	}
}

// replacer subscribes dropped channels again, with the cluster's layout
// reloaded first, backing off while that fails; once all are confirmed it
// tells the receiver (lost{}).
func (s *shardedSubs) replacer() {
	defer s.wg.Done()
	backoff := 50 * time.Millisecond
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
		}
		for {
			s.mu.Lock()
			chs := make([]string, 0, len(s.again))
			for ch := range s.again {
				chs = append(chs, ch)
			}
			clear(s.again)
			s.mu.Unlock()
			if len(chs) == 0 {
				break
			}
			// The cluster client's view too, for the publishes.
			s.rdb.ReloadState(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := s.Subscribe(ctx, chs...)
			cancel()
			if err == nil {
				backoff = 50 * time.Millisecond
				s.log.Info("redis cluster pub/sub channels subscribed again", "channels", len(chs))
				select {
				case s.out <- lost{}:
				case <-s.stop:
					return
				}
				continue
			}
			s.placeLater(chs) // those still wanted
			select {
			case <-s.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

func (s *shardedSubs) dropWaiter(ch string, w chan struct{}) {
	ws := s.waiters[ch]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(s.waiters, ch)
	} else {
		s.waiters[ch] = ws
	}
}

// Close closes every connection and waits for the goroutines.
func (s *shardedSubs) Close() error {
	close(s.stop)
	s.mu.Lock()
	conns := make([]*shardConn, 0, len(s.conns))
	for _, c := range s.conns {
		c.dead = true
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.ps.Close()
	}
	s.wg.Wait()
	for _, c := range s.clients {
		_ = c.Close()
	}
	return nil
}
