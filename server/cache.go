package server

import "sync"

// idCache remembers facts that never change within one store epoch (a
// user's id and name): no entry goes stale until the store itself is reset,
// when reset forgets them all (epoch.go). It is bounded: past maxCached it
// starts over.
type idCache[K comparable, V any] struct {
	mu  sync.RWMutex
	m   map[K]V
	gen uint64 // counts the times it started over
}

const maxCached = 1 << 18

func (c *idCache[K, V]) get(k K) (V, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	v, ok := c.m[k]
	return v, ok
}

func (c *idCache[K, V]) put(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCached {
		c.m = make(map[K]V)
		c.gen++
	}
	c.m[k] = v
}

// generation is what putIfAbsent checks.
func (c *idCache[K, V]) generation() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gen
}

// putIfAbsent stores v, read from where put's values go, unless k has a
// value already (a newer one, put while v was read) or the cache started
// over since generation gen (taking such a value with it).
func (c *idCache[K, V]) putIfAbsent(k K, v V, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	if _, ok := c.m[k]; ok {
		return
	}
	if c.m == nil || len(c.m) >= maxCached {
		c.m = make(map[K]V)
		c.gen++
	}
	c.m[k] = v
}

// reset forgets every entry.
func (c *idCache[K, V]) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = nil
	c.gen++
}
