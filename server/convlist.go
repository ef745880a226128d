package server

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
)

// The conversation list (ListConversations): a user's conversations with
// their last message, last seq, read seq and unread count. Groups come
// from the user's group list. 1:1 conversations come from a per-user index
// of the conversations the user is in (sends to non-friends are allowed,
// so the friend list does not say), written when a conversation gets its
// first message and never again after: a set, so the send path pays one
// lookup (bbolt, per conversation per lazy copy) or one SADD of a member
// already there (Redis). Nothing about the order is kept: the list reads
// each conversation's last message and sorts, so a list costs time in
// proportion to the user's conversations (docs/conversations.md).

// ConversationSummary is one conversation of a user's list.
type ConversationSummary struct {
	Conv Conversation
	// Name is the peer's username (a 1:1 conversation) or the group's name.
	Name string
	// Last is the newest message the user can see (as History would give
	// it): nil when retention dropped every message, or, in a group, when
	// nothing was sent since the user joined.
	Last *chatpb.Message
	// LastSeq is the conversation's highest seq (LastSeq), >= Last.Seq.
	LastSeq uint64
	// ReadSeq is the user's read seq (ReadSeq).
	ReadSeq uint64
	// JoinedSeq is the user's join point in a group (Member.JoinedSeq).
	JoinedSeq uint64
	// Unread is LastSeq - max(ReadSeq, JoinedSeq), or 0.
	Unread uint64
}

// Peer is the other user of a 1:1 conversation of uid's (uid itself for a
// conversation with oneself), 0 for a group.
func (cs *ConversationSummary) Peer(uid uint64) uint64 {
	if cs.Conv.GroupID != 0 {
		return 0
	}
	return cs.Conv.A + cs.Conv.B - uid
}

// lastSentAt is when the summary's last message was sent (0: none).
func (cs *ConversationSummary) lastSentAt() int64 {
	if cs.Last == nil {
		return 0
	}
	return cs.Last.SentAtMs
}

// sortConversations is the end of every store's ListConversations: it
// drops conversations without a message yet, counts the unread, and keeps
// the limit most recent (by the last message's send time, then the last
// seq; then by conversation, so the order is total), saying whether there
// were more.
func sortConversations(all []ConversationSummary, limit int) ([]ConversationSummary, bool) {
	all = slices.DeleteFunc(all, func(cs ConversationSummary) bool { return cs.LastSeq == 0 })
	for i := range all {
		cs := &all[i]
		cs.Unread = cs.LastSeq - min(cs.LastSeq, max(cs.ReadSeq, cs.JoinedSeq))
	}
	slices.SortFunc(all, func(a, b ConversationSummary) int {
		return cmp.Or(
			cmp.Compare(b.lastSentAt(), a.lastSentAt()),
			cmp.Compare(b.LastSeq, a.LastSeq),
			cmp.Compare(b.Conv.GroupID, a.Conv.GroupID),
			cmp.Compare(a.Conv.A, b.Conv.A),
			cmp.Compare(a.Conv.B, b.Conv.B))
	})
	if len(all) > limit {
		return all[:limit], true
	}
	return all, false
}

// ---- the embedded store ----

// bucketUserConvs (schema 3) indexes the 1:1 conversations each user is
// in: uid|convKey -> empty. The lazy copy from the message log adds an
// entry for both users when it is missing (historyCopy.finish).
var bucketUserConvs = []byte("user_convs")

// indexDirect adds the 1:1 conversation conv (key ck) to both users'
// index, where missing. A group, or a message logged before seqs, is no
// business of the index.
func indexDirect(tx *bolt.Tx, conv Conversation, ck []byte) error {
	if conv.GroupID != 0 {
		return nil
	}
	b := tx.Bucket(bucketUserConvs)
	for _, uid := range []uint64{conv.A, conv.B} {
		k := append(u64(uid), ck...)
		if b.Get(k) != nil {
			continue
		}
		if err := b.Put(k, nil); err != nil {
			return err
		}
	}
	return nil
}

// indexOldConversations builds the index from conv_meta, which holds every
// conversation that ever got a seq: the upgrade of a file of schema 2 (or
// 1, which has none) to 3, in the transaction that stamps the new schema.
func indexOldConversations(tx *bolt.Tx) error {
	c := tx.Bucket(bucketConvMeta).Cursor()
	for k, _ := c.Seek([]byte{'d'}); k != nil && k[0] == 'd'; k, _ = c.Next() {
		if len(k) != 17 {
			continue
		}
		conv := Conversation{A: binary.BigEndian.Uint64(k[1:9]), B: binary.BigEndian.Uint64(k[9:17])}
		if err := indexDirect(tx, conv, k); err != nil {
			return err
		}
	}
	return nil
}

// ListConversations copies first whatever of the user's conversations is
// only in the message log (as History does), so every message that got
// SendOK is in the list; then it reads the index, the user's groups, and
// each conversation's last message and read seq in one transaction.
func (s *BoltStore) ListConversations(ctx context.Context, uid uint64, limit int) ([]ConversationSummary, bool, error) {
	if err := s.applyLogForUser(ctx, uid); err != nil {
		return nil, false, err
	}
	all, stale, err := s.readConversations(uid)
	if err == nil && stale {
		// A group message logged with the user left out of its
		// recipients (sent as they joined) is not copied yet.
		s.forceCopy.Store(true)
		s.forceHistory.Store(true)
		if err = s.committer.do(ctx, noWrite); err == nil {
			all, _, err = s.readConversations(uid)
		}
	}
	if err != nil {
		return nil, false, err
	}
	list, more := sortConversations(all, limit)
	return list, more, nil
}

// readConversations reads uid's conversations from bbolt (unsorted), and
// whether any has a message the user can see that is still only in the
// message log.
func (s *BoltStore) readConversations(uid uint64) (all []ConversationSummary, stale bool, err error) {
	oldMs := s.historyCutoffMs(time.Now())
	err = s.db.View(func(tx *bolt.Tx) error {
		prefix := u64(uid)
		c := tx.Bucket(bucketUserConvs).Cursor()
		for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
			ck := k[8:]
			if len(ck) != 17 || ck[0] != 'd' {
				return fmt.Errorf("store: conversation index key %x", k)
			}
			cs := ConversationSummary{Conv: Conversation{A: binary.BigEndian.Uint64(ck[1:9]), B: binary.BigEndian.Uint64(ck[9:17])}}
			peer := cs.Peer(uid)
			name, ok := s.names.get(peer)
			if !ok {
				u, err := getUser(tx, peer)
				if err != nil {
					return err
				}
				name = u.Name
			}
			cs.Name = name
			if err := s.summarize(tx, uid, &cs, oldMs, &stale); err != nil {
				return err
			}
			all = append(all, cs)
		}
		groups, members := tx.Bucket(bucketGroups), tx.Bucket(bucketMembers)
		c = tx.Bucket(bucketUserGroups).Cursor()
		for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
			gid := binary.BigEndian.Uint64(k[8:])
			v, mv := groups.Get(u64(gid)), members.Get(key2(gid, uid))
			if v == nil || len(mv) == 0 {
				continue
			}
			var rec groupRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("store: group %d: %w", gid, err)
			}
			cs := ConversationSummary{Conv: GroupConversation(gid), Name: rec.Name}
			_, cs.JoinedSeq = parseMember(mv)
			if err := s.summarize(tx, uid, &cs, oldMs, &stale); err != nil {
				return err
			}
			all = append(all, cs)
		}
		return nil
	})
	return all, stale, err
}

// summarize fills in cs's last seq, read seq and last message. The last
// message is what History's latest page would start with: the newest kept
// message above the join point, within the retention limits (messages
// retention has yet to trim are hidden, as History hides them). It sets
// *stale when a seq the user can see is still only in the message log.
func (s *BoltStore) summarize(tx *bolt.Tx, uid uint64, cs *ConversationSummary, oldMs int64, stale *bool) error {
	ck := convKey(cs.Conv)
	cs.LastSeq = s.lastSeqIn(tx, cs.Conv)
	if stored := storedLastSeq(tx, ck); cs.LastSeq > max(stored, cs.JoinedSeq) {
		*stale = true
	}
	if v := tx.Bucket(bucketReadSeqs).Get(readSeqKey(uid, cs.Conv)); len(v) == 8 {
		cs.ReadSeq = binary.BigEndian.Uint64(v)
	}
	floor := cs.JoinedSeq
	if limit := s.cfg.History.MaxMessages; limit > 0 {
		if last := storedLastSeq(tx, ck); last > uint64(limit) {
			floor = max(floor, last-uint64(limit))
		}
	}
	c := tx.Bucket(bucketConvLog).Cursor()
	// The last key of the conversation: seek past it, step back.
	k, v := c.Seek(convSeqKey(ck, math.MaxUint64))
	if k == nil {
		k, v = c.Last()
	} else if len(k) != len(ck)+8 || !hasPrefix(k, ck) {
		k, v = c.Prev()
	}
	if k == nil || len(k) != len(ck)+8 || !hasPrefix(k, ck) ||
		binary.BigEndian.Uint64(k[len(ck):]) <= floor || sentBefore(v, oldMs) {
		return nil
	}
	m := new(chatpb.Message)
	if err := proto.Unmarshal(v, m); err != nil {
		return fmt.Errorf("store: last message: %w", err)
	}
	cs.Last = m
	return nil
}

// applyLogForUser makes sure every message logged so far that uid sent
// or was sent is in bbolt, and so in the conversation index and the
// conversations' history.
func (s *BoltStore) applyLogForUser(ctx context.Context, uid uint64) error {
	s.mem.Lock()
	waiting := s.unappliedFor[uid] > 0 || s.unappliedFrom[uid] > 0 || s.histFor[uid] > 0
	s.mem.Unlock()
	if !waiting {
		return nil
	}
	s.forceCopy.Store(true)
	s.forceHistory.Store(true)
	return s.committer.do(ctx, noWrite)
}

// ---- the Redis store ----

// convsKey is a user's 1:1 conversations in Redis, under the user's hash
// tag (like readKey): SET of conversation keys ("d<a>:<b>"). The append
// script adds to both users' sets with every 1:1 message.
func (s *RedisStore) convsKey(uid uint64) string {
	return s.p + "{u:" + strconv.FormatUint(uid, 10) + "}:convs"
}

// scriptConvTail reads a conversation's last seq and the log's value at
// it. Guarded like scriptHistory: under another epoch the same key names
// another conversation. KEYS: {c:<conv>}:seq, :log (one slot). Returns
// {last seq, value} (value false: not in the log, or no messages).
var scriptConvTail = guardedScript(`
local last = redis.call('GET', KEYS[1])
if not last then return {0, false} end
return {tonumber(last), redis.call('HGET', KEYS[2], last)}`)

// ListConversations reads the user's index, groups and read seqs (one
// pipeline), then each conversation's tail and each group's name and the
// user's join point (another), and the peers' names (cached).
func (s *RedisStore) ListConversations(ctx context.Context, uid uint64, limit int) ([]ConversationSummary, bool, error) {
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{p.SMembers(ctx, s.convsKey(uid)), p.SMembers(ctx, s.userGroupsKey(uid)),
			p.HGetAll(ctx, s.readKey(uid))}
	})
	if err != nil {
		return nil, false, err
	}
	convKeys, gids := cmds[0].(*redis.StringSliceCmd).Val(), parseIDs(cmds[1].(*redis.StringSliceCmd).Val())
	reads := cmds[2].(*redis.MapStringStringCmd).Val()
	all := make([]ConversationSummary, 0, len(convKeys)+len(gids))
	var peers []uint64
	for _, k := range convKeys {
		conv, err := ParseConversationKey(k)
		if err != nil || conv.GroupID != 0 {
			continue // not written by this code
		}
		cs := ConversationSummary{Conv: conv}
		peers = append(peers, cs.Peer(uid))
		all = append(all, cs)
	}
	for _, gid := range gids {
		all = append(all, ConversationSummary{Conv: GroupConversation(gid)})
	}
	if len(all) == 0 {
		return nil, false, nil
	}
	uidField := strconv.FormatUint(uid, 10)
	type groupCmds struct{ name, joined *redis.StringCmd }
	tails := make([]*redis.Cmd, len(all))
	gcmds := make([]groupCmds, len(all))
	_, err = s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		out := make([]redis.Cmder, 0, 3*len(all))
		for i, cs := range all {
			ck := s.convKey(cs.Conv)
			keys, args := s.guard(ctx, []string{ck + "seq", ck + "log"})
			tails[i] = scriptConvTail.EvalSha(ctx, p, keys, args...)
			out = append(out, tails[i])
			if gid := cs.Conv.GroupID; gid != 0 {
				g := s.groupKey(gid)
				gcmds[i] = groupCmds{p.HGet(ctx, g, "name"), p.HGet(ctx, g+":joined", uidField)}
				out = append(out, gcmds[i].name, gcmds[i].joined)
			}
		}
		return out
	})
	if err != nil {
		return nil, false, err
	}
	names, err := s.usernames(ctx, peers)
	if err != nil {
		return nil, false, err
	}
	var cutoff int64 = math.MinInt64
	if s.cfg.History.MaxAge > 0 {
		cutoff = time.Now().Add(-s.cfg.History.MaxAge).UnixMilli()
	}
	kept := all[:0]
	for i, cs := range all {
		if cs.Conv.GroupID != 0 {
			name, err := gcmds[i].name.Result()
			if errors.Is(err, redis.Nil) {
				continue // deleted meanwhile (groups are not deleted today)
			}
			cs.Name = name
			cs.JoinedSeq, _ = strconv.ParseUint(gcmds[i].joined.Val(), 10, 64)
		} else {
			cs.Name = names[cs.Peer(uid)]
		}
		cs.ReadSeq, _ = strconv.ParseUint(reads[cs.Conv.Key()], 10, 64)
		res, err := tails[i].Slice()
		if err != nil || len(res) != 2 {
			return nil, false, fmt.Errorf("store: conversation tail reply %v: %w", res, redisErr(err))
		}
		last, _ := res[0].(int64)
		cs.LastSeq = uint64(last)
		// What History would show: above the join point, not past the
		// maximum age (the log's TTL drops an idle one a little later).
		if v, ok := res[1].(string); ok && cs.LastSeq > cs.JoinedSeq {
			if len(v) < 8 {
				return nil, false, fmt.Errorf("store: conversation log value of %d bytes", len(v))
			}
			if int64(binary.BigEndian.Uint64([]byte(v[:8]))) >= cutoff {
				m := new(chatpb.Message)
				if err := proto.Unmarshal([]byte(v[8:]), m); err != nil {
					return nil, false, fmt.Errorf("store: last message: %w", err)
				}
				cs.Last = m
			}
		}
		kept = append(kept, cs)
	}
	list, more := sortConversations(kept, limit)
	return list, more, nil
}

// migrateConvIndex builds the conversation index of a keyspace from
// before it (schema 1 or 2) once, before Epoch marks the keyspace with
// schema 3: every 1:1 conversation with a seq counter goes into both
// users' sets. Idempotent, so a node that dies in the middle does it
// again at its next start; a node that finds schema 3 skips it. A node of
// schema 2 still running beside it (a rolling upgrade) appends without
// indexing: such a conversation is in the list once a newer node stores
// a message in it (docs/conversations.md).
func (s *RedisStore) migrateConvIndex(ctx context.Context) error {
	if s.convsIndexed.Load() {
		return nil
	}
	v, err := s.rdb.Get(ctx, s.metaKey("schema")).Result()
	switch {
	case errors.Is(err, redis.Nil):
		v = "1"
	case err != nil:
		return redisErr(err)
	}
	if n, err := strconv.Atoi(v); err != nil || n >= 3 {
		// Indexed already, or a schema Epoch refuses.
		s.convsIndexed.Store(err == nil)
		return nil
	}
	// However long the keyspace takes to scan: the node is not serving
	// yet, and Redis's own timeouts bound each call.
	ctx = context.WithoutCancel(ctx)
	head, tail := s.p+"{c:", "}:seq"
	var cursor uint64
	for {
		keys, next, err := s.rdb.Scan(ctx, cursor, globEscape(head)+"d*"+globEscape(tail), 1000).Result()
		if err != nil {
			return redisErr(err)
		}
		pipe := s.rdb.Pipeline()
		for _, k := range keys {
			ck, ok := strings.CutSuffix(strings.TrimPrefix(k, head), tail)
			conv, err := ParseConversationKey(ck)
			if !ok || err != nil || conv.GroupID != 0 {
				continue
			}
			pipe.SAdd(ctx, s.convsKey(conv.A), ck)
			pipe.SAdd(ctx, s.convsKey(conv.B), ck)
		}
		if pipe.Len() > 0 {
			if _, err := pipe.Exec(ctx); err != nil {
				return redisErr(err)
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	s.convsIndexed.Store(true)
	return nil
}

// globEscape quotes the characters a Redis MATCH pattern treats specially.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
