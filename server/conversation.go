package server

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Conversation is what a message belongs to and what its seq counts in: a
// group, or the unordered pair of users of a direct message.
type Conversation struct {
	GroupID uint64 // non-zero: the group's conversation
	A, B    uint64 // otherwise the two users, A <= B
}

// DirectConversation is the conversation of users u and v, either order.
func DirectConversation(u, v uint64) Conversation {
	if u > v {
		u, v = v, u
	}
	return Conversation{A: u, B: v}
}

// GroupConversation is group gid's conversation.
func GroupConversation(gid uint64) Conversation { return Conversation{GroupID: gid} }

// ConversationOf is the conversation m belongs to.
func ConversationOf(m *chatpb.Message) Conversation {
	if m.GroupId != 0 {
		return GroupConversation(m.GroupId)
	}
	return DirectConversation(m.FromUserId, m.ToUserId)
}

// Key names the conversation in store keys: "g<gid>" or "d<a>:<b>".
func (c Conversation) Key() string {
	if c.GroupID != 0 {
		return "g" + strconv.FormatUint(c.GroupID, 10)
	}
	return "d" + strconv.FormatUint(c.A, 10) + ":" + strconv.FormatUint(c.B, 10)
}

// ParseConversationKey reads back what Key wrote.
func ParseConversationKey(k string) (Conversation, error) {
	bad := fmt.Errorf("conversation key %q: want g<gid> or d<a>:<b>", k)
	switch {
	case strings.HasPrefix(k, "g"):
		gid, err := strconv.ParseUint(k[1:], 10, 64)
		if err != nil || gid == 0 {
			return Conversation{}, bad
		}
		return GroupConversation(gid), nil
	case strings.HasPrefix(k, "d"):
		as, bs, ok := strings.Cut(k[1:], ":")
		a, errA := strconv.ParseUint(as, 10, 64)
		b, errB := strconv.ParseUint(bs, 10, 64)
		if !ok || errA != nil || errB != nil || a == 0 || a > b {
			return Conversation{}, bad
		}
		return Conversation{A: a, B: b}, nil
	}
	return Conversation{}, bad
}

// HistoryQuery asks for one page of a conversation.
type HistoryQuery struct {
	Conv Conversation
	// Newest pages backwards: seq < Before (0: from the latest), newest
	// first. Otherwise forwards: seq > After, oldest first.
	Newest bool
	Before uint64
	After  uint64
	// Limit is the most messages returned, 1 or more.
	Limit int
	// Floor hides everything at or below it: a group member sees the
	// messages stored after they joined (Member.JoinedSeq).
	Floor uint64
}

// HistoryPage is one page of a conversation: Messages in the order asked,
// and whether visible messages lie further in that direction.
type HistoryPage struct {
	Messages []*chatpb.Message
	HasMore  bool
}

// HistoryLimits bound what a conversation keeps. Zero fields mean the
// defaults (DefaultHistoryMaxMessages, DefaultHistoryMaxAge); negative ones
// no bound.
type HistoryLimits struct {
	// MaxMessages is how many of the latest messages a conversation keeps.
	MaxMessages int
	// MaxAge drops messages older than it.
	MaxAge time.Duration
}

// Defaults for HistoryLimits: enough to scroll back through months of a
// busy chat, small enough that a Redis holding a million conversations
// fits in memory (docs/operations.md).
const (
	DefaultHistoryMaxMessages = 1000
	DefaultHistoryMaxAge      = 90 * 24 * time.Hour
)

func (l HistoryLimits) withDefaults() HistoryLimits {
	if l.MaxMessages == 0 {
		l.MaxMessages = DefaultHistoryMaxMessages
	}
	if l.MaxAge == 0 {
		l.MaxAge = DefaultHistoryMaxAge
	}
	return l
}
