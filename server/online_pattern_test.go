package server

import (
	"context"
	"net/http"
	"testing"
)

// TestOnlineIgnoresPatternSubscribers: a program watching the channels
// with PSUBSCRIBE (an operator's `redis-cli PSUBSCRIBE 'loopchat:*'`, a
// monitoring tool) is no session of anyone. SendOK.online, the API's
// publish and durable broadcast counts and disconnect's online say
// whether a recipient has a session (docs/cluster.md: the channel has a
// subscriber), so an offline user stays offline in them however many
// watch. PUBLISH's own count includes pattern subscribers, which made
// every one of them true while anything watched.
func TestOnlineIgnoresPatternSubscribers(t *testing.T) {
	rb := oneRedis(t)
	nodes := backendNodes(t, rb, 1, EngineGnet, func(o *Options) {
		o.APIAddr = "127.0.0.1:0"
		o.APIKeys = []APIKey{testAPIKey}
	})
	api := newAPIClient(t, nodes[0])
	alice, _ := nodes[0].user(t, "alice")
	bob, _ := nodes[0].user(t, "bob")
	bob.c.Close()
	waitFor(t, "bob offline", func() bool {
		var p struct {
			Online bool `json:"online"`
		}
		api.ok("GET", "/api/v1/presence?user=bob", nil, http.StatusOK, &p)
		return !p.Online
	})

	watcher := rb.client.PSubscribe(context.Background(), rb.keyPrefix()+"*")
	t.Cleanup(func() { _ = watcher.Close() })
	if _, err := watcher.Receive(context.Background()); err != nil { // the subscription's confirmation
		t.Fatal(err)
	}

	ok := alice.do(sendTo("bob", "are you there?")).GetSendOk()
	if ok == nil || ok.Online {
		t.Fatalf("send to offline bob while a pattern subscriber watches: %v, want SendOK with online false", ok)
	}
	if r := api.publish(map[string]any{"to_user": "bob", "text": "parcel"}); r.Results[0].Online {
		t.Fatalf("API publish to offline bob: online true")
	}
	var bc struct {
		Recipients int `json:"recipients"`
		Online     int `json:"online"`
	}
	api.ok("POST", "/api/v1/broadcast", map[string]any{"text": "news", "durable": true}, http.StatusOK, &bc)
	// alice is online; bob and the system user are not.
	if bc.Online != 1 {
		t.Fatalf("durable broadcast: %+v, want online 1 (alice)", bc)
	}
	var live struct {
		Nodes int `json:"nodes"`
	}
	api.ok("POST", "/api/v1/broadcast", map[string]any{"text": "live news"}, http.StatusOK, &live)
	if live.Nodes != 1 {
		t.Fatalf("transient broadcast: reached %d nodes, want 1", live.Nodes)
	}
	var d struct {
		Online bool `json:"online"`
	}
	api.ok("POST", "/api/v1/disconnect", map[string]any{"user": "bob"}, http.StatusOK, &d)
	if d.Online {
		t.Fatalf("disconnect of offline bob: online true")
	}
	// alice, online, is still told so, and still gets her messages.
	api.ok("POST", "/api/v1/publish", map[string]any{"to_user": "alice", "text": "hi"}, http.StatusOK, nil)
	for _, want := range []string{"news", "live news", "hi"} {
		if m := alice.nextMessage(); m.Text != want {
			t.Fatalf("alice got %v, want %q", m, want)
		}
	}
	if r := alice.do(sendTo("alice", "note")).GetSendOk(); r == nil || !r.Online {
		t.Fatalf("note to self (alice online): %v, want online", r)
	}
}
