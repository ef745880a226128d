package server

import (
	"context"
	"errors"
	"strconv"
	"sync"
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

// localSessions is the Store's generation counter for a single node. It
// lives in memory: every session dies with the process, so nothing older
// than a restart can come back to compete.
type localSessions struct {
	mu   sync.Mutex
	gens map[uint64]uint64
}

func (l *localSessions) NewSession(_ context.Context, uid uint64) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gens == nil {
		l.gens = make(map[uint64]uint64)
	}
	l.gens[uid]++
	return l.gens[uid], nil
}

func (l *localSessions) LatestSession(_ context.Context, uid uint64) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gens[uid], nil
}

// sessionKey is the Redis counter of uid's session generations.
func (s *RedisStore) sessionKey(uid uint64) string {
	return s.p + "session:" + strconv.FormatUint(uid, 10)
}

// Both go through the epoch guard: a login (or a resync) checks that the
// store still holds the contents its user was found in (epoch.go).
//
// A generation is the counter plus one, or Redis's clock in microseconds
// if that is higher. The counter alone would go back with a Redis that
// lost recent writes (a failover to a lagging replica, appendfsync
// everysec, a snapshot restored): the next login would then get a number
// below a live session's, and the older session would win. Redis's own
// clock keeps moving, so a login after such a loss still outranks every
// session from before it. One clock, the store's, orders all nodes.
var (
	// KEYS: session counter.
	scriptNewSession = guardedScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local g = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
if g < now then g = now end
redis.call('SET', KEYS[1], string.format('%d', g))
return g`)
	scriptLatestSession = guardedScript(`return tonumber(redis.call('GET', KEYS[1]) or '0')`)
)

func (s *RedisStore) NewSession(ctx context.Context, uid uint64) (uint64, error) {
	return s.guardedCount(ctx, scriptNewSession, s.sessionKey(uid))
}

func (s *RedisStore) LatestSession(ctx context.Context, uid uint64) (uint64, error) {
	return s.guardedCount(ctx, scriptLatestSession, s.sessionKey(uid))
}
