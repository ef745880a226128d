package server

import (
	"context"
	"log/slog"
	"math"
	"strings"
	"testing"

	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// The default bounds exist so that the biggest LoginOK a user can earn —
// every friend, every group with every member, all with the longest names
// and ids — is still a frame a client accepts.
func TestDefaultLimitsKeepLoginOKReadable(t *testing.T) {
	o, err := (&Options{DataDir: t.TempDir()}).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	name := strings.Repeat("n", protocol.MaxUsername)
	ok := &chatpb.LoginOK{UserId: math.MaxUint64, Username: name, Token: strings.Repeat("t", protocol.MaxTokenLength),
		NodeId: strings.Repeat("x", 64), TokenExpiresAtMs: math.MaxInt64}
	for range o.MaxFriends {
		ok.Friends = append(ok.Friends, &chatpb.Friend{UserId: math.MaxUint64, Username: name, Online: true})
	}
	members := make([]*chatpb.Member, o.MaxGroupMembers)
	for i := range members {
		members[i] = &chatpb.Member{UserId: math.MaxUint64, Username: name, Role: chatpb.Role_ROLE_CREATOR, Online: true}
	}
	for range o.MaxGroups {
		ok.Groups = append(ok.Groups, &chatpb.Group{GroupId: math.MaxUint64, Name: strings.Repeat("g", protocol.MaxGroupName),
			Description: strings.Repeat("d", protocol.MaxGroupDesc), Members: members})
	}
	b, err := protocol.Encode(&chatpb.Frame{Seq: math.MaxUint64, Body: &chatpb.Frame_LoginOk{LoginOk: ok}})
	if err != nil {
		t.Fatal(err)
	}
	got := len(b)
	if got > protocol.ClientMaxFrame {
		t.Fatalf("worst LoginOK under the default limits is %d bytes, over the client's %d", got, protocol.ClientMaxFrame)
	}
	// The replay after LoginOK waits while half of --max-outbound is queued;
	// the login answer alone must leave room for it.
	if got > o.MaxOutbound/2 {
		t.Fatalf("worst LoginOK under the default limits is %d bytes, over half of --max-outbound (%d)", got, o.MaxOutbound)
	}
	est := largestLoginOK(o.limits(), ok.NodeId)
	if est < got || est > got+got/100 {
		t.Fatalf("largestLoginOK = %d, encoded worst case %d: the estimate must cover it, within 1%%", est, got)
	}
	t.Logf("worst LoginOK under the default limits: %.2f MiB (estimate %.2f MiB); --max-outbound %d MiB, client frames up to %d MiB",
		float64(got)/(1<<20), float64(est)/(1<<20), o.MaxOutbound>>20, protocol.ClientMaxFrame>>20)
}

func TestLimitsTooBigForLoginAreWarned(t *testing.T) {
	newLogs := func(opts Options) string {
		var logs testproc.SyncBuffer
		opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		srv, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		_ = srv.Shutdown(context.Background())
		return logs.String()
	}
	opts := testOptions(t, EngineGnet)
	opts.MaxGroups = 1000 // 1,000 groups of 1,000 members: a LoginOK of ~50 MiB
	if logs := newLogs(opts); !strings.Contains(logs, "LoginOK too big") {
		t.Fatalf("no warning for limits that allow a ~50 MiB LoginOK; logs:\n%s", logs)
	}
	if logs := newLogs(testOptions(t, EngineGnet)); strings.Contains(logs, "LoginOK too big") {
		t.Fatalf("the defaults were warned about:\n%s", logs)
	}
}
