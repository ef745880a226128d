package cli

import (
	"context"
	"sync"
	"time"

	"github.com/loopchat/loopchat/client"
	chatpb "github.com/loopchat/loopchat/proto"
)

const (
	// typingEvery is how often the peer is told while the user types
	// (docs/protocol.md, "Typing": every 3 s).
	typingEvery = 3 * time.Second
	// typingShows is how long a received notice lasts: a notice within
	// it of the last one from the same person and place is not printed
	// again, so someone typing for a minute is one line, not twenty.
	typingShows = 5 * time.Second
)

// typist tells the open conversation that the user is typing, at most
// once per typingEvery. Keypresses come on the terminal's reader
// goroutine, which must not wait for the network: the notice is handed to
// a goroutine of its own, and dropped if one is already on its way.
type typist struct {
	mu   sync.Mutex
	last time.Time // when the last notice was handed over

	out chan typingNotice
}

type typingNotice struct {
	c   *client.Client
	req *chatpb.Typing
}

func newTypist() *typist { return &typist{out: make(chan typingNotice, 1)} }

// keypress tells req's conversation, unless it was told within typingEvery.
func (t *typist) keypress(c *client.Client, req *chatpb.Typing) {
	t.mu.Lock()
	if time.Since(t.last) < typingEvery {
		t.mu.Unlock()
		return
	}
	t.last = time.Now()
	t.mu.Unlock()
	select {
	case t.out <- typingNotice{c, req}:
	default:
	}
}

// reset makes the next keypress tell at once: after a message is sent
// (the peer stops showing the notice when it arrives) or when another
// conversation is opened.
func (t *typist) reset() {
	t.mu.Lock()
	t.last = time.Time{}
	t.mu.Unlock()
}

// run sends the notices until done is closed. Failures are dropped: a
// notice is a hint, and the server answers OK even to those it drops.
func (t *typist) run(done <-chan struct{}) {
	for {
		select {
		case n := <-t.out:
			ctx, cancel := context.WithTimeout(context.Background(), typingEvery)
			_ = n.c.Typing(ctx, n.req)
			cancel()
		case <-done:
			return
		}
	}
}

// typingSeen remembers the last notice from each person in each place,
// so a burst of typing prints once.
type typingSeen struct {
	mu   sync.Mutex
	last map[[2]uint64]time.Time // {user, group} -> last notice
}

// show records a notice and says whether to print it: not if the last
// one from there is still showing.
func (s *typingSeen) show(user, group uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil {
		s.last = map[[2]uint64]time.Time{}
	}
	k := [2]uint64{user, group}
	prev, now := s.last[k], time.Now()
	s.last[k] = now
	return now.Sub(prev) >= typingShows
}

// forget ends the notice from user in group (0: 1:1): their message came,
// so their next typing there is news again.
func (s *typingSeen) forget(user, group uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.last, [2]uint64{user, group})
}
