package codec

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// inbound is an in-memory stand-in for a gnet inbound buffer, used to drive
// the decoder through every split of a byte stream. The same decoder is
// exercised over a real gnet connection in gnet_test.go.
type inbound struct{ b []byte }

func (in *inbound) Peek(n int) ([]byte, error) {
	if n > len(in.b) {
		return nil, io.ErrShortBuffer
	}
	return in.b[:n], nil
}

func (in *inbound) Discard(n int) (int, error) {
	if n > len(in.b) {
		n = len(in.b)
	}
	in.b = in.b[n:]
	return n, nil
}

func (in *inbound) InboundBuffered() int { return len(in.b) }

func frame(payload string) []byte { return AppendFrame(nil, []byte(payload)) }

func header(n uint32) []byte { return AppendHeader(nil, int(n)) }

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// drain decodes every complete frame in in, as an OnTraffic callback would.
func drain(in Peeker, max int) (frames []string, err error) {
	for {
		p, err := NextFrame(in, max)
		if err != nil {
			return frames, err
		}
		if p == nil {
			return frames, nil
		}
		frames = append(frames, string(p))
	}
}

func TestDecodeTable(t *testing.T) {
	const max = 16
	cases := []struct {
		name    string
		stream  []byte
		frames  []string
		err     error
		pending int // bytes left waiting for more input
	}{
		{name: "empty input waits", stream: nil},
		{name: "partial header waits", stream: []byte{0, 0, 0}, pending: 3},
		{name: "header only waits", stream: header(5), pending: 4},
		{name: "half payload waits", stream: frame("hello")[:7], pending: 7},
		{name: "one frame", stream: frame("hello"), frames: []string{"hello"}},
		{name: "one byte payload", stream: frame("x"), frames: []string{"x"}},
		{name: "many frames in one read", stream: concat(frame("a"), frame("bb"), frame("ccc")), frames: []string{"a", "bb", "ccc"}},
		{name: "frames then a half", stream: concat(frame("a"), frame("bb"), frame("ccc")[:5]), frames: []string{"a", "bb"}, pending: 5},
		{name: "exactly max", stream: frame(string(bytes.Repeat([]byte{'m'}, max))), frames: []string{string(bytes.Repeat([]byte{'m'}, max))}},
		{name: "zero length", stream: header(0), err: ErrZeroLength, pending: 4},
		{name: "one over max", stream: header(max + 1), err: ErrFrameTooLarge, pending: 4},
		{name: "huge length", stream: header(0xFFFFFFFF), err: ErrFrameTooLarge, pending: 4},
		{name: "good frame then zero", stream: concat(frame("ok"), header(0)), frames: []string{"ok"}, err: ErrZeroLength, pending: 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := &inbound{b: append([]byte(nil), tc.stream...)}
			got, err := drain(in, max)
			if !errors.Is(err, tc.err) {
				t.Fatalf("error = %v, want %v", err, tc.err)
			}
			if tc.err != nil {
				var fe *FrameError
				if !errors.As(err, &fe) || fe.Max != max {
					t.Fatalf("error %v is not a *FrameError with Max %d", err, max)
				}
			}
			if !equal(got, tc.frames) {
				t.Fatalf("frames = %q, want %q", got, tc.frames)
			}
			if in.InboundBuffered() != tc.pending {
				t.Fatalf("left %d bytes buffered, want %d", in.InboundBuffered(), tc.pending)
			}

			// The io.Reader decoder sees the same frames and, at the end,
			// the same limit error, a clean EOF, or an unexpected EOF when the
			// stream stops inside a frame.
			r := NewReader(bytes.NewReader(tc.stream), max)
			var rgot []string
			for {
				p, err := r.Next()
				if err != nil {
					want := tc.err
					switch {
					case want != nil:
					case tc.pending > 0:
						want = io.ErrUnexpectedEOF
					default:
						want = io.EOF
					}
					if !errors.Is(err, want) {
						t.Fatalf("Reader error = %v, want %v", err, want)
					}
					break
				}
				rgot = append(rgot, string(p))
			}
			if !equal(rgot, tc.frames) {
				t.Fatalf("Reader frames = %q, want %q", rgot, tc.frames)
			}
		})
	}
}

func TestPeekFrameAliasesUntilDiscard(t *testing.T) {
	in := &inbound{b: concat(frame("first"), frame("second"))}
	p, size, err := PeekFrame(in, 64)
	if err != nil || string(p) != "first" || size != HeaderSize+5 {
		t.Fatalf("PeekFrame = %q, %d, %v", p, size, err)
	}
	// Peeking again without Discard sees the same frame.
	p2, _, _ := PeekFrame(in, 64)
	if string(p2) != "first" {
		t.Fatalf("second peek = %q", p2)
	}
	if _, err := in.Discard(size); err != nil {
		t.Fatal(err)
	}
	p3, _, _ := PeekFrame(in, 64)
	if string(p3) != "second" {
		t.Fatalf("after discard = %q", p3)
	}
}

func TestReaderLargeFrameDoesNotStayPinned(t *testing.T) {
	big := bytes.Repeat([]byte{'b'}, keepBufferCap+1)
	r := NewReader(bytes.NewReader(concat(AppendFrame(nil, big), frame("small"))), 1<<20)
	p, err := r.Next()
	if err != nil || !bytes.Equal(p, big) {
		t.Fatalf("big frame: %v", err)
	}
	p, err = r.Next()
	if err != nil || string(p) != "small" {
		t.Fatalf("small frame = %q, %v", p, err)
	}
	if cap(r.buf) > keepBufferCap {
		t.Fatalf("reader keeps a %d-byte buffer after a large frame", cap(r.buf))
	}
}

func TestFrameErrorMessage(t *testing.T) {
	_, err := drain(&inbound{b: header(70000)}, DefaultMaxFrame)
	want := "codec: frame exceeds the size limit: 70000 bytes announced, limit 65536"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %q", err, want)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
