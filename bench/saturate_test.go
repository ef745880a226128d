package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A closed loop never has more than the window in flight per sender,
// sends again as slots come back, and stops when the time is up.
func TestClosedLoopKeepsWindow(t *testing.T) {
	const senders, window = 3, 2
	f := newInFlight(senders, window)
	var inflight [senders]atomic.Int32
	var worst [senders]atomic.Int32
	var sent atomic.Int64
	var wg sync.WaitGroup
	took := closedLoop(context.Background(), f, 200*time.Millisecond, func(i, k int, _ time.Time) {
		n := inflight[i].Add(1)
		for {
			w := worst[i].Load()
			if n <= w || worst[i].CompareAndSwap(w, n) {
				break
			}
		}
		sent.Add(1)
		wg.Go(func() { // the "server": done a moment later
			time.Sleep(time.Millisecond)
			inflight[i].Add(-1)
			f.release(i)
		})
	})
	wg.Wait()
	if took < 200*time.Millisecond || took > 2*time.Second {
		t.Errorf("ran %v for 200ms", took)
	}
	for i := range worst {
		if w := worst[i].Load(); w > window {
			t.Errorf("sender %d had %d in flight, window %d", i, w, window)
		}
	}
	// ~1 ms per message, two at a time, three senders, 200 ms: hundreds;
	// a loop that did not reuse slots would stop at 6.
	if n := sent.Load(); n < 10*senders*window {
		t.Errorf("sent %d: slots given back were not reused", n)
	}
}

// With nothing released each sender sends its window and waits; a
// cancelled context ends the wait early.
func TestClosedLoopWaitsForSlotsAndStopsOnCancel(t *testing.T) {
	f := newInFlight(4, 3)
	ctx, cancel := context.WithCancel(context.Background())
	var sent atomic.Int64
	time.AfterFunc(50*time.Millisecond, cancel)
	took := closedLoop(ctx, f, time.Minute, func(int, int, time.Time) { sent.Add(1) })
	if took > 10*time.Second {
		t.Fatalf("a cancelled loop ran %v", took)
	}
	if sent.Load() != 4*3 {
		t.Fatalf("sent %d with no slot ever released, want 4 senders × window 3", sent.Load())
	}
}

// A chat message gives its slot back only when it has both its SendOK and
// its delivery (or failed), and only once.
func TestPairSettleNeedsSendOKAndDelivery(t *testing.T) {
	f := newInFlight(1, 2)
	f.slots[0] <- struct{}{}
	f.slots[0] <- struct{}{}
	p := &pair{}
	p.mark(&p.sentOK, 0)
	p.settle(f, 0, 0, false)
	if len(f.slots[0]) != 2 {
		t.Fatalf("released on SendOK alone")
	}
	p.got = []uint8{1}
	p.settle(f, 0, 0, false)
	p.settle(f, 0, 0, false) // a duplicate delivery
	if len(f.slots[0]) != 1 {
		t.Fatalf("%d slots held after message 0 was done (twice), want 1", len(f.slots[0]))
	}
	p.settle(f, 0, 1, true) // message 1 failed: nothing more will come for it
	if len(f.slots[0]) != 0 {
		t.Fatalf("a failed message kept its slot")
	}
	p.settle(f, 0, 1, true) // and releasing more than was taken never blocks
	p.settle(nil, 0, 2, true)
}

// Saturate and Step are different measurements; asking for both is an
// error, not a silent choice.
func TestSteppedRefusesSaturateWithStep(t *testing.T) {
	cfg := Config{Saturate: true, Step: true}
	if _, err := stepped(context.Background(), &cfg, "chat", func(float64) (Result, error) {
		t.Fatal("measured")
		return Result{}, nil
	}); err == nil {
		t.Fatal("no error")
	}
}
