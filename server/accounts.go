package server

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"

	chatpb "github.com/loopchat/loopchat/proto"
)

// What the server's API (api.go) does to accounts beyond what clients can:
// ban a user, revoke their tokens, end their sessions everywhere, and walk
// every user for a durable broadcast. The restrictions live in the account
// record itself (bbolt's userRecord, Redis's user:<uid> hash), which both
// login paths read anyway: a password login reads the hash with
// Credentials, a token login reads the nonce with Account. So checking
// them costs no extra store read on the login path.

// KickNotice ends every session of the channel's user, on every node,
// with Kicked{DISCONNECTED_BY_SERVER, Message}.
type KickNotice struct {
	Message string
}

// loginAllowed refuses a banned account, and a token login while the
// account's tokens are refused (Store.RevokeTokens). A password login
// reaches here only with the right password, so a ban is told only to
// whoever knows it.
func loginAllowed(u User, now time.Time, byToken bool) error {
	ms := now.UnixMilli()
	if u.BannedUntilMs > ms {
		return ErrBanned
	}
	if byToken && u.TokensRefusedUntilMs > ms {
		return ErrTokensRefused
	}
	return nil
}

// disconnect kicks every session of uid on every node with
// DISCONNECTED_BY_SERVER and msg, and reports whether uid had one. That
// is asked of the broker (Online: the user's channel has a subscriber),
// not read from the publish's count, which on Redis includes pattern
// subscribers: a PSUBSCRIBE watching the channels is nobody's session.
func (s *Server) disconnect(ctx context.Context, uid uint64, msg string) (bool, error) {
	online, err := s.broker.Online(ctx, []uint64{uid})
	if err != nil {
		return false, err
	}
	if _, err := s.broker.Publish(ctx, []uint64{uid}, Event{Epoch: requestEpoch(ctx), Kick: &KickNotice{Message: msg}}); err != nil {
		return false, err
	}
	return online[0], nil
}

// SetBan rewrites uid's record with the ban.
func (s *BoltStore) SetBan(ctx context.Context, uid uint64, untilMs int64) error {
	return s.updateUser(ctx, uid, func(rec *userRecord) { rec.Ban = max(untilMs, 0) })
}

// RevokeTokens rewrites uid's record with a new nonce and the window.
func (s *BoltStore) RevokeTokens(ctx context.Context, uid uint64, untilMs int64) error {
	return s.updateUser(ctx, uid, func(rec *userRecord) {
		rec.Nonce = newNonce()
		rec.TokRev = max(untilMs, 0)
	})
}

// updateUser changes uid's record in one commit. change may run more than
// once (the committer retries a failed batch write by write).
func (s *BoltStore) updateUser(ctx context.Context, uid uint64, change func(*userRecord)) error {
	return s.committer.do(ctx, func(tx *bolt.Tx) error {
		users := tx.Bucket(bucketUsers)
		v := users.Get(u64(uid))
		if v == nil {
			return ErrUserNotFound
		}
		var rec userRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("store: user %d: %w", uid, err)
		}
		change(&rec)
		out, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return users.Put(u64(uid), out)
	})
}

// Users walks the users bucket from after, decoding only names.
func (s *BoltStore) Users(_ context.Context, after uint64, limit int) (out []User, err error) {
	if after == math.MaxUint64 || limit <= 0 {
		return nil, nil
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketUsers).Cursor()
		for k, v := c.Seek(u64(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			var rec struct {
				Name string `json:"name"`
			}
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("store: user record %x: %w", k, err)
			}
			out = append(out, User{ID: binary.BigEndian.Uint64(k), Name: rec.Name})
		}
		return nil
	})
	return out, err
}

var (
	// KEYS: user:<uid>. ARGV: until ms ("0": lift). One slot.
	scriptSetBan = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '0' then redis.call('HDEL', KEYS[1], 'ban') else redis.call('HSET', KEYS[1], 'ban', ARGV[1]) end
return 1`)

	// KEYS: user:<uid>. ARGV: new nonce, token logins refused until ms
	// ("0": no window). One slot.
	scriptRevokeTokens = guardedScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'nonce', ARGV[1])
if ARGV[2] == '0' then redis.call('HDEL', KEYS[1], 'tokrev') else redis.call('HSET', KEYS[1], 'tokrev', ARGV[2]) end
return 1`)
)

// SetBan writes the ban into uid's hash, only if the user exists: an
// HSET alone would make a user hash out of nothing.
func (s *RedisStore) SetBan(ctx context.Context, uid uint64, untilMs int64) error {
	return userScriptResult(s.run(ctx, scriptSetBan, []string{s.userKey(uid)}, strconv.FormatInt(max(untilMs, 0), 10)).Int())
}

// RevokeTokens replaces uid's nonce and writes the window, in one script.
// Token logins read the account from Redis, never from a cache
// (Store.Account), so every node refuses the old tokens at once.
func (s *RedisStore) RevokeTokens(ctx context.Context, uid uint64, untilMs int64) error {
	return userScriptResult(s.run(ctx, scriptRevokeTokens, []string{s.userKey(uid)}, strconv.FormatUint(newNonce(), 10),
		strconv.FormatInt(max(untilMs, 0), 10)).Int())
}

func userScriptResult(r int, err error) error {
	switch {
	case err != nil:
		return redisErr(err)
	case r == 0:
		return ErrUserNotFound
	}
	return nil
}

// usersPage is how many names Users asks Redis for in one pipeline.
const usersPage = 512

// Users reads names by id from after up to the id counter: ids are
// handed out by INCR in the script that makes the user, so there are no
// holes but those of a store that lost data (and on a cluster, ids taken
// by registrations whose name was taken meanwhile). Names go around the node's
// name cache: a broadcast walking every user would only evict the names
// that sends actually use.
func (s *RedisStore) Users(ctx context.Context, after uint64, limit int) ([]User, error) {
	last, err := s.rdb.Get(ctx, s.metaKey("user:seq")).Uint64()
	if errors.Is(err, redis.Nil) || limit <= 0 {
		return nil, nil
	}
	if err != nil {
		return nil, redisErr(err)
	}
	var out []User
	for next := after + 1; next <= last && next > after && len(out) < limit; {
		n := min(uint64(min(limit-len(out), usersPage)), last-next+1)
		cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
			out := make([]redis.Cmder, n)
			for i := range n {
				out[i] = p.HMGet(ctx, s.userKey(next+i), "name", "pend")
			}
			return out
		})
		if err != nil {
			return nil, err
		}
		for i, c := range cmds {
			// A pending record (a cluster's registration cut off before it
			// claimed the name) is no user yet.
			if v := c.(*redis.SliceCmd).Val(); len(v) == 2 && v[1] == nil {
				if name, ok := v[0].(string); ok {
					out = append(out, User{ID: next + uint64(i), Name: name})
				}
			}
		}
		next += n
	}
	return out, nil
}

// kickFor is the Kicked frame a KickNotice makes.
func kickFor(n *KickNotice) (chatpb.KickReason, string) {
	msg := n.Message
	if msg == "" {
		msg = "disconnected by the server"
	}
	return chatpb.KickReason_KICK_REASON_DISCONNECTED_BY_SERVER, msg
}
