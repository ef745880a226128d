package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/loopchat/loopchat/codec"
	"github.com/loopchat/loopchat/protocol"
)

// Engine names.
const (
	EngineGnet = "gnet" // epoll reactors: a main reactor accepts, sub-reactors serve (default)
	EngineNet  = "net"  // one goroutine per connection on package net: the baseline
)

// Options configures a Server. Every zero value means the documented default.
type Options struct {
	// Listen is the TCP address to serve. Empty means 127.0.0.1:7000; port 0
	// picks a free port (see Server.Addr).
	Listen string
	// WSListen is the address of the WebSocket listener (docs/protocol.md,
	// "WebSocket"), served by the same engine (on gnet, the same loops).
	// Empty means off.
	WSListen string
	// WSAllowedOrigins lists the Origin values (e.g. https://chat.example)
	// whose browsers may open a WebSocket; "*" allows any. An upgrade
	// without Origin (a native client) is always allowed; one with an
	// Origin not listed is refused with 403. Empty means no browser.
	WSAllowedOrigins []string
	// Web serves the chat page (docs/web.md) on WSListen: plain HTTP GETs
	// get the embedded files, and the page's own origin may open a
	// WebSocket without being in WSAllowedOrigins. Needs WSListen.
	Web bool
	// DataDir holds the embedded store and the generated token secret.
	// Empty means ./loopchat-data.
	DataDir string
	// Engine is EngineGnet or EngineNet. Empty means EngineGnet.
	Engine string
	// Loops is the number of gnet sub-reactors (event loops). Zero means
	// one per CPU.
	Loops int
	// LeastConnections hands new connections to the loop with the fewest
	// instead of round-robin.
	LeastConnections bool
	// LockLoops locks gnet's main reactor and each event loop to an OS
	// thread of its own. False (the default) lets the Go scheduler run a
	// loop on any thread — still one thread at a time — which spares a
	// thread hand-off each time a loop goes idle (docs/design.md).
	LockLoops bool
	// MaxFrame is the largest request payload accepted, in bytes. Zero means 64 KiB.
	MaxFrame int
	// IdleTimeout closes a connection silent for longer. Zero means 90s.
	IdleTimeout time.Duration
	// LoginTimeout closes a connection not logged in within it. Zero means 10s.
	LoginTimeout time.Duration
	// TokenSecret signs login tokens; every node of a cluster needs the
	// same one. Nil means a random secret kept in DataDir/token-secret.
	TokenSecret []byte
	// TokenTTL is how long a login token is valid. Zero means 7 days.
	TokenTTL time.Duration
	// MaxConns caps client connections open at once; more are sent
	// Error{UNAVAILABLE} and closed. Zero means the descriptor limit
	// (ulimit -n) less a reserve for the accept queue, store, Redis and
	// admin server.
	MaxConns int
	// MaxAnonymousPerAddress caps the connections from one client address
	// (IPv6: per /64) that have not logged in yet; more are told so and
	// closed. Zero means 256; negative means no limit.
	MaxAnonymousPerAddress int
	// MaxOutbound is how many bytes may wait to be written to one client
	// before it is kicked as a slow consumer. Zero means 16 MiB: room for
	// the largest LoginOK the default friend and group limits allow, twice.
	MaxOutbound int
	// RateLimit is each connection's sustained request rate per second.
	// Zero means 100.
	RateLimit float64
	// RateBurst is each connection's request burst. Zero means 2×RateLimit.
	RateBurst int
	// MaxDevices is how many devices of one user may be online at once
	// (device.go); one more kicks the oldest login with DEVICE_LIMIT. One
	// means today's newest-login-wins: every login is the same device.
	// Zero means 5; it is capped at 16, the devices a store keeps a box
	// for.
	MaxDevices int
	// PresenceGrace is how long a user whose last device went offline
	// stays online to their friends: a reconnect within it tells them
	// nothing (docs/presence.md). Zero means 5s.
	PresenceGrace time.Duration
	// MaxPending caps one connection's requests waiting for a worker.
	// Zero means 256.
	MaxPending int
	// Workers is the number of goroutines that run requests off the event
	// loops. Zero means 64 per CPU.
	Workers int
	// InboxLimit caps each user's stored unacknowledged messages. Zero means 10,000.
	InboxLimit int
	// History bounds what each conversation keeps for History: zero fields
	// mean DefaultHistoryMaxMessages and DefaultHistoryMaxAge, negative
	// ones no bound.
	History HistoryLimits
	// MaxFriends caps each user's friends. Zero means 5,000.
	MaxFriends int
	// MaxBlocked caps the users each user may block. Zero means 1,000.
	MaxBlocked int
	// MaxGroups caps the groups one user is in, created or joined. Zero
	// means 100.
	MaxGroups int
	// MaxGroupMembers caps each group's members, its creator included: a
	// group send is stored once per member. Zero means 1,000. With the
	// defaults, the largest LoginOK (every friend, every group with its
	// members) is about 5 MiB: under half of MaxOutbound, and inside the
	// 16 MiB a client reads.
	MaxGroupMembers int
	// LoginFailures is how many password logins may fail per source
	// address (IPv6: per /64) per minute, and in a burst, before that
	// address's password logins are refused unchecked. Zero means 20;
	// negative means no limit.
	LoginFailures int
	// BcryptCost is the password hashing cost. Zero means bcrypt's default (10).
	BcryptCost int
	// NodeID names this node in LoginOK and logs. Empty means host:port.
	NodeID string
	// Logger receives the server's logs. Nil means slog.Default().
	Logger *slog.Logger
	// Redis, when set, makes this node one of a cluster: users, groups and
	// inboxes live in the Redis at this URL (redis://host:port/db) and
	// messages route over its pub/sub; redis-cluster://host:port,... names
	// a Redis Cluster instead (any of its nodes; docs/cluster.md). Empty
	// means a single node on the embedded store.
	Redis string
	// RedisPrefix starts every Redis key and channel. Empty means "loopchat:".
	RedisPrefix string
	// RedisMinReplicas is how many replicas must acknowledge a write
	// before the node acknowledges it (SendOK and every other answer to a
	// write: WAIT, redis_wait.go). Zero means 1 when every Redis primary
	// has a replica connected when the node starts, else none; negative
	// means never wait.
	RedisMinReplicas int
	// RedisReplicaTimeout bounds that wait: a write not on enough replicas
	// by then fails (UNAVAILABLE). Zero means 1s.
	RedisReplicaTimeout time.Duration
	// RedisGather is how long the store's next pipeline waits for more
	// commands while another is in flight, so Redis runs them in one
	// event-loop iteration (one AOF write and fsync): CPU against latency
	// (docs/cluster.md). Zero means DefaultRedisGather; negative means none.
	RedisGather time.Duration
	// Heartbeat is how often a cluster node refreshes its registry entry.
	// Zero means 1s.
	Heartbeat time.Duration
	// NodeTTL is how long a registry entry outlives the last heartbeat.
	// Zero means 3×Heartbeat.
	NodeTTL time.Duration
	// AdvertiseAddr is the client address the registry gives for this
	// node. Empty means the address it listens on.
	AdvertiseAddr string
	// DrainWindow spreads the shutdown kicks over this long, so clients
	// reconnecting elsewhere do not all arrive at once. Zero means all at once.
	DrainWindow time.Duration
	// ProxyProtocolFrom lists the proxies (e.g. nginx with proxy_protocol
	// on) whose PROXY protocol header is honoured: the client address it
	// carries is the one per-address limits count and logs and debug
	// views show. A header from anyone else is a protocol error. On the
	// WebSocket listener their X-Forwarded-For is honoured too, read from
	// the right while each hop is in this list (takeForwardedFor), and
	// ignored from anyone else. Empty means no one is trusted.
	ProxyProtocolFrom []netip.Prefix
	// AdminAddr serves /metrics, /healthz, /readyz and /debug/pprof/ over
	// HTTP. Empty means off.
	AdminAddr string
	// APIAddr serves the HTTP server API (api.go, docs/api.md): what an
	// application's backend asks of the whole cluster, from any node.
	// Empty means off.
	APIAddr string
	// APIKeys are the bearer keys the API accepts; APIAddr needs at least
	// one. A key removed from the list is refused from the next start.
	// Empty means none (and no API).
	APIKeys []APIKey
	// APISystemUser names the account the API sends as when a call names
	// no sender: made on first use with no password that can log in, and
	// refused to Register on every node. Give every node the same. Empty
	// means "system".
	APISystemUser string
	// GCHeadroom is how many bytes of garbage the heap may hold above its
	// live size while the node is busy, so that it collects less often
	// under load (gctune.go); an idle node goes back to GOGC 100. GOGC is
	// process-wide: give it to one server per process. Zero leaves the
	// collector to the Go runtime (GOGC, GOMEMLIMIT).
	GCHeadroom int64
	// Store overrides the embedded store (cluster mode, tests). Nil means a
	// BoltStore in DataDir, which the server closes on shutdown.
	Store Store
	// NewBroker builds the broker around the server's event handler. Nil
	// means a MemoryBroker.
	NewBroker func(EventHandler) (Broker, error)

	// writeWait is how long the server waits on a client that does not
	// read (defaultWriteWait when zero). Unexported: only tests change it,
	// to see what happens when it runs out without waiting 30 s.
	writeWait time.Duration
	// lingerWait is how long a connection given its last frame (Kicked)
	// waits for the client to read up to it before it is reset
	// (defaultWriteWait when zero). Apart from writeWait so that a test can
	// make one short and still read at leisure after the other.
	lingerWait time.Duration
}

// APIKey is a bearer key of the HTTP API (Options.APIKeys). Printed in
// any way, logged or marshalled it reads "[redacted]", so a dump of the
// options shows no key.
type APIKey string

// redacted is what an APIKey prints as.
const redacted = "[redacted]"

// String hides the key from fmt's %v and %s (a struct's fields too).
func (APIKey) String() string { return redacted }

// GoString hides the key from %#v.
func (APIKey) GoString() string { return `"` + redacted + `"` }

// LogValue hides the key from log/slog.
func (APIKey) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText hides the key from encoding/json and other encoders.
func (APIKey) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// defaultWriteWait bounds how long a kicked connection lingers for its
// client to read Kicked and the frames queued before it; past it the
// connection is reset. The net engine also kicks a client as a slow
// consumer when a batch of frames waits this long for room in its socket.
const defaultWriteWait = 30 * time.Second

func (o *Options) withDefaults() (Options, error) {
	c := *o
	if c.Listen == "" {
		c.Listen = "127.0.0.1:7000"
	}
	if c.DataDir == "" {
		c.DataDir = "loopchat-data"
	}
	switch c.Engine {
	case "":
		c.Engine = EngineGnet
	case EngineGnet, EngineNet:
	default:
		return c, fmt.Errorf("unknown engine %q (want %q or %q)", c.Engine, EngineGnet, EngineNet)
	}
	if c.Web && c.WSListen == "" {
		return c, errors.New("--web serves the page on the WebSocket listener: give --ws-listen too")
	}
	if c.WSListen != "" && wsListenAddr(c.WSListen, c.Listen) == c.Listen {
		return c, errors.New("--ws-listen must differ from --listen")
	}
	if c.Loops <= 0 {
		c.Loops = runtime.NumCPU()
	}
	if c.MaxFrame <= 0 {
		c.MaxFrame = codec.DefaultMaxFrame
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 90 * time.Second
	}
	if c.LoginTimeout <= 0 {
		c.LoginTimeout = 10 * time.Second
	}
	if c.TokenTTL <= 0 {
		c.TokenTTL = 7 * 24 * time.Hour
	}
	if c.MaxOutbound <= 0 {
		c.MaxOutbound = 16 << 20
	}
	if c.lingerWait <= 0 {
		c.lingerWait = defaultWriteWait
	}
	if c.writeWait <= 0 {
		c.writeWait = defaultWriteWait
	}
	if c.RateLimit <= 0 {
		c.RateLimit = 100
	}
	if c.RateBurst <= 0 {
		c.RateBurst = int(2 * c.RateLimit)
	}
	if c.PresenceGrace <= 0 {
		c.PresenceGrace = 5 * time.Second
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 256
	}
	if c.MaxDevices <= 0 {
		c.MaxDevices = 5
	}
	c.MaxDevices = min(c.MaxDevices, maxKnownDevices)
	if c.Workers <= 0 {
		c.Workers = 64 * runtime.GOMAXPROCS(0)
	}
	if c.InboxLimit <= 0 {
		c.InboxLimit = 10000
	}
	if c.MaxConns <= 0 {
		n, err := defaultMaxConns()
		if err != nil {
			return c, err
		}
		c.MaxConns = n
	}
	if c.MaxAnonymousPerAddress == 0 {
		c.MaxAnonymousPerAddress = 256
	}
	if c.LoginFailures == 0 {
		c.LoginFailures = 20
	}
	if c.MaxFriends <= 0 {
		c.MaxFriends = 5000
	}
	if c.MaxBlocked <= 0 {
		c.MaxBlocked = 1000
	}
	if c.MaxGroups <= 0 {
		c.MaxGroups = 100
	}
	if c.MaxGroupMembers <= 0 {
		c.MaxGroupMembers = 1000
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.NodeID == "" {
		host, _ := os.Hostname()
		c.NodeID = host + ":" + portOf(c.Listen)
	}
	if c.RedisPrefix == "" {
		c.RedisPrefix = protocol.DefaultPrefix
	}
	if c.RedisReplicaTimeout <= 0 {
		c.RedisReplicaTimeout = time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = time.Second
	}
	if c.NodeTTL <= 0 {
		c.NodeTTL = 3 * c.Heartbeat
	}
	if c.APISystemUser == "" {
		c.APISystemUser = "system"
	}
	if err := protocol.ValidateUsername(c.APISystemUser); err != nil {
		return c, fmt.Errorf("API system user %q: %w", c.APISystemUser, err)
	}
	if c.APIAddr != "" && len(c.APIKeys) == 0 {
		return c, errors.New("the HTTP API (--api-addr) needs at least one key (--api-key): it serves only callers that present one")
	}
	for _, k := range c.APIKeys {
		if k == "" {
			return c, errors.New("an API key (--api-key) is empty")
		}
	}
	if c.TokenSecret == nil && c.Redis == "" {
		// A cluster shares its secret through Redis instead (see New).
		secret, err := loadOrCreateSecret(c.DataDir)
		if err != nil {
			return c, err
		}
		c.TokenSecret = secret
	}
	return c, nil
}

func portOf(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[i+1:]
		}
	}
	return addr
}

// storePath is where the embedded store lives inside DataDir.
func (o *Options) storePath() string { return filepath.Join(o.DataDir, "loopchat.db") }

// limits is what the store checks when a friendship or membership is added.
func (o *Options) limits() Limits {
	return Limits{FriendsPerUser: o.MaxFriends, GroupsPerUser: o.MaxGroups, MembersPerGroup: o.MaxGroupMembers,
		BlockedPerUser: o.MaxBlocked}
}
