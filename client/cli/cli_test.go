package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/loopchat/loopchat/client"
	"github.com/loopchat/loopchat/internal/testnode"
	"github.com/loopchat/loopchat/server"
)

// The interactive prompt names the logged-in user, as the README shows, and
// goes back to "> " after a logout.
func TestPromptNamesTheUser(t *testing.T) {
	_, addr := testnode.Start(t, server.Options{})

	in := strings.NewReader("/register alice hunter2hunter2\n/login alice hunter2hunter2\n/ping\n/logout\n/ping\n")
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := Run(ctx, in, Options{Client: client.Options{Addr: addr}, Interactive: true, Out: &out}); err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	// Each prompt is printed before its line is read, so the prompts are,
	// in order: before register, before login, then logged in (before
	// /ping and /logout), then logged out (before /ping and end of input).
	var prompts []string
	for _, line := range strings.Split(out.String(), "\n") {
		if p, _, ok := strings.Cut(line, "> "); ok && !strings.Contains(p, " ") {
			prompts = append(prompts, p+">")
		}
	}
	want := []string{">", ">", "alice>", "alice>", ">", ">"}
	if strings.Join(prompts, " ") != strings.Join(want, " ") {
		t.Fatalf("prompts %q, want %q; output:\n%s", prompts, want, out.String())
	}
}
