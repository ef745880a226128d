package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// PROXY protocol (v1 text and v2 binary) headers, which a load balancer
// such as nginx (proxy_protocol on) sends first on each connection to tell
// the server who the client really is. See haproxy's proxy-protocol.txt.
//
// Neither header can be mistaken for a frame: read as a frame length,
// "PROX" and the v2 signature's "\r\n\r\n" are far above any frame limit.

// ErrProxyHeader reports a malformed PROXY header.
var ErrProxyHeader = errors.New("codec: malformed PROXY protocol header")

var (
	proxyV1Prefix = []byte("PROXY ")
	proxyV2Sig    = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// proxyV1Max is the longest v1 header, CRLF included.
const proxyV1Max = 107

// LooksLikeProxyHeader reports whether buf starts (or, while shorter,
// could start) a PROXY header. With fewer than 6 bytes it may say true for
// what turns out to be a frame; call it again with more.
func LooksLikeProxyHeader(buf []byte) bool {
	n := min(len(buf), len(proxyV1Prefix))
	if bytes.Equal(buf[:n], proxyV1Prefix[:n]) {
		return true
	}
	n = min(len(buf), len(proxyV2Sig))
	return bytes.Equal(buf[:n], proxyV2Sig[:n])
}

// ParseProxyHeader parses a PROXY header at the start of buf. It returns
// the client (source) address and the header size to discard. size 0 with
// a nil error means more bytes are needed. A header that says LOCAL (v2)
// or UNKNOWN (v1), sent by a proxy for its own health checks, returns an
// invalid src and the size. Anything else malformed is ErrProxyHeader.
func ParseProxyHeader(buf []byte) (src netip.AddrPort, size int, err error) {
	switch {
	case bytes.HasPrefix(buf, proxyV1Prefix):
		return parseProxyV1(buf)
	case bytes.HasPrefix(buf, proxyV2Sig):
		return parseProxyV2(buf)
	case LooksLikeProxyHeader(buf):
		return netip.AddrPort{}, 0, nil
	}
	return netip.AddrPort{}, 0, fmt.Errorf("%w: no PROXY signature", ErrProxyHeader)
}

func parseProxyV1(buf []byte) (netip.AddrPort, int, error) {
	end := bytes.Index(buf, []byte("\r\n"))
	if end < 0 {
		if len(buf) >= proxyV1Max {
			return netip.AddrPort{}, 0, fmt.Errorf("%w: v1 line longer than %d bytes", ErrProxyHeader, proxyV1Max)
		}
		return netip.AddrPort{}, 0, nil
	}
	size := end + 2
	if size > proxyV1Max {
		return netip.AddrPort{}, 0, fmt.Errorf("%w: v1 line longer than %d bytes", ErrProxyHeader, proxyV1Max)
	}
	f := strings.Split(string(buf[:end]), " ")
	if len(f) >= 2 && f[1] == "UNKNOWN" {
		return netip.AddrPort{}, size, nil
	}
	if len(f) != 6 || (f[1] != "TCP4" && f[1] != "TCP6") {
		return netip.AddrPort{}, 0, fmt.Errorf("%w: v1 %q", ErrProxyHeader, buf[:end])
	}
	ip, err := netip.ParseAddr(f[2])
	if err != nil || ip.Is4() != (f[1] == "TCP4") {
		return netip.AddrPort{}, 0, fmt.Errorf("%w: v1 source %q", ErrProxyHeader, f[2])
	}
	port, err := strconv.ParseUint(f[4], 10, 16)
	if err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("%w: v1 source port %q", ErrProxyHeader, f[4])
	}
	if _, err := netip.ParseAddr(f[3]); err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("%w: v1 destination %q", ErrProxyHeader, f[3])
	}
	if _, err := strconv.ParseUint(f[5], 10, 16); err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("%w: v1 destination port %q", ErrProxyHeader, f[5])
	}
	return netip.AddrPortFrom(ip, uint16(port)), size, nil
}

func parseProxyV2(buf []byte) (netip.AddrPort, int, error) {
	const fixed = 16
	if len(buf) < fixed {
		return netip.AddrPort{}, 0, nil
	}
	verCmd, fam := buf[12], buf[13]
	if verCmd>>4 != 2 {
		return netip.AddrPort{}, 0, fmt.Errorf("%w: v2 version %d", ErrProxyHeader, verCmd>>4)
	}
	size := fixed + int(binary.BigEndian.Uint16(buf[14:16]))
	if len(buf) < size {
		return netip.AddrPort{}, 0, nil
	}
	body := buf[fixed:size]
	switch verCmd & 0xF {
	case 0: // LOCAL: the proxy's own connection
		return netip.AddrPort{}, size, nil
	case 1: // PROXY
	default:
		return netip.AddrPort{}, 0, fmt.Errorf("%w: v2 command %d", ErrProxyHeader, verCmd&0xF)
	}
	switch fam {
	case 0x11: // TCP over IPv4
		if len(body) < 12 {
			return netip.AddrPort{}, 0, fmt.Errorf("%w: v2 IPv4 block too short", ErrProxyHeader)
		}
		ip := netip.AddrFrom4([4]byte(body[0:4]))
		return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(body[8:10])), size, nil
	case 0x21: // TCP over IPv6
		if len(body) < 36 {
			return netip.AddrPort{}, 0, fmt.Errorf("%w: v2 IPv6 block too short", ErrProxyHeader)
		}
		ip := netip.AddrFrom16([16]byte(body[0:16]))
		return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(body[32:34])), size, nil
	case 0x00: // UNSPEC
		return netip.AddrPort{}, size, nil
	}
	return netip.AddrPort{}, 0, fmt.Errorf("%w: v2 family 0x%02x", ErrProxyHeader, fam)
}
