package main

import (
	"strconv"
	"strings"
)

// screen renders terminal output the way a terminal shows it, so tests can
// say what is on the screen (which line holds what, where the cursor is)
// rather than grep a stream of escape codes. It knows the little of VT100
// that golang.org/x/term's Terminal writes: printable text with autowrap,
// CR, LF, backspace, cursor moves (CSI n A/B/C/D, CSI H), erase to the end
// of the line (CSI K) and of the screen (CSI 2J); other sequences are
// skipped. The screen never scrolls: lines only accumulate.
type screen struct {
	width    int
	lines    [][]rune
	row, col int
}

func render(out string, width int) *screen {
	s := &screen{width: width, lines: [][]rune{nil}}
	rs := []rune(out)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case r == 0x1b && i+1 < len(rs) && rs[i+1] == '[':
			j := i + 2
			for j < len(rs) && (rs[j] >= '0' && rs[j] <= '9' || rs[j] == ';' || rs[j] == '?') {
				j++
			}
			if j == len(rs) {
				return s // cut in the middle: the rest is still coming
			}
			s.csi(string(rs[i+2:j]), rs[j])
			i = j
		case r == 0x1b:
			i++ // a two-character escape
		case r == '\r':
			s.col = 0
		case r == '\n':
			s.moveTo(s.row+1, s.col)
		case r == '\b':
			s.col = max(s.col-1, 0)
		case r < 0x20:
		default:
			if s.col >= s.width {
				s.moveTo(s.row+1, 0)
			}
			line := s.lines[s.row]
			for len(line) <= s.col {
				line = append(line, ' ')
			}
			line[s.col] = r
			s.lines[s.row] = line
			s.col++
		}
	}
	return s
}

func (s *screen) csi(params string, final rune) {
	n := 1
	if v, err := strconv.Atoi(strings.TrimPrefix(params, "?")); err == nil && v > 0 {
		n = v
	}
	switch final {
	case 'A':
		s.moveTo(max(s.row-n, 0), s.col)
	case 'B':
		s.moveTo(s.row+n, s.col)
	case 'C':
		s.col = min(s.col+n, s.width)
	case 'D':
		s.col = max(s.col-n, 0)
	case 'K':
		if s.col < len(s.lines[s.row]) {
			s.lines[s.row] = s.lines[s.row][:s.col]
		}
	case 'J':
		if params == "2" {
			s.lines, s.row, s.col = [][]rune{nil}, 0, 0
		}
	case 'H':
		s.row, s.col = 0, 0
	}
}

func (s *screen) moveTo(row, col int) {
	for len(s.lines) <= row {
		s.lines = append(s.lines, nil)
	}
	s.row, s.col = row, col
}

// cursorLine is the line the cursor is on, as shown.
func (s *screen) cursorLine() string { return strings.TrimRight(string(s.lines[s.row]), " ") }

// above is the line n lines above the cursor's.
func (s *screen) above(n int) string {
	if s.row-n < 0 {
		return ""
	}
	return strings.TrimRight(string(s.lines[s.row-n]), " ")
}

func (s *screen) String() string {
	out := make([]string, len(s.lines))
	for i, l := range s.lines {
		out[i] = strings.TrimRight(string(l), " ")
	}
	return strings.Join(out, "\n")
}
