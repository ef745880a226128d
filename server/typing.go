package server

import (
	"context"

	"golang.org/x/time/rate"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// Typing notices (docs/presence.md, "Typing"): transient, never stored,
// pushed to the other side of a conversation as TypingNotice, live only.

// A connection's typing notices are forwarded at typingRate a second
// sustained, typingBurst at once; the rest are answered OK and dropped. A
// client sends one every 3 s while its user types (receivers show it for
// 5 s), so this leaves room for a few conversations at once and stops a
// client that sends one per keystroke from pushing one per keystroke.
const (
	typingRate  = 1
	typingBurst = 3
)

// TypingNotice is a typing notice on its way to a user: UserID types in
// the conversation with them (GroupID 0) or in group GroupID.
type TypingNotice struct {
	UserID   uint64
	Username string
	GroupID  uint64
}

func (n *TypingNotice) encode() []byte {
	b, err := protocol.Encode(&chatpb.Frame{Body: &chatpb.Frame_TypingNotice{TypingNotice: &chatpb.TypingNotice{
		UserId: n.UserID, Username: n.Username, GroupId: n.GroupID}}})
	if err != nil {
		return nil
	}
	return b
}

// typingNotice tells the other side of a conversation of the caller's that
// the caller is typing: the peer, or the group's other members (those
// online get it). The target is checked as for a Send; a notice over the
// typing rate is answered OK and dropped.
func (c *session) typingNotice(ctx context.Context, req *chatpb.Typing) (*chatpb.Frame, error) {
	u := c.user.Load()
	var to []uint64
	n := &TypingNotice{UserID: u.id, Username: u.name}
	if req.GroupId != 0 && req.PeerUserId == 0 && req.PeerUsername == "" {
		g, err := c.srv.store.Group(ctx, req.GroupId)
		if err != nil {
			return nil, err
		}
		if !g.HasMember(u.id) {
			return nil, ErrNotMember
		}
		n.GroupID = g.ID
		for _, m := range g.Members {
			if m.UserID != u.id {
				to = append(to, m.UserID)
			}
		}
	} else {
		conv, _, err := c.conversation(ctx, req.PeerUserId, req.PeerUsername, req.GroupId)
		if err != nil {
			return nil, err
		}
		if peer := conv.A + conv.B - u.id; peer != u.id {
			to = []uint64{peer} // typing to yourself tells no one
		}
	}
	if c.typing == nil {
		c.typing = rate.NewLimiter(typingRate, typingBurst)
	}
	if !c.typing.Allow() || !c.allowFanout(len(to)) {
		c.srv.metrics.typingNotices.WithLabelValues("dropped").Inc()
		return okFrame(), nil
	}
	if n.GroupID == 0 && len(to) == 1 {
		// Dropped between two users one of whom blocks the other, as
		// quietly as over the rate: the blocker's block is not revealed.
		blocked, err := c.srv.store.Blocked(ctx, u.id, to[0])
		if err != nil {
			return nil, err
		}
		if blocked {
			c.srv.metrics.typingNotices.WithLabelValues("blocked").Inc()
			return okFrame(), nil
		}
	}
	if len(to) > 0 {
		ev := Event{Typing: n, Epoch: u.epoch, frame: n.encode()}
		var err error
		if n.GroupID != 0 {
			// One event to the nodes that hear the group (fanout.go).
			_, err = c.srv.broker.PublishGroup(ctx, n.GroupID, to, ev)
		} else {
			_, err = c.srv.broker.Publish(ctx, to, ev)
		}
		if err != nil {
			// Transient: a notice that does not make it is simply not seen.
			c.logger().Debug("typing notice not published", "err", err)
		}
	}
	c.srv.metrics.typingNotices.WithLabelValues("sent").Inc()
	return okFrame(), nil
}
