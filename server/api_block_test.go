package server

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

// A publish to a list that names a user who blocks the sender fails with
// 403, names that user, and says how many of the others it stored first. Each of those
// others either has the message (in history, and pushed to their online
// device) or has nothing: the refusal of one recipient must not cut the
// sends to the others that were already under way half-way through (on a
// Redis Cluster, a message logged in history that reached no inbox).
func TestAPIPublishListStopsAtABlockWhole(t *testing.T) {
	forEachRedis(t, func(t *testing.T, rb *redisBackend) {
		nodes := backendNodes(t, rb, 1, EngineGnet, func(o *Options) {
			o.APIAddr = "127.0.0.1:0"
			o.APIKeys = []APIKey{testAPIKey}
		})
		ts := nodes[0]
		api := newAPIClient(t, ts)
		ts.user(t, "alice")
		bob, _ := ts.user(t, "bob")
		expectOK(t, bob.do(blockReq("alice")))
		var to []string
		var conns []*rawConn
		for i := range 12 {
			name := fmt.Sprintf("carol%d", i)
			rc, _ := ts.user(t, name)
			to = append(to, name)
			conns = append(conns, rc)
		}
		to = append(to, "bob")
		msg := api.fails("POST", "/api/v1/publish", map[string]any{"from": "alice", "to_users": to, "text": "sale"},
			http.StatusForbidden, "PERMISSION_DENIED")
		// The caller must learn whom to leave out of a retry.
		if !strings.Contains(msg, `"bob"`) {
			t.Fatalf("message %q does not name the user who blocks the sender", msg)
		}
		single := api.fails("POST", "/api/v1/publish", map[string]any{"from": "alice", "to_user": "bob", "text": "sale"},
			http.StatusForbidden, "PERMISSION_DENIED")
		if !strings.Contains(single, `"bob"`) {
			t.Fatalf("message %q does not name the user who blocks the sender", single)
		}
		m := regexp.MustCompile(`stored for (\d+) recipients`).FindStringSubmatch(msg)
		if m == nil {
			t.Fatalf("message %q says nothing of how many were stored", msg)
		}
		stored, _ := strconv.Atoi(m[1])
		have := 0
		for i, rc := range conns {
			page := rc.do(historyWith("alice")).GetHistoryPage()
			switch n := len(page.GetMessages()); n {
			case 0:
				rc.noPush(50e6)
			case 1:
				have++
				if got := rc.nextMessage(); got.MsgId != page.Messages[0].MsgId {
					t.Fatalf("carol%d was pushed %v, history has %v", i, got, page.Messages[0])
				}
			default:
				t.Fatalf("carol%d's history with alice = %v", i, page)
			}
		}
		if have != stored {
			t.Fatalf("%d carols have the message, the answer says %d were stored (%q)", have, stored, msg)
		}
	})
}

// While either of two users blocks the other, reading their 1:1
// conversation tells the other side nothing (as typing does not), whoever
// reads: only the reader's own devices get the ReadReceipt. Unblocking
// brings the receipts back.
func TestBlockDropsReadReceipts(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		alice, _ := a.user(t, "alice")
		bob, bobOK := b.device(t, "bob", "phone")
		bobLaptop, _ := a.device(t, "bob", "laptop")
		carol, _ := b.user(t, "carol")
		for i := range 3 {
			expectOK(t, alice.do(sendTo("bob", fmt.Sprint(i))))
			bob.nextMessage()
			bobLaptop.nextMessage()
			expectOK(t, bob.do(sendTo("carol", fmt.Sprint(i))))
			carol.nextMessage()
			bobLaptop.nextMessage() // the sender's other device gets a copy
		}
		markRead := func(rc *rawConn, peer string, upTo uint64) {
			t.Helper()
			expectOK(t, rc.do(&chatpb.Frame{Body: &chatpb.Frame_MarkRead{MarkRead: &chatpb.MarkRead{PeerUsername: peer, UpToSeq: upTo}}}))
		}
		expectOK(t, bob.do(blockReq("alice")))
		expectOK(t, bob.do(blockReq("carol")))
		markRead(bob, "alice", 2) // the blocker reads
		if rr := bobLaptop.nextPush().GetReadReceipt(); rr == nil || rr.UpToSeq != 2 {
			t.Fatalf("bob's other device: %v", rr)
		}
		markRead(carol, "bob", 3) // the blocked user reads
		alice.noPush(300 * time.Millisecond)
		bob.noPush(0)
		bobLaptop.noPush(0)

		expectOK(t, bob.do(unblockReq("alice")))
		markRead(bob, "alice", 3)
		if rr := alice.nextPush().GetReadReceipt(); rr == nil || rr.ReaderUserId != bobOK.UserId || rr.UpToSeq != 3 {
			t.Fatalf("alice's receipt after the unblock: %v", rr)
		}
	})
}
