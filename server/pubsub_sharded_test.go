package server

import (
	"context"
	"testing"
	"time"
)

// A broker closed while it subscribes its channels again, after Redis
// dropped its connections, must close: a connection placed after Close
// had listed the ones to close was never closed, and Close waited on its
// reader for ever (seen once as a 15-minute hang of the test suite). The
// race is timing-bound, so each round closes at a slightly later moment.
func TestShardedSubsCloseWhileResubscribing(t *testing.T) {
	rb := onCluster(t)
	ctx := context.Background()
	for round := range 12 {
		rec := newRecorder()
		b := NewRedisBroker(RedisBrokerConfig{Client: rb.client, Prefix: rb.prefix, Logger: testLogger()}, rec.handle)
		for uid := uint64(1); uid <= 30; uid++ {
			if err := b.Subscribe(ctx, uid); err != nil {
				t.Fatal(err)
			}
		}
		rb.killPubSub(t)
		time.Sleep(time.Duration(round) * 2 * time.Millisecond)
		closed := make(chan struct{})
		go func() {
			_ = b.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(15 * time.Second):
			t.Fatalf("round %d: Close still waiting after 15 s", round)
		}
	}
}
