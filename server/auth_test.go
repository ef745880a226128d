package server

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/loopchat/loopchat/protocol"
)

// Tokens check out under concurrent use (the keyed HMAC states are pooled
// and reused), and any change to a token, another secret or expiry
// refuses it.
func TestTokensIssueAndVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tk := newTokens([]byte("secret one"), time.Hour)
	other := newTokens([]byte("secret two"), time.Hour)

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				uid := uint64(g*1000 + i + 1)
				tok, _ := tk.issue(User{ID: uid, Nonce: uid * 7}, now, "e1")
				got, nonce, err := tk.verify(tok, now.Add(time.Minute), "e1")
				if err != nil || got != uid || nonce != uid*7 {
					t.Errorf("verify(issue(%d)) = %d, %d, %v", uid, got, nonce, err)
					return
				}
			}
		})
	}
	wg.Wait()

	tok, expires := tk.issue(User{ID: 42, Nonce: 9}, now, "e1")
	if !expires.Equal(now.Add(time.Hour)) {
		t.Fatalf("expires %v, want %v", expires, now.Add(time.Hour))
	}
	parts := strings.Split(tok, ".")
	flipped := []byte(parts[2])
	flipped[0] ^= 'A' ^ 'B'
	for name, bad := range map[string]string{
		"other secret":    func() string { s, _ := other.issue(User{ID: 42, Nonce: 9}, now, "e1"); return s }(),
		"changed mac":     parts[0] + "." + parts[1] + "." + string(flipped),
		"changed payload": parts[0] + "." + parts[1][:len(parts[1])-1] + "A." + parts[2],
		"other version":   "v1." + parts[1] + "." + parts[2],
		"no mac":          parts[0] + "." + parts[1],
	} {
		if bad == tok {
			continue // the flip happened to be a no-op
		}
		if _, _, err := tk.verify(bad, now, "e1"); !errors.Is(err, ErrBadToken) {
			t.Errorf("%s: verify = %v, want ErrBadToken", name, err)
		}
	}
	if _, _, err := tk.verify(tok, now.Add(time.Hour), "e1"); err == nil {
		t.Error("a token at its expiry still verifies")
	}
	// The expiry reported is the one the token holds, to the second: it
	// verifies up to the millisecond before and not at it.
	odd := now.Add(1500 * time.Millisecond)
	tok2, exp2 := tk.issue(User{ID: 42, Nonce: 9}, odd, "e1")
	if exp2.UnixMilli()%1000 != 0 || exp2.After(odd.Add(time.Hour)) || exp2.Before(odd.Add(time.Hour-time.Second)) {
		t.Fatalf("expires %v for a token issued at %v", exp2, odd)
	}
	if _, _, err := tk.verify(tok2, exp2.Add(-time.Millisecond), "e1"); err != nil {
		t.Errorf("a token 1 ms before its reported expiry: %v", err)
	}
	if _, _, err := tk.verify(tok2, exp2, "e1"); err == nil {
		t.Error("a token at its reported expiry still verifies")
	}
	// A token names a user of one store: another epoch refuses it.
	if _, _, err := tk.verify(tok, now, "e2"); !errors.Is(err, ErrBadToken) {
		t.Errorf("a token of epoch e1 under e2: verify = %v, want ErrBadToken", err)
	}
}

// Hashes made before pre-hashing (plain bcrypt of the password) keep
// verifying, and a password longer than bcrypt reads cannot match them
// through its first 72 bytes.
func TestHasherAcceptsLegacyHashes(t *testing.T) {
	h := newHasher(bcrypt.MinCost, 1)
	for _, pw := range []string{"hunter2hunter2", strings.Repeat("x", 72)} {
		legacy, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		if !h.check(legacy, pw) {
			t.Errorf("legacy hash of %d bytes does not verify", len(pw))
		}
		if h.check(legacy, pw+"?") {
			t.Errorf("legacy hash of %d bytes matches a longer password", len(pw))
		}
	}
}

// Every password the protocol allows hashes and verifies, every byte of it
// counts, and an unknown user (nil hash) never matches.
func TestHasherLongPasswords(t *testing.T) {
	h := newHasher(bcrypt.MinCost, 2)
	for n := protocol.MinPassword; n <= protocol.MaxPassword; n++ {
		pw := strings.Repeat("p", n)
		hash, err := h.hash(pw)
		if err != nil {
			t.Fatalf("hash of %d bytes: %v", n, err)
		}
		if !h.check(hash, pw) {
			t.Fatalf("hash of %d bytes does not verify", n)
		}
		if h.check(hash, pw[:n-1]+"q") {
			t.Fatalf("%d bytes: a password differing in its last byte verifies", n)
		}
	}
	prefix := strings.Repeat("s", 72)
	a, b := prefix+"-first-password-tail", prefix+"-other-password-tail"
	hashA, err := h.hash(a)
	if err != nil {
		t.Fatal(err)
	}
	if h.check(hashA, b) || h.check(hashA, prefix) {
		t.Fatal("passwords sharing their first 72 bytes are interchangeable")
	}
	if h.check(nil, a) {
		t.Fatal("a nil hash matched")
	}
}
