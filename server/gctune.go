package server

import (
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"time"
)

// gcTuner paces the garbage collector by load. With Go's default GOGC of
// 100 a busy node collects whenever its heap doubles: at 10,000 chat
// messages/s with an ~18 MiB live heap about once a second, and each
// collection marks for 10–14 ms on the CPU the event loops need, which is
// most of the chat p99 (docs/BENCHMARKS.md). While garbage comes fast
// (faster than a quarter of the live heap per second) the tuner lets the
// heap grow a fixed headroom above the live heap. When the rate falls it
// lowers GOGC step by step, never below what the heap already holds (a
// goal under the current heap would start a collection at once, with the
// allocating goroutines — event loops among them — made to assist). Only
// when the node is idle does it collect, so an idle node is as small as
// with the default.
type gcTuner struct {
	headroom uint64        // bytes of garbage allowed over the live heap while busy
	tick     time.Duration // how often the allocation rate is sampled
	idleRate float64       // bytes/s below which the node counts as idle
	idleFor  int           // ticks idle before collecting and settling at GOGC 100

	// setPercent and collect act on the runtime (debug.SetGCPercent,
	// runtime.GC); tests watch them instead.
	setPercent func(int) int
	collect    func()

	samples []rtmetrics.Sample
	allocs  uint64
	at      time.Time
	percent int // the GOGC in force; gcDefaultPercent when not raised
	idle    int // consecutive idle ticks
}

const (
	gcDefaultPercent = 100
	gcMaxPercent     = 1000
)

func newGCTuner(headroom uint64) *gcTuner {
	return &gcTuner{
		headroom: headroom, tick: 250 * time.Millisecond, idleRate: 256 << 10, idleFor: 8,
		samples: []rtmetrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/live:bytes"},
			{Name: "/memory/classes/heap/objects:bytes"}},
		percent: gcDefaultPercent, setPercent: debug.SetGCPercent, collect: runtime.GC,
	}
}

// run samples until stop closes, then leaves GOGC at 100.
func (g *gcTuner) run(stop <-chan struct{}) {
	t := time.NewTicker(g.tick)
	defer t.Stop()
	defer g.set(gcDefaultPercent)
	g.read(time.Now())
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			g.step(g.read(now))
		}
	}
}

// gcReading is one sample: allocation rate (bytes/s), live heap after the
// last collection, and the heap's current size (live and dead objects).
type gcReading struct {
	rate       float64
	live, heap uint64
}

func (g *gcTuner) read(now time.Time) gcReading {
	rtmetrics.Read(g.samples)
	allocs := g.samples[0].Value.Uint64()
	r := gcReading{live: max(g.samples[1].Value.Uint64(), 1<<20), heap: g.samples[2].Value.Uint64()}
	if dt := now.Sub(g.at).Seconds(); dt > 0 && !g.at.IsZero() {
		r.rate = float64(allocs-g.allocs) / dt
	}
	g.allocs, g.at = allocs, now
	return r
}

func (g *gcTuner) step(r gcReading) {
	// Lowering GOGC below floor would put the goal under the heap the
	// node already holds.
	floor := clampPercent(int(r.heap*100/r.live) - 100 + 10)
	switch {
	case r.rate > float64(r.live)/4:
		// Busy: the next collection headroom above the live heap.
		g.idle = 0
		g.set(max(clampPercent(int(g.headroom*100/r.live)), min(floor, g.percent)))
	case r.rate < g.idleRate:
		if g.percent == gcDefaultPercent {
			return
		}
		if g.idle++; g.idle >= g.idleFor {
			// Idle: collect now and hand the headroom back, the goal
			// at twice the live heap again.
			g.set(gcDefaultPercent)
			g.collect()
		}
	default:
		// Calmer but not idle: halve, keeping the goal above the heap.
		g.idle = 0
		g.set(max(clampPercent(g.percent/2), min(floor, g.percent)))
	}
}

func clampPercent(p int) int { return min(max(p, gcDefaultPercent), gcMaxPercent) }

// set changes GOGC when p differs enough from the one in force to matter.
func (g *gcTuner) set(p int) {
	if p == g.percent || (p != gcDefaultPercent && p > g.percent*9/10 && p < g.percent*11/10) {
		return
	}
	g.setPercent(p)
	g.percent = p
}
