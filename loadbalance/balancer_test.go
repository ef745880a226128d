package loadbalance_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/codec"
	"github.com/loopchat/loopchat/internal/testproc"
	"github.com/loopchat/loopchat/loadbalance"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
	"github.com/loopchat/loopchat/server"
)

func startNode(t *testing.T) string {
	t.Helper()
	return startNodeWith(t, server.Options{})
}

func startNodeWith(t *testing.T, o server.Options) string {
	t.Helper()
	o.Listen, o.DataDir, o.Logger = "127.0.0.1:0", t.TempDir(), slog.New(slog.DiscardHandler)
	srv, err := server.New(o)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := srv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return addr.String()
}

func TestProbe(t *testing.T) {
	node := startNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := loadbalance.Probe(ctx, node); err != nil {
		t.Fatalf("probe of a live node: %v", err)
	}
	if err := loadbalance.Probe(ctx, "127.0.0.1:1"); err == nil {
		t.Fatal("probe of a closed port succeeded")
	}
	// A node at --max-conns answers a new connection with an error, so
	// the probe fails and lb stops sending it clients.
	full := startNodeWith(t, server.Options{MaxConns: 1})
	held, err := net.Dial("tcp", full)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	// Its Pong proves it holds the one slot before the probe connects.
	ping, _ := protocol.Encode(&chatpb.Frame{Seq: 9, Body: &chatpb.Frame_Ping{Ping: &chatpb.Ping{}}})
	if _, err := held.Write(ping); err != nil {
		t.Fatal(err)
	}
	_ = held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if p, err := codec.NewReader(held, protocol.ClientMaxFrame).Next(); err != nil {
		t.Fatal(err)
	} else if f, err := protocol.Decode(p); err != nil || f.GetPong() == nil {
		t.Fatalf("the first connection got %v, %v; want a pong", f, err)
	}
	if err := loadbalance.Probe(ctx, full); err == nil || !strings.Contains(err.Error(), "instead of pong") {
		t.Fatalf("probe of a full node: %v, want a failure", err)
	}
}

// A render that nginx -t rejects leaves the last good include in place,
// is counted, and makes the balancer not ready.
func TestBadRenderIsRolledBack(t *testing.T) {
	ng := testproc.StartNginx(t)
	node := startNode(t)
	reg := prometheus.NewRegistry()
	b, err := loadbalance.New(loadbalance.Options{Nodes: []string{node}, UpstreamFile: ng.Upstream,
		NginxConf: ng.Conf, NginxBin: ng.Bin, Interval: 50 * time.Millisecond, Rise: 1,
		ServerParams: "no_such_parameter=1", Logger: slog.New(slog.DiscardHandler), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(ng.Upstream)
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	_ = b.Run(ctx)
	after, _ := os.ReadFile(ng.Upstream)
	if string(after) != string(before) || strings.Contains(string(after), "no_such_parameter") {
		t.Fatalf("include after a rejected render:\n%s", after)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	failures := 0.0
	for _, f := range fams {
		if f.GetName() == "loopchat_lb_reload_errors_total" {
			failures = f.Metric[0].GetCounter().GetValue()
		}
	}
	if failures < 2 {
		t.Fatalf("reload errors counted: %v, want every failed round", failures)
	}
	if err := b.Ready(context.Background()); err == nil {
		t.Fatal("ready after failed renders")
	}
	st := b.States()
	if len(st) != 1 || !st[0].Up || st[0].InService {
		t.Fatalf("states = %+v", st)
	}
}

// With a WebSocket include, lb renders the nodes' registry ws_addr into
// nginx's http {} upstream beside the stream one, and takes a draining
// node out of both; a WebSocket through nginx reaches a node.
func TestWSUpstreamFromRegistry(t *testing.T) {
	r := testproc.StartRedis(t)
	ng := testproc.StartNginxWith(t, testproc.NginxUpstreams{})
	var wsAddrs []string
	var nodes []*server.Server
	for _, id := range []string{"n1", "n2"} {
		srv, err := server.New(server.Options{Listen: "127.0.0.1:0", WSListen: "127.0.0.1:0", DataDir: t.TempDir(),
			Redis: r.URL, NodeID: id, Heartbeat: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
		nodes = append(nodes, srv)
		wsAddrs = append(wsAddrs, srv.WSAddr().String())
	}
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	b, err := loadbalance.New(loadbalance.Options{Redis: rdb, UpstreamFile: ng.Upstream, WSUpstreamFile: ng.WSUpstream,
		NginxConf: ng.Conf, NginxBin: ng.Bin, Interval: 100 * time.Millisecond, Rise: 1, Fall: 1,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = b.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	servers := func(path string) []string {
		data, _ := os.ReadFile(path)
		var out []string
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "server" && !strings.Contains(line, "down;") {
				out = append(out, f[1])
			}
		}
		slices.Sort(out)
		return out
	}
	slices.Sort(wsAddrs)
	testproc.WaitUntil(t, "both nodes' WebSocket addresses in the http {} include", 10*time.Second, func() bool {
		return slices.Equal(servers(ng.WSUpstream), wsAddrs) && len(servers(ng.Upstream)) == 2
	})

	// The include goes live with nginx's reload: a WebSocket through nginx
	// gets in.
	testproc.WaitUntil(t, "a WebSocket through nginx after lb's render", 10*time.Second, func() bool {
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer dcancel()
		c, _, err := websocket.Dial(dctx, "ws://"+ng.WSAddr+"/", &websocket.DialOptions{Subprotocols: []string{server.WSSubprotocol}})
		if err != nil {
			return false
		}
		c.CloseNow()
		return true
	})

	// n2 drains (shutting down): out of both includes.
	go func() { _ = nodes[1].Shutdown(context.Background()) }()
	testproc.WaitUntil(t, "the draining node out of the http {} include", 10*time.Second, func() bool {
		return slices.Equal(servers(ng.WSUpstream), []string{nodes[0].WSAddr().String()}) && len(servers(ng.Upstream)) == 1
	})
	if out, err := ng.Check(); err != nil {
		t.Fatalf("nginx -t after the renders: %v\n%s", err, out)
	}
}

// A restarted lb starts from the include nginx serves: its first rounds,
// before a node has answered --rise probes, neither take the nodes out
// nor reload nginx (that left nginx with no node for a second, and every
// client connecting then was turned away). A node that is gone by then
// still goes out.
func TestRestartKeepsTheUpstream(t *testing.T) {
	r := testproc.StartRedis(t)
	ng := testproc.StartNginxWith(t, testproc.NginxUpstreams{})
	var nodes []*server.Server
	var addrs []string
	for _, id := range []string{"n1", "n2"} {
		srv, err := server.New(server.Options{Listen: "127.0.0.1:0", WSListen: "127.0.0.1:0", DataDir: t.TempDir(),
			Redis: r.URL, NodeID: id, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		addr, err := srv.Start()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
		nodes, addrs = append(nodes, srv), append(addrs, addr.String())
	}
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	servers := func(path string) []string {
		data, _ := os.ReadFile(path)
		var out []string
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "server" && !strings.Contains(line, "down;") {
				out = append(out, f[1])
			}
		}
		slices.Sort(out)
		return out
	}
	// run starts an lb (the defaults but a faster interval; probes may take
	// long on a busy machine, and nodes heartbeat at the default 1 s, so no
	// node goes down or leaves the registry unless it stops) and returns its
	// reload counter and a stop.
	run := func() (reloads func() float64, stop func()) {
		reg := prometheus.NewRegistry()
		b, err := loadbalance.New(loadbalance.Options{Redis: rdb, UpstreamFile: ng.Upstream, WSUpstreamFile: ng.WSUpstream,
			NginxConf: ng.Conf, NginxBin: ng.Bin, Interval: 100 * time.Millisecond, Timeout: 2 * time.Second,
			Logger: slog.New(slog.DiscardHandler), Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = b.Run(ctx); close(done) }()
		reloads = func() float64 {
			fams, _ := reg.Gather()
			for _, f := range fams {
				if f.GetName() == "loopchat_lb_reloads_total" {
					return f.Metric[0].GetCounter().GetValue()
				}
			}
			return -1
		}
		return reloads, func() { cancel(); <-done }
	}

	_, stop := run()
	testproc.WaitUntil(t, "both nodes in both includes", 10*time.Second, func() bool {
		return len(servers(ng.Upstream)) == 2 && len(servers(ng.WSUpstream)) == 2
	})
	stop()
	want, wantWS := servers(ng.Upstream), servers(ng.WSUpstream)

	// lb is killed and started again: over its first rounds (rise 2, fall
	// 3, ten rounds) the includes keep both nodes all along.
	reloads, stop := run()
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		if got, gotWS := servers(ng.Upstream), servers(ng.WSUpstream); !slices.Equal(got, want) || !slices.Equal(gotWS, wantWS) {
			stop()
			t.Fatalf("the restarted lb rendered %v and %v, want %v and %v", got, gotWS, want, wantWS)
		}
	}
	if n := reloads(); n != 0 {
		t.Errorf("the restarted lb reloaded nginx %v times for the same nodes, want 0", n)
	}
	stop()

	// n2 stops while no lb runs; the next lb takes it out.
	gone := addrs[1]
	if err := nodes[1].Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, stop = run()
	defer stop()
	testproc.WaitUntil(t, "the stopped node out of the include", 10*time.Second, func() bool {
		got := servers(ng.Upstream)
		return len(got) == 1 && got[0] != gone && len(servers(ng.WSUpstream)) == 1
	})
}
