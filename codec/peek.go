package codec

import "encoding/binary"

// Peeker is the part of gnet.Conn's inbound buffer the decoder uses; a
// gnet.Conn satisfies it. Its methods are not safe for concurrent use, so
// call them only from the connection's event-loop callbacks. Beware that
// gnet's Discard(0) discards everything buffered, not nothing.
type Peeker interface {
	Peek(n int) ([]byte, error)
	Discard(n int) (int, error)
	InboundBuffered() int
}

// PeekFrame looks at the next frame in in without consuming it.
//
// When a whole frame is buffered it returns the payload and size, the total
// number of bytes (header included) to Discard once the payload is used. The
// payload aliases the connection's buffer: it is valid only until that
// Discard and must be copied to be kept. When the frame is still incomplete it
// returns (nil, 0, nil) and the caller waits for more bytes. A header that
// breaks the limits returns a *FrameError.
func PeekFrame(in Peeker, max int) (payload []byte, size int, err error) {
	if in.InboundBuffered() < HeaderSize {
		return nil, 0, nil
	}
	hdr, err := in.Peek(HeaderSize)
	if err != nil {
		return nil, 0, err
	}
	n := binary.BigEndian.Uint32(hdr)
	if err := checkLength(n, max); err != nil {
		return nil, 0, err
	}
	size = HeaderSize + int(n)
	if in.InboundBuffered() < size {
		return nil, 0, nil
	}
	buf, err := in.Peek(size)
	if err != nil {
		return nil, 0, err
	}
	return buf[HeaderSize:], size, nil
}

// NextFrame is PeekFrame followed by a copy and a Discard: the payload it
// returns belongs to the caller. It returns (nil, nil) while incomplete.
func NextFrame(in Peeker, max int) ([]byte, error) {
	payload, size, err := PeekFrame(in, max)
	if payload == nil || err != nil {
		return nil, err
	}
	owned := append([]byte(nil), payload...)
	if _, err := in.Discard(size); err != nil {
		return nil, err
	}
	return owned, nil
}
