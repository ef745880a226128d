package cli

import (
	"slices"
	"strings"
	"unicode/utf8"
)

// commands are what Tab completes at the start of a line.
var commands = []string{
	"/block", "/blocked", "/close", "/conversations", "/friend", "/friends", "/group", "/groups", "/help", "/history",
	"/login", "/logout", "/msg", "/open", "/ping", "/presence", "/quit", "/read", "/register",
	"/typing", "/unblock", "/unfriend", "/wait",
}

// subcommands complete a command's first argument.
var subcommands = map[string][]string{
	"/friend":   {"add"},
	"/group":    {"create", "join", "leave", "msg"},
	"/presence": {"hidden", "visible"},
}

// takesTarget: commands whose first argument is a user or "group".
var takesTarget = map[string]bool{"/msg": true, "/history": true, "/read": true, "/typing": true, "/open": true}

// complete is what Tab does to line with the cursor at byte pos: the word
// before the cursor is completed from the commands, the subcommands or
// names, depending on where it stands. One match is put in whole, with a
// space after it; several are put in as far as they agree, and when they
// do not agree on even one more character they are returned in list for
// the caller to show. Nothing to do leaves the line as it was.
func complete(line string, pos int, names []string) (newLine string, newPos int, list []string) {
	start := strings.LastIndexAny(line[:pos], " \t") + 1
	word := line[start:pos]
	before := strings.Fields(line[:start])
	var cands []string
	switch {
	case len(before) == 0 && strings.HasPrefix(word, "/"):
		cands = commands
	case len(before) == 0 || !strings.HasPrefix(before[0], "/"):
		// A name in the text of a message ("thanks bo<Tab>").
		if word == "" {
			return line, pos, nil
		}
		cands = names
	case len(before) == 1 && subcommands[before[0]] != nil:
		cands = subcommands[before[0]]
	case len(before) == 1 && takesTarget[before[0]]:
		cands = append(slices.Clip(names), "group")
	case len(before) == 2 && before[0] == "/friend" && before[1] == "add",
		len(before) == 1 && (before[0] == "/unfriend" || before[0] == "/block" || before[0] == "/unblock"):
		cands = names
	}
	var matches []string
	for _, c := range cands {
		if strings.HasPrefix(c, word) && !slices.Contains(matches, c) {
			matches = append(matches, c)
		}
	}
	switch len(matches) {
	case 0:
		return line, pos, nil
	case 1:
		ins := matches[0]
		if pos == len(line) || line[pos] != ' ' {
			ins += " "
		}
		return line[:start] + ins + line[pos:], start + len(ins), nil
	}
	common := matches[0]
	for _, m := range matches[1:] {
		for !strings.HasPrefix(m, common) {
			common = common[:len(common)-1]
		}
	}
	for !utf8.ValidString(common) { // cut inside a character
		common = common[:len(common)-1]
	}
	if len(common) > len(word) {
		return line[:start] + common + line[pos:], start + len(common), nil
	}
	return line, pos, matches
}
