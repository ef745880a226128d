package testproc

import (
	"fmt"
	"testing"
	"time"
)

// TestClusterFailsOverAndHeals: the harness's cluster serves keys on every
// shard, fails a SIGKILLed primary over to its replica, and takes the
// restarted node back as a replica.
func TestClusterFailsOverAndHeals(t *testing.T) {
	c := StartCluster(t)
	rdb := c.Client()
	defer rdb.Close()
	ctx := Ctx(t, 30*time.Second)
	owners := map[string]bool{}
	for i := range 30 {
		k := fmt.Sprintf("k%d", i)
		if err := rdb.Set(ctx, k, i, 0).Err(); err != nil {
			t.Fatal(err)
		}
		m, err := rdb.MasterForKey(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		owners[m.Options().Addr] = true
	}
	primaries, err := c.Primaries(ctx)
	if err != nil || len(primaries) != 3 || len(owners) != 3 {
		t.Fatalf("primaries %d (%v), keys on %d of them", len(primaries), err, len(owners))
	}

	victim := primaries[0]
	victim.Kill()
	WaitUntil(t, "a replica takes over", 15*time.Second, func() bool {
		ps, err := c.Primaries(ctx)
		return err == nil && len(ps) == 3
	})
	if err := victim.StartAgain(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	rdb.ReloadState(ctx)
	for i := range 30 {
		if v, err := rdb.Get(ctx, fmt.Sprintf("k%d", i)).Int(); err != nil || v != i {
			t.Fatalf("k%d = %d, %v after the failover", i, v, err)
		}
	}
	ps, _ := c.Primaries(ctx)
	for _, p := range ps {
		if p == victim {
			t.Fatalf("%s is a primary again; it should have come back as a replica", victim.Addr)
		}
	}
}

// TestClusterMoveSlot: a slot moved to another primary takes its keys along.
func TestClusterMoveSlot(t *testing.T) {
	var sh Shared
	defer sh.Stop()
	c := sh.Get(t)
	rdb := c.Client()
	defer rdb.Close()
	ctx := Ctx(t, 30*time.Second)
	for i := range 5 {
		if err := rdb.Set(ctx, fmt.Sprintf("{m}%d", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	slot, err := c.KeySlot(ctx, "{m}")
	if err != nil {
		t.Fatal(err)
	}
	from, err := c.SlotOwner(ctx, slot)
	if err != nil {
		t.Fatal(err)
	}
	ps, _ := c.Primaries(ctx)
	to := ps[0]
	if to == from {
		to = ps[1]
	}
	if err := c.MoveSlot(ctx, slot, to); err != nil {
		t.Fatal(err)
	}
	WaitUntil(t, "every node sees the slot moved", 10*time.Second, func() bool {
		o, err := c.SlotOwner(ctx, slot)
		return err == nil && o == to
	})
	for i := range 5 {
		if v, err := rdb.Get(ctx, fmt.Sprintf("{m}%d", i)).Int(); err != nil || v != i {
			t.Fatalf("{m}%d = %d, %v after the move", i, v, err)
		}
	}
	cl := to.Client()
	defer cl.Close()
	if n, err := cl.ClusterCountKeysInSlot(ctx, slot).Result(); err != nil || n != 5 {
		t.Fatalf("%s holds %d keys of the slot (%v), want 5", to.Addr, n, err)
	}
}
