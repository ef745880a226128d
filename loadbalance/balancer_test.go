package loadbalance_test

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/loopchat/loopchat/internal/testproc"
	"github.com/loopchat/loopchat/loadbalance"
	"github.com/loopchat/loopchat/server"
)

func startNode(t *testing.T) string {
	t.Helper()
	srv, err := server.New(server.Options{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
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
