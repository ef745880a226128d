package server

import (
	"testing"
	"time"
)

func TestLoginGuard(t *testing.T) {
	g := newLoginGuard(3) // three failures a minute: one back every 20 s
	now := time.Unix(1_700_000_000, 0)
	const guesser = "192.0.2.7:40000"
	for i := range 3 {
		if !g.allow(guesser, now) {
			t.Fatalf("attempt %d refused within the allowance", i+1)
		}
		g.failed(guesser, now)
	}
	if g.allow(guesser, now) {
		t.Fatal("a fourth password try allowed after three failures")
	}
	if g.allow("192.0.2.7:40001", now) {
		t.Fatal("a new connection (another port) from the guessing address was allowed")
	}
	if !g.allow("192.0.2.8:40000", now) {
		t.Fatal("a neighbouring address was refused for the guesser's failures")
	}
	if g.allow(guesser, now.Add(19*time.Second)) {
		t.Fatal("a try earned back before 20 s")
	}
	if !g.allow(guesser, now.Add(20*time.Second)) {
		t.Fatal("no try earned back after 20 s")
	}

	// IPv6: one host holds a /64, so the /64 is counted as one address.
	for range 3 {
		g.failed("[2001:db8:1:2::a]:5000", now)
	}
	if g.allow("[2001:db8:1:2:ffff::1]:6000", now) {
		t.Fatal("another address in the guesser's /64 was allowed")
	}
	if !g.allow("[2001:db8:1:3::a]:5000", now) {
		t.Fatal("the next /64 was refused")
	}
	// IPv4-mapped IPv6 is the IPv4 address.
	if g.allow("[::ffff:192.0.2.7]:1", now) {
		t.Fatal("the guesser came back as IPv4-mapped IPv6 and was allowed")
	}

	if !g.allow("not-an-address", now) {
		t.Fatal("an unparsable remote is never limited")
	}
	g.failed("not-an-address", now)

	g.forget(now.Add(30 * time.Second))
	if len(g.buckets) != 2 {
		t.Fatalf("forget kept %d addresses, want the 2 still short of a full allowance", len(g.buckets))
	}
	g.forget(now.Add(time.Minute))
	if len(g.buckets) != 0 {
		t.Fatalf("forget kept %d addresses whose allowance is back in full", len(g.buckets))
	}

	off := newLoginGuard(-1)
	for range 100 {
		off.failed(guesser, now)
	}
	if !off.allow(guesser, now) {
		t.Fatal("a disabled guard refused")
	}
}
