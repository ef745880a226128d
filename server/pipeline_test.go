package server

import (
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/loopchat/loopchat/codec"
	chatpb "github.com/loopchat/loopchat/proto"
)

// encodeSeq encodes f with the given seq, for writing several frames at once.
func encodeSeq(t *testing.T, f *chatpb.Frame, seq uint64) []byte {
	t.Helper()
	f.Seq = seq
	buf, err := encodeForTest(f)
	if err != nil {
		t.Fatal(err)
	}
	return buf
}

// expectEOF asserts the very next thing on the connection is its close:
// no frame of any kind comes after the one before.
func (rc *rawConn) expectEOF() {
	rc.t.Helper()
	f, err := rc.tryRead(10 * time.Second)
	switch {
	case err == nil:
		rc.t.Fatalf("frame %v after Kicked, want the close", f)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err):
	default:
		rc.t.Fatalf("waiting for the close: %v", err)
	}
}

// Requests pipelined in front of a broken frame are all handled and
// answered, in order; only then come Error{PROTOCOL}, Kicked and the close.
// On gnet the requests wait for a worker while the loop reads the broken
// frame, whose answer used to go out at once and close the connection, so
// a Send could be delivered without its SendOK ever arriving. It is a race,
// so it runs many times.
func TestPipelinedRequestsBeforeABrokenFrameAreAnswered(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		bob, _ := ts.user(t, "bob")
		_, _ = ts.user(t, "alice")
		for i := range 30 {
			alice := dial(t, ts.addr)
			expectOK(t, alice.do(loginReq("alice", pw)))
			text := fmt.Sprint("before the break ", i)
			seq := alice.seq
			var batch []byte
			batch = append(batch, encodeSeq(t, sendTo("bob", text), seq+1)...)
			batch = append(batch, encodeSeq(t, pingReq(), seq+2)...)
			batch = append(batch, codec.AppendHeader(nil, 0)...) // a zero length: broken framing
			alice.writeRaw(batch)

			if f := alice.read(); f.Seq != seq+1 || f.GetSendOk() == nil {
				t.Fatalf("round %d: first answer %v, want SendOK for seq %d", i, f, seq+1)
			}
			if f := alice.read(); f.Seq != seq+2 || f.GetPong() == nil {
				t.Fatalf("round %d: second answer %v, want Pong for seq %d", i, f, seq+2)
			}
			if f := alice.read(); f.Seq != 0 || f.GetError().GetCode() != codeProtocol {
				t.Fatalf("round %d: third frame %v, want Error{PROTOCOL}", i, f)
			}
			if f := alice.read(); f.GetKicked().GetReason() != chatpb.KickReason_KICK_REASON_PROTOCOL_ERROR {
				t.Fatalf("round %d: fourth frame %v, want Kicked{PROTOCOL_ERROR}", i, f)
			}
			alice.expectEOF()
			if m := bob.nextMessage(); m.Text != text {
				t.Fatalf("round %d: bob got %q, want %q", i, m.Text, text)
			}
		}
	})
}

// A malformed frame's INVALID_ARGUMENT comes in its turn, after the answer
// to a request in front of it that takes a store write, and before the one
// behind it; the connection stays open.
func TestPipelinedInvalidFrameKeepsAnswerOrder(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		bob, _ := ts.user(t, "bob")
		alice, _ := ts.user(t, "alice")
		for i := range 30 {
			text := fmt.Sprint("in order ", i)
			seq := alice.seq
			var batch []byte
			batch = append(batch, encodeSeq(t, sendTo("bob", text), seq+1)...)
			batch = append(batch, invalidUTF8Send(seq+2)...)
			batch = append(batch, encodeSeq(t, pingReq(), seq+3)...)
			alice.seq += 3
			alice.writeRaw(batch)
			if f := alice.read(); f.Seq != seq+1 || f.GetSendOk() == nil {
				t.Fatalf("round %d: first answer %v, want SendOK for seq %d", i, f, seq+1)
			}
			if f := alice.read(); f.Seq != seq+2 || f.GetError().GetCode() != codeInvalid {
				t.Fatalf("round %d: second answer %v, want INVALID_ARGUMENT for seq %d", i, f, seq+2)
			}
			if f := alice.read(); f.Seq != seq+3 || f.GetPong() == nil {
				t.Fatalf("round %d: third answer %v, want Pong for seq %d", i, f, seq+3)
			}
			if m := bob.nextMessage(); m.Text != text {
				t.Fatalf("round %d: bob got %q, want %q", i, m.Text, text)
			}
		}
	})
}

// A protocol error ends the stream cleanly even when the client sent more
// than the server read: the answers, Error{PROTOCOL}, Kicked, then the end
// of stream, never a reset. A close with unread input is a TCP reset, which
// discards what the server's kernel has not sent yet (on a slow network,
// the answers and the Kicked themselves); an outside client saw it on the
// net engine after a frame over the limit with its payload behind it.
func TestProtocolErrorWithUnreadInputEndsCleanly(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		alice, _ := ts.user(t, "alice")
		seq := alice.seq + 1
		batch := encodeSeq(t, pingReq(), seq)
		over := ts.opts.MaxFrame + 1
		if over <= 1 {
			over = codec.DefaultMaxFrame + 1
		}
		batch = codec.AppendHeader(batch, over)
		batch = append(batch, make([]byte, 64<<10)...) // the oversized frame's payload, unread
		alice.writeRaw(batch)
		if f := alice.read(); f.Seq != seq || f.GetPong() == nil {
			t.Fatalf("first answer %v, want Pong for seq %d", f, seq)
		}
		if f := alice.read(); f.GetError().GetCode() != codeProtocol {
			t.Fatalf("second frame %v, want Error{PROTOCOL}", f)
		}
		if f := alice.read(); f.GetKicked().GetReason() != chatpb.KickReason_KICK_REASON_PROTOCOL_ERROR {
			t.Fatalf("third frame %v, want Kicked{PROTOCOL_ERROR}", f)
		}
		f, err := alice.tryRead(10 * time.Second)
		if err == nil || !(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			t.Fatalf("after Kicked: %v, %v; want a clean end of stream", f, err)
		}
	})
}
