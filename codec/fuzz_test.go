package codec

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzDecode feeds arbitrary bytes, cut into arbitrary reads, to both
// decoders. Neither may panic; both must agree on the frames and on the
// error; and the frames must re-encode to exactly the bytes they consumed.
func FuzzDecode(f *testing.F) {
	f.Add(frame("hello"), uint8(1))
	f.Add(concat(frame("a"), frame("bb"), frame("ccc")), uint8(3))
	f.Add(header(0), uint8(2))
	f.Add(concat(frame("ok"), header(0xFFFFFFFF)), uint8(5))
	f.Add([]byte{0, 0}, uint8(1))
	const max = 1024
	f.Fuzz(func(t *testing.T, stream []byte, step uint8) {
		chunk := int(step%16) + 1

		// Peeker path: bytes arrive chunk by chunk, decoded after each read.
		in := &inbound{}
		var got []string
		var perr error
		for off := 0; off < len(stream) && perr == nil; off += chunk {
			end := min(off+chunk, len(stream))
			in.b = append(in.b, stream[off:end]...)
			var frames []string
			frames, perr = drain(in, max)
			got = append(got, frames...)
		}

		// Reader path over the same bytes.
		r := NewReader(bytes.NewReader(stream), max)
		var rgot []string
		var rerr error
		for {
			p, err := r.Next()
			if err != nil {
				rerr = err
				break
			}
			rgot = append(rgot, string(p))
		}

		if !equal(got, rgot) {
			t.Fatalf("decoders disagree: peek %q, reader %q", got, rgot)
		}
		var fe *FrameError
		if errors.As(perr, &fe) != errors.As(rerr, &fe) {
			t.Fatalf("decoders disagree on error: peek %v, reader %v", perr, rerr)
		}
		if perr == nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			t.Fatalf("reader error %v on a stream the peeker accepted", rerr)
		}
		var re []byte
		for _, p := range got {
			if len(p) == 0 || len(p) > max {
				t.Fatalf("decoded an out-of-limit frame of %d bytes", len(p))
			}
			re = AppendFrame(re, []byte(p))
		}
		if !bytes.HasPrefix(stream, re) {
			t.Fatalf("re-encoded frames are not a prefix of the input")
		}
	})
}
