package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/loopchat/loopchat/client"
	"github.com/loopchat/loopchat/internal/testproc"
	"github.com/loopchat/loopchat/loadbalance"
	chatpb "github.com/loopchat/loopchat/proto"
)

// lbCluster is everything `make cluster` runs, on loopback: redis-server,
// loopchat nodes, `loopchat lb` and nginx.
type lbCluster struct {
	t       *testing.T
	redis   *testproc.Redis
	nginx   *testproc.Nginx
	lbAdmin string
	nodes   map[string]*clusterNode // by node id
}

type clusterNode struct {
	*node
	id, data, admin string
}

func startLBCluster(t *testing.T, n int) *lbCluster {
	t.Helper()
	c := &lbCluster{t: t, redis: testproc.StartRedis(t), nodes: map[string]*clusterNode{}}
	c.nginx = testproc.StartNginx(t)
	for i := 1; i <= n; i++ {
		c.addNode(fmt.Sprintf("n%d", i))
	}
	c.lbAdmin = freeAddr(t)
	testproc.Start(t, binary, "lb", "--redis", c.redis.URL, "--upstream-file", c.nginx.Upstream,
		"--nginx-conf", c.nginx.Conf, "--nginx-bin", c.nginx.Bin, "--probe-interval", "200ms",
		"--admin-addr", c.lbAdmin)
	for id := range c.nodes {
		c.waitInService(id, true)
	}
	c.waitRouting()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nginx logs:\n%s", tail(c.nginx.Logs(), 3000))
		}
	})
	return c
}

func (c *lbCluster) nodeArgs(id, admin string) []string {
	return []string{"--redis", c.redis.URL, "--node-id", id, "--heartbeat", "200ms",
		"--proxy-protocol-from", "127.0.0.0/8", "--admin-addr", admin, "--drain-window", "500ms",
		"--log-level", "info"}
}

func (c *lbCluster) addNode(id string) *clusterNode {
	cn := &clusterNode{id: id, data: c.t.TempDir(), admin: freeAddr(c.t)}
	cn.node = startNode(c.t, cn.data, c.nodeArgs(id, cn.admin)...)
	c.nodes[id] = cn
	return cn
}

// restart starts a stopped node again on its address, data and id.
func (c *lbCluster) restart(id string) {
	cn := c.nodes[id]
	cn.node = startNodeAt(c.t, cn.addr, cn.data, c.nodeArgs(id, cn.admin)...)
}

func (c *lbCluster) lbNodes() []struct {
	Addr      string `json:"addr"`
	NodeID    string `json:"node_id"`
	Up        bool   `json:"up"`
	InService bool   `json:"in_service"`
} {
	var out []struct {
		Addr      string `json:"addr"`
		NodeID    string `json:"node_id"`
		Up        bool   `json:"up"`
		InService bool   `json:"in_service"`
	}
	resp, err := http.Get("http://" + c.lbAdmin + "/debug/nodes")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return out
}

// waitRouting waits until a Ping through nginx reaches a node: the reload
// that follows a new upstream file takes nginx a moment.
func (c *lbCluster) waitRouting() {
	c.t.Helper()
	waitUntil(c.t, "nginx routing to a node", 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return loadbalance.Probe(ctx, c.nginx.Addr) == nil
	})
}

// waitInService waits until lb has (or has not) node id in nginx's
// upstream, checking the rendered file too, and returns how long it took.
func (c *lbCluster) waitInService(id string, want bool) time.Duration {
	c.t.Helper()
	start := time.Now()
	addr := c.nodes[id].addr
	for {
		inService := false
		for _, n := range c.lbNodes() {
			if n.Addr == addr && n.InService {
				inService = true
			}
		}
		file, _ := os.ReadFile(c.nginx.Upstream)
		if inService == want && strings.Contains(string(file), "server "+addr+" ") == want {
			return time.Since(start)
		}
		if time.Since(start) > 10*time.Second {
			c.t.Fatalf("node %s in service = %v after 10s, want %v; upstream:\n%s", id, inService, want, file)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// chatClient is an SDK client through nginx, from its own source address.
type chatClient struct {
	*client.Client
	name, bind string
	node       string
	mu         sync.Mutex
	got        map[uint64]int // msg id -> pushes
	reconnects atomic.Int32
}

func (c *lbCluster) connect(name, bind string) *chatClient {
	c.t.Helper()
	ctx := context.Background()
	cl, err := client.Dial(ctx, client.Options{Addr: c.nginx.Addr, LocalAddr: bind, Reconnect: true,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond, RequestTimeout: 3 * time.Second,
		PingInterval: time.Second})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	cc := &chatClient{Client: cl, name: name, bind: bind, got: map[uint64]int{}}
	_, _ = cl.Register(ctx, name, "hunter2hunter2")
	ok, err := cl.Login(ctx, name, "hunter2hunter2")
	if err != nil {
		c.t.Fatalf("login %s: %v", name, err)
	}
	cc.node = ok.NodeId
	go func() {
		for ev := range cl.Events() {
			switch {
			case ev.Message != nil:
				cc.mu.Lock()
				cc.got[ev.Message.MsgId]++
				cc.mu.Unlock()
				_ = cl.Ack(ev.Message.MsgId)
			case ev.Reconnected != nil:
				cc.reconnects.Add(1)
				cc.mu.Lock()
				cc.node = ev.Reconnected.NodeId
				cc.mu.Unlock()
			}
		}
	}()
	return cc
}

func (cc *chatClient) has(id uint64) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.got[id] > 0
}

func (cc *chatClient) currentNode() string {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.node
}

// waitUntil polls every 50 ms rather than testproc.WaitUntil's 20: many
// conditions here dial through nginx, and at 20 ms the nginx tests failed
// with "no live upstreams" (failed dials counting against max_fails).
func waitUntil(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestNginxSpreadsClientsAndNodesSeeTheirAddresses(t *testing.T) {
	c := startLBCluster(t, 3)
	var clients []*chatClient
	nodes := map[string]bool{}
	for i := range 9 {
		cc := c.connect(fmt.Sprintf("user%02d", i), fmt.Sprintf("127.0.0.%d", 11+i))
		clients = append(clients, cc)
		nodes[cc.node] = true
	}
	if len(nodes) < 2 {
		t.Fatalf("all clients landed on %v", nodes)
	}
	// Chat across nodes.
	var a, b *chatClient
	for _, x := range clients[1:] {
		if x.node != clients[0].node {
			a, b = clients[0], x
			break
		}
	}
	ok, err := a.SendToUser(context.Background(), b.name, "across the balancer")
	if err != nil || !ok.Online {
		t.Fatalf("send %s(%s) -> %s(%s): %v %v", a.name, a.node, b.name, b.node, ok, err)
	}
	waitUntil(t, "the message across nodes", 5*time.Second, func() bool { return b.has(ok.MsgId) })

	// Every node sees each client's own source address, not nginx's.
	seen := map[string]string{}
	for _, cn := range c.nodes {
		resp, err := http.Get("http://" + cn.admin + "/debug/conns")
		if err != nil {
			t.Fatal(err)
		}
		var conns []struct {
			Remote string `json:"remote"`
			User   string `json:"user"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&conns)
		resp.Body.Close()
		for _, x := range conns {
			if x.User != "" {
				host, _, _ := net.SplitHostPort(x.Remote)
				seen[x.User] = host
			}
		}
	}
	for _, cc := range clients {
		if seen[cc.name] != cc.bind {
			t.Errorf("%s connected from %s; its node saw %q", cc.name, cc.bind, seen[cc.name])
		}
	}
}

func TestNodeFailuresBehindNginx(t *testing.T) {
	c := startLBCluster(t, 3)
	ctx := context.Background()
	var clients []*chatClient
	for i := range 9 {
		clients = append(clients, c.connect(fmt.Sprintf("member%d", i), fmt.Sprintf("127.0.0.%d", 31+i)))
	}
	sender := c.connect("sender", "127.0.0.30")

	// SIGKILL a node with clients on it.
	victim := ""
	var stranded []*chatClient
	for _, cc := range clients {
		if cc.node != sender.node {
			victim = cc.node
			break
		}
	}
	for _, cc := range clients {
		if cc.node == victim {
			stranded = append(stranded, cc)
		}
	}
	if err := c.nodes[victim].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = c.nodes[victim].wait(t, 5*time.Second)
	// New logins go to the other nodes at once (nginx skips the dead one).
	for i := range 4 {
		cc := c.connect(fmt.Sprintf("newcomer%d", i), "127.0.0.50")
		if cc.node == victim {
			t.Fatalf("a new login landed on the killed node %s", victim)
		}
	}
	// Messages to the stranded clients while they reconnect are kept.
	var sent []uint64
	for _, cc := range stranded {
		ok, err := sender.SendToUser(ctx, cc.name, "while your node was down")
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, ok.MsgId)
	}
	for i, cc := range stranded {
		waitUntil(t, cc.name+" back with the missed message", 15*time.Second, func() bool {
			return cc.reconnects.Load() > 0 && cc.has(sent[i]) && cc.currentNode() != victim
		})
	}
	t.Logf("killed %s: %d clients reconnected elsewhere and got their missed messages", victim, len(stranded))
	c.waitInService(victim, false)

	// SIGSTOP another node: lb takes it out within a few seconds, and
	// puts it back after SIGCONT.
	hung := ""
	for id := range c.nodes {
		if id != victim {
			hung = id
			break
		}
	}
	if err := c.nodes[hung].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	out := c.waitInService(hung, false)
	if err := c.nodes[hung].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	back := c.waitInService(hung, true)
	t.Logf("hung node %s out of nginx after %v, back %v after SIGCONT", hung, out.Round(time.Millisecond), back.Round(time.Millisecond))
	if out > 5*time.Second {
		t.Fatalf("hung node taken out only after %v", out)
	}

	// A new node joins without restarting anything.
	c.addNode("n4")
	joined := c.waitInService("n4", true)
	t.Logf("new node n4 in service after %v", joined.Round(time.Millisecond))
	// nginx applies a reload asynchronously (new workers start, old ones
	// stop accepting), so the first logins after the upstream file changed
	// may still go to the old set.
	landed := false
	for i := 0; i < 40 && !landed; i++ {
		landed = c.connect(fmt.Sprintf("late%d", i), "127.0.0.60").node == "n4"
		if !landed {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !landed {
		t.Fatal("no new login reached the new node within 4s")
	}
}

func TestRollingRestartLosesNothing(t *testing.T) {
	c := startLBCluster(t, 3)
	ctx := context.Background()
	const pairs = 6
	type pair struct{ from, to *chatClient }
	var ps []pair
	for i := range pairs {
		ps = append(ps, pair{
			c.connect(fmt.Sprintf("from%d", i), fmt.Sprintf("127.0.0.%d", 70+i)),
			c.connect(fmt.Sprintf("to%d", i), fmt.Sprintf("127.0.0.%d", 80+i)),
		})
	}
	var sentOK, retries atomic.Int64
	acked := make([][]uint64, pairs)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				req := &chatpb.Send{To: &chatpb.Send_Username{Username: p.to.name},
					Text: fmt.Sprint("m", k), ClientMsgId: fmt.Sprint(i, "-", k)}
				for {
					ok, err := p.from.Send(ctx, req)
					if err == nil {
						sentOK.Add(1)
						acked[i] = append(acked[i], ok.MsgId)
						break
					}
					retries.Add(1) // disconnected or unavailable: same client_msg_id again
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	for _, id := range []string{"n1", "n2", "n3"} {
		n := c.nodes[id]
		if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := n.wait(t, 15*time.Second); err != nil {
			t.Fatalf("%s exited with %v", id, err)
		}
		c.restart(id)
		c.waitInService(id, true)
		t.Logf("restarted %s", id)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	missing := func() int {
		n := 0
		for i, p := range ps {
			for _, id := range acked[i] {
				if !p.to.has(id) {
					n++
				}
			}
		}
		return n
	}
	deadline := time.Now().Add(20 * time.Second)
	for missing() > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	var reconnects int32
	for _, p := range ps {
		reconnects += p.from.reconnects.Load() + p.to.reconnects.Load()
	}
	t.Logf("rolling restart of 3 nodes: %d messages acknowledged, %d sends retried, %d reconnects, %d lost",
		sentOK.Load(), retries.Load(), reconnects, missing())
	if m := missing(); m > 0 {
		t.Fatalf("%d acknowledged messages lost", m)
	}
	if reconnects < pairs {
		t.Fatalf("only %d reconnects: the restarts did not reach the clients", reconnects)
	}
	// Every client is back online.
	for _, p := range ps {
		for _, cc := range []*chatClient{p.from, p.to} {
			waitUntil(t, cc.name+" online", 10*time.Second, func() bool {
				_, err := cc.Ping(ctx)
				return err == nil
			})
		}
	}
}
