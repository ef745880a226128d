package main

import (
	"context"
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/client"
	"github.com/loopchat/loopchat/internal/testproc"
)

// TestClusterNodeKilled runs two real nodes on one real Redis (and on a
// Redis Cluster), kills one
// with SIGKILL, and checks what its users' friends see (a Presence push
// within the node TTL and a heartbeat, and their lists) and that messages
// sent to them wait for their next login, on the other node.
func TestClusterNodeKilled(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		r := testproc.StartRedis(t)
		rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
		defer rdb.Close()
		testClusterNodeKilled(t, r.URL, rdb)
	})
	t.Run("cluster", func(t *testing.T) {
		c := testproc.StartCluster(t)
		rdb := c.Client()
		defer rdb.Close()
		testClusterNodeKilled(t, c.URL, rdb)
	})
}

func testClusterNodeKilled(t *testing.T, url string, rdb redis.UniversalClient) {
	n1 := startNode(t, t.TempDir(), "--redis", url, "--node-id", "n1", "--heartbeat", "200ms")
	n2 := startNode(t, t.TempDir(), "--redis", url, "--node-id", "n2", "--heartbeat", "200ms")

	// Both nodes are in the registry.
	waitNodes := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			var got []string
			for _, id := range want {
				v, err := rdb.Get(context.Background(), "loopchat:node:"+id).Result()
				if err == nil {
					var info struct {
						NodeID string `json:"node_id"`
						Addr   string `json:"addr"`
					}
					if json.Unmarshal([]byte(v), &info) == nil && info.Addr != "" {
						got = append(got, info.NodeID)
					}
				}
			}
			if len(got) == len(want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("registry has %v, want %v", got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitNodes("n1", "n2")

	out := responses(script(t, n1.addr, "/register alice hunter2hunter2", "/register bob hunter2hunter2"))
	expectResp(t, out[1], "register", true)

	// bob stays logged in on n2.
	bob, err := client.Dial(context.Background(), client.Options{Addr: n2.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	if _, err := bob.Login(context.Background(), "bob", "hunter2hunter2"); err != nil {
		t.Fatal(err)
	}

	out = responses(script(t, n1.addr, "/login alice hunter2hunter2", "/friend add bob", "/friends"))
	friends := out[2]["friends"].([]any)
	if !friends[0].(map[string]any)["online"].(bool) {
		t.Fatalf("bob on n2 not online: %v", friends)
	}
	// alice stays on n1, on a device of her own, and watches.
	alice, err := client.Dial(context.Background(), client.Options{Addr: n1.addr, DeviceID: "watcher"})
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	if _, err := alice.Login(context.Background(), "alice", "hunter2hunter2"); err != nil {
		t.Fatal(err)
	}

	if err := n2.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = n2.wait(t, 5*time.Second)
	killedAt := time.Now()
	// Friends are pushed bob offline once a live node has swept the dead
	// one: within the node TTL (3 × 200ms) and a heartbeat of its last
	// heartbeat, plus slack for a loaded machine.
	for {
		var ev client.Event
		select {
		case ev = <-alice.Events():
		case <-time.After(5 * time.Second):
			t.Fatal("no presence push for bob within 5s of his node's death")
		}
		if p := ev.Presence; p != nil {
			if p.Username != "bob" || p.Online || p.LastSeenMs == 0 || time.UnixMilli(p.LastSeenMs).After(killedAt) {
				t.Fatalf("presence push %v; want bob offline, last seen before his node was killed", p)
			}
			break
		}
	}
	if d := time.Since(killedAt); d > 2500*time.Millisecond {
		t.Fatalf("bob shown offline %v after his node was killed; want within the node TTL and a heartbeat (800ms) and some slack", d)
	}
	t.Logf("alice pushed bob offline %v after his node was killed", time.Since(killedAt).Round(time.Millisecond))
	// Within the registry TTL bob shows offline, and n2 leaves the registry.
	for {
		out = responses(script(t, n1.addr, "/login alice hunter2hunter2", "/friends"))
		f := out[1]["friends"].([]any)[0].(map[string]any)
		if f["online"] == false {
			break
		}
		if time.Since(killedAt) > 5*time.Second {
			t.Fatal("bob still online 5s after his node was killed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("bob shown offline %v after his node was killed", time.Since(killedAt).Round(time.Millisecond))
	waitNodes("n1")
	deadline := time.Now().Add(5 * time.Second)
	for rdb.Exists(context.Background(), "loopchat:node:n2").Val() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("killed node still in the registry")
		}
		time.Sleep(50 * time.Millisecond)
	}

	out = responses(script(t, n1.addr, "/login alice hunter2hunter2", "/msg bob are you there?"))
	expectResp(t, out[1], "msg", true)
	if out[1]["online"] != false {
		t.Fatalf("send to bob after his node died: %v", out[1])
	}
	// bob logs in on the surviving node and gets it.
	events := script(t, n1.addr, "/login bob hunter2hunter2", "/wait 500ms")
	var texts []string
	for _, e := range events {
		if e["event"] == "message" {
			texts = append(texts, e["text"].(string))
		}
	}
	if strings.Join(texts, "|") != "are you there?" {
		t.Fatalf("bob's messages on the surviving node = %v", texts)
	}
}

// With --log-format json every line a node writes is one JSON object,
// including what go-redis itself reports when Redis goes away (pool dial
// failures, pub/sub reconnects), so a log shipper never chokes on a line.
func TestJSONLogsStayJSONWhenRedisDies(t *testing.T) {
	r := testproc.StartRedis(t)
	n := startNode(t, t.TempDir(), "--redis", r.URL, "--node-id", "n1", "--heartbeat", "100ms", "--log-format", "json")
	// The port opens before the node has registered in Redis; killing
	// Redis in between fails the start itself, which is not this test.
	waitUntil(t, "the node to be serving", 10*time.Second, func() bool { return strings.Contains(n.log(), `"msg":"serving"`) })
	r.Kill()
	waitUntil(t, "go-redis to report the lost Redis", 10*time.Second, func() bool {
		return strings.Contains(n.log(), `"component":"go-redis"`) || strings.Contains(n.log(), "redis: 20")
	})
	time.Sleep(300 * time.Millisecond) // let a few more lines come
	for _, line := range strings.Split(strings.TrimSpace(n.log()), "\n") {
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Errorf("not a JSON log line: %q", line)
		}
	}
}
