package cli

import "testing"

// What others wrote reaches the terminal without its control characters.
func TestCleanKeepsControlsOffTheTerminal(t *testing.T) {
	for in, want := range map[string]string{
		"hello, wörld\n":             "hello, wörld\n",
		"tab\tand\nnewline":          "tab\tand\nnewline",
		"\x1b[2Jgone\rover":          "^[[2Jgone^Mover",
		"bell\a del\x7f":             "bell^G del^?",
		"c1 \u009b31m csi":           "c1 \uFFFD31m csi",
		"bad \xff utf-8":             "bad \uFFFD utf-8",
		"\x1b]0;title\x07 osc":       "^[]0;title^G osc",
		"nothing to do at all, 行 ok": "nothing to do at all, 行 ok",
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}
