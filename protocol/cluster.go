package protocol

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// The JSON that crosses Redis between nodes, and that any program may use
// to reach a logged-in user. See docs/cluster.md.

// DefaultPrefix starts every Redis key and channel name.
const DefaultPrefix = "loopchat:"

// UserChannel is the pub/sub channel of a user: "<prefix>user:<id>".
func UserChannel(prefix string, uid uint64) string {
	return prefix + "user:" + strconv.FormatUint(uid, 10)
}

// ShardUserChannel is a user's channel on a Redis Cluster, a shard channel
// (SSUBSCRIBE, SPUBLISH): "<prefix>user:{u:<id>}", whose hash tag puts it
// in the slot of the user's keys ("<prefix>{u:<id>}:...").
func ShardUserChannel(prefix string, uid uint64) string {
	return prefix + "user:{u:" + strconv.FormatUint(uid, 10) + "}"
}

// ParseUserChannel returns the user id of a UserChannel or
// ShardUserChannel name.
func ParseUserChannel(prefix, channel string) (uint64, bool) {
	rest, ok := strings.CutPrefix(channel, prefix+"user:")
	if !ok {
		return 0, false
	}
	if tagged, ok := strings.CutPrefix(rest, "{u:"); ok {
		if rest, ok = strings.CutSuffix(tagged, "}"); !ok {
			return 0, false
		}
	}
	uid, err := strconv.ParseUint(rest, 10, 64)
	return uid, err == nil
}

// GroupChannel is the pub/sub channel of a group's live traffic:
// "<prefix>group:<id>". A node subscribes to it while it holds a session of
// a member; each event on it lists the users it is for ("to").
func GroupChannel(prefix string, gid uint64) string {
	return prefix + "group:" + strconv.FormatUint(gid, 10)
}

// ShardGroupChannel is a group's channel on a Redis Cluster, a shard
// channel: "<prefix>group:{c:g<id>}", in the slot of the group's keys.
func ShardGroupChannel(prefix string, gid uint64) string {
	return prefix + "group:{c:g" + strconv.FormatUint(gid, 10) + "}"
}

// ParseGroupChannel returns the group id of a GroupChannel or
// ShardGroupChannel name.
func ParseGroupChannel(prefix, channel string) (uint64, bool) {
	rest, ok := strings.CutPrefix(channel, prefix+"group:")
	if !ok {
		return 0, false
	}
	if tagged, ok := strings.CutPrefix(rest, "{c:g"); ok {
		if rest, ok = strings.CutSuffix(tagged, "}"); !ok {
			return 0, false
		}
	}
	gid, err := strconv.ParseUint(rest, 10, 64)
	return gid, err == nil && gid != 0
}

// BroadcastChannel is the channel every node subscribes to: a message on it
// is pushed to every logged-in session of every node, live only.
func BroadcastChannel(prefix string) string { return prefix + "broadcast" }

// Event types on a user channel.
const (
	EventMessage = "message" // a chat message to push to the user
	EventLogin   = "login"   // the user logged in on node_id; older sessions must go
	EventRead    = "read"    // reader_user_id read conv up to up_to_seq (a read receipt)
	// EventDeviceKick: the session of device with generation gen or lower
	// must go, kicked with DEVICE_LIMIT (too many devices online).
	EventDeviceKick = "device_kick"
	// EventPresence: user_id, a friend of the channel's user, came online
	// or went offline (last_seen_ms).
	EventPresence = "presence"
	// EventTyping: user_id is typing in the conversation with the
	// channel's user (group_id 0), or in group group_id.
	EventTyping = "typing"
	// EventKick: every session of the channel's user must go, kicked with
	// DISCONNECTED_BY_SERVER and text (if any) as the reason told.
	EventKick = "kick"
	// EventGroupMember: the channel's user (user_id) joined group_id
	// (joined true) or left it. Nodes holding a session of the user start
	// or stop hearing the group's channel.
	EventGroupMember = "group_member"
)

// ChannelEvent is one JSON object on a user, group or the broadcast
// channel (docs/cluster.md). For "message" the
// chat fields are used; a message published by a third party may leave
// msg_id and sent_at_ms zero (the node fills them in) and is pushed live
// only: it is not stored. For "login" node_id, conn_id, at_ms and gen are used.
type ChannelEvent struct {
	Type string `json:"type"`

	MsgID        Uint64 `json:"msg_id,omitempty"`
	FromUserID   uint64 `json:"from_user_id,omitempty"`
	FromUsername string `json:"from_username,omitempty"`
	ToUserID     uint64 `json:"to_user_id,omitempty"`
	GroupID      uint64 `json:"group_id,omitempty"`
	Text         string `json:"text,omitempty"`
	SentAtMs     int64  `json:"sent_at_ms,omitempty"`
	// Seq is the message's place in its conversation (chat.proto
	// Message.seq), set by the store as it appends. Nodes ignore it on a
	// message without msg_id: that one was never stored, so it has none.
	Seq uint64 `json:"seq,omitempty"`

	// For "read": who read which conversation ("d<a>:<b>" or "g<gid>"),
	// up to which seq; node_id and conn_id name the session that marked it.
	ReaderUserID uint64 `json:"reader_user_id,omitempty"`
	Conv         string `json:"conv,omitempty"`
	UpToSeq      uint64 `json:"up_to_seq,omitempty"`

	// For "presence": the friend (user_id, username) whose presence
	// changed, online or not, and when last seen (offline only). For
	// "typing": who is typing (user_id, username), and group_id.
	UserID     uint64 `json:"user_id,omitempty"`
	Username   string `json:"username,omitempty"`
	Online     bool   `json:"online,omitempty"`
	LastSeenMs int64  `json:"last_seen_ms,omitempty"`

	NodeID string `json:"node_id,omitempty"`
	ConnID uint64 `json:"conn_id,omitempty"`
	AtMs   int64  `json:"at_ms,omitempty"`
	// Gen is the login's session generation: sessions of the same device
	// with a lower one are kicked, never one with a higher one.
	Gen uint64 `json:"gen,omitempty"`
	// Device is the login's (or the kicked) device id ("": the device of
	// clients without one). On a "message", node_id and conn_id name the
	// sending session and device its device: no session of that device
	// gets the user's own message back, the sending one or a later one.
	Device string `json:"device,omitempty"`
	// To lists, on a group channel only, the users a message or typing
	// notice is for: each node pushes it to its own sessions of them.
	To []uint64 `json:"to,omitempty"`
	// Joined is, for "group_member", whether user_id joined group_id (or
	// left it).
	Joined bool `json:"joined,omitempty"`
	// Epoch is the store epoch the login or message belongs to; nodes drop
	// a message, and ignore a login, of an epoch other than their
	// session's. Other programs leave it out.
	Epoch string `json:"epoch,omitempty"`
}

// MaxChannelEvent bounds a channel payload: the longest text and names,
// escaped, fit with room to spare; anything bigger is not an event.
const MaxChannelEvent = 64 << 10

// MaxGroupRecipients bounds the "to" list of a group channel event, far
// above any group a login answer can carry (docs/design.md, "Friend and
// group bounds").
const MaxGroupRecipients = 100_000

// MaxGroupChannelEvent bounds a group channel payload: an event of
// MaxChannelEvent and MaxGroupRecipients ids of 20 digits with commas.
const MaxGroupChannelEvent = MaxChannelEvent + 21*MaxGroupRecipients

// maxDeviceID bounds an event's device (Login.device_id's limit).
const maxDeviceID = 64

// maxNodeID bounds a login event's node_id.
const maxNodeID = 256

// maxEpoch bounds an event's epoch (nodes make 32 hex digits).
const maxEpoch = 64

// maxConvKey bounds a read event's conv ("d" and two 20-digit ids).
const maxConvKey = 48

// ParseChannelEvent decodes and validates a user channel payload. Anyone
// who can PUBLISH to Redis can send one, so every field that reaches a
// client is checked as strictly as a client's own request would be.
func ParseChannelEvent[T string | []byte](payload T) (*ChannelEvent, error) {
	ev, err := parseEvent(string(payload), MaxChannelEvent)
	if err != nil {
		return nil, err
	}
	if len(ev.To) > 0 {
		return nil, fmt.Errorf("protocol: a user channel event has no \"to\"")
	}
	return ev, nil
}

// ParseGroupEvent decodes and validates a payload on the channel of group
// gid: a message or typing notice of that group, checked as on a user
// channel, with the users it is for (1 to MaxGroupRecipients ids, none 0).
func ParseGroupEvent[T string | []byte](payload T, gid uint64) (*ChannelEvent, error) {
	ev, err := parseEvent(string(payload), MaxGroupChannelEvent)
	if err != nil {
		return nil, err
	}
	switch {
	case ev.Type != EventMessage && ev.Type != EventTyping:
		return nil, fmt.Errorf("protocol: a group channel carries messages and typing notices, not %q", ev.Type)
	case ev.GroupID != gid || ev.ToUserID != 0:
		return nil, fmt.Errorf("protocol: group channel event of group %d (to user %d) on the channel of group %d", ev.GroupID, ev.ToUserID, gid)
	case len(ev.To) == 0 || len(ev.To) > MaxGroupRecipients:
		return nil, fmt.Errorf("protocol: group channel event for %d users, want 1-%d", len(ev.To), MaxGroupRecipients)
	}
	for _, uid := range ev.To {
		if uid == 0 {
			return nil, fmt.Errorf("protocol: group channel event for user 0")
		}
	}
	return ev, nil
}

// ParseBroadcastEvent decodes and validates a payload on the broadcast
// channel: a message, checked as on a user channel, for no one in
// particular (no to_user_id, group_id or "to").
func ParseBroadcastEvent[T string | []byte](payload T) (*ChannelEvent, error) {
	ev, err := parseEvent(string(payload), MaxChannelEvent)
	if err != nil {
		return nil, err
	}
	if ev.Type != EventMessage || ev.ToUserID != 0 || ev.GroupID != 0 || len(ev.To) > 0 {
		return nil, fmt.Errorf("protocol: the broadcast channel carries messages to everyone, not %q to a user or group", ev.Type)
	}
	return ev, nil
}

// parseEvent decodes a channel payload of at most limit bytes and checks
// what every channel requires of its type. The payload is a string (what
// the Redis client hands over) so that the event's strings can be its
// substrings (decodeEventFast).
func parseEvent(payload string, limit int) (*ChannelEvent, error) {
	if len(payload) > limit {
		return nil, fmt.Errorf("protocol: channel event of %d bytes, over %d", len(payload), limit)
	}
	var ev ChannelEvent
	if !decodeEventFast(payload, &ev) {
		ev = ChannelEvent{}
		if err := json.Unmarshal([]byte(payload), &ev); err != nil {
			return nil, fmt.Errorf("protocol: channel event: %w", err)
		}
	}
	if len(ev.To) == 0 {
		ev.To = nil // "to":[] says what no "to" says
	}
	switch ev.Type {
	case EventMessage:
		if err := ValidateText(ev.Text); err != nil {
			return nil, fmt.Errorf("protocol: channel message: %w", err)
		}
		if ev.FromUsername != "" {
			if err := ValidateUsername(ev.FromUsername); err != nil {
				return nil, fmt.Errorf("protocol: channel message from_username: %w", err)
			}
		}
		if len(ev.Device) > maxDeviceID {
			return nil, fmt.Errorf("protocol: channel message device of %d bytes, over %d", len(ev.Device), maxDeviceID)
		}
	case EventLogin:
		if ev.NodeID == "" || len(ev.NodeID) > maxNodeID || len(ev.Device) > maxDeviceID {
			return nil, fmt.Errorf("protocol: login event needs a node_id of 1-%d bytes", maxNodeID)
		}
	case EventDeviceKick:
		if ev.Gen == 0 || len(ev.Device) > maxDeviceID {
			return nil, fmt.Errorf("protocol: device_kick event needs gen and a device of 0-%d bytes", maxDeviceID)
		}
	case EventRead:
		if ev.ReaderUserID == 0 || ev.UpToSeq == 0 || ev.Conv == "" || len(ev.Conv) > maxConvKey || len(ev.NodeID) > maxNodeID {
			return nil, fmt.Errorf("protocol: read event needs reader_user_id, up_to_seq and a conv of 1-%d bytes", maxConvKey)
		}
	case EventPresence:
		if ev.UserID == 0 || ev.LastSeenMs < 0 || ev.Online && ev.LastSeenMs != 0 {
			return nil, fmt.Errorf("protocol: presence event needs user_id, and last_seen_ms only when offline, never negative")
		}
		if ev.Username != "" {
			if err := ValidateUsername(ev.Username); err != nil {
				return nil, fmt.Errorf("protocol: presence event username: %w", err)
			}
		}
	case EventTyping:
		if ev.UserID == 0 {
			return nil, fmt.Errorf("protocol: typing event needs user_id")
		}
		if ev.Username != "" {
			if err := ValidateUsername(ev.Username); err != nil {
				return nil, fmt.Errorf("protocol: typing event username: %w", err)
			}
		}
	case EventKick:
		if err := ValidateKickText(ev.Text); err != nil {
			return nil, fmt.Errorf("protocol: kick event: %w", err)
		}
	case EventGroupMember:
		if ev.UserID == 0 || ev.GroupID == 0 {
			return nil, fmt.Errorf("protocol: group_member event needs user_id and group_id")
		}
	default:
		return nil, fmt.Errorf("protocol: unknown channel event type %q", ev.Type)
	}
	if len(ev.Epoch) > maxEpoch {
		return nil, fmt.Errorf("protocol: channel event epoch of %d bytes, over %d", len(ev.Epoch), maxEpoch)
	}
	return &ev, nil
}

// Uint64 is a JSON number that also accepts a quoted string, because
// message ids exceed 2^53 and JavaScript publishers must send them quoted.
// It is written as a plain number.
type Uint64 uint64

// UnmarshalJSON accepts 123 and "123".
func (u *Uint64) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "null" || s == "" {
		*u = 0
		return nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("not an unsigned integer: %s", b)
	}
	*u = Uint64(v)
	return nil
}

// NodeInfo is what a node heartbeats into the registry at NodeKey, with a
// short TTL: it disappears a few seconds after the node dies.
type NodeInfo struct {
	NodeID string `json:"node_id"`
	Addr   string `json:"addr"`
	// WSAddr is the node's WebSocket (and --web page) address for a proxy
	// such as nginx's http {} block; empty when it serves none.
	WSAddr    string `json:"ws_addr,omitempty"`
	Conns     int    `json:"conns"`
	Draining  bool   `json:"draining"`
	StartedAt int64  `json:"started_at_ms"`
}

// NodeKey is the registry key of one node; NodesKey is the sorted set of
// node ids by last heartbeat (ms), for discovery.
func NodeKey(prefix, nodeID string) string { return prefix + "node:" + nodeID }

// NodesKey is the registry's index of node ids.
func NodesKey(prefix string) string { return prefix + "nodes" }
