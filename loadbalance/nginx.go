package loadbalance

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// renderUpstream is the include file for a set of node addresses: one
// `server` line each, inside the operator's `upstream` block. With no node
// in rotation it names a placeholder marked down, because nginx refuses an
// upstream with no servers; clients then get a closed connection.
func renderUpstream(addrs []string, params string, now time.Time) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Rendered by `loopchat lb` at %s. Do not edit: it is rewritten\n", now.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "# whenever the set of healthy nodes changes.\n")
	if len(addrs) == 0 {
		fmt.Fprintf(&b, "server 127.0.0.1:1 down; # no healthy node\n")
	}
	for _, a := range addrs {
		fmt.Fprintf(&b, "server %s %s;\n", a, params)
	}
	return b.Bytes()
}

// readUpstream is the node addresses in an include renderUpstream wrote
// (the placeholder marked down is none); ok is false when the file cannot
// be read.
func readUpstream(path string) (addrs []string, ok bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(strings.ReplaceAll(line, ";", " ; "))
		if len(f) < 2 || f[0] != "server" || slices.Contains(f, "down") {
			continue
		}
		addrs = append(addrs, f[1])
	}
	return addrs, true
}

// writeAtomic replaces path with data so that nginx never reads half a
// file: write a temporary file beside it, fsync, rename. It returns the
// previous content (nil if none) for a rollback.
func writeAtomic(path string, data []byte) (previous []byte, err error) {
	previous, err = os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return nil, err
	}
	return previous, os.Rename(tmp.Name(), path)
}

// nginx runs the nginx binary against one main configuration file.
type nginx struct {
	bin  string
	conf string
}

func (n nginx) run(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.bin, append([]string{"-c", n.conf, "-e", "stderr"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nginx %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// test runs `nginx -t`: the whole configuration, include included, is valid.
func (n nginx) test(ctx context.Context) error { return n.run(ctx, "-t", "-q") }

// reload asks the running master (found by the conf's pid file) to reload.
func (n nginx) reload(ctx context.Context) error { return n.run(ctx, "-s", "reload") }
