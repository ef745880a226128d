package cli

import "strings"

// historySize is how many typed lines Up and Down go back through.
const historySize = 100

// lineHistory is the terminal's line history (term.History) without
// passwords: "/login alice secret" is kept as "/login alice", which,
// recalled and run, asks for the password without echo. It is only in
// memory; nothing typed is written to disk.
type lineHistory struct {
	lines []string // oldest first
}

func (h *lineHistory) Add(line string) {
	line = withoutPassword(line)
	if line == "" || len(h.lines) > 0 && h.lines[len(h.lines)-1] == line {
		return // Up should not step through the same line twice
	}
	if len(h.lines) == historySize {
		h.lines = append(h.lines[:0], h.lines[1:]...)
	}
	h.lines = append(h.lines, line)
}

func (h *lineHistory) Len() int { return len(h.lines) }

// At is the idx-th most recent line (0 is the last one).
func (h *lineHistory) At(idx int) string { return h.lines[len(h.lines)-1-idx] }

// withoutPassword drops the password of a /login or /register line.
func withoutPassword(line string) string {
	words := strings.Fields(line)
	if len(words) > 2 && (words[0] == "/login" || words[0] == "/register") {
		return words[0] + " " + words[1]
	}
	return strings.TrimSpace(line)
}
