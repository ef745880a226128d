package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/term"

	"github.com/loopchat/loopchat/client"
	chatpb "github.com/loopchat/loopchat/proto"
)

// interactiveUsage is what /help adds to Usage on a terminal.
const interactiveUsage = `
On a terminal, also:
/open USERNAME|group GROUP_ID  talk there: lines not starting with / are sent to it
                               (start one with // to send it with a /)
/close                         stop talking there
/history [N], /read, /typing   with no USERNAME or group: the open conversation
/read USERNAME|group GROUP_ID  without SEQ: all of it
/login USERNAME, /register USERNAME  ask for the password, without echo
Tab completes commands and names; Up and Down recall lines; Ctrl-D on an
empty line, Ctrl-C or /quit leaves.`

// connStatus is what the prompt says about the connection.
type connStatus int

const (
	connected    connStatus = iota
	reconnecting            // the SDK is redialing with the token
	offline                 // it gave up; the next command dials afresh
)

// target is a conversation: a peer by name, or a group.
type target struct {
	peer  string
	group uint64
}

func (t target) none() bool { return t.peer == "" && t.group == 0 }

func (t target) String() string {
	if t.group != 0 {
		return fmt.Sprintf("group %d", t.group)
	}
	return t.peer
}

// args names the conversation as commands take it.
func (t target) args() []string {
	if t.group != 0 {
		return []string{"group", strconv.FormatUint(t.group, 10)}
	}
	return []string{t.peer}
}

// parseTarget reads "USERNAME" or "group GROUP_ID" from the start of args.
func parseTarget(args []string) (t target, rest []string, ok bool) {
	switch {
	case len(args) >= 2 && args[0] == "group":
		gid, err := strconv.ParseUint(args[1], 10, 64)
		return target{group: gid}, args[2:], err == nil && gid != 0
	case len(args) >= 1 && args[0] != "group":
		return target{peer: args[0]}, args[1:], true
	}
	return target{}, args, false
}

// console is the interactive mode: a shell whose output goes through
// term.Terminal, which redraws the line being typed under each push, with
// a conversation to talk in, passwords asked without echo, completion,
// typing notices, and a prompt that says who you are, where you talk and
// how the connection is.
type console struct {
	sh     *shell
	t      *term.Terminal
	opts   Options
	names  *nameSet
	typist *typist
	seen   typingSeen

	reads chan readRequest // to the goroutine reading the terminal
	lines chan readResult
	done  chan struct{} // closed when the console stops
	bg    sync.WaitGroup

	// mu guards what follows, and sh.c for other goroutines. It may be
	// held while calling into the Terminal (SetPrompt), never taken with
	// the Terminal's lock held: the Terminal releases its lock around
	// the completion callback and History calls.
	mu     sync.Mutex
	conv   target
	status connStatus
	dead   bool           // sh.c is gone for good: the next command redials
	quiet  *client.Client // kicked for not logging in in time: say nothing of it
}

func newConsole(t *term.Terminal, c *client.Client, opts Options) *console {
	k := &console{t: t, opts: opts, names: newNameSet(), typist: newTypist(),
		reads: make(chan readRequest, 1), lines: make(chan readResult), done: make(chan struct{})}
	k.sh = &shell{c: c, opts: opts, out: cleanWriter{t}, names: k.names, watch: k.watch}
	t.History = &lineHistory{}
	t.AutoCompleteCallback = k.key
	k.bg.Add(1)
	go func() {
		defer k.bg.Done()
		k.typist.run(k.done)
	}()
	// Not waited for by stop: it may be blocked reading input that will
	// never come, and ends with the process.
	go k.reader()
	k.start(c)
	return k
}

// start shows c's events until it is closed.
func (k *console) start(c *client.Client) {
	k.bg.Add(1)
	go func() {
		defer k.bg.Done()
		k.sh.pushes(c)
	}()
}

// stop closes the connection and waits for the console's goroutines but
// the terminal's reader.
func (k *console) stop() {
	close(k.done)
	k.mu.Lock()
	c := k.sh.c
	k.mu.Unlock()
	c.Close()
	k.bg.Wait()
}

func (k *console) println(line string) { k.sh.println(line) }

// client is the current connection, for goroutines other than the one
// running commands.
func (k *console) client() *client.Client {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.sh.c
}

// setPrompt makes the prompt "alice> ", "alice → bob> ",
// "(reconnecting…) alice> ", or "> " before logging in. It is set under
// k.mu so that a prompt made from older state cannot replace a newer one.
func (k *console) setPrompt() {
	k.mu.Lock()
	defer k.mu.Unlock()
	var b strings.Builder
	switch k.status {
	case reconnecting:
		b.WriteString("(reconnecting…) ")
	case offline:
		b.WriteString("(offline) ")
	}
	b.WriteString(clean(k.sh.c.Username()))
	if !k.conv.none() {
		b.WriteString(" → " + clean(k.conv.String()))
	}
	b.WriteString("> ")
	k.t.SetPrompt(b.String())
}

// redraw puts the current prompt on the screen: at once if a line is
// being typed (term.Terminal repaints it on any Write), else at the next.
func (k *console) redraw() {
	k.setPrompt()
	_, _ = k.t.Write(nil)
}

func (k *console) setStatus(s connStatus) {
	k.mu.Lock()
	k.status = s
	k.mu.Unlock()
	k.redraw()
}

// handle runs one line typed at the prompt.
func (k *console) handle(ctx context.Context, line string) {
	if !strings.HasPrefix(line, "/") || strings.HasPrefix(line, "//") {
		k.say(ctx, strings.TrimPrefix(line, "/")) // "//shrug" says "/shrug"
		return
	}
	name, args := parse(line)
	k.mu.Lock()
	conv := k.conv
	k.mu.Unlock()
	switch name {
	case "help":
		k.println(Usage + interactiveUsage)
		return
	case "open":
		k.open(ctx, args)
		return
	case "close":
		k.mu.Lock()
		k.conv = target{}
		k.mu.Unlock()
		if !conv.none() {
			k.println("closed the conversation with " + conv.String())
		}
		return
	case "login", "register":
		if len(args) == 1 {
			k.askPassword(ctx, name, args[0])
			return
		}
	case "history", "typing":
		// "/history", "/history 50": the open conversation.
		if !conv.none() && (len(args) == 0 || name == "history" && len(args) == 1 && isNumber(args[0])) {
			args = append(conv.args(), args...)
		}
	case "read":
		k.markRead(ctx, conv, args)
		return
	}
	k.exec(ctx, name, args, line)
}

func isNumber(s string) bool {
	_, err := strconv.ParseUint(s, 10, 64)
	return err == nil
}

// exec runs a command and prints its outcome.
func (k *console) exec(ctx context.Context, name string, args []string, line string) {
	k.sh.report(k.call(ctx, name, args, line))
}

// call runs a command on a live connection: one that died for good is
// replaced first. A command of someone not logged in that meets a
// connection closing under it is tried once more on a new one: the server
// closes connections that do not log in within 10 s, and a person may
// well take longer than that to type their password.
func (k *console) call(ctx context.Context, name string, args []string, line string) result {
	if err := k.connect(ctx); err != nil {
		return result{name: name, err: err}
	}
	anon := k.sh.c.UserID() == 0
	r := k.sh.do(ctx, name, args, line)
	if anon && (errors.Is(r.err, client.ErrDisconnected) || errors.Is(r.err, client.ErrClosed)) {
		k.mu.Lock()
		k.dead = true
		k.mu.Unlock()
		if err := k.connect(ctx); err != nil {
			return result{name: name, err: err}
		}
		r = k.sh.do(ctx, name, args, line)
	}
	return r
}

// connect dials a new connection if the current one died for good.
func (k *console) connect(ctx context.Context) error {
	k.mu.Lock()
	dead := k.dead
	k.mu.Unlock()
	if !dead {
		return nil
	}
	c, err := client.Dial(ctx, k.opts.Client)
	if err != nil {
		return fmt.Errorf("cannot connect: %w", err)
	}
	k.mu.Lock()
	old := k.sh.c
	k.sh.c, k.dead, k.status = c, false, connected
	k.mu.Unlock()
	old.Close() // after the swap: its last events are no longer the current ones
	k.start(c)
	return nil
}

// askPassword runs /login or /register USERNAME, asking for the password
// without echo (twice for a new account).
func (k *console) askPassword(ctx context.Context, name, user string) {
	pw, err := k.readPassword(ctx, "password for "+user+": ")
	if err != nil {
		k.println(name + " cancelled")
		return
	}
	if name == "register" {
		again, err := k.readPassword(ctx, "the same password again: ")
		if err != nil {
			k.println(name + " cancelled")
			return
		}
		if again != pw {
			k.println("the passwords differ; not registered")
			return
		}
	}
	k.exec(ctx, name, []string{user, pw}, "")
}

// open makes a conversation the one plain lines go to, and shows its
// latest messages; a conversation that cannot be read is not opened.
func (k *console) open(ctx context.Context, args []string) {
	t, rest, ok := parseTarget(args)
	if !ok || len(rest) > 0 {
		k.println("usage: /open USERNAME or /open group GROUP_ID")
		return
	}
	r := k.call(ctx, "history", append(t.args(), "10"), "")
	k.sh.report(r)
	if r.err != nil {
		return
	}
	k.mu.Lock()
	k.conv = t
	k.mu.Unlock()
	k.typist.reset()
	k.println("talking to " + t.String() + ": lines not starting with / go there; /close to stop")
}

// say sends a line to the open conversation.
func (k *console) say(ctx context.Context, text string) {
	k.mu.Lock()
	conv := k.conv
	k.mu.Unlock()
	if conv.none() {
		k.println("no conversation open: /open USERNAME (or group GROUP_ID) first, or /msg USERNAME TEXT; /help lists commands")
		return
	}
	words := strings.Fields(text)
	var r result
	if conv.group != 0 {
		r = k.call(ctx, "group msg", append(conv.args()[1:], words...), "/group msg "+conv.args()[1]+" "+text)
	} else {
		r = k.call(ctx, "msg", append(conv.args(), words...), "/msg "+conv.peer+" "+text)
	}
	k.typist.reset()
	if r.err != nil {
		k.sh.report(r)
		return
	}
	// The line typed stays on the screen as the record of what was sent;
	// repeat only what it does not say.
	if online, _ := r.fields["online"].(bool); !online && conv.group == 0 {
		k.println(conv.peer + " is offline: stored until they log in")
	}
}

// markRead runs /read: without a seq, up to the conversation's latest message.
func (k *console) markRead(ctx context.Context, conv target, args []string) {
	if len(args) == 0 && !conv.none() {
		args = conv.args()
	}
	t, rest, ok := parseTarget(args)
	if ok && len(rest) == 0 {
		if err := k.connect(ctx); err != nil {
			k.sh.report(result{name: "read", err: err})
			return
		}
		req, _ := historyRequest(append(t.args(), "1"))
		page, err := k.sh.c.History(ctx, req)
		if err != nil {
			k.sh.report(result{name: "read", err: err})
			return
		}
		if len(page.GetMessages()) == 0 {
			k.println("nothing to read with " + t.String())
			return
		}
		args = append(t.args(), strconv.FormatUint(page.Messages[0].Seq, 10))
	}
	k.exec(ctx, "read", args, "")
}

// key sees each key the terminal does not handle itself, on the reader
// goroutine: Tab completes; a printable key in a message being typed
// tells the conversation.
func (k *console) key(line string, pos int, key rune) (string, int, bool) {
	if key == '\t' {
		me := k.client().Username()
		names := slices.DeleteFunc(k.names.list(), func(n string) bool { return n == me })
		newLine, newPos, list := complete(line, pos, names)
		if list != nil {
			k.println("  " + strings.Join(list, "  "))
		}
		return newLine, newPos, newLine != line || newPos != pos
	}
	if key < ' ' || strings.HasPrefix(line, "/") || line == "" && key == '/' {
		return "", 0, false
	}
	k.mu.Lock()
	conv, c := k.conv, k.sh.c
	k.mu.Unlock()
	if conv.none() || c.UserID() == 0 {
		return "", 0, false
	}
	req := &chatpb.Typing{GroupId: conv.group}
	if conv.group == 0 {
		req.PeerUsername = conv.peer
	}
	k.typist.keypress(c, req)
	return "", 0, false
}
