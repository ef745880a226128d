package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/protocol"
)

// joinCluster connects to Redis and sets up the shared store, the pub/sub
// broker and the node registry (started once the engine listens).
func (s *Server) joinCluster() error {
	o := s.opts
	ropts, err := redis.ParseURL(o.Redis)
	if err != nil {
		return fmt.Errorf("--redis: %w", err)
	}
	// Fail fast while Redis is down: requests answer UNAVAILABLE at once
	// rather than queueing. No automatic retries: a retried write whose
	// first attempt landed is handled by the scripts' idempotency, but a
	// request should rather fail visibly than hang.
	ropts.DialTimeout = time.Second
	ropts.ReadTimeout = 3 * time.Second
	ropts.WriteTimeout = 3 * time.Second
	ropts.MaxRetries = -1
	ropts.DialerRetries = 1
	ropts.DialerRetryTimeout = 10 * time.Millisecond
	ropts.PoolSize = max(ropts.PoolSize, 64)
	s.rdb = redis.NewClient(ropts)
	s.rdb.AddHook(redisMetricsHook{s.metrics})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		s.rdb.Close()
		return fmt.Errorf("redis %s unreachable: %w", ropts.Addr, err)
	}
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
		PublishMessages: true, ResetQuiet: o.NodeTTL})
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
func sharedSecret(ctx context.Context, rdb *redis.Client, prefix string, offer []byte) ([]byte, error) {
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
