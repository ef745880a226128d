package codec

import (
	"encoding/binary"
	"errors"
	"io"
)

// keepBufferCap is the largest payload buffer a Reader keeps between frames.
const keepBufferCap = 4 << 10

// Reader reads frames from a byte stream such as a net.Conn. Wrap the
// stream in a bufio.Reader first when frames are small and many.
type Reader struct {
	r   io.Reader
	max int
	hdr [HeaderSize]byte
	buf []byte
}

// NewReader returns a Reader that rejects payloads larger than max.
func NewReader(r io.Reader, max int) *Reader {
	return &Reader{r: r, max: max}
}

// Next reads one frame and returns its payload. The payload is reused by
// the following call; copy it to keep it. At a clean end of stream between
// frames Next returns io.EOF; a stream cut inside a frame returns
// io.ErrUnexpectedEOF; a header that breaks the limits returns a *FrameError.
func (r *Reader) Next() ([]byte, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(r.hdr[:])
	if err := checkLength(n, r.max); err != nil {
		return nil, err
	}
	var payload []byte
	if n <= keepBufferCap {
		// Small frames reuse one buffer; large ones are allocated and let go,
		// so an idle connection never pins a max-size buffer.
		if r.buf == nil {
			r.buf = make([]byte, keepBufferCap)
		}
		payload = r.buf[:n]
	} else {
		payload = make([]byte, n)
	}
	if _, err := io.ReadFull(r.r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return payload, nil
}
