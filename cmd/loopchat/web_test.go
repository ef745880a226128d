package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/loopchat/loopchat/client"
	"github.com/loopchat/loopchat/internal/testproc"
)

// These tests drive the web page (--web, docs/web.md) in Debian's headless
// chromium through chromedp, as people would: typing into the page's forms
// and reading what it shows. Each person is a tab in a browser context of
// its own (its own storage, like another browser). On failure every page
// is saved as a screenshot, with its console, in a directory the log names
// ($LOOPCHAT_TEST_ARTIFACTS, else loopchat-web-failures in the temp dir);
// LOOPCHAT_WEB_SCREENSHOTS=1 saves them after a pass too, to look at.

// browser is one headless chromium for a test.
type browser struct {
	t     *testing.T
	ctx   context.Context
	mu    sync.Mutex
	pages []*page
	saved bool // the pages were saved: once per test
}

func startBrowser(t *testing.T) *browser {
	t.Helper()
	bin := testproc.Need(t, "chromium", "chromium-browser", "google-chrome")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.NoSandbox, // root in CI; the pages are our own
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 800),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-pings", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	return &browser{t: t, ctx: ctx}
}

// page is one person's tab.
type page struct {
	t    *testing.T
	b    *browser
	name string
	ctx  context.Context
	mu   sync.Mutex
	logs []string // the page's console
}

func (b *browser) page(name string) *page {
	b.t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext())
	if err := chromedp.Do(ctx); err != nil {
		b.t.Fatalf("opening a tab for %s: %v", name, err)
	}
	p := &page{t: b.t, b: b, name: name, ctx: ctx}
	b.mu.Lock()
	b.pages = append(b.pages, p)
	b.mu.Unlock()
	console := chromedp.Console(ctx)
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			p.mu.Lock()
			p.logs = append(p.logs, fmt.Sprintf("%s: %s", m.Type, m.Text))
			p.mu.Unlock()
		}
	}()
	b.t.Cleanup(func() {
		if b.t.Failed() || os.Getenv("LOOPCHAT_WEB_SCREENSHOTS") != "" {
			b.saveAll()
		}
		cancel()
	})
	return p
}

// fatalf saves every page as it is now — before the cleanups stop the
// nodes it shows — and fails the test.
func (b *browser) fatalf(format string, args ...any) {
	b.t.Helper()
	b.saveAll()
	b.t.Fatalf(format, args...)
}

func (b *browser) saveAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.saved {
		return
	}
	b.saved = true
	for _, p := range b.pages {
		p.save()
	}
}

// save writes a screenshot of the page, and logs its console.
func (p *page) save() {
	dir := os.Getenv("LOOPCHAT_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "loopchat-web-failures")
	}
	dir = filepath.Join(dir, regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(p.t.Name(), "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.t.Logf("screenshot of %s: %v", p.name, err)
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	// The viewport (the page is one screen high, its lists scroll inside):
	// a full-page capture would resize it and lose the scroll positions.
	if png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot()); err != nil {
		p.t.Logf("screenshot of %s: %v", p.name, err)
	} else {
		path := filepath.Join(dir, p.name+".png")
		if err := os.WriteFile(path, png, 0o644); err == nil {
			p.t.Logf("screenshot of %s's page: %s", p.name, path)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.t.Logf("%s's console:\n%s", p.name, strings.Join(p.logs, "\n"))
}

// do runs steps, failing the test on the first error.
func (p *page) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.b.fatalf("%s: %s: %v", p.name, what, err)
	}
}

// wait polls a JavaScript expression in the page until it is true.
func (p *page) wait(what, expr string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 25*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		p.b.fatalf("%s: waiting for %s: %v", p.name, what, err)
	}
}

func evalIn[T any](p *page, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.b.fatalf("%s: %s: %v", p.name, expr, err)
	}
	return v
}

// open loads the page and registers (or logs in) through its form.
func (p *page) open(url, user string, register bool) {
	p.t.Helper()
	button := "login-submit"
	if register {
		button = "register-submit"
	}
	p.do("load the page", chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("login-username")))
	if evalIn[bool](p, visible("chat-view")) {
		p.b.fatalf("%s: the chat shows before logging in", p.name)
	}
	p.do("log in through the form",
		chromedp.SendKeys(chromedp.ID("login-username"), user),
		chromedp.SendKeys(chromedp.ID("login-password"), "hunter2hunter2"),
		chromedp.Click(chromedp.ID(button)),
	)
	p.waitOnline()
	if got := evalIn[string](p, `document.getElementById("me").textContent`); got != user {
		p.b.fatalf("%s: the page says it is %q", p.name, got)
	}
}

func (p *page) waitOnline() {
	p.t.Helper()
	p.wait("the page to be online", `document.getElementById("status").dataset.state === "online" && `+
		visible("chat-view")+" && !"+visible("login-view"))
}

func (p *page) addFriend(name string) {
	p.t.Helper()
	p.do("add "+name+" as a friend",
		chromedp.SendKeys(chromedp.ID("add-friend-name"), name),
		chromedp.Click(chromedp.ID("add-friend-submit")))
}

// waitFriend waits until the friend list shows name online or offline.
func (p *page) waitFriend(name string, online bool) {
	p.t.Helper()
	p.wait(fmt.Sprintf("%s online=%v in the friend list", name, online),
		fmt.Sprintf(`!!document.querySelector('#friends li[data-username=%q][data-online="%v"]')`, name, online))
}

// visible is the expression: the element with id is rendered (what a
// person sees, not only its hidden attribute).
func visible(id string) string {
	return fmt.Sprintf(`document.getElementById(%q).checkVisibility()`, id)
}

// openConv clicks an entry of a sidebar list (#friends, #groups,
// #conversations) by the title it shows.
func (p *page) openConv(list, title string) {
	p.t.Helper()
	sel := fmt.Sprintf(`[...document.querySelectorAll("#%s li")].find(li => li.querySelector(".title").textContent === %q)`, list, title)
	p.wait(title+" in #"+list, "!!"+sel)
	evalIn[chromedp.Void](p, sel+`.querySelector("button").click()`)
	p.wait("the conversation with "+title+" open", fmt.Sprintf(`document.getElementById("chat-title").textContent === %q && `, title)+visible("composer"))
}

func (p *page) send(text string) {
	p.t.Helper()
	p.do("send "+text,
		chromedp.SendKeys(chromedp.ID("composer-text"), text),
		chromedp.Click(chromedp.ID("composer-send")),
	)
	p.wait("the page's message "+text+" confirmed", fmt.Sprintf(`[...document.querySelectorAll('#messages li[data-mine="true"][data-msg-id]')].some(li => li.querySelector(".text").textContent === %q)`, text))
}

// shown is the texts of the messages the open conversation shows, in order.
func (p *page) shown() []string {
	return evalIn[[]string](p, `[...document.querySelectorAll("#messages li[data-msg-id] .text")].map(e => e.textContent)`)
}

func (p *page) waitShown(text string) {
	p.t.Helper()
	p.wait("the message "+text, fmt.Sprintf(`[...document.querySelectorAll("#messages li[data-msg-id] .text")].some(e => e.textContent === %q)`, text))
}

// convUnread is the expression: the #conversations entry titled title
// shows n unread.
func convUnread(title string, n int) string {
	return fmt.Sprintf(`[...document.querySelectorAll("#conversations li")].some(li => li.querySelector(".title").textContent === %q && li.dataset.unread === "%d")`, title, n)
}

// TestWebPageInBrowser: two people chat in their browsers on one node —
// friends with presence, unread counts, typing, read receipts, a group —
// then one reloads and gets the history back (scrolling back for older
// pages), and both pages survive the node being killed and restarted,
// a message written while it was down included.
func TestWebPageInBrowser(t *testing.T) {
	wsAddr := freeAddr(t)
	data := t.TempDir()
	flags := []string{"--ws-listen", wsAddr, "--web", "--presence-grace", "300ms"}
	n := startNode(t, data, flags...)
	url := "http://" + wsAddr + "/"
	b := startBrowser(t)
	alice, bob := b.page("alice"), b.page("bob")
	alice.open(url, "alice", true)
	bob.open(url, "bob", true)

	// Friends, with presence.
	alice.addFriend("bob")
	alice.waitFriend("bob", true)

	// A 1:1 chat: unread on bob's side until he opens it; then alice's
	// message shows read, and typing shows.
	alice.openConv("friends", "bob")
	alice.send("hi bob")
	bob.wait("an unread conversation with alice", convUnread("alice", 1))
	bob.openConv("conversations", "alice")
	bob.waitShown("hi bob")
	bob.wait("the conversation read", convUnread("alice", 0))
	alice.wait("a read receipt on hi bob", `document.querySelector('#messages li[data-mine="true"]').dataset.read === "true"`)
	bob.do("type", chromedp.SendKeys(chromedp.ID("composer-text"), "hello"))
	alice.wait("bob typing", `document.getElementById("typing").textContent === "bob is typing…"`)
	bob.do("send", chromedp.SendKeys(chromedp.ID("composer-text"), " alice"), chromedp.Click(chromedp.ID("composer-send")))
	alice.waitShown("hello alice")
	alice.wait("the typing notice gone with bob's message", `document.getElementById("typing").textContent === ""`)

	// A group: alice creates it, bob joins by its id, both chat in it.
	alice.do("create a group",
		chromedp.SendKeys(chromedp.ID("create-group-name"), "team"),
		chromedp.Click(chromedp.ID("create-group-submit")))
	alice.wait("the group open", `document.getElementById("chat-title").textContent === "team"`)
	gid := evalIn[string](alice, `document.querySelector("#groups li").dataset.groupId`)
	bob.do("join the group",
		chromedp.SendKeys(chromedp.ID("join-group-id"), gid),
		chromedp.Click(chromedp.ID("join-group-submit")))
	bob.wait("the group open", `document.getElementById("chat-title").textContent === "team"`)
	bob.send("bob in the team")
	alice.waitShown("bob in the team")
	alice.send("alice in the team")
	bob.waitShown("alice in the team")

	// History: 60 more messages from alice's phone (the SDK, another
	// device), then bob reloads his page. It logs in again with its token,
	// opens the conversation it had open before — the group; he goes to
	// alice's — and shows the latest page; older ones come on request.
	phone, err := client.Dial(context.Background(), client.Options{Addr: n.addr, DeviceID: "phone"})
	if err != nil {
		b.fatalf("%v", err)
	}
	defer phone.Close()
	ctx := testproc.Ctx(t, 30*time.Second)
	if _, err := phone.Login(ctx, "alice", "hunter2hunter2"); err != nil {
		b.fatalf("%v", err)
	}
	for i := 1; i <= 60; i++ {
		if _, err := phone.SendToUser(ctx, "bob", fmt.Sprintf("phone %d", i)); err != nil {
			b.fatalf("%v", err)
		}
	}
	bob.wait("62 messages from alice", convUnread("alice", 60))
	bob.do("reload", chromedp.Reload())
	bob.waitOnline()
	bob.waitShown("alice in the team")
	bob.openConv("conversations", "alice")
	bob.waitShown("phone 60")
	if got := len(bob.shown()); got != 50 {
		b.fatalf("bob's page shows %d messages after the reload; want the latest page of 50", got)
	}
	bob.do("scroll back", chromedp.Click(chromedp.ID("load-older")))
	bob.wait("the older messages", `document.querySelectorAll("#messages li[data-msg-id]").length === 62`)
	want := []string{"hi bob", "hello alice"}
	for i := 1; i <= 60; i++ {
		want = append(want, fmt.Sprintf("phone %d", i))
	}
	if got := bob.shown(); strings.Join(got, "|") != strings.Join(want, "|") {
		b.fatalf("bob's page after scrolling back:\n%q\nwant\n%q", got, want)
	}
	bob.wait("no older page to load", `document.getElementById("load-older").hidden`)

	// The node dies. Both pages show they are reconnecting; alice writes
	// meanwhile. The node comes back on the same addresses and data: both
	// pages log in again with their tokens, alice's message goes, bob
	// gets it, and they go on chatting.
	alice.openConv("conversations", "bob")
	if err := n.cmd.Process.Kill(); err != nil {
		b.fatalf("%v", err)
	}
	_ = n.wait(t, 5*time.Second)
	alice.wait("the page to notice", `document.getElementById("status").dataset.state === "connecting"`)
	alice.do("write while the node is down",
		chromedp.SendKeys(chromedp.ID("composer-text"), "sent while you were down"),
		chromedp.Click(chromedp.ID("composer-send")))
	startNodeAt(t, n.addr, data, flags...)
	alice.waitOnline()
	bob.waitOnline()
	bob.waitShown("sent while you were down")
	bob.send("back again")
	alice.waitShown("back again")
	if got := evalIn[int](alice, `document.querySelectorAll('#messages li[data-state="pending"], #messages li[data-state="failed"]').length`); got != 0 {
		b.fatalf("alice's page has %d messages not sent", got)
	}
}

// TestWebPageTalksToTerminalUserAcrossNodes is the done line: a
// person in a browser chats with a person in `loopchat client` on a
// terminal (a real pseudo-terminal), on two nodes sharing a real Redis,
// both through nginx — the browser through its http {} block (page and
// WebSocket), the terminal through its stream {} block.
func TestWebPageTalksToTerminalUserAcrossNodes(t *testing.T) {
	r := testproc.StartRedis(t)
	common := []string{"--redis", r.URL, "--web", "--proxy-protocol-from", "127.0.0.0/8", "--heartbeat", "200ms", "--presence-grace", "300ms"}
	ws1, ws2 := freeAddr(t), freeAddr(t)
	n1 := startNode(t, t.TempDir(), append([]string{"--node-id", "n1", "--ws-listen", ws1}, common...)...)
	n2 := startNode(t, t.TempDir(), append([]string{"--node-id", "n2", "--ws-listen", ws2}, common...)...)
	// Browsers reach only n1 and TCP clients only n2, so the two people are
	// on different nodes for sure.
	ng := testproc.StartNginxWith(t, testproc.NginxUpstreams{Stream: []string{n2.addr}, WS: []string{ws1}})
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(ng.Logs())
		}
	})
	_ = n1

	script(t, ng.Addr, "/register terry hunter2hunter2")
	terry := startTTYClient(t, ng.Addr, "--user", "terry")
	terry.waitLine("password for terry:")
	terry.typ("hunter2hunter2\r")
	terry.waitText("logged in as terry (user 1) on node n2")

	b := startBrowser(t)
	web := b.page("wendy")
	web.open("http://"+ng.WSAddr+"/", "wendy", true)
	if node := evalIn[string](web, `document.getElementById("me").dataset.node`); node != "n1" {
		b.fatalf("the browser landed on %q, want n1", node)
	}
	web.addFriend("terry")
	web.waitFriend("terry", true) // on the other node

	// Browser to terminal; the terminal reads it, and the page shows it read.
	web.openConv("friends", "terry")
	web.send("hello from the browser")
	terry.waitText("wendy: hello from the browser")
	terry.typ("/open wendy\r")
	terry.waitLine("terry → wendy>")
	terry.typ("/read\r")
	terry.waitText("read up to #1")
	web.wait("a read receipt on the browser's message", `document.querySelector('#messages li[data-mine="true"]').dataset.read === "true"`)

	// Terminal to browser: typing shows while the line is typed, then the
	// message; the page has the conversation open, reads it, and the
	// terminal is told.
	terry.typ("hello from the terminal")
	web.wait("terry typing", `document.getElementById("typing").textContent === "terry is typing…"`)
	terry.typ("\r")
	web.waitShown("hello from the terminal")
	terry.waitText("wendy read your messages up to #2")

	// terry quits: the browser shows him offline, across nodes.
	terry.typ("/quit\r")
	if err := terry.wait(); err != nil {
		b.fatalf("the terminal client exited with %v", err)
	}
	web.waitFriend("terry", false)
}

// TestWebPageUnfriendAndBlock: above a 1:1 conversation the page offers
// Unfriend (for a friend) and Block; a block refuses messages both ways,
// shown as not sent, and hides the blocked user's group messages on the
// blocker's page; Unblock lets messages through again.
func TestWebPageUnfriendAndBlock(t *testing.T) {
	wsAddr := freeAddr(t)
	startNode(t, t.TempDir(), "--ws-listen", wsAddr, "--web")
	url := "http://" + wsAddr + "/"
	b := startBrowser(t)
	alice, bob := b.page("alice"), b.page("bob")
	alice.open(url, "alice", true)
	bob.open(url, "bob", true)
	alice.addFriend("bob")
	alice.waitFriend("bob", true)
	alice.openConv("friends", "bob")
	alice.send("hi bob")

	alice.wait("Unfriend offered", visible("unfriend"))
	evalIn[chromedp.Void](alice, `document.getElementById("unfriend").click()`)
	alice.wait("bob gone from the friends", `!document.querySelector('#friends li[data-username="bob"]') && !`+visible("unfriend"))
	alice.waitShown("hi bob") // the conversation stays

	// A group they share, before the block.
	alice.do("create a group",
		chromedp.SendKeys(chromedp.ID("create-group-name"), "team"),
		chromedp.Click(chromedp.ID("create-group-submit")))
	alice.wait("the group open", `document.getElementById("chat-title").textContent === "team" && !`+visible("peer-actions"))
	gid := evalIn[string](alice, `document.querySelector("#groups li").dataset.groupId`)
	bob.do("join the group",
		chromedp.SendKeys(chromedp.ID("join-group-id"), gid),
		chromedp.Click(chromedp.ID("join-group-submit")))
	bob.wait("the group open", `document.getElementById("chat-title").textContent === "team"`)

	alice.openConv("conversations", "bob")
	evalIn[chromedp.Void](alice, `window.confirm = () => true; document.getElementById("block").click()`)
	alice.wait("bob blocked", `document.getElementById("block").dataset.blocked === "true" && document.getElementById("block").textContent === "Unblock"`)

	notSent := func(p *page, text string) {
		p.t.Helper()
		p.do("send "+text, chromedp.SendKeys(chromedp.ID("composer-text"), text), chromedp.Click(chromedp.ID("composer-send")))
		p.wait(text+" refused", fmt.Sprintf(`[...document.querySelectorAll('#messages li[data-state="failed"]')].some(li => li.querySelector(".text").textContent === %q && li.querySelector(".receipt").textContent.includes("block"))`, text))
	}
	notSent(alice, "still there?")
	bob.openConv("conversations", "alice")
	notSent(bob, "why?")

	// In the group bob's message arrives, its text hidden on alice's page.
	bob.openConv("groups", "team")
	bob.send("bob in the team")
	alice.openConv("groups", "team")
	alice.wait("bob's group message hidden", `[...document.querySelectorAll('#messages li[data-blocked="true"] .text')].some(e => e.textContent === "(hidden: you blocked bob)")`)

	alice.openConv("conversations", "bob")
	evalIn[chromedp.Void](alice, `document.getElementById("block").click()`)
	alice.wait("bob unblocked", `document.getElementById("block").dataset.blocked === "false"`)
	bob.openConv("conversations", "alice")
	bob.send("hello again")
	alice.waitShown("hello again")
}
