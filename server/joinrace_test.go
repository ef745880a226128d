package server

import (
	"fmt"
	"sync"
	"testing"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

// TestGroupJoinRaceOneNode: users join a group on the embedded store while
// its members send without pause. Each joiner must be pushed exactly the
// messages its history shows — everything stored after its join and
// nothing from before — however the join and the sends interleave.
func TestGroupJoinRaceOneNode(t *testing.T) {
	ts := startServer(t, testOptions(t, EngineGnet))
	owner, _ := ts.user(t, "owner")
	gid := createGroup(t, owner, "busy")
	var senders []*rawConn
	for i := range 3 {
		rc, _ := ts.user(t, fmt.Sprintf("sender%d", i))
		expectOK(t, rc.do(joinReq(gid)))
		senders = append(senders, rc)
	}
	var joiners []*rawConn
	for i := range 10 {
		rc, _ := ts.user(t, fmt.Sprintf("joiner%d", i))
		joiners = append(joiners, rc)
	}

	stop := make(chan struct{})
	errs := make(chan error, len(senders))
	var wg sync.WaitGroup
	for _, s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				seq := s.sendFrame(sendGroup(gid, "busy"))
				for {
					resp, err := s.tryRead(5 * time.Second)
					if err != nil {
						errs <- err
						return
					}
					if resp.Seq == seq {
						if resp.GetSendOk() == nil {
							errs <- fmt.Errorf("send answered %v", resp)
							return
						}
						break
					}
				}
			}
		}()
	}
	for _, j := range joiners {
		time.Sleep(10 * time.Millisecond)
		// The joiner does not read until the end: its pushes wait in the
		// socket, and do() keeps those read before the answer.
		expectOK(t, j.do(joinReq(gid)))
	}
	time.Sleep(30 * time.Millisecond)
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}

	for i, j := range joiners {
		visible := map[uint64]bool{}
		after := uint64(0)
		for {
			resp := j.do(historyReq(&chatpb.History{GroupId: gid, AfterSeq: u64p(after), Limit: 200}))
			seqs, more := pageSeqs(t, resp)
			for _, s := range seqs {
				visible[s] = true
				after = max(after, s)
			}
			if !more {
				break
			}
		}
		got := map[uint64]bool{}
		take := func(f *chatpb.Frame) {
			if m := f.GetMessage(); m != nil && m.GroupId == gid {
				if !visible[m.Seq] {
					t.Fatalf("joiner%d was pushed seq %d, which its history does not show (stored before its join)", i, m.Seq)
				}
				got[m.Seq] = true
			}
		}
		for _, f := range j.pushes {
			take(f)
		}
		j.pushes = nil
		deadline := time.Now().Add(5 * time.Second)
		for len(got) < len(visible) && time.Now().Before(deadline) {
			f, err := j.tryRead(time.Until(deadline))
			if err != nil {
				break
			}
			take(f)
		}
		if len(got) < len(visible) {
			var missing []uint64
			for s := range visible {
				if !got[s] {
					missing = append(missing, s)
				}
			}
			t.Fatalf("joiner%d: history shows %d messages, %d pushed; never pushed: %v", i, len(visible), len(got), missing)
		}
		if i == 0 && len(visible) < 20 {
			t.Fatalf("joiner0 saw only %d messages: the race was not run", len(visible))
		}
	}
}
