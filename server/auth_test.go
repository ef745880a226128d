package server

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
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
				tok, _ := tk.issue(uid, now)
				got, err := tk.verify(tok, now.Add(time.Minute))
				if err != nil || got != uid {
					t.Errorf("verify(issue(%d)) = %d, %v", uid, got, err)
					return
				}
			}
		})
	}
	wg.Wait()

	tok, expires := tk.issue(42, now)
	if !expires.Equal(now.Add(time.Hour)) {
		t.Fatalf("expires %v, want %v", expires, now.Add(time.Hour))
	}
	parts := strings.Split(tok, ".")
	flipped := []byte(parts[2])
	flipped[0] ^= 'A' ^ 'B'
	for name, bad := range map[string]string{
		"other secret":    func() string { s, _ := other.issue(42, now); return s }(),
		"changed mac":     parts[0] + "." + parts[1] + "." + string(flipped),
		"changed payload": parts[0] + "." + parts[1][:len(parts[1])-1] + "A." + parts[2],
		"other version":   "v2." + parts[1] + "." + parts[2],
		"no mac":          parts[0] + "." + parts[1],
	} {
		if bad == tok {
			continue // the flip happened to be a no-op
		}
		if _, err := tk.verify(bad, now); !errors.Is(err, ErrBadToken) {
			t.Errorf("%s: verify = %v, want ErrBadToken", name, err)
		}
	}
	if _, err := tk.verify(tok, now.Add(time.Hour)); err == nil {
		t.Error("a token at its expiry still verifies")
	}
}
