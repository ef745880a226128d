package server

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/loopchat/loopchat/codec"
)

// WebSocket (--ws-listen) on the gnet engine: the same loops, sessions and
// limits as TCP clients. The HTTP upgrade is read from gnet's inbound buffer
// and answered with github.com/gobwas/ws's Upgrader; then each binary
// message carries one protobuf Frame, without the 4-byte length prefix
// (docs/protocol.md, "WebSocket").

// WSSubprotocol is the Sec-WebSocket-Protocol a client must offer.
const WSSubprotocol = "loopchat.v1"

// wsMaxHandshake bounds the HTTP upgrade request, headers included.
const wsMaxHandshake = 8 << 10

var (
	errWSProtocol = errors.New("websocket: protocol error")
	errWSText     = errors.New("websocket: text messages are not accepted; send one binary message per Frame")
)

// wsConn is a WebSocket connection's reading state; loop only.
type wsConn struct {
	open bool // the upgrade was answered with 101
	// frag gathers a fragmented message; fragmenting from its first frame
	// to its last.
	frag        []byte
	fragmenting bool
}

// wsHTTPError is a minimal HTTP response refusing an upgrade.
func wsHTTPError(status int, text string) []byte {
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n",
		status, httpStatusText(status), len(text)+1, text)
}

func httpStatusText(status int) string {
	switch status {
	case 400:
		return "Bad Request"
	case 403:
		return "Forbidden"
	case 429:
		return "Too Many Requests"
	case 431:
		return "Request Header Fields Too Large"
	case 503:
		return "Service Unavailable"
	}
	return "Error"
}

var (
	wsServerFull  = wsHTTPError(503, ErrServerFull.Error())
	wsAddressBusy = wsHTTPError(429, ErrAddressBusy.Error())
	wsTooLarge    = wsHTTPError(431, "upgrade request larger than 8 KiB")
)

// wsHandshake answers one complete HTTP upgrade request (req ends with the
// blank line). With err nil, resp is the 101 response; otherwise it is the
// HTTP error response to write before closing.
func wsHandshake(req []byte, allowedOrigins []string) (resp []byte, err error) {
	var selected bool
	u := ws.Upgrader{
		Protocol: func(p []byte) bool {
			if string(p) == WSSubprotocol {
				selected = true
				return true
			}
			return false
		},
		OnHeader: func(key, value []byte) error {
			if bytes.EqualFold(key, []byte("Origin")) && !originAllowed(string(value), allowedOrigins) {
				return ws.RejectConnectionError(ws.RejectionStatus(403),
					ws.RejectionReason("origin not allowed (--ws-allowed-origins)"))
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			if !selected {
				return nil, ws.RejectConnectionError(ws.RejectionStatus(400),
					ws.RejectionReason("subprotocol "+WSSubprotocol+" required (Sec-WebSocket-Protocol)"))
			}
			return nil, nil
		},
	}
	var out bytes.Buffer
	_, err = u.Upgrade(struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(req), &out})
	if err != nil {
		if out.Len() == 0 || !bytes.HasPrefix(out.Bytes(), []byte("HTTP/1.1 4")) {
			return wsHTTPError(400, "bad WebSocket upgrade"), err
		}
		return out.Bytes(), err
	}
	return out.Bytes(), nil
}

// originAllowed: a request without Origin (a native client) is allowed; a
// browser's Origin must be listed (exactly, ignoring case), or the list
// must hold "*".
func originAllowed(origin string, allowed []string) bool {
	for _, a := range allowed {
		if a == "*" || strings.EqualFold(a, origin) {
			return true
		}
	}
	return false
}

// wsParseHeader parses a frame header at the start of buf. size is the
// header's length, 0 while buf holds less than a whole header. It checks
// what RFC 6455 requires of any client frame; the caller checks the
// opcode against the message state.
func wsParseHeader(buf []byte) (h ws.Header, size int, err error) {
	if len(buf) < 2 {
		return h, 0, nil
	}
	h.Fin = buf[0]&0x80 != 0
	h.Rsv = (buf[0] >> 4) & 0x7
	h.OpCode = ws.OpCode(buf[0] & 0x0f)
	h.Masked = buf[1]&0x80 != 0
	size = 2
	switch l := buf[1] & 0x7f; l {
	case 126:
		size += 2
	case 127:
		size += 8
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		size += 4
	}
	if len(buf) < size {
		return h, 0, nil
	}
	switch buf[1] & 0x7f {
	case 126:
		h.Length = int64(binary.BigEndian.Uint16(buf[2:]))
	case 127:
		n := binary.BigEndian.Uint64(buf[2:])
		if n>>63 != 0 {
			return h, 0, fmt.Errorf("%w: length with the top bit set", errWSProtocol)
		}
		h.Length = int64(n)
	}
	if h.Masked {
		copy(h.Mask[:], buf[size-4:size])
	}
	switch {
	case h.Rsv != 0:
		return h, 0, fmt.Errorf("%w: RSV bits set (no extension was negotiated)", errWSProtocol)
	case !h.Masked:
		return h, 0, fmt.Errorf("%w: client frames must be masked", errWSProtocol)
	case h.OpCode.IsReserved():
		return h, 0, fmt.Errorf("%w: reserved opcode %d", errWSProtocol, h.OpCode)
	case h.OpCode.IsControl() && (!h.Fin || h.Length > 125):
		return h, 0, fmt.Errorf("%w: control frames must be whole and at most 125 bytes", errWSProtocol)
	}
	return h, size, nil
}

// wsMessage is what one client frame amounts to.
type wsEvent uint8

const (
	wsNone    wsEvent = iota // part of a fragmented message; nothing to do yet
	wsMessage                // a whole binary message: hand it to the session
	wsPing                   // answer with a pong carrying the payload
	wsPong                   // ignore
	wsClose                  // answer with a close frame, then close
)

// closeCode tells which close code an error maps to.
type wsError struct {
	code ws.StatusCode
	err  error
}

func (e *wsError) Error() string { return e.err.Error() }
func (e *wsError) Unwrap() error { return e.err }

// frame takes one whole unmasked client frame. For wsMessage, msg is the
// message (payload itself, or the reassembled fragments, valid until the
// next call); max bounds a message.
func (w *wsConn) frame(h ws.Header, payload []byte, max int) (ev wsEvent, msg []byte, err error) {
	switch h.OpCode {
	case ws.OpPing:
		return wsPing, payload, nil
	case ws.OpPong:
		return wsPong, nil, nil
	case ws.OpClose:
		return wsClose, payload, nil
	case ws.OpText:
		if w.fragmenting {
			return 0, nil, &wsError{ws.StatusProtocolError, fmt.Errorf("%w: a new message inside a fragmented one", errWSProtocol)}
		}
		return 0, nil, &wsError{ws.StatusUnsupportedData, errWSText}
	case ws.OpBinary:
		if w.fragmenting {
			return 0, nil, &wsError{ws.StatusProtocolError, fmt.Errorf("%w: a new message inside a fragmented one", errWSProtocol)}
		}
		if h.Fin {
			return wsMessage, payload, nil
		}
		w.fragmenting = true
		w.frag = append(w.frag[:0], payload...)
		return wsNone, nil, nil
	case ws.OpContinuation:
		if !w.fragmenting {
			return 0, nil, &wsError{ws.StatusProtocolError, fmt.Errorf("%w: continuation without a message", errWSProtocol)}
		}
		if len(w.frag)+len(payload) > max {
			return 0, nil, wsTooBig(max)
		}
		w.frag = append(w.frag, payload...)
		if !h.Fin {
			return wsNone, nil, nil
		}
		w.fragmenting = false
		msg, w.frag = w.frag, nil // the next message starts a fresh buffer; this one may be big
		return wsMessage, msg, nil
	}
	return 0, nil, &wsError{ws.StatusProtocolError, fmt.Errorf("%w: opcode %d", errWSProtocol, h.OpCode)}
}

// checkLength refuses a data frame that would take the message past max
// before its payload is buffered.
func (w *wsConn) checkLength(h ws.Header, max int) error {
	if h.OpCode.IsControl() {
		return nil
	}
	n := h.Length
	if w.fragmenting {
		n += int64(len(w.frag))
	}
	if n > int64(max) {
		return wsTooBig(max)
	}
	return nil
}

func wsTooBig(max int) error {
	return &wsError{ws.StatusMessageTooBig, fmt.Errorf("%w: WebSocket message over %d bytes", codec.ErrFrameTooLarge, max)}
}

// wsAppendHeader appends a server (unmasked, final) frame header.
func wsAppendHeader(dst []byte, op ws.OpCode, n int) []byte {
	b0 := 0x80 | byte(op)
	switch {
	case n < 126:
		return append(dst, b0, byte(n))
	case n <= 0xffff:
		return append(dst, b0, 126, byte(n>>8), byte(n))
	}
	dst = append(dst, b0, 127)
	return binary.BigEndian.AppendUint64(dst, uint64(n))
}

func wsHeaderSize(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xffff:
		return 4
	}
	return 10
}

// wsWireSize is the size of frames (length-prefixed, one or more) once
// each is a binary WebSocket message.
func wsWireSize(frames []byte) int {
	total := 0
	for len(frames) >= codec.HeaderSize {
		n := int(binary.BigEndian.Uint32(frames))
		if n > len(frames)-codec.HeaderSize {
			n = len(frames) - codec.HeaderSize
		}
		total += wsHeaderSize(n) + n
		frames = frames[codec.HeaderSize+n:]
	}
	return total
}

// wsAppendFrames appends frames (length-prefixed, one or more) to dst as
// binary WebSocket messages, one per frame.
func wsAppendFrames(dst, frames []byte) []byte {
	for len(frames) >= codec.HeaderSize {
		n := int(binary.BigEndian.Uint32(frames))
		if n > len(frames)-codec.HeaderSize {
			n = len(frames) - codec.HeaderSize
		}
		dst = wsAppendHeader(dst, ws.OpBinary, n)
		dst = append(dst, frames[codec.HeaderSize:codec.HeaderSize+n]...)
		frames = frames[codec.HeaderSize+n:]
	}
	return dst
}

// wsCloseFrame is a server close frame with code and reason.
func wsCloseFrame(code ws.StatusCode, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
	}
	body := ws.NewCloseFrameBody(code, reason)
	return append(wsAppendHeader(nil, ws.OpClose, len(body)), body...)
}

// isWSConn tells whether c came through the WebSocket listener at ln.
// gnet's LocalAddr is the address its listener was asked for (port 0
// stays 0), so the socket itself is asked: one getsockname per accepted
// connection, only while a WebSocket listener runs.
func isWSConn(ln *net.TCPAddr, c gnet.Conn) bool {
	if ln == nil {
		return false
	}
	sa, err := unix.Getsockname(c.Fd())
	if err != nil {
		return false
	}
	var ta net.TCPAddr
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		ta = net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	case *unix.SockaddrInet6:
		ta = net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	default:
		return false
	}
	if ta.Port != ln.Port {
		return false
	}
	if ln.IP == nil || ln.IP.IsUnspecified() {
		return true
	}
	a, _ := netip.AddrFromSlice(ta.IP)
	b, _ := netip.AddrFromSlice(ln.IP)
	return a.Unmap() == b.Unmap()
}

// wsTraffic reads a WebSocket connection's input: the upgrade, then frames.
func (e *gnetEngine) wsTraffic(c gnet.Conn, s *session, t *gnetTransport) gnet.Action {
	w := t.ws
	if !w.open {
		buf, _ := c.Peek(min(c.InboundBuffered(), wsMaxHandshake))
		end := bytes.Index(buf, []byte("\r\n\r\n"))
		if end < 0 {
			if len(buf) >= wsMaxHandshake {
				e.wsRefuse(c, s, t, wsTooLarge, errors.New("upgrade request too large"))
			}
			return gnet.None
		}
		req := buf[:end+4]
		if resp, ok := e.srv.web.reply(req); ok { // --web: a plain GET for the page (web.go)
			s.broken = true
			_, _ = c.Discard(c.InboundBuffered())
			t.sendRawAndClose(resp)
			return gnet.None
		}
		resp, err := wsHandshake(req, e.srv.wsOrigins(req))
		if err != nil {
			e.wsRefuse(c, s, t, resp, err)
			return gnet.None
		}
		_, _ = c.Discard(end + 4)
		if _, err := c.Write(resp); err != nil {
			return gnet.Close
		}
		w.open = true
		t.wsOpen.Store(true)
	}
	for !s.broken {
		hdr, _ := c.Peek(min(c.InboundBuffered(), ws.MaxHeaderSize))
		h, hsize, err := wsParseHeader(hdr)
		if err == nil && hsize > 0 {
			err = w.checkLength(h, e.srv.opts.MaxFrame)
		}
		if err != nil {
			e.wsFail(c, s, t, err)
			return gnet.None
		}
		if hsize == 0 {
			return gnet.None
		}
		total := hsize + int(h.Length)
		if c.InboundBuffered() < total {
			return gnet.None
		}
		buf, _ := c.Peek(total)
		payload := buf[hsize:]
		ws.Cipher(payload, h.Mask, 0)
		ev, msg, err := w.frame(h, payload, e.srv.opts.MaxFrame)
		if err != nil {
			e.wsFail(c, s, t, err)
			return gnet.None
		}
		switch ev {
		case wsMessage:
			if len(msg) == 0 {
				_, _ = c.Discard(total)
				e.wsFail(c, s, t, &wsError{ws.StatusProtocolError, codec.ErrZeroLength})
				return gnet.None
			}
			ok := s.received(msg, false) // decodes into a fresh Frame: nothing aliases the buffer
			_, _ = c.Discard(total)
			if !ok {
				_, _ = c.Discard(c.InboundBuffered())
				return gnet.None
			}
			continue
		case wsPing:
			if t.last.Load() == nil {
				pong := append(wsAppendHeader(make([]byte, 0, 2+len(msg)), ws.OpPong, len(msg)), msg...)
				t.sendRaw(pong)
			}
		case wsClose:
			code := ws.StatusNormalClosure
			if len(msg) >= 2 {
				if c := ws.StatusCode(binary.BigEndian.Uint16(msg)); wsValidCloseCode(c) {
					code = c
				}
			}
			s.broken = true // nothing more is read
			_, _ = c.Discard(c.InboundBuffered())
			t.sendRawAndClose(wsCloseFrame(code, ""))
			return gnet.None
		}
		_, _ = c.Discard(total)
	}
	_, _ = c.Discard(c.InboundBuffered())
	return gnet.None
}

// wsRefuse answers a bad upgrade with an HTTP error and closes.
func (e *gnetEngine) wsRefuse(c gnet.Conn, s *session, t *gnetTransport, resp []byte, err error) {
	s.broken = true
	e.srv.metrics.frameErrors.WithLabelValues("ws_upgrade").Inc()
	s.debug("websocket upgrade refused", "err", err)
	_, _ = c.Discard(c.InboundBuffered())
	t.sendRawAndClose(resp)
}

// wsFail ends the stream after a WebSocket-level error: like a TCP framing
// error (Error{PROTOCOL}, Kicked, after the answers to what was read
// before), then a close frame with the error's code.
func (e *gnetEngine) wsFail(c gnet.Conn, s *session, t *gnetTransport, err error) {
	code := ws.StatusProtocolError
	var we *wsError
	if errors.As(err, &we) {
		code = we.code
	}
	t.wsCode.Store(int32(code))
	s.frameError(err, false)
	_, _ = c.Discard(c.InboundBuffered())
}

// wsValidCloseCode: a code a peer may send in a close frame (RFC 6455 7.4).
func wsValidCloseCode(c ws.StatusCode) bool {
	switch {
	case c >= 1000 && c <= 1003, c >= 1007 && c <= 1011, c >= 3000 && c <= 4999:
		return true
	}
	return false
}

// WSAddr is the address the WebSocket listener is bound to (nil when
// --ws-listen is off), known once Start returned.
func (s *Server) WSAddr() net.Addr {
	if e, ok := s.engine.(*gnetEngine); ok && e.wsAddr != nil {
		return e.wsAddr
	}
	return nil
}

// wsListenAddr is the address string the WebSocket listener is opened
// with. gnet finds a listener by its address string (DupListener), so when
// both listeners ask for port 0 on the same host the WebSocket one is
// spelt with port "00" — the same port 0 to the resolver, another string
// to gnet. Any other equal pair is refused by Options (both cannot bind).
func wsListenAddr(ws, tcp string) string {
	if ws == tcp {
		if host, port, err := net.SplitHostPort(ws); err == nil && port == "0" {
			return net.JoinHostPort(host, "00")
		}
	}
	return ws
}
