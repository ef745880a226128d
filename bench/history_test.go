package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
)

// page builds a page of the conversation between users 1 and 2, newest
// first, with the given seqs.
func page(more bool, seqs ...uint64) *chatpb.HistoryPage {
	p := &chatpb.HistoryPage{HasMore: more}
	for i, s := range seqs {
		from, to := uint64(1), uint64(2)
		if i%2 == 1 {
			from, to = to, from
		}
		p.Messages = append(p.Messages, &chatpb.Message{Seq: s, FromUserId: from, ToUserId: to})
	}
	return p
}

func desc(hi, lo uint64) []uint64 {
	var s []uint64
	for x := hi; x >= lo && x > 0; x-- {
		s = append(s, x)
	}
	return s
}

// The checker is what makes the tiny run fail on a wrong page, so each way
// a page can be wrong must be caught, and right pages must pass.
func TestCheckPage(t *testing.T) {
	for _, c := range []struct {
		name        string
		p           *chatpb.HistoryPage
		top, before uint64
		wantErr     string // "" for a good page
	}{
		{"latest, full", page(true, desc(60, 11)...), 60, 0, ""},
		{"before, full", page(true, desc(54, 5)...), 60, 55, ""},
		{"before, down to seq 1", page(false, desc(50, 1)...), 60, 51, ""},
		{"short conversation, whole", page(false, desc(7, 1)...), 7, 0, ""},
		{"short conversation, before", page(false, desc(3, 1)...), 7, 4, ""},
		{"before 2", page(false, 1), 7, 2, ""},
		{"short page", page(true, desc(60, 12)...), 60, 0, "49 messages, want 50"},
		{"empty page", page(false), 60, 0, "0 messages, want 50"},
		{"gap", page(true, append(desc(60, 31), desc(29, 10)...)...), 60, 0, "has seq 29, want 30"},
		{"ascending", page(true, func() []uint64 { s := desc(60, 11); s[0], s[1] = s[1], s[0]; return s }()...), 60, 0, "has seq 59, want 60"},
		{"not the latest", page(true, desc(59, 10)...), 60, 0, "has seq 59, want 60"},
		{"not below before", page(true, desc(55, 6)...), 60, 55, "has seq 55, want 54"},
		{"has_more missing", page(false, desc(60, 11)...), 60, 0, "has_more false, want true"},
		{"has_more at seq 1", page(true, desc(50, 1)...), 60, 51, "has_more true, want false"},
		{"another user's message", func() *chatpb.HistoryPage {
			p := page(true, desc(60, 11)...)
			p.Messages[3].FromUserId = 9
			return p
		}(), 60, 0, "not between 1 and 2"},
	} {
		err := checkPage(c.p, 1, 2, c.top, c.before)
		switch {
		case c.wantErr == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("%s: error %v, want one saying %q", c.name, err, c.wantErr)
		}
	}
}

// A page before a random seq is full whenever the conversation has more
// than one page, and lies within the last seed seqs, which a conversation
// grown by earlier runs still keeps.
func TestRandomBefore(t *testing.T) {
	for _, c := range []struct{ top, seed, lo, hi uint64 }{
		{60, 60, 51, 60},
		{600, 60, 541, 600},
		{51, 51, 51, 51},
		{7, 7, 2, 7},
		{1, 1, 1, 1}, // no seq below 1: the page is empty, and checked as such
	} {
		seen := map[uint64]bool{}
		for range 1000 {
			b := randomBefore(c.top, c.seed)
			if b < c.lo || b > c.hi {
				t.Fatalf("top %d seed %d: before %d, want [%d, %d]", c.top, c.seed, b, c.lo, c.hi)
			}
			seen[b] = true
		}
		if uint64(len(seen)) != c.hi-c.lo+1 {
			t.Errorf("top %d seed %d: %d distinct befores in 1000, want all %d of [%d, %d]", c.top, c.seed, len(seen), c.hi-c.lo+1, c.lo, c.hi)
		}
	}
}

// Requests take turns: latest, before, from side 0, then from side 1.
func TestHistoryRequestTurns(t *testing.T) {
	cv := &conversation{top: 60}
	for k, want := range []struct {
		side   int
		latest bool
	}{{0, true}, {0, false}, {1, true}, {1, false}, {0, true}} {
		side, before := historyRequest(cv, k, 60)
		if side != want.side || (before == 0) != want.latest {
			t.Errorf("request %d: side %d before %d, want side %d latest %v", k, side, before, want.side, want.latest)
		}
	}
}

// The table's msgs/s column holds pages for history; the table says so.
func TestWriteTableSaysPages(t *testing.T) {
	var b strings.Builder
	WriteTable(&b, []Result{{Server: "gnet", Scenario: "chat"}})
	if strings.Contains(b.String(), "pages") {
		t.Fatalf("a chat table mentions pages:\n%s", b.String())
	}
	b.Reset()
	WriteTable(&b, []Result{{Server: "gnet", Scenario: "history"}})
	if !strings.Contains(b.String(), "History pages per second") {
		t.Fatalf("a history table does not say its msgs/s are pages:\n%s", b.String())
	}
}

// Once stop returns, the status line is cleared and nothing more is
// written, so the line printed next (seeded, step) starts a line.
func TestStartProgressStopsCleared(t *testing.T) {
	var out testproc.SyncBuffer
	cfg := &Config{Progress: &out, Server: "gnet"}
	stop := startProgress(cfg, func() string { return "status" })
	time.Sleep(1100 * time.Millisecond) // one status line
	stop()
	got := out.String()
	if !strings.Contains(got, "status") || !strings.HasSuffix(got, "\r\033[K") {
		t.Fatalf("progress wrote %q; want a status line, then the clear last", got)
	}
	time.Sleep(50 * time.Millisecond)
	if after := out.String(); after != got {
		t.Fatalf("progress wrote %q after stop returned", after[len(got):])
	}
}
