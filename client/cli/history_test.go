package cli

import (
	"fmt"
	"slices"
	"testing"
)

// The line history keeps what was typed, but no password.
func TestLineHistoryDropsPasswords(t *testing.T) {
	var h lineHistory
	for _, l := range []string{"/login alice secret one", "/msg bob hi", "/msg bob hi", "/register carol pw", "/register carol", "  "} {
		h.Add(l)
	}
	var got []string
	for i := range h.Len() {
		got = append(got, h.At(i))
	}
	want := []string{"/register carol", "/msg bob hi", "/login alice"} // newest first, no repeats
	if !slices.Equal(got, want) {
		t.Fatalf("history %q, want %q", got, want)
	}
	for i := range historySize + 5 {
		h.Add(fmt.Sprint("line ", i))
	}
	if h.Len() != historySize || h.At(0) != fmt.Sprint("line ", historySize+4) || h.At(historySize-1) != "line 5" {
		t.Fatalf("history of %d lines, from %q to %q", h.Len(), h.At(historySize-1), h.At(0))
	}
}
