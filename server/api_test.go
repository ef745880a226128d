package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"gopkg.in/yaml.v3"

	chatpb "github.com/loopchat/loopchat/proto"
)

const testAPIKey = "test-api-key-0123456789abcdef"

// apiOptions are testOptions with the HTTP API on a free port and one key.
func apiOptions(t *testing.T) Options {
	o := testOptions(t, EngineGnet)
	o.APIAddr = "127.0.0.1:0"
	o.APIKeys = []APIKey{testAPIKey}
	return o
}

// apiClient calls one node's HTTP API as a backend would.
type apiClient struct {
	t    *testing.T
	base string
	key  string
}

func newAPIClient(t *testing.T, ts *testServer) *apiClient {
	return &apiClient{t: t, base: "http://" + ts.APIAddr().String(), key: testAPIKey}
}

// raw sends body (bytes as they are, or anything else as JSON) and
// returns the status and the answer's bytes.
func (c *apiClient) raw(method, path string, body any) (int, []byte) {
	c.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		c.t.Fatalf("%s %s: Content-Type %q", method, path, ct)
	}
	return resp.StatusCode, out
}

// ok calls and expects status, decoding the answer into out (if not nil).
func (c *apiClient) ok(method, path string, body any, status int, out any) {
	c.t.Helper()
	got, b := c.raw(method, path, body)
	if got != status {
		c.t.Fatalf("%s %s = %d %s, want %d", method, path, got, b, status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

// fails calls and expects the error shape with code and status; it
// returns the message.
func (c *apiClient) fails(method, path string, body any, status int, code string) string {
	c.t.Helper()
	got, b := c.raw(method, path, body)
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil || got != status || e.Error.Code != code || e.Error.Message == "" {
		c.t.Fatalf("%s %s = %d %s, want %d with code %s and a message", method, path, got, b, status, code)
	}
	return e.Error.Message
}

type testPublishResults struct {
	Results []struct {
		To       string `json:"to"`
		ToGroup  uint64 `json:"to_group"`
		MsgID    uint64 `json:"msg_id,string"`
		Seq      uint64 `json:"seq"`
		SentAtMs int64  `json:"sent_at_ms"`
		Online   bool   `json:"online"`
	} `json:"results"`
}

func (c *apiClient) publish(body map[string]any) testPublishResults {
	c.t.Helper()
	var out testPublishResults
	c.ok("POST", "/api/v1/publish", body, http.StatusOK, &out)
	return out
}

func historyWith(peer string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_History{History: &chatpb.History{PeerUsername: peer}}}
}

func groupHistory(gid uint64) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_History{History: &chatpb.History{GroupId: gid}}}
}

// One node on the embedded store: a publish from the system sender is
// pushed, in history and in the offline user's inbox; an idempotency key
// makes a retry return the first message and store nothing; a disconnect
// kicks; presence knows the devices.
func TestAPIOneNodePublishAndDisconnect(t *testing.T) {
	ts := startServer(t, apiOptions(t))
	api := newAPIClient(t, ts)
	alice, aliceOK := ts.user(t, "alice")
	bob, _ := ts.user(t, "bob")
	bob.c.Close()

	res := api.publish(map[string]any{"to_user": "alice", "text": "your parcel shipped", "idempotency_key": "order-7"})
	if len(res.Results) != 1 || res.Results[0].To != "alice" || res.Results[0].MsgID == 0 || res.Results[0].Seq != 1 || !res.Results[0].Online {
		t.Fatalf("publish = %+v", res)
	}
	m := alice.nextMessage()
	if m.Text != "your parcel shipped" || m.FromUsername != "system" || m.ToUserId != aliceOK.UserId || m.MsgId != res.Results[0].MsgID || m.Seq != 1 {
		t.Fatalf("alice got %v", m)
	}
	// Retried with the key: the same message, stored and pushed once.
	again := api.publish(map[string]any{"to_user": "alice", "text": "your parcel shipped", "idempotency_key": "order-7"})
	if again.Results[0].MsgID != m.MsgId || again.Results[0].Seq != 1 {
		t.Fatalf("retry = %+v, want msg %d seq 1", again, m.MsgId)
	}
	page := alice.do(historyWith("system")).GetHistoryPage()
	if len(page.GetMessages()) != 1 || page.Messages[0].MsgId != m.MsgId {
		t.Fatalf("alice's history with system = %v", page)
	}
	alice.noPush(100 * time.Millisecond)

	// Offline: stored, pushed at the next login.
	res = api.publish(map[string]any{"to_users": []string{"bob", "BOB", "alice"}, "from": "alice", "text": "hi bob"})
	if len(res.Results) != 2 || res.Results[0].To != "bob" || res.Results[0].Online || res.Results[1].To != "alice" {
		t.Fatalf("publish to [bob BOB alice] = %+v", res)
	}
	// A message from alice to herself, sent by a program: pushed to her
	// like any other (no device sent it).
	if m := alice.nextMessage(); m.Text != "hi bob" || m.FromUsername != "alice" {
		t.Fatalf("alice got %v", m)
	}
	bob, _ = ts.user(t, "bob")
	if m := bob.nextMessage(); m.Text != "hi bob" || m.FromUsername != "alice" || m.MsgId != res.Results[0].MsgID {
		t.Fatalf("bob's replay = %v", m)
	}

	var pres struct {
		Online        bool     `json:"online"`
		LastSeenMs    int64    `json:"last_seen_ms"`
		DevicesOnline []string `json:"devices_online"`
	}
	api.ok("GET", "/api/v1/presence?user=alice", nil, http.StatusOK, &pres)
	if !pres.Online || !slices.Equal(pres.DevicesOnline, []string{""}) {
		t.Fatalf("alice's presence = %+v", pres)
	}

	var disc struct {
		User          string `json:"user"`
		Online        bool   `json:"online"`
		TokensRevoked bool   `json:"tokens_revoked"`
	}
	api.ok("POST", "/api/v1/disconnect", map[string]any{"user": "alice", "reason": "maintenance"}, http.StatusOK, &disc)
	if disc.User != "alice" || !disc.Online || disc.TokensRevoked {
		t.Fatalf("disconnect = %+v", disc)
	}
	alice.expectKicked(chatpb.KickReason_KICK_REASON_DISCONNECTED_BY_SERVER)
	// Her token still works: nothing was revoked.
	expectOK(t, dial(t, ts.addr).do(tokenReq(aliceOK.Token)))

	// The system user is nobody's to register or log in as.
	rc := dial(t, ts.addr)
	expectCode(t, rc.do(registerReq("System", pw)), chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS)
	expectCode(t, rc.do(loginReq("system", pw)), chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED)
	api.fails("POST", "/api/v1/users", map[string]any{"username": "system", "password": pw}, http.StatusConflict, "ALREADY_EXISTS")
}

// Keys: none or a wrong one is 401 with the same body; a key the node no
// longer has after a restart is refused; a node told to serve the API
// without keys does not start.
func TestAPIAuth(t *testing.T) {
	o := apiOptions(t)
	o.APIKeys = []APIKey{testAPIKey, "second-key-for-rotation-0001"}
	ts := startServer(t, o)
	api := newAPIClient(t, ts)
	api.ok("GET", "/api/v1/nodes", nil, http.StatusOK, nil)
	for _, key := range []string{"", "wrong", testAPIKey + "x", testAPIKey[:len(testAPIKey)-1]} {
		bad := *api
		bad.key = key
		bad.fails("GET", "/api/v1/nodes", nil, http.StatusUnauthorized, "UNAUTHENTICATED")
		bad.fails("POST", "/api/v1/publish", map[string]any{"to_user": "x", "text": "y"}, http.StatusUnauthorized, "UNAUTHENTICATED")
		bad.fails("GET", "/api/v1/no-such-route", nil, http.StatusUnauthorized, "UNAUTHENTICATED")
	}
	second := *api
	second.key = "second-key-for-rotation-0001"
	second.ok("GET", "/api/v1/stats", nil, http.StatusOK, nil)
	// The scheme is case-insensitive (RFC 9110); a Basic header is no key.
	for h, want := range map[string]int{"bearer " + testAPIKey: 200, "Basic " + testAPIKey: 401, testAPIKey: 401} {
		req, _ := http.NewRequest("GET", api.base+"/api/v1/stats", nil)
		req.Header.Set("Authorization", h)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("Authorization %q = %d, want %d", h, resp.StatusCode, want)
		}
	}
	if got := testutil.ToFloat64(ts.metrics.apiRequests.WithLabelValues("GET /api/v1/nodes", "401")); got != 4 {
		t.Fatalf("401s on GET /api/v1/nodes counted %v times, want 4", got)
	}

	// Revoked: the node restarts on the same data without the second key.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	o.APIKeys = []APIKey{testAPIKey}
	ts = startServer(t, o)
	api.base, second.base = newAPIClient(t, ts).base, newAPIClient(t, ts).base
	second.fails("GET", "/api/v1/stats", nil, http.StatusUnauthorized, "UNAUTHENTICATED")
	api.ok("GET", "/api/v1/stats", nil, http.StatusOK, nil)

	o.APIKeys = nil
	if _, err := New(o); err == nil || !strings.Contains(err.Error(), "--api-key") {
		t.Fatalf("New with an API and no keys = %v", err)
	}
	o.APIKeys = []APIKey{""}
	if _, err := New(o); err == nil {
		t.Fatal("New with an empty API key started")
	}
}

// No way of printing the options shows a key.
func TestAPIKeysAreRedacted(t *testing.T) {
	o := Options{APIAddr: "127.0.0.1:0", APIKeys: []APIKey{testAPIKey}}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "opts", o, "keys", o.APIKeys, "key", o.APIKeys[0])
	keysJSON, err := json.Marshal(o.APIKeys)
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{fmt.Sprintf("%v", o), fmt.Sprintf("%+v", o), fmt.Sprintf("%#v", o), fmt.Sprintf("%s", o.APIKeys),
		fmt.Sprintf("%q", o.APIKeys), fmt.Sprint(o.APIKeys[0]), logged.String(), string(keysJSON)} {
		if strings.Contains(out, testAPIKey) || !strings.Contains(out, "redacted") {
			t.Fatalf("a key shows: %s", out)
		}
	}
}

// Bodies that are not what a route takes get INVALID_ARGUMENT (413 when
// too large) and change nothing; so do unknown routes and methods.
func TestAPIBadBodies(t *testing.T) {
	ts := startServer(t, apiOptions(t))
	api := newAPIClient(t, ts)
	alice, _ := ts.user(t, "alice")

	tooMany := make([]string, apiMaxUsers+1)
	for i := range tooMany {
		tooMany[i] = "alice"
	}
	for _, tc := range []struct {
		name string
		body any
		want string // in the message
	}{
		{"malformed", []byte(`{"to_user": "alice", "text": `), "malformed JSON"},
		{"not an object", []byte(`["alice"]`), "JSON object"},
		{"null", []byte(` null `), "JSON object"},
		{"a string", []byte(`"alice"`), "JSON object"},
		{"empty", []byte(``), "JSON object"},
		{"trailing", []byte(`{"to_user":"alice","text":"a"} {}`), "more after"},
		{"unknown field", []byte(`{"to_user":"alice","text":"a","priority":1}`), "priority"},
		{"a field twice", []byte(`{"to_user":"alice","text":"a","to_user":"system"}`), `"to_user" twice`},
		{"a field twice, escaped", []byte(`{"to_user":"alice","text":"a","te\u0078t":"b"}`), `"text" twice`},
		// encoding/json matches names ignoring case, and folds ſ to s.
		{"a field in capitals", []byte(`{"TO_USER":"alice","text":"a"}`), `"TO_USER"`},
		{"a field folded", []byte(`{"to_user":"alice","text":"a","\u017fext":"b"}`), `"ſext"`},
		{"invalid UTF-8", []byte("{\"to_user\":\"alice\",\"text\":\"caf\xe9\"}"), "UTF-8"},
		{"lone surrogate", []byte(`{"to_user":"alice","text":"\ud800 x"}`), "UTF-8"},
		{"empty text", map[string]any{"to_user": "alice", "text": ""}, "text"},
		{"text too long", map[string]any{"to_user": "alice", "text": strings.Repeat("x", 4097)}, "text"},
		{"no target", map[string]any{"text": "a"}, "exactly one"},
		{"two targets", map[string]any{"to_user": "alice", "to_group": 1, "text": "a"}, "exactly one"},
		{"empty to_users", map[string]any{"to_users": []string{}, "text": "a"}, "empty"},
		{"too many users", map[string]any{"to_users": tooMany, "text": "a"}, "10000"},
		{"bad name", map[string]any{"to_user": "no spaces", "text": "a"}, `"no spaces"`},
		{"long key", map[string]any{"to_user": "alice", "text": "a", "idempotency_key": strings.Repeat("k", 65)}, "idempotency_key"},
		{"bad sender", map[string]any{"to_user": "alice", "from": "x", "text": "a"}, "from"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := api.fails("POST", "/api/v1/publish", tc.body, http.StatusBadRequest, "INVALID_ARGUMENT")
			if !strings.Contains(msg, tc.want) {
				t.Fatalf("message %q does not say %q", msg, tc.want)
			}
		})
	}
	api.fails("POST", "/api/v1/publish", map[string]any{"to_user": "nobody", "text": "a"}, http.StatusNotFound, "NOT_FOUND")
	api.fails("POST", "/api/v1/publish", map[string]any{"to_users": []string{"alice", "nobody"}, "text": "a"}, http.StatusNotFound, "NOT_FOUND")
	api.fails("POST", "/api/v1/publish", map[string]any{"to_group": 99, "text": "a"}, http.StatusNotFound, "NOT_FOUND")
	big := []byte(`{"to_user":"alice","text":"` + strings.Repeat("x", apiMaxBody) + `"}`)
	api.fails("POST", "/api/v1/publish", big, http.StatusRequestEntityTooLarge, "INVALID_ARGUMENT")
	api.fails("GET", "/api/v1/publish", nil, http.StatusMethodNotAllowed, "INVALID_ARGUMENT")
	api.fails("GET", "/api/v2/publish", nil, http.StatusNotFound, "NOT_FOUND")
	api.fails("POST", "/api/v1/groups/x/members", map[string]any{"user": "alice"}, http.StatusBadRequest, "INVALID_ARGUMENT")
	api.fails("POST", "/api/v1/disconnect", map[string]any{"user": "alice", "reason": strings.Repeat("r", 257)}, http.StatusBadRequest, "INVALID_ARGUMENT")
	api.fails("POST", "/api/v1/users/alice/ban", map[string]any{"until_ms": time.Now().Add(-time.Minute).UnixMilli()}, http.StatusBadRequest, "INVALID_ARGUMENT")
	api.fails("POST", "/api/v1/users", map[string]any{"username": "ab", "password": pw}, http.StatusBadRequest, "INVALID_ARGUMENT")
	api.fails("POST", "/api/v1/users", map[string]any{"username": "carol", "password": "short"}, http.StatusBadRequest, "INVALID_ARGUMENT")
	api.fails("POST", "/api/v1/broadcast", map[string]any{"text": "a", "idempotency_key": "k"}, http.StatusBadRequest, "INVALID_ARGUMENT")
	api.fails("GET", "/api/v1/presence", nil, http.StatusBadRequest, "INVALID_ARGUMENT")

	// None of it reached alice, or the store.
	alice.noPush(100 * time.Millisecond)
	if page := alice.do(historyWith("system")).GetHistoryPage(); len(page.GetMessages()) != 0 {
		t.Fatalf("history after refused calls: %v", page)
	}
	if got := testutil.ToFloat64(ts.metrics.apiRequests.WithLabelValues("POST /api/v1/publish", "400")); got < 16 {
		t.Fatalf("400s on publish counted %v times", got)
	}
	if got := testutil.ToFloat64(ts.metrics.apiRequests.WithLabelValues("unmatched", "405")); got != 1 {
		t.Fatalf("the 405 counted %v times", got)
	}
}

// docs/api.yaml documents exactly the routes the mux serves.
func TestAPIOpenAPIMatchesRoutes(t *testing.T) {
	b, err := os.ReadFile("../docs/api.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("docs/api.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("docs/api.yaml is OpenAPI %q, want 3.x", doc.OpenAPI)
	}
	var documented, served []string
	for path, ops := range doc.Paths {
		for method, op := range ops {
			switch method {
			case "parameters", "summary", "description", "servers":
				continue // path-level fields, not operations
			}
			documented = append(documented, strings.ToUpper(method)+" "+path)
			if fields, _ := op.(map[string]any); fields["responses"] == nil {
				t.Errorf("docs/api.yaml: %s %s has no responses", method, path)
			}
		}
	}
	for _, rt := range apiRoutes {
		served = append(served, rt.pattern())
	}
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Fatalf("docs/api.yaml documents\n  %v\nthe mux serves\n  %v", documented, served)
	}
}

// recv is the next message pushed to rc, acknowledged, durably once the
// Pong is back: a later login of the same user does not replay it.
func recv(rc *rawConn) *chatpb.Message {
	rc.t.Helper()
	m := rc.nextMessage()
	rc.sendFrame(ackReq(m.MsgId))
	expectOK(rc.t, rc.do(pingReq()))
	return m
}

// Two nodes on one Redis: every call made on node B acts on users whose
// sessions are on node A, and what it stores is what A's clients read.
func TestAPICluster(t *testing.T) {
	forEachRedis(t, testAPICluster)
}

func testAPICluster(t *testing.T, rb *redisBackend) {
	nodes := backendNodes(t, rb, 2, EngineGnet, func(o *Options) {
		o.APIAddr = "127.0.0.1:0"
		o.APIKeys = []APIKey{testAPIKey}
	})
	a, b := nodes[0], nodes[1]
	apiA, apiB := newAPIClient(t, a), newAPIClient(t, b)

	alice, aliceOK := a.user(t, "alice")
	carol, _ := a.user(t, "carol")
	dave, _ := b.user(t, "dave")
	// bob exists, and is offline.
	bobConn, _ := a.user(t, "bob")
	bobConn.c.Close()
	waitFor(t, "bob offline", func() bool {
		var p struct {
			Online bool `json:"online"`
		}
		apiB.ok("GET", "/api/v1/presence?user=bob", nil, http.StatusOK, &p)
		return !p.Online
	})

	{ // publish
		res := apiB.publish(map[string]any{"to_user": "alice", "text": "from node B's API", "idempotency_key": "k1"})
		got := recv(alice)
		if got.Text != "from node B's API" || got.FromUsername != "system" || got.MsgId != res.Results[0].MsgID || !res.Results[0].Online {
			t.Fatalf("alice got %v for %+v", got, res)
		}
		// The same key through the other node: the first message, nothing new.
		again := apiA.publish(map[string]any{"to_user": "alice", "text": "from node B's API", "idempotency_key": "k1"})
		if again.Results[0].MsgID != got.MsgId || again.Results[0].Seq != got.Seq {
			t.Fatalf("retry on node A = %+v, want msg %d seq %d", again, got.MsgId, got.Seq)
		}
		alice.noPush(150 * time.Millisecond)
		page := alice.do(historyWith("system")).GetHistoryPage()
		if len(page.GetMessages()) != 1 || page.Messages[0].MsgId != got.MsgId {
			t.Fatalf("alice's history = %v", page)
		}
		// Offline bob gets it at his next login, on the other node.
		res = apiA.publish(map[string]any{"to_users": []string{"bob", "alice"}, "from": "carol", "text": "lunch?"})
		if res.Results[0].To != "bob" || res.Results[0].Online || !res.Results[1].Online {
			t.Fatalf("publish to bob and alice = %+v", res)
		}
		if m := recv(alice); m.Text != "lunch?" || m.FromUsername != "carol" {
			t.Fatalf("alice got %v", m)
		}
		bob, _ := b.user(t, "bob")
		if m := recv(bob); m.Text != "lunch?" || m.MsgId != res.Results[0].MsgID {
			t.Fatalf("bob's replay = %v", m)
		}
		bob.c.Close()
		carol.noPush(100 * time.Millisecond) // a program's message goes to no device of its sender
	}

	{ // group members and group publish
		gid := carol.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "ops"}}}).GetGroupCreated().GetGroupId()
		// dave (on B) is added through A's API, alice (on A) through B's:
		// each then gets the group's messages live, on the node they are on.
		var mr struct {
			GroupID uint64 `json:"group_id"`
			Member  bool   `json:"member"`
		}
		apiA.ok("POST", fmt.Sprintf("/api/v1/groups/%d/members", gid), map[string]any{"user": "dave"}, http.StatusOK, &mr)
		if mr.GroupID != gid || !mr.Member {
			t.Fatalf("add member = %+v", mr)
		}
		apiB.ok("POST", fmt.Sprintf("/api/v1/groups/%d/members", gid), map[string]any{"user": "alice"}, http.StatusOK, nil)
		apiB.fails("POST", fmt.Sprintf("/api/v1/groups/%d/members", gid), map[string]any{"user": "alice"}, http.StatusConflict, "ALREADY_EXISTS")
		expectOK(t, carol.do(sendGroup(gid, "welcome both")))
		for _, rc := range []*rawConn{alice, dave} {
			if m := recv(rc); m.GroupId != gid || m.Text != "welcome both" {
				t.Fatalf("new member got %v", m)
			}
		}
		// A publish to the group from the system user (no member): every
		// member, each on their own node.
		res := apiB.publish(map[string]any{"to_group": gid, "text": "maintenance at 6"})
		if res.Results[0].ToGroup != gid || res.Results[0].Seq != 2 {
			t.Fatalf("group publish = %+v", res)
		}
		for _, rc := range []*rawConn{alice, carol, dave} {
			m := recv(rc)
			for m.Text == "welcome both" && rc != carol {
				// The node of a member added elsewhere replays their inbox
				// when the group moved past the join (catchUp), which may
				// repeat what came live: clients drop it by msg_id.
				m = recv(rc)
			}
			if m.GroupId != gid || m.Text != "maintenance at 6" || m.FromUsername != "system" {
				t.Fatalf("member got %v", m)
			}
		}
		if page := dave.do(groupHistory(gid)).GetHistoryPage(); len(page.GetMessages()) != 2 {
			t.Fatalf("dave's group history = %v", page)
		}
		// Removed through the API: the next message passes them by.
		apiA.ok("DELETE", fmt.Sprintf("/api/v1/groups/%d/members/dave", gid), nil, http.StatusOK, nil)
		apiA.fails("DELETE", fmt.Sprintf("/api/v1/groups/%d/members/dave", gid), nil, http.StatusForbidden, "PERMISSION_DENIED")
		expectOK(t, carol.do(sendGroup(gid, "dave is gone")))
		if m := recv(alice); m.Text != "dave is gone" {
			t.Fatalf("alice got %v", m)
		}
		dave.noPush(150 * time.Millisecond)
	}

	{ // disconnect and token revocation
		// alice's sessions on A go when B's API says so; her token is
		// revoked first, so the reconnect it invites finds it refused.
		var disc struct {
			Online        bool `json:"online"`
			TokensRevoked bool `json:"tokens_revoked"`
		}
		apiB.ok("POST", "/api/v1/disconnect", map[string]any{"user": "alice", "reason": "security check",
			"revoke_tokens_until_ms": 0}, http.StatusOK, &disc)
		if !disc.Online || !disc.TokensRevoked {
			t.Fatalf("disconnect = %+v", disc)
		}
		for {
			f, err := alice.tryRead(5 * time.Second)
			if err != nil {
				t.Fatalf("waiting for the kick: %v", err)
			}
			if k := f.GetKicked(); k != nil {
				if k.Reason != chatpb.KickReason_KICK_REASON_DISCONNECTED_BY_SERVER || k.Message != "security check" {
					t.Fatalf("kicked with %v", k)
				}
				break
			}
		}
		alice.expectClosed()
		expectCode(t, dial(t, a.addr).do(tokenReq(aliceOK.Token)), chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED)
		alice, aliceOK = a.user(t, "alice") // the password works
	}

	{ // ban
		var ban struct {
			Banned  bool  `json:"banned"`
			UntilMs int64 `json:"until_ms"`
			Online  bool  `json:"online"`
		}
		until := time.Now().Add(time.Hour).UnixMilli()
		apiB.ok("POST", "/api/v1/users/alice/ban", map[string]any{"until_ms": until}, http.StatusOK, &ban)
		if !ban.Banned || ban.UntilMs != until || !ban.Online {
			t.Fatalf("ban = %+v", ban)
		}
		alice.expectKicked(chatpb.KickReason_KICK_REASON_DISCONNECTED_BY_SERVER)
		rc := dial(t, a.addr)
		expectCode(t, rc.do(loginReq("alice", pw)), chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED)
		expectCode(t, rc.do(tokenReq(aliceOK.Token)), chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED)
		apiA.ok("DELETE", "/api/v1/users/alice/ban", nil, http.StatusOK, &ban)
		if ban.Banned {
			t.Fatalf("unban = %+v", ban)
		}
		expectOK(t, rc.do(loginReq("alice", pw)))
		alice = rc
		apiA.fails("POST", "/api/v1/users/nobody/ban", map[string]any{}, http.StatusNotFound, "NOT_FOUND")
	}

	{ // users, presence, nodes and stats
		var u struct {
			UserID   uint64 `json:"user_id"`
			Username string `json:"username"`
		}
		apiB.ok("POST", "/api/v1/users", map[string]any{"username": "Erin", "password": pw}, http.StatusCreated, &u)
		if u.UserID == 0 || u.Username != "Erin" {
			t.Fatalf("create user = %+v", u)
		}
		apiA.fails("POST", "/api/v1/users", map[string]any{"username": "erin", "password": pw}, http.StatusConflict, "ALREADY_EXISTS")
		expectOK(t, dial(t, a.addr).do(loginReq("erin", pw)))

		var p struct {
			User          string   `json:"user"`
			Online        bool     `json:"online"`
			LastSeenMs    int64    `json:"last_seen_ms"`
			DevicesOnline []string `json:"devices_online"`
		}
		apiA.ok("GET", "/api/v1/presence?user=dave", nil, http.StatusOK, &p)
		if !p.Online || p.User != "dave" || p.DevicesOnline != nil {
			t.Fatalf("dave's presence from the other node = %+v", p)
		}
		apiA.ok("GET", "/api/v1/presence?user=bob", nil, http.StatusOK, &p)
		if p.Online || p.LastSeenMs == 0 {
			t.Fatalf("offline bob's presence = %+v", p)
		}
		apiA.fails("GET", "/api/v1/presence?user=nobody", nil, http.StatusNotFound, "NOT_FOUND")

		var nl struct {
			Nodes []struct {
				NodeID string `json:"node_id"`
				Addr   string `json:"addr"`
			} `json:"nodes"`
		}
		apiA.ok("GET", "/api/v1/nodes", nil, http.StatusOK, &nl)
		var ids []string
		for _, n := range nl.Nodes {
			ids = append(ids, n.NodeID)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"node-1", "node-2"}) {
			t.Fatalf("nodes = %+v", nl)
		}
		var st struct {
			NodeID      string `json:"node_id"`
			Connections int    `json:"connections"`
			UsersHere   int    `json:"users_here"`
			Cluster     struct {
				Nodes int `json:"nodes"`
			} `json:"cluster"`
		}
		apiB.ok("GET", "/api/v1/stats", nil, http.StatusOK, &st)
		if st.NodeID != "node-2" || st.Connections < 1 || st.UsersHere < 1 || st.Cluster.Nodes != 2 {
			t.Fatalf("stats = %+v", st)
		}
	}

	{ // broadcast
		var br struct {
			Recipients int `json:"recipients"`
			Online     int `json:"online"`
		}
		apiA.ok("POST", "/api/v1/broadcast", map[string]any{"text": "we are back", "durable": true, "idempotency_key": "b1"}, http.StatusOK, &br)
		// alice, bob, carol, dave, erin: everyone but the system user;
		// all but bob online.
		if br.Recipients != 5 || br.Online != 4 {
			t.Fatalf("durable broadcast = %+v", br)
		}
		for _, rc := range []*rawConn{alice, carol, dave} {
			if m := recv(rc); m.Text != "we are back" || m.FromUsername != "system" {
				t.Fatalf("broadcast push = %v", m)
			}
		}
		// The transient kind: one publish, every session on both nodes.
		var live struct {
			Nodes int `json:"nodes"`
		}
		apiB.ok("POST", "/api/v1/broadcast", map[string]any{"text": "live only"}, http.StatusOK, &live)
		if live.Nodes != 2 {
			t.Fatalf("transient broadcast reached %d nodes, want 2", live.Nodes)
		}
		for _, rc := range []*rawConn{alice, carol, dave} {
			if m := recv(rc); m.Text != "live only" || m.FromUsername != "system" {
				t.Fatalf("transient broadcast push = %v", m)
			}
		}
		// Retried with its key: nothing stored or pushed twice.
		apiA.ok("POST", "/api/v1/broadcast", map[string]any{"text": "we are back", "durable": true, "idempotency_key": "b1"}, http.StatusOK, &br)
		if br.Recipients != 5 {
			t.Fatalf("retried broadcast = %+v", br)
		}
		alice.noPush(150 * time.Millisecond)
		if page := alice.do(historyWith("system")).GetHistoryPage(); len(page.GetMessages()) != 2 {
			t.Fatalf("alice's history with system after the broadcast: %v", page)
		}
		// Node A has spent its burst of 3 (two above, one below).
		apiA.ok("POST", "/api/v1/broadcast", map[string]any{"text": "we are back", "durable": true, "idempotency_key": "b1"}, http.StatusOK, nil)
		apiA.fails("POST", "/api/v1/broadcast", map[string]any{"text": "again", "durable": true}, http.StatusTooManyRequests, "RATE_LIMITED")
	}
}

// The system user's name taken by a regular account (registered before
// the API was configured) is refused as a sender, not sent as.
func TestAPISystemUserTaken(t *testing.T) {
	o := apiOptions(t)
	o.APISystemUser = "robot"
	ts := startServer(t, o)
	if _, err := ts.store.CreateUser(context.Background(), "robot", []byte("a real hash")); err != nil {
		t.Fatal(err)
	}
	ts.user(t, "alice")
	api := newAPIClient(t, ts)
	api.fails("POST", "/api/v1/publish", map[string]any{"to_user": "alice", "text": "a"}, http.StatusInternalServerError, "INTERNAL")
	// A named sender is still fine.
	api.publish(map[string]any{"to_user": "alice", "from": "alice", "text": "a"})
}

// A \u escape must name a character: surrogates only in pairs.
func TestAPIJSONEscapes(t *testing.T) {
	for in, want := range map[string]bool{
		`{"text":"plain"}`:                 true,
		`{"text":"\u00e9 \ud83d\ude00"}`:   true,
		`{"text":"\\ud800"}`:               true, // an escaped backslash, then text
		`{"text":"\\\ud83d\ude00"}`:        true,
		`{"text":"\ud800"}`:                false,
		`{"text":"\ud800\u0041"}`:          false,
		`{"text":"\udc00\ud800"}`:          false,
		`{"text":"x\ud83d"}`:               false,
		`{"text":"\u12"}`:                  true, // malformed: the decoder refuses it
		`{"text":"\ud83d\ude00\ud83d"}`:    false,
		`{"text":"ok \\\\u d800 \\u0041"}`: true,
	} {
		if got := escapesValid([]byte(in)); got != want {
			t.Errorf("escapesValid(%s) = %v, want %v", in, got, want)
		}
	}
}

// A broadcast's answer has the fields of its kind only (docs/api.md):
// the transient kind {"nodes":N} — a "recipients":0 beside it would tell
// a backend that nobody got a message every online session was pushed —
// and the durable kind its recipients and how many were online.
func TestAPIBroadcastAnswers(t *testing.T) {
	ts := startServer(t, apiOptions(t))
	api := newAPIClient(t, ts)
	alice, _ := ts.user(t, "alice")

	answer := func(body map[string]any) map[string]any {
		t.Helper()
		var out map[string]any
		api.ok("POST", "/api/v1/broadcast", body, http.StatusOK, &out)
		return out
	}
	if got := answer(map[string]any{"text": "live"}); len(got) != 1 || got["nodes"] != float64(1) {
		t.Fatalf("transient broadcast answered %v, want {\"nodes\":1}", got)
	}
	if m := alice.nextMessage(); m.Text != "live" {
		t.Fatalf("alice got %v", m)
	}
	if got := answer(map[string]any{"text": "stored", "durable": true}); len(got) != 2 || got["recipients"] != float64(1) || got["online"] != float64(1) {
		t.Fatalf("durable broadcast answered %v, want {\"recipients\":1,\"online\":1}", got)
	}
	if m := alice.nextMessage(); m.Text != "stored" {
		t.Fatalf("alice got %v", m)
	}
}
