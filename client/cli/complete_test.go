package cli

import (
	"slices"
	"strings"
	"testing"
)

// Tab completes the word before the cursor from what fits where it
// stands; "|" marks the cursor in these cases.
func TestComplete(t *testing.T) {
	names := []string{"bob", "bobby", "carol", "zoë", "zoé"}
	for _, tc := range []struct {
		line, want string
		list       []string
	}{
		{line: "/op|", want: "/open |"},
		{line: "/hi|", want: "/history |"},
		{line: "/fr|", want: "/friend|"}, // /friend and /friends agree that far
		{line: "/friend|", want: "/friend|", list: []string{"/friend", "/friends"}},
		{line: "/g|", want: "/group|"},
		{line: "/group j|", want: "/group join |"},
		{line: "/friend a|", want: "/friend add |"},
		{line: "/friend add c|", want: "/friend add carol |"},
		{line: "/presence h|", want: "/presence hidden |"},
		{line: "/unf|", want: "/unfriend |"},
		{line: "/unfriend c|", want: "/unfriend carol |"},
		{line: "/unfriend g|", want: "/unfriend g|"}, // a user, never a group
		{line: "/bl|", want: "/block|"},              // /block and /blocked agree that far
		{line: "/block z|", want: "/block zo|"},
		{line: "/unb|", want: "/unblock |"},
		{line: "/unblock b|", want: "/unblock bob|"},
		{line: "/msg c|", want: "/msg carol |"},
		{line: "/msg b|", want: "/msg bob|"},
		{line: "/msg bob|", want: "/msg bob|", list: []string{"bob", "bobby"}},
		{line: "/msg bobb|", want: "/msg bobby |"},
		{line: "/open g|", want: "/open group |"},
		{line: "/history |", want: "/history |", list: []string{"bob", "bobby", "carol", "zoë", "zoé", "group"}},
		{line: "/msg c| hello", want: "/msg carol| hello"}, // a space is there already
		{line: "/msg carol hel|", want: "/msg carol hel|"}, // the text of a message is not a name's place
		{line: "/x|", want: "/x|"},
		{line: "/ping |", want: "/ping |"},
		{line: "thanks ca|", want: "thanks carol |"}, // a name in a message to the open conversation
		{line: "thanks |", want: "thanks |"},
		{line: "|", want: "|"},
		{line: "/msg zo|", want: "/msg zo|", list: []string{"zoë", "zoé"}}, // not cut inside ë or é
	} {
		pos := strings.Index(tc.line, "|")
		line := strings.Replace(tc.line, "|", "", 1)
		gotLine, gotPos, list := complete(line, pos, names)
		got := gotLine[:gotPos] + "|" + gotLine[gotPos:]
		if got != tc.want || !slices.Equal(list, tc.list) {
			t.Errorf("complete(%q) = %q, list %q; want %q, list %q", tc.line, got, list, tc.want, tc.list)
		}
	}
}
