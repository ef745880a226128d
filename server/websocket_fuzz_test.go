package server

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"
)

// FuzzWSFrames runs client bytes through the frame parser the way
// wsTraffic does: header, length check, unmask, message state. It must
// never panic, never hand out a message over the limit, and stop at the
// first error.
func FuzzWSFrames(f *testing.F) {
	f.Add([]byte{0x82, 0x82, 1, 2, 3, 4, 0x0a, 0x00})                         // masked binary, 2 bytes
	f.Add([]byte{0x02, 0x81, 0, 0, 0, 0, 1, 0x80, 0x81, 0, 0, 0, 0, 2})       // fragmented binary
	f.Add([]byte{0x89, 0x80, 0, 0, 0, 0, 0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8}) // ping, close 1000
	f.Add([]byte{0x81, 0x81, 0, 0, 0, 0, 'a'})                                // text
	f.Add([]byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4})          // 64-bit length, top bit set
	f.Add([]byte{0x82, 0xfe, 0x01, 0x00, 9, 9, 9, 9})                         // 16-bit length, incomplete
	f.Add([]byte{0xc2, 0x80, 0, 0, 0, 0})                                     // RSV1
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 256
		var w wsConn
		for len(in) > 0 {
			h, hsize, err := wsParseHeader(in)
			if err == nil && hsize > 0 {
				err = w.checkLength(h, max)
			}
			if err != nil || hsize == 0 {
				return
			}
			if h.Length > int64(len(in)-hsize) {
				return // waits for more
			}
			total := hsize + int(h.Length)
			payload := bytes.Clone(in[hsize:total])
			ws.Cipher(payload, h.Mask, 0)
			ev, msg, err := w.frame(h, payload, max)
			if err != nil {
				return
			}
			if ev == wsMessage && len(msg) > max {
				t.Fatalf("message of %d bytes past the limit %d", len(msg), max)
			}
			if h.OpCode.IsControl() && len(payload) > 125 {
				t.Fatalf("control frame of %d bytes accepted", len(payload))
			}
			in = in[total:]
		}
	})
}

// FuzzWSHandshake: any request bytes get either a 101 or an HTTP 4xx,
// never a panic.
func FuzzWSHandshake(f *testing.F) {
	f.Add([]byte(upgradeRequest("x:1", "Sec-WebSocket-Protocol: "+WSSubprotocol)))
	f.Add([]byte(upgradeRequest("x:1")))
	f.Add([]byte(upgradeRequest("x:1", "Origin: https://a", "Sec-WebSocket-Protocol: a, "+WSSubprotocol)))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, req []byte) {
		resp, _, err := wsHandshake(req, []string{"https://a"})
		switch {
		case err == nil && !bytes.HasPrefix(resp, []byte("HTTP/1.1 101 ")):
			t.Fatalf("accepted with %q", resp)
		case err != nil && !bytes.HasPrefix(resp, []byte("HTTP/1.1 4")):
			t.Fatalf("refused with %q", resp)
		}
	})
}
