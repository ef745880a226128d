package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"
)

// Presence in the stores (docs/presence.md). A user is online while some
// node has a session of theirs; the stores keep, per user, the nodes that
// have one, whether the user was announced online (what friends were last
// told), when they were last seen going offline, and whether they hide
// their presence. The transitions are made here, atomically per user, and
// say when friends must be told: the first node joins an offline user
// (online), and a settle finds no node left for an online user (offline,
// last seen). The server calls a settle only after the offline grace, so
// a reconnect within it changes nothing.
//
// A "node" here is a presence instance: one per server process (a node
// that restarts is a new instance), so that what a dead process left can
// be told from what its successor records.

// PresenceState is a user's presence as their friends see it: online, or
// offline since LastSeenMs (0: unknown, or hidden).
type PresenceState struct {
	Online     bool
	LastSeenMs int64
}

// PresenceChange is what a presence write did.
type PresenceChange struct {
	// Announce: what friends see changed to State; tell them.
	Announce bool
	State    PresenceState
	// Hidden: the user hides their presence (SetPresenceVisible).
	Hidden bool
	// Published: the store already published State to the user's friends
	// (RedisConfig.PublishMessages), in the same step as the change, so
	// that changes reach every friend in the order they were made.
	Published bool
}

// bucketPresence holds the embedded store's last seen: uid -> 8-byte ms,
// written when the user goes offline. bucketPresenceHidden: uid -> empty,
// the users who hide their presence (kept in memory too: every presence
// read looks at it).
var (
	bucketPresence       = []byte("presence")
	bucketPresenceHidden = []byte("presence_hidden")
)

// localPresence is the embedded store's presence state of users who are
// online or have a node: in memory, since every session of one node dies
// with it. Last seen and the hidden flag are in bbolt.
type localPresence struct {
	mu     sync.Mutex
	users  map[uint64]*localPresenceUser
	hidden map[uint64]bool
	// visMu serialises SetPresenceVisible (commit, then memory).
	visMu sync.Mutex
	// seen caches last seen (0: none stored) as stored, so that lists of
	// friends, most of them offline, need not read bbolt for each: a
	// login reads them all.
	seen idCache[uint64, int64]
}

type localPresenceUser struct {
	nodes  []string
	online bool // announced online
	// settling: a settle is committing the last seen; a join meanwhile
	// keeps the user online.
	settling bool
}

// loadHidden reads the users who hide their presence.
func (l *localPresence) loadHidden(tx *bolt.Tx) error {
	l.hidden = make(map[uint64]bool)
	return tx.Bucket(bucketPresenceHidden).ForEach(func(k, _ []byte) error {
		if len(k) != 8 {
			return fmt.Errorf("store: presence_hidden key %x", k)
		}
		l.hidden[binary.BigEndian.Uint64(k)] = true
		return nil
	})
}

// user is uid's entry, made if missing. l.mu is held.
func (l *localPresence) user(uid uint64) *localPresenceUser {
	if l.users == nil {
		l.users = make(map[uint64]*localPresenceUser)
	}
	u := l.users[uid]
	if u == nil {
		u = &localPresenceUser{}
		l.users[uid] = u
	}
	return u
}

// forget drops uid's entry when nothing of it is left. l.mu is held.
func (l *localPresence) forget(uid uint64, u *localPresenceUser) {
	if len(u.nodes) == 0 && !u.online && !u.settling {
		delete(l.users, uid)
	}
}

func (s *BoltStore) PresenceJoin(_ context.Context, uid uint64, node string) (PresenceChange, error) {
	l := &s.presence
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.user(uid)
	if !slices.Contains(u.nodes, node) {
		u.nodes = append(u.nodes, node)
	}
	ch := PresenceChange{Hidden: l.hidden[uid]}
	if !u.online {
		u.online = true
		ch.Announce = !ch.Hidden
	}
	ch.State.Online = !ch.Hidden
	return ch, nil
}

func (s *BoltStore) PresenceLeave(_ context.Context, uid uint64, node string) (bool, error) {
	l := &s.presence
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.users[uid]
	if u == nil {
		return true, nil
	}
	u.nodes = slices.DeleteFunc(u.nodes, func(n string) bool { return n == node })
	last := len(u.nodes) == 0
	l.forget(uid, u)
	return last, nil
}

func (s *BoltStore) PresenceSettle(ctx context.Context, uid uint64, node string, atMs int64) (PresenceChange, error) {
	l := &s.presence
	l.mu.Lock()
	u := l.users[uid]
	if u != nil {
		u.nodes = slices.DeleteFunc(u.nodes, func(n string) bool { return n == node })
	}
	if u == nil || len(u.nodes) > 0 || !u.online || u.settling {
		// Nothing to announce: still online, or offline already.
		hidden := l.hidden[uid]
		if u != nil {
			l.forget(uid, u)
		}
		l.mu.Unlock()
		st, err := s.Presence(ctx, []uint64{uid})
		if err != nil {
			return PresenceChange{}, err
		}
		return PresenceChange{Hidden: hidden, State: st[0]}, nil
	}
	u.settling = true
	l.mu.Unlock()
	// The last seen is stored before the user is shown offline: a read
	// of the offline user finds it.
	err := s.committer.do(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPresence).Put(u64(uid), u64(uint64(atMs)))
	})
	if err == nil {
		l.seen.put(uid, atMs)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	u.settling = false
	hidden := l.hidden[uid]
	if err != nil || len(u.nodes) > 0 {
		// Not stored, or the user came back meanwhile: still online.
		l.forget(uid, u)
		return PresenceChange{Hidden: hidden, State: PresenceState{Online: !hidden}}, err
	}
	u.online = false
	l.forget(uid, u)
	ch := PresenceChange{Announce: !hidden, Hidden: hidden}
	if !hidden {
		ch.State.LastSeenMs = atMs
	}
	return ch, nil
}

func (s *BoltStore) Presence(_ context.Context, uids []uint64) ([]PresenceState, error) {
	out := make([]PresenceState, len(uids))
	var seen []int // indexes whose last seen is read from bbolt
	l := &s.presence
	l.mu.Lock()
	for i, uid := range uids {
		switch u := l.users[uid]; {
		case l.hidden[uid]:
		case u != nil && u.online:
			out[i].Online = true
		default:
			if ms, ok := l.seen.get(uid); ok {
				out[i].LastSeenMs = ms
			} else {
				seen = append(seen, i)
			}
		}
	}
	l.mu.Unlock()
	if len(seen) == 0 {
		return out, nil
	}
	gen := l.seen.generation()
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPresence)
		for _, i := range seen {
			var ms int64
			if v := b.Get(u64(uids[i])); len(v) == 8 {
				ms = int64(binary.BigEndian.Uint64(v))
			}
			out[i].LastSeenMs = ms
			// A settle committing meanwhile put a newer one.
			l.seen.putIfAbsent(uids[i], ms, gen)
		}
		return nil
	})
	return out, err
}

func (s *BoltStore) SetPresenceVisible(ctx context.Context, uid uint64, visible bool) (PresenceChange, error) {
	l := &s.presence
	l.visMu.Lock()
	defer l.visMu.Unlock()
	l.mu.Lock()
	was := l.hidden[uid]
	l.mu.Unlock()
	if was == !visible {
		st, err := s.Presence(ctx, []uint64{uid})
		if err != nil {
			return PresenceChange{}, err
		}
		return PresenceChange{Hidden: was, State: st[0]}, nil
	}
	err := s.committer.do(ctx, func(tx *bolt.Tx) error {
		if visible {
			return tx.Bucket(bucketPresenceHidden).Delete(u64(uid))
		}
		return tx.Bucket(bucketPresenceHidden).Put(u64(uid), nil)
	})
	if err != nil {
		return PresenceChange{}, err
	}
	l.mu.Lock()
	if visible {
		delete(l.hidden, uid)
	} else {
		l.hidden[uid] = true
	}
	l.mu.Unlock()
	st, err := s.Presence(ctx, []uint64{uid})
	if err != nil {
		return PresenceChange{}, err
	}
	return PresenceChange{Announce: true, Hidden: !visible, State: st[0]}, nil
}

// Redis keys (under the prefix P):
//
//	P {u:<uid>}:presence   HASH on ("1": announced online), seen (last seen ms), hidden ("1")
//	P {u:<uid>}:pnodes     SET the presence instances with a session of the user
//	P presence:nodes       ZSET presence instance -> its last heartbeat (Redis ms)
//	P presence:node:<inst> SET the users the instance has a session of, or has
//	                       not settled yet (its sweep index)
//	P presence:dead        ZSET dead instances being swept -> their last heartbeat
//	P presence:dead:<inst> SET what is left of a dead instance's sweep index

func (s *RedisStore) presenceKey(uid uint64) string   { return s.userTagKey(uid, "presence") }
func (s *RedisStore) presenceNodes(uid uint64) string { return s.userTagKey(uid, "pnodes") }
func (s *RedisStore) presenceIndex(node string) string {
	if s.cluster {
		return s.p + "{i:" + node + "}:presence:node"
	}
	return s.p + "presence:node:" + node
}

// presencePayload is Lua shared by the presence scripts:
// presencePayload(uid, online, seen, name) is the presence event's JSON.
// The epoch is the guard's (want): nodes drop an event of another store's
// contents.
const presencePayload = `
local function presencePayload(uid, online, seen, name)
  local payload = '{"type":"presence","user_id":' .. uid .. ',"online":' .. (online and 'true' or 'false')
  if seen > 0 then payload = payload .. ',"last_seen_ms":' .. string.format('%d', seen) end
  if name then payload = payload .. ',"username":"' .. name .. '"' end
  if want ~= '' then payload = payload .. ',"epoch":"' .. want .. '"' end
  return payload .. '}'
end
`

// presenceAnnounce is Lua for the presence scripts on one Redis:
// announce(p, uid, online, seen) publishes the user's presence to every
// friend's channel, and done(reply) is the reply as it is. (On a cluster,
// announce lists the friends instead, and done adds them to the reply:
// store_rcluster.go.)
const presenceAnnounce = presencePayload + `
local function announce(p, uid, online, seen)
  local payload = presencePayload(uid, online, seen, redis.call('HGET', p .. 'user:' .. uid, 'name'))
  for _, f in ipairs(redis.call('ZRANGE', p .. 'friends:' .. uid, 0, -1)) do
    redis.call('PUBLISH', p .. 'user:' .. f, payload)
  end
end
local function done(reply) return reply end
`

// The presence scripts, less their announce (presenceAnnounce, or the
// cluster's). Each returns done({announce, hidden, published, online,
// last seen}) (parsePresenceChange). The instance's index key is last in
// KEYS on one Redis; on a cluster it is in another slot, left out, and
// written apart (store_rcluster.go).
const (
	// KEYS: {u:<uid>}:presence, :pnodes (the user's slot), the instance's
	// index. ARGV: instance, uid, prefix, publish ("1"). Computes the
	// user's record and friends, and announces to each friend.
	luaPresenceJoin = `
redis.call('SADD', KEYS[2], ARGV[1])
if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[2]) end
local st = redis.call('HMGET', KEYS[1], 'on', 'hidden')
local hidden = st[2] == '1'
local h = hidden and 1 or 0
local vis = hidden and 0 or 1
if st[1] == '1' then return done({0, h, 0, vis, 0}) end
redis.call('HSET', KEYS[1], 'on', '1')
if hidden then return done({0, 1, 0, 0, 0}) end
if ARGV[4] == '1' then
  announce(ARGV[3], ARGV[2], true, 0)
  return done({1, 0, 1, 1, 0})
end
return done({1, 0, 0, 1, 0})`

	// KEYS: {u:<uid>}:presence, :pnodes, the instance's index (or what
	// is left of a dead one's). ARGV: instance, uid, last seen ms, prefix,
	// publish ("1").
	luaPresenceSettle = `
redis.call('SREM', KEYS[2], ARGV[1])
if KEYS[3] then redis.call('SREM', KEYS[3], ARGV[2]) end
local st = redis.call('HMGET', KEYS[1], 'on', 'hidden', 'seen')
local hidden = st[2] == '1'
local h = hidden and 1 or 0
if redis.call('SCARD', KEYS[2]) > 0 or st[1] ~= '1' then
  local online = (st[1] == '1' and not hidden) and 1 or 0
  local seen = 0
  if online == 0 and not hidden then seen = tonumber(st[3] or '0') end
  return done({0, h, 0, online, seen})
end
local at = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'on', '0', 'seen', ARGV[3])
if hidden then return done({0, 1, 0, 0, 0}) end
if ARGV[5] == '1' then
  announce(ARGV[4], ARGV[2], false, at)
  return done({1, 0, 1, 0, at})
end
return done({1, 0, 0, 0, at})`

	// KEYS: {u:<uid>}:presence. ARGV: visible ("1" or "0"), uid, prefix,
	// publish ("1").
	luaPresenceVisible = `
local st = redis.call('HMGET', KEYS[1], 'on', 'hidden', 'seen')
local was = st[2] == '1'
local hide = ARGV[1] ~= '1'
local online = (st[1] == '1' and not hide)
local seen = 0
if not hide and st[1] ~= '1' then seen = tonumber(st[3] or '0') end
local h = hide and 1 or 0
local on = online and 1 or 0
if was == hide then return done({0, h, 0, on, seen}) end
if hide then redis.call('HSET', KEYS[1], 'hidden', '1') else redis.call('HDEL', KEYS[1], 'hidden') end
if ARGV[4] == '1' then
  announce(ARGV[3], ARGV[2], online, seen)
  return done({1, h, 1, on, seen})
end
return done({1, h, 0, on, seen})`
)

var (
	scriptPresenceJoin    = guardedScript(presenceAnnounce + luaPresenceJoin)
	scriptPresenceSettle  = guardedScript(presenceAnnounce + luaPresenceSettle)
	scriptPresenceVisible = guardedScript(presenceAnnounce + luaPresenceVisible)

	// KEYS: {u:<uid>}:pnodes, the instance's index (on one Redis).
	// ARGV: instance, uid. Returns 1 when no instance has a session of
	// the user any more: the caller settles them after the grace, and
	// until then the user stays in the instance's index. Else the index
	// lets the user go.
	scriptPresenceLeave = guardedScript(`
redis.call('SREM', KEYS[1], ARGV[1])
if redis.call('SCARD', KEYS[1]) > 0 then
  if KEYS[2] then redis.call('SREM', KEYS[2], ARGV[2]) end
  return 0
end
return 1`)

	presenceScripts = []*redis.Script{scriptPresenceJoin, scriptPresenceLeave, scriptPresenceSettle,
		scriptPresenceVisible, scriptPresenceBeat, scriptPresenceClaim}
)

func parsePresenceChange(cmd redis.Cmder) (PresenceChange, error) {
	res, err := cmd.(*redis.Cmd).Int64Slice()
	if err != nil {
		return PresenceChange{}, redisErr(err)
	}
	if len(res) != 5 {
		return PresenceChange{}, fmt.Errorf("store: presence reply %v", res)
	}
	return PresenceChange{Announce: res[0] == 1, Hidden: res[1] == 1, Published: res[2] == 1,
		State: PresenceState{Online: res[3] == 1, LastSeenMs: res[4]}}, nil
}

func (s *RedisStore) publishFlag() string {
	if s.cfg.PublishMessages {
		return "1"
	}
	return "0"
}

// presenceScript runs a guarded presence script through the batcher.
func (s *RedisStore) presenceScript(ctx context.Context, script *redis.Script, keys []string, args ...any) (redis.Cmder, error) {
	keys, args = s.guard(ctx, keys, args...)
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{script.EvalSha(ctx, p, keys, args...)}
	})
	if err != nil {
		return nil, err
	}
	return cmds[0], nil
}

func (s *RedisStore) PresenceJoin(ctx context.Context, uid uint64, node string) (PresenceChange, error) {
	if s.cluster {
		return s.clusterPresenceJoin(ctx, uid, node)
	}
	cmd, err := s.presenceScript(ctx, scriptPresenceJoin,
		[]string{s.presenceKey(uid), s.presenceNodes(uid), s.presenceIndex(node)}, node, uid, s.p, s.publishFlag())
	if err != nil {
		return PresenceChange{}, err
	}
	return parsePresenceChange(cmd)
}

func (s *RedisStore) PresenceLeave(ctx context.Context, uid uint64, node string) (bool, error) {
	if s.cluster {
		return s.clusterPresenceLeave(ctx, uid, node)
	}
	cmd, err := s.presenceScript(ctx, scriptPresenceLeave, []string{s.presenceNodes(uid), s.presenceIndex(node)}, node, uid)
	if err != nil {
		return false, err
	}
	n, err := cmd.(*redis.Cmd).Int64()
	return n == 1, redisErr(err)
}

func (s *RedisStore) PresenceSettle(ctx context.Context, uid uint64, node string, atMs int64) (PresenceChange, error) {
	if s.cluster {
		return s.clusterSettle(ctx, uid, node, s.presenceIndex(node), atMs)
	}
	return s.settle(ctx, uid, node, s.presenceIndex(node), atMs)
}

func (s *RedisStore) settle(ctx context.Context, uid uint64, node, index string, atMs int64) (PresenceChange, error) {
	cmd, err := s.presenceScript(ctx, scriptPresenceSettle,
		[]string{s.presenceKey(uid), s.presenceNodes(uid), index}, node, uid, atMs, s.p, s.publishFlag())
	if err != nil {
		return PresenceChange{}, err
	}
	return parsePresenceChange(cmd)
}

func (s *RedisStore) SetPresenceVisible(ctx context.Context, uid uint64, visible bool) (PresenceChange, error) {
	v := "0"
	if visible {
		v = "1"
	}
	if s.cluster {
		return s.clusterPresence(ctx, scriptClusterPresenceVisible, []string{s.presenceKey(uid)}, v, uid, s.p, s.publishFlag())
	}
	cmd, err := s.presenceScript(ctx, scriptPresenceVisible, []string{s.presenceKey(uid)}, v, uid, s.p, s.publishFlag())
	if err != nil {
		return PresenceChange{}, err
	}
	return parsePresenceChange(cmd)
}

// Presence reads every user's hash in one pipeline (not the batcher's:
// a list of many friends or members must not hold up the sends queued
// behind it).
func (s *RedisStore) Presence(ctx context.Context, uids []uint64) ([]PresenceState, error) {
	out := make([]PresenceState, len(uids))
	if len(uids) == 0 {
		return out, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(uids))
	for i, uid := range uids {
		cmds[i] = pipe.HMGet(ctx, s.presenceKey(uid), "on", "hidden", "seen")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, redisErr(err)
	}
	for i, c := range cmds {
		v := c.Val()
		if len(v) != 3 || v[1] == "1" {
			continue // hidden (or unreadable): offline, no last seen
		}
		if v[0] == "1" {
			out[i].Online = true
			continue
		}
		if seen, ok := v[2].(string); ok {
			out[i].LastSeenMs, _ = strconv.ParseInt(seen, 10, 64)
		}
	}
	return out, nil
}

// Presence instances in Redis: each heartbeats into presence:nodes, and
// every instance sweeps up after the ones whose heartbeat is older than
// the node TTL. A sweep first claims a dead instance, in one script: it
// leaves presence:nodes, and its index moves to presence:dead:<inst>. An
// instance that beats again after that (cut off from Redis for longer than
// the TTL, not dead) finds itself gone from presence:nodes, and must start
// over as a new instance (PresenceBeat reports it). What was claimed is
// then settled user by user, the dead instance's last heartbeat as their
// last seen: any node may take part, and each settle is idempotent.

var (
	// KEYS: presence:nodes. ARGV: instance, first ("1": a new instance).
	// Returns 1, or 0 when the instance was claimed as dead.
	// Not guarded (neither is the claim): they touch no user's data, and
	// a node starting in the quiet period after a new epoch registers.
	scriptPresenceBeat = redis.NewScript(`
if ARGV[2] ~= '1' and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
return 1`)

	// KEYS: presence:nodes, presence:dead. ARGV: TTL ms, prefix, at most
	// this many. Claims instances silent for longer than the TTL. Returns
	// how many.
	scriptPresenceClaim = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])), 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
for i = 1, #dead, 2 do
  local inst = dead[i]
  redis.call('ZREM', KEYS[1], inst)
  local idx = ARGV[2] .. 'presence:node:' .. inst
  if redis.call('EXISTS', idx) == 1 then
    redis.call('RENAME', idx, ARGV[2] .. 'presence:dead:' .. inst)
    redis.call('ZADD', KEYS[2], dead[i + 1], inst)
  end
end
return #dead / 2`)
)

// PresenceBeat records that instance node is alive. first registers a new
// instance; afterwards a false return says it was claimed as dead (silent
// for longer than the TTL): its users were settled, and it must start over
// as a new instance.
func (s *RedisStore) PresenceBeat(ctx context.Context, node string, first bool) (bool, error) {
	f := "0"
	if first {
		f = "1"
	}
	n, err := scriptPresenceBeat.Run(ctx, s.rdb, []string{s.metaKey("presence:nodes")}, node, f).Int64()
	if err != nil {
		return false, redisErr(err)
	}
	return n == 1, nil
}

// sweptUser is one user a sweep settled.
type sweptUser struct {
	UID    uint64
	Change PresenceChange
}

// PresenceSweep claims the instances silent for longer than ttl, then
// settles up to max users of claimed ones, each last seen at their
// instance's last heartbeat. It returns them, and whether more are left.
func (s *RedisStore) PresenceSweep(ctx context.Context, ttl int64, max int) ([]sweptUser, bool, error) {
	claimKeys := []string{s.metaKey("presence:nodes"), s.metaKey("presence:dead")}
	var err error
	if s.cluster {
		err = scriptClusterPresenceClaim.Run(ctx, s.rdb, claimKeys, ttl, 16).Err()
	} else {
		err = scriptPresenceClaim.Run(ctx, s.rdb, claimKeys, ttl, s.p, 16).Err()
	}
	if err != nil {
		return nil, false, redisErr(err)
	}
	dead, err := s.rdb.ZRangeWithScores(ctx, s.metaKey("presence:dead"), 0, 15).Result()
	if err != nil {
		return nil, false, redisErr(err)
	}
	var out []sweptUser
	for _, d := range dead {
		inst, _ := d.Member.(string)
		index := s.presenceDeadIndex(inst)
		if s.cluster {
			// The claim moved the instance in {meta}; its index follows
			// here, in the instance's slot, again on every pass until it
			// is swept.
			if err := scriptClusterIndexDead.Run(ctx, s.rdb, []string{s.presenceIndex(inst), index}).Err(); err != nil {
				return out, true, redisErr(err)
			}
		}
		uids, err := s.deadUsers(ctx, inst, index, max-len(out))
		if err != nil {
			return out, true, err
		}
		var changes []PresenceChange
		if s.cluster {
			changes, err = s.clusterSettleAll(ctx, uids, inst, index, int64(d.Score))
		} else {
			changes, err = s.settleAll(ctx, uids, inst, index, int64(d.Score))
		}
		for i, ch := range changes {
			out = append(out, sweptUser{UID: uids[i], Change: ch})
		}
		if err != nil {
			return out, true, err
		}
		if len(out) >= max {
			return out, true, nil
		}
	}
	return out, false, nil
}

// settleAll settles users of a dead instance, last seen at atMs, in one
// pipeline: a dead node may have had many users.
func (s *RedisStore) settleAll(ctx context.Context, uids []uint64, inst, index string, atMs int64) ([]PresenceChange, error) {
	if len(uids) == 0 {
		return nil, nil
	}
	keys := make([][]string, len(uids))
	args := make([][]any, len(uids))
	for i, uid := range uids {
		keys[i], args[i] = s.guard(ctx, []string{s.presenceKey(uid), s.presenceNodes(uid), index},
			inst, uid, atMs, s.p, s.publishFlag())
	}
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		out := make([]redis.Cmder, len(uids))
		for i := range uids {
			out[i] = scriptPresenceSettle.EvalSha(ctx, p, keys[i], args[i]...)
		}
		return out
	})
	if err != nil {
		return nil, err
	}
	out := make([]PresenceChange, 0, len(cmds))
	for _, c := range cmds {
		ch, err := parsePresenceChange(c)
		if err != nil {
			return out, err
		}
		out = append(out, ch)
	}
	return out, nil
}

// deadUsers takes up to n users of a dead instance's index to settle; when
// it is empty (a set that empties is gone), the instance is swept and
// forgotten.
func (s *RedisStore) deadUsers(ctx context.Context, inst, index string, n int) ([]uint64, error) {
	members, err := s.rdb.SRandMemberN(ctx, index, int64(n)).Result()
	if err != nil {
		return nil, redisErr(err)
	}
	if len(members) == 0 {
		return nil, redisErr(s.rdb.ZRem(ctx, s.metaKey("presence:dead"), inst).Err())
	}
	uids := make([]uint64, 0, len(members))
	for _, m := range members {
		uid, err := strconv.ParseUint(m, 10, 64)
		if err != nil {
			s.rdb.SRem(ctx, index, m) // not a user id: nothing to settle
			continue
		}
		uids = append(uids, uid)
	}
	return uids, nil
}
