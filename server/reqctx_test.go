package server

import (
	"context"
	"testing"
)

// A session's requests share its epoch and sender contexts while the
// deadline they derive from holds, and get fresh ones when it or the
// logged-in user changes.
func TestRequestCtxFollowsDeadlineAndUser(t *testing.T) {
	var r requestCtx
	base1, cancel := context.WithCancel(context.Background())
	defer cancel()
	base2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	alice := &sessionUser{id: 1, epoch: "e1", from: sender{device: "phone", conn: 7}}
	bob := &sessionUser{id: 2, epoch: "e2", from: sender{device: "laptop", conn: 7}}

	a := r.of(base1, alice)
	if requestEpoch(a) != "e1" {
		t.Fatalf("epoch %q", requestEpoch(a))
	}
	if again := r.of(base1, alice); again != a {
		t.Fatal("same deadline and user: a new context")
	}
	s := r.withSender(a, alice)
	if from, ok := sendingDevice(s); !ok || from.device != "phone" || requestEpoch(s) != "e1" {
		t.Fatalf("sender %+v %v, epoch %q", from, ok, requestEpoch(s))
	}
	if r.withSender(a, alice) != s {
		t.Fatal("same context: a new sender context")
	}
	if _, ok := sendingDevice(a); ok {
		t.Fatal("the epoch context names a sender")
	}

	b := r.of(base2, alice)
	if b == a || requestEpoch(b) != "e1" {
		t.Fatal("a new deadline kept the old context")
	}
	if sb := r.withSender(b, alice); sb == s {
		t.Fatal("a new deadline kept the old sender context")
	}
	c := r.of(base2, bob)
	if requestEpoch(c) != "e2" {
		t.Fatalf("another user: epoch %q", requestEpoch(c))
	}
	if from, _ := sendingDevice(r.withSender(c, bob)); from.device != "laptop" {
		t.Fatalf("another user: sender %+v", from)
	}
	// A context the cache did not make gets its own sender.
	if from, _ := sendingDevice(r.withSender(base1, alice)); from.device != "phone" {
		t.Fatalf("foreign context: sender %+v", from)
	}
}
