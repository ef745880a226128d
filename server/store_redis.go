package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Key layout in Redis (P is the prefix, "loopchat:" by default). Ids are
// decimal; inbox members are 16 hex digits so that lexical order (ZRANGE
// BYLEX) is msg_id order without the 53-bit limit of sorted-set scores.
//
//	P user:seq                 INCR source of user ids
//	P user:<uid>               HASH name, hash
//	P username:<lower name>    STRING uid
//	P friends:<uid>            ZSET friend uid -> add order
//	P friend:seq               INCR source of friendship order
//	P group:seq                INCR source of group ids
//	P group:<gid>              HASH name, description, creator
//	P group:<gid>:members      ZSET uid -> join order
//	P group:<gid>:roles        HASH uid -> role number
//	P member:seq               INCR source of join order
//	P user:<uid>:groups        SET gid
//	P inbox:<uid>              ZSET (score 0) member = %016x msg_id
//	P msg:<%016x msg_id>       HASH body (chatpb.Message), refs (inboxes holding it)
//	P dedup:<uid>:<client id>  STRING msg_id, expiring after the dedup window
//
//	P epoch                    STRING the store epoch (epoch.go)
//	P epoch:quiet              STRING while set (a node TTL), writes wait: a new epoch
//	P session:<uid>            STRING INCR source of session generations
//
// Writes that touch several keys are Lua scripts, so each is atomic, and
// each first checks the store epoch (guardedScript). The
// scripts compute some key names, so the store needs a single Redis (or a
// primary with replicas), not Redis Cluster.

var (
	scriptCreateUser = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local id = redis.call('INCR', KEYS[2])
redis.call('HSET', ARGV[3] .. 'user:' .. id, 'name', ARGV[1], 'hash', ARGV[2], 'nonce', ARGV[4])
redis.call('SET', KEYS[1], id)
return id`)

	scriptAddFriend = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('ZSCORE', KEYS[3], ARGV[2]) then return 0 end
local lim = tonumber(ARGV[3])
if lim > 0 and (redis.call('ZCARD', KEYS[3]) >= lim or redis.call('ZCARD', KEYS[4]) >= lim) then return -2 end
local s = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[3], s, ARGV[2])
redis.call('ZADD', KEYS[4], s, ARGV[1])
return 1`)

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
return gid`)

	scriptJoinGroup = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -2 end
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
local members, groups = tonumber(ARGV[4]), tonumber(ARGV[5])
if members > 0 and redis.call('ZCARD', KEYS[3]) >= members then return -3 end
if groups > 0 and redis.call('SCARD', KEYS[5]) >= groups then return -4 end
redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[6]), ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[5], ARGV[2])
return 1`)

	scriptLeaveGroup = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[2])
return 1`)

	// KEYS: msg key, dedup key. ARGV: body, member, inbox limit, dedup TTL
	// seconds (0: no dedup), msg_id, prefix, channel payload ("": do not
	// publish), recipient uids... Returns {1, first msg_id} for a duplicate
	// (nothing stored or published), else {0, trimmed, online recipients}.
	//
	// Publishing here rather than in a second command saves a cross-node
	// send a round trip, and with appendfsync always a round trip is an AOF
	// fsync: Redis answers and forwards pub/sub messages only after the fsync
	// of the event-loop iteration that ran the script, so the message reaches
	// the other node no earlier than it is durable, and once per send.
	scriptAppend = guardedScript(`
local dedup = tonumber(ARGV[4]) > 0
if dedup then
  local prev = redis.call('GET', KEYS[2])
  if prev then return {1, prev} end
end
local first = 8
local n = #ARGV - first + 1
local trimmed = 0
local online = 0
local p = ARGV[6]
if n > 0 then redis.call('HSET', KEYS[1], 'body', ARGV[1], 'refs', n) end
local limit = tonumber(ARGV[3])
for i = first, #ARGV do
  local inbox = p .. 'inbox:' .. ARGV[i]
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
if dedup then redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[4]) end
if ARGV[7] ~= '' then
  for i = first, #ARGV do
    if redis.call('PUBLISH', p .. 'user:' .. ARGV[i], ARGV[7]) > 0 then online = online + 1 end
  end
end
return {0, trimmed, online}`)

	// KEYS: inbox key. ARGV: prefix, members...
	scriptAck = guardedScript(`
for i = 2, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    local mk = ARGV[1] .. 'msg:' .. ARGV[i]
    if redis.call('HINCRBY', mk, 'refs', -1) <= 0 then redis.call('DEL', mk) end
  end
end
return 0`)

	redisStoreScripts = []*redis.Script{scriptCreateUser, scriptAddFriend, scriptCreateGroup,
		scriptJoinGroup, scriptLeaveGroup, scriptAppend, scriptAck, scriptNewSession, scriptLatestSession}
)

// RedisConfig configures the Redis store. Zero values mean the default.
type RedisConfig struct {
	// Client is the Redis connection pool; required. The store does not close it.
	Client *redis.Client
	// Prefix starts every key. Empty means "loopchat:".
	Prefix string
	// InboxLimit caps each user's inbox. Zero means 10,000.
	InboxLimit int
	// DedupWindow is how long a client_msg_id is remembered. Zero means 24h.
	DedupWindow time.Duration
	// Pipelines is how many batched pipelines may be in flight. Zero means 4.
	Pipelines int
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

// RedisStore is the cluster Store: every node shares it. Hot-path writes
// (appends, acks) are batched into pipelines by a redisBatcher.
type RedisStore struct {
	rdb   *redis.Client
	p     string
	cfg   RedisConfig
	batch *redisBatcher
	names idCache[uint64, string] // user id -> name
	ids   idCache[string, uint64] // lower-case name -> user id
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
	return &RedisStore{rdb: cfg.Client, p: cfg.Prefix, cfg: cfg,
		batch: newRedisBatcher(cfg.Client, cfg.Pipelines, 512, redisStoreScripts...)}
}

// Ping checks Redis answers.
func (s *RedisStore) Ping(ctx context.Context) error { return redisErr(s.rdb.Ping(ctx).Err()) }

// Close stops the batcher; the Redis client belongs to the caller.
func (s *RedisStore) Close() error {
	s.batch.close()
	return nil
}

func (s *RedisStore) userKey(uid uint64) string { return s.p + "user:" + strconv.FormatUint(uid, 10) }
func (s *RedisStore) groupKey(gid uint64) string {
	return s.p + "group:" + strconv.FormatUint(gid, 10)
}
func (s *RedisStore) inboxKey(uid uint64) string { return s.p + "inbox:" + strconv.FormatUint(uid, 10) }
func msgMember(id uint64) string                 { return fmt.Sprintf("%016x", id) }

func (s *RedisStore) CreateUser(ctx context.Context, name string, hash []byte) (User, error) {
	gen := s.cacheGen.Load()
	nonce := newNonce()
	keys, args := s.guard(ctx, []string{s.p + "username:" + strings.ToLower(name), s.p + "user:seq"}, name, hash, s.p, strconv.FormatUint(nonce, 10))
	id, err := scriptCreateUser.Run(ctx, s.rdb, keys, args...).Uint64()
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
	fields := []string{"name", "nonce"}
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
	if withHash {
		hash, _ := v[2].(string)
		u.PasswordHash = []byte(hash)
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
		return []redis.Cmder{p.Get(ctx, s.p+"username:"+lower)}
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
	keys, args := s.guard(ctx, []string{s.userKey(a), s.userKey(b), s.p + "friends:" + strconv.FormatUint(a, 10),
		s.p + "friends:" + strconv.FormatUint(b, 10), s.p + "friend:seq"}, a, b, lim.FriendsPerUser)
	r, err := scriptAddFriend.Run(ctx, s.rdb, keys, args...).Int()
	switch {
	case err != nil:
		return redisErr(err)
	case r == -1:
		return ErrUserNotFound
	case r == -2:
		return ErrTooManyFriends
	case r == 0:
		return ErrAlreadyFriends
	}
	return nil
}

func (s *RedisStore) Friends(ctx context.Context, uid uint64) ([]User, error) {
	ids, err := s.rdb.ZRange(ctx, s.p+"friends:"+strconv.FormatUint(uid, 10), 0, -1).Result()
	if err != nil {
		return nil, redisErr(err)
	}
	uids := parseIDs(ids)
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
	keys, args := s.guard(ctx, []string{s.userKey(creator), s.p + "group:seq", s.p + "member:seq", s.userKey(creator) + ":groups"},
		creator, name, desc, s.p, int(chatpb.Role_ROLE_CREATOR), lim.GroupsPerUser)
	gid, err := scriptCreateGroup.Run(ctx, s.rdb, keys, args...).Int64()
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
	g := s.groupKey(gid)
	keys, args := s.guard(ctx, []string{g, s.userKey(uid), g + ":members", g + ":roles", s.userKey(uid) + ":groups", s.p + "member:seq"},
		uid, gid, int(chatpb.Role_ROLE_MEMBER), lim.MembersPerGroup, lim.GroupsPerUser)
	r, err := scriptJoinGroup.Run(ctx, s.rdb, keys, args...).Int()
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
	g := s.groupKey(gid)
	keys, args := s.guard(ctx, []string{g, g + ":members", g + ":roles", s.userKey(uid) + ":groups"}, uid, gid)
	r, err := scriptLeaveGroup.Run(ctx, s.rdb, keys, args...).Int()
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
	ids, err := s.rdb.SMembers(ctx, s.userKey(uid)+":groups").Result()
	if err != nil {
		return nil, redisErr(err)
	}
	gids := parseIDs(ids)
	slices.Sort(gids)
	return s.groups(ctx, gids)
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
	}
	cs := make([]cmds, len(gids))
	_, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		out := make([]redis.Cmder, 0, 3*len(gids))
		for i, gid := range gids {
			g := s.groupKey(gid)
			cs[i] = cmds{p.HGetAll(ctx, g), p.ZRange(ctx, g+":members", 0, -1), p.HGetAll(ctx, g+":roles")}
			out = append(out, cs[i].info, cs[i].members, cs[i].roles)
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
		roles := cs[i].roles.Val()
		for _, m := range parseIDs(cs[i].members.Val()) {
			role, _ := strconv.Atoi(roles[strconv.FormatUint(m, 10)])
			g.Members = append(g.Members, Member{UserID: m, Role: chatpb.Role(role)})
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
	var payload []byte
	if s.cfg.PublishMessages {
		if payload, err = encodeChannelEvent(Event{Message: m, Epoch: s.requestOrStoreEpoch(ctx)}); err != nil {
			return AppendResult{}, err
		}
	}
	args := make([]any, 0, 8+len(recipients))
	args = append(args, body, member, s.cfg.InboxLimit, ttl, m.MsgId, s.p, payload)
	for _, uid := range recipients {
		args = append(args, uid)
	}
	keys, args := s.guard(ctx, []string{s.p + "msg:" + member, dedupKey}, args...)
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
	if dup, _ := res[0].(int64); dup == 1 {
		s, _ := res[1].(string)
		id, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return AppendResult{}, fmt.Errorf("store: dedup value %q: %w", s, err)
		}
		first := proto.Clone(m).(*chatpb.Message)
		first.MsgId, first.SentAtMs = id, msgIDUnixMs(id)
		return AppendResult{Message: first, Duplicate: true}, nil
	}
	trimmed, _ := res[1].(int64)
	out := AppendResult{Message: m, Encoded: body, Trimmed: int(trimmed), Published: payload != nil}
	if len(res) > 2 {
		online, _ := res[2].(int64)
		out.Online = int(online)
	}
	return out, nil
}

func (s *RedisStore) Inbox(ctx context.Context, uid, after uint64, limit int) ([]*chatpb.Message, error) {
	members, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{
		Key: s.inboxKey(uid), Start: "(" + msgMember(after), Stop: "+", ByLex: true, Count: int64(limit),
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

func (s *RedisStore) Ack(ctx context.Context, uid uint64, ids []uint64) error {
	args := make([]any, 0, 2+len(ids))
	args = append(args, s.p)
	for _, id := range ids {
		args = append(args, msgMember(id))
	}
	keys, args := s.guard(ctx, []string{s.inboxKey(uid)}, args...)
	_, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{scriptAck.EvalSha(ctx, p, keys, args...)}
	})
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
