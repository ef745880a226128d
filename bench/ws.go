package bench

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"

	"github.com/gobwas/ws"
)

// Transports the generator speaks (Config.Transport).
const (
	TransportTCP = "tcp" // length-prefixed frames (docs/protocol.md, "Framing")
	TransportWS  = "ws"  // one binary WebSocket message per Frame, to a --ws-listen address
)

// CheckTransport refuses a transport the generator does not speak.
func CheckTransport(t string) error {
	if t != TransportTCP && t != TransportWS {
		return fmt.Errorf("unknown transport %q: want %s or %s", t, TransportTCP, TransportWS)
	}
	return nil
}

// wsSubprotocol is what a loopchat WebSocket client offers.
const wsSubprotocol = "loopchat.v1"

// errWSClosed: the server sent its close frame.
var errWSClosed = errors.New("bench: the server closed the WebSocket")

// wsUpgrade upgrades nc, a fresh connection to addr, with gobwas/ws's
// client handshake (loopchat.v1 offered and selected, the accept key
// checked). It returns what to read the connection through: nil when the
// server sent nothing after its 101, as it does not before a request.
func wsUpgrade(nc net.Conn, addr string) (io.Reader, error) {
	d := ws.Dialer{Protocols: []string{wsSubprotocol}}
	br, hs, err := d.Upgrade(nc, &url.URL{Scheme: "ws", Host: addr, Path: "/"})
	if err != nil {
		return nil, fmt.Errorf("bench: websocket upgrade: %w", err)
	}
	if hs.Protocol != wsSubprotocol {
		return nil, fmt.Errorf("bench: websocket upgrade: subprotocol %q selected", hs.Protocol)
	}
	if br == nil {
		return nil, nil
	}
	return br, nil
}

// wsReader reads a loopchat server's WebSocket messages, one Frame
// payload each (codec.Reader's Next for WebSocket). Server frames are
// unmasked, final and binary; a close frame ends the stream.
type wsReader struct {
	r   *bufio.Reader
	max int
	hdr [8]byte
	buf []byte
}

func newWSReader(r *bufio.Reader, max int) *wsReader { return &wsReader{r: r, max: max} }

// Next returns the next message's payload, valid until the next call.
func (r *wsReader) Next() ([]byte, error) {
	for {
		if _, err := io.ReadFull(r.r, r.hdr[:2]); err != nil {
			return nil, err
		}
		op := ws.OpCode(r.hdr[0] & 0x0f)
		if r.hdr[0]&0x80 == 0 || r.hdr[1]&0x80 != 0 {
			return nil, fmt.Errorf("bench: server frame fragmented or masked (% x)", r.hdr[:2])
		}
		n := int64(r.hdr[1] & 0x7f)
		switch n {
		case 126:
			if _, err := io.ReadFull(r.r, r.hdr[:2]); err != nil {
				return nil, err
			}
			n = int64(binary.BigEndian.Uint16(r.hdr[:2]))
		case 127:
			if _, err := io.ReadFull(r.r, r.hdr[:8]); err != nil {
				return nil, err
			}
			n = int64(binary.BigEndian.Uint64(r.hdr[:8]))
		}
		if n < 0 || n > int64(r.max) {
			return nil, fmt.Errorf("bench: server message of %d bytes", n)
		}
		var p []byte
		if n <= keepPayload {
			if r.buf == nil {
				r.buf = make([]byte, keepPayload)
			}
			p = r.buf[:n]
		} else {
			p = make([]byte, n)
		}
		if _, err := io.ReadFull(r.r, p); err != nil {
			return nil, err
		}
		switch op {
		case ws.OpBinary:
			return p, nil
		case ws.OpClose:
			return nil, errWSClosed
		case ws.OpPing, ws.OpPong:
			continue // the server does not ping; nothing to answer
		default:
			return nil, fmt.Errorf("bench: server frame with opcode %d", op)
		}
	}
}

// keepPayload is the largest message buffer a wsReader keeps between
// messages, as codec.Reader does.
const keepPayload = 4 << 10

// writeWS writes frame (length-prefixed, one Frame, freshly encoded and
// the caller's to change) to w as one masked binary message: the header
// with its masking key, then the payload masked in place, with no copy. The
// key comes from a fast generator, not a cryptographic one: masking is
// there for proxies that might misread a browser's traffic, and this is a
// load generator on loopback.
func writeWS(w *bufio.Writer, frame []byte) error {
	p := frame[4:]
	var hdr [14]byte
	hdr[0] = 0x80 | byte(ws.OpBinary)
	n := 2
	switch l := len(p); {
	case l < 126:
		hdr[1] = 0x80 | byte(l)
	case l <= 0xffff:
		hdr[1] = 0x80 | 126
		binary.BigEndian.PutUint16(hdr[2:], uint16(l))
		n = 4
	default:
		hdr[1] = 0x80 | 127
		binary.BigEndian.PutUint64(hdr[2:], uint64(l))
		n = 10
	}
	var mask [4]byte
	binary.LittleEndian.PutUint32(mask[:], rand.Uint32())
	copy(hdr[n:], mask[:])
	if _, err := w.Write(hdr[:n+4]); err != nil {
		return err
	}
	ws.Cipher(p, mask, 0)
	_, err := w.Write(p)
	return err
}
