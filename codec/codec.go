// Package codec is loopchat's framing: every frame is a 4-byte big-endian
// length L followed by L payload bytes, with 1 <= L <= a configured maximum.
//
// The package knows nothing of what payloads mean (that is package protocol).
// It decodes from a gnet connection's inbound buffer without copying
// (PeekFrame) or with a copy that may outlive the callback (NextFrame), and
// from any io.Reader (Reader). Length violations are reported as a
// *FrameError that matches ErrZeroLength or ErrFrameTooLarge with errors.Is.
package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// HeaderSize is the size of the length prefix in bytes.
const HeaderSize = 4

// DefaultMaxFrame is the default largest payload a server accepts (64 KiB).
const DefaultMaxFrame = 64 << 10

var (
	// ErrZeroLength reports a header announcing an empty payload.
	ErrZeroLength = errors.New("codec: zero-length frame")
	// ErrFrameTooLarge reports a header announcing more bytes than the limit.
	ErrFrameTooLarge = errors.New("codec: frame exceeds the size limit")
)

// FrameError describes a header that breaks the framing rules. The stream
// cannot be resynchronised after one, so the connection must be closed.
type FrameError struct {
	Length uint32 // the announced payload length
	Max    int    // the limit in force
	Err    error  // ErrZeroLength or ErrFrameTooLarge
}

func (e *FrameError) Error() string {
	if errors.Is(e.Err, ErrZeroLength) {
		return e.Err.Error()
	}
	return fmt.Sprintf("%v: %d bytes announced, limit %d", e.Err, e.Length, e.Max)
}

func (e *FrameError) Unwrap() error { return e.Err }

// checkLength validates an announced payload length against max.
func checkLength(n uint32, max int) error {
	switch {
	case n == 0:
		return &FrameError{Length: n, Max: max, Err: ErrZeroLength}
	case uint64(n) > uint64(max):
		return &FrameError{Length: n, Max: max, Err: ErrFrameTooLarge}
	}
	return nil
}

// AppendHeader appends the length prefix for a payload of n bytes.
func AppendHeader(dst []byte, n int) []byte {
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

// AppendFrame appends payload as one frame. It does not check limits: the
// sender decides what it may send, the receiver what it accepts.
func AppendFrame(dst, payload []byte) []byte {
	return append(AppendHeader(dst, len(payload)), payload...)
}

// PutHeader writes the length prefix for the payload that follows it into
// frame[:HeaderSize]; it lets encoders reserve the header, append the
// payload in place and fill the length in afterwards.
func PutHeader(frame []byte) {
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-HeaderSize))
}
