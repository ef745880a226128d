package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// liveBytes is what a loopchat server's Go runtime holds live right
// after a collection — heap objects plus goroutine stacks — asked of
// its admin server (--admin-addr): a heap profile with gc=1 runs the
// collection, then /metrics tells the two. Unlike the resident size it
// does not depend on when the runtime last collected or gave pages back
// to the kernel, which at a few thousand connections moves the resident
// size more than the connections do. Objects, not spans in use: the
// connections' objects fill the holes the setup's garbage left in
// partly used spans, so the spans grew by less than the connections hold
// (102 B/conn in one run at 400 WebSocket connections, 1.1-1.5 KiB in
// the next three).
func liveBytes(ctx context.Context, admin string) (int64, error) {
	// Twice: what sync.Pools hold (gnet's buffers, the transports' out
	// buffers) survives one collection as the pools' victims, and only
	// the second frees it.
	for range 2 {
		if err := adminGet(ctx, admin, "/debug/pprof/heap?gc=1", nil); err != nil {
			return 0, err
		}
	}
	var heap, stack int64
	err := adminGet(ctx, admin, "/metrics", func(r io.Reader) error {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			name, value, ok := strings.Cut(sc.Text(), " ")
			if !ok {
				continue
			}
			var dst *int64
			switch name {
			case "go_memstats_heap_alloc_bytes":
				dst = &heap
			case "go_memstats_stack_inuse_bytes":
				dst = &stack
			default:
				continue
			}
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				return fmt.Errorf("bench: %s %q: %w", name, value, err)
			}
			*dst = int64(v)
		}
		return sc.Err()
	})
	if err == nil && heap == 0 {
		err = fmt.Errorf("bench: %s/metrics has no go_memstats_heap_alloc_bytes", admin)
	}
	return heap + stack, err
}

// adminGet fetches path from the admin server and hands the body to read
// (nil: discard it).
func adminGet(ctx context.Context, admin, path string, read func(io.Reader) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("bench: server admin: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("bench: server admin %s: %s", path, resp.Status)
	}
	if read == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	return read(resp.Body)
}
