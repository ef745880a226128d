package server

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/internal/testproc"
	"github.com/loopchat/loopchat/protocol"
)

// sharedCluster is the Redis Cluster the package's tests share (each
// keeps to its own key prefix); started by the first test that asks,
// stopped by TestMain.
var sharedCluster testproc.Shared

// prefixes numbers the key prefixes tests take on the shared cluster.
var prefixes atomic.Int64

func TestMain(m *testing.M) {
	code := m.Run()
	sharedCluster.Stop()
	os.Exit(code)
}

// redisBackend is a Redis a test runs against: one redis-server of its
// own, or the shared Redis Cluster.
type redisBackend struct {
	name   string
	url    string                // for Options.Redis
	client redis.UniversalClient // for the test's own reads and writes
	// prefix is the test's key prefix ("" on a redis-server of its own:
	// the default).
	prefix string
	redis  *testproc.Redis   // one Redis, else nil
	c      *testproc.Cluster // the cluster, else nil
}

// newPrefix is a key prefix no other test on the backend uses.
func (rb *redisBackend) newPrefix() string {
	return fmt.Sprintf("t%d:", prefixes.Add(1))
}

// oneRedis starts a redis-server for t.
func oneRedis(t *testing.T) *redisBackend {
	r, rdb := testRedis(t)
	return &redisBackend{name: "redis", url: r.URL, client: rdb, redis: r}
}

// onCluster is the shared Redis Cluster, with a prefix of t's own.
func onCluster(t *testing.T) *redisBackend {
	c := sharedCluster.Get(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), MaxRetries: -1, MaxRedirects: 8,
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
	t.Cleanup(func() { rdb.Close() })
	rb := &redisBackend{name: "cluster", url: c.URL, client: rdb, c: c}
	rb.prefix = rb.newPrefix()
	return rb
}

// privateCluster is a Redis Cluster of t's own, for a test that wipes it.
func privateCluster(t *testing.T) *redisBackend {
	c := testproc.StartClusterWithTimeout(t, testproc.SharedNodeTimeout)
	rdb := c.Client()
	t.Cleanup(func() { rdb.Close() })
	return &redisBackend{name: "cluster", url: c.URL, client: rdb, c: c}
}

// forEachRedis runs fn on one Redis and on the Redis Cluster: what works
// on one works on the other.
func forEachRedis(t *testing.T, fn func(t *testing.T, rb *redisBackend)) {
	for _, name := range []string{"redis", "cluster"} {
		t.Run(name, func(t *testing.T) {
			if name == "redis" {
				fn(t, oneRedis(t))
			} else {
				fn(t, onCluster(t))
			}
		})
	}
}

// keyPrefix is the prefix the nodes of rb use.
func (rb *redisBackend) keyPrefix() string {
	if rb.prefix == "" {
		return protocol.DefaultPrefix
	}
	return rb.prefix
}

// publishUser publishes payload on uid's channel as another program would:
// PUBLISH on one Redis, SPUBLISH of the shard channel on the cluster.
func (rb *redisBackend) publishUser(ctx context.Context, uid uint64, payload string) (int64, error) {
	if rb.c != nil {
		return rb.client.SPublish(ctx, protocol.ShardUserChannel(rb.keyPrefix(), uid), payload).Result()
	}
	return rb.client.Publish(ctx, protocol.UserChannel(rb.keyPrefix(), uid), payload).Result()
}

// store is a store on rb under the nodes' prefix, for key names and
// direct reads.
func (rb *redisBackend) store(t *testing.T) *RedisStore {
	s := NewRedisStore(RedisConfig{Client: rb.client, Prefix: rb.keyPrefix()})
	t.Cleanup(func() { s.Close() })
	return s
}

// groupSubscribers is how many nodes hear group gid's channel.
func (rb *redisBackend) groupSubscribers(t *testing.T, gid uint64) int64 {
	t.Helper()
	if rb.c == nil {
		return groupSubscribers(t, rb.client.(*redis.Client), gid)
	}
	n, err := scriptShardSubscribers.Run(context.Background(), rb.client,
		[]string{protocol.ShardGroupChannel(rb.keyPrefix(), gid)}).Int64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// publishCalls is how many PUBLISH (and SPUBLISH) calls Redis ran, in
// scripts too: summed over the primaries of the cluster.
func (rb *redisBackend) publishCalls(t *testing.T) int {
	t.Helper()
	if rb.c == nil {
		return publishCalls(t, rb.client.(*redis.Client))
	}
	var mu sync.Mutex
	total := 0
	err := rb.client.(*redis.ClusterClient).ForEachMaster(context.Background(), func(ctx context.Context, c *redis.Client) error {
		n := commandCalls(t, c, "publish") + commandCalls(t, c, "spublish")
		mu.Lock()
		total += n
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// publishBroadcast publishes payload on the broadcast channel as another
// program would.
func (rb *redisBackend) publishBroadcast(ctx context.Context, payload string) error {
	if rb.c != nil {
		return rb.client.SPublish(ctx, protocol.BroadcastChannel(rb.keyPrefix()), payload).Err()
	}
	return rb.client.Publish(ctx, protocol.BroadcastChannel(rb.keyPrefix()), payload).Err()
}

// killPubSub drops every pub/sub connection (CLIENT KILL TYPE pubsub), on
// every primary of the cluster.
func (rb *redisBackend) killPubSub(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if rb.c == nil {
		if err := rb.client.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
		return
	}
	err := rb.client.(*redis.ClusterClient).ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		return c.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// wipe loses every key: FLUSHALL on one Redis, on every primary of the
// cluster at once (their replicas follow). Never on the shared cluster:
// other tests run on it at the same time (privateCluster).
func (rb *redisBackend) wipe(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if rb.c == nil {
		if err := rb.client.FlushAll(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		return
	}
	if rb.c == sharedCluster.Get(t) {
		t.Fatal("wipe of the shared cluster: other tests are using it")
	}
	err := rb.client.(*redis.ClusterClient).ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		return c.FlushAll(ctx).Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}
