package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

func loginDeviceReq(user, device string) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_Login{Login: &chatpb.Login{Username: user, Password: pw, DeviceId: device}}}
}

// device logs user in as device on a fresh connection to ts (registering
// the user first if needed).
func (ts *testServer) device(t *testing.T, user, device string) (*rawConn, *chatpb.LoginOK) {
	t.Helper()
	rc := dial(t, ts.addr)
	if e := rc.do(registerReq(user, pw)).GetError(); e != nil && e.Code != chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS {
		t.Fatalf("register %s: %v", user, e)
	}
	resp := rc.do(loginDeviceReq(user, device))
	expectOK(t, resp)
	return rc, resp.GetLoginOk()
}

// TestDevicesEachGetEveryMessage: two devices of one user online at once
// (on one node, and on two), each pushed every message to the user and
// the user's own messages from the other device, each with its own inbox:
// an ack from one leaves the other's copy, which a reconnect replays.
func TestDevicesEachGetEveryMessage(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		phone, phoneOK := a.device(t, "alice", "phone")
		laptop, laptopOK := b.device(t, "alice", "laptop")
		if phoneOK.DeviceId != "phone" || laptopOK.DeviceId != "laptop" {
			t.Fatalf("LoginOK device ids %q %q", phoneOK.DeviceId, laptopOK.DeviceId)
		}
		bob, bobOK := a.user(t, "bob")

		sent := bob.do(sendTo("alice", "to both"))
		expectOK(t, sent)
		if !sent.GetSendOk().Online {
			t.Fatal("alice counted offline")
		}
		id := sent.GetSendOk().MsgId
		for name, dev := range map[string]*rawConn{"phone": phone, "laptop": laptop} {
			if m := dev.nextMessage(); m.MsgId != id || m.FromUserId != bobOK.UserId {
				t.Fatalf("%s got %+v", name, m)
			}
		}

		// Sent from the phone: bob gets it, and so does the laptop, marked
		// as alice's own; the phone only has its SendOK.
		own := phone.do(sendTo("bob", "from my phone"))
		expectOK(t, own)
		if m := bob.nextMessage(); m.MsgId != own.GetSendOk().MsgId {
			t.Fatalf("bob got %+v", m)
		}
		if m := laptop.nextMessage(); m.MsgId != own.GetSendOk().MsgId || m.FromUserId != phoneOK.UserId || m.ToUserId != bobOK.UserId {
			t.Fatalf("the laptop got %+v, want alice's own message to bob", m)
		}
		phone.noPush(200 * time.Millisecond)

		// The phone acks bob's (its own is not in its box); the laptop
		// acks nothing. Reconnected, the laptop
		// (on the other node) is replayed both, and the phone nothing.
		phone.sendFrame(ackReq(id))
		expectOK(t, phone.do(pingReq()))
		laptop.c.Close()
		phone.c.Close()
		laptop, _ = a.device(t, "alice", "laptop")
		got := []uint64{laptop.nextMessage().MsgId, laptop.nextMessage().MsgId}
		if got[0] != id || got[1] != own.GetSendOk().MsgId {
			t.Fatalf("the laptop's replay %v, want [%d %d]", got, id, own.GetSendOk().MsgId)
		}
		phone, _ = b.device(t, "alice", "phone")
		phone.noPush(300 * time.Millisecond)

		// While the phone is away, its box fills; the laptop's acks do not
		// empty it.
		phone.c.Close()
		time.Sleep(100 * time.Millisecond) // the phone's cleanup, so the pushes below are not live for it
		var ids []uint64
		for i := range 3 {
			r := bob.do(sendTo("alice", fmt.Sprint("away ", i)))
			expectOK(t, r)
			ids = append(ids, r.GetSendOk().MsgId)
		}
		for range ids {
			laptop.sendFrame(ackReq(laptop.nextMessage().MsgId))
		}
		expectOK(t, laptop.do(pingReq()))
		phone, _ = b.device(t, "alice", "phone")
		for _, want := range ids {
			if m := phone.nextMessage(); m.MsgId != want {
				t.Fatalf("the phone's replay: got %d, want %d", m.MsgId, want)
			}
		}

		// A device never seen before starts now: nothing from before.
		tablet, _ := a.device(t, "alice", "tablet")
		tablet.noPush(300 * time.Millisecond)
		r := bob.do(sendTo("alice", "after the tablet came"))
		expectOK(t, r)
		if m := tablet.nextMessage(); m.MsgId != r.GetSendOk().MsgId {
			t.Fatalf("the tablet got %+v", m)
		}
	})
}

// TestOwnMessageSkipsEverySessionOfItsDevice: a message the user sent
// from a device is pushed to the user's other devices and never to that
// device, even to a later session of it. The push can come late: after a
// pub/sub reconnect a node gets what was published meanwhile, when the
// sending session may be gone and the device logged in again on another
// connection. (The devices fault test, TestFaultDevicesCluster in
// cmd/loopchat, found phones shown their own messages that way after a
// Redis restart.) Here the event names a session of the phone that no
// longer exists.
func TestOwnMessageSkipsEverySessionOfItsDevice(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		phone, alice := a.device(t, "alice", "phone")
		laptop, _ := b.device(t, "alice", "laptop")
		_, bob := a.user(t, "bob")
		from := func(device, text string) *chatpb.Message {
			m := &chatpb.Message{FromUserId: alice.UserId, FromUsername: "alice", ToUserId: bob.UserId, Text: text}
			m.MsgId, m.SentAtMs = a.ids.next(time.Now())
			ev := Event{Message: m, Epoch: alice.StoreEpoch, OriginNode: a.opts.NodeID, OriginConn: 1 << 40, OriginDevice: device}
			if _, err := a.broker.Publish(context.Background(), []uint64{alice.UserId}, ev); err != nil {
				t.Fatal(err)
			}
			return m
		}
		late := from("phone", "sent from the phone's last session")
		if m := laptop.nextMessage(); m.MsgId != late.MsgId {
			t.Fatalf("the laptop got %+v, want the phone's message", m)
		}
		phone.noPush(200 * time.Millisecond)
		// Sent from the laptop's: the phone gets it, the laptop does not.
		other := from("laptop", "sent from the laptop's last session")
		if m := phone.nextMessage(); m.MsgId != other.MsgId {
			t.Fatalf("the phone got %+v, want the laptop's message", m)
		}
		laptop.noPush(200 * time.Millisecond)
	})
}

// TestDeviceLoginReplacesOnlyItsOwnSession: a second login of the same
// device kicks the first with LOGGED_IN_ELSEWHERE; other devices stay.
func TestDeviceLoginReplacesOnlyItsOwnSession(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		phone1, _ := a.device(t, "alice", "phone")
		laptop, _ := a.device(t, "alice", "laptop")
		phone2, _ := b.device(t, "alice", "phone")
		phone1.expectKicked(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE)
		bob, _ := b.user(t, "bob")
		r := bob.do(sendTo("alice", "still here?"))
		expectOK(t, r)
		for _, dev := range []*rawConn{laptop, phone2} {
			if m := dev.nextMessage(); m.MsgId != r.GetSendOk().MsgId {
				t.Fatalf("got %+v", m)
			}
		}
	})
}

// TestDeviceLimit: with --max-devices 2, a third device online kicks the
// device with the oldest login with DEVICE_LIMIT, on whichever node it is.
func TestDeviceLimit(t *testing.T) {
	onOneNodeAndTwoWith(t, func(o *Options) { o.MaxDevices = 2 }, func(t *testing.T, a, b *testServer) {
		phone, _ := a.device(t, "alice", "phone")
		laptop, _ := b.device(t, "alice", "laptop")
		laptop.noPush(200 * time.Millisecond)
		tablet, _ := b.device(t, "alice", "tablet")
		phone.expectKicked(chatpb.KickReason_KICK_REASON_DEVICE_LIMIT)
		expectOK(t, laptop.do(pingReq()))
		expectOK(t, tablet.do(pingReq()))
		// The kicked device coming back is the newest: the laptop goes.
		phone, _ = a.device(t, "alice", "phone")
		laptop.expectKicked(chatpb.KickReason_KICK_REASON_DEVICE_LIMIT)
		expectOK(t, phone.do(pingReq()))
		expectOK(t, tablet.do(pingReq()))
	})
}

// TestOneDevicePerUser: --max-devices 1 is newest-login-wins, whatever the
// device ids, with one inbox.
func TestOneDevicePerUser(t *testing.T) {
	onOneNodeAndTwoWith(t, func(o *Options) { o.MaxDevices = 1 }, func(t *testing.T, a, b *testServer) {
		phone, ok := a.device(t, "alice", "phone")
		if ok.DeviceId != "" {
			t.Fatalf("LoginOK.device_id %q with one device per user", ok.DeviceId)
		}
		bob, _ := a.user(t, "bob")
		r := bob.do(sendTo("alice", "waiting"))
		expectOK(t, r)
		laptop, _ := b.device(t, "alice", "laptop")
		phone.expectKicked(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE)
		// The same inbox: what the phone never acked is replayed.
		if m := laptop.nextMessage(); m.MsgId != r.GetSendOk().MsgId {
			t.Fatalf("laptop got %+v", m)
		}
	})
}

// TestBadDeviceIDs are refused with INVALID_ARGUMENT and the connection
// may log in again.
func TestBadDeviceIDs(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		rc := dial(t, ts.addr)
		expectOK(t, rc.do(registerReq("alice", pw)))
		for _, bad := range []string{strings.Repeat("d", 65), "tab\there"} {
			expectCode(t, rc.do(loginDeviceReq("alice", bad)), codeInvalid)
		}
		resp := rc.do(loginDeviceReq("alice", strings.Repeat("é", 32)))
		expectOK(t, resp)
	})
}

// TestNoteToSelfReachesEachDeviceOnce: a message to yourself is in each of
// your devices' inboxes once, the sending one included, and acking it
// there empties that inbox.
func TestNoteToSelfReachesEachDeviceOnce(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		phone, _ := a.device(t, "alice", "phone")
		laptop, _ := b.device(t, "alice", "laptop")
		r := phone.do(sendTo("alice", "note"))
		expectOK(t, r)
		id := r.GetSendOk().MsgId
		for _, dev := range []*rawConn{phone, laptop} {
			if m := dev.nextMessage(); m.MsgId != id {
				t.Fatalf("got %+v", m)
			}
			dev.noPush(200 * time.Millisecond)
			dev.sendFrame(ackReq(id))
			expectOK(t, dev.do(pingReq()))
			dev.c.Close()
		}
		for _, d := range []struct {
			ts   *testServer
			name string
		}{{a, "phone"}, {b, "laptop"}} {
			dev, _ := d.ts.device(t, "alice", d.name)
			dev.noPush(300 * time.Millisecond)
		}
	})
}

// TestUnnamedDeviceHasItsOwnInbox: a client without a device_id is a
// device of its own. A named device logging in while it is in use gets a
// box of its own: the unnamed one's acks leave it alone, and each gets the
// user's messages sent from the other.
func TestUnnamedDeviceHasItsOwnInbox(t *testing.T) {
	onOneNodeAndTwo(t, func(t *testing.T, a, b *testServer) {
		plain, _ := a.user(t, "alice") // no device_id
		named, _ := b.device(t, "alice", "x")
		bob, _ := a.user(t, "bob")

		sent := bob.do(sendTo("alice", "to both"))
		expectOK(t, sent)
		id := sent.GetSendOk().MsgId
		for name, dev := range map[string]*rawConn{"unnamed": plain, "x": named} {
			if m := dev.nextMessage(); m.MsgId != id {
				t.Fatalf("%s got %+v", name, m)
			}
		}
		own := plain.do(sendTo("bob", "from the unnamed device"))
		expectOK(t, own)
		if m := named.nextMessage(); m.MsgId != own.GetSendOk().MsgId {
			t.Fatalf("x got %+v, want alice's own message from the unnamed device", m)
		}

		// The unnamed device acks; x acks nothing and comes back.
		plain.sendFrame(ackReq(id))
		expectOK(t, plain.do(pingReq()))
		named.c.Close()
		named, _ = b.device(t, "alice", "x")
		got := []uint64{named.nextMessage().MsgId, named.nextMessage().MsgId}
		if got[0] != id || got[1] != own.GetSendOk().MsgId {
			t.Fatalf("x's replay %v, want [%d %d]", got, id, own.GetSendOk().MsgId)
		}

		// Both away: each gets what was sent meanwhile at its next login.
		plain.c.Close()
		named.c.Close()
		time.Sleep(100 * time.Millisecond)
		away := bob.do(sendTo("alice", "while both were away"))
		expectOK(t, away)
		plain, _ = a.user(t, "alice")
		if m := plain.nextMessage(); m.MsgId != away.GetSendOk().MsgId {
			t.Fatalf("the unnamed device's replay: %+v", m)
		}
		named, _ = b.device(t, "alice", "x")
		named.nextMessage() // bob's first, still unacked by x
		if m := named.nextMessage(); m.MsgId != own.GetSendOk().MsgId {
			t.Fatalf("x's replay: %+v", m)
		}
		if m := named.nextMessage(); m.MsgId != away.GetSendOk().MsgId {
			t.Fatalf("x's replay: %+v", m)
		}
	})
}

func TestValidateDeviceID(t *testing.T) {
	for _, ok := range []string{"", "phone", "Phone", "téléphone 2", strings.Repeat("x", maxDeviceID)} {
		if err := validateDeviceID(ok); err != nil {
			t.Errorf("validateDeviceID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"a\x01b", "a\x7fb", "a\u0085b", "a\u009fb", "\xff", strings.Repeat("x", maxDeviceID+1)} {
		if err := validateDeviceID(bad); err == nil {
			t.Errorf("validateDeviceID(%q) accepted", bad)
		}
	}
}
