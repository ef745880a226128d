package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loopchat/loopchat/client"
	"github.com/loopchat/loopchat/internal/testproc"
)

// flood opens n raw connections to addr and reports how many were told
// the server is full (an Error frame, then close) and how many stayed open.
func flood(t *testing.T, addr string, n int) (full, open int, conns []net.Conn) {
	t.Helper()
	for range n {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			continue // the accept queue overflowed: refused by the kernel
		}
		conns = append(conns, c)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	// Read all at once: a connection still open holds its reader until the
	// deadline, and a read after a passed deadline does not look at the data.
	var mu sync.Mutex
	var wg sync.WaitGroup
	deadline := time.Now().Add(2 * time.Second)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(deadline)
			buf := make([]byte, 256)
			k, err := c.Read(buf)
			var ne net.Error
			mu.Lock()
			defer mu.Unlock()
			switch {
			case k > 0 && strings.Contains(string(buf[:k]), "connection limit"):
				full++
			case errors.As(err, &ne) && ne.Timeout():
				open++ // nothing to read: accepted, waiting for a login
			}
		}()
	}
	wg.Wait()
	return full, open, conns
}

// A node at its descriptor limit (ulimit -n) keeps serving: connections
// past what it can hold are told so and closed, the clients it has keep
// chatting, and once the flood is gone it takes new ones again.
func TestNodeAtItsDescriptorLimitKeepsServing(t *testing.T) {
	prlimit := testproc.Need(t, "prlimit")
	for _, engine := range []string{"gnet", "net"} {
		t.Run(engine, func(t *testing.T) {
			const nofile = 1000 // the node caps itself at 1000 less its reserve
			n := launchNode(t, []string{prlimit, fmt.Sprintf("--nofile=%d:%d", nofile, nofile), "--"},
				freeAddr(t), t.TempDir(), "--engine", engine)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			script(t, n.addr, "/register alice hunter2hunter2", "/register bob hunter2hunter2")
			alice, err := client.Dial(ctx, client.Options{Addr: n.addr})
			if err != nil {
				t.Fatal(err)
			}
			defer alice.Close()
			if _, err := alice.Login(ctx, "alice", "hunter2hunter2"); err != nil {
				t.Fatal(err)
			}

			full, open, conns := flood(t, n.addr, 2*nofile)
			t.Logf("%d connections: %d told the node is full, %d held", len(conns), full, open)
			// The node holds alice and the flood's first connections, and
			// keeps at least its accept queue (511) of descriptors free.
			if full == 0 || open == 0 || open+1 > nofile-511 {
				t.Fatalf("flood of %d: %d told full, %d held; want some of each, at most %d held", len(conns), full, open, nofile-511-1)
			}
			if _, err := alice.SendToUser(ctx, "bob", "during the flood"); err != nil {
				t.Fatalf("a client from before the flood cannot send: %v", err)
			}
			for _, c := range conns {
				c.Close()
			}
			bob, err := client.Dial(ctx, client.Options{Addr: n.addr})
			if err != nil {
				t.Fatal(err)
			}
			defer bob.Close()
			if _, err := bob.Login(ctx, "bob", "hunter2hunter2"); err != nil {
				t.Fatalf("no login after the flood: %v", err)
			}
			for got := false; !got; {
				select {
				case ev := <-bob.Events():
					if m := ev.Message; m != nil {
						if m.Text != "during the flood" {
							t.Fatalf("bob got %q", m.Text)
						}
						got = true
					}
				case <-ctx.Done():
					t.Fatal("bob never got the message sent during the flood")
				}
			}
			if strings.Contains(n.log(), "stopped on its own") {
				t.Fatalf("the engine stopped:\n%s", tail(n.log(), 2000))
			}
		})
	}
}

// When the descriptors run out anyway (here: --max-conns set above the
// limit), gnet's acceptor gives up and closes everything; the node must
// then exit non-zero for its supervisor, not live on deaf.
func TestNodeWhoseEngineStopsExits(t *testing.T) {
	prlimit := testproc.Need(t, "prlimit")
	n := launchNode(t, []string{prlimit, "--nofile=300:300", "--"}, freeAddr(t), t.TempDir(),
		"--engine", "gnet", "--max-conns", "100000", "--max-anonymous-per-address", "-1")
	flood(t, n.addr, 600)
	err := n.wait(t, 20*time.Second)
	if err == nil {
		t.Fatalf("the node exited 0 after its engine stopped:\n%s", tail(n.log(), 2000))
	}
	if !strings.Contains(n.log(), "stopped on its own") {
		t.Fatalf("exit (%v) without saying why:\n%s", err, tail(n.log(), 2000))
	}
}
