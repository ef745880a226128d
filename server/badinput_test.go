package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/loopchat/loopchat/codec"
	chatpb "github.com/loopchat/loopchat/proto"
)

// chatter keeps a pair of users exchanging messages until stopped, failing
// the test if any message is refused or lost: bad input on one connection
// must not harm anyone else.
func chatter(t *testing.T, ts *testServer, a, b string) (stop func()) {
	t.Helper()
	alice, _ := ts.user(t, a)
	bob, _ := ts.user(t, b)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	errs := make(chan string, 1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			text := fmt.Sprintf("still here %d", i)
			seq := alice.sendFrame(sendTo(b, text))
			resp, err := alice.tryRead(5 * time.Second)
			if err != nil || resp.Seq != seq || resp.GetSendOk() == nil {
				errs <- fmt.Sprintf("send %d: %v %v", i, resp, err)
				return
			}
			m, err := bob.tryRead(5 * time.Second)
			if err != nil || m.GetMessage().GetText() != text {
				errs <- fmt.Sprintf("receive %d: %v %v", i, m, err)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		select {
		case e := <-errs:
			t.Fatalf("bystanders were harmed: %s", e)
		default:
		}
	}
}

func TestBrokenFramingClosesOnlyThatConnection(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.MaxFrame = 1024
		ts := startServer(t, opts)
		stop := chatter(t, ts, "alice", "bob")

		cases := []struct {
			name  string
			bytes []byte
			kind  string
		}{
			{"zero length", codec.AppendHeader(nil, 0), "zero_length"},
			{"oversize", codec.AppendHeader(nil, 1025), "too_large"},
			{"huge", []byte{0xff, 0xff, 0xff, 0xff}, "too_large"},
			{"garbage payload", codec.AppendFrame(nil, []byte("\xff\xff\xff\xff not protobuf")), "garbage"},
			{"garbage after login", nil, "garbage"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				var rc *rawConn
				if tc.bytes == nil {
					rc, _ = ts.user(t, "victim")
					tc.bytes = codec.AppendFrame(nil, []byte{0x0a, 0xff}) // truncated field
				} else {
					rc = dial(t, ts.addr)
					expectOK(t, rc.do(pingReq()))
				}
				before := testutil.ToFloat64(ts.metrics.frameErrors.WithLabelValues(tc.kind))
				rc.writeRaw(tc.bytes)
				f := rc.read()
				if e := f.GetError(); e == nil || e.Code != codeProtocol || f.Seq != 0 {
					t.Fatalf("first frame after %s = %v, want an Error{protocol} push", tc.name, f)
				}
				rc.expectKicked(chatpb.KickReason_KICK_REASON_PROTOCOL_ERROR)
				if after := testutil.ToFloat64(ts.metrics.frameErrors.WithLabelValues(tc.kind)); after != before+1 {
					t.Fatalf("frame_errors{%s} went %v -> %v", tc.kind, before, after)
				}
			})
		}
		// A frame of exactly the limit is fine.
		rc := dial(t, ts.addr)
		ping, _ := codecFrame(&chatpb.Frame{Seq: 7, Body: &chatpb.Frame_Ping{Ping: &chatpb.Ping{}}}, 1024)
		rc.writeRaw(ping)
		if f := rc.read(); f.Seq != 7 || f.GetPong() == nil {
			t.Fatalf("exactly-max frame answered with %v", f)
		}
		stop()
	})
}

// codecFrame encodes f padded with an unknown field to exactly size bytes of payload.
func codecFrame(f *chatpb.Frame, size int) ([]byte, error) {
	buf, err := encodeForTest(f)
	if err != nil {
		return nil, err
	}
	payload := buf[codec.HeaderSize:]
	// Unknown field 1000, length-delimited: tag (2 bytes) + length varint + bytes.
	pad := size - len(payload) - 2 - 2
	field := append([]byte{0xc2, 0x3e}, byte(pad&0x7f|0x80), byte(pad>>7))
	field = append(field, strings.Repeat("p", pad)...)
	return codec.AppendFrame(nil, append(payload, field...)), nil
}

func TestBadRequestsKeepTheConnection(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine))
		rc, _ := ts.user(t, "alice")

		// A body type from a newer protocol (unknown field 200).
		rc.writeRaw(codec.AppendFrame(nil, []byte{0x08, 0x63, 0xc0, 0x0c, 0x01}))
		resp := rc.read()
		if resp.Seq != 0x63 {
			t.Fatalf("unknown type answered with seq %d", resp.Seq)
		}
		expectCode(t, resp, codeInvalid)
		// An empty frame body, and a response type sent as a request.
		expectCode(t, rc.do(&chatpb.Frame{}), codeInvalid)
		expectCode(t, rc.do(&chatpb.Frame{Body: &chatpb.Frame_Pong{Pong: &chatpb.Pong{}}}), codeInvalid)
		expectCode(t, rc.do(&chatpb.Frame{Body: &chatpb.Frame_Message{Message: &chatpb.Message{Text: "forged"}}}), codeInvalid)
		expectCode(t, rc.do(ackReq(make([]uint64, 1025)...)), codeInvalid)
		// The connection still works.
		if resp := rc.do(pingReq()); resp.GetPong() == nil {
			t.Fatalf("ping after bad requests: %v", resp)
		}
	})
}

func TestFloodIsRateLimited(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.RateLimit = 50
		opts.RateBurst = 20
		ts := startServer(t, opts)
		stop := chatter(t, ts, "alice", "bob")

		flooder, _ := ts.user(t, "flooder")
		var batch []byte
		const n = 300
		for i := range n {
			buf, _ := encodeForTest(&chatpb.Frame{Seq: uint64(i + 1), Body: &chatpb.Frame_Ping{Ping: &chatpb.Ping{}}})
			batch = append(batch, buf...)
		}
		before := testutil.ToFloat64(ts.metrics.rateLimited)
		flooder.writeRaw(batch)
		limited, pongs := 0, 0
		for range n {
			f := flooder.read()
			switch {
			case f.GetPong() != nil:
				pongs++
			case f.GetError().GetCode() == codeRateLimited:
				limited++
			default:
				t.Fatalf("flood answered with %v", f)
			}
		}
		if limited == 0 || pongs == 0 {
			t.Fatalf("%d pongs, %d rate-limited: want both", pongs, limited)
		}
		if got := testutil.ToFloat64(ts.metrics.rateLimited) - before; got != float64(limited) {
			t.Fatalf("rate_limited counter moved %v, client saw %d", got, limited)
		}
		stop()
	})
}

func TestSlowReaderIsKicked(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.MaxOutbound = 256 << 10
		ts := startServer(t, opts)
		stop := chatter(t, ts, "alice", "bob")

		sloth, _ := ts.user(t, "sloth")
		// A fixed receive buffer stops the kernel from autotuning it up to tens
		// of MiB (but stays above the loopback MSS, or window updates stall).
		if tc, ok := sloth.c.(interface{ SetReadBuffer(int) error }); ok {
			_ = tc.SetReadBuffer(256 << 10)
		}
		sender, _ := ts.user(t, "sender")
		text := strings.Repeat("z", 4000)
		before := testutil.ToFloat64(ts.metrics.kicks.WithLabelValues("slow_consumer"))
		kicked := false
		start := time.Now()
		for i := 0; i < 20000 && !kicked; i++ {
			resp := sender.do(sendTo("sloth", text))
			expectOK(t, resp)
			kicked = testutil.ToFloat64(ts.metrics.kicks.WithLabelValues("slow_consumer")) > before
		}
		if !kicked {
			t.Fatal("a reader that never reads was not kicked")
		}
		t.Logf("kicked after %v", time.Since(start))
		// sloth's connection is closed: reading drains what was sent, then EOF.
		sloth.expectClosed()
		t.Logf("closed after %v", time.Since(start))
		// Messages to sloth are stored: it gets them at its next login.
		sloth2, _ := ts.user(t, "sloth")
		if m := sloth2.nextMessage(); m.Text != text {
			t.Fatalf("sloth's replay = %v", m)
		}
		stop()
	})
}

// floodUntilKicked logs in "sloth", which then reads nothing, and has
// "sender" send it 4,000-byte messages until the server kicks it as a slow
// consumer. It returns sloth and the text sent.
func floodUntilKicked(t *testing.T, ts *testServer) (*rawConn, string) {
	t.Helper()
	sloth, _ := ts.user(t, "sloth")
	// Keep the kernel from absorbing megabytes on sloth's behalf (see
	// TestSlowReaderIsKicked): the server's own queue must fill.
	if tc, ok := sloth.c.(interface{ SetReadBuffer(int) error }); ok {
		_ = tc.SetReadBuffer(64 << 10)
	}
	sender, _ := ts.user(t, "sender")
	text := strings.Repeat("q", 4000)
	kicks := ts.metrics.kicks.WithLabelValues("slow_consumer")
	before := testutil.ToFloat64(kicks)
	sent := 0
	for testutil.ToFloat64(kicks) == before {
		if sent == 20000 {
			t.Fatal("a client that reads nothing was never kicked")
		}
		expectOK(t, sender.do(sendTo("sloth", text)))
		sent++
	}
	if got := testutil.ToFloat64(kicks) - before; got != 1 {
		t.Fatalf("slow_consumer kicks moved by %v, want 1", got)
	}
	t.Logf("kicked after %d messages", sent)
	return sloth, text
}

// readToEnd reads frames until the stream ends, and says how it ended.
func readToEnd(rc *rawConn) (frames []*chatpb.Frame, end error) {
	frames = append(frames, rc.pushes...)
	rc.pushes = nil
	for {
		f, err := rc.tryRead(10 * time.Second)
		if err != nil {
			return frames, err
		}
		frames = append(frames, f)
	}
}

// expectMessages asserts every frame is a whole Message of text from sender.
func expectMessages(t *testing.T, frames []*chatpb.Frame, text string) {
	t.Helper()
	for i, f := range frames {
		if m := f.GetMessage(); m == nil || m.Text != text || m.FromUsername != "sender" || f.Seq != 0 {
			t.Fatalf("frame %d is %v, want a whole Message from sender", i, f)
		}
	}
}

// A slow consumer is told why it is dropped: once the server gives up on a
// client that stopped reading, what that client reads when it looks again
// is whole Messages, then Kicked{SLOW_CONSUMER}, then a clean end of stream
// — never a frame cut short.
func TestSlowConsumerReadsKickedLast(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.MaxOutbound = 128 << 10
		ts := startServer(t, opts)
		sloth, text := floodUntilKicked(t, ts)

		frames, end := readToEnd(sloth)
		t.Logf("read %d frames, then %v", len(frames), end)
		if !errors.Is(end, io.EOF) {
			// io.ErrUnexpectedEOF: the stream ended inside a frame.
			t.Fatalf("the stream ended with %v after %d whole frames, want a clean EOF after Kicked", end, len(frames))
		}
		if len(frames) == 0 {
			t.Fatal("nothing to read: want Kicked{SLOW_CONSUMER} at least")
		}
		last := frames[len(frames)-1]
		if k := last.GetKicked(); k == nil || k.Reason != chatpb.KickReason_KICK_REASON_SLOW_CONSUMER || last.Seq != 0 {
			t.Fatalf("last frame %v, want Kicked{SLOW_CONSUMER}", last)
		}
		expectMessages(t, frames[:len(frames)-1], text)
	})
}

// A slow consumer that never reads again is not waited on forever: after
// lingerWait its connection is reset, so when it does read it finds whole
// frames and then an error — not a clean end of stream inside a frame.
func TestSlowConsumerThatNeverReadsIsReset(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		opts := testOptions(t, engine)
		opts.MaxOutbound = 128 << 10
		opts.lingerWait = 300 * time.Millisecond
		ts := startServer(t, opts)
		sloth, text := floodUntilKicked(t, ts)

		// Still not reading, wait for the server to let go of sloth (only
		// sender's connection is left).
		deadline := time.Now().Add(10 * time.Second)
		for ts.connCount() > 1 {
			if time.Now().After(deadline) {
				t.Fatalf("sloth's connection still open %v after the kick, want it gone after lingerWait", 10*time.Second)
			}
			time.Sleep(10 * time.Millisecond)
		}

		frames, end := readToEnd(sloth)
		t.Logf("read %d frames, then %v", len(frames), end)
		if !errors.Is(end, syscall.ECONNRESET) {
			t.Fatalf("the stream ended with %v after %d whole frames, want a reset", end, len(frames))
		}
		// What the client had received before the reset is whole frames;
		// Kicked itself was still in the server's buffers.
		expectMessages(t, frames, text)
	})
}

// On the net engine a write that finds no room for writeWait makes the
// client a slow consumer too, even under the outbound limit; the frame in
// progress is finished, so it too sees whole Messages, Kicked, EOF.
func TestSlowConsumerStalledWriteIsKicked(t *testing.T) {
	opts := testOptions(t, EngineNet)
	opts.writeWait = 300 * time.Millisecond
	ts := startServer(t, opts) // the default outbound limit, 16 MiB: far from reached
	sloth, text := floodUntilKicked(t, ts)

	frames, end := readToEnd(sloth)
	t.Logf("read %d frames, then %v", len(frames), end)
	if !errors.Is(end, io.EOF) {
		t.Fatalf("the stream ended with %v after %d whole frames, want a clean EOF after Kicked", end, len(frames))
	}
	last := frames[len(frames)-1]
	if k := last.GetKicked(); k == nil || k.Reason != chatpb.KickReason_KICK_REASON_SLOW_CONSUMER {
		t.Fatalf("last frame %v, want Kicked{SLOW_CONSUMER}", last)
	}
	expectMessages(t, frames[:len(frames)-1], text)
}

// A node that stops while a client has unread output does not cut that
// client's stream inside a frame: the client, kicked by the drain, that
// has still not read by the time the engine stops is reset.
func TestShutdownNeverCutsAFrame(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startServer(t, testOptions(t, engine)) // the default outbound limit: sloth is not kicked as slow
		sloth, login := ts.user(t, "sloth")
		if tc, ok := sloth.c.(interface{ SetReadBuffer(int) error }); ok {
			_ = tc.SetReadBuffer(64 << 10)
		}
		sender, _ := ts.user(t, "sender")
		text := strings.Repeat("s", 4000)
		// Fill sloth's socket until the server itself holds bytes for it.
		conn := ts.users.get(login.UserId)[0]
		for sent := 0; conn.out.queued() < 64<<10; sent++ {
			if sent == 20000 {
				t.Fatal("the server never had to queue output for a client that reads nothing")
			}
			expectOK(t, sender.do(sendTo("sloth", text)))
		}
		if testutil.ToFloat64(ts.metrics.kicks.WithLabelValues("slow_consumer")) != 0 {
			t.Fatal("sloth was kicked as a slow consumer; this test is about shutdown")
		}

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = ts.Shutdown(ctx)

		frames, end := readToEnd(sloth)
		t.Logf("read %d frames, then %v", len(frames), end)
		if !errors.Is(end, syscall.ECONNRESET) {
			t.Fatalf("the stream ended with %v after %d whole frames, want a reset", end, len(frames))
		}
		expectMessages(t, frames, text)
	})
}

// stallStore holds ListFriends until released: a store (or Redis) that has
// stopped answering, while requests keep arriving.
type stallStore struct {
	Store
	armed   *atomic.Bool
	release chan struct{}
}

func (s stallStore) Friends(ctx context.Context, uid uint64) ([]User, error) {
	if s.armed.Load() {
		<-s.release
	}
	return s.Store.Friends(ctx, uid)
}

// While a connection's requests wait behind a stalled store, what it may
// queue is bounded in bytes too: frames past 1 MiB are refused at once
// (RATE_LIMITED), and the ones queued are answered once the store is back.
func TestQueuedRequestBytesAreBounded(t *testing.T) {
	opts := testOptions(t, EngineGnet) // the net engine runs requests inline: no queue
	bolt, err := OpenBoltStore(BoltConfig{Path: filepath.Join(t.TempDir(), "s.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bolt.Close() })
	stall := stallStore{Store: bolt, armed: new(atomic.Bool), release: make(chan struct{})}
	opts.Store = stall
	ts := startServer(t, opts)
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(stall.release) }) }
	t.Cleanup(release) // before the server's own cleanup, which waits for its workers
	_, _ = ts.user(t, "bob")
	alice, _ := ts.user(t, "alice")
	stall.armed.Store(true)

	stuck := alice.sendFrame(&chatpb.Frame{Body: &chatpb.Frame_ListFriends{ListFriends: &chatpb.ListFriends{}}})
	const big, n = 60_000, 20 // 17 of them fit in 1 MiB
	for range n {
		alice.sendFrame(sendTo("bob", strings.Repeat("x", big)))
	}
	refused := 0
	for refused < n-17 {
		f := alice.read()
		if e := f.GetError(); e == nil || e.Code != codeRateLimited {
			t.Fatalf("while the store stalls, got %v; want only RATE_LIMITED for what does not fit", f)
		}
		refused++
	}
	release()
	answered := 0
	for answered < 1+17 {
		f := alice.read()
		switch {
		case f.Seq == stuck:
			expectOK(t, f)
		case f.GetError().GetCode() == codeInvalid: // the text is over 4 KiB: queued, then refused
		default:
			t.Fatalf("after the stall, got %v", f)
		}
		answered++
	}
	expectOK(t, alice.do(pingReq()))
}
