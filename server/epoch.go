package server

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// Store epochs. A user id, a token and a cached name mean a user only in
// the store that gave them out. A store that comes back empty (Redis
// restarted without its data, a --data directory replaced) or from an
// older snapshot hands the same ids out again, to other people. So every
// store carries an epoch: a random name made once, when the store is first
// used, and kept with its data.
//
//   - Tokens are signed over the epoch (auth.go): a token from another
//     store's contents is refused.
//   - Every Redis write script checks the epoch its request was made under
//     (a session's epoch is the one it logged in under) and changes nothing
//     under another one: ErrStoreReset, which clients see as UNAVAILABLE.
//   - Each node of a cluster reads the epoch at every heartbeat and when a
//     script refused. If it is gone, the node makes a new one (SET NX: the
//     first node to look wins, the others adopt it). If the user id counter
//     is below the highest id the node has seen exist, the store went back
//     to an older snapshot, and the node replaces the epoch.
//   - A node that adopts a new epoch forgets every cached name, kicks every
//     logged-in session with Kicked{STORE_RESET}, and answers requests
//     (Ping aside) with UNAVAILABLE for a node TTL. Every live node reads
//     the epoch at least once a heartbeat, so by then all have adopted it
//     and none still serves users of the old contents, whose ids the new
//     contents will reuse.
//
// The embedded store makes its epoch when its file is created; a node
// reads it at start, so a replaced --data directory shows as a new epoch
// and every earlier token is refused even with a fixed --token-secret.

// ErrStoreReset: the store lost its data or was replaced since the request's
// session began; nothing was done.
var ErrStoreReset = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE,
	"the server's store lost its data or was replaced; log in again (your account may be gone)")

// ErrStoreResetting: the node adopted a new store epoch moments ago and
// waits for every node to have done so before serving again.
var ErrStoreResetting = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE,
	"the server's store was just reset; retry in a few seconds")

// epochErrPrefix starts the error a guarded script returns under another epoch.
const epochErrPrefix = "LOOPCHAT_EPOCH"

// epochGuard runs first in every guarded script: the caller appends the
// epoch key to KEYS and the expected epoch to ARGV, and the guard takes
// them off again so the script's own KEYS and ARGV are as they were. An
// empty expected epoch (a store not yet bound to one) checks nothing.
//
// Both keys are strings (the quiet key is SET with a TTL), so one MGET
// reads them: every guarded script pays one command for the guard, not two
// (each redis.call costs Redis more than the command itself; issue 21).
const epochGuard = `
local want = table.remove(ARGV)
local quietKey = table.remove(KEYS)
local epochKey = table.remove(KEYS)
local guard = redis.call('MGET', epochKey, quietKey)
if want ~= '' and guard[1] ~= want then
  return redis.error_reply('` + epochErrPrefix + ` the store epoch changed')
end
if guard[2] then
  return redis.error_reply('` + quietErrPrefix + ` the store epoch is new; nodes are adopting it')
end
`

// quietErrPrefix starts the error a guarded script returns while a new
// epoch is younger than the quiet period (RedisConfig.ResetQuiet).
const quietErrPrefix = "LOOPCHAT_QUIET"

// guardedScript is a Redis store script that first checks the epoch.
func guardedScript(src string) *redis.Script { return redis.NewScript(epochGuard + src) }

// scriptEpoch returns the store's epoch, creating it if there is none, and
// replaces it if the user id counter is below the highest id a node has
// seen (ARGV[3]) while the epoch is still the one that node knew (ARGV[2]).
// A replacement, and a creation while other nodes may serve sessions of
// the contents that were lost (ARGV[5] = "1"), starts the quiet period:
// the quiet key lives ARGV[4] ms, and guarded scripts refuse until it is
// gone, so no node writes under the new epoch before every live node has
// read it (each does so every heartbeat) and dropped the old sessions.
//
// First of all it checks the keyspace's schema (KEYS[4], redisSchema): one
// newer than this code (ARGV[6]) is refused before anything is changed; an
// absent one (a keyspace from before the marker, or a fresh one) is marked
// as this code's, which reads every older layout.
//
// KEYS: epoch, user id counter, quiet key, schema, and on a cluster the
// epoch's generation, counted up with every new epoch (epoch_cluster.go).
// ARGV: a fresh epoch, known epoch, max uid, quiet ms, quiet on creation,
// this code's schema, and "1" to replace the known epoch whatever the
// counter says (a cluster shard lost its copy of it).
var scriptEpoch = redis.NewScript(`
local schema = redis.call('GET', KEYS[4])
if schema ~= ARGV[6] then
  local v = tonumber(schema or '1')
  if v == nil or v > tonumber(ARGV[6]) then
    return redis.error_reply('` + schemaErrPrefix + ` ' .. schema)
  end
  redis.call('SET', KEYS[4], ARGV[6])
end
local e = redis.call('GET', KEYS[1])
local replace = false
if not e then
  replace = true
  if ARGV[5] == '1' and tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[4])
  end
elseif e == ARGV[2] and (ARGV[7] == '1' or tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[3])) then
  replace = true
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[4])
  end
end
if replace then
  redis.call('SET', KEYS[1], ARGV[1])
  if KEYS[5] then redis.call('INCR', KEYS[5]) end
  return ARGV[1]
end
return e`)

// newNonce is a fresh account nonce (User.Nonce).
func newNonce() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return binary.BigEndian.Uint64(b[:])
}

func newEpoch() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

type epochKey struct{}

// withEpoch marks ctx with the store epoch a request is made under.
func withEpoch(ctx context.Context, epoch string) context.Context {
	return withEpochOf(ctx, &epoch)
}

// withEpochOf is withEpoch with an epoch that outlives the request (a
// session's): the context holds the pointer, so every request costs one
// allocation here, not two.
func withEpochOf(ctx context.Context, epoch *string) context.Context {
	return context.WithValue(ctx, epochKey{}, epoch)
}

// requestEpoch is the store epoch ctx was marked with ("" if none).
func requestEpoch(ctx context.Context) string {
	if e, _ := ctx.Value(epochKey{}).(*string); e != nil {
		return *e
	}
	return ""
}

// requestOrStoreEpoch is the epoch a request was made under, or else the
// one the store is bound to ("" if neither).
func (s *RedisStore) requestOrStoreEpoch(ctx context.Context) string {
	if want := requestEpoch(ctx); want != "" {
		return want
	}
	if e := s.epoch.Load(); e != nil {
		return *e
	}
	return ""
}

// guard appends the epoch and quiet keys and the expected epoch (the
// request's, or else the store's) to a guarded script's keys and arguments.
// On a cluster they are the copies in the slot of the script's keys
// (epoch_cluster.go).
func (s *RedisStore) guard(ctx context.Context, keys []string, args ...any) ([]string, []any) {
	if s.cluster {
		tag := s.p + "{" + s.tags[keySlot(keys[0])] + "}:"
		return append(keys, tag+"epoch", tag+"epoch:quiet"), append(args, s.requestOrStoreEpoch(ctx))
	}
	return append(keys, s.guardKeys[0], s.guardKeys[1]), append(args, s.requestOrStoreEpoch(ctx))
}

// sawUser records that user id exists in the store.
func (s *RedisStore) sawUser(id uint64) {
	for {
		cur := s.maxUID.Load()
		if id <= cur || s.maxUID.CompareAndSwap(cur, id) {
			return
		}
	}
}

// Epoch returns the store's epoch, making a new one when there is none or
// when the store went back to an older snapshot (see scriptEpoch).
func (s *RedisStore) Epoch(ctx context.Context) (string, error) {
	known := ""
	if e := s.epoch.Load(); e != nil {
		known = *e
	}
	// A creation needs the quiet period when other nodes may still serve
	// sessions of lost contents: always when this node served some (it
	// knew an epoch), and at start when some user channel has a
	// subscriber. A first start finds none, and serves at once.
	quietOnCreate := known != ""
	if !quietOnCreate {
		switch err := s.rdb.Get(ctx, s.metaKey("epoch")).Err(); {
		case errors.Is(err, redis.Nil):
			if quietOnCreate, err = s.anyUserSubscribed(ctx); err != nil {
				return "", err
			}
		case err != nil:
			return "", redisErr(err)
		}
	}
	flag := "0"
	if quietOnCreate {
		flag = "1"
	}
	// Before the script marks the keyspace with this code's schema.
	if err := s.migrateConvIndex(ctx); err != nil {
		return "", err
	}
	e, err := s.runEpochScript(ctx, known, flag, false)
	if err == nil && s.cluster {
		return s.epochCopies(ctx, e)
	}
	return e, err
}

// runEpochScript runs scriptEpoch: known is the epoch this node knows,
// quietOnCreate "1" when a creation must start the quiet period, replace
// whether to replace known whatever the id counter says.
func (s *RedisStore) runEpochScript(ctx context.Context, known, quietOnCreate string, replace bool) (string, error) {
	keys := []string{s.metaKey("epoch"), s.metaKey("user:seq"), s.metaKey("epoch:quiet"), s.metaKey("schema")}
	if s.cluster {
		keys = append(keys, s.metaKey("epoch:gen"))
	}
	force := "0"
	if replace {
		force = "1"
	}
	// Through the batcher, a pipeline: a new epoch waits for the replicas
	// like any write (--redis-min-replicas), so a failover right after does
	// not lose it and reset the store a second time.
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{scriptEpoch.EvalSha(ctx, p, keys,
			newEpoch(), known, s.maxUID.Load(), s.cfg.ResetQuiet.Milliseconds(), quietOnCreate, redisSchema, force)}
	})
	var e string
	if len(cmds) == 1 {
		e, err = cmds[0].(*redis.Cmd).Text()
	}
	if err != nil {
		if v, ok := strings.CutPrefix(err.Error(), schemaErrPrefix+" "); ok {
			return "", fmt.Errorf("store: the Redis keyspace %q has schema version %s, but this loopchat knows versions up to %d: "+
				"a newer loopchat wrote it; run that version (or newer) instead: %w", s.p, v, redisSchema, errSchemaNewer)
		}
	}
	return e, redisErr(err)
}

// anyUserSubscribed reports whether some user channel has a subscriber:
// some node serves sessions. On a cluster, shard channels, on every shard.
func (s *RedisStore) anyUserSubscribed(ctx context.Context) (bool, error) {
	pattern := globEscape(s.p) + "user:*"
	cc, ok := s.rdb.(*redis.ClusterClient)
	if !ok {
		chans, err := s.rdb.PubSubChannels(ctx, pattern).Result()
		return len(chans) > 0, redisErr(err)
	}
	var any atomic.Bool
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		chans, err := c.PubSubShardChannels(ctx, pattern).Result()
		if len(chans) > 0 {
			any.Store(true)
		}
		return err
	})
	return any.Load(), redisErr(err)
}

// errSchemaNewer: the store was written by a newer loopchat, in a layout
// this code may misread; it is not used.
var errSchemaNewer = errors.New("store schema newer than this loopchat")

// schemaErrPrefix starts the error scriptEpoch returns for a newer schema.
const schemaErrPrefix = "LOOPCHAT_SCHEMA"

// UseEpoch binds the store to epoch e: guarded writes expect it, and on a
// change every cached name and id is forgotten, as it named a user of the
// old contents.
func (s *RedisStore) UseEpoch(e string) {
	s.learnMu.Lock()
	defer s.learnMu.Unlock()
	if old := s.epoch.Swap(&e); old != nil && *old != e {
		s.cacheGen.Add(1)
		s.names.reset()
		s.ids.reset()
		s.maxUID.Store(0)
	}
}

// learn runs remember (caching what a read found) unless the epoch changed
// since the read began (gen, from cacheGen).
func (s *RedisStore) learn(gen uint64, remember func()) {
	s.learnMu.RLock()
	defer s.learnMu.RUnlock()
	if s.cacheGen.Load() == gen {
		remember()
	}
}

// Epoch is the embedded store's epoch, made with its file.
func (s *BoltStore) Epoch(context.Context) (string, error) { return s.epoch, nil }

// UseEpoch does nothing for the embedded store: only this process opens its
// file, so its contents cannot change underneath.
func (s *BoltStore) UseEpoch(string) {}

// epoch is the store epoch this node serves under.
func (s *Server) epoch() string { return *s.curEpoch.Load() }

// initEpoch reads (or makes) the store's epoch at start.
func (s *Server) initEpoch(ctx context.Context) error {
	e, err := s.store.Epoch(ctx)
	if err != nil {
		return err
	}
	s.store.UseEpoch(e)
	s.curEpoch.Store(&e)
	return nil
}

// storeResetting reports whether the node has adopted a new epoch too
// recently to serve requests under it.
func (s *Server) storeResetting() bool {
	return time.Now().UnixNano() < s.resetUntil.Load()
}

// pokeEpoch asks the epoch watcher to check now (a script was refused).
func (s *Server) pokeEpoch() {
	select {
	case s.epochPoke <- struct{}{}:
	default:
	}
}

// watchEpoch checks the cluster's store epoch every heartbeat and when
// poked, until stop closes.
func (s *Server) watchEpoch(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(s.opts.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		case <-s.epochPoke:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.Heartbeat)
		e, err := s.store.Epoch(ctx)
		cancel()
		if err != nil {
			continue // Redis unreachable: requests fail on their own
		}
		if e != s.epoch() {
			s.adoptEpoch(e)
		}
	}
}

// adoptEpoch switches the node to a new store epoch: see the top of this file.
func (s *Server) adoptEpoch(e string) {
	old := s.epoch()
	s.resetUntil.Store(time.Now().Add(s.opts.NodeTTL).UnixNano())
	s.store.UseEpoch(e)
	// Set before the kicks: a login finishing now either sees the new
	// epoch in its last check, or has set its user before we look (login).
	s.curEpoch.Store(&e)
	s.metrics.storeResets.Inc()
	s.log.Error("the store lost its data or was replaced (its epoch changed): every session is kicked, every earlier token refused",
		"old_epoch", old, "new_epoch", e, "refusing_requests_for", s.opts.NodeTTL)
	for _, c := range s.snapshotConns() {
		if c.user.Load() != nil {
			c.kick(chatpb.KickReason_KICK_REASON_STORE_RESET, "the server's store lost its data or was replaced; log in again")
			// Unbound now, not when the connection finally closes (a
			// client that does not read keeps it for writeWait): the id
			// belongs to someone else in the new contents.
			c.cleanup()
		}
	}
	if s.opts.TokenSecret == nil && s.rdb != nil {
		// A wipe took the shared secret too, and a node started since may
		// have made another: agree on one again (every earlier token is
		// refused by the epoch anyway, so changing it costs nothing).
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.Heartbeat)
		secret, err := sharedSecret(ctx, s.rdb, s.opts.RedisPrefix, s.tokens.Load().secret)
		cancel()
		if err != nil {
			s.log.Warn("could not agree on the token secret after the store reset; tokens may not work across nodes until a restart", "err", err)
			return
		}
		tk := newTokens(secret, s.opts.TokenTTL)
		s.tokens.Store(&tk)
	}
}
