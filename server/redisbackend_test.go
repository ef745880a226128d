package server

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/internal/testproc"
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

// isCluster reports whether a test name runs on the cluster backend.
func isCluster(t *testing.T) bool { return strings.Contains(t.Name(), "/cluster") }
