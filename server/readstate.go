package server

import (
	"context"
	"encoding/binary"
	"errors"
	"strconv"

	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"
)

// Read state: per user and conversation, the seq the user has read up to.
// It only moves forward, and never past the conversation's last seq, so a
// client that marks a seq it has not seen yet cannot make an unread
// message look read.

// bucketReadSeqs holds the embedded store's read seqs: uid|convKey -> seq.
var bucketReadSeqs = []byte("read_seqs")

func readSeqKey(uid uint64, c Conversation) []byte { return appendConvKey(u64(uid), c) }

func (s *BoltStore) MarkRead(ctx context.Context, uid uint64, c Conversation, upTo uint64) (seq uint64, moved bool, err error) {
	last, err := s.LastSeq(ctx, c)
	if err != nil {
		return 0, false, err
	}
	upTo = min(upTo, last)
	err = s.committer.do(ctx, func(tx *bolt.Tx) error {
		b, k := tx.Bucket(bucketReadSeqs), readSeqKey(uid, c)
		seq, moved = 0, false
		if v := b.Get(k); len(v) == 8 {
			seq = binary.BigEndian.Uint64(v)
		}
		// A send not copied yet has marked it read further already.
		s.mem.Lock()
		seq = max(seq, s.pendingReadLocked(uid, c))
		s.mem.Unlock()
		if upTo <= seq {
			return nil
		}
		seq, moved = upTo, true
		return b.Put(k, u64(upTo))
	})
	return seq, moved, err
}

func (s *BoltStore) ReadSeq(ctx context.Context, uid uint64, c Conversation) (seq uint64, err error) {
	// Sends still only in the message log move it too (historyCopy).
	if err := s.applyLogForUser(ctx, uid); err != nil {
		return 0, err
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketReadSeqs).Get(readSeqKey(uid, c)); len(v) == 8 {
			seq = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return seq, err
}

// readKey is a user's read seqs in Redis, under the user's hash tag:
// HASH conversation key -> seq.
func (s *RedisStore) readKey(uid uint64) string {
	return s.p + "{u:" + strconv.FormatUint(uid, 10) + "}:read"
}

// scriptMarkRead moves one read seq forward. The caller clamps the seq to
// the conversation's last seq first: that counter lives on the
// conversation's slot, and reading it apart is safe because it only grows.
// KEYS: read key. ARGV: conversation key, seq. Returns {seq, moved}.
var scriptMarkRead = guardedScript(`
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local up = tonumber(ARGV[2])
if up <= cur then return {cur, 0} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {up, 1}`)

func (s *RedisStore) MarkRead(ctx context.Context, uid uint64, c Conversation, upTo uint64) (uint64, bool, error) {
	last, err := s.LastSeq(ctx, c)
	if err != nil {
		return 0, false, err
	}
	res, err := s.run(ctx, scriptMarkRead, []string{s.readKey(uid)}, c.Key(), min(upTo, last)).Int64Slice()
	if err != nil || len(res) != 2 {
		return 0, false, redisErr(err)
	}
	return uint64(res[0]), res[1] == 1, nil
}

func (s *RedisStore) ReadSeq(ctx context.Context, uid uint64, c Conversation) (uint64, error) {
	v, err := s.rdb.HGet(ctx, s.readKey(uid), c.Key()).Uint64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	return v, redisErr(err)
}
