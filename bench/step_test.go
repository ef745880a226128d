package bench

import (
	"context"
	"testing"
	"time"
)

// Step climbs ×1.5 until a rate fails, then narrows the gap to the last
// rate that held, and reports the best that held.
func TestSteppedRefinesBetweenHeldAndFailed(t *testing.T) {
	cfg := Config{Rate: 1000, Step: true, Refine: 2, P99Bound: 10 * time.Millisecond}
	var tried []float64
	best, err := stepped(context.Background(), &cfg, "fake", func(rate float64) (Result, error) {
		tried = append(tried, rate)
		r := Result{Scenario: "fake", OfferedRate: rate, MsgsPerSec: rate, P99ms: 1}
		if rate > 4500 {
			r.P99ms = 50
		}
		return r, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{1000, 1500, 2250, 3375, 5062.5, 4218.75, 4640.625}
	if len(tried) != len(want) {
		t.Fatalf("tried %v, want %v", tried, want)
	}
	for i := range want {
		if tried[i] != want[i] {
			t.Fatalf("tried %v, want %v", tried, want)
		}
	}
	if best.OfferedRate != 4218.75 {
		t.Fatalf("best = %v, want 4218.75 (4640 failed)", best.OfferedRate)
	}
}
