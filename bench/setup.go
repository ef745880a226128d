package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// Config is what every scenario takes. Zero values mean the default.
type Config struct {
	// Addrs are the servers (or nginx) to load, used round-robin: their
	// WebSocket listeners (--ws-listen) with TransportWS.
	Addrs []string
	// Transport is what the connections speak: TransportTCP (length-
	// prefixed frames) or TransportWS (one masked binary WebSocket message
	// per frame, after an upgrade offering loopchat.v1). Empty means TCP.
	Transport string
	// Conns is the number of connections. Zero means 100.
	Conns int
	// Pairs is the number of sender->receiver pairs (chat, echo senders),
	// or of 1:1 conversations (history). Zero means Conns/2 (all
	// connections busy).
	Pairs int
	// Rate is the total offered rate per second (messages, logins); zero
	// means as fast as the server allows (login) or 1000/s (chat, echo).
	Rate float64
	// Step makes chat and echo search for the highest rate whose p99 stays
	// under P99Bound: start at Rate, multiply by 1.5 per step.
	Step bool
	// MaxRate stops Step at this rate. Zero means no limit.
	MaxRate float64
	// Refine is how many times Step halves the gap between the last rate
	// that held and the first that failed, after that failure. Zero means
	// none.
	Refine int
	// Saturate runs chat and echo closed loop instead: each sender keeps
	// Window messages in flight and sends the next as soon as one is done
	// (for chat, when it has both its SendOK and its delivery), so the
	// server gets all it can take whatever its capacity on the day, and
	// the generator holds at most Pairs×Window messages. Rate is ignored;
	// MsgsPerSec is what was delivered within the measured time, and
	// latency (from each send) is reported but decides nothing. Not with
	// Step.
	Saturate bool
	// Window is what each sender keeps in flight with Saturate. Zero
	// means 1: one message at a time per sender, as a person typing sends,
	// so the server reads about one frame per read as at lower rates, and
	// many pairs (not deep pipelines) fill it.
	Window int
	// P99Bound for Step. Zero means 10ms.
	P99Bound time.Duration
	// Duration of a measurement (of each step). Zero means 5s.
	Duration time.Duration
	// Warmup runs the first rate this long, unmeasured, before the
	// measured phases of chat and echo, so a server's first second after
	// start (lazily built state, a heap still growing) does not decide a
	// step. Zero means no warm-up.
	Warmup time.Duration
	// GroupSize is the member count for the group scenario. Zero means 10.
	GroupSize int
	// Groups is the number of groups. Zero means Conns/GroupSize.
	Groups int
	// TextSize is the message size in bytes. Zero means 64.
	TextSize int
	// SeedMessages is how many messages the history scenario sends into
	// each conversation before it reads pages: 60 by default, so the
	// latest 50-message page is full and a page before a seq can be too.
	// Seeding is not measured.
	SeedMessages int
	// Friends makes the login scenario befriend each user with this many
	// others before the storm (not measured): user i with users i+1 ..
	// i+Friends/2, wrapping around, so every user has Friends friends
	// (fewer when Conns is smaller). Zero means none.
	Friends int
	// FriendsSettle is how long the login scenario waits after befriending
	// its users (each logged in and out again for it) before the storm: a
	// server may still be working through those logouts (friends are told
	// of a user going offline only after a grace of a few seconds), and that
	// work must not land in the measured storm. Zero means 6 s.
	FriendsSettle time.Duration
	// Redis is the cluster's Redis URL, to which the broadcast scenario
	// publishes its broadcasts; RedisPrefix its key and channel prefix
	// (empty: "loopchat:").
	Redis       string
	RedisPrefix string
	// ServerPID, when set, is sampled for RSS and CPU.
	ServerPID int
	// CPUPIDs are more processes whose CPU counts as the server's (in
	// CPUMicrosPerMsg): a cluster's other nodes and its Redis servers.
	CPUPIDs []int
	// ServerAdmin, when set, is the server's --admin-addr, which conns
	// asks for the memory its Go runtime holds live (Result.LiveBytesPerConn).
	ServerAdmin string
	// Server names the target in results ("gnet", "net", "echo", ...).
	Server string
	// Users prefixes user names, so runs do not collide. Empty means "b".
	Users string
	// Password of the bench users. Empty means a fixed one.
	Password string
	// SourceOffset shifts source addresses (one generator process each).
	SourceOffset int
	// Progress, when set, gets a live status line every second.
	Progress io.Writer
}

func (c *Config) defaults() {
	if c.Transport == "" {
		c.Transport = TransportTCP
	}
	if c.Conns <= 0 {
		c.Conns = 100
	}
	if c.Pairs <= 0 || 2*c.Pairs > c.Conns {
		c.Pairs = c.Conns / 2
	}
	if c.Window <= 0 {
		c.Window = 1
	}
	if c.P99Bound <= 0 {
		c.P99Bound = 10 * time.Millisecond
	}
	if c.Duration <= 0 {
		c.Duration = 5 * time.Second
	}
	if c.GroupSize <= 1 {
		c.GroupSize = 10
	}
	if c.Groups <= 0 {
		c.Groups = max(1, c.Conns/c.GroupSize)
	}
	if c.RedisPrefix == "" {
		c.RedisPrefix = protocol.DefaultPrefix
	}
	if c.TextSize <= 0 {
		c.TextSize = 64
	}
	if c.SeedMessages <= 0 {
		c.SeedMessages = 60
	}
	if c.Users == "" {
		c.Users = "b"
	}
	if c.Password == "" {
		c.Password = "bench-password"
	}
	if c.Server == "" {
		c.Server = "server"
	}
}

func (c *Config) addr(i int) string { return c.Addrs[i%len(c.Addrs)] }
func (c *Config) user(i int) string { return fmt.Sprintf("%s%d", c.Users, i) }

// setupParallel bounds concurrent setup work (registrations hash passwords).
const setupParallel = 64

// tokens registers users [0,n) (a user that exists already is fine) and
// logs each in once with its password to get a token; the measured phases
// then log in with tokens, as reconnecting clients do.
func tokens(ctx context.Context, cfg *Config, n int) ([]string, []uint64, error) {
	toks := make([]string, n)
	ids := make([]uint64, n)
	err := eachUser(ctx, cfg, n, func(ctx context.Context, c *Conn, i int) error {
		reg := &chatpb.Frame{Body: &chatpb.Frame_Register{Register: &chatpb.Register{Username: cfg.user(i), Password: cfg.Password}}}
		if _, err := c.Call(ctx, reg); err != nil && !protocol.HasCode(err, chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS) {
			return fmt.Errorf("register %s: %w", cfg.user(i), err)
		}
		login := &chatpb.Frame{Body: &chatpb.Frame_Login{Login: &chatpb.Login{Username: cfg.user(i), Password: cfg.Password}}}
		resp, err := c.Call(ctx, login)
		if err != nil {
			return fmt.Errorf("login %s: %w", cfg.user(i), err)
		}
		toks[i], ids[i] = resp.GetLoginOk().Token, resp.GetLoginOk().UserId
		_, err = c.Call(ctx, &chatpb.Frame{Body: &chatpb.Frame_Logout{Logout: &chatpb.Logout{}}})
		return err
	})
	return toks, ids, err
}

// eachUser runs fn for users [0,n), setupParallel at a time, each worker
// on one connection of its own (spread over cfg's addresses) that fn
// leaves logged out for the next user.
func eachUser(ctx context.Context, cfg *Config, n int, fn func(ctx context.Context, c *Conn, i int) error) error {
	var next atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	for w := range setupParallel {
		g.Go(func() error {
			c, err := Dial(ctx, cfg.Transport, cfg.addr(w), netip.Addr{})
			if err != nil {
				return err
			}
			defer c.Close()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return nil
				}
				if err := fn(ctx, c, i); err != nil {
					return err
				}
			}
		})
	}
	return g.Wait()
}

// befriend makes each of the n users friends with the next half of
// cfg.Friends users (wrapping), logging each in with its token and out
// again. A friendship that exists already is fine.
func befriend(ctx context.Context, cfg *Config, toks []string) error {
	n := len(toks)
	half := min(cfg.Friends/2, (n-1)/2)
	if half <= 0 {
		return nil
	}
	err := eachUser(ctx, cfg, n, func(ctx context.Context, c *Conn, i int) error {
		login := &chatpb.Frame{Body: &chatpb.Frame_Login{Login: &chatpb.Login{Token: toks[i]}}}
		if _, err := c.Call(ctx, login); err != nil {
			return fmt.Errorf("login %s: %w", cfg.user(i), err)
		}
		for d := 1; d <= half; d++ {
			add := &chatpb.Frame{Body: &chatpb.Frame_AddFriend{AddFriend: &chatpb.AddFriend{Username: cfg.user((i + d) % n)}}}
			if _, err := c.Call(ctx, add); err != nil && !protocol.HasCode(err, chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS) {
				return fmt.Errorf("%s befriends %s: %w", cfg.user(i), cfg.user((i+d)%n), err)
			}
		}
		_, err := c.Call(ctx, &chatpb.Frame{Body: &chatpb.Frame_Logout{Logout: &chatpb.Logout{}}})
		return err
	})
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(cmp.Or(cfg.FriendsSettle, 6*time.Second)):
	}
	return nil
}

// connectAll opens n connections (from distinct source addresses) and
// logs each in with its token, at most `parallel` at once. It returns
// the connections and how long connecting and logging in took.
func connectAll(ctx context.Context, cfg *Config, toks []string, onLogin func(i int, d time.Duration)) ([]*Conn, time.Duration, error) {
	conns := make([]*Conn, len(toks))
	var next atomic.Int64
	start := time.Now()
	g, ctx := errgroup.WithContext(ctx)
	for range min(256, len(toks)) {
		g.Go(func() error {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(toks) {
					return nil
				}
				t0 := time.Now()
				c, err := DialLogin(ctx, cfg.Transport, cfg.addr(i), SourceIP(cfg.SourceOffset+i), toks[i])
				if err != nil {
					return fmt.Errorf("connection %d (token login): %w", i, err)
				}
				conns[i] = c
				if onLogin != nil {
					onLogin(i, time.Since(t0))
				}
			}
		})
	}
	err := g.Wait()
	if err != nil {
		closeAll(conns)
	}
	return conns, time.Since(start), err
}

func closeAll(conns []*Conn) {
	var wg sync.WaitGroup
	for _, c := range conns {
		if c != nil {
			wg.Add(1)
			go func() { defer wg.Done(); c.Close() }()
		}
	}
	wg.Wait()
}

// collectBetweenPhases runs a full collection before a measured phase
// starts. The generator runs with its collector held back until a memory
// limit (see cmd/loopchat's bench command); collecting while connections
// are quiet means no cycle of the generator's own — thousands of goroutine
// stacks to scan on its one CPU — lands inside a measurement and is
// charged to the server as latency.
//
// It then waits settleAfterCollect: in the first second or two after a
// collection the generator's own timers fired late (p99 up to 8.9–11.6 ms
// against 1.1–1.5 ms later, at 2,000 msgs/s over 10,000 connections), which
// made the first second of a step the slowest and failed servers at the
// first step whose every later second held (docs/BENCHMARKS.md, "The first
// second of a step").
func collectBetweenPhases() {
	runtime.GC()
	time.Sleep(settleAfterCollect)
}

// settleAfterCollect is how long a measured phase waits after the
// generator's collection; with 500 ms the first second was as on time as
// the rest.
const settleAfterCollect = 500 * time.Millisecond

// progress prints a status line every second until stop is closed.
func progress(cfg *Config, name string, stop <-chan struct{}, line func() string) {
	if cfg.Progress == nil {
		return
	}
	start := time.Now()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			fmt.Fprintf(cfg.Progress, "\r\033[K")
			return
		case <-t.C:
			fmt.Fprintf(cfg.Progress, "\r\033[K[%s %s] %3.0fs %s", name, cfg.Server, time.Since(start).Seconds(), line())
		}
	}
}
