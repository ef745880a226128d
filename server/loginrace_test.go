package server

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/loopchat/loopchat/internal/testproc"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// raceOutcome is what one of the racing connections saw.
type raceOutcome struct {
	loginOK  bool // answered LoginOK
	kicked   chatpb.KickReason
	gotProbe bool // received the message sent after every login answered
	err      error
}

// Logins of one user racing on two nodes (and two on one node) leave
// exactly one session: the others are kicked with LOGGED_IN_ELSEWHERE, and
// only the survivor receives the next message.
func TestRacingLoginsLeaveExactlyOneSession(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		r := testproc.StartRedis(t)
		nodes := clusterNodes(t, r, 2, engine)
		sender, _ := nodes[0].user(t, "sender")
		const trials = 25
		for i := range trials {
			name := fmt.Sprintf("racer%d", i)
			first, ok := nodes[i%2].user(t, name)
			first.c.Close() // its token is what the racers use: no bcrypt, so they overlap
			login, err := protocol.Encode(&chatpb.Frame{Seq: 1, Body: &chatpb.Frame_Login{Login: &chatpb.Login{Token: ok.Token}}})
			if err != nil {
				t.Fatal(err)
			}
			racers := []*rawConn{dial(t, nodes[0].addr), dial(t, nodes[1].addr), dial(t, nodes[i%2].addr)}
			outcomes := make([]raceOutcome, len(racers))
			answered := make(chan struct{}, len(racers))
			start := make(chan struct{})
			var wg sync.WaitGroup
			for j, rc := range racers {
				wg.Go(func() {
					<-start
					out := &outcomes[j]
					if _, out.err = rc.c.Write(login); out.err != nil {
						answered <- struct{}{}
						return
					}
					said := false
					for {
						f, err := rc.tryRead(10 * time.Second)
						if err != nil {
							if !said {
								answered <- struct{}{}
							}
							if out.kicked == 0 {
								out.err = err
							}
							return
						}
						switch {
						case f.GetLoginOk() != nil:
							out.loginOK = true
						case f.GetKicked() != nil:
							out.kicked = f.GetKicked().Reason
						case f.GetError() != nil:
							out.err = fmt.Errorf("login answered %v", f.GetError())
						case f.GetMessage() != nil:
							out.gotProbe = true
							_ = rc.c.Close()
							return
						}
						if !said && (out.loginOK || out.kicked != 0 || out.err != nil) {
							said = true
							answered <- struct{}{}
							if out.err != nil {
								return
							}
						}
						// Read on: to the close after a kick, else to the probe.
					}
				})
			}
			close(start)
			for range racers {
				select {
				case <-answered:
				case <-time.After(15 * time.Second):
					t.Fatalf("trial %d: a racing login was not answered", i)
				}
			}
			// Sent after every login answered, on the same user channel as
			// the login notices, so no kick can still be on its way behind it.
			expectOK(t, sender.do(sendTo(name, fmt.Sprintf("probe %d", i))))
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				for _, rc := range racers {
					rc.c.Close()
				}
				<-done
				t.Fatalf("trial %d: a racer neither got the probe nor was closed: %+v", i, outcomes)
			}
			survivors := 0
			for j, o := range outcomes {
				switch {
				case o.gotProbe && o.loginOK && o.kicked == 0:
					survivors++
				case o.kicked == chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE && !o.gotProbe:
				default:
					t.Errorf("trial %d racer %d: %+v", i, j, o)
				}
			}
			if survivors != 1 {
				t.Fatalf("trial %d: %d sessions survived, want exactly 1: %+v", i, survivors, outcomes)
			}
		}
	})
}
