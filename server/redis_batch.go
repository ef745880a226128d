package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// pipeOp is one caller's commands waiting for a shared pipeline: build's,
// or an ack, which goes with the others of its pipeline.
type pipeOp struct {
	build func(redis.Pipeliner) []redis.Cmder
	ack   *ackOp
	cmds  []redis.Cmder
	done  chan error
}

// ackOp is an Ack on one Redis (scriptAck). The acks in one pipeline under
// the same epoch are one script call, in the place of the first of them:
// each caller still waits for that call, so its ack is durable before it
// is answered, and none goes later than it would alone.
type ackOp struct {
	inbox     string
	members   []any    // 16 hex digits each (msgMember)
	guardKeys []string // the epoch and quiet keys (RedisStore.guard)
	prefix    string
	epoch     string // the epoch the ack is made under ("": none)
}

// sameCall tells whether a and b can go in one scriptAck call.
func (a *ackOp) sameCall(b *ackOp) bool {
	return a.prefix == b.prefix && a.epoch == b.epoch && slices.Equal(a.guardKeys, b.guardKeys)
}

// buildAcks queues one scriptAck call for batch[first].ack and every later
// ack in batch that can go with it, and gives each of them that command.
func buildAcks(ctx context.Context, p redis.Pipeliner, batch []*pipeOp, first int) {
	lead := batch[first].ack
	var with []*pipeOp
	keys := []string{}
	args := []any{lead.prefix}
	for _, op := range batch[first:] {
		if op.ack == nil || op.cmds != nil || !lead.sameCall(op.ack) {
			continue
		}
		with = append(with, op)
		keys = append(keys, op.ack.inbox)
		args = append(append(args, len(op.ack.members)), op.ack.members...)
	}
	cmd := scriptAck.EvalSha(ctx, p, append(keys, lead.guardKeys...), append(args, lead.epoch)...)
	for _, op := range with {
		op.cmds = []redis.Cmder{cmd}
	}
}

// redisBatcher packs the hot-path commands of many concurrent requests
// (message appends, acks, publishes) into pipelines: a few pipelines in
// flight, each carrying whatever was queued when it left. Under load one
// round trip serves many messages; a lone command still leaves at once.
//
// With a gather window, a pipeline that would leave while another is in
// flight first waits up to the window for more commands: Redis then runs
// several in one event-loop iteration, and with appendfsync always each
// iteration that writes costs Redis a write and an fdatasync of the AOF,
// and each side a round trip's system calls and wake-ups (issue 21). A
// command while none is in flight (a lone request, or one client's
// requests one after another) leaves at once. One worker gathers at a
// time, so the window's commands go together rather than to whichever
// worker was free.
type redisBatcher struct {
	rdb     redis.UniversalClient
	ops     *opQueue[*pipeOp]
	max     int
	scripts []*redis.Script // loaded again when Redis restarts without them
	// refused, when set (before the first op), is told of each command a
	// script's epoch guard refused (epoch_cluster.go).
	refused func(redis.Cmder)
	wg      sync.WaitGroup
	gather  time.Duration
	// recv is held by the worker taking the next batch off the queue
	// (with a gather window); inflight counts pipelines sent and not yet
	// answered.
	recv     sync.Mutex
	inflight atomic.Int32
}

func newRedisBatcher(rdb redis.UniversalClient, inFlight, maxBatch int, scripts ...*redis.Script) *redisBatcher {
	return newGatheringBatcher(rdb, inFlight, maxBatch, 0, scripts...)
}

// newGatheringBatcher is newRedisBatcher with a gather window (0: none).
func newGatheringBatcher(rdb redis.UniversalClient, inFlight, maxBatch int, gather time.Duration, scripts ...*redis.Script) *redisBatcher {
	b := &redisBatcher{rdb: rdb, ops: newOpQueue[*pipeOp]("redis batcher", maxBatch), max: maxBatch, scripts: scripts,
		gather: gather}
	for range inFlight {
		b.wg.Add(1)
		go b.run()
	}
	return b
}

// do queues build's commands and waits for their pipeline. It returns the
// commands (each with its own result) and the first error among them,
// redis.Nil excepted.
func (b *redisBatcher) do(ctx context.Context, build func(redis.Pipeliner) []redis.Cmder) ([]redis.Cmder, error) {
	return b.doOp(ctx, &pipeOp{build: build})
}

// doOp is do with the op made by the caller (an ack).
func (b *redisBatcher) doOp(ctx context.Context, op *pipeOp) ([]redis.Cmder, error) {
	op.done = make(chan error, 1)
	if err := b.ops.send(ctx, op); err != nil {
		return nil, err
	}
	select {
	case err := <-op.done:
		return op.cmds, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// post queues build's commands without waiting for their pipeline (the
// queue is bounded: it waits while that is full). Their results are not
// read.
func (b *redisBatcher) post(ctx context.Context, build func(redis.Pipeliner) []redis.Cmder) error {
	return b.ops.send(ctx, &pipeOp{build: build, done: make(chan error, 1)})
}

func (b *redisBatcher) close() {
	b.ops.close()
	b.wg.Wait()
}

func (b *redisBatcher) run() {
	defer b.wg.Done()
	batch := make([]*pipeOp, 0, b.max)
	if b.gather <= 0 {
		for op := range b.ops.ch {
			batch = b.ops.fill(append(batch[:0], op), b.max)
			b.exec(batch, true)
		}
		return
	}
	timer := time.NewTimer(b.gather)
	timer.Stop()
	for {
		b.recv.Lock()
		op, ok := <-b.ops.ch
		if !ok {
			b.recv.Unlock()
			return
		}
		batch = b.ops.fill(append(batch[:0], op), b.max)
		if len(batch) < b.max && b.inflight.Load() > 0 {
			timer.Reset(b.gather)
			batch = b.gatherUntil(batch, timer.C)
			timer.Stop()
		}
		b.inflight.Add(1) // exec takes it off once Redis answered
		b.recv.Unlock()
		b.exec(batch, true)
	}
}

// gatherUntil adds queued ops to batch until it is full, the queue
// closes, or done fires.
func (b *redisBatcher) gatherUntil(batch []*pipeOp, done <-chan time.Time) []*pipeOp {
	for len(batch) < b.max {
		select {
		case op, ok := <-b.ops.ch:
			if !ok {
				return batch
			}
			batch = append(batch, op)
		case <-done:
			return batch
		}
	}
	return batch
}

func (b *redisBatcher) exec(batch []*pipeOp, retryNoScript bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pipe := b.rdb.Pipeline()
	for _, op := range batch {
		op.cmds = nil // a retry builds them again
	}
	for i, op := range batch {
		switch {
		case op.ack == nil:
			op.cmds = op.build(pipe)
		case op.cmds == nil: // not gone with an earlier ack
			buildAcks(ctx, pipe, batch, i)
		}
	}
	_, _ = pipe.Exec(ctx)
	if retryNoScript && b.gather > 0 {
		// No longer in flight: before its callers hear, so that one
		// asking again at once does not wait for a window.
		b.inflight.Add(-1)
	}
	var again []*pipeOp
	for _, op := range batch {
		err := firstErr(op.cmds)
		if b.refused != nil && err != nil && strings.HasPrefix(err.Error(), epochErrPrefix) {
			for _, c := range op.cmds {
				if c.Err() != nil && strings.HasPrefix(c.Err().Error(), epochErrPrefix) {
					b.refused(c)
				}
			}
		}
		if retryNoScript && hasNoScript(op.cmds) {
			again = append(again, op)
			continue
		}
		op.done <- redisErr(err)
	}
	if len(again) > 0 {
		for _, s := range b.scripts {
			_ = s.Load(ctx, b.rdb).Err()
		}
		b.rerunNoScript(ctx, again)
	}
}

// rerunNoScript runs again the commands of batch that Redis answered
// NOSCRIPT (it restarted, or a replica took over: the script cache is not
// copied), and only those: they never ran, while the others of the same
// op ran already, on their own primaries of a cluster, and must not run
// twice (a message's inbox step would publish it twice, and put it back
// in an inbox that acked it meanwhile).
func (b *redisBatcher) rerunNoScript(ctx context.Context, batch []*pipeOp) {
	pipe := b.rdb.Pipeline()
	queued := make(map[redis.Cmder]bool)
	for _, op := range batch {
		for _, c := range op.cmds {
			if !queued[c] && isNoScript(c.Err()) {
				queued[c] = true // an ack's call is shared by the acks it carries
				c.SetErr(nil)
				_ = pipe.Process(ctx, c)
			}
		}
	}
	_, _ = pipe.Exec(ctx)
	for _, op := range batch {
		op.done <- redisErr(firstErr(op.cmds))
	}
}

func firstErr(cmds []redis.Cmder) error {
	for _, c := range cmds {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
	}
	return nil
}

// hasNoScript tells whether Redis answered NOSCRIPT to one of cmds.
func hasNoScript(cmds []redis.Cmder) bool {
	return slices.ContainsFunc(cmds, func(c redis.Cmder) bool { return isNoScript(c.Err()) })
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// redisErr marks Redis failures as unavailability: whether the network,
// a restart (LOADING) or a timeout, the request was not carried out and a
// later retry may succeed.
func redisErr(err error) error {
	if err == nil || errors.Is(err, redis.Nil) {
		return err
	}
	if strings.HasPrefix(err.Error(), epochErrPrefix) {
		return ErrStoreReset
	}
	if strings.HasPrefix(err.Error(), quietErrPrefix) {
		return ErrStoreResetting
	}
	return fmt.Errorf("redis: %w: %w", errUnavailable, err)
}
