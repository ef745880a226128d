package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Replicas that do not lose acknowledged writes (--redis-min-replicas).
//
// A Redis primary answers a write before its replicas have it. Should it
// die then, the replica that takes over (a Redis Cluster failover, or
// Sentinel's) lacks the write: a message answered with SendOK would be
// lost. So every pipeline that writes (the store's scripts: sends, acks,
// registrations, friendships, groups, read marks) ends with WAIT n
// timeout, on the same connection: Redis answers it once n replicas
// acknowledged every write that connection made, and the pipeline's
// results count only then. Fewer within the timeout, and the writes fail
// (ErrNotReplicated): the client gets UNAVAILABLE, not SendOK, and
// retries. Redis 7.0 has no WAITAOF: a replica acknowledges what it
// received, not what it fsynced, so the guarantee is "on n+1 machines'
// memory, and on the primary's disk (appendfsync always)". A write that
// failed this way may still be on the primary, and is found by the
// retry's dedup (client_msg_id).
//
// On a cluster the hook sits on each node's client: the cluster client
// splits a pipeline by node, and each part waits on its own node.

// ErrNotReplicated: Redis took the write, but fewer replicas than
// --redis-min-replicas acknowledged it within the timeout.
var ErrNotReplicated = errors.New("redis: the write did not reach enough replicas in time")

// replicaWait is the go-redis hook that ends every writing pipeline with
// WAIT n timeout. n is set once the replicas were counted (minReplicas);
// the hook goes in before, as a cluster client's nodes get theirs only
// when they are first met.
type replicaWait struct {
	n       *atomic.Int32
	timeout time.Duration
	short   func() // counts a WAIT that came back short
}

func (h replicaWait) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h replicaWait) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h replicaWait) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		want := int(h.n.Load())
		if want <= 0 {
			return next(ctx, cmds)
		}
		// A cluster client sends a failed part again, WAIT and all, maybe
		// to another node: each part gets its own.
		own := make([]redis.Cmder, 0, len(cmds)+1)
		writes := false
		for _, c := range cmds {
			if name := c.Name(); name != "wait" {
				own = append(own, c)
				writes = writes || !readOnlyCommand(name)
			}
		}
		switch {
		case len(own) == 0:
			return nil // only a WAIT carried over: nothing of its own to run
		case !writes:
			return next(ctx, own)
		}
		wait := redis.NewIntCmd(ctx, "wait", want, h.timeout.Milliseconds())
		err := next(ctx, append(own, wait))
		if n, werr := wait.Result(); werr == nil && n < int64(want) {
			if h.short != nil {
				h.short()
			}
			short := fmt.Errorf("%w: %d of %d replicas within %v", ErrNotReplicated, n, want, h.timeout)
			for _, c := range own {
				if c.Err() == nil && !readOnlyCommand(c.Name()) {
					c.SetErr(short)
				}
			}
			if err == nil {
				err = short
			}
		}
		return err
	}
}

// readOnlyCommand reports whether a command changes nothing a replica
// must have (a read, a publish, a script that only reads still counts as
// a write: Redis cannot tell, and a WAIT after nothing returns at once).
func readOnlyCommand(name string) bool {
	switch name {
	case "get", "mget", "hget", "hmget", "hgetall", "hvals", "hlen", "exists", "zrange", "zrangebyscore",
		"zrangebylex", "zscore", "zcard", "smembers", "sismember", "scard", "srandmember", "ttl", "pttl", "type",
		"scan", "ping", "echo", "time", "info", "cluster", "command", "pubsub", "publish", "spublish", "wait",
		"client", "script", "evalsha_ro", "eval_ro":
		return true
	}
	return false
}

// minReplicas is how many replicas to wait for (Options.RedisMinReplicas):
// want when positive, none when negative, and when zero 1 if every
// primary has a replica connected now, else none.
func minReplicas(ctx context.Context, rdb redis.UniversalClient, want int) (int, error) {
	switch {
	case want > 0:
		return want, nil
	case want < 0:
		return 0, nil
	}
	var mu sync.Mutex
	least := -1
	count := func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		n := 0
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "connected_slaves:"); ok {
				fmt.Sscan(v, &n)
			}
		}
		mu.Lock()
		if least < 0 || n < least {
			least = n
		}
		mu.Unlock()
		return nil
	}
	var err error
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, count)
	case *redis.Client:
		err = count(ctx, c)
	}
	if err != nil {
		return 0, fmt.Errorf("redis replication info: %w", err)
	}
	return min(max(least, 0), 1), nil
}

// waitForReplicas installs the hook on rdb (on each node's client of a
// cluster).
func waitForReplicas(rdb redis.UniversalClient, h replicaWait) {
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		c.OnNewNode(func(node *redis.Client) { node.AddHook(h) })
	default:
		rdb.AddHook(h)
	}
}
