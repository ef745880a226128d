package server

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
)

// BenchmarkMigrateToCluster moves a one-Redis store of 2,000 users
// (friends in a chain) and 40,000 1:1 messages with client ids, half of
// them acked, onto the shared Redis Cluster, to a fresh prefix each time;
// it reports source keys per second, the final check included
// (docs/BENCHMARKS.md, "Moving one Redis onto a cluster").
func BenchmarkMigrateToCluster(b *testing.B) {
	ctx := context.Background()
	r := testproc.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	s := NewRedisStore(RedisConfig{Client: rdb})
	defer s.Close()
	if _, err := s.Epoch(ctx); err != nil {
		b.Fatal(err)
	}
	const users, msgs = 2000, 40000
	ids := make([]uint64, 0, users)
	for i := range users {
		u, err := s.CreateUser(ctx, fmt.Sprintf("u%d", i), []byte("h"))
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, u.ID)
		if i > 0 {
			if err := s.AddFriend(ctx, ids[i-1], u.ID, Limits{}); err != nil {
				b.Fatal(err)
			}
		}
	}
	var wg sync.WaitGroup
	gen := &msgIDGen{}
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < msgs; i += 16 {
				from, to := ids[i%users], ids[(i*7+1)%users]
				id, at := gen.next(time.Now())
				m := &chatpb.Message{MsgId: id, FromUserId: from, ToUserId: to, Text: "a message of some forty bytes or so", SentAtMs: at}
				res, err := s.AppendMessage(ctx, m, []uint64{to}, fmt.Sprintf("c%d", i))
				if err == nil && i%2 == 0 {
					err = s.Ack(ctx, to, []uint64{res.Message.MsgId})
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	keys, err := rdb.DBSize(ctx).Result()
	if err != nil {
		b.Fatal(err)
	}
	to := sharedCluster.Get(b).Client()
	defer to.Close()
	b.ResetTimer()
	for b.Loop() {
		rep, err := MigrateToCluster(ctx, MigrateConfig{From: rdb, To: to, ToPrefix: (&redisBackend{}).newPrefix()})
		if err != nil {
			b.Fatalf("%v: %+v", err, rep)
		}
	}
	b.ReportMetric(float64(keys)*float64(b.N)/b.Elapsed().Seconds(), "keys/s")
	b.ReportMetric(float64(keys), "keys")
}
