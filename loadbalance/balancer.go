package loadbalance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/protocol"
)

// Options configures a Balancer. Zero values mean the documented default.
type Options struct {
	// Redis is the cluster registry's client; nil means static Nodes only.
	Redis redis.UniversalClient
	// Prefix of the registry keys. Empty means "loopchat:".
	Prefix string
	// Nodes are node addresses probed whether or not they are in the registry.
	Nodes []string
	// Interval between probe rounds. Zero means 1s.
	Interval time.Duration
	// Timeout of one probe. Zero means half the interval (at least 100ms).
	Timeout time.Duration
	// Fall is how many missed probes in a row take a node out. Zero means 3.
	Fall int
	// Rise is how many answered probes in a row put it (back) in. Zero means 2.
	Rise int
	// UpstreamFile is the nginx include to render; required.
	UpstreamFile string
	// WSUpstreamFile is a second include, for the http {} block: the
	// WebSocket address (registry ws_addr) of each node in UpstreamFile
	// that has one. Empty means none. Static Nodes have no WebSocket
	// address.
	WSUpstreamFile string
	// ServerParams follow each address in the include. Empty means
	// "max_fails=1 fail_timeout=5s" (nginx's passive check between probes).
	ServerParams string
	// NginxConf is nginx's main configuration, for `nginx -t` and reload.
	// Empty means render the include only (no nginx to drive).
	NginxConf string
	// NginxBin is the nginx executable. Empty means "nginx".
	NginxBin string
	// Logger gets a line for every state change. Nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the balancer's metrics. Nil means none.
	Registerer prometheus.Registerer
}

// NodeState is what the balancer knows of one node.
type NodeState struct {
	Addr      string    `json:"addr"`
	WSAddr    string    `json:"ws_addr,omitempty"`
	NodeID    string    `json:"node_id,omitempty"`
	Static    bool      `json:"static"`
	Up        bool      `json:"up"`
	Draining  bool      `json:"draining"`
	InService bool      `json:"in_service"` // in the rendered upstream
	Successes int       `json:"successes"`  // answered probes in a row
	Failures  int       `json:"failures"`   // missed probes in a row
	LastError string    `json:"last_error,omitempty"`
	Since     time.Time `json:"since"` // of the current up/down state
}

// Balancer keeps nginx's upstream equal to the healthy, non-draining nodes.
type Balancer struct {
	o     Options
	log   *slog.Logger
	nginx nginx
	m     *lbMetrics

	mu         sync.Mutex
	nodes      map[string]*NodeState // by address
	rendered   []string              // the set in the include, nil before the first render
	renderedWS []string              // the WebSocket addresses in WSUpstreamFile
	lastErr    error                 // of the last render, for /readyz
	// resumed: started from a previous lb's includes, whose WebSocket
	// addresses are matched to nodes only by the registry; no render
	// until it has been read once (nginx keeps what it has meanwhile).
	resumed bool
}

// New checks the options; Run starts the work.
func New(o Options) (*Balancer, error) {
	if o.UpstreamFile == "" {
		return nil, errors.New("lb: an upstream file to render is required")
	}
	if o.Redis == nil && len(o.Nodes) == 0 {
		return nil, errors.New("lb: nothing to balance: give a registry (Redis) or static nodes")
	}
	if o.Prefix == "" {
		o.Prefix = protocol.DefaultPrefix
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = probeTimeout(o.Interval)
	}
	if o.Fall <= 0 {
		o.Fall = 3
	}
	if o.Rise <= 0 {
		o.Rise = 2
	}
	if o.ServerParams == "" {
		o.ServerParams = "max_fails=1 fail_timeout=5s"
	}
	if o.NginxBin == "" {
		o.NginxBin = "nginx"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	b := &Balancer{o: o, log: o.Logger, nginx: nginx{bin: o.NginxBin, conf: o.NginxConf},
		nodes: make(map[string]*NodeState), m: newLBMetrics(o.Registerer)}
	for _, a := range o.Nodes {
		b.nodes[a] = &NodeState{Addr: a, Static: true, Since: time.Now()}
	}
	b.resume()
	return b, nil
}

// resume starts from the includes a previous lb left, which nginx serves:
// their nodes count as up and in service, so they go out only after Fall
// missed probes (or when the registry no longer lists them), like nodes
// that failed under a running lb. Starting from nothing instead, the first
// rounds — before any node had answered Rise probes — rendered an upstream
// with no node and reloaded nginx, turning away every client that
// connected in that second, and each restart cost a reload.
func (b *Balancer) resume() {
	set, ok := readUpstream(b.o.UpstreamFile)
	if !ok {
		return
	}
	var wsSet []string
	if b.o.WSUpstreamFile != "" {
		if wsSet, ok = readUpstream(b.o.WSUpstreamFile); !ok {
			return
		}
	}
	var kept []string
	for _, a := range set {
		n, known := b.nodes[a]
		if !known {
			if b.o.Redis == nil {
				continue // no longer in --nodes and no registry to find it in
			}
			n = &NodeState{Addr: a}
			b.nodes[a] = n
		}
		n.Up, n.InService, n.Since = true, true, time.Now()
		kept = append(kept, a)
	}
	slices.Sort(kept)
	slices.Sort(wsSet)
	b.rendered, b.renderedWS = append([]string{}, kept...), wsSet
	b.resumed = b.o.Redis != nil
	b.log.Info("lb resuming from the rendered upstream", "servers", kept, "ws_servers", wsSet)
}

// Run probes and renders every Interval until ctx ends.
func (b *Balancer) Run(ctx context.Context) error {
	b.log.Info("lb starting", "interval", b.o.Interval, "fall", b.o.Fall, "rise", b.o.Rise,
		"upstream_file", b.o.UpstreamFile, "static_nodes", len(b.o.Nodes), "registry", b.o.Redis != nil)
	t := time.NewTicker(b.o.Interval)
	defer t.Stop()
	for {
		b.round(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// round is one discovery, probe and render pass.
func (b *Balancer) round(ctx context.Context) {
	b.discover(ctx)
	b.probeAll(ctx)
	b.apply(ctx)
}

// discover adds nodes that joined the registry, drops ones whose entry
// expired (unless static), and notes who is draining.
func (b *Balancer) discover(ctx context.Context) {
	if b.o.Redis == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	infos, err := ListNodes(rctx, b.o.Redis, b.o.Prefix)
	cancel()
	if err != nil {
		// Keep what we know: the probes still tell who is alive.
		b.log.Warn("registry unreadable; keeping the known nodes", "err", err)
		return
	}
	seen := make(map[string]bool, len(infos))
	b.mu.Lock()
	defer b.mu.Unlock()
	b.resumed = false
	for _, info := range infos {
		seen[info.Addr] = true
		n, ok := b.nodes[info.Addr]
		if !ok {
			n = &NodeState{Addr: info.Addr, Since: time.Now()}
			b.nodes[info.Addr] = n
			b.log.Info("node discovered", "node", info.NodeID, "addr", info.Addr)
		}
		n.NodeID = info.NodeID
		if n.WSAddr != info.WSAddr && info.WSAddr != "" {
			b.log.Info("node WebSocket address", "node", info.NodeID, "addr", info.Addr, "ws_addr", info.WSAddr)
		}
		n.WSAddr = info.WSAddr
		if n.Draining != info.Draining {
			b.log.Info("node draining changed", "node", info.NodeID, "addr", info.Addr, "draining", info.Draining)
		}
		n.Draining = info.Draining
	}
	for addr, n := range b.nodes {
		if !seen[addr] && !n.Static {
			b.log.Info("node left the registry", "node", n.NodeID, "addr", addr)
			delete(b.nodes, addr)
		}
	}
}

func (b *Balancer) probeAll(ctx context.Context) {
	b.mu.Lock()
	addrs := make([]string, 0, len(b.nodes))
	for a := range b.nodes {
		addrs = append(addrs, a)
	}
	b.mu.Unlock()
	results := make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
			defer cancel()
			start := time.Now()
			results[i] = Probe(pctx, a)
			b.m.probe.Observe(time.Since(start).Seconds())
		}()
	}
	wg.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, a := range addrs {
		n, ok := b.nodes[a]
		if !ok {
			continue
		}
		if err := results[i]; err != nil {
			n.Successes, n.Failures, n.LastError = 0, n.Failures+1, err.Error()
			if n.Up && n.Failures >= b.o.Fall {
				n.Up, n.Since = false, time.Now()
				b.log.Warn("node down", "node", n.NodeID, "addr", a, "missed_probes", n.Failures, "err", err)
			}
		} else {
			n.Failures, n.Successes, n.LastError = 0, n.Successes+1, ""
			if !n.Up && n.Successes >= b.o.Rise {
				n.Up, n.Since = true, time.Now()
				b.log.Info("node up", "node", n.NodeID, "addr", a, "answered_probes", n.Successes)
			}
		}
	}
}

// apply renders the include when the set in rotation changed (or the last
// attempt failed), checks it with nginx -t and reloads nginx.
func (b *Balancer) apply(ctx context.Context) {
	b.mu.Lock()
	var set, wsSet []string
	for a, n := range b.nodes {
		if n.Up && !n.Draining {
			set = append(set, a)
			if n.WSAddr != "" {
				wsSet = append(wsSet, n.WSAddr)
			}
		}
	}
	slices.Sort(set)
	slices.Sort(wsSet)
	unchanged := b.rendered != nil && slices.Equal(set, b.rendered) && slices.Equal(wsSet, b.renderedWS) && b.lastErr == nil
	unchanged = unchanged || b.resumed
	b.updateGauges()
	b.mu.Unlock()
	if unchanged {
		return
	}
	err := b.render(ctx, set, wsSet)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lastErr = err
	if err != nil {
		b.m.reloadErrors.Inc()
		b.log.Error("upstream not updated", "err", err)
		return
	}
	b.rendered, b.renderedWS = set, wsSet
	if set == nil {
		b.rendered = []string{}
	}
	for a, n := range b.nodes {
		n.InService = slices.Contains(set, a)
	}
	b.updateGauges()
	b.log.Info("upstream updated", "servers", set, "ws_servers", wsSet)
}

// render writes the includes, then checks and reloads nginx once.
func (b *Balancer) render(ctx context.Context, set, wsSet []string) error {
	now := time.Now()
	files := []struct {
		path       string
		data, prev []byte
	}{{path: b.o.UpstreamFile, data: renderUpstream(set, b.o.ServerParams, now)}}
	if b.o.WSUpstreamFile != "" {
		files = append(files, files[0])
		files[1].path, files[1].data = b.o.WSUpstreamFile, renderUpstream(wsSet, b.o.ServerParams, now)
	}
	// Put the last good includes back when a step fails, so a later reload
	// (by anyone) does not pick up a broken or half-made pair.
	rollback := func() {
		for _, f := range files {
			if f.prev != nil {
				_, _ = writeAtomic(f.path, f.prev)
			}
		}
	}
	for i := range files {
		prev, err := writeAtomic(files[i].path, files[i].data)
		if err != nil {
			rollback()
			return fmt.Errorf("write %s: %w", files[i].path, err)
		}
		files[i].prev = prev
	}
	if b.o.NginxConf == "" {
		return nil
	}
	if err := b.nginx.test(ctx); err != nil {
		rollback()
		return err
	}
	if err := b.nginx.reload(ctx); err != nil {
		return err
	}
	b.m.reloads.Inc()
	return nil
}

// updateGauges mirrors the node states into metrics; b.mu is held.
func (b *Balancer) updateGauges() {
	b.m.nodeUp.Reset()
	inService := 0
	for a, n := range b.nodes {
		up, serving := 0.0, 0.0
		if n.Up {
			up = 1
		}
		if n.InService {
			serving, inService = 1, inService+1
		}
		b.m.nodeUp.WithLabelValues(a, n.NodeID, "up").Set(up)
		b.m.nodeUp.WithLabelValues(a, n.NodeID, "in_service").Set(serving)
		draining := 0.0
		if n.Draining {
			draining = 1
		}
		b.m.nodeUp.WithLabelValues(a, n.NodeID, "draining").Set(draining)
	}
	b.m.inService.Set(float64(inService))
}

// States is a snapshot of every known node, by address.
func (b *Balancer) States() []NodeState {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]NodeState, 0, len(b.nodes))
	for _, n := range b.nodes {
		out = append(out, *n)
	}
	slices.SortFunc(out, func(x, y NodeState) int {
		switch {
		case x.Addr < y.Addr:
			return -1
		case x.Addr > y.Addr:
			return 1
		}
		return 0
	})
	return out
}

// Ready reports whether nginx has at least one node and the last render
// worked.
func (b *Balancer) Ready(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.rendered == nil:
		return errors.New("no upstream rendered yet")
	case b.lastErr != nil:
		return b.lastErr
	case len(b.rendered) == 0:
		return errors.New("no healthy node")
	}
	return nil
}

type lbMetrics struct {
	nodeUp       *prometheus.GaugeVec
	inService    prometheus.Gauge
	reloads      prometheus.Counter
	reloadErrors prometheus.Counter
	probe        prometheus.Histogram
}

func newLBMetrics(reg prometheus.Registerer) *lbMetrics {
	m := &lbMetrics{
		nodeUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loopchat_lb_node_state", Help: "1 when the node is in the state (up, in_service, draining), else 0."},
			[]string{"addr", "node", "state"}),
		inService: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "loopchat_lb_upstream_servers", Help: "Nodes in the rendered nginx upstream."}),
		reloads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_lb_reloads_total", Help: "Successful nginx reloads after an upstream change."}),
		reloadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_lb_reload_errors_total", Help: "Upstream renders that failed (write, nginx -t, or reload)."}),
		probe: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "loopchat_lb_probe_seconds", Help: "Protocol Ping probe duration.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14)}),
	}
	if reg != nil {
		reg.MustRegister(m.nodeUp, m.inService, m.reloads, m.reloadErrors, m.probe)
	}
	return m
}
