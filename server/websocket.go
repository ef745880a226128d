package server

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/loopchat/loopchat/codec"
	chatpb "github.com/loopchat/loopchat/proto"
)

// WebSocket (--ws-listen) on either engine: the same sessions and limits
// as TCP clients (on gnet, the same loops). The HTTP upgrade is read from
// the connection's inbound buffer and answered with github.com/gobwas/ws's
// Upgrader; then each binary message carries one protobuf Frame, without
// the 4-byte length prefix (docs/protocol.md, "WebSocket"). The reading
// (wsRead) is one piece of code for both engines; each transport wraps
// what it writes.

// WSSubprotocol is the Sec-WebSocket-Protocol a client must offer.
const WSSubprotocol = "loopchat.v1"

// wsMaxHandshake bounds the HTTP upgrade request, headers included.
const wsMaxHandshake = 8 << 10

var (
	errWSProtocol = errors.New("websocket: protocol error")
	errWSText     = errors.New("websocket: text messages are not accepted; send one binary message per Frame")
	errWSUTF8     = errors.New("websocket: text that is not UTF-8")
)

// wsConn is a WebSocket connection's state, shared by its session (the
// reading side) and its transport (the writing side).
type wsConn struct {
	// Reading side only.
	open bool // the upgrade was answered with 101
	// frag gathers a fragmented message; fragmenting from its first frame
	// to its last.
	frag        []byte
	fragmenting bool
	// fromProxy: the TCP peer is a trusted proxy, so the upgrade's
	// X-Forwarded-For may name the client, and the connection is counted
	// under the client's address only once the upgrade has been read
	// (finishProxy, wsUpgrade).
	fromProxy bool

	// opened: the 101 is written (or queued before anything else), so
	// frames go out as binary messages; before it they are dropped, and a
	// last frame becomes an HTTP refusal. Set by the transport's upgrade,
	// in step with its last frame (engine_gnet.go, engine_net.go).
	opened atomic.Bool
	// code is the close code after the last frame (0: 1000), set once by
	// whatever ends the connection first: a WebSocket-level error, or a
	// kick (wsCloseCode).
	code atomic.Int32
}

// wsOutput is what the WebSocket reader needs from a transport beside
// the session's frames.
type wsOutput interface {
	// upgrade writes the 101 response ahead of any frame and marks the
	// connection opened; false when a last frame (a kick) came first, which
	// then goes out as an HTTP refusal.
	upgrade(resp []byte) bool
	// sendRaw queues bytes written as they are (a pong).
	sendRaw(b []byte)
	// sendRawAndClose makes b, written as it is, the last bytes (a close
	// frame, an HTTP refusal).
	sendRawAndClose(b []byte)
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
// blank line). With err nil, resp is the 101 response and forwarded the
// request's X-Forwarded-For values, joined by commas in the order they
// came; otherwise resp is the HTTP error response to write before closing.
func wsHandshake(req []byte, allowedOrigins []string) (resp []byte, forwarded string, err error) {
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
			switch {
			case bytes.EqualFold(key, []byte("Origin")):
				if !originAllowed(string(value), allowedOrigins) {
					return ws.RejectConnectionError(ws.RejectionStatus(403),
						ws.RejectionReason("origin not allowed (--ws-allowed-origins)"))
				}
			case bytes.EqualFold(key, []byte("X-Forwarded-For")):
				if forwarded != "" {
					forwarded += ","
				}
				forwarded += string(value)
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
			return wsHTTPError(400, "bad WebSocket upgrade"), "", err
		}
		return out.Bytes(), "", err
	}
	return out.Bytes(), forwarded, nil
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
		if err := wsCheckClose(payload); err != nil {
			return 0, nil, err
		}
		return wsClose, payload, nil
	case ws.OpText:
		if w.fragmenting {
			return 0, nil, &wsError{ws.StatusProtocolError, fmt.Errorf("%w: a new message inside a fragmented one", errWSProtocol)}
		}
		// Refused either way; invalid UTF-8 is the more precise fault
		// (RFC 6455 8.1). A fragment may end inside a character.
		if !validUTF8Prefix(payload, h.Fin) {
			return 0, nil, &wsError{ws.StatusInvalidFramePayloadData, errWSUTF8}
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

// last is what a WebSocket connection writes last in place of frame (a
// Kicked or a refusal, length-prefixed): frame as a binary message, then a
// close frame with code (0: 1000); before the upgrade, which no frame may
// precede, an HTTP error instead. The transport calls it where its upgrade
// cannot run meanwhile.
func (w *wsConn) last(frame []byte, code ws.StatusCode) []byte {
	if code == 0 {
		code = ws.StatusNormalClosure
	}
	if !w.opened.Load() {
		return wsRefusalFor(code)
	}
	close := wsCloseFrame(code, "")
	out := make([]byte, 0, wsWireSize(frame)+len(close))
	return append(wsAppendFrames(out, frame), close...)
}

// wsRefusalFor is the HTTP answer to a connection kicked before its
// upgrade was read: the server going away, or (the only other kick that
// comes before a login) the login timeout running out.
func wsRefusalFor(code ws.StatusCode) []byte {
	switch code {
	case ws.StatusGoingAway:
		return wsShuttingDown
	case ws.StatusNormalClosure:
		return wsTimeout
	}
	return wsBadRequest
}

var (
	wsShuttingDown = wsHTTPError(503, "server shutting down")
	wsTimeout      = wsHTTPError(408, "no upgrade within the login timeout")
	wsBadRequest   = wsHTTPError(400, "bad WebSocket upgrade")
)

// wsRead reads a WebSocket connection's buffered input: the upgrade, then
// every whole frame, until in holds no whole frame or the stream is done
// (s.broken). Both engines run it: gnet on the connection's inbound buffer
// from OnTraffic, the net engine on a wsInbound its reading goroutine fills,
// with inline as for received. Payloads are unmasked in place, and what
// received gets aliases in: it decodes into a fresh Frame.
func (s *session) wsRead(in codec.Peeker, w *wsConn, out wsOutput, inline bool) {
	if !w.open && !s.wsUpgrade(in, w, out) {
		return
	}
	max := s.srv.opts.MaxFrame
	for !s.broken {
		hdr, _ := in.Peek(min(in.InboundBuffered(), ws.MaxHeaderSize))
		h, hsize, err := wsParseHeader(hdr)
		if err == nil && hsize > 0 {
			err = w.checkLength(h, max)
		}
		if err != nil {
			s.wsFail(in, err, inline)
			return
		}
		if hsize == 0 {
			return
		}
		total := hsize + int(h.Length)
		if in.InboundBuffered() < total {
			return
		}
		buf, _ := in.Peek(total)
		payload := buf[hsize:]
		ws.Cipher(payload, h.Mask, 0)
		ev, msg, err := w.frame(h, payload, max)
		if err != nil {
			s.wsFail(in, err, inline)
			return
		}
		switch ev {
		case wsMessage:
			if len(msg) == 0 {
				s.wsFail(in, &wsError{ws.StatusProtocolError, codec.ErrZeroLength}, inline)
				return
			}
			ok := s.received(msg, inline)
			_, _ = in.Discard(total)
			if !ok {
				_, _ = in.Discard(in.InboundBuffered())
				return
			}
			continue
		case wsPing:
			out.sendRaw(append(wsAppendHeader(make([]byte, 0, 2+len(msg)), ws.OpPong, len(msg)), msg...))
		case wsClose:
			code := ws.StatusNormalClosure // none given: RFC 6455 allows either an empty close or 1000
			if len(msg) >= 2 {
				code = ws.StatusCode(binary.BigEndian.Uint16(msg)) // checked by frame: echo it
			}
			s.broken = true // nothing more is read
			_, _ = in.Discard(in.InboundBuffered())
			out.sendRawAndClose(wsCloseFrame(code, ""))
			return
		}
		_, _ = in.Discard(total)
	}
	_, _ = in.Discard(in.InboundBuffered())
}

// wsUpgrade reads the upgrade request once it is whole and answers it,
// reporting whether the connection is now open.
func (s *session) wsUpgrade(in codec.Peeker, w *wsConn, out wsOutput) bool {
	buf, _ := in.Peek(min(in.InboundBuffered(), wsMaxHandshake))
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 {
		if len(buf) >= wsMaxHandshake {
			s.srv.metrics.frameErrors.WithLabelValues("ws_upgrade").Inc()
			s.wsRefuse(in, out, wsTooLarge, errors.New("upgrade request too large"))
		}
		return false
	}
	req := buf[:end+4]
	if page, ok := s.srv.web.reply(req); ok { // --web: a plain GET for the page (web.go)
		s.broken = true
		_, _ = in.Discard(in.InboundBuffered())
		out.sendRawAndClose(page)
		return false
	}
	resp, forwarded, err := wsHandshake(req, s.srv.wsOrigins(req))
	if err != nil {
		s.srv.metrics.frameErrors.WithLabelValues("ws_upgrade").Inc()
		s.wsRefuse(in, out, resp, err)
		return false
	}
	_, _ = in.Discard(end + 4)
	if w.fromProxy {
		// Through a trusted proxy the client's address is known only now;
		// count the connection under it.
		s.takeForwardedFor(forwarded)
		if !s.srv.holdAnonymous(s) {
			s.wsRefuse(in, out, wsAddressBusy, ErrAddressBusy)
			return false
		}
	}
	if !out.upgrade(resp) {
		s.broken = true // kicked meanwhile: its refusal is on its way
		_, _ = in.Discard(in.InboundBuffered())
		return false
	}
	w.open = true
	return true
}

// wsRefuse answers an upgrade with an HTTP error and closes.
func (s *session) wsRefuse(in codec.Peeker, out wsOutput, resp []byte, err error) {
	s.broken = true
	s.debug("websocket upgrade refused", "err", err)
	_, _ = in.Discard(in.InboundBuffered())
	out.sendRawAndClose(resp)
}

// wsFail ends the stream after a WebSocket-level error: like a TCP framing
// error (Error{PROTOCOL}, Kicked, after the answers to what was read
// before), then a close frame with the error's code.
func (s *session) wsFail(in codec.Peeker, err error, inline bool) {
	code := ws.StatusProtocolError
	var we *wsError
	if errors.As(err, &we) {
		code = we.code
	}
	s.ws.code.CompareAndSwap(0, int32(code)) // a kick that came first keeps its own
	s.frameError(err, inline)
	_, _ = in.Discard(in.InboundBuffered())
}

// wsValidCloseCode: a code a peer may send in a close frame (RFC 6455
// 7.4; 1012-1014 are registered with IANA since). 1004-1006 and 1015 are
// reserved, never sent; below 1000, 1016-2999 and from 5000 are not codes.
func wsValidCloseCode(c ws.StatusCode) bool {
	switch {
	case c >= 1000 && c <= 1003, c >= 1007 && c <= 1014, c >= 3000 && c <= 4999:
		return true
	}
	return false
}

// wsCheckClose checks a client close frame's body: empty, or a valid code
// and a UTF-8 reason (RFC 6455 5.5.1).
func wsCheckClose(body []byte) error {
	switch {
	case len(body) == 0:
		return nil
	case len(body) == 1:
		return &wsError{ws.StatusProtocolError, fmt.Errorf("%w: a close body of one byte", errWSProtocol)}
	case !wsValidCloseCode(ws.StatusCode(binary.BigEndian.Uint16(body))):
		return &wsError{ws.StatusProtocolError, fmt.Errorf("%w: close code %d", errWSProtocol, binary.BigEndian.Uint16(body))}
	case !utf8.Valid(body[2:]):
		return &wsError{ws.StatusInvalidFramePayloadData, fmt.Errorf("%w: a close reason that is not UTF-8", errWSProtocol)}
	}
	return nil
}

// validUTF8Prefix: p is UTF-8, or with more to come (not fin) may end
// inside a character whose bytes so far are valid.
func validUTF8Prefix(p []byte, fin bool) bool {
	if utf8.Valid(p) {
		return true
	}
	if fin {
		return false
	}
	for cut := 1; cut <= 3 && cut <= len(p); cut++ {
		start := len(p) - cut
		if utf8.RuneStart(p[start]) {
			tail := p[start:]
			// A started, unfinished character: a leading byte that wants
			// more than it has, continuation bytes after it.
			return !utf8.FullRune(tail) && p[start] >= 0xc2 && p[start] <= 0xf4 && utf8.Valid(p[:start])
		}
	}
	return false
}

// wsCloseCode is the close code after Kicked{reason}: the server going
// away (1001), a broken protocol (1002, or a more precise code set
// before), a client that does not read (1008, policy violation), the
// server's store lost (1011, an unexpected condition); any other kick ends
// the session as the server's policy says, normally (1000), and Kicked
// tells why.
func wsCloseCode(reason chatpb.KickReason) ws.StatusCode {
	switch reason {
	case chatpb.KickReason_KICK_REASON_SERVER_SHUTTING_DOWN:
		return ws.StatusGoingAway
	case chatpb.KickReason_KICK_REASON_PROTOCOL_ERROR:
		return ws.StatusProtocolError
	case chatpb.KickReason_KICK_REASON_SLOW_CONSUMER:
		return ws.StatusPolicyViolation
	case chatpb.KickReason_KICK_REASON_STORE_RESET:
		return ws.StatusInternalServerError
	}
	return ws.StatusNormalClosure
}

// WSAddr is the address the WebSocket listener is bound to (nil when
// --ws-listen is off), known once Start returned.
func (s *Server) WSAddr() net.Addr { return s.engine.wsAddr() }

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

// wsInbound is the net engine's inbound buffer for a WebSocket
// connection: what has been read and not yet consumed, with the Peek and
// Discard of gnet's, so that wsRead serves both engines. It grows to the
// frame being read (wsRead bounds that by the frame limit before waiting
// for it) and goes back to wsInboundSize once emptied.
type wsInbound struct {
	r   io.Reader
	buf []byte // buf[off:] is unread
	off int
}

// wsInboundSize is a wsInbound's usual size, as bufio's.
const wsInboundSize = 4 << 10

// newWSInbound reads from r, starting with what br has buffered already
// (the bytes after a PROXY header).
func newWSInbound(r io.Reader, br *bufio.Reader) *wsInbound {
	rest, _ := br.Peek(br.Buffered())
	buf := make([]byte, len(rest), max(wsInboundSize, len(rest)))
	copy(buf, rest)
	return &wsInbound{r: r, buf: buf}
}

func (b *wsInbound) InboundBuffered() int { return len(b.buf) - b.off }

// Peek returns the next n unread bytes (n <= 0: all of them), as gnet's.
func (b *wsInbound) Peek(n int) ([]byte, error) {
	switch {
	case n > b.InboundBuffered():
		return nil, io.ErrShortBuffer
	case n <= 0:
		n = b.InboundBuffered()
	}
	return b.buf[b.off : b.off+n], nil
}

// Discard consumes n bytes; like gnet's, n <= 0 consumes everything.
func (b *wsInbound) Discard(n int) (int, error) {
	if n <= 0 || n >= b.InboundBuffered() {
		n = b.InboundBuffered()
		b.buf, b.off = b.buf[:0], 0
		if cap(b.buf) > wsInboundSize {
			b.buf = make([]byte, 0, wsInboundSize) // a big message is read; do not keep its room
		}
		return n, nil
	}
	b.off += n
	return n, nil
}

// fill waits for more bytes from the connection.
func (b *wsInbound) fill() error {
	if b.off > 0 {
		n := copy(b.buf, b.buf[b.off:])
		b.buf, b.off = b.buf[:n], 0
	}
	if len(b.buf) == cap(b.buf) {
		b.buf = append(b.buf, make([]byte, len(b.buf))...)[:len(b.buf)]
	}
	n, err := b.r.Read(b.buf[len(b.buf):cap(b.buf)])
	b.buf = b.buf[:len(b.buf)+n]
	if n > 0 {
		return nil // an error comes again with the next read
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}
