package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// The store epoch on a Redis Cluster (docs/cluster.md, "Redis Cluster").
//
// A guarded script checks the epoch in the step that writes, but a script
// on a cluster may touch the keys of one slot only, and the epoch lives in
// one slot ({meta}). So every slot carries a copy: P{<tag>}:epoch, where
// tag hashes to that slot (slotTags), beside P{<tag>}:epoch:quiet while
// the quiet period lasts. guard names the copies of the slot of a script's
// keys, and the guard's Lua is the same as on one Redis.
//
// The copies are written eagerly, all 16,384 of them, whenever the epoch is
// made or replaced: {meta}:epoch:gen counts the epochs, each copy carries
// the generation it was written for beside it (P{<tag>}:epoch:gen, a copy
// is never overwritten by an older one), and {meta}:epoch:copied is set to
// the generation once every copy is written. Every node's Epoch (at start,
// at every heartbeat and when a script was refused) finishes the copies
// of the current generation if they are not marked done, whichever node
// made the epoch and wherever it stopped. Until then, a script in a slot
// not yet copied is refused as a store reset, and clients retry.
//
// A missing copy, once they are done, means the shard holding it lost
// its data (restarted empty, both its primary and its replicas): the
// store's contents are no longer whole. Epoch looks at one copy in every
// slot range of the cluster each time, and at the copy of every slot
// where a script was refused since (keys deleted by hand lose less than a
// shard), and replaces the epoch when one is gone or differs, as a store
// reset: every session is kicked, every token refused, as when one Redis
// comes back empty. Slots that move between shards take their copies
// along (MIGRATE moves every key of the slot).

// scriptEpochCopy writes one slot's copy of the epoch unless a newer
// generation's is there. KEYS: the slot's epoch, quiet and generation
// copies. ARGV: epoch, generation, quiet ms left (0: none).
var scriptEpochCopy = redis.NewScript(`
if tonumber(redis.call('GET', KEYS[3]) or '0') > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[3]) end
return 1`)

// scriptEpochState reads the epoch, its generation, the generation whose
// copies are done, and the quiet period's ms left, in one step. KEYS: the
// {meta} epoch, epoch:gen, epoch:copied, epoch:quiet.
var scriptEpochState = redis.NewScript(`
return {redis.call('GET', KEYS[1]) or '', tonumber(redis.call('GET', KEYS[2]) or '0'),
  tonumber(redis.call('GET', KEYS[3]) or '0'), redis.call('PTTL', KEYS[4])}`)

// scriptEpochCopied marks the copies of generation ARGV[1] done, if it is
// still the current one. KEYS: epoch:gen, epoch:copied.
var scriptEpochCopied = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[1]) end
return 0`)

// slotKey is slot's copy of name ("epoch", "epoch:quiet", "epoch:gen").
func (s *RedisStore) slotKey(slot int, name string) string {
	return s.p + "{" + s.tags[slot] + "}:" + name
}

// epochCopies makes sure every slot has its copy of epoch e (the one
// scriptEpoch returned) and that no shard lost its copies, replacing the
// epoch if one did. It returns the epoch the store has after that.
func (s *RedisStore) epochCopies(ctx context.Context, e string) (string, error) {
	for range 3 {
		res, err := scriptEpochState.Run(ctx, s.rdb, []string{s.metaKey("epoch"), s.metaKey("epoch:gen"),
			s.metaKey("epoch:copied"), s.metaKey("epoch:quiet")}).Slice()
		if err != nil || len(res) != 4 {
			return "", fmt.Errorf("store: epoch state %v: %w", res, redisErr(err))
		}
		cur, _ := res[0].(string)
		gen, _ := res[1].(int64)
		copied, _ := res[2].(int64)
		quiet, _ := res[3].(int64)
		if cur == "" {
			// Gone again since the script made it: the caller looks again
			// at its next heartbeat.
			return e, nil
		}
		e = cur
		if copied != gen {
			// Some 0.2 s, once per epoch, and every write waits for it: not
			// cut short by the caller's deadline (a heartbeat's, which may be
			// shorter; the start's 5 s on a loaded machine), or the copies
			// would be written again and again, never marked done.
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			err := s.writeEpochCopies(wctx, e, gen, max(quiet, 0))
			if err == nil {
				err = scriptEpochCopied.Run(wctx, s.rdb, []string{s.metaKey("epoch:gen"), s.metaKey("epoch:copied")}, gen).Err()
			}
			cancel()
			return e, redisErr(err)
		}
		lost, err := s.epochCopyLost(ctx, e)
		if err != nil || !lost {
			return e, err
		}
		// A shard lost its data: a store reset, as when one Redis comes
		// back empty. The first node to see it replaces the epoch; the
		// others get the new one from the script.
		if e, err = s.runEpochScript(ctx, e, "1", true); err != nil {
			return "", err
		}
	}
	return e, nil
}

// writeEpochCopies writes epoch e of generation gen into every slot, with
// the quiet period's quietMs left, in pipelines of a few thousand.
func (s *RedisStore) writeEpochCopies(ctx context.Context, e string, gen, quietMs int64) error {
	// Loaded on every primary first: a pipeline of EVALSHAs cannot fall
	// back to EVAL one by one.
	if err := scriptEpochCopy.Load(ctx, s.rdb).Err(); err != nil {
		return redisErr(err)
	}
	const chunk = 2048
	for from := 0; from < clusterSlots; from += chunk {
		pipe := s.rdb.Pipeline()
		for slot := from; slot < from+chunk && slot < clusterSlots; slot++ {
			scriptEpochCopy.EvalSha(ctx, pipe, []string{s.slotKey(slot, "epoch"), s.slotKey(slot, "epoch:quiet"),
				s.slotKey(slot, "epoch:gen")}, e, gen, quietMs)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("store: epoch copies: %w", redisErr(err))
		}
	}
	return nil
}

// epochCopyLost reports whether some shard's copy of epoch e is missing
// or another: it reads the copy of the first slot of every slot range the
// cluster serves.
func (s *RedisStore) epochCopyLost(ctx context.Context, e string) (bool, error) {
	owners, err := slotOwners(ctx, s.rdb.(*redis.ClusterClient))
	if err != nil {
		return false, redisErr(err)
	}
	pipe := s.rdb.Pipeline()
	var cmds []*redis.StringCmd
	for slot, o := range owners {
		if o != "" && (slot == 0 || owners[slot-1] != o) {
			cmds = append(cmds, pipe.Get(ctx, s.slotKey(slot, "epoch")))
		}
	}
	s.suspectMu.Lock()
	for k := range s.suspects {
		cmds = append(cmds, pipe.Get(ctx, k))
	}
	clear(s.suspects)
	s.suspectMu.Unlock()
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return false, redisErr(err)
	}
	for _, c := range cmds {
		if v, err := c.Result(); v != e && (err == nil || errors.Is(err, redis.Nil)) {
			return true, nil
		}
	}
	return false, nil
}

// maxSuspects bounds the copies remembered between two Epochs.
const maxSuspects = 64

// noteRefused remembers the copy of the epoch that refused cmd (a guarded
// script: its epoch copy is the last but one of its keys), for the next
// Epoch to look at.
func (s *RedisStore) noteRefused(cmd redis.Cmder) {
	args := cmd.Args()
	if len(args) < 3 {
		return
	}
	n, ok := args[2].(int)
	if !ok || n < 2 || len(args) < 3+n {
		return
	}
	key, ok := args[3+n-2].(string)
	if !ok {
		return
	}
	s.suspectMu.Lock()
	defer s.suspectMu.Unlock()
	if s.suspects == nil {
		s.suspects = make(map[string]struct{})
	}
	if len(s.suspects) < maxSuspects {
		s.suspects[key] = struct{}{}
	}
}
