package cli

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/loopchat/loopchat/client"
	"github.com/loopchat/loopchat/internal/testnode"
	"github.com/loopchat/loopchat/internal/testproc"
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

// /history shows a conversation oldest first with its seqs, in --json too.
func TestHistoryCommand(t *testing.T) {
	_, addr := testnode.Start(t, server.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	run := func(script string) string { return runJSON(ctx, t, addr, script) }
	run("/register bob hunter2hunter2\n")
	run("/register alice hunter2hunter2\n/login alice hunter2hunter2\n/msg bob one\n/msg bob two\n/msg bob three\n")
	out := run("/login bob hunter2hunter2\n/history alice 2\n/history alice\n/history group 99\n/history\n")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var responses []string
	for _, l := range lines {
		if strings.Contains(l, `"event":"response"`) && strings.Contains(l, `"cmd":"history"`) {
			responses = append(responses, l)
		}
	}
	if len(responses) != 4 {
		t.Fatalf("want 4 history responses, got:\n%s", out)
	}
	if !strings.Contains(responses[0], `"has_more":true`) ||
		!strings.Contains(responses[0], `{"from":"alice","msg_id":`) ||
		strings.Index(responses[0], `"text":"two"`) > strings.Index(responses[0], `"text":"three"`) ||
		strings.Contains(responses[0], `"text":"one"`) {
		t.Fatalf("/history alice 2: %s", responses[0])
	}
	if !strings.Contains(responses[1], `"has_more":false`) || !strings.Contains(responses[1], `"seq":1,`) {
		t.Fatalf("/history alice: %s", responses[1])
	}
	if !strings.Contains(responses[2], `"code":"not_found"`) {
		t.Fatalf("/history group 99: %s", responses[2])
	}
	if !strings.Contains(responses[3], `"code":"usage"`) {
		t.Fatalf("/history: %s", responses[3])
	}
}

// /read marks a conversation read; the peer's client shows the receipt.
func TestReadCommand(t *testing.T) {
	_, addr := testnode.Start(t, server.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	run := func(script string) string { return runJSON(ctx, t, addr, script) }
	run("/register bob hunter2hunter2\n/register alice hunter2hunter2\n")
	// alice stays connected while bob reads: her client prints the receipt.
	var aliceOut testproc.SyncBuffer
	aliceDone := make(chan error, 1)
	go func() {
		aliceDone <- Run(ctx, strings.NewReader("/login alice hunter2hunter2\n/msg bob one\n/msg bob two\n/wait 5s\n"),
			Options{Client: client.Options{Addr: addr}, JSON: true, Out: &aliceOut})
	}()
	testproc.WaitUntil(t, "alice's two messages", 10*time.Second, func() bool {
		return strings.Count(aliceOut.String(), `"cmd":"msg","ok":true`) == 2
	})
	bobOut := run("/login bob hunter2hunter2\n/read alice 2\n/read nobody 1\n/read alice\n")
	if !strings.Contains(bobOut, `"cmd":"read","ok":true`) || !strings.Contains(bobOut, `"code":"not_found"`) || !strings.Contains(bobOut, `"code":"usage"`) {
		t.Fatalf("bob's /read:\n%s", bobOut)
	}
	testproc.WaitUntil(t, "alice's receipt", 5*time.Second, func() bool {
		return strings.Contains(aliceOut.String(), `{"event":"read","peer_user_id":`)
	})
	if out := aliceOut.String(); !strings.Contains(out, `"up_to_seq":2`) {
		t.Fatalf("alice's receipt is not up to 2:\n%s", out)
	}
	cancel() // alice's /wait need not run out
	<-aliceDone
}

// /conversations lists the conversations newest first, with unread counts
// and the last message, in --json too; N bounds it.
func TestConversationsCommand(t *testing.T) {
	_, addr := testnode.Start(t, server.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	run := func(script string) string { return runJSON(ctx, t, addr, script) }
	run("/register bob hunter2hunter2\n/register carol hunter2hunter2\n")
	run("/register alice hunter2hunter2\n/login alice hunter2hunter2\n/msg bob one\n/msg bob two\n/wait 5ms\n/msg carol hi\n")
	out := run("/login bob hunter2hunter2\n/read alice 1\n/conversations\n/conversations 1\n/conversations 0\n/conversations x y\n")
	var responses []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.Contains(l, `"cmd":"conversations"`) {
			responses = append(responses, l)
		}
	}
	if len(responses) != 4 {
		t.Fatalf("want 4 conversations responses, got:\n%s", out)
	}
	want := `{"event":"response","cmd":"conversations","ok":true,"conversations":[{"last_message":{"from":"alice","msg_id":`
	if !strings.HasPrefix(responses[0], want) || !strings.Contains(responses[0], `"text":"two"},"last_seq":2,"peer_user_id":`) ||
		!strings.Contains(responses[0], `"peer_username":"alice","read_seq":1,"unread":1}],"has_more":false}`) {
		t.Fatalf("/conversations: %s", responses[0])
	}
	// Alice has two; the one with carol is the newer.
	aliceOut := run("/login alice hunter2hunter2\n/conversations 1\n")
	if !strings.Contains(aliceOut, `"peer_username":"carol"`) || strings.Contains(aliceOut, `"peer_username":"bob"`) ||
		!strings.Contains(aliceOut, `"has_more":true`) {
		t.Fatalf("alice's /conversations 1:\n%s", aliceOut)
	}
	if !strings.Contains(responses[1], `"has_more":false`) || !strings.Contains(responses[2], `"code":"usage"`) ||
		!strings.Contains(responses[3], `"code":"usage"`) {
		t.Fatalf("bob's other /conversations:\n%s", strings.Join(responses[1:], "\n"))
	}
	// The human form names the peer, the unread count and the last message.
	var human bytes.Buffer
	if err := Run(ctx, strings.NewReader("/login bob hunter2hunter2\n/conversations\n"), Options{Client: client.Options{Addr: addr}, Out: &human}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(human.String(), "1 conversations\n  alice (user ") || !strings.Contains(human.String(), ", 1 unread — #2 [") ||
		!strings.Contains(human.String(), "] alice: two") {
		t.Fatalf("human /conversations:\n%s", human.String())
	}
}

// runJSON runs a script against addr with --json and returns its output.
func runJSON(ctx context.Context, t *testing.T, addr, script string) string {
	t.Helper()
	var out bytes.Buffer
	if err := Run(ctx, strings.NewReader(script), Options{Client: client.Options{Addr: addr}, JSON: true, Out: &out}); err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	return out.String()
}

// With --device-id, a user's devices each get what the user sends from the
// other, shown as the user's own.
func TestDeviceIDShowsOwnMessagesFromOtherDevices(t *testing.T) {
	_, addr := testnode.Start(t, server.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	device := func(id, script string) string {
		t.Helper()
		var out bytes.Buffer
		if err := Run(ctx, strings.NewReader(script), Options{Client: client.Options{Addr: addr, DeviceID: id}, JSON: true, Out: &out}); err != nil {
			t.Fatalf("Run: %v\n%s", err, out.String())
		}
		return out.String()
	}
	runJSON(ctx, t, addr, "/register bob hunter2hunter2\n/register alice hunter2hunter2\n")
	device("laptop", "/login alice hunter2hunter2\n") // the laptop is known from now on
	if out := device("phone", "/login alice hunter2hunter2\n/msg bob from the phone\n"); !strings.Contains(out, `"cmd":"msg","ok":true`) {
		t.Fatalf("the phone's send:\n%s", out)
	}
	out := device("laptop", "/login alice hunter2hunter2\n/wait 500ms\n")
	if !strings.Contains(out, `"event":"message"`) || !strings.Contains(out, `"own":true`) || !strings.Contains(out, `"text":"from the phone"`) {
		t.Fatalf("the laptop did not show alice's own message from the phone:\n%s", out)
	}
}

// A friend's presence changes show as events (human and --json), /friends
// shows the last seen, and /presence hides or shows the user's own.
func TestPresenceEventsAndCommand(t *testing.T) {
	_, addr := testnode.Start(t, server.Options{PresenceGrace: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	run := func(script string) string { return runJSON(ctx, t, addr, script) }
	run("/register alice hunter2hunter2\n/register bob hunter2hunter2\n/login bob hunter2hunter2\n/friend add alice\n")
	time.Sleep(500 * time.Millisecond) // bob's grace: he is offline before alice comes

	var aliceOut, aliceHuman testproc.SyncBuffer
	done := make(chan error, 2)
	go func() {
		done <- Run(ctx, strings.NewReader("/login alice hunter2hunter2\n/wait 10s\n"),
			Options{Client: client.Options{Addr: addr}, JSON: true, Out: &aliceOut})
	}()
	go func() {
		done <- Run(ctx, strings.NewReader("/login alice hunter2hunter2\n/wait 10s\n"),
			Options{Client: client.Options{Addr: addr, DeviceID: "human"}, Out: &aliceHuman})
	}()
	testproc.WaitUntil(t, "alice logged in twice", 10*time.Second, func() bool {
		return strings.Contains(aliceOut.String(), `"cmd":"login","ok":true`) && strings.Contains(aliceHuman.String(), "logged in as alice")
	})
	run("/login bob hunter2hunter2\n")
	testproc.WaitUntil(t, "bob online, then offline", 5*time.Second, func() bool {
		return strings.Contains(aliceOut.String(), `{"event":"presence","online":true,"user_id":`) &&
			strings.Contains(aliceOut.String(), `{"event":"presence","last_seen_ms":`) &&
			strings.Contains(aliceHuman.String(), "bob is online\n") && strings.Contains(aliceHuman.String(), "bob went offline (last seen ")
	})
	if out := aliceOut.String(); !strings.Contains(out, `"online":false,"user_id":`) || !strings.Contains(out, `"username":"bob"}`) {
		t.Fatalf("alice's presence events:\n%s", out)
	}

	var human bytes.Buffer
	if err := Run(ctx, strings.NewReader("/login alice hunter2hunter2\n/friends\n"), Options{Client: client.Options{Addr: addr, DeviceID: "list"}, Out: &human}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(human.String(), "1 friends\n  bob (user ") || !strings.Contains(human.String(), ") — (last seen ") {
		t.Fatalf("human /friends:\n%s", human.String())
	}
	out := run("/login bob hunter2hunter2\n/presence hidden\n/presence maybe\n/logout\n/login bob hunter2hunter2\n/presence visible\n")
	if !strings.Contains(out, `{"event":"response","cmd":"presence","ok":true,"visible":false}`) || !strings.Contains(out, `"code":"usage"`) ||
		!strings.Contains(out, `"presence_hidden":true`) || !strings.Contains(out, `{"event":"response","cmd":"presence","ok":true,"visible":true}`) {
		t.Fatalf("bob's /presence:\n%s", out)
	}
	cancel()
	<-done
	<-done
}

// /typing tells the peer or the group, whose client shows it (human and
// --json); a bad target is an error.
func TestTypingCommandAndEvents(t *testing.T) {
	_, addr := testnode.Start(t, server.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	run := func(script string) string { return runJSON(ctx, t, addr, script) }
	run("/register alice hunter2hunter2\n/register bob hunter2hunter2\n")
	out := run("/login alice hunter2hunter2\n/group create g\n")
	if !strings.Contains(out, `"group_id":1`) {
		t.Fatalf("group create:\n%s", out)
	}
	var bobJSON, bobHuman testproc.SyncBuffer
	done := make(chan error, 2)
	// bob's two devices: one joins the group (once is enough: the user is
	// the member), and both wait.
	for i, buf := range []*testproc.SyncBuffer{&bobJSON, &bobHuman} {
		script := "/login bob hunter2hunter2\n/wait 10s\n"
		if i == 0 {
			script = "/login bob hunter2hunter2\n/group join 1\n/wait 10s\n"
		}
		go func() {
			done <- Run(ctx, strings.NewReader(script),
				Options{Client: client.Options{Addr: addr, DeviceID: fmt.Sprint("d", i)}, JSON: i == 0, Out: buf})
		}()
	}
	testproc.WaitUntil(t, "bob in the group, on two devices", 10*time.Second, func() bool {
		return strings.Contains(bobJSON.String(), `"cmd":"group join","ok":true`) && strings.Contains(bobHuman.String(), "logged in as bob")
	})
	out = run("/login alice hunter2hunter2\n/typing bob\n/typing group 1\n/typing nobody\n/typing\n/typing group x\n")
	if strings.Count(out, `{"event":"response","cmd":"typing","ok":true}`) != 2 || !strings.Contains(out, `"code":"not_found"`) ||
		strings.Count(out, `"code":"usage"`) != 2 {
		t.Fatalf("alice's /typing:\n%s", out)
	}
	testproc.WaitUntil(t, "bob sees alice typing", 5*time.Second, func() bool {
		return strings.Contains(bobJSON.String(), `{"event":"typing","user_id":1,"username":"alice"}`) &&
			strings.Contains(bobJSON.String(), `{"event":"typing","group_id":1,"user_id":1,"username":"alice"}`) &&
			strings.Contains(bobHuman.String(), "alice is typing…\n") && strings.Contains(bobHuman.String(), "alice is typing in group 1…\n")
	})
	cancel()
	<-done
	<-done
}

// /unfriend ends a friendship: neither lists the other after, a second
// /unfriend is the server's NOT_FOUND, and a name is needed.
func TestUnfriendCommand(t *testing.T) {
	_, addr := testnode.Start(t, server.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	runJSON(ctx, t, addr, "/register alice hunter2hunter2\n/register bob hunter2hunter2\n/login bob hunter2hunter2\n/friend add alice\n")
	out := runJSON(ctx, t, addr, "/login alice hunter2hunter2\n/unfriend bob\n/unfriend bob\n/unfriend\n/friends\n")
	for _, want := range []string{
		`{"event":"response","cmd":"unfriend","ok":true}`,
		`{"event":"response","cmd":"unfriend","ok":false,"error":{"code":"not_found","message":"not friends"}}`,
		`"code":"usage"`,
		`{"event":"response","cmd":"friends","ok":true,"friends":[]}`,
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("alice's script lacks %s:\n%s", want, out)
		}
	}
	var human bytes.Buffer
	if err := Run(ctx, strings.NewReader("/login bob hunter2hunter2\n/friends\n"), Options{Client: client.Options{Addr: addr}, Out: &human}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(human.String(), "0 friends") {
		t.Fatalf("bob's /friends:\n%s", human.String())
	}
}

// /block refuses messages both ways (the server's PERMISSION_DENIED),
// /blocked lists, /unblock lifts it.
func TestBlockCommands(t *testing.T) {
	_, addr := testnode.Start(t, server.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	runJSON(ctx, t, addr, "/register alice hunter2hunter2\n/register bob hunter2hunter2\n")
	out := runJSON(ctx, t, addr, "/login alice hunter2hunter2\n/block bob\n/blocked\n/msg bob hello\n/unblock bob\n/unblock bob\n/block\n/blocked\n")
	for _, want := range []string{
		`{"event":"response","cmd":"block","ok":true}`,
		`{"event":"response","cmd":"blocked","ok":true,"users":[{"user_id":2,"username":"bob"}]}`,
		`{"event":"response","cmd":"msg","ok":false,"error":{"code":"permission_denied"`,
		`{"event":"response","cmd":"unblock","ok":true}`,
		`{"event":"response","cmd":"unblock","ok":false,"error":{"code":"not_found"`,
		`"message":"usage: /block USERNAME"`,
		`{"event":"response","cmd":"blocked","ok":true,"users":[]}`,
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("alice's script lacks %s:\n%s", want, out)
		}
	}
	var human bytes.Buffer
	if err := Run(ctx, strings.NewReader("/login bob hunter2hunter2\n/block alice\n/blocked\n"), Options{Client: client.Options{Addr: addr}, Out: &human}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(human.String(), "1 blocked\n  alice (user 1)") {
		t.Fatalf("bob's /blocked:\n%s", human.String())
	}
}
