package server

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// Bucket layout of the embedded store. Ids are 8-byte big-endian so keys
// sort numerically; composite keys concatenate them, so a prefix scan over
// the first id lists everything that belongs to it.
//
// Schema 2 (meta "schema"; files without it are schema 1) added the
// conversation buckets, the joined seq in member values and the seq field
// of stored messages. A schema 1 file opens as is: its members read as
// JoinedSeq 0, its messages (and log records written before the upgrade)
// have Seq 0 and are in no conversation's history, and each conversation
// counts from 1 with its first message after the upgrade. Schema 3 added
// the conversation index (user_convs, convlist.go), built from conv_meta
// when an older file is opened. Schema 4 copies a conversation's history
// apart from the inboxes (store_bolt_wal.go): conv_meta is written only
// when retention empties a conversation (its last seq is otherwise its
// last conv_log key), and meta keyWALInbox says how far the inbox copy has
// gone. A schema 2 or 3 file opens as is (its conv_meta is never above the
// last key; without keyWALInbox the inbox copy is where keyWALApplied
// says); a schema 3 binary would read a stale last seq from conv_meta,
// hence the new number. A file of a later schema than boltSchema is
// refused.
var (
	bucketUsers      = []byte("users")       // uid -> userRecord JSON
	bucketUsernames  = []byte("usernames")   // lower(name) -> uid
	bucketFriends    = []byte("friends")     // uid|seq -> friend uid (seq keeps add order)
	bucketFriendIdx  = []byte("friend_idx")  // uid|friend uid -> empty
	bucketGroups     = []byte("groups")      // gid -> groupRecord JSON
	bucketMembers    = []byte("members")     // gid|uid -> role byte, then joined seq (absent in schema 1)
	bucketMemberSeq  = []byte("member_seq")  // gid|seq -> uid (keeps join order)
	bucketUserGroups = []byte("user_groups") // uid|gid -> empty
	bucketInbox      = []byte("inbox")       // box|msg_id -> chatpb.Message (box: a device's inbox, device.go)
	bucketInboxCount = []byte("inbox_count") // box -> count
	bucketDedup      = []byte("dedup")       // sender|client_msg_id -> msg_id
	bucketDedupAge   = []byte("dedup_age")   // msg_id|sender -> client_msg_id (for expiry)
	bucketMessages   = []byte("dedup_msgs")  // msg_id -> chatpb.Message, kept while its dedup entry lives
	// Conversations (schema 2). convKey names one: 'g'|gid or 'd'|a|b
	// (a <= b), fixed lengths, so no conversation's key is a prefix of
	// another's and a prefix scan lists exactly one conversation.
	bucketConvLog  = []byte("conv_log")  // convKey|seq -> chatpb.Message (with its seq), the kept history
	bucketConvMeta = []byte("conv_meta") // convKey -> last seq, written when retention trims everything (schema 3)
	// bucketReadSeqs (readstate.go): uid|convKey -> the user's read seq
	// bucketUserConvs (convlist.go): uid|convKey -> empty, the user's 1:1 conversations
	// bucketPresence, bucketPresenceHidden (presence_store.go): last seen, and who hides their presence
	// bucketBlocked (block.go): uid|target -> empty, uid blocks target
	bucketMeta = []byte("meta") // keyWALApplied -> walPos, keyEpoch -> store epoch, keySchema -> version
	allBuckets = [][]byte{bucketUsers, bucketUsernames, bucketFriends, bucketFriendIdx, bucketGroups,
		bucketMembers, bucketMemberSeq, bucketUserGroups, bucketInbox, bucketInboxCount, bucketDedup,
		bucketDedupAge, bucketMessages, bucketConvLog, bucketConvMeta, bucketReadSeqs, bucketDevices, bucketUserConvs,
		bucketPresence, bucketPresenceHidden, bucketBlocked, bucketMeta}
	// keyWALApplied is where the message log has been copied up to:
	// every record before it is in bbolt, inbox and history copies both.
	keyWALApplied = []byte("wal_applied")
	// keyWALInbox is where the inbox copy has gone (schema 3; never
	// before keyWALApplied): the sends before it are in their inboxes and
	// dedup, the acks before it applied; only their history may be missing.
	keyWALInbox = []byte("wal_inbox")
	keyEpoch    = []byte("epoch")
	keySchema   = []byte("schema") // 8-byte version; absent means 1
)

// boltSchema is the newest file layout this code reads and writes (see the
// bucket layout above).
const boltSchema = 4

type userRecord struct {
	Name  string `json:"name"`
	Hash  []byte `json:"hash"`
	Nonce uint64 `json:"nonce,omitempty"` // absent in records from before nonces
	// Ban and TokRev are User.BannedUntilMs and User.TokensRefusedUntilMs
	// (accounts.go); absent: 0.
	Ban    int64 `json:"ban,omitempty"`
	TokRev int64 `json:"tokrev,omitempty"`
}

type groupRecord struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Creator     uint64 `json:"creator"`
}

// BoltConfig configures the embedded store. Zero values mean the default.
type BoltConfig struct {
	// Path of the database file; required.
	Path string
	// InboxLimit caps each user's inbox; the oldest are trimmed past it.
	// Zero means 10,000.
	InboxLimit int
	// DedupWindow is how long a client_msg_id is remembered. Zero means 24h.
	DedupWindow time.Duration
	// MaxBatch caps how many writes share one commit. Zero means 1,000.
	MaxBatch int
	// LogLinger is how long the message log waits for more sends to share
	// an fdatasync when sends are arriving concurrently; a lone send never
	// waits. Zero means 500µs, which Go's timers round up to about 1ms
	// when the process is otherwise idle; negative means never wait.
	LogLinger time.Duration
	// ObserveCommit, if set, is told each commit's duration and size.
	ObserveCommit func(d time.Duration, writes int)
	// ObserveLog, if set, is told each message log write's duration (with
	// its fdatasync) and how many records (sends and acks) it carried.
	ObserveLog func(d time.Duration, records int)
	// ObserveTrim, if set, is told how many messages were trimmed from
	// full inboxes. Trimming happens when messages are copied from the
	// message log, so AppendResult.Trimmed is always zero here.
	ObserveTrim func(n int)
	// History bounds what each conversation keeps (zero: the defaults).
	History HistoryLimits
	// ObserveHistoryTrim, if set, is told how many messages retention
	// dropped from conversations' history.
	ObserveHistoryTrim func(n int)

	// For tests: zero means historyCopyPeriod and walSegmentSize; a
	// negative historyPeriod copies history only when something needs it
	// (History, backpressure, Close).
	historyPeriod time.Duration
	segmentSize   int64
}

// BoltStore is the embedded single-node Store on bbolt. Writes from all
// goroutines funnel into one committer that packs whatever is waiting into
// one transaction (group commit): one fsync serves a whole batch, and an
// idle store adds no delay to a lone write.
type BoltStore struct {
	// Messages and acks reach bbolt lazily (see store_bolt_wal.go): each is
	// durable once its batch is in the message log, and the committer
	// copies what the log holds into the inboxes with its next commit
	// after logCopyDelay, leaving out recipients who acked meanwhile (acks
	// of messages already in bbolt ride along with the next commit), and
	// into the history by conversation, each in its turn. mem guards what
	// is waiting.
	mem          sync.Mutex
	acks         map[uint64]map[uint64]struct{} // user -> msg ids acked, not yet written
	ackCount     int
	takenAcks    map[uint64]map[uint64]struct{} // acks in the commit under way
	unapplied    []*walEntry                    // logged, not yet in bbolt, in log order
	unappliedFor map[uint64]int                 // user -> how many of unapplied are for them
	unappliedIDs map[uint64]*walEntry           // msg id -> unapplied message
	dedupPending map[senderMsgID]*walEntry      // unapplied messages by client_msg_id
	// unappliedFrom: sender -> how many of unapplied they sent
	// (ListConversations copies them first)
	unappliedFrom map[uint64]int
	// histFor: user -> how many held messages they sent or were sent
	// whose history is not copied yet (ListConversations copies them
	// first: the index, last messages and read marks come with it).
	histFor map[uint64]int
	// convs holds the seq state of conversations recently written (see
	// convState); the log writer alone adds and removes entries.
	convs map[Conversation]*convState
	// maxConvs bounds convs (maxConvStates; a field so tests can lower
	// it before the first send).
	maxConvs int
	// forceCopy makes the next takePending copy every logged message into
	// the inboxes, not only those older than logCopyDelay (inbox reads,
	// backpressure, close); forceHistory copies every conversation's
	// pending history (backpressure, close).
	forceCopy    atomic.Bool
	forceHistory atomic.Bool
	// held is every logged message not yet wholly in bbolt (its inbox
	// copy or its history copy pending), in log order from heldHead: the
	// log is copied up to the first of them.
	held     []*walEntry
	heldHead int
	// histSlots are the conversations with history waiting, in the slot
	// their state was given (convState.slot): each slot's turn comes once
	// per historyPeriod, when they move to histDue (from histDueHead on),
	// whence takePending copies them in order, a bounded number per
	// commit. histQueued counts the two. histUrgent are those to copy with
	// the next commit (History is waiting, or too many are pending).
	histSlots   [historySlots][]*convState
	histDue     []*convState
	histDueHead int
	histQueued  int
	histUrgent  []*convState
	// Committer goroutine only: the last slot tick copied (counted in
	// historyPeriod/historySlots from histEpoch), when history was last
	// taken, and the position keyWALApplied holds.
	histEpoch   time.Time
	histTick    int64
	histTakenAt time.Time
	applied     walPos

	db        *bolt.DB
	cfg       BoltConfig
	committer *committer
	appends   *opQueue[*appendOp]
	doneChans sync.Pool   // of newDoneChan, for appendOp.done
	log       *messageLog // owned by the log writer goroutine
	logDone   chan struct{}
	logLowest uint64 // oldest segment not yet removed; committer goroutine only
	// Users are never renamed or deleted: the hot path (every send names
	// its recipient) reads these instead of the database.
	names       idCache[uint64, string] // user id -> name
	ids         idCache[string, uint64] // lower-case name -> user id
	stopJanitor chan struct{}
	janitorDone chan struct{}
	localSessions
	presence localPresence
	devices  boltDevices
	blocks   blockIndex
	epoch    string // made when the file was created (epoch.go)
}

// OpenBoltStore opens (creating if needed) the database at cfg.Path.
func OpenBoltStore(cfg BoltConfig) (*BoltStore, error) {
	if cfg.InboxLimit <= 0 {
		cfg.InboxLimit = 10000
	}
	if cfg.DedupWindow <= 0 {
		cfg.DedupWindow = 24 * time.Hour
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 1000
	}
	if cfg.LogLinger == 0 {
		cfg.LogLinger = 500 * time.Microsecond
	}
	if cfg.historyPeriod == 0 {
		cfg.historyPeriod = historyCopyPeriod
	}
	if cfg.segmentSize <= 0 {
		cfg.segmentSize = walSegmentSize
	}
	cfg.History = cfg.History.withDefaults()
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{
		Timeout: 2 * time.Second, // another process holds the file lock
		// Map 256 MiB up front: growing the map blocks every transaction.
		InitialMmapSize: 256 << 20,
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", cfg.Path, err)
	}
	var epoch string
	err = db.Update(func(tx *bolt.Tx) error {
		// Before anything is written: a file of a later layout stays as
		// it is, for the newer loopchat that made it.
		if meta := tx.Bucket(bucketMeta); meta != nil {
			if v := meta.Get(keySchema); v != nil {
				if len(v) != 8 {
					return fmt.Errorf("unreadable schema version %x", v)
				}
				if n := binary.BigEndian.Uint64(v); n > boltSchema {
					return fmt.Errorf("the database has schema version %d, newer than this loopchat reads (%d): "+
						"use a newer loopchat", n, boltSchema)
				}
			}
		}
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		// A file from before epochs gets one too: its tokens were not
		// bound to any, and are refused anyway (tokenVersion).
		meta := tx.Bucket(bucketMeta)
		// Schema 1 and 2 files need no conversion (see the bucket
		// layout) but the conversation index.
		if v := meta.Get(keySchema); v == nil || binary.BigEndian.Uint64(v) < 3 {
			if err := indexOldConversations(tx); err != nil {
				return err
			}
		}
		if err := meta.Put(keySchema, u64(boltSchema)); err != nil {
			return err
		}
		if e := meta.Get(keyEpoch); e != nil {
			epoch = string(e)
			return nil
		}
		epoch = newEpoch()
		return meta.Put(keyEpoch, []byte(epoch))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: init %s: %w", cfg.Path, err)
	}
	s := &BoltStore{db: db, cfg: cfg, epoch: epoch, doneChans: sync.Pool{New: newDoneChan},
		stopJanitor: make(chan struct{}), janitorDone: make(chan struct{}),
		unappliedFor: map[uint64]int{}, unappliedIDs: map[uint64]*walEntry{}, dedupPending: map[senderMsgID]*walEntry{},
		convs: map[Conversation]*convState{}, maxConvs: maxConvStates, histEpoch: time.Now()}
	s.unappliedFrom, s.histFor = map[uint64]int{}, map[uint64]int{}
	if err := db.View(func(tx *bolt.Tx) error {
		if err := s.devices.load(tx); err != nil {
			return err
		}
		if err := s.blocks.load(tx); err != nil {
			return err
		}
		return s.presence.loadHidden(tx)
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: init %s: %w", cfg.Path, err)
	}
	if err := s.recoverLog(); err != nil {
		db.Close()
		return nil, err
	}
	s.committer = newCommitter(db, cfg.MaxBatch, cfg.ObserveCommit, s.takePending)
	s.appends = newOpQueue[*appendOp]("store", cfg.MaxBatch)
	s.logDone = make(chan struct{})
	go s.writeLog()
	go s.janitor()
	return s, nil
}

// Ping checks the database file is open and readable.
func (s *BoltStore) Ping(context.Context) error {
	return s.db.View(func(*bolt.Tx) error { return nil })
}

// Close finishes the writes already queued, copies the message log into
// bbolt and closes the files.
func (s *BoltStore) Close() error {
	close(s.stopJanitor)
	<-s.janitorDone
	s.appends.close()
	<-s.logDone
	s.forceCopy.Store(true)
	s.forceHistory.Store(true)
	s.committer.close()
	logErr := s.log.close()
	return errors.Join(s.db.Close(), logErr)
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func key2(a, b uint64) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(make([]byte, 0, 16), a), b)
}

func nameKey(name string) []byte { return []byte(strings.ToLower(name)) }

func (s *BoltStore) CreateUser(ctx context.Context, name string, hash []byte) (User, error) {
	var u User
	err := s.committer.do(ctx, func(tx *bolt.Tx) error {
		names := tx.Bucket(bucketUsernames)
		if names.Get(nameKey(name)) != nil {
			return ErrUsernameTaken
		}
		users := tx.Bucket(bucketUsers)
		id, err := users.NextSequence()
		if err != nil {
			return err
		}
		nonce := newNonce()
		rec, _ := json.Marshal(userRecord{Name: name, Hash: hash, Nonce: nonce})
		if err := users.Put(u64(id), rec); err != nil {
			return err
		}
		if err := names.Put(nameKey(name), u64(id)); err != nil {
			return err
		}
		u = User{ID: id, Name: name, PasswordHash: hash, Nonce: nonce}
		return nil
	})
	return u, err
}

func getUser(tx *bolt.Tx, id uint64) (User, error) {
	v := tx.Bucket(bucketUsers).Get(u64(id))
	if v == nil {
		return User{}, ErrUserNotFound
	}
	var rec userRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return User{}, fmt.Errorf("store: user %d: %w", id, err)
	}
	return User{ID: id, Name: rec.Name, PasswordHash: rec.Hash, Nonce: rec.Nonce,
		BannedUntilMs: rec.Ban, TokensRefusedUntilMs: rec.TokRev}, nil
}

func (s *BoltStore) Account(_ context.Context, id uint64) (u User, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		u, err = getUser(tx, id)
		return err
	})
	u.PasswordHash = nil
	return u, err
}

func (s *BoltStore) UserByName(ctx context.Context, name string) (User, error) {
	if id, ok := s.ids.get(strings.ToLower(name)); ok {
		return s.UserByID(ctx, id)
	}
	u, err := s.Credentials(ctx, name)
	return u.nameOnly(), err
}

func (s *BoltStore) Credentials(_ context.Context, name string) (u User, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketUsernames).Get(nameKey(name))
		if v == nil {
			return ErrUserNotFound
		}
		u, err = getUser(tx, binary.BigEndian.Uint64(v))
		return err
	})
	if err == nil {
		s.remember(u)
	}
	return u, err
}

func (s *BoltStore) UserByID(_ context.Context, id uint64) (u User, err error) {
	if name, ok := s.names.get(id); ok {
		return User{ID: id, Name: name}, nil
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		u, err = getUser(tx, id)
		return err
	})
	if err == nil {
		s.remember(u)
	}
	return u.nameOnly(), err
}

func (s *BoltStore) remember(u User) {
	s.names.put(u.ID, u.Name)
	s.ids.put(strings.ToLower(u.Name), u.ID)
}

func (s *BoltStore) AddFriend(ctx context.Context, a, b uint64, lim Limits) error {
	if a == b {
		return ErrFriendSelf
	}
	return s.committer.do(ctx, func(tx *bolt.Tx) error {
		for _, id := range []uint64{a, b} {
			if _, err := getUser(tx, id); err != nil {
				return err
			}
		}
		idx := tx.Bucket(bucketFriendIdx)
		if idx.Get(key2(a, b)) != nil {
			return ErrAlreadyFriends
		}
		if blockedTx(tx, a, b) {
			return ErrBlocked
		}
		if reached(idx, a, lim.FriendsPerUser) || reached(idx, b, lim.FriendsPerUser) {
			return ErrTooManyFriends
		}
		friends := tx.Bucket(bucketFriends)
		seq, err := friends.NextSequence()
		if err != nil {
			return err
		}
		for _, p := range [][2]uint64{{a, b}, {b, a}} {
			if err := idx.Put(key2(p[0], p[1]), nil); err != nil {
				return err
			}
			if err := friends.Put(key2(p[0], seq), u64(p[1])); err != nil {
				return err
			}
		}
		return nil
	})
}

// RemoveFriend deletes both sides in one transaction.
func (s *BoltStore) RemoveFriend(ctx context.Context, a, b uint64) error {
	if a == b {
		return ErrUnfriendSelf
	}
	return s.committer.do(ctx, func(tx *bolt.Tx) error {
		had, err := dropFriendship(tx, a, b)
		if err == nil && !had {
			err = ErrNotFriends
		}
		return err
	})
}

// dropFriendship deletes a's and b's friendship, both sides, and reports
// whether there was one. The friends bucket is keyed by add order, so
// each side's entry is found by a scan of that user's friends: at most
// the friend limit, and removals are rare.
func dropFriendship(tx *bolt.Tx, a, b uint64) (bool, error) {
	idx := tx.Bucket(bucketFriendIdx)
	if idx.Get(key2(a, b)) == nil && idx.Get(key2(b, a)) == nil {
		return false, nil
	}
	friends := tx.Bucket(bucketFriends)
	for _, p := range [][2]uint64{{a, b}, {b, a}} {
		if err := idx.Delete(key2(p[0], p[1])); err != nil {
			return false, err
		}
		prefix := u64(p[0])
		c := friends.Cursor()
		for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
			if binary.BigEndian.Uint64(v) == p[1] {
				if err := c.Delete(); err != nil {
					return false, err
				}
				break
			}
		}
	}
	return true, nil
}

// Friends names each friend from the name cache, as UserByID does, and
// reads (and caches) only the records of those it misses: a login reads
// every friend, and decoding each one's record, password hash included,
// was most of the cost of a login with 50 friends.
func (s *BoltStore) Friends(_ context.Context, uid uint64) (out []User, err error) {
	var learned []User
	err = s.db.View(func(tx *bolt.Tx) error {
		prefix := u64(uid)
		c := tx.Bucket(bucketFriends).Cursor()
		for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
			id := binary.BigEndian.Uint64(v)
			if name, ok := s.names.get(id); ok {
				out = append(out, User{ID: id, Name: name})
				continue
			}
			u, err := getUser(tx, id)
			if err != nil {
				return err
			}
			u = u.nameOnly()
			out = append(out, u)
			learned = append(learned, u)
		}
		return nil
	})
	if err == nil {
		for _, u := range learned {
			s.remember(u)
		}
	}
	return out, err
}

func (s *BoltStore) CreateGroup(ctx context.Context, creator uint64, name, desc string, lim Limits) (Group, error) {
	var g Group
	err := s.committer.do(ctx, func(tx *bolt.Tx) error {
		u, err := getUser(tx, creator)
		if err != nil {
			return err
		}
		if reached(tx.Bucket(bucketUserGroups), creator, lim.GroupsPerUser) {
			return ErrTooManyGroups
		}
		groups := tx.Bucket(bucketGroups)
		gid, err := groups.NextSequence()
		if err != nil {
			return err
		}
		rec, _ := json.Marshal(groupRecord{Name: name, Description: desc, Creator: creator})
		if err := groups.Put(u64(gid), rec); err != nil {
			return err
		}
		// The creator's JoinedSeq is 0: a new group's conversation is empty.
		if err := addMember(tx, gid, creator, chatpb.Role_ROLE_CREATOR, 0); err != nil {
			return err
		}
		g = Group{ID: gid, Name: name, Description: desc,
			Members: []Member{{UserID: creator, Username: u.Name, Role: chatpb.Role_ROLE_CREATOR}}}
		return nil
	})
	return g, err
}

// memberValue is a members bucket value: the role, then the joined seq.
func memberValue(role chatpb.Role, joinedSeq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{byte(role)}, joinedSeq)
}

// parseMember reads a members bucket value; schema 1 values are the role
// byte alone, of members who joined before conversations had seqs.
func parseMember(v []byte) (role chatpb.Role, joinedSeq uint64) {
	if len(v) >= 9 {
		joinedSeq = binary.BigEndian.Uint64(v[1:9])
	}
	return chatpb.Role(v[0]), joinedSeq
}

func addMember(tx *bolt.Tx, gid, uid uint64, role chatpb.Role, joinedSeq uint64) error {
	members := tx.Bucket(bucketMembers)
	if members.Get(key2(gid, uid)) != nil {
		return ErrAlreadyMember
	}
	seqs := tx.Bucket(bucketMemberSeq)
	seq, err := seqs.NextSequence()
	if err != nil {
		return err
	}
	if err := members.Put(key2(gid, uid), memberValue(role, joinedSeq)); err != nil {
		return err
	}
	if err := seqs.Put(key2(gid, seq), u64(uid)); err != nil {
		return err
	}
	return tx.Bucket(bucketUserGroups).Put(key2(uid, gid), nil)
}

func (s *BoltStore) JoinGroup(ctx context.Context, gid, uid uint64, lim Limits) error {
	return s.committer.do(ctx, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketGroups).Get(u64(gid)) == nil {
			return ErrGroupNotFound
		}
		if _, err := getUser(tx, uid); err != nil {
			return err
		}
		members := tx.Bucket(bucketMembers)
		if members.Get(key2(gid, uid)) != nil {
			return ErrAlreadyMember
		}
		if reached(members, gid, lim.MembersPerGroup) {
			return ErrGroupFull
		}
		if reached(tx.Bucket(bucketUserGroups), uid, lim.GroupsPerUser) {
			return ErrTooManyGroups
		}
		// The seq logged last, not one the log writer may be writing
		// now: a join racing a send shows that send to the new member,
		// rather than hide a later one that reused a seq its failed log
		// write gave back.
		joined := s.lastSeqIn(tx, GroupConversation(gid))
		return addMember(tx, gid, uid, chatpb.Role_ROLE_MEMBER, joined)
	})
}

func (s *BoltStore) LeaveGroup(ctx context.Context, gid, uid uint64) error {
	return s.committer.do(ctx, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketGroups).Get(u64(gid)) == nil {
			return ErrGroupNotFound
		}
		members := tx.Bucket(bucketMembers)
		if members.Get(key2(gid, uid)) == nil {
			return ErrNotMember
		}
		if err := members.Delete(key2(gid, uid)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketUserGroups).Delete(key2(uid, gid)); err != nil {
			return err
		}
		prefix := u64(gid)
		c := tx.Bucket(bucketMemberSeq).Cursor()
		for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
			if binary.BigEndian.Uint64(v) == uid {
				return c.Delete()
			}
		}
		return nil
	})
}

func getGroup(tx *bolt.Tx, gid uint64) (Group, error) {
	v := tx.Bucket(bucketGroups).Get(u64(gid))
	if v == nil {
		return Group{}, ErrGroupNotFound
	}
	var rec groupRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return Group{}, fmt.Errorf("store: group %d: %w", gid, err)
	}
	g := Group{ID: gid, Name: rec.Name, Description: rec.Description}
	members := tx.Bucket(bucketMembers)
	prefix := u64(gid)
	c := tx.Bucket(bucketMemberSeq).Cursor()
	for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
		uid := binary.BigEndian.Uint64(v)
		mv := members.Get(key2(gid, uid))
		if len(mv) == 0 {
			continue
		}
		u, err := getUser(tx, uid)
		if err != nil {
			return Group{}, err
		}
		role, joined := parseMember(mv)
		g.Members = append(g.Members, Member{UserID: uid, Username: u.Name, Role: role, JoinedSeq: joined})
	}
	return g, nil
}

func (s *BoltStore) Group(_ context.Context, gid uint64) (g Group, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		g, err = getGroup(tx, gid)
		return err
	})
	return g, err
}

func (s *BoltStore) GroupsOf(_ context.Context, uid uint64) (out []Group, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		prefix := u64(uid)
		c := tx.Bucket(bucketUserGroups).Cursor()
		for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
			g, err := getGroup(tx, binary.BigEndian.Uint64(k[8:]))
			if err != nil {
				return err
			}
			out = append(out, g)
		}
		return nil
	})
	return out, err
}

func (s *BoltStore) GroupIDs(_ context.Context, uid uint64) (out []uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		prefix := u64(uid)
		c := tx.Bucket(bucketUserGroups).Cursor()
		for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
			out = append(out, binary.BigEndian.Uint64(k[8:]))
		}
		return nil
	})
	return out, err
}

// convState is the seq state of one conversation, in memory: seqs are
// handed out by the log writer, which is one goroutine, so they follow
// the log's order without a lock on the send path. It also holds the
// conversation's logged messages until their history is in bbolt.
type convState struct {
	// next is the seq handed out last: ahead of last while the batch it
	// went to is being written, given back if that write fails. The log
	// writer alone uses it.
	next uint64
	// Guarded by BoltStore.mem. last is the highest seq in the log
	// (LastSeq); only the log writer moves it. hist holds the logged
	// messages whose history is not in bbolt yet, in seq order; the first
	// histTaken of them are in the commit under way.
	last      uint64
	hist      []*walEntry
	histTaken int
	// conv is the conversation; slot the histSlots entry it waits in
	// (historySlot), queued says it is there or in histDue, urgent that
	// it is in histUrgent.
	conv           Conversation
	slot           int
	queued, urgent bool
	// Committer goroutine only: the lowest seq conv_log keeps of the
	// conversation and its send time (Unix ms), so that a copy with
	// nothing for retention to drop reads nothing; 0 until a copy read it.
	keptFrom   uint64
	keptFromMs int64
	// indexed: a copy of a 1:1 conversation committed its user_convs
	// entries, so later copies need not look (committer only).
	indexed bool
}

// maxConvStates is how many conversations the log writer keeps seq state
// for before it drops some. A conversation with no history pending agrees
// with bbolt (storedLastSeq), so its state can be read back from there
// when it next sends.
const maxConvStates = 100_000

// convKey names c in the conversation buckets: 'g'|gid or 'd'|a|b.
func convKey(c Conversation) []byte { return appendConvKey(make([]byte, 0, 25+8), c) }

func appendConvKey(dst []byte, c Conversation) []byte {
	if c.GroupID != 0 {
		return binary.BigEndian.AppendUint64(append(dst, 'g'), c.GroupID)
	}
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(append(dst, 'd'), c.A), c.B)
}

// convSeqKey is the conv_log key of seq in the conversation ck names.
func convSeqKey(ck []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(make([]byte, 0, len(ck)+8), ck...), seq)
}

// storedLastSeq reads a conversation's last seq from bbolt: its last
// conv_log key, or conv_meta's, which keeps it when retention has trimmed
// every message (and which files before schema 3 wrote with every copy),
// so seqs are never handed out twice.
func storedLastSeq(tx *bolt.Tx, ck []byte) uint64 {
	last := storedMetaSeq(tx, ck)
	c := tx.Bucket(bucketConvLog).Cursor()
	// The last key below the conversation's highest possible one.
	k, _ := c.Seek(convSeqKey(ck, math.MaxUint64))
	if k == nil {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	if isConvSeqKey(k, ck) {
		last = max(last, binary.BigEndian.Uint64(k[len(ck):]))
	}
	return last
}

// storedMetaSeq is conv_meta's last seq of a conversation (0: none).
func storedMetaSeq(tx *bolt.Tx, ck []byte) uint64 {
	if v := tx.Bucket(bucketConvMeta).Get(ck); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// isConvSeqKey reports whether k is a conv_log key of the conversation
// ck names.
func isConvSeqKey(k, ck []byte) bool {
	return len(k) == len(ck)+8 && hasPrefix(k, ck)
}

// cachedLastSeq is c's last logged seq, if the log writer holds its state.
func (s *BoltStore) cachedLastSeq(c Conversation) (uint64, bool) {
	s.mem.Lock()
	defer s.mem.Unlock()
	if cs := s.convs[c]; cs != nil {
		return cs.last, true
	}
	return 0, false
}

// lastSeqIn is c's last logged seq as of now, for a write in tx. Without
// state in memory nothing of c waits to be copied, so bbolt has it all.
func (s *BoltStore) lastSeqIn(tx *bolt.Tx, c Conversation) uint64 {
	if last, ok := s.cachedLastSeq(c); ok {
		return last
	}
	return storedLastSeq(tx, convKey(c))
}

func (s *BoltStore) LastSeq(_ context.Context, c Conversation) (last uint64, err error) {
	if last, ok := s.cachedLastSeq(c); ok {
		return last, nil
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		last = storedLastSeq(tx, convKey(c))
		return nil
	})
	return last, err
}

// History reads a page from bbolt, after copying there whatever of the
// conversation is still only in the message log.
func (s *BoltStore) History(ctx context.Context, q HistoryQuery) (page HistoryPage, err error) {
	if err := s.applyLogForConv(ctx, q.Conv); err != nil {
		return HistoryPage{}, err
	}
	oldMs := s.historyCutoffMs(time.Now())
	ck := convKey(q.Conv)
	err = s.db.View(func(tx *bolt.Tx) error {
		floor := q.Floor
		// Retention trims in the lazy copy, a bounded amount at a time
		// (maxHistoryTrim); what it has yet to reach is hidden already.
		if limit := s.cfg.History.MaxMessages; limit > 0 {
			if last := storedLastSeq(tx, ck); last > uint64(limit) {
				floor = max(floor, last-uint64(limit))
			}
		}
		c := tx.Bucket(bucketConvLog).Cursor()
		var k, v []byte
		step := c.Next
		if q.Newest {
			before := q.Before
			if before == 0 {
				before = math.MaxUint64
			}
			// The last key below before: seek past it, step back.
			if k, _ = c.Seek(convSeqKey(ck, before)); k == nil {
				k, v = c.Last()
			} else {
				k, v = c.Prev()
			}
			step = c.Prev
		} else {
			from := max(q.After, floor)
			if from == math.MaxUint64 {
				return nil
			}
			k, v = c.Seek(convSeqKey(ck, from+1))
		}
		for ; k != nil && len(k) == len(ck)+8 && hasPrefix(k, ck); k, v = step() {
			if binary.BigEndian.Uint64(k[len(ck):]) <= floor {
				break // only reached backwards
			}
			if sentBefore(v, oldMs) {
				// Past MaxAge, waiting for the next copy of this
				// conversation to trim it. Seqs follow send times (to
				// within the moment a send spends reaching the log), so
				// backwards everything further is older still.
				if q.Newest {
					break
				}
				continue
			}
			if len(page.Messages) >= q.Limit {
				page.HasMore = true
				break
			}
			m := new(chatpb.Message)
			if err := proto.Unmarshal(v, m); err != nil {
				return fmt.Errorf("store: history message: %w", err)
			}
			page.Messages = append(page.Messages, m)
		}
		return nil
	})
	if err != nil {
		return HistoryPage{}, err
	}
	return page, nil
}

// historyCutoffMs is the send time (Unix ms) before which messages are
// past HistoryLimits.MaxAge; math.MinInt64 when age is unbounded.
func (s *BoltStore) historyCutoffMs(now time.Time) int64 {
	if s.cfg.History.MaxAge < 0 {
		return math.MinInt64
	}
	return now.Add(-s.cfg.History.MaxAge).UnixMilli()
}

// sentBefore reports whether the encoded message v was sent before
// cutoffMs. An unreadable message counts as recent: age alone never drops
// what it cannot date.
func sentBefore(v []byte, cutoffMs int64) bool {
	return cutoffMs != math.MinInt64 && sentAtMs(v) < cutoffMs
}

// sentAtMs is when the encoded message v was sent (Unix ms), by its msg_id
// (field 1, which comes first), without decoding the rest; math.MaxInt64
// when it cannot be read.
func sentAtMs(v []byte) int64 {
	for len(v) > 0 {
		num, typ, n := protowire.ConsumeTag(v)
		if n < 0 {
			return math.MaxInt64
		}
		v = v[n:]
		if num == 1 && typ == protowire.VarintType {
			id, n := protowire.ConsumeVarint(v)
			if n < 0 {
				return math.MaxInt64
			}
			return msgIDUnixMs(id)
		}
		if n = protowire.ConsumeFieldValue(num, typ, v); n < 0 {
			return math.MaxInt64
		}
		v = v[n:]
	}
	return math.MaxInt64
}

// maxHistoryTrim bounds how many messages retention drops from a
// conversation per message copied, so one copy never stalls on a long
// backlog (a lowered MaxMessages, a conversation silent past MaxAge);
// History hides the rest until later copies reach them.
const maxHistoryTrim = 64

// historyCopy writes logged messages into their conversations' history,
// in one transaction: each message as it comes (add), then each
// conversation's retention once (finish), however many of its messages
// the copy carries. The copy runs on the committer, beside every other
// write, so its per-message work is one bbolt insert.
//
// A replay (recovery) may meet messages whose history was copied before
// the crash, as the history copy runs ahead of keyWALApplied: it writes
// again those bbolt keeps (the same bytes under the same key) and leaves
// out those retention has dropped since, so a replay changes nothing the
// second time.
type historyCopy struct {
	s       *BoltStore
	tx      *bolt.Tx
	hist    *bolt.Bucket
	replay  bool
	key     []byte // scratch: bbolt copies the keys it keeps (not values)
	touched map[Conversation]*historyTouch
	// readBy is the highest seq each sender sent from a device, per
	// conversation: sending marks the conversation read up to it.
	readBy map[readMark]uint64
}

// readMark is one user's read seq in one conversation.
type readMark struct {
	uid  uint64
	conv Conversation
}

// historyTouch is what one copy did to a conversation.
type historyTouch struct {
	cs    *convState // the conversation's state, in a copy from memory
	last  uint64     // the highest seq added
	added int
	// floor (replay): seqs below it were dropped by retention already.
	floor uint64
	// What conv_log keeps first once finish is done (0: nothing), for
	// convState.keptFrom once the copy is committed.
	keptFrom   uint64
	keptFromMs int64
	indexed    bool // its user_convs entries are written
}

func (s *BoltStore) newHistoryCopy(tx *bolt.Tx, replay bool) *historyCopy {
	return &historyCopy{s: s, tx: tx, hist: tx.Bucket(bucketConvLog), replay: replay}
}

// add puts a logged message into its conversation's history. Messages of
// one conversation come in seq order.
func (h *historyCopy) add(e *walEntry) error {
	if e.seq == 0 {
		return nil // logged before conversations had seqs
	}
	t := h.touched[e.conv]
	if t == nil {
		if h.touched == nil {
			h.touched = make(map[Conversation]*historyTouch)
		}
		t = &historyTouch{cs: e.cs}
		if h.replay {
			t.floor = h.keptFloor(e.conv)
		}
		h.touched[e.conv] = t
	}
	if e.seq < t.floor {
		return nil // copied before the crash, and dropped by retention since
	}
	h.key = binary.BigEndian.AppendUint64(appendConvKey(h.key[:0], e.conv), e.seq)
	if err := h.hist.Put(h.key, e.message); err != nil {
		return err
	}
	t.last = max(t.last, e.seq)
	t.added++
	if e.fromDevice {
		if h.readBy == nil {
			h.readBy = make(map[readMark]uint64)
		}
		k := readMark{e.sender, e.conv}
		h.readBy[k] = max(h.readBy[k], e.seq)
	}
	return nil
}

// keptFloor is the lowest seq under which a replayed message of conv may
// be put back: the first conv_log keeps or, when it keeps none, the one
// after conv_meta's last (a conversation's copied seqs run without gaps
// up to its last, and retention drops the oldest first).
func (h *historyCopy) keptFloor(conv Conversation) uint64 {
	ck := convKey(conv)
	if k, _ := h.hist.Cursor().Seek(ck); isConvSeqKey(k, ck) {
		return binary.BigEndian.Uint64(k[len(ck):])
	}
	return storedMetaSeq(h.tx, ck) + 1
}

// finish drops the oldest messages of each conversation added to that are
// past the HistoryLimits, counting messages sent before cutoffMs as too
// old, and records the last seq of any it empties in conv_meta. It
// returns how many it dropped. A conversation whose state knows what it
// keeps first, and that nothing is to go, costs no read.
func (h *historyCopy) finish(cutoffMs int64) (int, error) {
	limit := h.s.cfg.History.MaxMessages
	reads := h.tx.Bucket(bucketReadSeqs)
	for m, seq := range h.readBy {
		k := readSeqKey(m.uid, m.conv)
		if v := reads.Get(k); len(v) == 8 && binary.BigEndian.Uint64(v) >= seq {
			continue
		}
		if err := reads.Put(k, u64(seq)); err != nil {
			return 0, err
		}
	}
	trimmed := 0
	for conv, t := range h.touched {
		if t.added == 0 {
			continue // a replay with nothing to put back
		}
		ck := convKey(conv)
		if t.cs == nil || !t.cs.indexed {
			if err := indexDirect(h.tx, conv, ck); err != nil {
				return trimmed, err
			}
			t.indexed = true
		}
		last := t.last
		if cs := t.cs; cs != nil && cs.keptFrom != 0 && (limit <= 0 || last-cs.keptFrom < uint64(limit)) &&
			cs.keptFromMs >= cutoffMs {
			t.keptFrom, t.keptFromMs = cs.keptFrom, cs.keptFromMs
			continue
		}
		if h.replay {
			// Replayed messages may all be older than what bbolt has.
			last = max(last, storedLastSeq(h.tx, ck))
		}
		c := h.hist.Cursor()
		// The oldest kept. Seqs are kept without gaps from it to last, so
		// the count needs no scan.
		k, v := c.Seek(ck)
		dropped := uint64(0)
		for budget := t.added * maxHistoryTrim; budget > 0 && isConvSeqKey(k, ck); budget-- {
			seq := binary.BigEndian.Uint64(k[len(ck):])
			over := limit > 0 && last-seq >= uint64(limit)
			if !over && !sentBefore(v, cutoffMs) {
				break
			}
			if err := c.Delete(); err != nil {
				return trimmed, err
			}
			trimmed++
			dropped = seq
			k, v = c.Seek(ck)
		}
		if isConvSeqKey(k, ck) {
			t.keptFrom, t.keptFromMs = binary.BigEndian.Uint64(k[len(ck):]), sentAtMs(v)
			continue
		}
		// Nothing kept: conv_meta keeps the last seq, the last dropped.
		t.keptFrom = 0
		if dropped > storedMetaSeq(h.tx, ck) {
			if err := h.tx.Bucket(bucketConvMeta).Put(ck, u64(dropped)); err != nil {
				return trimmed, err
			}
		}
	}
	return trimmed, nil
}

// keepRanges tells the states of the conversations copied what conv_log
// keeps first now. Committer only, once the copy is committed.
func (h *historyCopy) keepRanges() {
	for _, t := range h.touched {
		if t.cs != nil && t.added > 0 {
			t.cs.keptFrom, t.cs.keptFromMs = t.keptFrom, t.keptFromMs
			t.cs.indexed = t.cs.indexed || t.indexed
		}
	}
}

// applyMessage copies a logged message into the inboxes of its
// recipients, except those whose ack is in acks, and records its
// client_msg_id. It returns how many older messages it trimmed from full
// inboxes. Its history is copied apart (historyCopy).
func (s *BoltStore) applyMessage(tx *bolt.Tx, e *walEntry, acks map[uint64]map[uint64]struct{}) (int, error) {
	trimmed := 0
	inbox, counts := tx.Bucket(bucketInbox), tx.Bucket(bucketInboxCount)
	var few [4]uint64
	boxes := few[:0]
	for _, uid := range e.recipients {
		boxes = deviceBoxes(boxes, uid, s.devices.of(uid), e.msg.GetSentAtMs(), -1)
	}
	if e.fromDevice {
		boxes = deviceBoxes(boxes, e.sender, s.devices.of(e.sender), e.msg.GetSentAtMs(), boxSlot(e.senderBox))
	}
	for _, box := range boxes {
		if _, acked := acks[box][e.msgID]; acked || e.ackedBy.has(box) {
			continue
		}
		if err := inbox.Put(key2(box, e.msgID), e.message); err != nil {
			return trimmed, err
		}
		n := uint64(1)
		if v := counts.Get(u64(box)); v != nil {
			n += binary.BigEndian.Uint64(v)
		}
		for n > uint64(s.cfg.InboxLimit) {
			// Trim the oldest: the first key under this box's prefix.
			c := inbox.Cursor()
			k, _ := c.Seek(u64(box))
			if k == nil || !hasPrefix(k, u64(box)) {
				break
			}
			if err := c.Delete(); err != nil {
				return trimmed, err
			}
			n--
			trimmed++
		}
		if err := counts.Put(u64(box), u64(n)); err != nil {
			return trimmed, err
		}
	}
	if e.clientMsgID != "" {
		id := u64(e.msgID)
		if err := tx.Bucket(bucketDedup).Put(dedupKey(e.sender, e.clientMsgID), id); err != nil {
			return trimmed, err
		}
		if err := tx.Bucket(bucketDedupAge).Put(key2(e.msgID, e.sender), []byte(e.clientMsgID)); err != nil {
			return trimmed, err
		}
		if err := tx.Bucket(bucketMessages).Put(id, e.message); err != nil {
			return trimmed, err
		}
	}
	return trimmed, nil
}

// senderMsgID is a client_msg_id with its sender, in memory.
type senderMsgID struct {
	sender      uint64
	clientMsgID string
}

func dedupKey(sender uint64, clientMsgID string) []byte {
	return append(u64(sender), clientMsgID...)
}

func (s *BoltStore) Inbox(ctx context.Context, box, after uint64, limit int) (out []*chatpb.Message, err error) {
	if err := s.applyLogFor(ctx, boxUser(box)); err != nil {
		return nil, err
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		prefix := u64(box)
		c := tx.Bucket(bucketInbox).Cursor()
		k, v := c.Seek(key2(box, after+1))
		for ; k != nil && hasPrefix(k, prefix) && len(out) < limit; k, v = c.Next() {
			if s.acked(box, binary.BigEndian.Uint64(k[8:])) {
				continue
			}
			m := new(chatpb.Message)
			if err := proto.Unmarshal(v, m); err != nil {
				return fmt.Errorf("store: inbox message: %w", err)
			}
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// maxPendingAcks bounds acks held in memory; past it Ack waits for a commit.
const maxPendingAcks = 100_000

// Ack logs the acks with the next batch of the message log (beside the
// sends queued with them: one fdatasync for all) and returns once that is
// synced, so they survive a crash. Only then do they take effect in memory
// (applyAckLocked); bbolt gets them lazily, as before. ids is read until
// Ack returns.
func (s *BoltStore) Ack(ctx context.Context, uid uint64, ids []uint64) error {
	if len(ids) == 0 {
		return nil
	}
	op := &appendOp{ackUser: uid, acked: ids, done: s.doneChans.Get().(chan struct{})}
	if err := s.appends.send(ctx, op); err != nil {
		s.doneChans.Put(op.done)
		return err
	}
	select {
	case <-op.done:
		s.doneChans.Put(op.done)
	case <-ctx.Done():
		// It may still be logged; as with AppendMessage, the outcome is
		// unknown and the channel is left to the collector.
		return ctx.Err()
	}
	if op.err != nil {
		return op.err
	}
	s.mem.Lock()
	full := s.ackCount >= maxPendingAcks
	s.mem.Unlock()
	if full {
		// Too many waiting for bbolt: write them now, and make this caller
		// wait for it (backpressure instead of unbounded memory).
		return s.committer.do(ctx, noWrite)
	}
	return nil
}

// applyAckLocked gives logged acks their effect in memory. s.mem is held.
func (s *BoltStore) applyAckLocked(uid uint64, ids []uint64) {
	m := s.acks[uid]
	for _, id := range ids {
		if e := s.unappliedIDs[id]; e != nil && !e.taken {
			// Not in bbolt yet: it will be copied without this recipient.
			// (An ack from a non-recipient marks nobody the copy writes.)
			e.ackedBy.add(uid)
			continue
		}
		if m == nil {
			// Most acks land above, while their message is still in
			// the log, so the set is made only when one is needed.
			if s.acks == nil {
				s.acks = make(map[uint64]map[uint64]struct{})
			}
			m = make(map[uint64]struct{}, len(ids))
			s.acks[uid] = m
		}
		if _, dup := m[id]; !dup {
			m[id] = struct{}{}
			s.ackCount++
		}
	}
}

// noWrite is a commit of nothing but what is pending (takePending).
func noWrite(*bolt.Tx) error { return nil }

func applyAcks(tx *bolt.Tx, uid uint64, ids map[uint64]struct{}) error {
	inbox, counts := tx.Bucket(bucketInbox), tx.Bucket(bucketInboxCount)
	removed := uint64(0)
	for id := range ids {
		k := key2(uid, id)
		if inbox.Get(k) == nil {
			continue
		}
		if err := inbox.Delete(k); err != nil {
			return err
		}
		removed++
	}
	if removed == 0 {
		return nil
	}
	var n uint64
	if v := counts.Get(u64(uid)); v != nil {
		n = binary.BigEndian.Uint64(v)
	}
	if removed >= n {
		return counts.Delete(u64(uid))
	}
	return counts.Put(u64(uid), u64(n-removed))
}

// acked reports whether uid's message id has an ack not yet written.
func (s *BoltStore) acked(uid, id uint64) bool {
	s.mem.Lock()
	defer s.mem.Unlock()
	if _, ok := s.acks[uid][id]; ok {
		return true
	}
	_, ok := s.takenAcks[uid][id]
	return ok
}

// janitor expires client_msg_id entries older than the dedup window.
func (s *BoltStore) janitor() {
	defer close(s.janitorDone)
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-s.stopJanitor:
			return
		case <-t.C:
			_ = s.expireDedup(context.Background(), time.Now().Add(-s.cfg.DedupWindow))
		}
	}
}

// expireDedup forgets client_msg_ids of messages sent before cutoff, at
// most a bounded number per transaction so it never stalls other writes.
func (s *BoltStore) expireDedup(ctx context.Context, cutoff time.Time) error {
	limit := msgIDFloor(cutoff)
	for {
		more := false
		// Copy logged messages first, so the cutoff applies to them too.
		s.forceCopy.Store(true)
		err := s.committer.do(ctx, func(tx *bolt.Tx) error {
			age, dedup, msgs := tx.Bucket(bucketDedupAge), tx.Bucket(bucketDedup), tx.Bucket(bucketMessages)
			c := age.Cursor()
			n := 0
			for k, v := c.First(); k != nil; k, v = c.First() {
				if binary.BigEndian.Uint64(k[:8]) >= limit {
					return nil
				}
				if n == 1000 {
					more = true
					return nil
				}
				if err := dedup.Delete(append(append([]byte(nil), k[8:16]...), v...)); err != nil {
					return err
				}
				if err := msgs.Delete(k[:8]); err != nil {
					return err
				}
				if err := c.Delete(); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil || !more {
			return err
		}
	}
}

// reached reports whether b holds at least limit keys that start with id
// (a friend, member or membership count); a limit of zero is never reached.
// It counts no further than the limit.
func reached(b *bolt.Bucket, id uint64, limit int) bool {
	if limit <= 0 {
		return false
	}
	prefix := u64(id)
	n := 0
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
		if n++; n >= limit {
			return true
		}
	}
	return false
}

func hasPrefix(k, prefix []byte) bool {
	return len(k) >= len(prefix) && string(k[:len(prefix)]) == string(prefix)
}

// Ensure BoltStore implements Store.
var _ Store = (*BoltStore)(nil)

// isDomainError reports whether err is an answer for the client (a
// *protocol.Error) rather than a storage fault. Write functions check
// before they write, so a domain error leaves the transaction clean.
func isDomainError(err error) bool {
	var pe *protocol.Error
	return errors.As(err, &pe)
}
