package bench_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loopchat/loopchat/bench"
	"github.com/loopchat/loopchat/client"
	"github.com/loopchat/loopchat/internal/testnode"
	"github.com/loopchat/loopchat/internal/testproc"
	"github.com/loopchat/loopchat/server"
)

// A tiny run of every scenario keeps the bench from rotting. It asserts
// correctness — nothing lost, no errors — never speed.

func startServer(t *testing.T) string {
	t.Helper()
	_, addr := testnode.Start(t, server.Options{Loops: 2, RateLimit: 1e9, RateBurst: 1 << 30})
	return addr
}

func tiny(addr string) bench.Config {
	return bench.Config{Addrs: []string{addr}, Conns: 200, Rate: 500, Duration: time.Second,
		GroupSize: 10, Groups: 3, ServerPID: os.Getpid(), Server: "gnet"}
}

func check(t *testing.T, r bench.Result, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %.0f/s p50 %.2fms p99 %.2fms delivered %d", r.Scenario, r.MsgsPerSec, r.P50ms, r.P99ms, r.Delivered)
	if r.Delivered == 0 || r.Lost != 0 || r.Errors != 0 || r.Duplicates != 0 {
		t.Fatalf("%s: delivered %d lost %d errors %d duplicates %d", r.Scenario, r.Delivered, r.Lost, r.Errors, r.Duplicates)
	}
	if r.P50ms <= 0 || r.P99ms < r.P50ms {
		t.Fatalf("%s: percentiles p50 %v p99 %v", r.Scenario, r.P50ms, r.P99ms)
	}
}

func TestTinyScenarios(t *testing.T) {
	ctx := context.Background()
	addr := startServer(t)
	for _, name := range []string{"conns", "login", "chat", "group", "history"} {
		t.Run(name, func(t *testing.T) {
			cfg := tiny(addr)
			cfg.Users = "t" + name
			if name == "conns" {
				cfg.ServerPID = 0 // this process is not only the server
			}
			if name == "history" {
				// 10 conversations of 60 messages: a full latest page and
				// full pages before a seq, seeded in well under a second.
				cfg.Conns, cfg.SeedMessages = 20, 60
			}
			r, err := bench.Scenarios[name](ctx, cfg)
			check(t, r, err)
			if name == "chat" && r.Sent != r.Delivered {
				t.Fatalf("chat sent %d, delivered %d", r.Sent, r.Delivered)
			}
			// Every SendOK and every send was timed: the split of the
			// latency into the sender's side and the generator's own delay.
			if name == "chat" && (r.SendOKP99ms <= 0 || r.LateP99ms <= 0) {
				t.Fatalf("chat reported SendOK p99 %v ms, generator lateness p99 %v ms; want both measured", r.SendOKP99ms, r.LateP99ms)
			}
			// ... and the lateness second by second, beside the latency.
			if name == "chat" && (len(r.Timeline) == 0 || r.Timeline[0].LateP99ms <= 0) {
				t.Fatalf("chat timeline %+v: want the generator's lateness in each second", r.Timeline)
			}
			if name == "group" && r.Delivered != r.Sent*9 {
				t.Fatalf("group: %d sent to 9 others each, %d deliveries", r.Sent, r.Delivered)
			}
			// Every request got a page that passed the checks (a
			// malformed one is an error, above).
			if name == "history" && (r.Scenario != "history" || r.Sent != r.Delivered || r.CPUMicrosPerMsg <= 0) {
				t.Fatalf("history: %d requests, %d good pages, %v µs of CPU per page", r.Sent, r.Delivered, r.CPUMicrosPerMsg)
			}
		})
	}
	// Conversations shorter than a page: every page is the whole rest of
	// its conversation, the other expectation of the page checks.
	t.Run("history-short", func(t *testing.T) {
		cfg := tiny(addr)
		cfg.Users, cfg.Conns, cfg.SeedMessages, cfg.Rate = "thshort", 10, 7, 200
		r, err := bench.History(ctx, cfg)
		check(t, r, err)
		if r.Sent != r.Delivered {
			t.Fatalf("history: %d requests, %d good pages", r.Sent, r.Delivered)
		}
	})
	// A login storm of users with friends: the ring is set up first.
	t.Run("login-friends", func(t *testing.T) {
		cfg := tiny(addr)
		cfg.Users, cfg.Conns, cfg.Friends = "tfriends", 30, 6
		cfg.FriendsSettle = 50 * time.Millisecond
		r, err := bench.Login(ctx, cfg)
		check(t, r, err)
		c, err := client.Dial(ctx, client.Options{Addr: addr})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Login(ctx, "tfriends0", "bench-password"); err != nil {
			t.Fatal(err)
		}
		fl, err := c.ListFriends(ctx)
		if err != nil || len(fl) != 6 {
			t.Fatalf("tfriends0 has %d friends (%v), want 6", len(fl), err)
		}
	})
	// Saturated: closed loop, as fast as the server takes it, nothing lost
	// and at most the window in flight per pair.
	t.Run("chat-saturate", func(t *testing.T) {
		cfg := tiny(addr)
		cfg.Users, cfg.Conns, cfg.Saturate, cfg.Window, cfg.Duration = "tsat", 40, true, 2, 500*time.Millisecond
		cfg.Warmup = 200 * time.Millisecond
		r, err := bench.Chat(ctx, cfg)
		check(t, r, err)
		if r.Window != 2 || r.OfferedRate != 0 || r.Sent != r.Delivered || r.CPUMicrosPerMsg <= 0 || r.GenCPUMicrosPerMsg <= 0 {
			t.Fatalf("saturated chat: %+v", r)
		}
		// Throughput counts what arrived before sending stopped; the
		// window's worth that drained after is in Delivered only.
		if inTime := r.MsgsPerSec * r.Seconds; inTime > float64(r.Delivered)+0.5 || inTime < float64(r.Delivered-20*2)-0.5 {
			t.Fatalf("%.0f/s over %.2fs against %d delivered with 20 pairs × 2 in flight", r.MsgsPerSec, r.Seconds, r.Delivered)
		}
	})
	t.Run("chat-step", func(t *testing.T) {
		cfg := tiny(addr)
		cfg.Users, cfg.Step, cfg.P99Bound, cfg.Rate, cfg.MaxRate, cfg.Duration = "tstep", true, time.Second, 200, 500, 500*time.Millisecond
		cfg.Warmup = 300 * time.Millisecond
		r, err := bench.Chat(ctx, cfg)
		check(t, r, err)
		// The warm-up's messages are not in the result: a step of 0.5s
		// at its rate sends about rate/2.
		if limit := int64(r.OfferedRate*0.5*1.2) + 10; r.Sent > limit {
			t.Fatalf("step at %v/s for 0.5s counted %d sends: the warm-up leaked in", r.OfferedRate, r.Sent)
		}
		if r.OfferedRate < 300 {
			t.Fatalf("stepping stopped at %v/s with a 1s p99 bound", r.OfferedRate)
		}
	})
}

// The scenarios speak WebSocket too, to either engine's --ws-listen:
// connections held, chat open and closed loop, nothing lost.
func TestTinyScenariosOverWebSocket(t *testing.T) {
	ctx := context.Background()
	for _, engine := range []string{server.EngineGnet, server.EngineNet} {
		t.Run(engine, func(t *testing.T) {
			srv, _ := testnode.Start(t, server.Options{Engine: engine, Loops: 2, RateLimit: 1e9, RateBurst: 1 << 30,
				WSListen: "127.0.0.1:0"})
			wsAddr := srv.WSAddr().String()
			for _, name := range []string{"conns", "chat", "chat-saturate"} {
				t.Run(name, func(t *testing.T) {
					cfg := tiny(wsAddr)
					cfg.Transport, cfg.Users, cfg.Conns, cfg.Server = bench.TransportWS, "tws"+name, 60, engine
					cfg.Duration = 500 * time.Millisecond
					if name == "conns" {
						cfg.ServerPID = 0 // this process is not only the server
					}
					if name == "chat-saturate" {
						cfg.Saturate, cfg.Window = true, 2
					}
					r, err := bench.Scenarios[strings.TrimSuffix(name, "-saturate")](ctx, cfg)
					check(t, r, err)
					if name != "conns" && r.Sent != r.Delivered {
						t.Fatalf("%s: sent %d, delivered %d", name, r.Sent, r.Delivered)
					}
				})
			}
		})
	}
	if _, err := bench.Echo(ctx, bench.Config{Addrs: []string{"127.0.0.1:1"}, Transport: bench.TransportWS}); err == nil {
		t.Fatal("echo over WebSocket ran against a TCP-only echo server")
	}
}

func TestTinyEchoAndPlot(t *testing.T) {
	ln := testproc.FreeAddr(t)
	es, err := bench.StartEchoServer(ln, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer es.Stop(context.Background())
	cfg := tiny(ln)
	cfg.Server = "echo"
	r, err := bench.Echo(context.Background(), cfg)
	check(t, r, err)
	r.CPUMicrosPerMsg, r.GenCPUMicrosPerMsg = 10, 30
	merged := bench.Merge([]bench.Result{r, r})
	if merged.Delivered != 2*r.Delivered || merged.P99ms != r.P99ms {
		t.Fatalf("merge of two equal runs: %+v", merged)
	}
	// Both generators sampled the one server: its CPU is counted once over
	// twice the deliveries; each generator's own CPU adds up.
	if merged.CPUMicrosPerMsg != 5 || merged.GenCPUMicrosPerMsg != 30 {
		t.Fatalf("merged CPU per message: server %v (want 5), generator %v (want 30)", merged.CPUMicrosPerMsg, merged.GenCPUMicrosPerMsg)
	}
	sat := tiny(ln)
	sat.Server, sat.Saturate, sat.Duration, sat.Conns = "echo", true, 500*time.Millisecond, 40
	rs, err := bench.Echo(context.Background(), sat)
	check(t, rs, err)
	if rs.Window != 1 || rs.OfferedRate != 0 || rs.Sent != rs.Delivered {
		t.Fatalf("saturated echo: %+v", rs)
	}
	for _, ext := range []string{".png", ".svg"} {
		file := filepath.Join(t.TempDir(), "plot"+ext)
		if err := bench.Plot(file, []bench.Result{r}); err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(file); err != nil || st.Size() < 1000 {
			t.Fatalf("plot %s: %v %v", ext, st, err)
		}
	}
}

// A tiny broadcast run on two nodes sharing a Redis: every connection, on
// either node, gets every broadcast once.
func TestTinyBroadcast(t *testing.T) {
	r := testproc.StartRedis(t)
	var addrs []string
	for i := range 2 {
		_, addr := testnode.Start(t, server.Options{Loops: 2, RateLimit: 1e9, RateBurst: 1 << 30, Redis: r.URL,
			NodeID: fmt.Sprint("n", i), Heartbeat: 200 * time.Millisecond})
		addrs = append(addrs, addr)
	}
	cfg := bench.Config{Addrs: addrs, Conns: 40, Rate: 4, Duration: time.Second, Redis: r.URL, Server: "gnet", Users: "tbcast"}
	res, err := bench.Scenarios["broadcast"](context.Background(), cfg)
	check(t, res, err)
	if res.Sent != 4 || res.Delivered != 160 || res.Reach99ms <= 0 || res.Reach100ms < res.Reach99ms {
		t.Fatalf("broadcast: %d sent, %d delivered, reach 99%% %v ms, 100%% %v ms", res.Sent, res.Delivered, res.Reach99ms, res.Reach100ms)
	}
	if _, err := bench.Scenarios["broadcast"](context.Background(), bench.Config{Addrs: addrs, Conns: 2}); err == nil {
		t.Fatal("broadcast without --redis ran")
	}
}
