package server

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// walChildDir tells the test binary it runs as the child of
// TestWALFailedWritesLeaveNothingToReplay, in that directory.
const walChildDir = "LOOPCHAT_WAL_FAIL_DIR"

// Writes that fail for real — here the file size limit (RLIMIT_FSIZE),
// as a full disk would — leave nothing a restart would replay, and no
// empty segments behind; the log carries on once writes succeed again.
// The limit is per process, so the test runs in a child of its own.
func TestWALFailedWritesLeaveNothingToReplay(t *testing.T) {
	dir := os.Getenv(walChildDir)
	if dir == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestWALFailedWritesLeaveNothingToReplay$", "-test.v")
		cmd.Env = append(os.Environ(), walChildDir+"="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestWALFailedWritesLeaveNothingToReplay") {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	// Past the limit write(2) fails with EFBIG instead of the process
	// being killed by SIGXFSZ.
	signal.Ignore(syscall.SIGXFSZ)
	const limit = 8192
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = limit
	if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}

	l, err := createWAL(dir, 1, 1<<20) // preallocating 1 MiB fails too, harmlessly
	if err != nil {
		t.Fatal(err)
	}
	batch := func(name string, n, size int) []byte {
		var buf []byte
		for i := range n {
			msg := name + strings.Repeat(".", size) + string(rune('0'+i))
			buf = appendWALRecord(buf, &walRecord{message: []byte(msg), recipients: []uint64{2}})
		}
		return buf
	}
	var want []string
	ok := func(name string, n, size int) {
		t.Helper()
		if _, err := l.write(batch(name, n, size)); err != nil {
			t.Fatalf("batch %s: %v", name, err)
		}
		for i := range n {
			want = append(want, name+strings.Repeat(".", size)+string(rune('0'+i)))
		}
	}
	fails := func(name string, n, size int) {
		t.Helper()
		if _, err := l.write(batch(name, n, size)); !errors.Is(err, errLogWrite) {
			t.Fatalf("batch %s past the limit: %v, want errLogWrite", name, err)
		}
	}
	size := func(seg uint64) int64 {
		st, err := os.Stat(segmentPath(dir, seg))
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}

	ok("a", 3, 1000)
	ok("b", 3, 1000)
	answered := l.pos.off
	fails("c", 3, 1000) // crosses the limit: part of it reaches the file
	if got := size(1); got != answered {
		t.Fatalf("segment 1 is %d bytes after the failed batch, want its answered %d", got, answered)
	}
	ok("d", 1, 1000) // a fresh segment
	if l.pos.seg != 2 {
		t.Fatalf("wrote on in segment %d after a failure, want 2", l.pos.seg)
	}
	fails("e", 1, 9000)
	fails("f", 1, 9000) // the first write of segment 3 fails: no segment 3 is left
	fails("f", 1, 9000)
	if segs, _ := listSegments(dir); !slices.Equal(segs, []uint64{1, 2}) {
		t.Fatalf("segments after failed first writes: %v, want [1 2]", segs)
	}
	ok("g", 1, 1000)
	if got := replayAll(t, dir); !slices.Equal(got, want) {
		t.Fatalf("replay has %d records, want the %d answered ones:\n%q", len(got), len(want), got)
	}
}
