package server

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
)

const (
	codeInvalid     = chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT
	codeUnauth      = chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED
	codeNotFound    = chatpb.ErrorCode_ERROR_CODE_NOT_FOUND
	codeExists      = chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS
	codeDenied      = chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED
	codeRateLimited = chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED
	codeProtocol    = chatpb.ErrorCode_ERROR_CODE_PROTOCOL
)

func TestRegisterAndLogin(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		rc := dial(t, ts.addr)

		resp := rc.do(registerReq("alice", pw))
		expectOK(t, resp)
		aliceID := resp.GetRegisterOk().GetUserId()
		if aliceID == 0 {
			t.Fatalf("RegisterOK without a user id: %v", resp)
		}
		expectCode(t, rc.do(registerReq("alice", pw)), codeExists)
		expectCode(t, rc.do(registerReq("ALICE", pw)), codeExists) // names are case-insensitive
		expectCode(t, rc.do(registerReq("al", pw)), codeInvalid)
		expectCode(t, rc.do(registerReq("bad name!", pw)), codeInvalid)
		expectCode(t, rc.do(registerReq("bob", "short")), codeInvalid)
		expectCode(t, rc.do(registerReq("bob", strings.Repeat("p", 129))), codeInvalid)

		expectCode(t, rc.do(loginReq("alice", "wrong password")), codeUnauth)
		expectCode(t, rc.do(loginReq("nobody", pw)), codeUnauth)
		expectCode(t, rc.do(tokenReq("v1.forged.token")), codeUnauth)

		resp = rc.do(loginReq("Alice", pw))
		expectOK(t, resp)
		ok := resp.GetLoginOk()
		if ok.UserId != aliceID || ok.Username != "alice" || ok.Token == "" || ok.NodeId == "" {
			t.Fatalf("LoginOK = %v", ok)
		}
		if ok.TokenExpiresAtMs <= time.Now().UnixMilli() {
			t.Fatalf("token already expired: %d", ok.TokenExpiresAtMs)
		}
		expectCode(t, rc.do(loginReq("alice", pw)), codeInvalid) // already logged in
		// Register while logged in makes an account and leaves the session alone.
		resp = rc.do(registerReq("carol", pw))
		expectOK(t, resp)
		if resp.GetRegisterOk().GetUserId() == aliceID {
			t.Fatal("Register while logged in returned the session's own id")
		}
		if sent := rc.do(sendTo("carol", "still alice?")); sent.GetSendOk() == nil {
			t.Fatalf("the session lost its login after Register: %v", sent)
		}

		// The token logs in on a new connection and kicks the older one.
		rc2 := dial(t, ts.addr)
		resp = rc2.do(tokenReq(ok.Token))
		expectOK(t, resp)
		if resp.GetLoginOk().UserId != aliceID {
			t.Fatalf("token login as %d, want %d", resp.GetLoginOk().UserId, aliceID)
		}
		rc.expectKicked(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE)

		// A tampered token is refused.
		bad := ok.Token[:len(ok.Token)-2] + "AA"
		if bad == ok.Token {
			bad = ok.Token[:len(ok.Token)-2] + "BB"
		}
		expectCode(t, dial(t, ts.addr).do(tokenReq(bad)), codeUnauth)

		// Logout returns the connection to unauthenticated.
		expectOK(t, rc2.do(&chatpb.Frame{Body: &chatpb.Frame_Logout{Logout: &chatpb.Logout{}}}))
		expectCode(t, rc2.do(sendTo("alice", "hi")), codeUnauth)
		expectOK(t, rc2.do(loginReq("alice", pw)))
	})
}

// Every password length the protocol allows works over the wire, bytes
// past bcrypt's 72 count, and an account hashed the old way (plain bcrypt)
// still logs in.
func TestLongPasswordsAndLegacyHashes(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		rc := dial(t, ts.addr)

		long := strings.Repeat("0123456789", 10) // 100 bytes
		samePrefix := long[:72] + strings.Repeat("x", 28)
		expectOK(t, rc.do(registerReq("alice", long)))
		expectCode(t, rc.do(loginReq("alice", samePrefix)), codeUnauth)
		expectCode(t, rc.do(loginReq("alice", long[:72])), codeUnauth)
		resp := rc.do(loginReq("alice", long))
		expectOK(t, resp)
		if resp.GetLoginOk().GetUsername() != "alice" {
			t.Fatalf("LoginOK = %v", resp)
		}

		legacy, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ts.store.CreateUser(context.Background(), "oldtimer", legacy); err != nil {
			t.Fatal(err)
		}
		rc2 := dial(t, ts.addr)
		expectCode(t, rc2.do(loginReq("oldtimer", pw+"!")), codeUnauth)
		expectOK(t, rc2.do(loginReq("oldtimer", pw)))
	})
}

func TestRequestsBeforeLogin(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		rc := dial(t, ts.addr)
		resp := rc.do(pingReq())
		if resp.GetPong().GetServerTimeMs() == 0 {
			t.Fatalf("Ping before login: %v", resp)
		}
		for _, f := range []*chatpb.Frame{
			sendTo("bob", "hi"),
			ackReq(1),
			{Body: &chatpb.Frame_AddFriend{AddFriend: &chatpb.AddFriend{Username: "bob"}}},
			{Body: &chatpb.Frame_ListFriends{ListFriends: &chatpb.ListFriends{}}},
			{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "g"}}},
			{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: 1}}},
			{Body: &chatpb.Frame_LeaveGroup{LeaveGroup: &chatpb.LeaveGroup{GroupId: 1}}},
			{Body: &chatpb.Frame_ListGroups{ListGroups: &chatpb.ListGroups{}}},
			{Body: &chatpb.Frame_Logout{Logout: &chatpb.Logout{}}},
		} {
			expectCode(t, rc.do(f), codeUnauth)
		}
	})
}

func TestDirectChat(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		alice, aliceOK := ts.user(t, "alice")
		bob, bobOK := ts.user(t, "bob")

		resp := alice.do(sendTo("bob", "hello bob"))
		expectOK(t, resp)
		sent := resp.GetSendOk()
		if sent.MsgId == 0 || sent.SentAtMs == 0 || !sent.Online {
			t.Fatalf("SendOK = %v, want an id, a time and online", sent)
		}
		m := bob.nextMessage()
		if m.MsgId != sent.MsgId || m.FromUserId != aliceOK.UserId || m.FromUsername != "alice" ||
			m.ToUserId != bobOK.UserId || m.Text != "hello bob" || m.SentAtMs != sent.SentAtMs || m.GroupId != 0 {
			t.Fatalf("bob got %v, SendOK was %v", m, sent)
		}

		// By user id, with unicode text; messages from one sender keep order.
		for i := range 20 {
			f := &chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{
				To: &chatpb.Send_UserId{UserId: aliceOK.UserId}, Text: fmt.Sprintf("réponse %d ✓", i)}}}
			expectOK(t, bob.do(f))
		}
		for i := range 20 {
			if m := alice.nextMessage(); m.Text != fmt.Sprintf("réponse %d ✓", i) {
				t.Fatalf("message %d = %q", i, m.Text)
			}
		}

		expectCode(t, alice.do(sendTo("nobody", "hi")), codeNotFound)
		expectCode(t, alice.do(&chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{
			To: &chatpb.Send_UserId{UserId: 9999}, Text: "hi"}}}), codeNotFound)
		expectCode(t, alice.do(&chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{Text: "to no one"}}}), codeInvalid)
		expectCode(t, alice.do(sendTo("bob", "")), codeInvalid)
		expectCode(t, alice.do(sendTo("bob", strings.Repeat("x", 4097))), codeInvalid)
		expectOK(t, alice.do(sendTo("bob", strings.Repeat("x", 4096))))
		if m := bob.nextMessage(); len(m.Text) != 4096 {
			t.Fatalf("4096-byte text arrived as %d bytes", len(m.Text))
		}
		// Invalid UTF-8 gets an error for that request; the connection stays.
		alice.writeRaw(invalidUTF8Send(alice.seq + 1))
		alice.seq++
		resp = alice.read()
		if resp.Seq != alice.seq {
			t.Fatalf("response seq %d, want %d", resp.Seq, alice.seq)
		}
		expectCode(t, resp, codeInvalid)
		bob.noPush(200 * time.Millisecond)
	})
}

// invalidUTF8Send builds a Send frame whose text is not valid UTF-8, which
// the Go protobuf encoder refuses to produce, by writing the bytes by hand.
func invalidUTF8Send(seq uint64) []byte {
	text := []byte{'b', 'a', 'd', 0xff, 0xfe}
	// Send{username: "bob", text: text}
	send := []byte{0x12, 3, 'b', 'o', 'b', 0x22, byte(len(text))}
	send = append(send, text...)
	// Frame{seq: seq, send: send}
	frame := []byte{0x08, byte(seq), 0x72, byte(len(send))}
	frame = append(frame, send...)
	return append([]byte{0, 0, 0, byte(len(frame))}, frame...)
}

func TestOfflineDeliveryAckAndRedelivery(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		bob, _ := ts.user(t, "bob")
		bob.c.Close() // bob goes away
		alice, _ := ts.user(t, "alice")

		var ids []uint64
		for i := range 5 {
			resp := alice.do(sendTo("bob", fmt.Sprintf("while away %d", i)))
			expectOK(t, resp)
			ids = append(ids, resp.GetSendOk().MsgId)
		}
		// bob's close may race the first send; the rest must say offline.
		if alice.do(sendTo("bob", "and one more")).GetSendOk().Online {
			t.Fatal("SendOK.online true for a user who left")
		}

		bob, _ = ts.user(t, "bob")
		for i := range 5 {
			m := bob.nextMessage()
			if m.MsgId != ids[i] || m.Text != fmt.Sprintf("while away %d", i) {
				t.Fatalf("replayed message %d = %v", i, m)
			}
		}
		last := bob.nextMessage()
		if last.Text != "and one more" {
			t.Fatalf("last replayed = %q", last.Text)
		}
		// bob acks all but the last two and comes back: exactly those two again.
		bob.sendFrame(ackReq(ids[0], ids[1], ids[2], ids[3]))
		expectOK(t, bob.do(pingReq())) // the Ack has been handled once Ping answers
		bob.c.Close()

		bob, _ = ts.user(t, "bob")
		if m := bob.nextMessage(); m.MsgId != ids[4] {
			t.Fatalf("after ack, first replay = %v, want %d", m, ids[4])
		}
		if m := bob.nextMessage(); m.MsgId != last.MsgId {
			t.Fatalf("after ack, second replay = %v", m)
		}
		bob.sendFrame(ackReq(ids[4], last.MsgId))
		expectOK(t, bob.do(pingReq()))
		bob.c.Close()

		bob, _ = ts.user(t, "bob")
		bob.noPush(300 * time.Millisecond)
	})
}

func TestClientMsgIDIsIdempotent(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		alice, _ := ts.user(t, "alice")
		bob, _ := ts.user(t, "bob")
		send := func() *chatpb.SendOK {
			resp := alice.do(&chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{
				To: &chatpb.Send_Username{Username: "bob"}, Text: "once", ClientMsgId: "c-1"}}})
			expectOK(t, resp)
			return resp.GetSendOk()
		}
		first, retry := send(), send()
		if first.MsgId != retry.MsgId || first.SentAtMs != retry.SentAtMs {
			t.Fatalf("retry got %v, first %v", retry, first)
		}
		if m := bob.nextMessage(); m.MsgId != first.MsgId {
			t.Fatalf("bob got %v", m)
		}
		bob.noPush(300 * time.Millisecond)
		expectCode(t, alice.do(&chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{
			To: &chatpb.Send_Username{Username: "bob"}, Text: "x", ClientMsgId: strings.Repeat("k", 65)}}}), codeInvalid)
	})
}

func TestFriends(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		alice, _ := ts.user(t, "alice")
		bob, bobOK := ts.user(t, "bob")
		carol, _ := ts.user(t, "carol")

		add := func(rc *rawConn, name string) *chatpb.Frame {
			return rc.do(&chatpb.Frame{Body: &chatpb.Frame_AddFriend{AddFriend: &chatpb.AddFriend{Username: name}}})
		}
		list := func(rc *rawConn) []*chatpb.Friend {
			resp := rc.do(&chatpb.Frame{Body: &chatpb.Frame_ListFriends{ListFriends: &chatpb.ListFriends{}}})
			expectOK(t, resp)
			return resp.GetFriendList().GetFriends()
		}
		expectOK(t, add(alice, "bob"))
		expectOK(t, add(alice, "carol"))
		expectCode(t, add(alice, "bob"), codeExists)
		expectCode(t, add(bob, "alice"), codeExists) // friendship is mutual
		expectCode(t, add(alice, "alice"), codeInvalid)
		expectCode(t, add(alice, "nobody"), codeNotFound)

		fl := list(alice)
		if len(fl) != 2 || fl[0].Username != "bob" || fl[0].UserId != bobOK.UserId || !fl[0].Online || fl[1].Username != "carol" {
			t.Fatalf("alice's friends = %v", fl)
		}
		if bl := list(bob); len(bl) != 1 || bl[0].Username != "alice" || !bl[0].Online {
			t.Fatalf("bob's friends = %v", bl)
		}
		carol.c.Close()
		waitFor(t, "carol to show offline", func() bool {
			fl := list(alice)
			return len(fl) == 2 && !fl[1].Online
		})
		// LoginOK carries the friend list too.
		_, ok := ts.user(t, "carol")
		if len(ok.Friends) != 1 || ok.Friends[0].Username != "alice" || !ok.Friends[0].Online {
			t.Fatalf("carol's LoginOK friends = %v", ok.Friends)
		}
	})
}

func TestGroups(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		alice, aliceOK := ts.user(t, "alice")
		bob, _ := ts.user(t, "bob")
		carol, _ := ts.user(t, "carol")
		dave, _ := ts.user(t, "dave")

		resp := alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "climbers", Description: "weekend trips"}}})
		expectOK(t, resp)
		gid := resp.GetGroupCreated().GetGroupId()
		join := func(rc *rawConn, id uint64) *chatpb.Frame {
			return rc.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: id}}})
		}
		leave := func(rc *rawConn, id uint64) *chatpb.Frame {
			return rc.do(&chatpb.Frame{Body: &chatpb.Frame_LeaveGroup{LeaveGroup: &chatpb.LeaveGroup{GroupId: id}}})
		}
		expectOK(t, join(bob, gid))
		expectOK(t, join(carol, gid))
		expectCode(t, join(bob, gid), codeExists)
		expectCode(t, join(bob, gid+100), codeNotFound)
		expectCode(t, leave(dave, gid), codeDenied)
		expectCode(t, alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: ""}}}), codeInvalid)

		resp = bob.do(&chatpb.Frame{Body: &chatpb.Frame_ListGroups{ListGroups: &chatpb.ListGroups{}}})
		expectOK(t, resp)
		gl := resp.GetGroupList().GetGroups()
		if len(gl) != 1 || gl[0].GroupId != gid || gl[0].Name != "climbers" || gl[0].Description != "weekend trips" || len(gl[0].Members) != 3 {
			t.Fatalf("bob's groups = %v", gl)
		}
		creator := gl[0].Members[0]
		if creator.UserId != aliceOK.UserId || creator.Role != chatpb.Role_ROLE_CREATOR || !creator.Online {
			t.Fatalf("first member = %v, want alice as creator, online", creator)
		}
		if gl[0].Members[1].Username != "bob" || gl[0].Members[1].Role != chatpb.Role_ROLE_MEMBER {
			t.Fatalf("second member = %v", gl[0].Members[1])
		}

		// Online members get it live; the sender does not get a copy.
		carol.c.Close()
		resp = alice.do(sendGroup(gid, "summit at dawn"))
		expectOK(t, resp)
		if !resp.GetSendOk().Online {
			t.Fatal("group SendOK.online false with bob online")
		}
		m := bob.nextMessage()
		if m.GroupId != gid || m.Text != "summit at dawn" || m.FromUsername != "alice" || m.ToUserId != 0 {
			t.Fatalf("bob got %v", m)
		}
		alice.noPush(200 * time.Millisecond)
		// Offline members get it at login.
		carol, _ = ts.user(t, "carol")
		if m := carol.nextMessage(); m.GroupId != gid || m.Text != "summit at dawn" {
			t.Fatalf("carol's replay = %v", m)
		}

		expectCode(t, dave.do(sendGroup(gid, "let me in")), codeDenied)
		expectCode(t, dave.do(sendGroup(gid+100, "hello?")), codeNotFound)
		bob.noPush(200 * time.Millisecond)

		expectOK(t, leave(bob, gid))
		expectCode(t, bob.do(sendGroup(gid, "bye")), codeDenied)
		expectOK(t, carol.do(sendGroup(gid, "bob left")))
		if m := alice.nextMessage(); m.Text != "bob left" {
			t.Fatalf("alice got %v", m)
		}
		bob.noPush(200 * time.Millisecond)
	})
}

// The friend and group limits reach the client as PERMISSION_DENIED with
// a reason, and leave the lists as they were.
func TestFriendAndGroupLimits(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.MaxFriends, opts.MaxGroups, opts.MaxGroupMembers = 1, 1, 2
		ts := startServer(t, opts)
		alice, _ := ts.user(t, "alice")
		bob, _ := ts.user(t, "bob")
		carol, _ := ts.user(t, "carol")

		addFriend := func(rc *rawConn, name string) *chatpb.Frame {
			return rc.do(&chatpb.Frame{Body: &chatpb.Frame_AddFriend{AddFriend: &chatpb.AddFriend{Username: name}}})
		}
		expectOK(t, addFriend(alice, "bob"))
		expectCode(t, addFriend(alice, "carol"), codeDenied)
		expectCode(t, addFriend(carol, "bob"), codeDenied) // bob is full too

		create := func(rc *rawConn, name string) *chatpb.Frame {
			return rc.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: name}}})
		}
		join := func(rc *rawConn, id uint64) *chatpb.Frame {
			return rc.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: id}}})
		}
		resp := create(alice, "pair")
		expectOK(t, resp)
		gid := resp.GetGroupCreated().GetGroupId()
		expectOK(t, join(bob, gid))
		full := join(carol, gid)
		expectCode(t, full, codeDenied)
		if !strings.Contains(full.GetError().GetMessage(), "full") {
			t.Fatalf("full group error says %q", full.GetError().GetMessage())
		}
		expectCode(t, create(alice, "second"), codeDenied) // alice is in one group already
		resp = create(carol, "own")
		expectOK(t, resp)
		expectCode(t, join(bob, resp.GetGroupCreated().GetGroupId()), codeDenied)

		groups := alice.do(&chatpb.Frame{Body: &chatpb.Frame_ListGroups{ListGroups: &chatpb.ListGroups{}}})
		expectOK(t, groups)
		if gl := groups.GetGroupList().GetGroups(); len(gl) != 1 || len(gl[0].Members) != 2 {
			t.Fatalf("alice's groups = %v", gl)
		}
		friends := carol.do(&chatpb.Frame{Body: &chatpb.Frame_ListFriends{ListFriends: &chatpb.ListFriends{}}})
		if fl := friends.GetFriendList().GetFriends(); len(fl) != 0 {
			t.Fatalf("carol's friends = %v", fl)
		}
	})
}

// Password guessing from one address is cut off after --login-failures
// wrong tries, before any hashing; the right password from that address
// waits too, while token logins and other addresses are untouched.
func TestFailedLoginsThrottleTheirAddress(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.LoginFailures = 3
		ts := startServer(t, opts)
		_, ok := ts.user(t, "alice")

		guesser := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9)}
		rc := dialFrom(t, ts.addr, guesser)
		for range 3 {
			expectCode(t, rc.do(loginReq("alice", "wrong password")), codeUnauth)
		}
		throttled := rc.do(loginReq("alice", pw))
		expectCode(t, throttled, codeRateLimited)
		if !strings.Contains(throttled.GetError().GetMessage(), "failed logins") {
			t.Fatalf("throttled login says %q", throttled.GetError().GetMessage())
		}
		expectCode(t, dialFrom(t, ts.addr, guesser).do(loginReq("alice", pw)), codeRateLimited)

		expectOK(t, dialFrom(t, ts.addr, guesser).do(tokenReq(ok.Token)))
		expectOK(t, dialFrom(t, ts.addr, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 10)}).do(loginReq("alice", pw)))
	})
}

// A group send pays the rate limit for its size: one request per 100
// recipients on top of its own, so one member cannot make the node push
// a hundred times a big group's size every second.
func TestBigGroupSendsPayForTheirFanout(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.RateLimit, opts.RateBurst = 0.001, 8 // no refill within the test
		ts := startServer(t, opts)
		alice, _ := ts.user(t, "alice") // register + login: 6 of 8 left
		resp := alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "crowd"}}})
		expectOK(t, resp) // 5 left
		gid := resp.GetGroupCreated().GetGroupId()
		ctx := context.Background()
		var first uint64
		for i := range 300 {
			u, err := ts.store.CreateUser(ctx, fmt.Sprintf("member%03d", i), []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			if err := ts.store.JoinGroup(ctx, gid, u.ID, Limits{}); err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				first = u.ID
			}
		}
		expectOK(t, alice.do(sendGroup(gid, "to 300"))) // 1 + 3: 1 left
		limited := alice.do(sendGroup(gid, "again"))    // 1, then 3 more it does not have
		expectCode(t, limited, codeRateLimited)
		if !strings.Contains(limited.GetError().GetMessage(), "big group") {
			t.Fatalf("fan-out refusal says %q", limited.GetError().GetMessage())
		}
		in, err := ts.store.Inbox(ctx, first, 0, 10)
		if err != nil || len(in) != 1 || in[0].Text != "to 300" {
			t.Fatalf("a member's inbox = %v, %v; want only the send that was allowed", in, err)
		}

		// A small group costs a send no more than a direct message.
		bob, _ := ts.user(t, "bob") // 6 left
		resp = bob.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "few"}}})
		small := resp.GetGroupCreated().GetGroupId() // 5 left
		for range 5 {
			expectOK(t, bob.do(sendGroup(small, "cheap")))
		}
	})
}

func TestTimeouts(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.LoginTimeout = 500 * time.Millisecond
		opts.IdleTimeout = 1500 * time.Millisecond
		ts := startServer(t, opts)

		lurker := dial(t, ts.addr)
		start := time.Now()
		lurker.expectKicked(chatpb.KickReason_KICK_REASON_LOGIN_TIMEOUT)
		if d := time.Since(start); d < 400*time.Millisecond {
			t.Fatalf("kicked after %v, before the login deadline", d)
		}

		silent, _ := ts.user(t, "silent")
		chatty, _ := ts.user(t, "chatty")
		start = time.Now()
		done := make(chan struct{})
		go func() {
			defer close(done)
			silent.expectKicked(chatpb.KickReason_KICK_REASON_IDLE_TIMEOUT)
		}()
		// chatty pings more often than the idle timeout and stays.
		for time.Since(start) < 2500*time.Millisecond {
			expectOK(t, chatty.do(pingReq()))
			time.Sleep(300 * time.Millisecond)
		}
		<-done
		if d := time.Since(start); d < time.Second {
			t.Fatalf("idle kick after %v, before the idle timeout", d)
		}
		expectOK(t, chatty.do(pingReq()))
	})
}

func TestRestartKeepsEverything(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		ts := startServer(t, opts)
		alice, _ := ts.user(t, "alice")
		bob, _ := ts.user(t, "bob")
		expectOK(t, alice.do(&chatpb.Frame{Body: &chatpb.Frame_AddFriend{AddFriend: &chatpb.AddFriend{Username: "bob"}}}))
		resp := alice.do(&chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: "g"}}})
		gid := resp.GetGroupCreated().GetGroupId()
		expectOK(t, bob.do(&chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}}))
		bob.c.Close()
		expectOK(t, alice.do(sendTo("bob", "direct, stored")))
		expectOK(t, alice.do(sendGroup(gid, "group, stored")))

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ts.Shutdown(ctx); err != nil {
			t.Fatalf("shutdown: %v", err)
		}
		alice.expectKicked(chatpb.KickReason_KICK_REASON_SERVER_SHUTTING_DOWN)

		ts2 := startServer(t, opts) // same data dir, so same store and token secret
		bob, ok := ts2.user(t, "bob")
		if len(ok.Friends) != 1 || ok.Friends[0].Username != "alice" {
			t.Fatalf("friends after restart = %v", ok.Friends)
		}
		if len(ok.Groups) != 1 || ok.Groups[0].GroupId != gid || len(ok.Groups[0].Members) != 2 {
			t.Fatalf("groups after restart = %v", ok.Groups)
		}
		if m := bob.nextMessage(); m.Text != "direct, stored" {
			t.Fatalf("first stored message = %v", m)
		}
		if m := bob.nextMessage(); m.Text != "group, stored" || m.GroupId != gid {
			t.Fatalf("second stored message = %v", m)
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testproc.WaitUntil(t, what, 5*time.Second, cond)
}

func TestShutdownWithoutStart(t *testing.T) {
	srv, err := New(testOptions(t, EngineGnet))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown of a server never started: %v", err)
	}
}

// A message stored just before a login's inbox replay, whose live publish
// arrives only after the replay ended, is pushed once: by the replay.
func TestLatePublishAfterReplayIsNotPushedTwice(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		ctx := context.Background()
		bob, bobOK := ts.user(t, "bob")
		alice, aliceOK := ts.user(t, "alice")
		expectOK(t, bob.do(&chatpb.Frame{Body: &chatpb.Frame_Logout{Logout: &chatpb.Logout{}}}))
		// Stored, but its publish is "late": it happens after bob's replay.
		m := &chatpb.Message{FromUserId: aliceOK.UserId, FromUsername: "alice", ToUserId: bobOK.UserId, Text: "late"}
		m.MsgId, m.SentAtMs = ts.ids.next(time.Now())
		if _, err := ts.store.AppendMessage(ctx, m, []uint64{bobOK.UserId}, ""); err != nil {
			t.Fatal(err)
		}
		expectOK(t, bob.do(loginReq("bob", pw)))
		if got := bob.nextMessage(); got.MsgId != m.MsgId {
			t.Fatalf("replay pushed %v", got)
		}
		frame, _ := encodePush(m)
		if _, err := ts.broker.Publish(ctx, []uint64{bobOK.UserId}, Event{Message: m, frame: frame}); err != nil {
			t.Fatal(err)
		}
		// The next push bob sees is the next message, not the late copy.
		expectOK(t, alice.do(sendTo("bob", "next")))
		if got := bob.nextMessage(); got.Text != "next" {
			t.Fatalf("bob got %q (msg %d) again after the replay", got.Text, got.MsgId)
		}
	})
}

// --lock-loops is the same server with each loop on a thread of its own.
func TestLockedLoopsChat(t *testing.T) {
	opts := testOptions(t, EngineGnet)
	opts.LockLoops = true
	ts := startServer(t, opts)
	alice, _ := ts.user(t, "alice")
	bob, _ := ts.user(t, "bob")
	for i := range 10 {
		expectOK(t, alice.do(sendTo("bob", fmt.Sprintf("locked %d", i))))
	}
	for i := range 10 {
		if m := bob.nextMessage(); m.Text != fmt.Sprintf("locked %d", i) {
			t.Fatalf("message %d = %q", i, m.Text)
		}
	}
}
