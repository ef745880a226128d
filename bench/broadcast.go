package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// Broadcast holds Conns logged-in connections, spread over the addresses,
// and publishes a broadcast Rate times a second (1 by default) for
// Duration: one PUBLISH each to the cluster's broadcast channel (Redis at
// cfg.Redis), which every node pushes to all its sessions, encoded once.
// Each delivery's latency runs from just before the PUBLISH; Reach99ms and
// Reach100ms are the slowest broadcast's time until 99% and until all of
// the connections had it. CPU per delivered message is ServerPID's, one
// node's share. The trigger is Redis rather than a node's API so the
// scenario runs against any cluster, and so the publish costs no node
// anything.
func Broadcast(ctx context.Context, cfg Config) (Result, error) {
	cfg.defaults()
	res := Result{Server: cfg.Server, Scenario: "broadcast", Conns: cfg.Conns, OfferedRate: cfg.Rate}
	if cfg.Redis == "" {
		return res, errors.New("broadcast: needs the cluster's Redis (--redis) to publish to")
	}
	ropts, err := redis.ParseURL(cfg.Redis)
	if err != nil {
		return res, fmt.Errorf("broadcast: --redis: %w", err)
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return res, fmt.Errorf("broadcast: redis: %w", err)
	}
	toks, _, err := tokens(ctx, &cfg, cfg.Conns)
	if err != nil {
		return res, err
	}
	conns, _, err := connectAll(ctx, &cfg, toks, nil)
	if err != nil {
		return res, err
	}
	defer closeAll(conns)

	rate := cfg.Rate
	if rate <= 0 {
		rate = 1
	}
	count := max(1, int(rate*cfg.Duration.Seconds()))
	rec := newRecorder()
	var mu sync.Mutex
	lats := make([][]time.Duration, count) // by broadcast: each connection's latency
	seen := make([]map[int]bool, count)    // by broadcast: connections that had it
	for k := range seen {
		seen[k] = make(map[int]bool, cfg.Conns)
	}
	var deliveries, dups atomic.Int64
	for i, c := range conns {
		c.OnPush(func(f *chatpb.Frame) {
			m := f.GetMessage()
			if m == nil {
				return
			}
			_, _, k, due, ok := parseText(m.Text)
			if !ok || k < 0 || k >= count {
				return
			}
			lat := time.Since(due)
			mu.Lock()
			first := !seen[k][i]
			if first {
				seen[k][i] = true
				lats[k] = append(lats[k], lat)
			}
			mu.Unlock()
			if !first {
				dups.Add(1)
				return
			}
			rec.record(lat)
			deliveries.Add(1)
		})
	}
	channel := protocol.BroadcastChannel(cfg.RedisPrefix)
	collectBetweenPhases()
	cpu := startCPU(cfg.cpuPIDs()...)
	stop := make(chan struct{})
	go progress(&cfg, "broadcast", stop, func() string {
		return fmt.Sprintf("broadcasts %d deliveries %d", count, deliveries.Load())
	})
	var errs int64
	start := time.Now()
	for k := range count {
		time.Sleep(time.Until(start.Add(time.Duration(float64(k) / rate * float64(time.Second)))))
		due := time.Now()
		payload, _ := json.Marshal(protocol.ChannelEvent{Type: protocol.EventMessage, FromUsername: "bench",
			Text: messageText(0, 0, k, due, cfg.TextSize)})
		if err := rdb.Publish(ctx, channel, payload).Err(); err != nil {
			errs++
		}
	}
	took := time.Since(start)
	want := int64(count) * int64(cfg.Conns)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && deliveries.Load() < want-int64(errs)*int64(cfg.Conns) {
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	mu.Lock()
	// The slowest broadcast's; none (0) when some broadcast never got
	// that far, which Lost then shows.
	need99 := int(math.Ceil(0.99 * float64(cfg.Conns)))
	reached99, reachedAll := true, true
	for _, l := range lats {
		slices.Sort(l)
		if len(l) >= need99 {
			res.Reach99ms = max(res.Reach99ms, ms(l[need99-1]))
		} else {
			reached99 = false
		}
		if len(l) == cfg.Conns {
			res.Reach100ms = max(res.Reach100ms, ms(l[len(l)-1]))
		} else {
			reachedAll = false
		}
	}
	mu.Unlock()
	if !reached99 {
		res.Reach99ms = 0
	}
	if !reachedAll {
		res.Reach100ms = 0
	}
	res.Sent, res.Delivered, res.Duplicates, res.Errors = int64(count), deliveries.Load(), dups.Load(), errs
	res.Lost = max(0, want-int64(errs)*int64(cfg.Conns)-res.Delivered)
	res.Seconds = took.Seconds()
	res.MsgsPerSec = float64(res.Delivered) / max(took.Seconds(), 1/rate)
	rec.fill(&res)
	cpu.fill(&res)
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
