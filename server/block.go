package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"
)

// Blocking (docs/protocol.md, "Blocking"). A block is one user's: a
// blocks b. Its effects are mutual: while either of two users blocks the
// other, a 1:1 message between them is refused before anything is stored,
// AddFriend between them is refused, and typing notices in their
// conversation are dropped. Blocking ends their friendship.
//
// Where a block is kept:
//
//	bbolt: bucket "blocked", uid|target -> empty, and a copy of every
//	    pair in memory (blockIndex) that the message log's writer reads
//	    in the step that takes a message's seq.
//	Redis (one, and a cluster): P{u:<uid>}:blocked, SET of the target
//	    uids, in the user's slot.

// bucketBlocked holds every block: uid|target -> empty.
var bucketBlocked = []byte("blocked")

// blockIndex is the embedded store's blocks in memory, so that the log
// writer checks a 1:1 send against them without a bbolt read. Block and
// Unblock change it after their commit and before they return, under
// writes, so that it always follows bbolt's order: a send that takes its
// seq after Block returned is refused. One taking it while a Block is on
// its way may pass: it came first.
type blockIndex struct {
	writes sync.Mutex // serialises Block and Unblock: commit, then memory
	mu     sync.RWMutex
	pairs  map[[2]uint64]struct{} // {blocker, blocked}
	// n is len(pairs), read without mu: with no block at all (the usual
	// case on many servers) a send costs one atomic load.
	n atomic.Int64
}

func (b *blockIndex) load(tx *bolt.Tx) error {
	b.pairs = make(map[[2]uint64]struct{})
	err := tx.Bucket(bucketBlocked).ForEach(func(k, _ []byte) error {
		if len(k) != 16 {
			return fmt.Errorf("store: blocked key %x", k)
		}
		b.pairs[[2]uint64{binary.BigEndian.Uint64(k), binary.BigEndian.Uint64(k[8:])}] = struct{}{}
		return nil
	})
	b.n.Store(int64(len(b.pairs)))
	return err
}

// set records (blocked) or forgets that a blocks c.
func (b *blockIndex) set(a, c uint64, blocked bool) {
	b.mu.Lock()
	if blocked {
		b.pairs[[2]uint64{a, c}] = struct{}{}
	} else {
		delete(b.pairs, [2]uint64{a, c})
	}
	b.n.Store(int64(len(b.pairs)))
	b.mu.Unlock()
}

// either reports whether a blocks c or c blocks a.
func (b *blockIndex) either(a, c uint64) bool {
	if b.n.Load() == 0 {
		return false
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.eitherLocked(a, c)
}

func (b *blockIndex) eitherLocked(a, c uint64) bool {
	_, x := b.pairs[[2]uint64{a, c}]
	_, y := b.pairs[[2]uint64{c, a}]
	return x || y
}

// refuseBlocked fails every 1:1 send of batch between two users one of
// whom blocks the other, before the batch takes seqs (logBatch).
func (s *BoltStore) refuseBlocked(batch []*appendOp) {
	if s.blocks.n.Load() == 0 {
		return
	}
	s.blocks.mu.RLock()
	defer s.blocks.mu.RUnlock()
	for _, op := range batch {
		e := op.entry
		if e == nil || op.res.Duplicate || op.err != nil || e.msg.GroupId != 0 || e.msg.ToUserId == 0 {
			continue
		}
		if s.blocks.eitherLocked(e.sender, e.msg.ToUserId) {
			op.err = ErrBlocked
		}
	}
}

// blockedTx reports whether a blocks b or b blocks a, in tx.
func blockedTx(tx *bolt.Tx, a, b uint64) bool {
	bk := tx.Bucket(bucketBlocked)
	return bk.Get(key2(a, b)) != nil || bk.Get(key2(b, a)) != nil
}

func (s *BoltStore) Block(ctx context.Context, uid, target uint64, lim Limits) error {
	if uid == target {
		return ErrBlockSelf
	}
	s.blocks.writes.Lock()
	defer s.blocks.writes.Unlock()
	err := s.committer.do(ctx, func(tx *bolt.Tx) error {
		for _, id := range []uint64{uid, target} {
			if _, err := getUser(tx, id); err != nil {
				return err
			}
		}
		bk := tx.Bucket(bucketBlocked)
		if bk.Get(key2(uid, target)) != nil {
			return nil
		}
		if reached(bk, uid, lim.BlockedPerUser) {
			return ErrTooManyBlocked
		}
		if err := bk.Put(key2(uid, target), nil); err != nil {
			return err
		}
		_, err := dropFriendship(tx, uid, target)
		return err
	})
	if err == nil {
		// Also when it was blocked already: a Block whose context ended
		// after its commit left memory behind, and its retry mends it.
		s.blocks.set(uid, target, true)
	}
	return err
}

func (s *BoltStore) Unblock(ctx context.Context, uid, target uint64) error {
	if uid == target {
		return ErrBlockSelf
	}
	s.blocks.writes.Lock()
	defer s.blocks.writes.Unlock()
	err := s.committer.do(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketBlocked)
		if bk.Get(key2(uid, target)) == nil {
			return ErrNotBlocked
		}
		return bk.Delete(key2(uid, target))
	})
	if err == nil || errors.Is(err, ErrNotBlocked) {
		s.blocks.set(uid, target, false)
	}
	return err
}

// BlockedUsers names them from the name cache, as Friends does.
func (s *BoltStore) BlockedUsers(ctx context.Context, uid uint64) ([]User, error) {
	var ids []uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		prefix := u64(uid)
		c := tx.Bucket(bucketBlocked).Cursor()
		for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
			ids = append(ids, binary.BigEndian.Uint64(k[8:]))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s.usersByID(ctx, ids)
}

// usersByID names each of ids (UserByID), in their order.
func (s *BoltStore) usersByID(ctx context.Context, ids []uint64) ([]User, error) {
	out := make([]User, 0, len(ids))
	for _, id := range ids {
		u, err := s.UserByID(ctx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

func (s *BoltStore) Blocked(_ context.Context, a, b uint64) (bool, error) {
	return s.blocks.either(a, b), nil
}

// ---- Redis ----

// blockedKey is uid's block set, {u:<uid>}:blocked, on one Redis and on
// a cluster alike.
func (s *RedisStore) blockedKey(uid uint64) string { return s.userTagKey(uid, "blocked") }

var (
	// KEYS: {u:<uid>}:blocked. ARGV: target, block limit (0: none).
	// Returns 1 (blocked now, or already), -2 (at the limit). Its own
	// slot: on one Redis the friendship is ended in the same script
	// (scriptBlock), on a cluster by the steps of RemoveFriend after it.
	luaBlockAdd = `
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  local lim = tonumber(ARGV[2])
  if lim > 0 and redis.call('SCARD', KEYS[1]) >= lim then return -2 end
  redis.call('SADD', KEYS[1], ARGV[1])
end
`
	scriptClusterBlockAdd = guardedScript(luaBlockAdd + `return 1`)

	// KEYS: {u:<uid>}:blocked, user:<uid>, user:<target>, friends:<uid>,
	// friends:<target>. ARGV: target, block limit, uid. One Redis: the
	// block and the end of the friendship in one script. Returns -1 (a
	// user missing), -2 (at the limit), else 1.
	scriptBlock = guardedScript(`
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
` + luaBlockAdd + `
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[3])
return 1`)

	// KEYS: {u:<uid>}:blocked. ARGV: target. Returns 1 if it was there.
	scriptUnblock = guardedScript(`return redis.call('SREM', KEYS[1], ARGV[1])`)
)

func (s *RedisStore) Block(ctx context.Context, uid, target uint64, lim Limits) error {
	if uid == target {
		return ErrBlockSelf
	}
	if s.cluster {
		return s.clusterBlock(ctx, uid, target, lim)
	}
	r, err := s.runInt(ctx, scriptBlock, []string{s.blockedKey(uid), s.userKey(uid), s.userKey(target),
		s.friendsKey(uid), s.friendsKey(target)}, target, lim.BlockedPerUser, uid)
	switch {
	case err != nil:
		return err
	case r == -1:
		return ErrUserNotFound
	case r == -2:
		return ErrTooManyBlocked
	}
	return nil
}

// clusterBlock blocks in steps: (1) the block (uid's slot), with the
// limit; (2) the friendship ended as clusterRemoveFriend does. The block
// is the commit point: once it is there, AddFriend between them is
// refused, and a crash before the friendship ended leaves friends whom
// the Block's retry (or RemoveFriend) unfriends.
func (s *RedisStore) clusterBlock(ctx context.Context, uid, target uint64, lim Limits) error {
	exist, err := s.usersExist(ctx, uid, target)
	if err != nil {
		return err
	}
	if !exist[0] || !exist[1] {
		return ErrUserNotFound
	}
	r, err := s.runInt(ctx, scriptClusterBlockAdd, []string{s.blockedKey(uid)}, target, lim.BlockedPerUser)
	switch {
	case err != nil:
		return err
	case r == -2:
		return ErrTooManyBlocked
	}
	if err := s.clusterRemoveFriend(ctx, uid, target); err != nil && !errors.Is(err, ErrNotFriends) {
		return err
	}
	return nil
}

func (s *RedisStore) Unblock(ctx context.Context, uid, target uint64) error {
	if uid == target {
		return ErrBlockSelf
	}
	n, err := s.runInt(ctx, scriptUnblock, []string{s.blockedKey(uid)}, target)
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotBlocked
	}
	return nil
}

func (s *RedisStore) BlockedUsers(ctx context.Context, uid uint64) ([]User, error) {
	members, err := s.rdb.SMembers(ctx, s.blockedKey(uid)).Result()
	if err != nil {
		return nil, redisErr(err)
	}
	ids := parseIDs(members)
	slices.Sort(ids)
	names, err := s.usernames(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make([]User, 0, len(ids))
	for _, id := range ids {
		out = append(out, User{ID: id, Name: names[id]})
	}
	return out, nil
}

// Blocked reads both sets in one round trip (two slots on a cluster).
func (s *RedisStore) Blocked(ctx context.Context, a, b uint64) (bool, error) {
	pipe := s.rdb.Pipeline()
	x := pipe.SIsMember(ctx, s.blockedKey(a), strconv.FormatUint(b, 10))
	y := pipe.SIsMember(ctx, s.blockedKey(b), strconv.FormatUint(a, 10))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return false, redisErr(err)
	}
	return x.Val() || y.Val(), nil
}
