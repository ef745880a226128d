package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

const cliAPIKey = "cli-test-key-0123456789abcdef"

// apiCLI runs `loopchat api` against the node's API with env added to the
// environment, and returns its stdout, its stderr and whether it exited 0.
func apiCLI(t *testing.T, apiAddr string, env []string, args ...string) (stdout, stderr string, ok bool) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"api", "--addr", apiAddr}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if _, exit := err.(*exec.ExitError); err != nil && !exit {
		t.Fatalf("loopchat api: %v", err)
	}
	return out.String(), errOut.String(), err == nil
}

// apiJSON runs `loopchat api` with the key and decodes the JSON it printed.
func apiJSON(t *testing.T, apiAddr string, args ...string) map[string]any {
	t.Helper()
	stdout, stderr, ok := apiCLI(t, apiAddr, nil, append([]string{"--key", cliAPIKey}, args...)...)
	if !ok {
		t.Fatalf("loopchat api %v failed: %s %s", args, stdout, stderr)
	}
	var out map[string]any
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.UseNumber()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("loopchat api %v printed %q: %v", args, stdout, err)
	}
	return out
}

// liveClient is `loopchat client --json` kept running, its stdin open.
type liveClient struct {
	t     *testing.T
	stdin interface{ Write([]byte) (int, error) }
	lines *bufio.Scanner
}

func startClient(t *testing.T, addr string) *liveClient {
	t.Helper()
	cmd := exec.Command(binary, "client", "--addr", addr, "--json", "--no-reconnect")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return &liveClient{t: t, stdin: in, lines: bufio.NewScanner(out)}
}

func (c *liveClient) send(line string) {
	c.t.Helper()
	if _, err := c.stdin.Write([]byte(line + "\n")); err != nil {
		c.t.Fatal(err)
	}
}

// next returns the next event of the given kind, within 10 s.
func (c *liveClient) next(event string) map[string]any {
	c.t.Helper()
	found := make(chan map[string]any, 1)
	go func() {
		for c.lines.Scan() {
			var e map[string]any
			if json.Unmarshal(c.lines.Bytes(), &e) == nil && e["event"] == event {
				found <- e
				return
			}
		}
		close(found)
	}()
	select {
	case e, ok := <-found:
		if !ok {
			c.t.Fatalf("the client ended before a %q event", event)
		}
		return e
	case <-time.After(10 * time.Second):
		c.t.Fatalf("no %q event within 10s", event)
	}
	return nil
}

// `loopchat api` against a real node: every subcommand reaches its route,
// the answer is the node's JSON, failures exit non-zero with the JSON
// error, and the key may come from the environment.
func TestAPICommand(t *testing.T) {
	apiAddr := freeAddr(t)
	n := startNode(t, t.TempDir(), "--api-addr", apiAddr, "--api-key", cliAPIKey+",second-key-0123456789")
	waitListening(t, apiAddr)

	u := apiJSON(t, apiAddr, "users", "create", "alice", "--password", "hunter2hunter2")
	if u["username"] != "alice" {
		t.Fatalf("users create = %v", u)
	}
	apiJSON(t, apiAddr, "users", "create", "bob", "--password", "hunter2hunter2")

	alice := startClient(t, n.addr)
	alice.send("/login alice hunter2hunter2")
	if r := alice.next("response"); r["ok"] != true {
		t.Fatalf("alice's login = %v", r)
	}
	res := apiJSON(t, apiAddr, "publish", "--to", "alice", "--idempotency-key", "p1", "your", "parcel", "shipped")
	results := res["results"].([]any)
	if r := results[0].(map[string]any); r["to"] != "alice" || r["online"] != true || r["msg_id"] == "" {
		t.Fatalf("publish = %v", res)
	}
	if m := alice.next("message"); m["text"] != "your parcel shipped" || m["from"] != "system" {
		t.Fatalf("alice got %v", m)
	}

	// A group made by a client gets a member and a message through the API.
	alice.send("/group create crew")
	gidArg := strconv.FormatFloat(alice.next("response")["group_id"].(float64), 'f', -1, 64)
	if m := apiJSON(t, apiAddr, "groups", "add-member", gidArg, "bob"); m["member"] != true {
		t.Fatalf("add-member = %v", m)
	}
	apiJSON(t, apiAddr, "publish", "--to-group", gidArg, "--from", "alice", "welcome", "bob")
	events := script(t, n.addr, "/login bob hunter2hunter2", "/wait 300ms")
	var got []string
	for _, e := range events {
		if e["event"] == "message" {
			got = append(got, e["text"].(string))
		}
	}
	if len(got) != 1 || got[0] != "welcome bob" {
		t.Fatalf("bob's messages = %v", got)
	}

	if p := apiJSON(t, apiAddr, "presence", "alice"); p["online"] != true {
		t.Fatalf("presence = %v", p)
	}
	if nl := apiJSON(t, apiAddr, "nodes"); len(nl["nodes"].([]any)) != 1 {
		t.Fatalf("nodes = %v", nl)
	}
	if st := apiJSON(t, apiAddr, "stats"); st["connections"] == nil {
		t.Fatalf("stats = %v", st)
	}

	// Disconnect reaches the live client, which says so and does not
	// reconnect.
	d := apiJSON(t, apiAddr, "disconnect", "alice", "--reason", "maintenance", "--revoke-tokens")
	if d["online"] != true || d["tokens_revoked"] != true {
		t.Fatalf("disconnect = %v", d)
	}
	if k := alice.next("kicked"); k["reason"] != "disconnected_by_server" || k["message"] != "maintenance" {
		t.Fatalf("alice's kick = %v", k)
	}

	b := apiJSON(t, apiAddr, "users", "ban", "bob", "--until", "1h", "--reason", "spam")
	if b["banned"] != true || b["until_ms"] == nil {
		t.Fatalf("ban = %v", b)
	}
	r := responses(script(t, n.addr, "/login bob hunter2hunter2"))
	if len(r) != 1 || r[0]["ok"] != false || r[0]["error"].(map[string]any)["code"] != "permission_denied" {
		t.Fatalf("a banned login = %v", r)
	}
	apiJSON(t, apiAddr, "users", "unban", "bob")
	expectResp(t, responses(script(t, n.addr, "/login bob hunter2hunter2"))[0], "login", true)

	// The key from the environment: the first of serve's list, or the only.
	stdout, _, ok := apiCLI(t, apiAddr, []string{"LOOPCHAT_API_KEY=" + cliAPIKey + ",other"}, "stats")
	if !ok || !strings.Contains(stdout, `"node_id"`) {
		t.Fatalf("with the key from the environment: %s", stdout)
	}
	// Failures: the JSON error on stdout, a line on stderr, exit 1.
	stdout, stderr, ok := apiCLI(t, apiAddr, nil, "--key", "wrong", "stats")
	if ok || !strings.Contains(stdout, `"UNAUTHENTICATED"`) || !strings.Contains(stderr, "UNAUTHENTICATED") {
		t.Fatalf("a wrong key: ok %v, stdout %q, stderr %q", ok, stdout, stderr)
	}
	stdout, _, ok = apiCLI(t, apiAddr, nil, "--key", cliAPIKey, "publish", "--to", "nobody", "hi")
	if ok || !strings.Contains(stdout, `"NOT_FOUND"`) {
		t.Fatalf("publish to nobody: ok %v, stdout %q", ok, stdout)
	}
	if _, stderr, ok := apiCLI(t, apiAddr, []string{"LOOPCHAT_API_KEY="}, "stats"); ok || !strings.Contains(stderr, "no API key") {
		t.Fatalf("without a key: ok %v, %q", ok, stderr)
	}
}

// A node given --api-addr without --api-key refuses to start, and says why.
func TestServeAPIWithoutKey(t *testing.T) {
	cmd := exec.Command(binary, "serve", "--listen", freeAddr(t), "--data", t.TempDir(), "--api-addr", freeAddr(t))
	cmd.Env = append(os.Environ(), "LOOPCHAT_API_KEY=")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--api-key") {
		t.Fatalf("serve --api-addr without a key: %v\n%s", err, out)
	}
}

// waitListening waits until addr accepts TCP connections.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not listen: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
