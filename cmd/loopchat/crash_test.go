package main

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/loopchat/loopchat/client"
)

// A node killed with SIGKILL in the middle of traffic loses nothing it
// answered with SendOK: after a restart on the same data directory the
// recipient, who was away, gets every one of them exactly once.
func TestKilledNodeKeepsEveryAnsweredMessage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	// No per-connection request limit: the senders go as fast as they can.
	n := startNode(t, dir, "--rate-limit", "1e9", "--rate-burst", "1000000000")
	// Several senders, so the node batches their writes.
	const senders = 8
	lines := []string{"/register bob hunter2hunter2"}
	for i := range senders {
		lines = append(lines, fmt.Sprintf("/register sender%d hunter2hunter2", i))
	}
	script(t, n.addr, lines...)
	var mu sync.Mutex
	answered := map[uint64]bool{}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var killedAt time.Time
	stoppedEarly := 0 // senders that failed before the kill
	for i := range senders {
		c, err := client.Dial(ctx, client.Options{Addr: n.addr})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Login(ctx, fmt.Sprint("sender", i), "hunter2hunter2"); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				ok, err := c.SendToUser(ctx, "bob", fmt.Sprintf("s%d-%d", i, k))
				if err != nil {
					mu.Lock()
					if killedAt.IsZero() {
						stoppedEarly++
						t.Errorf("send failed before the kill: %v", err)
					}
					mu.Unlock()
					return
				}
				mu.Lock()
				answered[ok.MsgId] = true
				mu.Unlock()
			}
		}()
	}
	time.Sleep(700 * time.Millisecond)
	mu.Lock()
	killedAt = time.Now()
	err := n.cmd.Process.Signal(syscall.SIGKILL)
	mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	_ = n.wait(t, 5*time.Second)
	close(stop)
	wg.Wait()
	if len(answered) == 0 || stoppedEarly > 0 {
		t.Fatalf("%d answered; %d senders had stopped before the kill", len(answered), stoppedEarly)
	}

	n2 := startNodeAt(t, n.addr, dir)
	bob, err := client.Dial(ctx, client.Options{Addr: n2.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	if _, err := bob.Login(ctx, "bob", "hunter2hunter2"); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]int{}
	missing := len(answered)
	timeout := time.After(20 * time.Second)
	for missing > 0 {
		select {
		case ev := <-bob.Events():
			if ev.Message == nil {
				continue
			}
			id := ev.Message.MsgId
			got[id]++
			if answered[id] && got[id] == 1 {
				missing--
			}
			_ = bob.Ack(id)
		case <-timeout:
			t.Fatalf("%d of %d answered messages missing after the restart", missing, len(answered))
		}
	}
	// Anything still in flight arrives within a moment; nothing twice.
	settle := time.After(300 * time.Millisecond)
	for done := false; !done; {
		select {
		case ev := <-bob.Events():
			if ev.Message != nil {
				got[ev.Message.MsgId]++
			}
		case <-settle:
			done = true
		}
	}
	for id, k := range got {
		if k > 1 {
			t.Fatalf("message %d delivered %d times", id, k)
		}
	}
	t.Logf("answered %d, delivered %d after SIGKILL and restart (the rest were in flight, never answered)",
		len(answered), len(got))
}
