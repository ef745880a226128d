package loadbalance_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
