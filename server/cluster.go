package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/protocol"
)

// joinCluster connects to Redis and sets up the shared store, the pub/sub
// broker and the node registry (started once the engine listens).
func (s *Server) joinCluster() error {
	o := s.opts
	rdb, addr, err := NewRedisClient(o.Redis)
	if err != nil {
		return fmt.Errorf("--redis: %w", err)
	}
	s.rdb = rdb
	s.rdb.AddHook(redisMetricsHook{s.metrics})
	// In before any command: a cluster's nodes get it as they are met.
	var replicas atomic.Int32
	waitForReplicas(s.rdb, replicaWait{n: &replicas, timeout: o.RedisReplicaTimeout,
		short: func() { s.metrics.redisErrors.WithLabelValues("wait").Inc() }})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		s.rdb.Close()
		return fmt.Errorf("redis %s unreachable: %w", addr, err)
	}
	n, err := minReplicas(ctx, s.rdb, o.RedisMinReplicas)
	if err != nil {
		s.rdb.Close()
		return err
	}
	replicas.Store(int32(n))
	s.log.Info("redis writes are acknowledged once on replicas", "min_replicas", n, "timeout", o.RedisReplicaTimeout)
	if s.tokens.Load().secret == nil {
		secret, err := sharedSecret(ctx, s.rdb, o.RedisPrefix, nil)
		if err != nil {
			s.rdb.Close()
			return err
		}
		tk := newTokens(secret, o.TokenTTL)
		s.tokens.Store(&tk)
	}
	// The store publishes each new message in its append script: one
	// round trip (and one AOF fsync wait) per cross-node send, not two.
	s.store = NewRedisStore(RedisConfig{Client: s.rdb, Prefix: o.RedisPrefix, InboxLimit: o.InboxLimit, History: o.History,
		PublishMessages: true, ResetQuiet: o.NodeTTL, Gather: o.RedisGather})
	s.ownsStore = true
	s.storePublishes = true // group_member notices too
	s.broker = NewRedisBroker(RedisBrokerConfig{
		Client: s.rdb, Prefix: o.RedisPrefix, Logger: s.log,
		OnFrameError: s.metrics.channelErrors.Inc,
		OnReconnect:  s.metrics.pubsubReconnects.Inc,
	}, s.onEvent)
	s.registry = &registry{
		rdb: s.rdb, p: o.RedisPrefix, interval: o.Heartbeat, ttl: o.NodeTTL, ids: s.ids, log: s.log,
		info: s.nodeInfo,
	}
	return nil
}

// NewRedisClient connects to what --redis names: one Redis
// (redis://host:port/db, rediss://, unix://), or a Redis Cluster
// (redis-cluster://host:port,host:port,... with any of its nodes; the
// client finds the others). It returns the client and the address(es)
// for messages.
//
// Fail fast while Redis is down: requests answer UNAVAILABLE at once
// rather than queueing. No automatic retries on one Redis: a retried
// write whose first attempt landed is handled by the scripts'
// idempotency, but a request should rather fail visibly than hang. On a
// cluster the client follows MOVED and ASK redirections (a slot that
// moved) and tries a command once more on a failing node, and reloads
// the cluster's layout every second, so a failover is found quickly.
func NewRedisClient(url string) (redis.UniversalClient, string, error) {
	return newRedisClient(url, redisIOTimeout)
}

// NewRedisToolClient is NewRedisClient for an offline tool (redis-migrate),
// whose reads of whole keys (a conversation's log, a big group) may take
// longer than a request's.
func NewRedisToolClient(url string) (redis.UniversalClient, string, error) {
	return newRedisClient(url, 30*time.Second)
}

func newRedisClient(url string, ioTimeout time.Duration) (redis.UniversalClient, string, error) {
	if rest, ok := strings.CutPrefix(url, "redis-cluster://"); ok {
		copts, err := parseClusterURL(rest)
		if err != nil {
			return nil, "", err
		}
		copts.DialTimeout, copts.ReadTimeout, copts.WriteTimeout = redisDialTimeout, ioTimeout, ioTimeout
		copts.MaxRetries, copts.DialerRetries, copts.DialerRetryTimeout = -1, 1, 10*time.Millisecond
		copts.PoolSize = max(copts.PoolSize, redisPool)
		copts.MaxRedirects, copts.ClusterStateReloadInterval = 8, time.Second
		return redis.NewClusterClient(copts), strings.Join(copts.Addrs, ","), nil
	}
	ropts, err := redis.ParseURL(url)
	if err != nil {
		return nil, "", err
	}
	ropts.DialTimeout, ropts.ReadTimeout, ropts.WriteTimeout = redisDialTimeout, ioTimeout, ioTimeout
	ropts.MaxRetries, ropts.DialerRetries, ropts.DialerRetryTimeout = -1, 1, 10*time.Millisecond
	ropts.PoolSize = max(ropts.PoolSize, redisPool)
	return redis.NewClient(ropts), ropts.Addr, nil
}

// The Redis client's timeouts and pool (see NewRedisClient).
const (
	redisDialTimeout = time.Second
	redisIOTimeout   = 3 * time.Second
	redisPool        = 64
)

// parseClusterURL reads what follows "redis-cluster://":
// [user[:password]@]host:port[,host:port...][?option=value...], the
// options those of go-redis's cluster URLs (redis.ParseClusterURL).
func parseClusterURL(rest string) (*redis.ClusterOptions, error) {
	hosts, query, _ := strings.Cut(rest, "?")
	userinfo := ""
	if at := strings.LastIndexByte(hosts, '@'); at >= 0 {
		userinfo, hosts = hosts[:at+1], hosts[at+1:]
	}
	hosts = strings.TrimSuffix(hosts, "/")
	addrs := strings.Split(hosts, ",")
	if hosts == "" || slices.Contains(addrs, "") {
		return nil, fmt.Errorf("redis-cluster:// needs host:port[,host:port...]")
	}
	u := "redis://" + userinfo + addrs[0] + "?" + query
	for _, a := range addrs[1:] {
		u += "&addr=" + a
	}
	return redis.ParseClusterURL(u)
}

// nodeInfo is this node's registry entry.
func (s *Server) nodeInfo() protocol.NodeInfo {
	addr := s.opts.AdvertiseAddr
	if addr == "" && s.addr != nil {
		addr = s.addr.String()
	}
	return protocol.NodeInfo{NodeID: s.opts.NodeID, Addr: addr, WSAddr: s.advertisedWSAddr(addr),
		Conns: s.connCount(), Draining: s.closing.Load(), StartedAt: s.startedAt.UnixMilli()}
}

// advertisedWSAddr is the WebSocket listener's address as the registry
// gives it: as bound, or, when bound to every interface, on the host of
// the advertised TCP address (the one a proxy reaches this node at).
func (s *Server) advertisedWSAddr(advertised string) string {
	a, ok := s.WSAddr().(*net.TCPAddr)
	if !ok || a == nil {
		return ""
	}
	if a.IP == nil || a.IP.IsUnspecified() {
		if host, _, err := net.SplitHostPort(advertised); err == nil && host != "" {
			return net.JoinHostPort(host, strconv.Itoa(a.Port))
		}
	}
	return a.String()
}

// sharedSecret returns the cluster's token secret from Redis, creating one
// (offer, or else random) if no node has yet: nodes started without
// --token-secret then still accept each other's tokens.
func sharedSecret(ctx context.Context, rdb redis.UniversalClient, prefix string, offer []byte) ([]byte, error) {
	key := prefix + "token-secret"
	buf := offer
	if buf == nil {
		buf = make([]byte, 32)
		if _, err := rand.Read(buf); err != nil {
			return nil, err
		}
	}
	if err := rdb.SetNX(ctx, key, hex.EncodeToString(buf), 0).Err(); err != nil {
		return nil, fmt.Errorf("token secret: %w", err)
	}
	v, err := rdb.Get(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("token secret: %w", err)
	}
	secret, err := hex.DecodeString(v)
	if err != nil || len(secret) < 16 {
		return nil, errors.New("token secret in Redis is not at least 16 hex-encoded bytes")
	}
	return secret, nil
}
