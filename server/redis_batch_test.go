package server

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// pipelineSizes records how many commands each pipeline of INCRs a
// client sends carries (not the client's own, as on a new connection).
type pipelineSizes struct {
	mu    sync.Mutex
	sizes []int
}

func (p *pipelineSizes) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (p *pipelineSizes) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (p *pipelineSizes) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() == "incr" {
			p.mu.Lock()
			p.sizes = append(p.sizes, len(cmds))
			p.mu.Unlock()
		}
		return next(ctx, cmds)
	}
}

func (p *pipelineSizes) take() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.sizes
	p.sizes = nil
	return out
}

// With a gather window, commands that follow a pipeline closely wait for
// the window and leave together, in one pipeline (one Redis event-loop
// iteration); a command after a quiet spell leaves alone, and every
// caller gets its own result.
func TestRedisBatcherGathers(t *testing.T) {
	ctx := context.Background()
	_, rdb := testRedis(t)
	sizes := &pipelineSizes{}
	rdb.AddHook(sizes)
	const window = 200 * time.Millisecond
	b := newGatheringBatcher(rdb, 4, 512, window)
	defer b.close()
	incr := func(key string) int64 {
		t.Helper()
		cmds, err := b.do(ctx, func(p redis.Pipeliner) []redis.Cmder { return []redis.Cmder{p.Incr(ctx, key)} })
		if err != nil {
			t.Fatal(err)
		}
		return cmds[0].(*redis.IntCmd).Val()
	}

	incr("first") // after nothing: alone
	var wg sync.WaitGroup
	got := make([]int64, 4)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = incr("busy")
		}()
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	slices.Sort(got)
	if !slices.Equal(got, []int64{1, 2, 3, 4}) {
		t.Fatalf("the gathered INCRs returned %v, want 1 2 3 4", got)
	}
	time.Sleep(gatherBusy*window + 100*time.Millisecond)
	incr("quiet")
	if s := sizes.take(); !slices.Equal(s, []int{1, 4, 1}) {
		t.Fatalf("pipelines of %v commands, want 1 (the first), 4 (gathered), 1 (after a quiet spell)", s)
	}

	// Without a window each goes as soon as a pipeline is free.
	nb := newRedisBatcher(rdb, 4, 512)
	defer nb.close()
	for range 3 {
		if _, err := nb.do(ctx, func(p redis.Pipeliner) []redis.Cmder { return []redis.Cmder{p.Incr(ctx, "plain")} }); err != nil {
			t.Fatal(err)
		}
	}
	if s := sizes.take(); !slices.Equal(s, []int{1, 1, 1}) {
		t.Fatalf("pipelines of %v commands without a window, want 1 1 1", s)
	}
}
