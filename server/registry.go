package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/protocol"
)

// claimNumberScript takes or renews a node number: it succeeds when the
// number is free or already ours. KEYS: nodenum key. ARGV: node id, ttl ms.
var claimNumberScript = redis.NewScript(`
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`)

// releaseNumberScript frees a node number if it is still ours.
var releaseNumberScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0`)

// registry heartbeats this node into Redis: NodeInfo at NodeKey with a
// short TTL (what `loopchat lb` discovers), and a claim on one of the 1024
// node numbers that keep message ids unique across the cluster.
type registry struct {
	rdb      redis.UniversalClient
	p        string
	interval time.Duration
	ttl      time.Duration
	info     func() protocol.NodeInfo
	ids      *msgIDGen
	log      *slog.Logger

	mu  sync.Mutex
	num int

	stop chan struct{}
	done chan struct{}
}

func (r *registry) numKey(n int) string { return r.p + "nodenum:" + strconv.Itoa(n) }

// start claims a node number and begins heartbeating.
func (r *registry) start(ctx context.Context) error {
	if err := r.claim(ctx); err != nil {
		return err
	}
	if err := r.beat(ctx); err != nil {
		return err
	}
	r.stop, r.done = make(chan struct{}), make(chan struct{})
	go r.loop()
	return nil
}

// claim finds a free node number, starting at a random one.
func (r *registry) claim(ctx context.Context) error {
	nodeID := r.info().NodeID
	start := rand.IntN(msgIDMaxNode + 1)
	for i := range msgIDMaxNode + 1 {
		n := (start + i) % (msgIDMaxNode + 1)
		ok, err := claimNumberScript.Run(ctx, r.rdb, []string{r.numKey(n)}, nodeID, r.ttl.Milliseconds()).Int()
		if err != nil {
			return redisErr(err)
		}
		if ok == 1 {
			r.mu.Lock()
			r.num = n
			r.mu.Unlock()
			r.ids.setNode(uint64(n))
			return nil
		}
	}
	return fmt.Errorf("registry: all %d node numbers are taken", msgIDMaxNode+1)
}

func (r *registry) beat(ctx context.Context) error {
	info := r.info()
	body, _ := json.Marshal(info)
	r.mu.Lock()
	num := r.num
	r.mu.Unlock()
	pipe := r.rdb.Pipeline()
	pipe.Set(ctx, protocol.NodeKey(r.p, info.NodeID), body, r.ttl)
	pipe.ZAdd(ctx, protocol.NodesKey(r.p), redis.Z{Score: float64(time.Now().UnixMilli()), Member: info.NodeID})
	// Forget nodes silent for a minute from the index.
	pipe.ZRemRangeByScore(ctx, protocol.NodesKey(r.p), "-inf", strconv.FormatInt(time.Now().Add(-time.Minute).UnixMilli(), 10))
	claim := claimNumberScript.EvalSha(ctx, pipe, []string{r.numKey(num)}, info.NodeID, r.ttl.Milliseconds())
	if _, err := pipe.Exec(ctx); err != nil && !isNoScript(err) {
		return redisErr(err)
	}
	if ok, err := claim.Int(); err != nil || ok != 1 {
		// Lost the number (we were silent past the TTL and another node
		// took it, or the script cache is gone): claim one again.
		return r.claim(ctx)
	}
	return nil
}

func (r *registry) loop() {
	defer close(r.done)
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), r.interval)
			if err := r.beat(ctx); err != nil {
				r.log.Warn("registry heartbeat failed", "err", err)
			}
			cancel()
		}
	}
}

// close stops heartbeating and removes this node from the registry.
func (r *registry) close(ctx context.Context) {
	if r.stop != nil {
		close(r.stop)
		<-r.done
	}
	nodeID := r.info().NodeID
	r.mu.Lock()
	num := r.num
	r.mu.Unlock()
	pipe := r.rdb.Pipeline()
	pipe.Del(ctx, protocol.NodeKey(r.p, nodeID))
	pipe.ZRem(ctx, protocol.NodesKey(r.p), nodeID)
	releaseNumberScript.Eval(ctx, pipe, []string{r.numKey(num)}, nodeID)
	_, _ = pipe.Exec(ctx)
}

// list reads the registry: every node whose entry has not expired, as
// `loopchat lb` discovers them (loadbalance.ListNodes, which this package
// cannot import: its tests import this one).
func (r *registry) list(ctx context.Context) ([]protocol.NodeInfo, error) {
	ids, err := r.rdb.ZRange(ctx, protocol.NodesKey(r.p), 0, -1).Result()
	if err != nil || len(ids) == 0 {
		return nil, redisErr(err)
	}
	// GETs in a pipeline, not one MGET: on a Redis Cluster the entries
	// are in different slots.
	pipe := r.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.Get(ctx, protocol.NodeKey(r.p, id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, redisErr(err)
	}
	out := make([]protocol.NodeInfo, 0, len(cmds))
	for _, c := range cmds {
		s, err := c.Result()
		if err != nil {
			continue // expired: the node is gone
		}
		var info protocol.NodeInfo
		if json.Unmarshal([]byte(s), &info) == nil && info.NodeID != "" {
			out = append(out, info)
		}
	}
	return out, nil
}
