package cli

import (
	"slices"
	"strings"
	"sync"

	chatpb "github.com/loopchat/loopchat/proto"
)

// nameSet is the users the interactive mode knows by name: friends (from
// the login, /friends and presence pushes) and anyone seen in a message, a
// history page or the conversation list. It completes names on Tab and
// names the user ids that receipts carry. A nil nameSet (script mode)
// ignores everything: scripts print ids as they always have.
type nameSet struct {
	mu      sync.Mutex
	byID    map[uint64]string
	friends map[string]bool
	others  map[string]bool // seen, not (known to be) friends
}

func newNameSet() *nameSet {
	return &nameSet{byID: map[uint64]string{}, friends: map[string]bool{}, others: map[string]bool{}}
}

// add records a user seen anywhere.
func (n *nameSet) add(id uint64, name string) {
	if n == nil || name == "" {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if id != 0 {
		n.byID[id] = name
	}
	if !n.friends[name] {
		n.others[name] = true
	}
}

// addFriend records a friend (id 0: not known).
func (n *nameSet) addFriend(id uint64, name string) {
	if n == nil || name == "" {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if id != 0 {
		n.byID[id] = name
	}
	n.friends[name] = true
	delete(n.others, name)
}

// removeFriend records that name is no longer a friend: still a name
// seen, completed after the friends.
func (n *nameSet) removeFriend(name string) {
	if n == nil || name == "" {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for f := range n.friends {
		if strings.EqualFold(f, name) { // the server matches names ignoring case
			delete(n.friends, f)
			n.others[f] = true
		}
	}
}

// setFriends replaces the friends with a full list (a login's, or
// /friends'): someone unfriended elsewhere stops completing first.
func (n *nameSet) setFriends(fl []*chatpb.Friend) {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.friends)
	for _, f := range fl {
		n.byID[f.UserId] = f.Username
		n.friends[f.Username] = true
		delete(n.others, f.Username)
	}
}

// name is a user's name, or "" if not known.
func (n *nameSet) name(id uint64) string {
	if n == nil {
		return ""
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.byID[id]
}

// list is every known name, friends first (they are who one writes to
// most), each part sorted.
func (n *nameSet) list() []string {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	friends := make([]string, 0, len(n.friends))
	for f := range n.friends {
		friends = append(friends, f)
	}
	others := make([]string, 0, len(n.others))
	for o := range n.others {
		others = append(others, o)
	}
	slices.Sort(friends)
	slices.Sort(others)
	return append(friends, others...)
}
