package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Session generations decide "newest login wins" without the nodes'
// clocks. Each login of a user takes the next number of that user's
// counter from the store (one atomic step, shared by every node); a
// session is kicked
// by any session of the same user with a higher number and never by a
// lower one. A login then:
//
//  1. takes generation g (Store.NewSession),
//  2. binds itself on its node (a higher local generation wins there) and
//     subscribes to the user's channel, confirmed by the broker,
//  3. publishes a login notice carrying g,
//  4. reads the user's latest generation (Store.LatestSession) and kicks
//     itself if it is above g.
//
// Of two logins g < h, either g's step 4 runs after h's step 1 and sees h,
// or it ran before, in which case g's subscription was confirmed before h
// published its notice, and g receives it. Either way g goes, and the
// highest generation is never kicked: exactly one session survives.

// errSuperseded: a newer login of the same user won while this one was
// under way; the connection has been kicked with LOGGED_IN_ELSEWHERE.
var errSuperseded = errors.New("a newer login of this user won")

// localSessions is the Store's generation counter for a single node, and
// its record of which devices are online. It lives in memory: every
// session dies with the process, so nothing older than a restart can come
// back to compete.
type localSessions struct {
	mu    sync.Mutex
	users map[uint64]*localUser
}

type localUser struct {
	next uint64
	devs []localDevice
}

type localDevice struct {
	id     string
	latest uint64 // the device's newest generation
	online uint64 // the generation recorded online (0: none)
}

// device finds (or adds) uid's device. l.mu is held.
func (l *localSessions) device(uid uint64, id string) (*localUser, *localDevice) {
	if l.users == nil {
		l.users = make(map[uint64]*localUser)
	}
	u := l.users[uid]
	if u == nil {
		u = &localUser{}
		l.users[uid] = u
	}
	for i := range u.devs {
		if u.devs[i].id == id {
			return u, &u.devs[i]
		}
	}
	u.devs = append(u.devs, localDevice{id: id})
	return u, &u.devs[len(u.devs)-1]
}

func (l *localSessions) NewSession(_ context.Context, uid uint64, device string) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	u, d := l.device(uid, device)
	u.next++
	d.latest = u.next
	return u.next, nil
}

func (l *localSessions) LatestSession(_ context.Context, uid uint64, device string) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, d := l.device(uid, device)
	return d.latest, nil
}

func (l *localSessions) DeviceOnline(_ context.Context, uid uint64, device string, gen uint64, max int) ([]DeviceSession, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	u, d := l.device(uid, device)
	d.online = gen
	online := make([]DeviceSession, 0, len(u.devs))
	for _, d := range u.devs {
		if d.online != 0 {
			online = append(online, DeviceSession{Device: d.id, Gen: d.online})
		}
	}
	kick := oldestOver(online, max)
	for _, k := range kick {
		_, d := l.device(uid, k.Device)
		d.online = 0
	}
	return kick, nil
}

func (l *localSessions) DeviceOffline(_ context.Context, uid uint64, device string, gen uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	u, d := l.device(uid, device)
	if d.online == gen {
		d.online = 0
	}
	if d.online == 0 && d.latest == gen {
		// Nothing of this device is live: forget it, keeping the
		// counter, so the map does not grow with every device ever seen.
		u.devs = slices.DeleteFunc(u.devs, func(x localDevice) bool { return x.id == device })
	}
	return nil
}

// oldestOver is what must go for at most max of online to stay: the
// oldest generations.
func oldestOver(online []DeviceSession, max int) []DeviceSession {
	if max <= 0 || len(online) <= max {
		return nil
	}
	slices.SortFunc(online, func(a, b DeviceSession) int { return compareU64(a.Gen, b.Gen) })
	return online[:len(online)-max]
}

// sessionKey is the Redis counter of uid's session generations.
func (s *RedisStore) sessionKey(uid uint64) string {
	if s.cluster {
		return s.userTagKey(uid, "session")
	}
	return s.p + "session:" + strconv.FormatUint(uid, 10)
}

// userTagKey is one of uid's keys under the user's hash tag.
func (s *RedisStore) userTagKey(uid uint64, name string) string {
	return s.p + "{u:" + strconv.FormatUint(uid, 10) + "}:" + name
}

// All go through the epoch guard: a login (or a resync) checks that the
// store still holds the contents its user was found in (epoch.go).
//
// A generation is the counter plus one, or Redis's clock in microseconds
// if that is higher. The counter alone would go back with a Redis that
// lost recent writes (a failover to a lagging replica, appendfsync
// everysec, a snapshot restored): the next login would then get a number
// below a live session's, and the older session would win. Redis's own
// clock keeps moving, so a login after such a loss still outranks every
// session from before it. One clock, the store's, orders all nodes. The
// counter is the user's, so generations also order the user's devices
// (DEVICE_LIMIT kicks the oldest); each device's newest is kept beside.
var (
	// KEYS: session counter, {u:<uid>}:devgen (two slots on one Redis; on
	// a cluster the counter is under the user's tag too). ARGV: device.
	scriptNewSession = guardedScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local g = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
if g < now then g = now end
local gs = string.format('%d', g)
redis.call('SET', KEYS[1], gs)
redis.call('HSET', KEYS[2], ARGV[1], gs)
return g`)
	// KEYS: {u:<uid>}:devgen. ARGV: device.
	scriptLatestSession = guardedScript(`return tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')`)

	// KEYS: {u:<uid>}:online. ARGV: device, gen, max devices, TTL ms.
	// Returns {device, gen, ...} of the sessions to kick. The set expires
	// a while after the last login, so it does not outlive its user's
	// activity: a node that died leaves its sessions in it until then
	// (they are then the oldest, and the first to be "kicked").
	scriptDeviceOnline = guardedScript(`
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not cur or tonumber(cur) < tonumber(ARGV[2]) then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local max = tonumber(ARGV[3])
local over = redis.call('ZCARD', KEYS[1]) - max
if max <= 0 or over <= 0 then return {} end
local out = redis.call('ZRANGE', KEYS[1], 0, over - 1, 'WITHSCORES')
for i = 1, #out, 2 do redis.call('ZREM', KEYS[1], out[i]) end
return out`)
	// KEYS: {u:<uid>}:online. ARGV: device, gen.
	scriptDeviceOffline = guardedScript(`
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if cur and tonumber(cur) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0`)
)

// onlineTTL is how long a user's record of online devices outlives their
// last login.
const onlineTTL = 7 * 24 * time.Hour

func (s *RedisStore) NewSession(ctx context.Context, uid uint64, device string) (uint64, error) {
	return s.guardedUint(ctx, scriptNewSession, []string{s.sessionKey(uid), s.userTagKey(uid, "devgen")}, device)
}

func (s *RedisStore) LatestSession(ctx context.Context, uid uint64, device string) (uint64, error) {
	return s.guardedUint(ctx, scriptLatestSession, []string{s.userTagKey(uid, "devgen")}, device)
}

func (s *RedisStore) DeviceOnline(ctx context.Context, uid uint64, device string, gen uint64, max int) ([]DeviceSession, error) {
	keys, args := s.guard(ctx, []string{s.userTagKey(uid, "online")}, device, gen, max, onlineTTL.Milliseconds())
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{scriptDeviceOnline.EvalSha(ctx, p, keys, args...)}
	})
	if err != nil {
		return nil, err
	}
	res, err := cmds[0].(*redis.Cmd).StringSlice()
	if err != nil {
		return nil, redisErr(err)
	}
	var out []DeviceSession
	for i := 0; i+1 < len(res); i += 2 {
		g, err := strconv.ParseFloat(res[i+1], 64)
		if err != nil {
			return nil, fmt.Errorf("store: online score %q: %w", res[i+1], err)
		}
		out = append(out, DeviceSession{Device: res[i], Gen: uint64(g)})
	}
	return out, nil
}

func (s *RedisStore) DeviceOffline(ctx context.Context, uid uint64, device string, gen uint64) error {
	keys, args := s.guard(ctx, []string{s.userTagKey(uid, "online")}, device, gen)
	_, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{scriptDeviceOffline.EvalSha(ctx, p, keys, args...)}
	})
	return err
}
