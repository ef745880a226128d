package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/loopchat/loopchat/protocol"
)

// An RFC 6455 conformance run in the manner of the Autobahn test suite
// (which cannot be fetched here): each case opens a WebSocket with
// gobwas/ws's client Dialer, writes its frames with the library's frame
// writer (masked as a client must, unless the case is about masking),
// and checks what the RFC requires of the server: the frames it answers
// with, the close code when it must fail the connection, and that it then
// closes the TCP connection. Every server frame must be unmasked, final,
// with no RSV bits. A case that does not end in a close checks that the
// connection still works. loopchat carries requests in binary messages,
// so where Autobahn expects an echo a case sends a Ping request and
// expects its Pong.

// out is one thing a conformance case writes: a frame through the
// library's writer, or bytes the library would not write.
type out struct {
	f   ws.Frame
	raw []byte
}

// masked is a client frame as the RFC wants it, masked with a random key.
func masked(op ws.OpCode, fin bool, p []byte) out {
	return out{f: ws.MaskFrame(ws.NewFrame(op, fin, p))}
}

// withRsv is masked with RSV bits set.
func withRsv(op ws.OpCode, fin bool, p []byte, r1, r2, r3 bool) out {
	o := masked(op, fin, p)
	o.f.Header.Rsv = ws.Rsv(r1, r2, r3)
	return o
}

func unmasked(op ws.OpCode, p []byte) out { return out{f: ws.NewFrame(op, true, p)} }

func closeWith(code uint16, reason string) out {
	return masked(ws.OpClose, true, append(binary.BigEndian.AppendUint16(nil, code), reason...))
}

// in is one thing the server must write back.
type in struct {
	op   ws.OpCode
	body []byte        // a pong's payload
	seq  uint64        // a binary message: the Pong answering this Ping request
	code ws.StatusCode // a close frame's code; the connection must end after it
}

func pong(p []byte) in             { return in{op: ws.OpPong, body: p} }
func reply(seq uint64) in          { return in{op: ws.OpBinary, seq: seq} }
func closed(code ws.StatusCode) in { return in{op: ws.OpClose, code: code} }

type conformanceCase struct {
	id, name string
	send     []out
	want     []in
}

func conformanceCases(t *testing.T, maxFrame int) []conformanceCase {
	req := func(seq uint64) []byte { return paddedPing(t, seq, 0) }
	bin := func(seq uint64) out { return masked(ws.OpBinary, true, req(seq)) }
	bytes125 := make([]byte, 125)
	for i := range bytes125 {
		bytes125[i] = byte(i * 7)
	}
	r := req(1)
	cases := []conformanceCase{
		// 1: framing.
		{"1.1", "binary message, 7-bit length", []out{bin(1)}, []in{reply(1)}},
		{"1.2", "binary message, 16-bit length", []out{masked(ws.OpBinary, true, paddedPing(t, 1, 126))}, []in{reply(1)}},
		{"1.3", "binary message of 65,535 bytes, 16-bit length", []out{masked(ws.OpBinary, true, paddedPing(t, 1, 65535))}, []in{reply(1)}},
		{"1.4", "binary message at the limit, 64-bit length", []out{masked(ws.OpBinary, true, paddedPing(t, 1, maxFrame))}, []in{reply(1)}},
		{"1.5", "many messages in one write, answered in order", []out{bin(1), bin(2), bin(3), bin(4)}, []in{reply(1), reply(2), reply(3), reply(4)}},
		{"1.6", "empty binary message (loopchat: like a TCP frame of length 0)", []out{masked(ws.OpBinary, true, nil)}, []in{closed(ws.StatusProtocolError)}},

		// 2: pings and pongs.
		{"2.1", "ping without payload", []out{masked(ws.OpPing, true, nil)}, []in{pong(nil)}},
		{"2.2", "ping with a text payload", []out{masked(ws.OpPing, true, []byte("Hello, world!"))}, []in{pong([]byte("Hello, world!"))}},
		{"2.3", "ping with a binary payload", []out{masked(ws.OpPing, true, []byte{0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0, 0xff})}, []in{pong([]byte{0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0, 0xff})}},
		{"2.4", "ping with 125 bytes", []out{masked(ws.OpPing, true, bytes125)}, []in{pong(bytes125)}},
		{"2.5", "ping with 126 bytes", []out{masked(ws.OpPing, true, make([]byte, 126))}, []in{closed(ws.StatusProtocolError)}},
		{"2.6", "unsolicited pong, ignored", []out{masked(ws.OpPong, true, []byte("unsolicited"))}, nil},
		{"2.7", "unsolicited pong, then ping", []out{masked(ws.OpPong, true, []byte("x")), masked(ws.OpPing, true, []byte("y"))}, []in{pong([]byte("y"))}},
		{"2.8", "ten pings in a row", pings(10), pongs(10)},
		{"2.9", "fragmented ping", []out{masked(ws.OpPing, false, []byte("a")), masked(ws.OpContinuation, true, []byte("b"))}, []in{closed(ws.StatusProtocolError)}},

		// 3: reserved bits, none negotiated.
		{"3.1", "RSV1 on a binary message", []out{withRsv(ws.OpBinary, true, r, true, false, false)}, []in{closed(ws.StatusProtocolError)}},
		{"3.2", "RSV2 after a good message", []out{bin(1), withRsv(ws.OpBinary, true, r, false, true, false)}, []in{reply(1), closed(ws.StatusProtocolError)}},
		{"3.3", "RSV3 on a ping", []out{withRsv(ws.OpPing, true, nil, false, false, true)}, []in{closed(ws.StatusProtocolError)}},
		{"3.4", "all RSV bits on a close", []out{withRsv(ws.OpClose, true, nil, true, true, true)}, []in{closed(ws.StatusProtocolError)}},
		{"3.5", "RSV1 on a continuation", []out{masked(ws.OpBinary, false, r[:2]), withRsv(ws.OpContinuation, true, r[2:], true, false, false)}, []in{closed(ws.StatusProtocolError)}},

		// 5: fragmentation.
		{"5.1", "binary message in two fragments", []out{masked(ws.OpBinary, false, r[:2]), masked(ws.OpContinuation, true, r[2:])}, []in{reply(1)}},
		{"5.2", "binary message in one-byte fragments", oneByteFragments(r), []in{reply(1)}},
		{"5.3", "ping between fragments", []out{masked(ws.OpBinary, false, r[:1]), masked(ws.OpPing, true, []byte("mid")), masked(ws.OpContinuation, true, r[1:])}, []in{pong([]byte("mid")), reply(1)}},
		{"5.4", "pong between fragments", []out{masked(ws.OpBinary, false, r[:1]), masked(ws.OpPong, true, nil), masked(ws.OpContinuation, true, r[1:])}, []in{reply(1)}},
		{"5.5", "empty first fragment", []out{masked(ws.OpBinary, false, nil), masked(ws.OpContinuation, true, r)}, []in{reply(1)}},
		{"5.6", "empty last fragment", []out{masked(ws.OpBinary, false, r), masked(ws.OpContinuation, true, nil)}, []in{reply(1)}},
		{"5.7", "close between fragments", []out{masked(ws.OpBinary, false, r[:1]), closeWith(1000, "")}, []in{closed(ws.StatusNormalClosure)}},
		{"5.8", "continuation without a message (final)", []out{masked(ws.OpContinuation, true, r)}, []in{closed(ws.StatusProtocolError)}},
		{"5.9", "continuation without a message (not final)", []out{masked(ws.OpContinuation, false, r)}, []in{closed(ws.StatusProtocolError)}},
		{"5.10", "new binary message inside a fragmented one", []out{masked(ws.OpBinary, false, r[:1]), masked(ws.OpBinary, true, r)}, []in{closed(ws.StatusProtocolError)}},
		{"5.11", "text message inside a fragmented binary one", []out{masked(ws.OpBinary, false, r[:1]), masked(ws.OpText, true, []byte("x"))}, []in{closed(ws.StatusProtocolError)}},
		{"5.12", "fragments adding up past the limit", []out{masked(ws.OpBinary, false, make([]byte, maxFrame/2+1)), masked(ws.OpContinuation, true, make([]byte, maxFrame/2+1))}, []in{closed(ws.StatusMessageTooBig)}},
		{"5.13", "a fragmented message, then a whole one", []out{masked(ws.OpBinary, false, r[:3]), masked(ws.OpContinuation, true, r[3:]), bin(2)}, []in{reply(1), reply(2)}},

		// 6: text and UTF-8 (loopchat takes binary messages only).
		{"6.1", "text message", []out{masked(ws.OpText, true, []byte("Hello-µ@ßöäüàá-UTF-8!!"))}, []in{closed(ws.StatusUnsupportedData)}},
		{"6.2", "empty text message", []out{masked(ws.OpText, true, nil)}, []in{closed(ws.StatusUnsupportedData)}},
		{"6.3", "text that is not UTF-8", []out{masked(ws.OpText, true, []byte("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"))}, []in{closed(ws.StatusInvalidFramePayloadData)}},
		{"6.4", "text fragment ending inside a character", []out{masked(ws.OpText, false, []byte("\xce\xba\xe1\xbd"))}, []in{closed(ws.StatusUnsupportedData)}},
		{"6.5", "text fragment not UTF-8", []out{masked(ws.OpText, false, []byte("\xff\xfe"))}, []in{closed(ws.StatusInvalidFramePayloadData)}},

		// 7: the close handshake.
		{"7.1", "close without a body", []out{masked(ws.OpClose, true, nil)}, []in{closed(ws.StatusNormalClosure)}},
		{"7.2", "close 1000 with a reason", []out{closeWith(1000, "done")}, []in{closed(ws.StatusNormalClosure)}},
		{"7.3", "close with a one-byte body", []out{masked(ws.OpClose, true, []byte{0x03})}, []in{closed(ws.StatusProtocolError)}},
		{"7.4", "close with a 123-byte reason", []out{closeWith(1000, string(bytes.Repeat([]byte("*"), 123)))}, []in{closed(ws.StatusNormalClosure)}},
		{"7.5", "close with a 124-byte reason (a 126-byte control frame)", []out{closeWith(1000, string(bytes.Repeat([]byte("*"), 124)))}, []in{closed(ws.StatusProtocolError)}},
		{"7.6", "close reason not UTF-8", []out{closeWith(1000, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")}, []in{closed(ws.StatusInvalidFramePayloadData)}},
		{"7.7", "a message after close is not handled", []out{closeWith(1000, ""), bin(1)}, []in{closed(ws.StatusNormalClosure)}},
		{"7.8", "a ping after close is not answered", []out{closeWith(1000, ""), masked(ws.OpPing, true, []byte("late"))}, []in{closed(ws.StatusNormalClosure)}},

		// 9: masking and lengths.
		{"9.1", "unmasked binary message", []out{unmasked(ws.OpBinary, r)}, []in{closed(ws.StatusProtocolError)}},
		{"9.2", "unmasked ping", []out{unmasked(ws.OpPing, nil)}, []in{closed(ws.StatusProtocolError)}},
		{"9.3", "64-bit length with the top bit set", []out{{raw: []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4}}}, []in{closed(ws.StatusProtocolError)}},
		{"9.4", "a header over the limit, refused before its payload", []out{{raw: bigHeader(maxFrame + 1)}}, []in{closed(ws.StatusMessageTooBig)}},
		{"9.5", "a message one byte over the limit", []out{masked(ws.OpBinary, true, make([]byte, maxFrame+1))}, []in{closed(ws.StatusMessageTooBig)}},
	}
	// 4: reserved opcodes.
	for _, op := range []ws.OpCode{3, 4, 5, 6, 7, 11, 12, 13, 14, 15} {
		cases = append(cases, conformanceCase{fmt.Sprintf("4.%d", op), fmt.Sprintf("reserved opcode %d after a good message", op),
			[]out{bin(1), masked(op, true, []byte("x"))}, []in{reply(1), closed(ws.StatusProtocolError)}})
	}
	// 7.9: every code a client may send is echoed; the others fail.
	for _, c := range []uint16{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999} {
		cases = append(cases, conformanceCase{fmt.Sprintf("7.9.%d", c), fmt.Sprintf("close %d echoed", c),
			[]out{closeWith(c, "")}, []in{closed(ws.StatusCode(c))}})
	}
	for _, c := range []uint16{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		cases = append(cases, conformanceCase{fmt.Sprintf("7.10.%d", c), fmt.Sprintf("close with the invalid code %d", c),
			[]out{closeWith(c, "")}, []in{closed(ws.StatusProtocolError)}})
	}
	return cases
}

func pings(n int) (o []out) {
	for i := range n {
		o = append(o, masked(ws.OpPing, true, fmt.Appendf(nil, "ping %d", i)))
	}
	return o
}

func pongs(n int) (o []in) {
	for i := range n {
		o = append(o, pong(fmt.Appendf(nil, "ping %d", i)))
	}
	return o
}

func oneByteFragments(p []byte) (o []out) {
	for i := range p {
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpBinary
		}
		o = append(o, masked(op, i == len(p)-1, p[i:i+1]))
	}
	return o
}

// bigHeader is a masked binary frame header announcing n bytes, with no
// payload after it.
func bigHeader(n int) []byte {
	var b bytes.Buffer
	_ = ws.WriteHeader(&b, ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: true, Length: int64(n), Mask: ws.NewMask()})
	return b.Bytes()
}

func TestWebSocketRFC6455Conformance(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startWSServer(t, engine, nil)
		for _, tc := range conformanceCases(t, 64<<10) {
			t.Run(tc.id+" "+tc.name, func(t *testing.T) {
				c, br := dialLibrary(t, ts)
				var w bytes.Buffer // one write: the cases that check order mean the frames to arrive together
				for _, o := range tc.send {
					if o.raw != nil {
						w.Write(o.raw)
					} else if err := ws.WriteFrame(&w, o.f); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := c.Write(w.Bytes()); err != nil {
					t.Fatal(err)
				}
				for _, want := range tc.want {
					expectServerFrame(t, br, want)
					if want.op == ws.OpClose {
						expectEnd(t, br)
						return
					}
				}
				// No close was due: the connection still works.
				if err := ws.WriteFrame(c, ws.MaskFrame(ws.NewFrame(ws.OpBinary, true, paddedPing(t, 99, 0)))); err != nil {
					t.Fatal(err)
				}
				expectServerFrame(t, br, reply(99))
			})
		}
	})
}

// Handshakes the RFC says a server must refuse, and how (4.2.1, 4.2.2).
func TestWebSocketRFC6455Handshake(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		ts := startWSServer(t, engine, nil)
		proto := "Sec-WebSocket-Protocol: " + WSSubprotocol
		for _, tc := range []struct {
			name   string
			req    string
			status int
			header string // a header the refusal must carry, "Name: value"
		}{
			{"version 8", "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + wsTestKey + "\r\nSec-WebSocket-Version: 8\r\n" + proto + "\r\n\r\n", 426, "Sec-WebSocket-Version: 13"},
			{"no key", "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" + proto + "\r\n\r\n", 400, ""},
			{"no Upgrade header", "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + wsTestKey + "\r\nSec-WebSocket-Version: 13\r\n" + proto + "\r\n\r\n", 400, ""},
			{"no Host", "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + wsTestKey + "\r\nSec-WebSocket-Version: 13\r\n" + proto + "\r\n\r\n", 400, ""},
			{"POST", "POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + wsTestKey + "\r\nSec-WebSocket-Version: 13\r\n" + proto + "\r\n\r\n", 405, ""},
			{"HTTP/1.0", "GET / HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + wsTestKey + "\r\nSec-WebSocket-Version: 13\r\n" + proto + "\r\n\r\n", 400, ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, resp := dialRawWS(t, ts, tc.req)
				if resp.StatusCode != tc.status {
					t.Fatalf("status %v, want %d", resp.Status, tc.status)
				}
				if tc.header != "" {
					k, v, _ := bytes.Cut([]byte(tc.header), []byte(": "))
					if got := resp.Header.Get(string(k)); got != string(v) {
						t.Fatalf("%s: %q, want %q", k, got, v)
					}
				}
			})
		}
		// A good one from the library: 101, the subprotocol selected, an
		// accept key the library checked.
		dialLibrary(t, ts)
	})
}

// dialLibrary opens a WebSocket with gobwas/ws's Dialer, offering loopchat.v1.
func dialLibrary(t *testing.T, ts *testServer) (net.Conn, *bufio.Reader) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := ws.Dialer{Protocols: []string{WSSubprotocol}}
	c, br, hs, err := d.Dial(ctx, "ws://"+ts.WSAddr().String()+"/")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if hs.Protocol != WSSubprotocol {
		t.Fatalf("subprotocol %q", hs.Protocol)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if br == nil {
		br = bufio.NewReader(c)
	}
	return c, br
}

// expectServerFrame reads the next server frame and checks it against
// want. Before a close the server may push (Error, Kicked: seq 0); those
// are skipped, answers to requests are not.
func expectServerFrame(t *testing.T, br *bufio.Reader, want in) {
	t.Helper()
	for {
		h, err := ws.ReadHeader(br)
		if err == nil && h.Length > 1<<20 {
			err = fmt.Errorf("a server frame of %d bytes", h.Length)
		}
		var f ws.Frame
		if err == nil {
			f = ws.Frame{Header: h, Payload: make([]byte, h.Length)}
			_, err = io.ReadFull(br, f.Payload)
		}
		if err != nil {
			t.Fatalf("waiting for %v: %v", want.op, err)
		}
		if h.Masked || !h.Fin || h.Rsv != 0 {
			t.Fatalf("server frame masked, fragmented or with RSV bits: %+v", h)
		}
		if want.op == ws.OpClose && h.OpCode == ws.OpBinary {
			if m, err := protocol.Decode(f.Payload); err == nil && m.Seq == 0 {
				continue
			}
		}
		if h.OpCode != want.op {
			t.Fatalf("got opcode %v (% x), want %v", h.OpCode, f.Payload, want.op)
		}
		switch want.op {
		case ws.OpPong:
			if !bytes.Equal(f.Payload, want.body) {
				t.Fatalf("pong % x, want % x", f.Payload, want.body)
			}
		case ws.OpBinary:
			m, err := protocol.Decode(f.Payload)
			if err != nil || m.Seq != want.seq || m.GetPong() == nil {
				t.Fatalf("got %v (%v), want the Pong to %d", m, err, want.seq)
			}
		case ws.OpClose:
			if len(f.Payload) < 2 || ws.StatusCode(binary.BigEndian.Uint16(f.Payload)) != want.code {
				t.Fatalf("close % x, want code %d", f.Payload, want.code)
			}
		}
		return
	}
}

// expectEnd: after its close frame the server writes nothing more and
// closes the TCP connection.
func expectEnd(t *testing.T, br *bufio.Reader) {
	t.Helper()
	b, err := br.ReadByte()
	if err == nil {
		t.Fatalf("byte %#x after the close frame", b)
	}
	if !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("after the close frame: %v", err)
	}
}
