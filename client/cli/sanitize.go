package cli

import (
	"io"
	"strings"
	"unicode/utf8"
)

// cleanWriter writes to a terminal what others wrote (messages, names,
// group descriptions) without the control characters in it: an escape
// sequence in a message must not clear the screen, move the cursor or
// retitle the window, and a carriage return must not overwrite the line
// it is on. C0 controls show in caret notation (ESC as ^[), C1 controls
// and invalid UTF-8 as U+FFFD; newlines and tabs stay. Each Write must be
// whole lines: term.Terminal redraws the prompt after each.
type cleanWriter struct{ w io.Writer }

func (c cleanWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(c.w, clean(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// clean replaces the control characters of s but newline and tab.
func clean(s string) string {
	i := strings.IndexFunc(s, needsCleaning)
	if i < 0 && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for _, r := range s {
		switch {
		case r == '\n' || r == '\t':
			b.WriteRune(r)
		case r < 0x20:
			b.WriteByte('^')
			b.WriteByte(byte(r) + '@')
		case r == 0x7f:
			b.WriteString("^?")
		case r >= 0x80 && r < 0xa0:
			b.WriteRune(utf8.RuneError)
		default:
			b.WriteRune(r) // an invalid byte came as RuneError already
		}
	}
	return b.String()
}

func needsCleaning(r rune) bool {
	return r < 0x20 && r != '\n' && r != '\t' || r >= 0x7f && r < 0xa0
}
