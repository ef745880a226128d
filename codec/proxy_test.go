package codec

import (
	"encoding/binary"
	"errors"
	"testing"
)

func v2Header(cmd byte, fam byte, body []byte) []byte {
	h := append([]byte(nil), proxyV2Sig...)
	h = append(h, 0x20|cmd, fam)
	h = binary.BigEndian.AppendUint16(h, uint16(len(body)))
	return append(h, body...)
}

func TestParseProxyHeader(t *testing.T) {
	v4body := []byte{127, 0, 0, 9, 127, 0, 0, 1, 0x30, 0x39, 0x1b, 0x58} // 127.0.0.9:12345 -> 127.0.0.1:7000
	v6body := make([]byte, 36)
	v6body[15] = 1                                // ::1
	v6body[31] = 1                                // ::1
	binary.BigEndian.PutUint16(v6body[32:], 4242) // source port
	cases := []struct {
		name string
		in   []byte
		src  string // "" for none
		size int
		err  bool
	}{
		{"v1 tcp4", []byte("PROXY TCP4 192.0.2.7 127.0.0.1 56324 7000\r\nrest"), "192.0.2.7:56324", 43, false},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::1 ::1 1000 7000\r\n"), "[2001:db8::1]:1000", 38, false},
		{"v1 unknown", []byte("PROXY UNKNOWN\r\n"), "", 15, false},
		{"v1 partial", []byte("PROXY TCP4 192.0.2.7 12"), "", 0, false},
		{"v1 prefix only", []byte("PRO"), "", 0, false},
		{"v1 bad family", []byte("PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n"), "", 0, true},
		{"v1 bad address", []byte("PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n"), "", 0, true},
		{"v1 family mismatch", []byte("PROXY TCP4 ::1 ::1 1 2\r\n"), "", 0, true},
		{"v1 bad port", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n"), "", 0, true},
		{"v1 too long", append([]byte("PROXY "), make([]byte, 120)...), "", 0, true},
		{"v2 tcp4", v2Header(1, 0x11, v4body), "127.0.0.9:12345", 28, false},
		{"v2 tcp6", v2Header(1, 0x21, v6body), "[::1]:4242", 52, false},
		{"v2 local", v2Header(0, 0x00, nil), "", 16, false},
		{"v2 partial", v2Header(1, 0x11, v4body)[:20], "", 0, false},
		{"v2 signature only", proxyV2Sig[:5], "", 0, false},
		{"v2 short ipv4 block", v2Header(1, 0x11, v4body[:4]), "", 0, true},
		{"v2 bad command", v2Header(7, 0x11, v4body), "", 0, true},
		{"v2 udp", v2Header(1, 0x12, v4body), "", 0, true},
		{"not a header", frame("hello"), "", 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src, size, err := ParseProxyHeader(tc.in)
			if tc.err {
				if !errors.Is(err, ErrProxyHeader) {
					t.Fatalf("err = %v, want ErrProxyHeader", err)
				}
				return
			}
			if err != nil || size != tc.size {
				t.Fatalf("size %d err %v, want size %d", size, err, tc.size)
			}
			got := ""
			if src.IsValid() {
				got = src.String()
			}
			if got != tc.src {
				t.Fatalf("src = %q, want %q", got, tc.src)
			}
		})
	}
}

func TestProxyHeaderIsNeverAValidFrame(t *testing.T) {
	for _, h := range [][]byte{[]byte("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\r\n"), v2Header(1, 0x11, make([]byte, 12))} {
		if _, err := NextFrame(&inbound{b: h}, DefaultMaxFrame); !errors.Is(err, ErrFrameTooLarge) {
			t.Fatalf("%q read as a frame: %v", h[:6], err)
		}
	}
	if LooksLikeProxyHeader(frame("x")) {
		t.Fatal("a frame looks like a PROXY header")
	}
}

func FuzzParseProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.0.2.7 127.0.0.1 56324 7000\r\n"))
	f.Add(v2Header(1, 0x11, []byte{127, 0, 0, 9, 127, 0, 0, 1, 0x30, 0x39, 0x1b, 0x58}))
	f.Add(v2Header(1, 0x21, make([]byte, 36)))
	f.Fuzz(func(t *testing.T, in []byte) {
		src, size, err := ParseProxyHeader(in)
		if err != nil {
			return
		}
		if size < 0 || size > len(in) {
			t.Fatalf("size %d outside input of %d", size, len(in))
		}
		if size == 0 && src.IsValid() {
			t.Fatal("an address without a header")
		}
		// Parsing is prefix-stable: the header alone parses the same.
		if size > 0 {
			src2, size2, err2 := ParseProxyHeader(in[:size])
			if err2 != nil || size2 != size || src2 != src {
				t.Fatalf("header alone parses as %v %d %v", src2, size2, err2)
			}
		}
	})
}
