package server

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
)

// heldHistory holds the first History call until release is closed, so
// the session that made it stays busy.
type heldHistory struct {
	Store
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (s *heldHistory) History(ctx context.Context, q HistoryQuery) (HistoryPage, error) {
	s.once.Do(func() {
		close(s.entered)
		<-s.release
	})
	return s.Store.History(ctx, q)
}

// Notices that a session's live pushes may have been missed, come while it
// is busy, replay its inbox once, not once each. A Redis Cluster failover
// subscribes the node's channels again in several batches, one notice for
// every local session each, and a fault run saw a device get the same
// message it had not acked yet (its ack queued behind the replays) up to
// nine times within 70 ms.
func TestQueuedResyncsReplayOnce(t *testing.T) {
	r := testproc.StartRedis(t)
	held := &heldHistory{entered: make(chan struct{}), release: make(chan struct{})}
	n := clusterNode(t, r, "node-1", EngineGnet, func(s *Server) { held.Store = s.store; s.store = held })
	bob, _ := n.user(t, "bob")
	alice, ok := n.user(t, "alice")
	expectOK(t, bob.do(sendTo("alice", "not acked yet")))
	m := alice.nextMessage()

	alice.sendFrame(historyReq(&chatpb.History{PeerUsername: "bob"}))
	select {
	case <-held.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the History request never reached the store")
	}
	for range 3 {
		n.onEvent(ok.UserId, Event{Resync: true}) // what the broker does for each batch
	}
	close(held.release)

	pushed, answered := 0, false
	for {
		f, err := alice.tryRead(time.Second)
		if err != nil {
			break
		}
		if f.GetHistoryPage() != nil {
			answered = true
		}
		if got := f.GetMessage(); got != nil && got.MsgId == m.MsgId {
			pushed++
		}
	}
	if !answered {
		t.Fatal("no answer to the History request")
	}
	if pushed != 1 {
		t.Fatalf("the unacked message was replayed %d times for three notices queued together, want once", pushed)
	}
}
