package server

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	chatpb "github.com/loopchat/loopchat/proto"
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

// holdPipeline keeps one of b's pipelines in flight for a while (a BLPOP
// that times out) and returns a wait for its end.
func holdPipeline(t *testing.T, b *redisBatcher, d time.Duration) func() {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := b.do(context.Background(), func(p redis.Pipeliner) []redis.Cmder {
			return []redis.Cmder{p.BLPop(context.Background(), d, "nothing-here")}
		})
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // it left: nothing else was queued or in flight
	return func() {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// With a gather window, commands that would leave while another pipeline
// is in flight wait for the window and leave together, in one pipeline
// (one Redis event-loop iteration); a command while none is in flight
// leaves alone, and every caller gets its own result.
func TestRedisBatcherGathers(t *testing.T) {
	ctx := context.Background()
	_, rdb := testRedis(t)
	sizes := &pipelineSizes{}
	rdb.AddHook(sizes)
	b := newGatheringBatcher(rdb, 4, 512, 200*time.Millisecond)
	defer b.close()
	incr := func(key string) int64 {
		t.Helper()
		cmds, err := b.do(ctx, func(p redis.Pipeliner) []redis.Cmder { return []redis.Cmder{p.Incr(ctx, key)} })
		if err != nil {
			t.Fatal(err)
		}
		return cmds[0].(*redis.IntCmd).Val()
	}

	incr("alone") // nothing in flight
	wait := holdPipeline(t, b, time.Second)
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
	wait()
	slices.Sort(got)
	if !slices.Equal(got, []int64{1, 2, 3, 4}) {
		t.Fatalf("the gathered INCRs returned %v, want 1 2 3 4", got)
	}
	for range 2 {
		incr("one after another")
	}
	if s := sizes.take(); !slices.Equal(s, []int{1, 4, 1, 1}) {
		t.Fatalf("pipelines of %v commands, want 1 (alone), 4 (gathered while one was in flight), 1 and 1 (one after another)", s)
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

// evalshaCalls is how many EVALSHA calls Redis has run.
func evalshaCalls(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

// Acks waiting in one pipeline are one script call per epoch: each
// caller gets its own answer (one made under another epoch is refused
// alone), and every acked message leaves its inbox, its body with the
// last inbox holding it.
func TestRedisAcksGoTogether(t *testing.T) {
	ctx := context.Background()
	_, rdb := testRedis(t)
	s := NewRedisStore(RedisConfig{Client: rdb, Prefix: "acks:", Gather: 200 * time.Millisecond})
	t.Cleanup(func() { s.Close() })
	ids := newMsgIDGen(0)
	var users []User
	for _, n := range []string{"a", "b", "c", "d"} {
		u, err := s.CreateUser(ctx, n, nil)
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}
	a := users[0]
	// b and c each get one message of their own and one to both.
	var own [3]*chatpb.Message
	for i, u := range users[1:] {
		own[i] = testMessage(ids, a, "own")
		own[i].ToUserId = u.ID
		if _, err := s.AppendMessage(ctx, own[i], []uint64{u.ID}, ""); err != nil {
			t.Fatal(err)
		}
	}
	both := testMessage(ids, a, "both")
	if _, err := s.AppendMessage(ctx, both, []uint64{users[1].ID, users[2].ID}, ""); err != nil {
		t.Fatal(err)
	}

	before := evalshaCalls(t, rdb)
	wait := holdPipeline(t, s.batch, time.Second)
	defer wait()
	stale := withEpoch(ctx, "some-older-epoch")
	acks := []struct {
		ctx  context.Context
		box  uint64
		ids  []uint64
		want error
	}{
		{ctx, users[1].ID, []uint64{own[0].MsgId, both.MsgId}, nil},
		{ctx, users[2].ID, []uint64{own[1].MsgId}, nil},
		{stale, users[3].ID, []uint64{own[2].MsgId}, ErrStoreReset},
		{ctx, users[2].ID, []uint64{both.MsgId}, nil},
	}
	errs := make([]error, len(acks))
	var wg sync.WaitGroup
	for i, ack := range acks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Ack(ack.ctx, ack.box, ack.ids)
		}()
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	for i, ack := range acks {
		if !errors.Is(errs[i], ack.want) || (ack.want == nil) != (errs[i] == nil) {
			t.Fatalf("ack %d: %v, want %v", i, errs[i], ack.want)
		}
	}
	if n := evalshaCalls(t, rdb) - before; n != 2 {
		t.Fatalf("%d script calls for the acks, want 2 (one per epoch)", n)
	}
	for i, u := range users[1:] {
		msgs, err := s.Inbox(ctx, u.ID, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		if i == 2 {
			want = 1 // the refused ack's
		}
		if len(msgs) != want {
			t.Fatalf("%s's inbox holds %d after the acks, want %d", u.Name, len(msgs), want)
		}
	}
	for _, m := range []*chatpb.Message{own[0], own[1], both} {
		if n := rdb.Exists(ctx, "acks:msg:"+msgMember(m.MsgId)).Val(); n != 0 {
			t.Fatalf("the body of %d outlived its last inbox", m.MsgId)
		}
	}
}
