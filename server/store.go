package server

import (
	"context"

	chatpb "github.com/loopchat/loopchat/proto"
)

// User is a registered account.
type User struct {
	ID           uint64
	Name         string // as registered; lookups ignore case
	PasswordHash []byte // as made by hasher.hash, or plain bcrypt from before pre-hashing
	// Nonce is random, made at registration, and signed into the user's
	// tokens: a store restored from an older copy gives this id to someone
	// else, whose nonce differs, so the tokens of the first do not log in
	// as the second. Zero for accounts made before nonces (and from
	// UserByID and UserByName, which do not read it).
	Nonce uint64
	// BannedUntilMs: the account may not log in before this time, unix ms
	// (0: not banned; math.MaxInt64: until the ban is lifted). Read by
	// Credentials and Account only, as Nonce.
	BannedUntilMs int64
	// TokensRefusedUntilMs: logins with a token are refused before this
	// time, unix ms (0: none; Store.RevokeTokens). Credentials and Account
	// only.
	TokensRefusedUntilMs int64
}

// nameOnly is u as the name lookups (UserByID, UserByName, Friends) give
// it: id and name, none of the account's login state.
func (u User) nameOnly() User { return User{ID: u.ID, Name: u.Name} }

// Member is one user's membership of a group.
type Member struct {
	UserID   uint64
	Username string
	Role     chatpb.Role
	// JoinedSeq is the group conversation's last seq when the member
	// joined: they see its history above it (0 for the creator, and for
	// members who joined before conversations had seqs).
	JoinedSeq uint64
}

// Group is a chat group with its members, creator first.
type Group struct {
	ID          uint64
	Name        string
	Description string
	Members     []Member
}

// HasMember reports whether uid is a member of g.
func (g *Group) HasMember(uid uint64) bool {
	for _, m := range g.Members {
		if m.UserID == uid {
			return true
		}
	}
	return false
}

// recipients are the members a message from sender to g goes to: all
// but the sender.
func (g *Group) recipients(sender uint64) []uint64 {
	out := make([]uint64, 0, len(g.Members))
	for _, m := range g.Members {
		if m.UserID != sender {
			out = append(out, m.UserID)
		}
	}
	return out
}

// AppendResult is what Store.AppendMessage did.
type AppendResult struct {
	// Message is the stored message. For a duplicate client_msg_id it is the
	// first send's message, whose msg_id and sent_at the caller must report.
	Message *chatpb.Message
	// Encoded is Message in protobuf wire form when the store made it
	// (nil otherwise); pushes reuse it. Read-only.
	Encoded []byte
	// Push is the frame that pushes Message when the store made it with
	// Encoded (nil otherwise): its header, then Encoded. Read-only.
	Push []byte
	// Duplicate is true when the (sender, client_msg_id) pair was seen
	// before: nothing was stored and nothing must be delivered.
	Duplicate bool
	// Trimmed counts messages dropped from full inboxes to make room, when
	// the store trims as it appends (the Redis store). The embedded store
	// trims later and reports through BoltConfig.ObserveTrim.
	Trimmed int
	// HistoryTrimmed counts messages retention dropped from the
	// conversation's history as this one was appended, when the store
	// trims as it appends (the Redis store; the embedded store reports
	// through BoltConfig.ObserveHistoryTrim).
	HistoryTrimmed int
	// Published is true when the store also handed the message to the
	// broker for its recipients (RedisConfig.PublishMessages), so the caller
	// must not publish it again; Online then counts the recipients who were
	// subscribed somewhere.
	Published bool
	Online    int
	// SenderCopies counts the boxes of the sender's other devices the
	// message went to (see withSendingDevice): when above zero, the caller
	// pushes it to the sender's user too (unless Published).
	SenderCopies int
	// Recipients is how many users the message was stored for when the
	// store chose them (a group message on the Redis store: its members
	// at the append, the sender left out); 0 when it took the caller's.
	Recipients int
}

// Limits bound what one user or one group may gather. The store checks
// them in the same transaction (or script) that adds, so concurrent
// requests cannot overshoot. Each zero field means no limit; the server
// always passes its configured ones (Options).
type Limits struct {
	FriendsPerUser  int
	GroupsPerUser   int
	MembersPerGroup int
	BlockedPerUser  int
}

// Store keeps users, friendships, groups and inboxes. Every method is safe
// for concurrent use and may block on I/O, so it is never called on an event
// loop. Errors the client should see are the exact sentinels of errors.go
// (ErrUserNotFound, ErrGroupFull, ...), which the conformance suite checks by
// identity; anything else is a storage fault.
//
// Two implementations share one conformance suite (store_conformance_test.go):
// the embedded bbolt store and, in cluster mode, the Redis store.
type Store interface {
	// CreateUser adds a user with a fresh random nonce; the name must be
	// free, ignoring case.
	CreateUser(ctx context.Context, name string, passwordHash []byte) (User, error)
	// Credentials finds a user by name, ignoring case, with the password
	// hash and nonce: the password login path.
	Credentials(ctx context.Context, name string) (User, error)
	// Account reads user id's record, with its nonce (no password hash),
	// from the store itself, never from a cache: the token login path, which
	// must see the account as it is now.
	Account(ctx context.Context, id uint64) (User, error)
	// UserByName finds a user by name, ignoring case, without the hash.
	// Users are never renamed or deleted, so implementations may cache.
	UserByName(ctx context.Context, name string) (User, error)
	// UserByID finds a user by id, without the hash (cacheable likewise).
	UserByID(ctx context.Context, id uint64) (User, error)
	// Users lists up to limit (>= 1) users with ids above after, in id
	// order, by name only: what a durable broadcast walks (api.go).
	Users(ctx context.Context, after uint64, limit int) ([]User, error)
	// SetBan keeps uid from logging in until untilMs (unix ms;
	// math.MaxInt64: until lifted), or lifts the ban (0). Credentials and
	// Account report it; the server refuses the login (accounts.go).
	SetBan(ctx context.Context, uid uint64, untilMs int64) error
	// RevokeTokens gives uid a new nonce, so that every token issued
	// before is refused for good, and refuses uid's token logins until
	// untilMs (unix ms; 0 or past: no such window), in one write.
	RevokeTokens(ctx context.Context, uid uint64, untilMs int64) error

	// AddFriend makes a and b friends of each other, unless either already
	// has lim.FriendsPerUser friends (ErrTooManyFriends).
	AddFriend(ctx context.Context, a, b uint64, lim Limits) error
	// RemoveFriend ends the friendship of a and b, on both sides
	// (ErrNotFriends when neither side has the other; ErrUnfriendSelf when
	// a is b). Their conversation and its history stay.
	RemoveFriend(ctx context.Context, a, b uint64) error
	// Friends lists uid's friends in the order they were added.
	Friends(ctx context.Context, uid uint64) ([]User, error)

	// Block records that uid blocks target (block.go) and ends their
	// friendship, both sides, in the same write (on a Redis Cluster, the
	// steps of docs/cluster.md), unless uid already blocks
	// lim.BlockedPerUser users (ErrTooManyBlocked). Blocking someone
	// blocked already changes nothing. While either of two users blocks
	// the other, AddFriend between them is ErrBlocked, and so is a 1:1
	// AppendMessage between them, checked in the write that would take
	// its seq (on a Redis Cluster, just before it).
	Block(ctx context.Context, uid, target uint64, lim Limits) error
	// Unblock lifts uid's block of target (ErrNotBlocked: there was none).
	Unblock(ctx context.Context, uid, target uint64) error
	// BlockedUsers lists the users uid blocks, by id.
	BlockedUsers(ctx context.Context, uid uint64) ([]User, error)
	// Blocked reports whether a blocks b or b blocks a.
	Blocked(ctx context.Context, a, b uint64) (bool, error)

	// CreateGroup makes a group whose first member, with role creator, is
	// creator, unless creator is already in lim.GroupsPerUser groups
	// (ErrTooManyGroups).
	CreateGroup(ctx context.Context, creator uint64, name, description string, lim Limits) (Group, error)
	// JoinGroup adds uid to gid as a member, with the group conversation's
	// last seq as their JoinedSeq (in the same write), unless the group has
	// lim.MembersPerGroup members (ErrGroupFull) or uid is in
	// lim.GroupsPerUser groups (ErrTooManyGroups).
	JoinGroup(ctx context.Context, gid, uid uint64, lim Limits) error
	// LeaveGroup removes uid from gid.
	LeaveGroup(ctx context.Context, gid, uid uint64) error
	// Group returns gid with its members.
	Group(ctx context.Context, gid uint64) (Group, error)
	// GroupsOf lists the groups uid belongs to, with their members.
	GroupsOf(ctx context.Context, uid uint64) ([]Group, error)
	// GroupIDs lists the ids of the groups uid belongs to, ascending: what
	// GroupsOf lists, without reading the groups (a node's index of the
	// groups it must hear, fanout.go).
	GroupIDs(ctx context.Context, uid uint64) ([]uint64, error)

	// AppendMessage durably appends m to its conversation
	// (ConversationOf) and to the inbox (box, device.go) of every device
	// of every recipient known when m was sent, and of every other device
	// of the sender when ctx names the sending device (withSendingDevice).
	// For a group message the Redis store ignores recipients and takes
	// the group's members, all but the sender, in the same atomic write
	// that takes the seq: a join or leave racing the send then falls
	// wholly before or after it, so the message goes to exactly the
	// members whose JoinedSeq is below its seq (AppendResult.Recipients
	// says how many). The embedded store takes recipients as given. It sets m.Seq
	// to the conversation's next seq in that same durable write, so seqs
	// have no gaps and a message is never seen under a seq before every
	// lower one is stored; the stored and published copies carry it. When
	// clientMsgID is not empty and (m.FromUserId, clientMsgID) was appended
	// before within the dedup window, nothing is stored and the earlier
	// message is returned as a duplicate. Only once AppendMessage returns nil
	// may the message be reported as sent.
	AppendMessage(ctx context.Context, m *chatpb.Message, recipients []uint64, clientMsgID string) (AppendResult, error)
	// History reads one page of a conversation, as kept within the
	// store's HistoryLimits.
	History(ctx context.Context, q HistoryQuery) (HistoryPage, error)
	// LastSeq is the conversation's highest seq so far (0: none).
	LastSeq(ctx context.Context, conv Conversation) (uint64, error)
	// MarkRead moves uid's read seq in conv up to upTo, clamped to the
	// conversation's last seq, never backwards; it returns the read seq
	// after, and whether it moved.
	MarkRead(ctx context.Context, uid uint64, conv Conversation, upTo uint64) (seq uint64, moved bool, err error)
	// ReadSeq is uid's read seq in conv (0: nothing read).
	ReadSeq(ctx context.Context, uid uint64, conv Conversation) (uint64, error)
	// ListConversations lists uid's conversations with a message (last
	// seq > 0): the 1:1 ones uid sent or was sent a message in, and the
	// groups uid is in, each as uid sees it. It keeps the limit (>= 1)
	// most recent, newest first (sortConversations), and says whether
	// there were more. Every message appended before it was called is in
	// it.
	ListConversations(ctx context.Context, uid uint64, limit int) ([]ConversationSummary, bool, error)
	// Inbox returns up to limit unacknowledged messages in box (boxOf: a
	// user's device) with msg_id greater than after, oldest first.
	Inbox(ctx context.Context, box, after uint64, limit int) ([]*chatpb.Message, error)
	// Ack removes the given messages from box; unknown ids are
	// ignored. Once it returns nil the removal is durable, as durable as
	// AppendMessage's append: after a crash and restart Inbox does not
	// return those messages again (nor does it before, once Ack returned).
	// The server answers a connection's next request only after its Ack
	// returned, so a Pong after Acks means they survive a crash. An
	// implementation may batch acks with other writes to share one fsync,
	// and may apply them to its indexes lazily, as long as that holds.
	Ack(ctx context.Context, box uint64, msgIDs []uint64) error

	// RegisterDevice records that uid logs in on device (device.go) at
	// nowMs and returns its slot, forgetting the device with the oldest
	// login (and emptying its box) when uid already has maxKnownDevices.
	RegisterDevice(ctx context.Context, uid uint64, device string, nowMs int64) (DeviceReg, error)
	// Devices lists the devices the store knows for uid (none: only the
	// implicit device "" in slot 0).
	Devices(ctx context.Context, uid uint64) ([]Device, error)

	// NewSession takes the next session generation of uid's device:
	// greater than every one taken before for uid, on any node (see
	// sessiongen.go). The newest login of a device is the one with the
	// highest generation.
	NewSession(ctx context.Context, uid uint64, device string) (uint64, error)
	// LatestSession is the highest session generation taken so far for
	// uid's device (0: none).
	LatestSession(ctx context.Context, uid uint64, device string) (uint64, error)
	// DeviceOnline records the session gen of uid's device as online and
	// returns the sessions that must go so that at most max devices stay
	// online: those with the oldest generations (never gen itself unless
	// a newer session of the same device is already recorded). Those are
	// no longer recorded online.
	DeviceOnline(ctx context.Context, uid uint64, device string, gen uint64, max int) ([]DeviceSession, error)
	// DeviceOffline records that the session gen of uid's device ended,
	// unless a newer session of that device is recorded.
	DeviceOffline(ctx context.Context, uid uint64, device string, gen uint64) error

	// PresenceJoin records that uid has a session on node (a presence
	// instance: one per server process, presence_store.go). An offline
	// user becomes online, and unless they hide their presence the change
	// is announced (Announce; Published when the store published it).
	PresenceJoin(ctx context.Context, uid uint64, node string) (PresenceChange, error)
	// PresenceLeave records that node has no session of uid any more, and
	// reports whether no node has one now: the caller then settles the
	// user (PresenceSettle) once the offline grace is over.
	PresenceLeave(ctx context.Context, uid uint64, node string) (last bool, err error)
	// PresenceSettle drops node from uid's nodes (again: it is
	// idempotent) and, when no node has a session of an online uid,
	// records them offline, last seen at atMs; announced unless hidden.
	PresenceSettle(ctx context.Context, uid uint64, node string, atMs int64) (PresenceChange, error)
	// Presence reads uids' presence as their friends see it: a user who
	// hides it is offline with no last seen.
	Presence(ctx context.Context, uids []uint64) ([]PresenceState, error)
	// SetPresenceVisible shows or hides uid's presence from their
	// friends; announced when that changed.
	SetPresenceVisible(ctx context.Context, uid uint64, visible bool) (PresenceChange, error)

	// Epoch names the store's contents (epoch.go): made once, when the
	// store is first used, and kept with its data. A shared store whose
	// epoch is gone gets a new one here; so does one found rolled back.
	Epoch(ctx context.Context) (string, error)
	// UseEpoch binds later writes to epoch e: a write whose request was made
	// under another epoch (withEpoch) fails with ErrStoreReset, and nothing
	// cached from the contents of another epoch is used.
	UseEpoch(e string)

	// Ping reports whether the store answers (for /readyz).
	Ping(ctx context.Context) error
	// Close releases the store; pending writes finish first.
	Close() error
}
