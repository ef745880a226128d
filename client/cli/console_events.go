package cli

import (
	"fmt"

	"github.com/loopchat/loopchat/client"
	chatpb "github.com/loopchat/loopchat/proto"
)

// watch sees each event before the shell prints it: it learns names, keeps
// the prompt's connection status, prints a burst of typing once, words
// receipts with names, and keeps quiet about the kick of a connection
// that was simply not logged in yet. It returns whether the shell should
// print the event as usual.
func (k *console) watch(c *client.Client, ev client.Event) bool {
	k.mu.Lock()
	current := c == k.sh.c
	k.mu.Unlock()
	switch {
	case ev.Message != nil:
		m := ev.Message
		k.names.add(m.FromUserId, m.FromUsername)
		k.seen.forget(m.FromUserId, m.GroupId)
	case ev.Presence != nil:
		k.names.addFriend(ev.Presence.UserId, ev.Presence.Username) // only friends get presence
	case ev.Typing != nil:
		n := ev.Typing
		k.names.add(n.UserId, n.Username)
		return k.seen.show(n.UserId, n.GroupId)
	case ev.Read != nil:
		k.println(k.receipt(c, ev.Read))
		return false
	case ev.Kicked != nil:
		if ev.Kicked.Reason == chatpb.KickReason_KICK_REASON_LOGIN_TIMEOUT && c.UserID() == 0 {
			// The next command connects again, unseen.
			k.mu.Lock()
			k.quiet = c
			k.mu.Unlock()
			return false
		}
	case ev.Reconnected != nil:
		if !current {
			return false
		}
		k.names.setFriends(ev.Reconnected.Friends)
		k.setStatus(connected)
	case ev.Disconnected != nil:
		return k.disconnected(c, current, ev)
	}
	return true
}

// disconnected shows a lost connection once: "reconnecting…" while the SDK
// redials with the token (its failed attempts are not news), or, when it
// will not, that the next command connects afresh.
func (k *console) disconnected(c *client.Client, current bool, ev client.Event) bool {
	if !current {
		return false
	}
	k.mu.Lock()
	was := k.status
	quiet := c == k.quiet
	if !ev.Reconnecting {
		k.dead = true
	}
	k.mu.Unlock()
	switch {
	case ev.Reconnecting:
		if was != reconnecting {
			k.setStatus(reconnecting)
			k.println(fmt.Sprintf("connection lost (%v); reconnecting…", ev.Disconnected))
		}
	case quiet:
	case c.UserID() == 0:
		k.println("disconnected; the next command connects again")
		k.setStatus(connected) // nothing to show in the prompt: no one is logged in
	default:
		k.setStatus(offline)
		k.println("disconnected, and not reconnecting; the next command connects again, then /login")
	}
	return false
}

// receipt words a read receipt from the user's side.
func (k *console) receipt(c *client.Client, r *chatpb.ReadReceipt) string {
	who := func(id uint64) string {
		if n := k.names.name(id); n != "" {
			return n
		}
		return fmt.Sprintf("user %d", id)
	}
	where := who(r.PeerUserId)
	if r.GroupId != 0 {
		where = fmt.Sprintf("group %d", r.GroupId)
	}
	if r.ReaderUserId == c.UserID() {
		return fmt.Sprintf("you read %s up to #%d (on another device)", where, r.UpToSeq)
	}
	return fmt.Sprintf("%s read your messages up to #%d", who(r.ReaderUserId), r.UpToSeq)
}
