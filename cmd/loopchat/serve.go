package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/loopchat/loopchat/codec"
	"github.com/loopchat/loopchat/server"
)

func newServeCmd() *cobra.Command {
	var (
		o                   server.Options
		secret              string
		logLevel, logFormat string
		shutdownTimeout     time.Duration
		gcHeadroomMiB       int
		proxyFrom           []string
		apiKeys             []string
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a loopchat node",
		Long: `Run a loopchat node. With no --redis it runs alone on an embedded store in --data.
With --redis every node shares users, groups and inboxes in that Redis and
routes messages over its pub/sub (see docs/cluster.md); give every node the
same --token-secret, or none and they share one kept in Redis.

Every flag can also be set from the environment variable shown beside it;
a flag on the command line wins. Prefer $LOOPCHAT_TOKEN_SECRET to
--token-secret, and $LOOPCHAT_API_KEY to --api-key: other users can see
the command line in the process list.

--api-addr serves the HTTP server API (docs/api.md) to callers holding
one of the --api-key values.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(os.Stderr, logLevel, logFormat)
			if err != nil {
				return err
			}
			o.Logger = log
			routeRedisLogs(log)
			for _, cidr := range proxyFrom {
				p, err := netip.ParsePrefix(cidr)
				if err != nil {
					if ip, err2 := netip.ParseAddr(cidr); err2 == nil {
						p = netip.PrefixFrom(ip, ip.BitLen())
					} else {
						return fmt.Errorf("--proxy-protocol-from: %w", err)
					}
				}
				o.ProxyProtocolFrom = append(o.ProxyProtocolFrom, p)
			}
			if secret != "" {
				if len(secret) < 16 {
					log.Warn("token secret is shorter than 16 bytes; tokens are easier to forge")
				}
				o.TokenSecret = []byte(secret)
			}
			for _, k := range apiKeys {
				o.APIKeys = append(o.APIKeys, server.APIKey(k))
			}
			o.GCHeadroom = int64(gcHeadroomMiB) << 20
			if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
				o.GCHeadroom = 0 // the operator's settings win
			}
			reserveProcForStore(o)
			srv, err := server.New(o)
			if err != nil {
				return err
			}
			if _, err := srv.Start(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var failed error
			select {
			case <-ctx.Done():
			case failed = <-srv.Failed():
				// Exit non-zero rather than live on deaf: a supervisor
				// (systemd's Restart=on-failure) brings the node back.
			}
			log.Info("shutting down", "timeout", shutdownTimeout)
			sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil && failed == nil {
				return fmt.Errorf("shutdown: %w", err)
			}
			return failed
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Listen, "listen", "127.0.0.1:7000", "TCP address to accept clients on")
	f.StringVar(&o.WSListen, "ws-listen", "", "address to accept WebSocket clients on (subprotocol loopchat.v1); empty: off")
	f.StringSliceVar(&o.WSAllowedOrigins, "ws-allowed-origins", nil, "Origin values whose browsers may open a WebSocket (repeatable; \"*\": any); upgrades without Origin are always allowed")
	f.BoolVar(&o.Web, "web", false, "serve the web chat page on --ws-listen (plain HTTP GETs; the page's own origin may open a WebSocket)")
	f.StringVar(&o.DataDir, "data", "./loopchat-data", "directory of the embedded store and the generated token secret")
	f.StringVar(&o.Engine, "engine", server.EngineGnet, `network engine: "gnet" (epoll reactors) or "net" (goroutine per connection, the baseline)`)
	f.IntVar(&o.Loops, "loops", 0, "gnet event loops (sub-reactors), each running on one thread at a time; 0 means one per CPU")
	f.BoolVar(&o.LockLoops, "lock-loops", false, "lock each event loop to an OS thread of its own (costs a thread hand-off whenever a loop goes idle)")
	f.BoolVar(&o.LeastConnections, "least-connections", false, "give new connections to the loop with the fewest, instead of round-robin")
	f.IntVar(&o.MaxFrame, "max-frame", codec.DefaultMaxFrame, "largest request frame in bytes; bigger ones close the connection")
	f.DurationVar(&o.IdleTimeout, "idle-timeout", 90*time.Second, "close connections silent for this long (clients ping every 30s)")
	f.DurationVar(&o.LoginTimeout, "login-timeout", 10*time.Second, "close connections not logged in within this time")
	f.StringVar(&secret, "token-secret", "", "secret that signs login tokens, the same on every node; empty means a random one kept in --data")
	f.DurationVar(&o.TokenTTL, "token-ttl", 7*24*time.Hour, "how long a login token stays valid")
	f.IntVar(&o.MaxConns, "max-conns", 0, "client connections open at once; more are told the server is full and closed; 0 means ulimit -n less a reserve for the accept queue and the node's own files")
	f.IntVar(&o.MaxAnonymousPerAddress, "max-anonymous-per-address", 256, "connections from one client address (IPv6: per /64) not yet logged in; more are told so and closed; negative means no limit")
	f.IntVar(&o.MaxOutbound, "max-outbound", 16<<20, "bytes allowed to wait for a client before it is kicked as a slow consumer")
	f.Float64Var(&o.RateLimit, "rate-limit", 100, "requests per second allowed per connection (sustained)")
	f.IntVar(&o.RateBurst, "rate-burst", 0, "requests per connection allowed in a burst; 0 means twice --rate-limit")
	f.IntVar(&o.MaxDevices, "max-devices", 5, "devices of one user online at once (at most 16); 1 means a new login replaces the old one")
	f.DurationVar(&o.PresenceGrace, "presence-grace", 5*time.Second, "how long a user whose last device went offline stays online to friends: a reconnect within it tells them nothing")
	f.IntVar(&o.InboxLimit, "inbox-limit", 10000, "unacknowledged messages kept per user; the oldest are dropped beyond it")
	f.IntVar(&o.History.MaxMessages, "history-max-messages", server.DefaultHistoryMaxMessages, "messages each conversation keeps for History, the latest; -1 keeps all")
	f.DurationVar(&o.History.MaxAge, "history-max-age", server.DefaultHistoryMaxAge, "messages older than this leave History; -1s keeps them all")
	f.IntVar(&o.MaxFriends, "max-friends", 5000, "friends one user may have")
	f.IntVar(&o.MaxBlocked, "max-blocked", 1000, "users one user may block")
	f.IntVar(&o.MaxGroups, "max-groups", 100, "groups one user may be in, created or joined")
	f.IntVar(&o.MaxGroupMembers, "max-group-members", 1000, "members one group may have, its creator included")
	f.IntVar(&o.Workers, "workers", 0, "goroutines running requests off the event loops; 0 means 64 per CPU")
	f.IntVar(&o.LoginFailures, "login-failures", 20, "failed password logins allowed per client address (IPv6: per /64) per minute before its password logins are refused; negative means no limit")
	f.IntVar(&o.BcryptCost, "bcrypt-cost", 0, "bcrypt cost for password hashes; 0 means bcrypt's default (10)")
	f.StringVar(&o.NodeID, "node-id", "", "name of this node in LoginOK, logs and the cluster registry; empty means host:port")
	f.StringVar(&o.Redis, "redis", "", "Redis URL (redis://host:port/db) to run as one node of a cluster, or redis-cluster://host:port,host:port,... for a Redis Cluster; empty means a single node on the embedded store")
	f.StringVar(&o.RedisPrefix, "redis-prefix", "loopchat:", "prefix of every Redis key and pub/sub channel")
	f.IntVar(&o.RedisMinReplicas, "redis-min-replicas", 0, "Redis replicas a write must reach before it is acknowledged (WAIT); 0 means 1 when every Redis primary has a replica at start, else none; -1 means never wait")
	f.DurationVar(&o.RedisReplicaTimeout, "redis-replica-timeout", time.Second, "how long a write waits for --redis-min-replicas; a write not replicated by then fails (UNAVAILABLE)")
	f.DurationVar(&o.RedisGather, "redis-gather", 0, "how long the store's next Redis pipeline waits for more commands while another is in flight (fewer Redis wake-ups and AOF fsyncs per message, a little latency); 0 means "+server.DefaultRedisGather.String()+", negative means none")
	f.DurationVar(&o.Heartbeat, "heartbeat", time.Second, "how often a cluster node refreshes its registry entry")
	f.DurationVar(&o.NodeTTL, "node-ttl", 0, "how long a registry entry outlives the last heartbeat; 0 means 3×--heartbeat")
	f.StringVar(&o.AdvertiseAddr, "advertise-addr", "", "client address of this node in the registry; empty means the --listen address")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	f.DurationVar(&o.DrainWindow, "drain-window", 2*time.Second, "on SIGINT/SIGTERM, kick clients (to reconnect elsewhere) spread over this long")
	f.DurationVar(&shutdownTimeout, "shutdown-timeout", 15*time.Second, "on SIGINT/SIGTERM, the most time to drain before closing anyway")
	f.StringSliceVar(&proxyFrom, "proxy-protocol-from", nil, "CIDRs (or IPs) of proxies whose PROXY protocol header (and, on --ws-listen, X-Forwarded-For) is honoured, e.g. nginx at 127.0.0.1/32; a PROXY header from anyone else is an error, their X-Forwarded-For ignored")
	f.StringVar(&o.AdminAddr, "admin-addr", "", "serve /metrics, /healthz, /readyz and /debug/pprof/ on this HTTP address; empty means off")
	f.StringVar(&o.APIAddr, "api-addr", "", "serve the HTTP server API (docs/api.md) on this address, e.g. 127.0.0.1:8080; needs --api-key; empty means off")
	f.StringSliceVar(&apiKeys, "api-key", nil, "a bearer key the HTTP API accepts; repeat it, or separate keys with commas, for several (e.g. while rotating); a key left out is refused from the next start")
	f.StringVar(&o.APISystemUser, "api-system-user", "system", "the account the HTTP API sends as when a call names no sender: made on first use with no password that logs in, and nobody may register it; the same on every node")
	f.IntVar(&gcHeadroomMiB, "gc-headroom-mib", 64, "MiB of garbage the heap may hold over its live size while busy (fewer collections under load; GOGC 100 again when idle); 0, or GOGC/GOMEMLIMIT in the environment, leaves the Go runtime's settings")
	return cmd
}

// reserveProcForStore gives the Go scheduler a P beyond the event loops
// (unless GOMAXPROCS is set). A goroutine in a blocking system call — the
// message log's fdatasync — keeps its P until the runtime's monitor takes
// it back, which can take milliseconds when the monitor has backed off;
// with every P busy running loops, requests wait that long. Locked loops
// (--lock-loops) need one more: a locked main reactor and locked loops
// hold their Ps while they run. The kernel still shares the CPUs among
// the threads; this only keeps runnable goroutines from queueing for a P.
func reserveProcForStore(o server.Options) {
	if os.Getenv("GOMAXPROCS") != "" || o.Engine == server.EngineNet {
		return
	}
	loops := o.Loops
	if loops <= 0 {
		loops = runtime.NumCPU()
	}
	want := loops + 1
	if o.LockLoops {
		want++ // the main reactor
	}
	if runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
}
