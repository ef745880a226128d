package server

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxGuarded bounds how many source addresses the login guard remembers.
const maxGuarded = 1 << 16

// loginGuard slows password guessing. Each source address — the client's
// own, from a trusted PROXY header, with IPv6 counted per /64 since one
// host holds a whole one — may fail a password login `burst` times, and
// earns one more try every `every`; past that its password logins are
// refused before any hashing until it has earned one. Token logins and
// successful logins are never counted, so a login storm of real users is
// unaffected. The count is per node: behind a load balancer an address
// gets this allowance on each node.
type loginGuard struct {
	every time.Duration // zero: no guard
	burst int

	mu      sync.Mutex
	buckets map[netip.Prefix]*rate.Limiter
}

func newLoginGuard(perMinute int) *loginGuard {
	if perMinute <= 0 {
		return &loginGuard{}
	}
	return &loginGuard{every: time.Minute / time.Duration(perMinute), burst: perMinute,
		buckets: make(map[netip.Prefix]*rate.Limiter)}
}

// source is the address a remote "host:port" is counted under; ok is false
// when it cannot be parsed (a unix socket, say), which is never limited.
func source(remote string) (netip.Prefix, bool) {
	a, ok := hostOf(remote) // with a port, or without (X-Forwarded-For)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, err := a.Prefix(bits)
	return p, err == nil
}

// allow reports whether remote may try a password now.
func (g *loginGuard) allow(remote string, now time.Time) bool {
	if g.every == 0 {
		return true
	}
	key, ok := source(remote)
	if !ok {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	l := g.buckets[key]
	return l == nil || l.TokensAt(now) >= 1
}

// failed counts a wrong password (or unknown user) from remote.
func (g *loginGuard) failed(remote string, now time.Time) {
	if g.every == 0 {
		return
	}
	key, ok := source(remote)
	if !ok {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	l := g.buckets[key]
	if l == nil {
		if len(g.buckets) >= maxGuarded {
			// Full of addresses still failing: the new one goes
			// uncounted rather than forgetting one that is guessing.
			return
		}
		l = rate.NewLimiter(rate.Every(g.every), g.burst)
		g.buckets[key] = l
	}
	l.AllowN(now, 1)
}

// forget drops addresses whose allowance has grown back in full: they are
// as good as never seen, and the map stays as small as the guessing is.
func (g *loginGuard) forget(now time.Time) {
	if g.every == 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, l := range g.buckets {
		if l.TokensAt(now) >= float64(g.burst) {
			delete(g.buckets, k)
		}
	}
}
