package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// luaSeqAndLog is the part of an append that runs in the conversation's
// slot, shared by the append on one Redis (scriptAppend) and the first
// step of one on a cluster (store_rcluster.go). It takes the next seq
// (INCR seqKey), gives the body (bodyIn, encoded without a seq) its seq,
// stores sentAt .. body in the log under it, and trims the log to
// maxmsgs messages and the age cutoff (0: none), with a TTL of ttl ms
// (0: none) on the log and its first key. It leaves seq, seqs (its
// decimal), body and htrimmed (how many the log dropped).
//
// The TTL is not set again by every append (issue 21: two writes of the
// ~20 commands of a message): it is set to ttl + ttl/64 and refreshed
// once what is left of it falls below ttl, that is at most every ttl/64
// (1.4 days at the default 90-day MaxAge). The log and its first key so
// expire between MaxAge and MaxAge + MaxAge/64 after the last append, when
// everything in them is older than MaxAge, as when each append set it;
// readers skip messages past MaxAge (scriptHistory, ListConversations), so
// the extra while is never shown. The first key is written only when its
// value or TTL changes. Without a TTL (ttl 0), one left by an earlier
// MaxAge is removed.
const luaSeqAndLog = `
local seq = redis.call('INCR', seqKey)
local seqs = string.format('%d', seq)
local vi, v = {}, seq
while v >= 128 do
  vi[#vi + 1] = string.char(v % 128 + 128)
  v = math.floor(v / 128)
end
vi[#vi + 1] = string.char(v)
local body = bodyIn .. '\64' .. table.concat(vi)

redis.call('HSET', logKey, seqs, sentAt .. body)
local firstWas = redis.call('GET', firstKey)
local low = tonumber(firstWas or '0')
if low == 0 then low = seq end
local htrimmed, budget = 0, 64
if maxmsgs > 0 and seq - low + 1 > maxmsgs then
  local upto = math.min(seq - maxmsgs, low + budget - 1)
  local fields = {}
  for i = low, upto do fields[#fields + 1] = string.format('%d', i) end
  htrimmed = redis.call('HDEL', logKey, unpack(fields))
  budget = budget - #fields
  low = upto + 1
end
if cutoff > 0 then
  while low < seq and budget > 0 do
    local old = redis.call('HGET', logKey, string.format('%d', low))
    if old then
      local at = 0
      for i = 1, 8 do at = at * 256 + (string.byte(old, i) or 0) end
      if at >= cutoff then break end
      redis.call('HDEL', logKey, string.format('%d', low))
      htrimmed = htrimmed + 1
    end
    low = low + 1
    budget = budget - 1
  end
end
local lows = string.format('%d', low)
local left = redis.call('PTTL', logKey)
if ttl > 0 and (left < ttl or not firstWas) then
  local px = ttl + math.floor(ttl / 64)
  redis.call('SET', firstKey, lows, 'PX', px)
  redis.call('PEXPIRE', logKey, px)
elseif ttl <= 0 and left >= 0 then
  redis.call('SET', firstKey, lows)
  redis.call('PERSIST', logKey)
elseif lows ~= firstWas then
  redis.call('SET', firstKey, lows, 'KEEPTTL')
end
`

// luaBoxes defines boxes(uid, skip, out), shared by the append on one
// Redis and the inbox step of one on a cluster: the script defines p (the
// prefix), sent (the message's sent_at ms) and box(uid, slot), what goes
// into out for each box.
const luaBoxes = `
-- The boxes (device inboxes, device.go) of uid's devices that get a
-- message sent now, but the one in slot skip: box(uid, slot) of each
-- goes into out. Returns how many devices that is.
local function boxes(uid, skip, out)
  local vals = redis.call('HVALS', p .. '{u:' .. uid .. '}:devices')
  if #vals == 0 then
    if skip ~= 0 then out[#out + 1] = box(uid, 0) end
    return 0
  end
  local n = 0
  for _, v in ipairs(vals) do
    local slot, since = string.match(v, '^(%d+):(%-?%d+):')
    slot = tonumber(slot)
    if slot ~= skip and tonumber(since) <= sent then
      out[#out + 1] = box(uid, slot)
      n = n + 1
    end
  end
  return n
end
`

// Key layout in Redis (P is the prefix, "loopchat:" by default). Ids are
// decimal; inbox members are 16 hex digits so that lexical order (ZRANGE
// BYLEX) is msg_id order without the 53-bit limit of sorted-set scores.
//
//	P user:seq                 INCR source of user ids
//	P user:<uid>               HASH name, hash, nonce, ban, tokrev (accounts.go)
//	P username:<lower name>    STRING uid
//	P friends:<uid>            ZSET friend uid -> add order
//	P friend:seq               INCR source of friendship order
//	P group:seq                INCR source of group ids
//	P group:<gid>              HASH name, description, creator
//	P group:<gid>:members      ZSET uid -> join order
//	P group:<gid>:roles        HASH uid -> role number
//	P group:<gid>:joined       HASH uid -> the group conversation's seq when they joined
//	                           (Member.JoinedSeq; absent: 0, the creator and earlier members)
//	P member:seq               INCR source of join order
//	P user:<uid>:groups        SET gid
//	P inbox:<uid>              ZSET (score 0) member = %016x msg_id: the inbox of the
//	                           user's device in slot 0 (device.go)
//	P inbox:<uid>:<slot>       ZSET the same, of the device in slot 1..15
//	P {u:<uid>}:devices        HASH device id -> "slot:since ms:last login ms:id"
//	P {u:<uid>}:devgen         HASH device id -> its newest session generation
//	P {u:<uid>}:online         ZSET device id -> generation of its session recorded online
//	P msg:<%016x msg_id>       HASH body (chatpb.Message with its seq), refs (inboxes holding it)
//	P dedup:<uid>:<client id>  STRING "<msg_id>:<seq>" of the first send (a bare msg_id
//	                           when written before schema 2), expiring after the dedup window
//
//	P {c:<conv>}:seq           STRING INCR source of the conversation's seqs; never trimmed
//	                           or expired, so no seq is given out twice
//	P {c:<conv>}:log           HASH seq -> 8-byte big-endian sent_at ms + body (as in msg:<id>)
//	P {c:<conv>}:first         STRING the lowest seq the log may still hold; absent: none
//	                           below the next one
//	P {u:<uid>}:convs          SET the user's 1:1 conversations (<conv>), added to by every
//	                           1:1 append (schema 3; convlist.go)
//	P {u:<uid>}:blocked        SET the users the user blocks (block.go), read by every 1:1
//	                           append and AddFriend
//
//	P schema                   STRING the layout's version (redisSchema), set by Epoch
//	P epoch                    STRING the store epoch (epoch.go)
//	P epoch:quiet              STRING while set (a node TTL), writes wait: a new epoch
//	P session:<uid>            STRING INCR source of session generations
//
// <conv> is Conversation.Key(): "g<gid>" for a group, "d<a>:<b>" for two
// users. The braces are a Redis Cluster hash tag: a conversation's keys
// hash to one slot, whatever the conversation (P must not contain '{' for
// that to hold). A log is trimmed as messages are appended (scriptAppend),
// and its log and first keys expire together MaxAge to MaxAge + MaxAge/64
// after the last append (luaSeqAndLog): by then every message in them is
// older than MaxAge.
//
// Writes that touch several keys are Lua scripts, so each is atomic, and
// each first checks the store epoch (guardedScript: the caller appends
// P epoch and P epoch:quiet, one slot of their own). The scripts compute
// some key names and most touch several slots, so the store needs a single
// Redis (or a primary with replicas), not Redis Cluster. The comment on
// each script says which keys and slots it touches, and how it would split
// for a cluster (not implemented; the epoch check would then need a copy
// of the epoch under each slot's tag, or a check of its own).
var (
	// KEYS: username:<lower name>, user:seq; computes user:<id>. Three
	// slots.
	scriptCreateUser = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local id = redis.call('INCR', KEYS[2])
redis.call('HSET', ARGV[3] .. 'user:' .. id, 'name', ARGV[1], 'hash', ARGV[2], 'nonce', ARGV[4])
redis.call('SET', KEYS[1], id)
return id`)

	// KEYS: user:<a>, user:<b>, friends:<a>, friends:<b>, friend:seq,
	// {u:<a>}:blocked, {u:<b>}:blocked (block.go). Each its own slot.
	// Returns -1 (a user missing), 0 (friends already), -3 (one blocks
	// the other), -2 (a limit), else 1.
	scriptAddFriend = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('ZSCORE', KEYS[3], ARGV[2]) then return 0 end
if redis.call('SISMEMBER', KEYS[6], ARGV[2]) == 1 or redis.call('SISMEMBER', KEYS[7], ARGV[1]) == 1 then return -3 end
local lim = tonumber(ARGV[3])
if lim > 0 and (redis.call('ZCARD', KEYS[3]) >= lim or redis.call('ZCARD', KEYS[4]) >= lim) then return -2 end
local s = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[3], s, ARGV[2])
redis.call('ZADD', KEYS[4], s, ARGV[1])
return 1`)

	// KEYS: friends:<a>, friends:<b>. ARGV: a, b. Each its own slot.
	// Returns the number of sides removed (0: not friends).
	scriptRemoveFriend = guardedScript(`
return redis.call('ZREM', KEYS[1], ARGV[2]) + redis.call('ZREM', KEYS[2], ARGV[1])`)

	// KEYS: user:<uid>, group:seq, member:seq, user:<uid>:groups; computes
	// group:<gid>, :members, :roles. The creator's JoinedSeq is 0 (nothing
	// written): the group's conversation starts with the group. Several
	// slots. ARGV[7], ARGV[8]: the creator's channel and the group_member
	// event to publish there ("": none) without its group_id, which the
	// script adds.
	scriptCreateGroup = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local lim = tonumber(ARGV[6])
if lim > 0 and redis.call('SCARD', KEYS[4]) >= lim then return -2 end
local gid = redis.call('INCR', KEYS[2])
local g = ARGV[4] .. 'group:' .. gid
redis.call('HSET', g, 'name', ARGV[2], 'description', ARGV[3], 'creator', ARGV[1])
redis.call('ZADD', g .. ':members', redis.call('INCR', KEYS[3]), ARGV[1])
redis.call('HSET', g .. ':roles', ARGV[1], ARGV[5])
redis.call('SADD', KEYS[4], gid)
if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[7], string.sub(ARGV[8], 1, -2) .. ',"group_id":' .. gid .. '}') end
return gid`)

	// KEYS: group:<gid>, user:<uid>, group:<gid>:members, :roles,
	// user:<uid>:groups, member:seq, {c:g<gid>}:seq, group:<gid>:joined.
	// The joiner's JoinedSeq is the conversation's seq read in the same
	// script, so every message above it was sent with them as a member.
	// Several slots. In a cluster the group's keys would share a {g:<gid>}
	// tag, and the join would read the conversation's seq (its slot)
	// first, then add the member with it: a message sent in between shows
	// in the joiner's history without having been sent to them, which is
	// harmless, where the other order could hide one they were sent.
	//
	// ARGV: uid, gid, role, member limit, group limit, the user's channel,
	// the group_member event to publish there ("": none), to which the
	// script adds the JoinedSeq as "seq". Published in the script, so the
	// user's channel carries joins and leaves in the order they happened:
	// the last one a node hears is the membership (fanout.go).
	scriptJoinGroup = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -2 end
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
local members, groups = tonumber(ARGV[4]), tonumber(ARGV[5])
if members > 0 and redis.call('ZCARD', KEYS[3]) >= members then return -3 end
if groups > 0 and redis.call('SCARD', KEYS[5]) >= groups then return -4 end
redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[6]), ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
local joined = redis.call('GET', KEYS[7]) or '0'
redis.call('HSET', KEYS[8], ARGV[1], joined)
redis.call('SADD', KEYS[5], ARGV[2])
if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[6], string.sub(ARGV[7], 1, -2) .. ',"seq":' .. joined .. '}') end
return 1`)

	// KEYS: group:<gid>, :members, :roles, user:<uid>:groups,
	// group:<gid>:joined. ARGV: uid, gid, the user's channel, the
	// group_member event to publish there ("": none), as for a join. The
	// group's keys are one slot under a {g:<gid>} tag in a cluster; the
	// user's set another.
	scriptLeaveGroup = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[2])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1`)

	// KEYS: msg key, dedup key, {c:<conv>}:seq, :log, :first, and for a
	// 1:1 conversation both users' {u:<uid>}:convs and then the sender's
	// and the recipient's {u:<uid>}:blocked (block.go), for a group message
	// group:<gid>:members. ARGV: body (without
	// seq), member, inbox limit, dedup TTL seconds (0: no dedup), msg_id,
	// prefix, channel payload ("": do not publish), sent_at (8 bytes),
	// history max messages (0: no bound), history cutoff ms (drop messages
	// sent before it; 0: none), history TTL ms (0: none), conversation
	// key, sent_at ms, the sender's uid when the sending device is known
	// (else 0), that device's slot, the group's channel ("": a 1:1
	// message), the sender's uid, recipient uids (1:1 only)... A group
	// message goes to the group's members as the script finds them, all
	// but the sender: the same atomic step that takes the seq, so exactly
	// the members who joined below it (JoinedSeq) get it. Reads
	// {u:<uid>}:devices of each recipient (and the sender), computes the
	// inbox of each of their devices' boxes and msg:<id> of the messages
	// trimmed from them, and publishes: a 1:1 message to user:<uid>
	// channels (the sender's too when the message went to another of its
	// devices), a group message once to group:<gid> with "to" listing the
	// recipients whose user channel has a subscriber (PUBSUB NUMSUB), and
	// the sender when it went to another of their devices. Returns {1, dedup
	// value} for a duplicate (nothing stored or published), else {0, inbox
	// trimmed, online recipients, seq, history trimmed, boxes of the
	// sender's other devices, recipients}, or {2, ""} for a 1:1 message
	// between two users one of whom blocks the other: checked after the
	// dedup (a resend of a message stored before the block still gets its
	// first SendOK) and before anything is written, two SISMEMBERs.
	//
	// A group message is one PUBLISH however many members and nodes:
	// Redis forwards it to each node subscribed to the group's channel (a
	// node holding a member's session), and each node pushes it to its own
	// sessions of the users listed, encoded once (fanout.go). Listing only
	// the online recipients is safe: a user whose channel has no
	// subscriber has no session anywhere yet, and a login subscribes the
	// user's channel, then the groups', and only then reads the inbox,
	// where this message already is. It keeps the payload to the online
	// part of a big group.
	//
	// The seq is taken (INCR) and the message stored under it in this one
	// script, so a seq is never taken without its message, and no message
	// is seen under a seq before every lower one is stored. The body comes
	// from Go without its seq, and gets it here: Message.seq is field 8, a
	// varint, so the tag byte 0x40 and the varint of the seq appended to
	// the encoding set it (a protobuf decoder takes fields in any order).
	// Every copy carries it: the inbox's (msg:<id>), the log's, and the
	// channel JSON, where ,"seq":N goes before the closing brace of the
	// object Go encoded without one. Lua numbers are doubles: seqs stay
	// far below 2^53.
	//
	// Retention, after the message is stored: the log keeps the latest
	// max messages, and drops those sent before the cutoff from its oldest
	// end, stopping at the first younger one (sent_at, the first 8 bytes of
	// each value, follows seq order only roughly across nodes' clocks; a
	// straggler waits for the ones below it). The new message is never
	// dropped by age: it goes with the next append, or the log's TTL. At
	// most 64 seqs are looked at per append, so lowering the limits costs
	// each send a bounded amount until the log is within them again.
	// Trimmed seqs are not given again: the counter stays.
	//
	// Publishing here rather than in a second command saves a cross-node
	// send a round trip, and with appendfsync always a round trip is an AOF
	// fsync: Redis answers and forwards pub/sub messages only after the fsync
	// of the event-loop iteration that ran the script, so the message reaches
	// the other node no earlier than it is durable, and once per send.
	//
	// Slots: the conversation's keys are one slot; the msg key, the dedup
	// key and each inbox (with the msg keys it trims) each another. In
	// Redis Cluster, where a script touches one slot, the append would be
	// three steps, in this order:
	//  1. On the conversation's slot: the dedup check (its key moved under
	//     the conversation's tag: a resend goes to the same conversation),
	//     the INCR, the log write and its trimming, as here, plus a
	//     msg_id -> seq entry expiring with the dedup window, so that a
	//     node running the step again for the same msg_id (a timeout whose
	//     first attempt landed) gets the same seq instead of a second one.
	//     On return the message is in history under its seq, and so is
	//     every lower seq (one slot, atomic): the ordering promise holds
	//     from here.
	//  2. On each recipient's slot (their keys under a {u:<uid>} tag): the
	//     inbox entry and a copy of the body with the seq from step 1,
	//     trimming that inbox. Per-recipient copies replace the shared
	//     msg:<id> and its refs count, which would live in another slot;
	//     ZADD and HSET of the same member and body are idempotent, so a
	//     step may run twice.
	//  3. PUBLISH (SPUBLISH on the recipient's slot) after that recipient's
	//     step 2, so a pushed message is always in the inbox a replay reads.
	//     The SADD to each user's conversation index goes with their step 2
	//     (the sender's too): idempotent as well.
	// SendOK only after all three. A resend after a node died between
	// steps finds the dedup entry in step 1, which then returns the first
	// msg_id, seq and logged body; the node runs steps 2 and 3 for it again
	// (idempotent, and clients drop a second push by msg_id), where here a
	// duplicate stops at the dedup check because an append is never partial.
	scriptAppend = guardedScript(`
local dedup = tonumber(ARGV[4]) > 0
if dedup then
  local prev = redis.call('GET', KEYS[2])
  if prev then
    -- Written again, unchanged: a write, so that the WAIT after this
    -- script (--redis-min-replicas) covers the first send's writes too.
    redis.call('SET', KEYS[2], prev, 'KEEPTTL')
    return {1, prev}
  end
end
if KEYS[8] and (redis.call('SISMEMBER', KEYS[8], ARGV[18]) == 1 or redis.call('SISMEMBER', KEYS[9], ARGV[17]) == 1) then
  return {2, ''} -- blocked (block.go): nothing stored, no seq taken
end
local seqKey, logKey, firstKey = KEYS[3], KEYS[4], KEYS[5]
local bodyIn, sentAt = ARGV[1], ARGV[8]
local maxmsgs, cutoff, ttl = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
` + luaSeqAndLog + `
local group = ARGV[16] ~= ''
if not group then
  redis.call('SADD', KEYS[6], ARGV[12])
  redis.call('SADD', KEYS[7], ARGV[12])
end

local p = ARGV[6]
local sent = tonumber(ARGV[13])
local function box(uid, slot)
  if slot == 0 then return p .. 'inbox:' .. uid end
  return p .. 'inbox:' .. uid .. ':' .. slot
end
` + luaBoxes + `local rcpts, senderIn = {}, false
if group then
  for _, u in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
    if u == ARGV[17] then senderIn = true else rcpts[#rcpts + 1] = u end
  end
else
  for i = 18, #ARGV do rcpts[#rcpts + 1] = ARGV[i] end
end
local inboxes = {}
for _, u in ipairs(rcpts) do boxes(u, -1, inboxes) end
local senderCopies = 0
if ARGV[14] ~= '0' then senderCopies = boxes(ARGV[14], tonumber(ARGV[15]), inboxes) end
local n = #inboxes
local trimmed = 0
local online = 0
if n > 0 then redis.call('HSET', KEYS[1], 'body', body, 'refs', n) end
local limit = tonumber(ARGV[3])
for _, inbox in ipairs(inboxes) do
  redis.call('ZADD', inbox, 0, ARGV[2])
  local over = redis.call('ZCARD', inbox) - limit
  if over > 0 then
    local popped = redis.call('ZPOPMIN', inbox, over)
    for j = 1, #popped, 2 do
      local mk = p .. 'msg:' .. popped[j]
      if redis.call('HINCRBY', mk, 'refs', -1) <= 0 then redis.call('DEL', mk) end
      trimmed = trimmed + 1
    end
  end
end
if ARGV[14] ~= '0' then
  -- Sending marks the conversation read up to it (readstate.go).
  -- No read first: a read seq is at most the conversation's last seq
  -- (MarkRead clamps to it; appends set their own), and this seq was just
  -- taken above it, in this script.
  redis.call('HSET', p .. '{u:' .. ARGV[14] .. '}:read', ARGV[12], seqs)
end
if dedup then redis.call('SET', KEYS[2], ARGV[5] .. ':' .. seqs, 'EX', ARGV[4]) end
if ARGV[7] ~= '' then
  local payload = string.sub(ARGV[7], 1, -2) .. ',"seq":' .. seqs .. '}'
  if not group then
    local chans = {}
    for _, u in ipairs(rcpts) do
      chans[#chans + 1] = p .. 'user:' .. u
      redis.call('PUBLISH', chans[#chans], payload)
    end
    -- Online counts channel subscribers (sessions), not PUBLISH's
    -- receivers: those include pattern subscribers, a PSUBSCRIBE
    -- watching the channels, which is nobody's session.
    if #chans > 0 then
      local subs = redis.call('PUBSUB', 'NUMSUB', unpack(chans))
      for j = 2, #subs, 2 do
        if subs[j] > 0 then online = online + 1 end
      end
    end
    if senderCopies > 0 then redis.call('PUBLISH', p .. 'user:' .. ARGV[14], payload) end
  else
    local to = {}
    for i = 1, #rcpts, 256 do
      local chans = {}
      for j = i, math.min(i + 255, #rcpts) do chans[#chans + 1] = p .. 'user:' .. rcpts[j] end
      local subs = redis.call('PUBSUB', 'NUMSUB', unpack(chans))
      for j = 2, #subs, 2 do
        if subs[j] > 0 then to[#to + 1] = rcpts[i + j / 2 - 1] end
      end
    end
    online = #to
    if senderCopies > 0 then
      -- The sender's other devices: a member's sessions are on nodes
      -- that hear the group. One who left meanwhile is told directly.
      if senderIn then to[#to + 1] = ARGV[14]
      else redis.call('PUBLISH', p .. 'user:' .. ARGV[14], payload) end
    end
    if #to > 0 then
      redis.call('PUBLISH', ARGV[16], string.sub(payload, 1, -2) .. ',"to":[' .. table.concat(to, ',') .. ']}')
    end
  end
end
return {0, trimmed, online, seq, htrimmed, senderCopies, #rcpts}`)

	// KEYS: inbox keys. ARGV: prefix, then for each inbox the number of
	// its members and the members. Several acks waiting in one pipeline go
	// as one call (ackOp): the guard and the call cost Redis more than
	// the ZREM. Computes msg:<id> of each acked message: in a cluster
	// those would be the user's own copies (see scriptAppend), in the
	// inbox's slot.
	scriptAck = guardedScript(`
local i = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  for j = i + 1, i + n do
    if redis.call('ZREM', KEYS[k], ARGV[j]) == 1 then
      local mk = ARGV[1] .. 'msg:' .. ARGV[j]
      if redis.call('HINCRBY', mk, 'refs', -1) <= 0 then redis.call('DEL', mk) end
    end
  end
  i = i + n + 1
end
return 0`)

	// KEYS: {c:<conv>}:seq, :first, :log: one slot. ARGV: newest ("1" or
	// ""), before, after, limit, floor (HistoryQuery), age cutoff ms. Returns {has more,
	// values of the page's seqs, lowest first...} (false for a seq not in
	// the log), or {0} for an empty page. Seqs are contiguous, so a page is a
	// range of fields, clamped below by the first kept seq and the floor.
	// Guarded, though it only reads: under another epoch the same key
	// names another pair of users' conversation (ids are given again).
	scriptHistory = guardedScript(`
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = tonumber(redis.call('GET', KEYS[2]) or '0')
if first == 0 then first = last + 1 end
local low = math.max(first, tonumber(ARGV[5]) + 1)
-- Appends trim by age only as they come: in a quiet conversation the
-- oldest may have outlived MaxAge (ARGV[6], a cutoff in ms; 0: none).
-- Seqs follow send time, so skip from the bottom up to the first young
-- one, a bounded number at a time.
local cutoff = tonumber(ARGV[6])
if cutoff > 0 then
  local scanned = 0
  while low <= last and scanned < 1000 do
    local v = redis.call('HGET', KEYS[3], string.format('%d', low))
    if v then
      local at = 0
      for k = 1, 8 do at = at * 256 + (string.byte(v, k) or 0) end
      if at >= cutoff then break end
    end
    low = low + 1
    scanned = scanned + 1
  end
end
local limit = tonumber(ARGV[4])
local lo, hi, more
if ARGV[1] == '1' then
  hi = last
  local before = tonumber(ARGV[2])
  if before > 0 and before - 1 < hi then hi = before - 1 end
  lo = math.max(low, hi - limit + 1)
  more = lo > low
else
  lo = math.max(low, tonumber(ARGV[3]) + 1)
  hi = math.min(last, lo + limit - 1)
  more = hi < last
end
if lo > hi then return {0} end
local out = {more and 1 or 0}
local i = lo
while i <= hi do
  local fields = {}
  for s = i, math.min(hi, i + 999) do fields[#fields + 1] = string.format('%d', s) end
  local vals = redis.call('HMGET', KEYS[3], unpack(fields))
  for j = 1, #fields do out[#out + 1] = vals[j] end
  i = i + #fields
end
return out`)

	// KEYS: {c:<conv>}:seq. Guarded like scriptHistory.
	scriptLastSeq = guardedScript(`return tonumber(redis.call('GET', KEYS[1]) or '0')`)

	redisStoreScripts = []*redis.Script{scriptCreateUser, scriptAddFriend, scriptRemoveFriend, scriptBlock, scriptUnblock, scriptCreateGroup,
		scriptJoinGroup, scriptLeaveGroup, scriptAppend, scriptAck, scriptHistory, scriptLastSeq,
		scriptNewSession, scriptLatestSession, scriptMarkRead, scriptDeviceOnline, scriptDeviceOffline,
		scriptRegisterDevice, scriptConvTail, scriptSetBan, scriptRevokeTokens, scriptEpoch}
)

// redisSchema is the version of the key layout this code writes (the
// schema key; Epoch sets it, and refuses a newer one). 1, never written:
// before conversations. 2: conversation seqs and logs, dedup values
// "<msg_id>:<seq>", message bodies with their seq, group join seqs. This
// code reads a version 1 keyspace as it is: its messages have seq 0 and no
// history, its bare dedup values still name the first message. 3: the
// users' conversation indexes ({u:<uid>}:convs), built by Epoch from the
// conversations' seq keys before it marks an older keyspace 3
// (migrateConvIndex).
//
// A node refuses a newer schema when it starts (initEpoch fails). A node
// already running meets it only in its heartbeat's Epoch, whose errors the
// epoch watcher skips, so it keeps serving: a later version that bumps the
// schema must say whether older nodes may run beside it during an upgrade.
// Schema 2 nodes may run beside schema 3 ones: they do not index the 1:1
// conversations they append to, which are listed once a newer node
// appends to them (the index takes every 1:1 append, not only the first).
const redisSchema = 3

// RedisConfig configures the Redis store. Zero values mean the default.
type RedisConfig struct {
	// Client is the Redis connection pool; required. The store does not close it.
	// A *redis.ClusterClient makes it a Redis Cluster store: the cluster
	// key layout and per-slot steps of store_rcluster.go.
	Client redis.UniversalClient
	// Prefix starts every key. Empty means "loopchat:".
	Prefix string
	// InboxLimit caps each user's inbox. Zero means 10,000.
	InboxLimit int
	// DedupWindow is how long a client_msg_id is remembered. Zero means 24h.
	DedupWindow time.Duration
	// Pipelines is how many batched pipelines may be in flight. Zero means 4.
	Pipelines int
	// Gather is how long a pipeline that would leave while another is in
	// flight waits for more commands first (redisBatcher). Zero means
	// DefaultRedisGather; negative means none.
	Gather time.Duration
	// History bounds what each conversation keeps (zero: the defaults).
	// What retention drops is counted in AppendResult.HistoryTrimmed.
	History HistoryLimits
	// ResetQuiet is how long writes wait after Epoch made a new epoch while
	// other nodes may still serve the lost contents (epoch.go): a node TTL,
	// within which every live node reads the epoch. Zero means no wait.
	ResetQuiet time.Duration
	// PublishMessages makes AppendMessage also PUBLISH each new message, as
	// the broker's JSON, to its recipients' user channels (Prefix + "user:"
	// + id) in the same script, and report how many were subscribed
	// (AppendResult.Published, Online). False leaves delivery to the caller.
	PublishMessages bool
}

// DefaultRedisGather is RedisConfig.Gather's default. At 2,000 cross-node
// msgs/s it halved Redis's reads (wake-ups) per message; its CPU gain was
// ~11% of Redis's and of the nodes' in one session and within the spread in
// another, at ~0.4 ms more p50 (docs/BENCHMARKS.md, "Redis's share").
const DefaultRedisGather = 500 * time.Microsecond

// RedisStore is the cluster Store: every node shares it. Hot-path writes
// (appends, acks) are batched into pipelines by a redisBatcher.
type RedisStore struct {
	rdb redis.UniversalClient
	p   string
	// cluster: the client is a Redis Cluster's; tags names a hash tag of
	// each slot, for the slots' copies of the epoch (epoch_cluster.go).
	cluster bool
	tags    []string
	// guardKeys are one Redis's epoch and quiet keys, named once: every
	// guarded script on the hot path takes them (guard).
	guardKeys [2]string
	cfg       RedisConfig
	batch     *redisBatcher
	names     idCache[uint64, string] // user id -> name
	ids       idCache[string, uint64] // lower-case name -> user id
	// epoch is the store epoch writes are made under (UseEpoch; epoch.go),
	// nil until set; maxUID the highest user id this node has seen exist in
	// it, to notice a store rolled back to an older snapshot.
	epoch  atomic.Pointer[string]
	maxUID atomic.Uint64
	// learnMu and cacheGen keep a read that began before UseEpoch changed
	// the epoch from caching what it found in the old contents: learn
	// (read-locked) stores only if cacheGen is what it was when the read
	// began, and UseEpoch (locked) bumps it as it forgets everything.
	learnMu  sync.RWMutex
	cacheGen atomic.Uint64
	// convsIndexed: the keyspace has its conversation index
	// (migrateConvIndex); checked once per process.
	convsIndexed atomic.Bool
	// suspects are the copies of the epoch whose slots refused a script
	// lately (a cluster's: epoch_cluster.go), for Epoch to look at.
	suspectMu sync.Mutex
	suspects  map[string]struct{}
}

// NewRedisStore returns a store on cfg.Client.
func NewRedisStore(cfg RedisConfig) *RedisStore {
	if cfg.Prefix == "" {
		cfg.Prefix = "loopchat:"
	}
	if cfg.InboxLimit <= 0 {
		cfg.InboxLimit = 10000
	}
	if cfg.DedupWindow <= 0 {
		cfg.DedupWindow = 24 * time.Hour
	}
	if cfg.Pipelines <= 0 {
		cfg.Pipelines = 4
	}
	if cfg.Gather == 0 {
		cfg.Gather = DefaultRedisGather
	}
	cfg.History = cfg.History.withDefaults()
	s := &RedisStore{rdb: cfg.Client, p: cfg.Prefix, cfg: cfg, guardKeys: [2]string{cfg.Prefix + "epoch", cfg.Prefix + "epoch:quiet"},
		batch: newGatheringBatcher(cfg.Client, cfg.Pipelines, 512, max(cfg.Gather, 0), slices.Concat(redisStoreScripts, presenceScripts, clusterScripts)...)}
	if _, ok := cfg.Client.(*redis.ClusterClient); ok {
		s.cluster = true
		s.tags = slotTags()
		s.batch.refused = s.noteRefused
		// A cluster keyspace starts with the layout's latest schema: there
		// is nothing older to index.
		s.convsIndexed.Store(true)
	}
	return s
}

// Ping checks Redis answers.
func (s *RedisStore) Ping(ctx context.Context) error { return redisErr(s.rdb.Ping(ctx).Err()) }

// Close stops the batcher; the Redis client belongs to the caller.
func (s *RedisStore) Close() error {
	s.batch.close()
	return nil
}

// The key names below differ between one Redis (the layout at the top)
// and a Redis Cluster, where every key of one step shares a hash tag
// (docs/cluster.md, "Redis Cluster").

// userKey is the user's record: user:<uid>, or {u:<uid>}:user.
func (s *RedisStore) userKey(uid uint64) string {
	if s.cluster {
		return s.userTagKey(uid, "user")
	}
	return s.p + "user:" + strconv.FormatUint(uid, 10)
}

// userGroupsKey is the set of uid's groups: user:<uid>:groups, or
// {u:<uid>}:groups.
func (s *RedisStore) userGroupsKey(uid uint64) string {
	if s.cluster {
		return s.userTagKey(uid, "groups")
	}
	return s.userKey(uid) + ":groups"
}

// friendsKey is uid's friends: friends:<uid>, or {u:<uid>}:friends.
func (s *RedisStore) friendsKey(uid uint64) string {
	if s.cluster {
		return s.userTagKey(uid, "friends")
	}
	return s.p + "friends:" + strconv.FormatUint(uid, 10)
}

// usernameKey maps a lower-case name to its user: username:<lower>, or
// {n:<lower>}:username (names are [a-zA-Z0-9_.-], never a brace).
func (s *RedisStore) usernameKey(lower string) string {
	if s.cluster {
		return s.p + "{n:" + lower + "}:username"
	}
	return s.p + "username:" + lower
}

// metaKey is one of the store's own keys (counters, epoch, schema,
// presence instances): P<name>, or P{meta}:<name>, all in one slot.
func (s *RedisStore) metaKey(name string) string {
	if s.cluster {
		return s.p + "{meta}:" + name
	}
	return s.p + name
}

// groupKey is the group's record, to which ":members", ":roles" and
// ":joined" are added: group:<gid>, or {c:g<gid>}:group, under the tag
// of the group's conversation, so that an append reads the members in
// the step that takes the seq, and a join reads the seq in the step that
// adds the member.
func (s *RedisStore) groupKey(gid uint64) string {
	if s.cluster {
		return s.p + "{c:g" + strconv.FormatUint(gid, 10) + "}:group"
	}
	return s.p + "group:" + strconv.FormatUint(gid, 10)
}

// inboxKey is box's inbox: inbox:<uid> for slot 0 (every inbox before
// devices), inbox:<uid>:<slot> for the others; {u:<uid>}:inbox[:<slot>]
// on a cluster.
func (s *RedisStore) inboxKey(box uint64) string {
	k := s.p + "inbox:" + strconv.FormatUint(boxUser(box), 10)
	if s.cluster {
		k = s.userTagKey(boxUser(box), "inbox")
	}
	if slot := boxSlot(box); slot != 0 {
		k += ":" + strconv.Itoa(slot)
	}
	return k
}

// userChannel is uid's pub/sub channel; on a cluster a shard channel in
// the slot of the user's keys, so a step there can SPUBLISH to it.
func (s *RedisStore) userChannel(uid uint64) string {
	if s.cluster {
		return protocol.ShardUserChannel(s.p, uid)
	}
	return protocol.UserChannel(s.p, uid)
}
func msgMember(id uint64) string { return fmt.Sprintf("%016x", id) }

// convKey starts the keys of conversation c: P{c:<c.Key()>}: (see the
// layout at the top), to which "seq", "log" and "first" are added.
func (s *RedisStore) convKey(c Conversation) string { return s.p + "{c:" + c.Key() + "}:" }

func (s *RedisStore) CreateUser(ctx context.Context, name string, hash []byte) (User, error) {
	if s.cluster {
		return s.clusterCreateUser(ctx, name, hash)
	}
	gen := s.cacheGen.Load()
	nonce := newNonce()
	keys, args := s.guard(ctx, []string{s.usernameKey(strings.ToLower(name)), s.metaKey("user:seq")}, name, hash, s.p, strconv.FormatUint(nonce, 10))
	id, err := s.runGuarded(ctx, scriptCreateUser, keys, args...).Uint64()
	if err != nil {
		return User{}, redisErr(err)
	}
	if id == 0 {
		return User{}, ErrUsernameTaken
	}
	s.learn(gen, func() { s.names.put(id, name); s.sawUser(id) })
	return User{ID: id, Name: name, PasswordHash: hash, Nonce: nonce}, nil
}

func (s *RedisStore) Credentials(ctx context.Context, name string) (User, error) {
	id, err := s.userID(ctx, name)
	if err != nil {
		return User{}, err
	}
	u, err := s.account(ctx, id, true)
	if err == nil && !strings.EqualFold(u.Name, name) {
		// The id the name was cached under now holds someone else (the
		// store lost its data since): never them.
		return User{}, ErrUserNotFound
	}
	return u, err
}

func (s *RedisStore) Account(ctx context.Context, id uint64) (User, error) {
	return s.account(ctx, id, false)
}

// account reads user id's record from Redis, with the hash if withHash.
func (s *RedisStore) account(ctx context.Context, id uint64, withHash bool) (User, error) {
	// pend: a record of a registration that has not claimed its name yet
	// (only on a cluster: clusterCreateUser).
	fields := []string{"name", "nonce", "ban", "tokrev", "pend"}
	if withHash {
		fields = append(fields, "hash")
	}
	v, err := s.rdb.HMGet(ctx, s.userKey(id), fields...).Result()
	if err != nil {
		return User{}, redisErr(err)
	}
	n, ok := v[0].(string)
	if !ok {
		return User{}, ErrUserNotFound
	}
	u := User{ID: id, Name: n}
	if nonce, ok := v[1].(string); ok {
		u.Nonce, _ = strconv.ParseUint(nonce, 10, 64)
	}
	if ban, ok := v[2].(string); ok {
		u.BannedUntilMs, _ = strconv.ParseInt(ban, 10, 64)
	}
	if rev, ok := v[3].(string); ok {
		u.TokensRefusedUntilMs, _ = strconv.ParseInt(rev, 10, 64)
	}
	if withHash {
		hash, _ := v[5].(string)
		u.PasswordHash = []byte(hash)
	}
	if v[4] != nil {
		if !withHash {
			return User{}, ErrUserNotFound
		}
		// Found by its name, which names it: the registration claimed the
		// name and stopped before its last step. Finish it.
		if err := s.settlePendingUser(ctx, id); err != nil {
			return User{}, err
		}
	}
	return u, nil
}

// userID resolves a name, from the node's cache when it can: a name,
// once registered, always means the same user.
func (s *RedisStore) userID(ctx context.Context, name string) (uint64, error) {
	lower := strings.ToLower(name)
	if id, ok := s.ids.get(lower); ok {
		return id, nil
	}
	gen := s.cacheGen.Load()
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{p.Get(ctx, s.usernameKey(lower))}
	})
	if err != nil {
		return 0, err
	}
	id, err := cmds[0].(*redis.StringCmd).Uint64()
	if errors.Is(err, redis.Nil) {
		return 0, ErrUserNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("store: username %q: %w", name, err)
	}
	s.learn(gen, func() { s.ids.put(lower, id); s.sawUser(id) })
	return id, nil
}

func (s *RedisStore) UserByName(ctx context.Context, name string) (User, error) {
	id, err := s.userID(ctx, name)
	if err != nil {
		return User{}, err
	}
	return s.UserByID(ctx, id)
}

func (s *RedisStore) UserByID(ctx context.Context, id uint64) (User, error) {
	names, err := s.usernames(ctx, []uint64{id})
	if err != nil {
		return User{}, err
	}
	n, ok := names[id]
	if !ok {
		return User{}, ErrUserNotFound
	}
	return User{ID: id, Name: n}, nil
}

// usernames resolves ids to names: names never change, so a node caches
// them and asks Redis (one pipeline) only for those it has not seen.
func (s *RedisStore) usernames(ctx context.Context, ids []uint64) (map[uint64]string, error) {
	out := make(map[uint64]string, len(ids))
	var missing []uint64
	for _, id := range ids {
		if n, ok := s.names.get(id); ok {
			out[id] = n
		} else {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	gen := s.cacheGen.Load()
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		out := make([]redis.Cmder, len(missing))
		for i, id := range missing {
			out[i] = p.HGet(ctx, s.userKey(id), "name")
		}
		return out
	})
	if err != nil {
		return nil, err
	}
	for i, id := range missing {
		if n, err := cmds[i].(*redis.StringCmd).Result(); err == nil {
			out[id] = n
			s.learn(gen, func() { s.names.put(id, n); s.sawUser(id) })
		}
	}
	return out, nil
}

func (s *RedisStore) AddFriend(ctx context.Context, a, b uint64, lim Limits) error {
	if a == b {
		return ErrFriendSelf
	}
	if s.cluster {
		return s.clusterAddFriend(ctx, a, b, lim)
	}
	keys, args := s.guard(ctx, []string{s.userKey(a), s.userKey(b), s.friendsKey(a), s.friendsKey(b), s.metaKey("friend:seq"),
		s.blockedKey(a), s.blockedKey(b)}, a, b, lim.FriendsPerUser)
	r, err := s.runGuarded(ctx, scriptAddFriend, keys, args...).Int()
	switch {
	case err != nil:
		return redisErr(err)
	case r == -1:
		return ErrUserNotFound
	case r == -2:
		return ErrTooManyFriends
	case r == -3:
		return ErrBlocked
	case r == 0:
		return ErrAlreadyFriends
	}
	return nil
}

func (s *RedisStore) RemoveFriend(ctx context.Context, a, b uint64) error {
	if a == b {
		return ErrUnfriendSelf
	}
	if s.cluster {
		return s.clusterRemoveFriend(ctx, a, b)
	}
	n, err := s.runInt(ctx, scriptRemoveFriend, []string{s.friendsKey(a), s.friendsKey(b)}, a, b)
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotFriends
	}
	return nil
}

// friendIDs lists uid's friends in the order they were added.
func (s *RedisStore) friendIDs(ctx context.Context, uid uint64) ([]uint64, error) {
	if s.cluster {
		return s.clusterFriendIDs(ctx, uid)
	}
	ids, err := s.rdb.ZRange(ctx, s.friendsKey(uid), 0, -1).Result()
	return parseIDs(ids), redisErr(err)
}

func (s *RedisStore) Friends(ctx context.Context, uid uint64) ([]User, error) {
	uids, err := s.friendIDs(ctx, uid)
	if err != nil {
		return nil, err
	}
	names, err := s.usernames(ctx, uids)
	if err != nil {
		return nil, err
	}
	out := make([]User, 0, len(uids))
	for _, id := range uids {
		out = append(out, User{ID: id, Name: names[id]})
	}
	return out, nil
}

func (s *RedisStore) CreateGroup(ctx context.Context, creator uint64, name, desc string, lim Limits) (Group, error) {
	if s.cluster {
		return s.clusterCreateGroup(ctx, creator, name, desc, lim)
	}
	ch, payload, err := s.memberEvent(ctx, 0, creator, true)
	if err != nil {
		return Group{}, err
	}
	keys, args := s.guard(ctx, []string{s.userKey(creator), s.metaKey("group:seq"), s.metaKey("member:seq"), s.userGroupsKey(creator)},
		creator, name, desc, s.p, int(chatpb.Role_ROLE_CREATOR), lim.GroupsPerUser, ch, payload)
	gid, err := s.runGuarded(ctx, scriptCreateGroup, keys, args...).Int64()
	switch {
	case err != nil:
		return Group{}, redisErr(err)
	case gid == -1:
		return Group{}, ErrUserNotFound
	case gid == -2:
		return Group{}, ErrTooManyGroups
	}
	names, err := s.usernames(ctx, []uint64{creator})
	if err != nil {
		return Group{}, err
	}
	return Group{ID: uint64(gid), Name: name, Description: desc,
		Members: []Member{{UserID: creator, Username: names[creator], Role: chatpb.Role_ROLE_CREATOR}}}, nil
}

func (s *RedisStore) JoinGroup(ctx context.Context, gid, uid uint64, lim Limits) error {
	if s.cluster {
		return s.clusterJoinGroup(ctx, gid, uid, lim)
	}
	g := s.groupKey(gid)
	ch, payload, err := s.memberEvent(ctx, gid, uid, true)
	if err != nil {
		return err
	}
	keys, args := s.guard(ctx, []string{g, s.userKey(uid), g + ":members", g + ":roles", s.userGroupsKey(uid), s.metaKey("member:seq"),
		s.convKey(GroupConversation(gid)) + "seq", g + ":joined"},
		uid, gid, int(chatpb.Role_ROLE_MEMBER), lim.MembersPerGroup, lim.GroupsPerUser, ch, payload)
	r, err := s.runGuarded(ctx, scriptJoinGroup, keys, args...).Int()
	switch {
	case err != nil:
		return redisErr(err)
	case r == -1:
		return ErrGroupNotFound
	case r == -2:
		return ErrUserNotFound
	case r == -3:
		return ErrGroupFull
	case r == -4:
		return ErrTooManyGroups
	case r == 0:
		return ErrAlreadyMember
	}
	return nil
}

func (s *RedisStore) LeaveGroup(ctx context.Context, gid, uid uint64) error {
	if s.cluster {
		return s.clusterLeaveGroup(ctx, gid, uid)
	}
	g := s.groupKey(gid)
	ch, payload, err := s.memberEvent(ctx, gid, uid, false)
	if err != nil {
		return err
	}
	keys, args := s.guard(ctx, []string{g, g + ":members", g + ":roles", s.userGroupsKey(uid), g + ":joined"}, uid, gid, ch, payload)
	r, err := s.runGuarded(ctx, scriptLeaveGroup, keys, args...).Int()
	switch {
	case err != nil:
		return redisErr(err)
	case r == -1:
		return ErrGroupNotFound
	case r == 0:
		return ErrNotMember
	}
	return nil
}

// memberEvent is the user channel and the group_member event a join
// (joined) or leave publishes with PublishMessages; "" without. A join's
// script adds the JoinedSeq, a creation's the group id (gid 0 here).
func (s *RedisStore) memberEvent(ctx context.Context, gid, uid uint64, joined bool) (channel string, payload []byte, err error) {
	if !s.cfg.PublishMessages {
		return "", nil, nil
	}
	payload, err = encodeChannelEvent(Event{Epoch: s.requestOrStoreEpoch(ctx),
		GroupMember: &GroupMemberNotice{UserID: uid, GroupID: gid, Joined: joined}})
	return protocol.UserChannel(s.p, uid), payload, err
}

func (s *RedisStore) Group(ctx context.Context, gid uint64) (Group, error) {
	gs, err := s.groups(ctx, []uint64{gid})
	if err != nil {
		return Group{}, err
	}
	if len(gs) == 0 {
		return Group{}, ErrGroupNotFound
	}
	return gs[0], nil
}

func (s *RedisStore) GroupsOf(ctx context.Context, uid uint64) ([]Group, error) {
	gids, err := s.GroupIDs(ctx, uid)
	if err != nil {
		return nil, err
	}
	gs, err := s.groups(ctx, gids)
	if err != nil || !s.cluster {
		return gs, err
	}
	// On a cluster a leave cut off between its steps leaves the group in
	// the user's set after they left it (clusterLeaveGroup).
	return slices.DeleteFunc(gs, func(g Group) bool {
		return !slices.ContainsFunc(g.Members, func(m Member) bool { return m.UserID == uid })
	}), nil
}

func (s *RedisStore) GroupIDs(ctx context.Context, uid uint64) ([]uint64, error) {
	ids, err := s.rdb.SMembers(ctx, s.userGroupsKey(uid)).Result()
	if err != nil {
		return nil, redisErr(err)
	}
	gids := parseIDs(ids)
	slices.Sort(gids)
	return gids, nil
}

// groups loads groups with their members in one pipeline (plus one for
// names not cached); groups that do not exist are left out.
func (s *RedisStore) groups(ctx context.Context, gids []uint64) ([]Group, error) {
	if len(gids) == 0 {
		return nil, nil
	}
	type cmds struct {
		info    *redis.MapStringStringCmd
		members *redis.StringSliceCmd
		roles   *redis.MapStringStringCmd
		joined  *redis.MapStringStringCmd
	}
	cs := make([]cmds, len(gids))
	_, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		out := make([]redis.Cmder, 0, 4*len(gids))
		for i, gid := range gids {
			g := s.groupKey(gid)
			cs[i] = cmds{p.HGetAll(ctx, g), p.ZRange(ctx, g+":members", 0, -1), p.HGetAll(ctx, g+":roles"), p.HGetAll(ctx, g+":joined")}
			out = append(out, cs[i].info, cs[i].members, cs[i].roles, cs[i].joined)
		}
		return out
	})
	if err != nil {
		return nil, err
	}
	var all []uint64
	out := make([]Group, 0, len(gids))
	for i, gid := range gids {
		info := cs[i].info.Val()
		if len(info) == 0 {
			continue
		}
		g := Group{ID: gid, Name: info["name"], Description: info["description"]}
		roles, joined := cs[i].roles.Val(), cs[i].joined.Val()
		for _, m := range parseIDs(cs[i].members.Val()) {
			id := strconv.FormatUint(m, 10)
			role, _ := strconv.Atoi(roles[id])
			// Absent for the creator and for members who joined before
			// conversations had seqs: 0, they see all the history kept.
			seq, _ := strconv.ParseUint(joined[id], 10, 64)
			g.Members = append(g.Members, Member{UserID: m, Role: chatpb.Role(role), JoinedSeq: seq})
			all = append(all, m)
		}
		out = append(out, g)
	}
	names, err := s.usernames(ctx, all)
	if err != nil {
		return nil, err
	}
	for gi := range out {
		for mi := range out[gi].Members {
			out[gi].Members[mi].Username = names[out[gi].Members[mi].UserID]
		}
	}
	return out, nil
}

func (s *RedisStore) AppendMessage(ctx context.Context, m *chatpb.Message, recipients []uint64, clientMsgID string) (AppendResult, error) {
	if s.cluster {
		return s.clusterAppendMessage(ctx, m, recipients, clientMsgID)
	}
	// Encoded without a seq: the script appends the one it takes, and a
	// seq field before it would only be dead weight.
	m.Seq = 0
	body, err := proto.Marshal(m)
	if err != nil {
		return AppendResult{}, fmt.Errorf("store: encode message: %w", err)
	}
	member := msgMember(m.MsgId)
	ttl := 0
	dedupKey := s.p + "dedup:" + strconv.FormatUint(m.FromUserId, 10) + ":" + clientMsgID
	if clientMsgID != "" {
		ttl = int(s.cfg.DedupWindow / time.Second)
	}
	var senderUID uint64
	senderSlot := 0
	from, fromDevice := sendingDevice(ctx)
	if fromDevice {
		senderUID, senderSlot = boxUser(from.box), boxSlot(from.box)
	}
	var payload []byte
	if s.cfg.PublishMessages {
		ev := Event{Message: m, Epoch: s.requestOrStoreEpoch(ctx), OriginNode: from.node, OriginConn: from.conn,
			OriginDevice: from.device}
		if payload, err = encodeChannelEvent(ev); err != nil {
			return AppendResult{}, err
		}
	}
	// The log value starts with the send time, so the script can tell a
	// message's age without decoding it.
	var sentAt [8]byte
	binary.BigEndian.PutUint64(sentAt[:], uint64(m.SentAtMs))
	hist := s.cfg.History
	var cutoff, histTTL int64
	if hist.MaxAge > 0 {
		cutoff = time.Now().Add(-hist.MaxAge).UnixMilli()
		histTTL = hist.MaxAge.Milliseconds()
	}
	conv := ConversationOf(m)
	groupChannel := ""
	if conv.GroupID != 0 {
		groupChannel = protocol.GroupChannel(s.p, conv.GroupID)
		recipients = nil // the script reads the members
	}
	args := make([]any, 0, 17+len(recipients))
	args = append(args, body, member, s.cfg.InboxLimit, ttl, m.MsgId, s.p, payload,
		sentAt[:], max(hist.MaxMessages, 0), cutoff, histTTL, conv.Key(), m.SentAtMs, senderUID, senderSlot,
		groupChannel, m.FromUserId)
	for _, uid := range recipients {
		args = append(args, uid)
	}
	ck := s.convKey(conv)
	keys := []string{s.p + "msg:" + member, dedupKey, ck + "seq", ck + "log", ck + "first"}
	if conv.GroupID == 0 {
		keys = append(keys, s.convsKey(conv.A), s.convsKey(conv.B), s.blockedKey(m.FromUserId), s.blockedKey(m.ToUserId))
	} else {
		keys = append(keys, s.groupKey(conv.GroupID)+":members")
	}
	keys, args = s.guard(ctx, keys, args...)
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{scriptAppend.EvalSha(ctx, p, keys, args...)}
	})
	if err != nil {
		return AppendResult{}, err
	}
	res, err := cmds[0].(*redis.Cmd).Slice()
	if err != nil || len(res) < 2 {
		return AppendResult{}, fmt.Errorf("store: append reply %v: %w", res, err)
	}
	if r0, _ := res[0].(int64); r0 == 2 {
		return AppendResult{}, ErrBlocked
	}
	if dup, _ := res[0].(int64); dup == 1 {
		v, _ := res[1].(string)
		id, seq, err := parseDedupValue(v)
		if err != nil {
			return AppendResult{}, err
		}
		first := proto.Clone(m).(*chatpb.Message)
		first.MsgId, first.SentAtMs, first.Seq = id, msgIDUnixMs(id), seq
		return AppendResult{Message: first, Duplicate: true}, nil
	}
	if len(res) < 5 {
		return AppendResult{}, fmt.Errorf("store: append reply %v", res)
	}
	trimmed, _ := res[1].(int64)
	online, _ := res[2].(int64)
	seq, _ := res[3].(int64)
	histTrimmed, _ := res[4].(int64)
	var senderCopies, rcpts int64
	if len(res) > 6 {
		senderCopies, _ = res[5].(int64)
		rcpts, _ = res[6].(int64)
	}
	m.Seq = uint64(seq)
	// The same bytes the script stored: the body and then field 8.
	encoded := protowire.AppendVarint(protowire.AppendTag(body, 8, protowire.VarintType), m.Seq)
	r := AppendResult{Message: m, Encoded: encoded, Trimmed: int(trimmed), HistoryTrimmed: int(histTrimmed),
		Published: payload != nil, Online: int(online), SenderCopies: int(senderCopies)}
	if conv.GroupID != 0 {
		r.Recipients = int(rcpts)
	}
	return r, nil
}

// parseDedupValue reads a dedup key's value: "<msg_id>:<seq>", or a bare
// msg_id written before conversations (seq 0).
func parseDedupValue(v string) (id, seq uint64, err error) {
	idPart, seqPart, withSeq := strings.Cut(v, ":")
	if id, err = strconv.ParseUint(idPart, 10, 64); err == nil && withSeq {
		seq, err = strconv.ParseUint(seqPart, 10, 64)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("store: dedup value %q: %w", v, err)
	}
	return id, seq, nil
}

func (s *RedisStore) History(ctx context.Context, q HistoryQuery) (HistoryPage, error) {
	limit := max(q.Limit, 1)
	newest := ""
	if q.Newest {
		newest = "1"
	}
	var cutoff int64
	if s.cfg.History.MaxAge > 0 {
		cutoff = time.Now().Add(-s.cfg.History.MaxAge).UnixMilli()
	}
	ck := s.convKey(q.Conv)
	keys, args := s.guard(ctx, []string{ck + "seq", ck + "first", ck + "log"}, newest, q.Before, q.After, limit, q.Floor, cutoff)
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{scriptHistory.EvalSha(ctx, p, keys, args...)}
	})
	if err != nil {
		return HistoryPage{}, err
	}
	res, err := cmds[0].(*redis.Cmd).Slice()
	if err != nil || len(res) == 0 {
		return HistoryPage{}, fmt.Errorf("store: history reply %v: %w", res, err)
	}
	page := HistoryPage{Messages: []*chatpb.Message{}}
	more, _ := res[0].(int64)
	page.HasMore = more == 1
	for _, v := range res[1:] {
		b, ok := v.(string)
		if !ok {
			continue // not in the log: cannot happen between first and last, but costs nothing to allow
		}
		if len(b) < 8 {
			return HistoryPage{}, fmt.Errorf("store: history value of %d bytes", len(b))
		}
		m := new(chatpb.Message)
		if err := proto.Unmarshal([]byte(b[8:]), m); err != nil {
			return HistoryPage{}, fmt.Errorf("store: history message: %w", err)
		}
		page.Messages = append(page.Messages, m)
	}
	if q.Newest {
		slices.Reverse(page.Messages)
	}
	return page, nil
}

func (s *RedisStore) LastSeq(ctx context.Context, conv Conversation) (uint64, error) {
	return s.guardedCount(ctx, scriptLastSeq, s.convKey(conv)+"seq")
}

// guardedCount runs a guarded script on one key through the batcher and
// reads the number it returns.
func (s *RedisStore) guardedCount(ctx context.Context, script *redis.Script, key string) (uint64, error) {
	return s.guardedUint(ctx, script, []string{key})
}

// guardedUint runs a guarded script through the batcher and reads the
// number it returns.
func (s *RedisStore) guardedUint(ctx context.Context, script *redis.Script, keys []string, args ...any) (uint64, error) {
	keys, args = s.guard(ctx, keys, args...)
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{script.EvalSha(ctx, p, keys, args...)}
	})
	if err != nil {
		return 0, err
	}
	n, err := cmds[0].(*redis.Cmd).Uint64()
	return n, redisErr(err)
}

func (s *RedisStore) Inbox(ctx context.Context, box, after uint64, limit int) ([]*chatpb.Message, error) {
	if s.cluster {
		return s.clusterInbox(ctx, box, after, limit)
	}
	members, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{
		Key: s.inboxKey(box), Start: "(" + msgMember(after), Stop: "+", ByLex: true, Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, redisErr(err)
	}
	if len(members) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(members))
	for i, mem := range members {
		cmds[i] = pipe.HGet(ctx, s.p+"msg:"+mem, "body")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, redisErr(err)
	}
	out := make([]*chatpb.Message, 0, len(members))
	for _, c := range cmds {
		b, err := c.Bytes()
		if err != nil {
			continue // acked or trimmed between the two reads
		}
		m := new(chatpb.Message)
		if err := proto.Unmarshal(b, m); err != nil {
			return nil, fmt.Errorf("store: inbox message: %w", err)
		}
		out = append(out, m)
	}
	return out, nil
}

func (s *RedisStore) Ack(ctx context.Context, box uint64, ids []uint64) error {
	if s.cluster {
		return s.clusterAck(ctx, box, ids)
	}
	a := &ackOp{inbox: s.inboxKey(box), members: make([]any, len(ids))}
	for i, id := range ids {
		a.members[i] = msgMember(id)
	}
	guardKeys, guardArgs := s.guard(ctx, nil, s.p)
	a.guardKeys, a.prefix, a.epoch = guardKeys, s.p, guardArgs[1].(string)
	_, err := s.batch.doOp(ctx, &pipeOp{ack: a})
	return err
}

func parseIDs(ss []string) []uint64 {
	out := make([]uint64, 0, len(ss))
	for _, s := range ss {
		if id, err := strconv.ParseUint(s, 10, 64); err == nil {
			out = append(out, id)
		}
	}
	return out
}

var _ Store = (*RedisStore)(nil)
