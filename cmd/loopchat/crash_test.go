package main

import (
	"context"
	"fmt"
	"slices"
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

// Acks are durable once a later response comes: a client that acked 50
// messages and then got a Pong never sees them again, even though the
// node was killed with SIGKILL right after the Pong. The one message it
// did not ack comes back, which shows the replay itself works.
func TestAckedMessagesAreNotRedeliveredAfterSIGKILL(t *testing.T) {
	for _, engine := range []string{"gnet", "net"} {
		t.Run(engine, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dir := t.TempDir()
			n := startNode(t, dir, "--engine", engine)
			script(t, n.addr, "/register alice hunter2hunter2", "/register bob hunter2hunter2")
			login := func(addr, user string) *client.Client {
				t.Helper()
				c, err := client.Dial(ctx, client.Options{Addr: addr})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				if _, err := c.Login(ctx, user, "hunter2hunter2"); err != nil {
					t.Fatal(err)
				}
				return c
			}
			bob := login(n.addr, "bob")
			alice := login(n.addr, "alice")
			const acked = 50
			var sent []uint64
			for i := range acked + 1 {
				ok, err := alice.SendToUser(ctx, "bob", fmt.Sprint("m", i))
				if err != nil {
					t.Fatal(err)
				}
				sent = append(sent, ok.MsgId)
			}
			// bob acks each of the first 50 as it arrives, as a client
			// does once it has shown a message, and not the last.
			for got := 0; got < acked+1; {
				select {
				case ev := <-bob.Events():
					if ev.Message == nil {
						t.Fatalf("bob got %+v, want messages", ev)
					}
					if ev.Message.MsgId != sent[got] {
						t.Fatalf("bob's message %d is %d, want %d", got, ev.Message.MsgId, sent[got])
					}
					if got < acked {
						if err := bob.Ack(ev.Message.MsgId); err != nil {
							t.Fatal(err)
						}
					}
					got++
				case <-ctx.Done():
					t.Fatalf("bob got %d of %d messages", got, acked+1)
				}
			}
			// The Pong comes after the acks are durable.
			if _, err := bob.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = n.wait(t, 5*time.Second)

			n2 := startNodeAt(t, n.addr, dir, "--engine", engine)
			bob2 := login(n2.addr, "bob")
			// The inbox replay follows LoginOK and runs before bob's next
			// request, so once this Pong is back every replayed message is
			// already in Events.
			if _, err := bob2.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			var again []uint64
			for done := false; !done; {
				select {
				case ev := <-bob2.Events():
					if ev.Message != nil {
						again = append(again, ev.Message.MsgId)
					}
				default:
					done = true
				}
			}
			if !slices.Equal(again, sent[acked:]) {
				back := 0
				for _, id := range again {
					if slices.Contains(sent[:acked], id) {
						back++
					}
				}
				t.Fatalf("after SIGKILL and restart bob got %d messages, %d of the %d he acked; want only the one he did not ack",
					len(again), back, acked)
			}
		})
	}
}
