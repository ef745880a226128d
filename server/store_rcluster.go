package server

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// The Redis store on a Redis Cluster (docs/cluster.md, "Redis Cluster").
//
// A script there touches the keys of one hash slot, so every key of one
// atomic step shares a hash tag:
//
//	P{u:<uid>}:user, :friends, :fpend, :blocked, :groups, :inbox[:<slot>],
//	    :bodies[:<slot>], :session, and the {u:<uid>} keys of one Redis
//	P{n:<lower name>}:username
//	P{c:<conv>}:seq, :log, :first, :dedup:<uid>:<client id>
//	P{c:g<gid>}:group, :group:members, :group:roles, :group:joined
//	P{meta}:user:seq, group:seq, friend:seq, epoch, epoch:quiet, epoch:gen,
//	    epoch:copied, schema, presence:nodes, presence:dead, migration
//	    (migrate_cluster.go)
//	P{i:<instance>}:presence:node, :presence:dead
//	P{s<base 36>}:epoch, :epoch:quiet, :epoch:gen   (epoch_cluster.go)
//
// and the user and group channels are shard channels in the slot of their
// keys (protocol.ShardUserChannel, ShardGroupChannel). Messages in an
// inbox have their body beside it (:bodies, member -> body): one copy per
// box instead of one shared msg:<id> with a count of references, which
// would live in another slot.
//
// An operation that spans slots runs as ordered steps, each one script in
// one slot, each idempotent. The order is chosen so that a crash between
// two steps loses nothing acknowledged (the caller answers only after the
// last) and shows no half state that a retry or a later read does not
// mend. Each operation below says which steps, in which order, and what
// a crash between them leaves.

var (
	// KEYS: one counter. Returns it counted up.
	scriptClusterIncr = guardedScript(`return redis.call('INCR', KEYS[1])`)

	// KEYS: {u:<id>}:user. ARGV: name, hash, nonce. Writes the record of a
	// user being registered, marked pending ("pend"): not a user until
	// its name is claimed.
	scriptClusterUserRecord = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'hash', ARGV[2], 'nonce', ARGV[3], 'pend', '1')
return 1`)

	// KEYS: {n:<lower>}:username. ARGV: user id. Claims the name for the
	// id unless it names someone already; returns the id it names.
	scriptClusterClaimName = guardedScript(`
local cur = redis.call('GET', KEYS[1])
if cur then return tonumber(cur) end
redis.call('SET', KEYS[1], ARGV[1])
return tonumber(ARGV[1])`)

	// KEYS: {u:<id>}:user. ARGV: "1" to keep the pending record (its
	// name was claimed), "0" to drop it (the name was taken).
	scriptClusterUserSettle = guardedScript(`
if redis.call('HGET', KEYS[1], 'pend') ~= '1' then return 0 end
if ARGV[1] == '1' then redis.call('HDEL', KEYS[1], 'pend') else redis.call('DEL', KEYS[1]) end
return 1`)

	// KEYS: {u:<a>}:friends, :fpend, :blocked. ARGV: b, order score,
	// friend limit, now ms. a's side of a new friendship, pending.
	// Returns 0 if a already has b (not pending), -3 if a blocks b, -2
	// if a has the limit, else 1.
	scriptClusterFriendPropose = guardedScript(`
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if cur and not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
if KEYS[3] and redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return -3 end
local lim = tonumber(ARGV[3])
if not cur and lim > 0 and redis.call('ZCARD', KEYS[1]) >= lim then return -2 end
if not cur then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1`)

	// KEYS: {u:<b>}:friends, :fpend, :blocked. ARGV: a, order score,
	// friend limit. b's side, final (and b's own pending proposal to a,
	// if any, with it). Returns -3 if b blocks a, -2 if b has the limit,
	// else 1.
	scriptClusterFriendAccept = guardedScript(`
if KEYS[3] and redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return -3 end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local lim = tonumber(ARGV[3])
  if lim > 0 and redis.call('ZCARD', KEYS[1]) >= lim then return -2 end
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1`)

	// KEYS: {u:<a>}:friends, :fpend. ARGV: b, "1" to confirm a's pending
	// side, "0" to take it back. Returns 0 if it was not pending.
	scriptClusterFriendSettle = guardedScript(`
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] ~= '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1`)

	// KEYS: {u:<a>}:friends, :fpend. ARGV: b, now ms. The first step of
	// a RemoveFriend: a's side of the friendship marked pending (hidden
	// from a's list and presence) if a has b. Returns 1 if a had b, else 0.
	scriptClusterFriendUnpropose = guardedScript(`
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1`)

	// KEYS: {u:<x>}:friends, :fpend. ARGV: y. Drops y from x's side of a
	// friendship, pending or not. Returns 1 if x had y, else 0.
	scriptClusterFriendDrop = guardedScript(`
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])`)

	// KEYS: {u:<uid>}:groups. ARGV: gid, group limit (0: none), the
	// user's channel, a group_member event ("": none). Adds the group to
	// the user's set (-2: at the limit) and publishes the event on the
	// user's channel, which is in this slot.
	scriptClusterUserGroupAdd = guardedScript(`
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  local lim = tonumber(ARGV[2])
  if lim > 0 and redis.call('SCARD', KEYS[1]) >= lim then return -2 end
  redis.call('SADD', KEYS[1], ARGV[1])
end
if ARGV[4] ~= '' then redis.call('SPUBLISH', ARGV[3], ARGV[4]) end
return 1`)

	// KEYS: {u:<uid>}:groups. ARGV: gid, the user's channel, a
	// group_member event ("": none).
	scriptClusterUserGroupRemove = guardedScript(`
redis.call('SREM', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then redis.call('SPUBLISH', ARGV[2], ARGV[3]) end
return 1`)

	// KEYS: the group's record, :members, :roles. ARGV: name,
	// description, creator, the creator's role. The group's join order
	// counts in its own record ("mseq"): no global counter.
	scriptClusterGroupCreate = guardedScript(`
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'description', ARGV[2], 'creator', ARGV[3], 'mseq', '1')
redis.call('ZADD', KEYS[2], 1, ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
return 1`)

	// KEYS: the group's record, :members, :roles, :joined, and its
	// conversation's seq (one slot). ARGV: uid, role, member limit.
	// Returns {-1} (no group), {-3} (full), {0, JoinedSeq} (a member
	// already), {1, JoinedSeq}: the conversation's seq read in the same
	// step that adds the member, as on one Redis.
	scriptClusterGroupJoin = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return {0, tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')} end
local lim = tonumber(ARGV[3])
if lim > 0 and redis.call('ZCARD', KEYS[2]) >= lim then return {-3, 0} end
redis.call('ZADD', KEYS[2], redis.call('HINCRBY', KEYS[1], 'mseq', 1), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local joined = redis.call('GET', KEYS[5]) or '0'
redis.call('HSET', KEYS[4], ARGV[1], joined)
return {1, tonumber(joined)}`)

	// KEYS: the group's record, :members, :roles, :joined, and its
	// conversation's seq. ARGV: uid. Returns {-1} (no group), {0} (not a
	// member), {1, the conversation's seq}.
	scriptClusterGroupLeave = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return {0, 0} end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return {1, tonumber(redis.call('GET', KEYS[5]) or '0')}`)

	// The first step of an append, in the conversation's slot: the dedup
	// check, the seq, the log (luaSeqAndLog), and for a group message the
	// recipients, read in the step that takes the seq.
	//
	// KEYS: {c:<conv>}:seq, :log, :first, the dedup key, and for a group
	// message the group's :members, :joined and :inflight. ARGV: body
	// without seq, sent_at (8 bytes), history max messages, cutoff ms, TTL
	// ms, dedup TTL s (0: no dedup), msg_id, sender uid, now ms. A group
	// message's seq goes into :inflight (scored by now) until its last
	// step (scriptClusterGroupPublish), so that a leave waits for it
	// (clusterLeaveGroup). Returns {0, seq, history
	// trimmed, sender a member (0/1), recipients...}, or for a duplicate
	// {1, dedup value, the first message's log value (false: trimmed),
	// sender a member, recipients...}, the recipients being the members
	// but the sender who joined below its seq: those the first attempt
	// sent it to, less any who left since.
	scriptClusterAppendConv = guardedScript(`
local group = KEYS[5] ~= nil
local function recipients(out, below)
  local senderIn = 0
  local ms = redis.call('ZRANGE', KEYS[5], 0, -1)
  for i = 1, #ms, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, #ms) do chunk[#chunk + 1] = ms[j] end
    local js = {}
    if below > 0 then js = redis.call('HMGET', KEYS[6], unpack(chunk)) end
    for j, u in ipairs(chunk) do
      if u == ARGV[8] then senderIn = 1
      elseif below == 0 or tonumber(js[j] or '0') < below then out[#out + 1] = u end
    end
  end
  return senderIn
end
local dedup = tonumber(ARGV[6]) > 0
if dedup then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    -- A write, for the WAIT after it (as in scriptAppend).
    redis.call('SET', KEYS[4], prev, 'KEEPTTL')
    local out = {1, prev, false, 0}
    local first = tonumber(string.match(prev, ':(%d+)$') or '0')
    if first > 0 then
      out[3] = redis.call('HGET', KEYS[2], string.format('%d', first))
      if group then out[4] = recipients(out, first) end
    end
    return out
  end
end
local seqKey, logKey, firstKey = KEYS[1], KEYS[2], KEYS[3]
local bodyIn, sentAt = ARGV[1], ARGV[2]
local maxmsgs, cutoff, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
` + luaSeqAndLog + `
if dedup then redis.call('SET', KEYS[4], ARGV[7] .. ':' .. seqs, 'EX', ARGV[6]) end
local out = {0, seq, htrimmed, 0}
if group then
  out[4] = recipients(out, 0)
  local now = tonumber(ARGV[9])
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - 60000)
  redis.call('ZADD', KEYS[7], now, seqs)
end
return out`)

	// The last step of a group message's append, in the group's slot: its
	// seq out of :inflight, the message published on the group's channel
	// (once every recipient's inbox has it), and its dedup entry marked
	// done (scriptClusterDedupDone). KEYS: the group's :inflight, the
	// dedup key. ARGV: seq, channel, payload ("": none to publish).
	scriptClusterGroupPublish = redis.NewScript(`
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then redis.call('SPUBLISH', ARGV[2], ARGV[3]) end
` + luaDedupDone)

	// KEYS: a dedup key. Marks its entry done: every step of the append
	// ran, so a resend returns the first message and delivers nothing
	// again (as on one Redis).
	scriptClusterDedupDone = redis.NewScript(luaDedupDone)

	// KEYS: the group's :inflight. ARGV: seq, since ms. Counts the group
	// messages up to seq still being appended, left since (older ones
	// were left by a node that died mid-append: not waited for).
	scriptClusterInflight = redis.NewScript(`
local n = 0
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf')) do
  if tonumber(s) <= tonumber(ARGV[1]) then n = n + 1 end
end
return n`)

	// The second step of an append, once per user it reaches, in the
	// user's slot: the message into each box (inbox and body) of the
	// user's devices, each trimmed to the limit; the conversation into
	// the user's index; for the sender, the read mark; then the user's
	// channel, which is in this slot: published to, or (a group message,
	// published once on the group's channel) asked whether some node
	// hears it. Running it twice changes nothing more.
	//
	// KEYS: {u:<uid>}:devices, :convs, :read. ARGV: prefix, uid, member
	// (16 hex), body with seq, inbox limit, sent_at ms, the sending
	// device's slot (-1: a recipient, every device; -2: no boxes),
	// conversation to index ("": none), conversation to mark read ("":
	// none), its seq, channel, payload, and what to do with them:
	// "always" (publish), "copies" (publish if a box took it), "count"
	// (whether the channel has a subscriber), "" (nothing). Returns
	// {trimmed, 1 if the channel had a subscriber, boxes}.
	scriptClusterAppendUser = guardedScript(`
local p, sent = ARGV[1], tonumber(ARGV[6])
local function box(uid, slot)
  local sfx = ''
  if slot ~= 0 then sfx = ':' .. slot end
  return {p .. '{u:' .. uid .. '}:inbox' .. sfx, p .. '{u:' .. uid .. '}:bodies' .. sfx}
end
` + luaBoxes + `
local inboxes, n = {}, 0
local skip = tonumber(ARGV[7])
if skip ~= -2 then n = boxes(ARGV[2], skip, inboxes) end
local trimmed, limit = 0, tonumber(ARGV[5])
for _, b in ipairs(inboxes) do
  redis.call('ZADD', b[1], 0, ARGV[3])
  redis.call('HSET', b[2], ARGV[3], ARGV[4])
  local over = redis.call('ZCARD', b[1]) - limit
  if over > 0 then
    local popped = redis.call('ZPOPMIN', b[1], over)
    for j = 1, #popped, 2 do
      redis.call('HDEL', b[2], popped[j])
      trimmed = trimmed + 1
    end
  end
end
if ARGV[8] ~= '' then redis.call('SADD', KEYS[2], ARGV[8]) end
if ARGV[9] ~= '' and tonumber(redis.call('HGET', KEYS[3], ARGV[9]) or '0') < tonumber(ARGV[10]) then
  redis.call('HSET', KEYS[3], ARGV[9], ARGV[10])
end
local online, mode = 0, ARGV[13]
if mode == 'always' or (mode == 'copies' and n > 0) then
  if redis.call('SPUBLISH', ARGV[11], ARGV[12]) > 0 then online = 1 end
elseif mode == 'count' then
  if redis.call('PUBSUB', 'SHARDNUMSUB', ARGV[11])[2] > 0 then online = 1 end
end
return {trimmed, online, n}`)

	// KEYS: a box's inbox and bodies. ARGV: members.
	scriptClusterAck = guardedScript(`
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 0`)

	// luaRegisterDevice with the box and its bodies under the user's tag.
	scriptClusterRegisterDevice = guardedScript(`
local function forgetBox(p, uid, slot)
  local sfx = ''
  if slot ~= 0 then sfx = ':' .. slot end
  redis.call('DEL', p .. '{u:' .. uid .. '}:inbox' .. sfx, p .. '{u:' .. uid .. '}:bodies' .. sfx)
end
` + luaRegisterDevice)

	scriptClusterPresenceJoin    = guardedScript(clusterPresenceAnnounce + luaPresenceJoin)
	scriptClusterPresenceSettle  = guardedScript(clusterPresenceAnnounce + luaPresenceSettle)
	scriptClusterPresenceVisible = guardedScript(clusterPresenceAnnounce + luaPresenceVisible)

	// KEYS: presence:nodes, presence:dead ({meta}). ARGV: TTL ms, at most
	// this many. Moves the instances silent for longer than the TTL to the
	// dead; their indexes (other slots) follow in scriptClusterIndexDead.
	scriptClusterPresenceClaim = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])), 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #dead, 2 do
  redis.call('ZREM', KEYS[1], dead[i])
  redis.call('ZADD', KEYS[2], dead[i + 1], dead[i])
end
return #dead / 2`)

	// KEYS: {i:<inst>}:presence:node, :presence:dead. Moves what is in a
	// claimed instance's index into its dead one (kept if some of it was
	// there already: the move runs again after a crash, and an instance
	// that was not dead may have added to its index since).
	scriptClusterIndexDead = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SUNIONSTORE', KEYS[2], KEYS[2], KEYS[1])
  redis.call('DEL', KEYS[1])
end
return 0`)

	clusterScripts = []*redis.Script{scriptClusterIncr, scriptClusterUserRecord, scriptClusterClaimName,
		scriptClusterUserSettle, scriptClusterFriendPropose, scriptClusterFriendAccept, scriptClusterFriendSettle,
		scriptClusterFriendUnpropose, scriptClusterFriendDrop, scriptClusterBlockAdd,
		scriptClusterUserGroupAdd, scriptClusterUserGroupRemove, scriptClusterGroupCreate, scriptClusterGroupJoin,
		scriptClusterGroupLeave, scriptClusterAppendConv, scriptClusterAppendUser, scriptClusterAck,
		scriptClusterGroupPublish, scriptClusterInflight, scriptClusterDedupDone,
		scriptClusterRegisterDevice, scriptClusterPresenceJoin, scriptClusterPresenceSettle,
		scriptClusterPresenceVisible, scriptClusterPresenceClaim, scriptClusterIndexDead}
)

// luaDedupDone marks the dedup entry KEYS[#KEYS] done: ":d" after its
// "<msg_id>:<seq>", its TTL kept.
const luaDedupDone = `
local v = redis.call('GET', KEYS[#KEYS])
if v and string.sub(v, -2) ~= ':d' then redis.call('SET', KEYS[#KEYS], v .. ':d', 'KEEPTTL') end
return 0`

// clusterPresenceAnnounce is presenceAnnounce on a cluster: announce lists
// the payload and the user's friends (less pending ones) to tell, which
// done adds to the reply after its five numbers, and the caller publishes
// to each friend's channel, in other slots.
const clusterPresenceAnnounce = presencePayload + `
local told = nil
local function announce(p, uid, online, seen)
  local u = p .. '{u:' .. uid .. '}:'
  told = {presencePayload(uid, online, seen, redis.call('HGET', u .. 'user', 'name'))}
  local pend = {}
  for _, f in ipairs(redis.call('ZRANGE', u .. 'fpend', 0, -1)) do pend[f] = true end
  for _, f in ipairs(redis.call('ZRANGE', u .. 'friends', 0, -1)) do
    if not pend[f] then told[#told + 1] = f end
  end
end
local function done(reply)
  if told then for _, x in ipairs(told) do reply[#reply + 1] = x end end
  return reply
end
`

// run runs one guarded script through the batcher (so that a pipeline
// carries it, and --redis-min-replicas can WAIT for it: redis_wait.go).
func (s *RedisStore) run(ctx context.Context, script *redis.Script, keys []string, args ...any) *redis.Cmd {
	keys, args = s.guard(ctx, keys, args...)
	return s.runGuarded(ctx, script, keys, args...)
}

// runGuarded is run with keys and args that went through guard already.
func (s *RedisStore) runGuarded(ctx context.Context, script *redis.Script, keys []string, args ...any) *redis.Cmd {
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{script.EvalSha(ctx, p, keys, args...)}
	})
	if err != nil && len(cmds) == 0 {
		c := redis.NewCmd(ctx)
		c.SetErr(err)
		return c
	}
	return cmds[0].(*redis.Cmd)
}

// runInt is run, read as a number.
func (s *RedisStore) runInt(ctx context.Context, script *redis.Script, keys []string, args ...any) (int64, error) {
	n, err := s.run(ctx, script, keys, args...).Int64()
	return n, redisErr(err)
}

// ---- accounts ----

// clusterCreateUser registers a user in four steps: (1) the next id
// ({meta}), (2) the record, pending (the user's slot), (3) the name
// claimed for the id (the name's slot), (4) the record no longer pending.
// The claim is the commit point: a user exists once their name names
// them. A crash after 1 wastes an id; after 2, a pending record nothing
// names (never a user: reads treat a pending record as absent); after 3,
// a pending record its name names, which the first password login of the
// name makes final (Credentials). A name taken meanwhile drops the record.
func (s *RedisStore) clusterCreateUser(ctx context.Context, name string, hash []byte) (User, error) {
	gen := s.cacheGen.Load()
	lower := strings.ToLower(name)
	switch err := s.rdb.Get(ctx, s.usernameKey(lower)).Err(); {
	case err == nil:
		return User{}, ErrUsernameTaken
	case !errors.Is(err, redis.Nil):
		return User{}, redisErr(err)
	}
	id, err := s.runInt(ctx, scriptClusterIncr, []string{s.metaKey("user:seq")})
	if err != nil {
		return User{}, err
	}
	uid := uint64(id)
	nonce := newNonce()
	if _, err := s.runInt(ctx, scriptClusterUserRecord, []string{s.userKey(uid)}, name, hash, strconv.FormatUint(nonce, 10)); err != nil {
		return User{}, err
	}
	owner, err := s.runInt(ctx, scriptClusterClaimName, []string{s.usernameKey(lower)}, uid)
	if err != nil {
		return User{}, err
	}
	if owner != id {
		_, err := s.runInt(ctx, scriptClusterUserSettle, []string{s.userKey(uid)}, "0")
		if err != nil {
			return User{}, err
		}
		return User{}, ErrUsernameTaken
	}
	if _, err := s.runInt(ctx, scriptClusterUserSettle, []string{s.userKey(uid)}, "1"); err != nil {
		return User{}, err
	}
	s.learn(gen, func() { s.names.put(uid, name); s.sawUser(uid) })
	return User{ID: uid, Name: name, PasswordHash: hash, Nonce: nonce}, nil
}

// settlePendingUser makes final the pending record of a user whose name
// names them (a registration cut off before its last step).
func (s *RedisStore) settlePendingUser(ctx context.Context, uid uint64) error {
	_, err := s.runInt(ctx, scriptClusterUserSettle, []string{s.userKey(uid)}, "1")
	return err
}

// usersExist reports, for each id, whether the user exists (a record not
// pending), in one pipeline.
func (s *RedisStore) usersExist(ctx context.Context, uids ...uint64) ([]bool, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(uids))
	for i, uid := range uids {
		cmds[i] = pipe.HMGet(ctx, s.userKey(uid), "name", "pend")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, redisErr(err)
	}
	out := make([]bool, len(uids))
	for i, c := range cmds {
		v := c.Val()
		out[i] = len(v) == 2 && v[0] != nil && v[1] == nil
	}
	return out, nil
}

// ---- friends ----

// friendRepairAfter is how old a pending side of a friendship must be
// before a read mends it: older than any AddFriend still under way.
const friendRepairAfter = 10 * time.Second

// clusterAddFriend makes a and b friends in steps: (1) the order score
// ({meta}); (2) b into a's friends, pending (a's slot; a pending friend is
// not listed, and not told of presence); (3) a into b's friends (b's
// slot), final; (4) a's side final. The limits and blocks (a's, b's) are
// checked in 2 and 3; a refusal in 3 takes 2 back. A crash after 2 or 3 leaves a's side pending:
// a's next Friends, once it is older than friendRepairAfter, makes it
// final if b's side has a, and takes it back if not. Until then b lists a
// and a does not list b.
func (s *RedisStore) clusterAddFriend(ctx context.Context, a, b uint64, lim Limits) error {
	exist, err := s.usersExist(ctx, a, b)
	if err != nil {
		return err
	}
	if !exist[0] || !exist[1] {
		return ErrUserNotFound
	}
	score, err := s.runInt(ctx, scriptClusterIncr, []string{s.metaKey("friend:seq")})
	if err != nil {
		return err
	}
	switch r, err := s.runInt(ctx, scriptClusterFriendPropose, []string{s.friendsKey(a), s.userTagKey(a, "fpend"), s.blockedKey(a)},
		b, score, lim.FriendsPerUser, time.Now().UnixMilli()); {
	case err != nil:
		return err
	case r == 0:
		return ErrAlreadyFriends
	case r == -3:
		return ErrBlocked
	case r == -2:
		return ErrTooManyFriends
	}
	r, err := s.runInt(ctx, scriptClusterFriendAccept, []string{s.friendsKey(b), s.userTagKey(b, "fpend"), s.blockedKey(b)}, a, score, lim.FriendsPerUser)
	if err != nil {
		return err
	}
	keep := "1"
	if r < 0 {
		keep = "0"
	}
	if _, err := s.runInt(ctx, scriptClusterFriendSettle, []string{s.friendsKey(a), s.userTagKey(a, "fpend")}, b, keep); err != nil {
		return err
	}
	switch r {
	case -2:
		return ErrTooManyFriends
	case -3:
		return ErrBlocked
	}
	return nil
}

// clusterRemoveFriend ends a's friendship with b in steps: (1) a's side
// marked pending (a's slot: from then on a does not list b, nor tell b of
// a's presence); (2) a dropped from b's friends (b's slot); (3) b dropped
// from a's (a's slot). Neither side having the other is ErrNotFriends; a
// call that finds one side only (a crash's leftover) finishes the other.
// A crash after 1 leaves a's side pending while b's still has a: a's next
// Friends, once it is older than friendRepairAfter, makes it final again
// (the removal did not happen, and was not answered OK). A crash after 2
// leaves a's side pending while b's lacks a: that read takes it back,
// finishing the removal. Either way neither lists the other one-sidedly
// for longer than friendRepairAfter after a's next Friends, and a retry
// of the RemoveFriend finishes it at once.
func (s *RedisStore) clusterRemoveFriend(ctx context.Context, a, b uint64) error {
	had, err := s.runInt(ctx, scriptClusterFriendUnpropose, []string{s.friendsKey(a), s.userTagKey(a, "fpend")}, b, time.Now().UnixMilli())
	if err != nil {
		return err
	}
	other, err := s.runInt(ctx, scriptClusterFriendDrop, []string{s.friendsKey(b), s.userTagKey(b, "fpend")}, a)
	if err != nil {
		return err
	}
	if _, err := s.runInt(ctx, scriptClusterFriendDrop, []string{s.friendsKey(a), s.userTagKey(a, "fpend")}, b); err != nil {
		return err
	}
	if had == 0 && other == 0 {
		return ErrNotFriends
	}
	return nil
}

// clusterFriendIDs lists uid's friends, less pending ones, and mends
// those pending for longer than friendRepairAfter (see clusterAddFriend).
func (s *RedisStore) clusterFriendIDs(ctx context.Context, uid uint64) ([]uint64, error) {
	pipe := s.rdb.Pipeline()
	all := pipe.ZRange(ctx, s.friendsKey(uid), 0, -1)
	pend := pipe.ZRangeWithScores(ctx, s.userTagKey(uid, "fpend"), 0, -1)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, redisErr(err)
	}
	pending := make(map[uint64]bool)
	old := time.Now().Add(-friendRepairAfter).UnixMilli()
	for _, z := range pend.Val() {
		m, _ := z.Member.(string)
		f, err := strconv.ParseUint(m, 10, 64)
		if err != nil {
			continue
		}
		if int64(z.Score) > old {
			pending[f] = true
			continue
		}
		// Left by an AddFriend that did not finish: final if the other
		// side has uid (not pending), else taken back.
		other := s.rdb.ZScore(ctx, s.friendsKey(f), strconv.FormatUint(uid, 10))
		otherPend := s.rdb.ZScore(ctx, s.userTagKey(f, "fpend"), strconv.FormatUint(uid, 10))
		keep := "0"
		if other.Err() == nil && errors.Is(otherPend.Err(), redis.Nil) {
			keep = "1"
		} else if !errors.Is(other.Err(), redis.Nil) && other.Err() != nil {
			return nil, redisErr(other.Err())
		}
		if _, err := s.runInt(ctx, scriptClusterFriendSettle, []string{s.friendsKey(uid), s.userTagKey(uid, "fpend")}, f, keep); err != nil {
			return nil, err
		}
		pending[f] = keep == "0"
	}
	ids := parseIDs(all.Val())
	out := ids[:0]
	for _, id := range ids {
		if !pending[id] {
			out = append(out, id)
		}
	}
	return out, nil
}

// ---- groups ----

// clusterMemberEvent is the group_member event of uid in gid (joined or
// left, at JoinedSeq seq) for the user's channel, "" without publishing.
func (s *RedisStore) clusterMemberEvent(ctx context.Context, gid, uid uint64, joined bool, seq uint64) (string, error) {
	if !s.cfg.PublishMessages {
		return "", nil
	}
	payload, err := encodeChannelEvent(Event{Epoch: s.requestOrStoreEpoch(ctx),
		GroupMember: &GroupMemberNotice{UserID: uid, GroupID: gid, Joined: joined, Seq: seq}})
	return string(payload), err
}

// clusterCreateGroup makes a group in steps: (1) its id ({meta}); (2)
// the id into the creator's groups, with the limit check and the
// group_member event on the creator's channel (the creator's slot); (3)
// the group with its creator as member (the group's slot). A crash after
// 2 leaves an id in the creator's set with no group behind it: the
// group lists leave it out (groups), and it only counts towards the
// creator's group limit.
func (s *RedisStore) clusterCreateGroup(ctx context.Context, creator uint64, name, desc string, lim Limits) (Group, error) {
	exist, err := s.usersExist(ctx, creator)
	if err != nil {
		return Group{}, err
	}
	if !exist[0] {
		return Group{}, ErrUserNotFound
	}
	if lim.GroupsPerUser > 0 {
		n, err := s.rdb.SCard(ctx, s.userGroupsKey(creator)).Result()
		if err != nil {
			return Group{}, redisErr(err)
		}
		if n >= int64(lim.GroupsPerUser) {
			return Group{}, ErrTooManyGroups
		}
	}
	id, err := s.runInt(ctx, scriptClusterIncr, []string{s.metaKey("group:seq")})
	if err != nil {
		return Group{}, err
	}
	gid := uint64(id)
	payload, err := s.clusterMemberEvent(ctx, gid, creator, true, 0)
	if err != nil {
		return Group{}, err
	}
	switch r, err := s.runInt(ctx, scriptClusterUserGroupAdd, []string{s.userGroupsKey(creator)},
		gid, lim.GroupsPerUser, s.userChannel(creator), payload); {
	case err != nil:
		return Group{}, err
	case r == -2:
		return Group{}, ErrTooManyGroups
	}
	g := s.groupKey(gid)
	if _, err := s.runInt(ctx, scriptClusterGroupCreate, []string{g, g + ":members", g + ":roles"},
		name, desc, creator, int(chatpb.Role_ROLE_CREATOR)); err != nil {
		return Group{}, err
	}
	names, err := s.usernames(ctx, []uint64{creator})
	if err != nil {
		return Group{}, err
	}
	return Group{ID: gid, Name: name, Description: desc,
		Members: []Member{{UserID: creator, Username: names[creator], Role: chatpb.Role_ROLE_CREATOR}}}, nil
}

// clusterJoinGroup adds uid to gid in two steps: (1) the member, with
// the conversation's seq as JoinedSeq (the group's slot, where its
// conversation is); (2) the group into the user's set, with the
// group_member event on the user's channel (the user's slot). Every
// message stored after 1 reaches the new member's inbox. A crash after 1
// leaves a member whose own list lacks the group (and whose nodes do not
// hear it, so its messages arrive at the next login, from the inbox):
// joining again mends it, step 2 running for a member too. The user's
// group limit is checked by a read before step 1, so joins racing each
// other may pass it by one.
func (s *RedisStore) clusterJoinGroup(ctx context.Context, gid, uid uint64, lim Limits) error {
	g := s.groupKey(gid)
	pipe := s.rdb.Pipeline()
	exists := pipe.Exists(ctx, g)
	member := pipe.ZScore(ctx, g+":members", strconv.FormatUint(uid, 10))
	size := pipe.ZCard(ctx, g+":members")
	count := pipe.SCard(ctx, s.userGroupsKey(uid))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return redisErr(err)
	}
	if exists.Val() == 0 {
		return ErrGroupNotFound
	}
	exist, err := s.usersExist(ctx, uid)
	if err != nil {
		return err
	}
	switch {
	case !exist[0]:
		return ErrUserNotFound
	case member.Err() == nil:
		// A member already: step 2 again, in case a join stopped after 1.
	case lim.MembersPerGroup > 0 && size.Val() >= int64(lim.MembersPerGroup):
		return ErrGroupFull
	case lim.GroupsPerUser > 0 && count.Val() >= int64(lim.GroupsPerUser):
		return ErrTooManyGroups
	}
	res, err := s.run(ctx, scriptClusterGroupJoin, []string{g, g + ":members", g + ":roles", g + ":joined",
		s.convKey(GroupConversation(gid)) + "seq"}, uid, int(chatpb.Role_ROLE_MEMBER), lim.MembersPerGroup).Int64Slice()
	if err != nil || len(res) != 2 {
		return fmt.Errorf("store: join reply %v: %w", res, redisErr(err))
	}
	switch res[0] {
	case -1:
		return ErrGroupNotFound
	case -3:
		return ErrGroupFull
	}
	payload, err := s.clusterMemberEvent(ctx, gid, uid, true, uint64(res[1]))
	if err != nil {
		return err
	}
	if _, err := s.runInt(ctx, scriptClusterUserGroupAdd, []string{s.userGroupsKey(uid)}, gid, 0, s.userChannel(uid), payload); err != nil {
		return err
	}
	if res[0] == 0 {
		return ErrAlreadyMember
	}
	return nil
}

// clusterLeaveGroup removes uid from gid in three steps: (1) the member
// out of the group, reading the conversation's seq (the group's slot);
// (2) a wait until every message up to that seq has been published on the
// group's channel (the group's :inflight); (3) the group out of the
// user's set, with the group_member event (the user's slot). The event
// makes the user's nodes stop hearing the group: after 2, no message
// listing the user is published any more, so none is lost by it (on one
// Redis the append publishes in its one step, and the order holds by
// itself). A crash after 1 leaves the group in the user's list: they are
// no member, and GroupsOf leaves it out; leaving again finishes it.
func (s *RedisStore) clusterLeaveGroup(ctx context.Context, gid, uid uint64) error {
	g := s.groupKey(gid)
	res, err := s.run(ctx, scriptClusterGroupLeave, []string{g, g + ":members", g + ":roles", g + ":joined",
		s.convKey(GroupConversation(gid)) + "seq"}, uid).Int64Slice()
	if err != nil || len(res) != 2 {
		return fmt.Errorf("store: leave reply %v: %w", res, redisErr(err))
	}
	switch res[0] {
	case -1:
		return ErrGroupNotFound
	case 1:
		if err := s.awaitGroupPublishes(ctx, gid, res[1]); err != nil {
			return err
		}
	}
	payload, err := s.clusterMemberEvent(ctx, gid, uid, false, 0)
	if err != nil {
		return err
	}
	if res[0] == 0 {
		// No member: finish a leave that stopped after step 1, if so.
		in, err := s.rdb.SIsMember(ctx, s.userGroupsKey(uid), gid).Result()
		if err != nil {
			return redisErr(err)
		}
		if !in {
			return ErrNotMember
		}
	}
	if _, err := s.runInt(ctx, scriptClusterUserGroupRemove, []string{s.userGroupsKey(uid)}, gid, s.userChannel(uid), payload); err != nil {
		return err
	}
	if res[0] == 0 {
		return ErrNotMember
	}
	return nil
}

// inflightWait is how long a leave waits for a group message's last step
// at most: one older was left by a node that died mid-append.
const inflightWait = 5 * time.Second

// awaitGroupPublishes waits until gid's messages up to seq have been
// published (their last append step ran), polling.
func (s *RedisStore) awaitGroupPublishes(ctx context.Context, gid uint64, seq int64) error {
	key := s.groupKey(gid) + ":inflight"
	for {
		since := time.Now().Add(-inflightWait).UnixMilli()
		n, err := scriptClusterInflight.Run(ctx, s.rdb, []string{key}, seq, since).Int64()
		if err != nil || n == 0 {
			return redisErr(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ---- messages ----

// clusterAppendMessage appends in three steps: (1) the conversation's
// slot: dedup check, seq, log, and a group's recipients
// (scriptClusterAppendConv); from here the message is in history under
// its seq, after every lower one; (2) each recipient's slot, and the
// sender's: the inboxes, the conversation indexes, the sender's read mark,
// and a 1:1 message published on the recipient's channel (and the
// sender's, for their other devices) after it is in the inbox
// (scriptClusterAppendUser); (3) a group message, once, on the group's
// channel, listing the recipients some node hears, after every inbox has
// it. SendOK only after all three.
//
// A crash after 1 leaves a message in history that reached no inbox, and
// whose sender was never told it was sent. The client sends it again
// with the same client_msg_id: step 1 then finds the dedup entry and
// returns the first message's seq and logged body, and steps 2 and 3 run
// again for it (idempotent; a push that arrives twice is dropped by the
// client by msg_id). Without a client_msg_id a resend is a new message,
// as on one Redis when a reply is lost.
//
// Before step 1, a 1:1 message reads both users' block sets (their two
// slots, one round trip: Blocked) and is refused if either blocks the
// other. The read is not atomic with step 1: a Block that lands between
// them lets that one message through, as if it had come first.
func (s *RedisStore) clusterAppendMessage(ctx context.Context, m *chatpb.Message, recipients []uint64, clientMsgID string) (AppendResult, error) {
	if m.GroupId == 0 && m.ToUserId != 0 {
		switch blocked, err := s.Blocked(ctx, m.FromUserId, m.ToUserId); {
		case err != nil:
			return AppendResult{}, err
		case blocked:
			return AppendResult{}, ErrBlocked
		}
	}
	m.Seq = 0
	body, err := proto.Marshal(m)
	if err != nil {
		return AppendResult{}, fmt.Errorf("store: encode message: %w", err)
	}
	var sentAt [8]byte
	binary.BigEndian.PutUint64(sentAt[:], uint64(m.SentAtMs))
	hist := s.cfg.History
	var cutoff, histTTL int64
	if hist.MaxAge > 0 {
		cutoff = time.Now().Add(-hist.MaxAge).UnixMilli()
		histTTL = hist.MaxAge.Milliseconds()
	}
	dedupTTL := 0
	if clientMsgID != "" {
		dedupTTL = int(s.cfg.DedupWindow / time.Second)
	}
	conv := ConversationOf(m)
	ck := s.convKey(conv)
	keys := []string{ck + "seq", ck + "log", ck + "first", ck + "dedup:" + strconv.FormatUint(m.FromUserId, 10) + ":" + clientMsgID}
	if conv.GroupID != 0 {
		g := s.groupKey(conv.GroupID)
		keys = append(keys, g+":members", g+":joined", g+":inflight")
	}
	res, err := s.run(ctx, scriptClusterAppendConv, keys, body, sentAt[:], max(hist.MaxMessages, 0), cutoff, histTTL,
		dedupTTL, m.MsgId, m.FromUserId, time.Now().UnixMilli()).Slice()
	if err != nil || len(res) < 4 {
		return AppendResult{}, fmt.Errorf("store: append reply %v: %w", res, redisErr(err))
	}
	dup, _ := res[0].(int64)
	senderIn, _ := res[3].(int64)
	if conv.GroupID != 0 {
		recipients = parseIDs(stringsOf(res[4:]))
	}
	var r AppendResult
	if dup == 1 {
		v, _ := res[1].(string)
		v, done := strings.CutSuffix(v, ":d")
		id, seq, err := parseDedupValue(v)
		if err != nil {
			return AppendResult{}, err
		}
		first := proto.Clone(m).(*chatpb.Message)
		first.MsgId, first.SentAtMs, first.Seq = id, msgIDUnixMs(id), seq
		r = AppendResult{Message: first, Duplicate: true}
		logged, _ := res[2].(string)
		if done || len(logged) < 8 || proto.Unmarshal([]byte(logged[8:]), first) != nil {
			// Delivered (or trimmed from history since): nothing to do
			// again.
			return r, nil
		}
		m, body = first, []byte(logged[8:])
	} else {
		seq, _ := res[1].(int64)
		htrimmed, _ := res[2].(int64)
		m.Seq = uint64(seq)
		body = protowire.AppendVarint(protowire.AppendTag(body, 8, protowire.VarintType), m.Seq)
		r = AppendResult{Message: m, Encoded: body, HistoryTrimmed: int(htrimmed)}
	}
	dedupKey := keys[3]
	if clientMsgID == "" {
		dedupKey = ""
	}
	if err := s.clusterDeliver(ctx, m, body, conv, recipients, senderIn == 1, dedupKey, &r); err != nil {
		return AppendResult{}, err
	}
	if r.Duplicate {
		// Delivered again; what the caller reports is the first send.
		r = AppendResult{Message: r.Message, Duplicate: true}
	}
	return r, nil
}

// stringsOf keeps the strings of a script's reply.
func stringsOf(vs []any) []string {
	out := make([]string, 0, len(vs))
	for _, v := range vs {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// clusterDeliver runs steps 2 and 3 of clusterAppendMessage for m (with
// its seq; body is its encoding), filling r's counts.
func (s *RedisStore) clusterDeliver(ctx context.Context, m *chatpb.Message, body []byte, conv Conversation,
	recipients []uint64, senderIn bool, dedupKey string, r *AppendResult) error {
	from, fromDevice := sendingDevice(ctx)
	group := conv.GroupID != 0
	var payload []byte
	if s.cfg.PublishMessages {
		var err error
		ev := Event{Message: m, Epoch: s.requestOrStoreEpoch(ctx), OriginNode: from.node, OriginConn: from.conn,
			OriginDevice: from.device}
		if payload, err = encodeChannelEvent(ev); err != nil {
			return err
		}
	}
	member := msgMember(m.MsgId)
	index := ""
	if !group {
		index = conv.Key()
	}
	step := func(uid uint64, skip int, readSeq uint64, mode string) ([]string, []any) {
		readConv := ""
		if readSeq > 0 {
			readConv = conv.Key()
		}
		if payload == nil {
			mode = ""
		}
		return s.guard(ctx, []string{s.userTagKey(uid, "devices"), s.convsKey(uid), s.readKey(uid)},
			s.p, uid, member, body, s.cfg.InboxLimit, m.SentAtMs, skip, index, readConv, readSeq,
			s.userChannel(uid), payload, mode)
	}
	type call struct {
		keys []string
		args []any
	}
	calls := make([]call, 0, len(recipients)+1)
	rcptMode := "always"
	if group {
		rcptMode = "count"
	}
	for _, uid := range recipients {
		k, a := step(uid, -1, 0, rcptMode)
		calls = append(calls, call{k, a})
	}
	// The sender's step: their other devices' boxes (when the sending
	// device is known), the read mark, a 1:1 conversation's index. Their
	// channel takes the copy of a 1:1 message, and of a group message
	// when they are no member (they left meanwhile); a member is listed
	// on the group's channel instead.
	sender := -1
	if fromDevice || !group {
		skip, readSeq, mode := -2, uint64(0), "copies"
		if fromDevice {
			skip, readSeq = boxSlot(from.box), m.Seq
		}
		if group && senderIn {
			mode = ""
		}
		uid := m.FromUserId
		if fromDevice {
			uid = boxUser(from.box)
		}
		k, a := step(uid, skip, readSeq, mode)
		sender = len(calls)
		calls = append(calls, call{k, a})
	}
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		out := make([]redis.Cmder, len(calls))
		for i, c := range calls {
			out[i] = scriptClusterAppendUser.EvalSha(ctx, p, c.keys, c.args...)
		}
		return out
	})
	if err != nil {
		return err
	}
	var to []uint64
	for i, c := range cmds {
		res, err := c.(*redis.Cmd).Int64Slice()
		if err != nil || len(res) != 3 {
			return fmt.Errorf("store: append step reply %v: %w", res, redisErr(err))
		}
		r.Trimmed += int(res[0])
		if i == sender {
			r.SenderCopies = int(res[2])
			continue
		}
		if res[1] == 1 {
			r.Online++
			to = append(to, recipients[i])
		}
	}
	r.Published = payload != nil
	if !group {
		if dedupKey != "" {
			// Not waited for: a mark that is lost only means a resend
			// delivers again (clients drop the second push by msg_id).
			bg := context.WithoutCancel(ctx)
			return s.batch.post(ctx, func(p redis.Pipeliner) []redis.Cmder {
				return []redis.Cmder{scriptClusterDedupDone.EvalSha(bg, p, []string{dedupKey})}
			})
		}
		return nil
	}
	r.Recipients = len(recipients)
	if senderIn && r.SenderCopies > 0 {
		to = append(to, m.FromUserId)
	}
	var gp []byte
	if payload != nil && len(to) > 0 {
		ev := Event{Message: m, Epoch: s.requestOrStoreEpoch(ctx), OriginNode: from.node, OriginConn: from.conn,
			OriginDevice: from.device, To: to}
		var err error
		if gp, err = encodeChannelEvent(ev); err != nil {
			return err
		}
	}
	keys := []string{s.groupKey(conv.GroupID) + ":inflight", cmp.Or(dedupKey, s.convKey(conv)+"dedup:")}
	_, err = s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{scriptClusterGroupPublish.EvalSha(ctx, p, keys, m.Seq,
			protocol.ShardGroupChannel(s.p, conv.GroupID), gp)}
	})
	return err
}

// bodiesKey is the hash of the bodies of box's inbox on a cluster:
// {u:<uid>}:bodies[:<slot>], member -> body.
func (s *RedisStore) bodiesKey(box uint64) string {
	k := s.userTagKey(boxUser(box), "bodies")
	if slot := boxSlot(box); slot != 0 {
		k += ":" + strconv.Itoa(slot)
	}
	return k
}

// clusterInbox reads a box's messages: the inbox, then the bodies (one
// slot).
func (s *RedisStore) clusterInbox(ctx context.Context, box, after uint64, limit int) ([]*chatpb.Message, error) {
	members, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{
		Key: s.inboxKey(box), Start: "(" + msgMember(after), Stop: "+", ByLex: true, Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, redisErr(err)
	}
	if len(members) == 0 {
		return nil, nil
	}
	bodies, err := s.rdb.HMGet(ctx, s.bodiesKey(box), members...).Result()
	if err != nil {
		return nil, redisErr(err)
	}
	out := make([]*chatpb.Message, 0, len(members))
	for _, b := range bodies {
		v, ok := b.(string)
		if !ok {
			continue // acked or trimmed between the two reads
		}
		m := new(chatpb.Message)
		if err := proto.Unmarshal([]byte(v), m); err != nil {
			return nil, fmt.Errorf("store: inbox message: %w", err)
		}
		out = append(out, m)
	}
	return out, nil
}

// clusterAck removes messages from a box and their bodies: one slot.
func (s *RedisStore) clusterAck(ctx context.Context, box uint64, ids []uint64) error {
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = msgMember(id)
	}
	// redisErr, as every other step: a Redis fault (a primary gone, a
	// WAIT short of replicas) is UNAVAILABLE to the client, who acks again.
	return redisErr(s.run(ctx, scriptClusterAck, []string{s.inboxKey(box), s.bodiesKey(box)}, args...).Err())
}

// ---- presence ----

// parsePresenceReply reads a presence script's reply: the change, and on
// a cluster what it announced (the payload, then the friends to tell).
func parsePresenceReply(cmd redis.Cmder) (PresenceChange, []string, error) {
	res, err := cmd.(*redis.Cmd).Slice()
	if err != nil {
		return PresenceChange{}, nil, redisErr(err)
	}
	if len(res) < 5 {
		return PresenceChange{}, nil, fmt.Errorf("store: presence reply %v", res)
	}
	n := make([]int64, 5)
	for i := range n {
		n[i], _ = res[i].(int64)
	}
	ch := PresenceChange{Announce: n[0] == 1, Hidden: n[1] == 1, Published: n[2] == 1,
		State: PresenceState{Online: n[3] == 1, LastSeenMs: n[4]}}
	return ch, stringsOf(res[5:]), nil
}

// clusterAnnounce publishes a presence change a cluster script announced
// to each friend's channel (told: the payload, then the friends). Friends
// in other slots than the user's are told after the step, so two changes
// of one user racing on two nodes may reach a friend out of order; on
// one Redis the script publishes, in order.
func (s *RedisStore) clusterAnnounce(ctx context.Context, ch *PresenceChange, told []string) error {
	if !ch.Published || len(told) == 0 {
		return nil
	}
	payload, friends := told[0], parseIDs(told[1:])
	if len(friends) == 0 {
		return nil
	}
	_, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		out := make([]redis.Cmder, len(friends))
		for i, f := range friends {
			out[i] = p.SPublish(ctx, s.userChannel(f), payload)
		}
		return out
	})
	if err != nil {
		// The server publishes it itself then.
		ch.Published = false
	}
	return nil
}

// clusterPresence runs a cluster presence script and publishes what it
// announced.
func (s *RedisStore) clusterPresence(ctx context.Context, script *redis.Script, keys []string, args ...any) (PresenceChange, error) {
	cmd, err := s.presenceScript(ctx, script, keys, args...)
	if err != nil {
		return PresenceChange{}, err
	}
	ch, told, err := parsePresenceReply(cmd)
	if err != nil {
		return PresenceChange{}, err
	}
	return ch, s.clusterAnnounce(ctx, &ch, told)
}

// clusterPresenceJoin: (1) the user into the instance's index (its
// slot), so a sweep finds them should the node die; (2) the user's
// presence (their slot); (3) the announcement to the friends.
func (s *RedisStore) clusterPresenceJoin(ctx context.Context, uid uint64, node string) (PresenceChange, error) {
	if err := s.rdb.SAdd(ctx, s.presenceIndex(node), uid).Err(); err != nil {
		return PresenceChange{}, redisErr(err)
	}
	return s.clusterPresence(ctx, scriptClusterPresenceJoin, []string{s.presenceKey(uid), s.presenceNodes(uid)},
		node, uid, s.p, s.publishFlag())
}

// clusterPresenceLeave: (1) the instance out of the user's nodes; (2) if
// others are left, the user out of the instance's index. A crash between
// leaves the user in the index, and a sweep settles them (idempotently).
func (s *RedisStore) clusterPresenceLeave(ctx context.Context, uid uint64, node string) (bool, error) {
	cmd, err := s.presenceScript(ctx, scriptPresenceLeave, []string{s.presenceNodes(uid)}, node, uid)
	if err != nil {
		return false, err
	}
	n, err := cmd.(*redis.Cmd).Int64()
	if err != nil {
		return false, redisErr(err)
	}
	if n == 0 {
		if err := s.rdb.SRem(ctx, s.presenceIndex(node), uid).Err(); err != nil {
			return false, redisErr(err)
		}
	}
	return n == 1, nil
}

// clusterSettle: (1) the user's presence (their slot) and the
// announcement; (2) the user out of the index (live or dead). A crash
// between settles them again later, which changes nothing.
func (s *RedisStore) clusterSettle(ctx context.Context, uid uint64, node, index string, atMs int64) (PresenceChange, error) {
	ch, err := s.clusterPresence(ctx, scriptClusterPresenceSettle, []string{s.presenceKey(uid), s.presenceNodes(uid)},
		node, uid, atMs, s.p, s.publishFlag())
	if err != nil {
		return PresenceChange{}, err
	}
	return ch, redisErr(s.rdb.SRem(ctx, index, uid).Err())
}

// presenceDeadIndex is what is left to settle of a dead instance.
func (s *RedisStore) presenceDeadIndex(inst string) string {
	if s.cluster {
		return s.p + "{i:" + inst + "}:presence:dead"
	}
	return s.p + "presence:dead:" + inst
}

// clusterSettleAll settles users of a dead instance one by one, each in
// two steps (clusterSettle).
func (s *RedisStore) clusterSettleAll(ctx context.Context, uids []uint64, inst, index string, atMs int64) ([]PresenceChange, error) {
	out := make([]PresenceChange, 0, len(uids))
	for _, uid := range uids {
		ch, err := s.clusterSettle(ctx, uid, inst, index, atMs)
		if err != nil {
			return out, err
		}
		out = append(out, ch)
	}
	return out, nil
}
