package server

import "testing"

// The tuner's decisions, fed readings directly: raise GOGC while garbage
// comes fast, come down gradually without putting the goal under the heap
// already held, and collect only once the node is idle.
func TestGCTunerPacesByLoad(t *testing.T) {
	const mib = 1 << 20
	var set []int
	collected := 0
	g := newGCTuner(64 * mib)
	g.setPercent = func(p int) int { set = append(set, p); return 0 }
	g.collect = func() { collected++ }

	// 16 MiB live; 64 MiB/s of garbage is busy: the next collection 64 MiB
	// above the live heap is GOGC 400.
	g.step(gcReading{rate: 64 * mib, live: 16 * mib, heap: 20 * mib})
	if g.percent != 400 || len(set) != 1 || set[0] != 400 {
		t.Fatalf("busy: GOGC %d (set %v), want 400", g.percent, set)
	}
	// A tiny live heap cannot push GOGC past the cap.
	g.step(gcReading{rate: 64 * mib, live: 1 * mib, heap: 2 * mib})
	if g.percent != gcMaxPercent {
		t.Fatalf("busy with 1 MiB live: GOGC %d, want the cap %d", g.percent, gcMaxPercent)
	}
	g.step(gcReading{rate: 64 * mib, live: 16 * mib, heap: 20 * mib})

	// Calmer (2 MiB/s against 16 MiB live) with 60 MiB of heap held: halving
	// 400 to 200 would put the goal (48 MiB) under it, so GOGC stops at
	// the floor that keeps the goal above 60 MiB.
	g.step(gcReading{rate: 2 * mib, live: 16 * mib, heap: 60 * mib})
	if goal := 16 * (100 + g.percent) / 100; g.percent >= 400 || goal < 60 {
		t.Fatalf("calmer: GOGC %d, goal %d MiB; want below 400 with the goal at least the 60 MiB held", g.percent, goal)
	}
	// With the heap collected down, calm halves on to the default.
	for range 5 {
		g.step(gcReading{rate: 2 * mib, live: 16 * mib, heap: 18 * mib})
	}
	if g.percent != gcDefaultPercent || collected != 0 {
		t.Fatalf("calm: GOGC %d, %d collections; want %d and none", g.percent, collected, gcDefaultPercent)
	}

	// Idle after busy: nothing for a while, then one collection and GOGC 100.
	g.step(gcReading{rate: 64 * mib, live: 16 * mib, heap: 20 * mib})
	for i := range g.idleFor - 1 {
		g.step(gcReading{rate: 0, live: 16 * mib, heap: 70 * mib})
		if collected != 0 || g.percent == gcDefaultPercent {
			t.Fatalf("idle tick %d: GOGC %d, %d collections; want it held until idle for %d ticks", i, g.percent, collected, g.idleFor)
		}
	}
	g.step(gcReading{rate: 0, live: 16 * mib, heap: 70 * mib})
	if g.percent != gcDefaultPercent || collected != 1 {
		t.Fatalf("idle: GOGC %d, %d collections; want %d and one", g.percent, collected, gcDefaultPercent)
	}
	// Staying idle collects no more.
	g.step(gcReading{rate: 0, live: 16 * mib, heap: 20 * mib})
	if collected != 1 {
		t.Fatalf("still idle: %d collections, want 1", collected)
	}
}
