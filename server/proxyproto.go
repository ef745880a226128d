package server

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/loopchat/loopchat/codec"
)

// proxyState tracks the PROXY protocol header at the start of a connection.
type proxyState uint8

const (
	// proxyNone: the peer is not a trusted proxy; a PROXY header from it
	// is a protocol error (it would let anyone claim any address).
	proxyNone proxyState = iota
	// proxyMaybe: the peer is a trusted proxy; a header may come first
	// (nginx sends one; `loopchat lb` probing the node directly does not).
	proxyMaybe
	// proxyDone: past the header, or no header came.
	proxyDone
)

// maxProxyHeader bounds a PROXY header (v1 is at most 107 bytes; v2 with
// address and a few TLVs fits easily).
const maxProxyHeader = 1024

func (s *Server) proxyStateFor(peer net.Addr) proxyState {
	ap, err := netip.ParseAddrPort(peer.String())
	if err != nil || !s.trustedProxy(ap.Addr()) {
		return proxyNone
	}
	return proxyMaybe
}

// trustedProxy: a is in --proxy-protocol-from.
func (s *Server) trustedProxy(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range s.opts.ProxyProtocolFrom {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// errUntrustedProxy: a PROXY header from a peer not in --proxy-protocol-from.
var errUntrustedProxy = fmt.Errorf("%w: PROXY header from an address not in --proxy-protocol-from", codec.ErrProxyHeader)

// takeProxyHeader looks at the first bytes of a connection. It returns the
// header size to discard once complete (0 and done=false: wait for more).
// With done and no error the stream continues as frames.
func (c *session) takeProxyHeader(buf []byte) (size int, done bool, err error) {
	if c.proxy == proxyDone {
		return 0, true, nil
	}
	if len(buf) == 0 {
		return 0, false, nil
	}
	if !codec.LooksLikeProxyHeader(buf) {
		if err := c.finishProxy(); err != nil {
			return 0, false, err
		}
		return 0, true, nil
	}
	if len(buf) < 6 {
		return 0, false, nil // "PROXY " or the v2 signature, not yet sure
	}
	if c.proxy == proxyNone {
		return 0, false, errUntrustedProxy
	}
	src, size, err := codec.ParseProxyHeader(buf)
	switch {
	case err != nil:
		return 0, false, err
	case size == 0 && len(buf) >= maxProxyHeader:
		return 0, false, fmt.Errorf("%w: longer than %d bytes", codec.ErrProxyHeader, maxProxyHeader)
	case size == 0:
		return 0, false, nil
	}
	if src.IsValid() {
		remote := src.String()
		c.remote.Store(&remote)
	}
	if err := c.finishProxy(); err != nil {
		return 0, false, err
	}
	return size, true, nil
}

// finishProxy marks the header done: the client's address is final, so a
// connection from a trusted proxy is counted under it now (one from
// anyone else was counted when it opened) — except a WebSocket one,
// whose upgrade request may still name the client (takeForwardedFor).
func (c *session) finishProxy() error {
	was := c.proxy
	c.proxy = proxyDone
	switch {
	case was != proxyMaybe:
	case c.ws != nil:
		c.ws.fromProxy = true
	case !c.srv.holdAnonymous(c):
		return errAddressBusy
	}
	return nil
}

// takeForwardedFor takes the client's address from a WebSocket upgrade's
// X-Forwarded-For (its values joined by commas, in order), read from a
// trusted proxy. Each proxy appends the address it was reached from, so
// the list is read from the right: an entry is believed only while the
// hop it came from — the address found so far, starting with the one the
// PROXY header or the socket gave — is a trusted proxy. The first
// untrusted address is the client; anything left of it could be forged.
func (c *session) takeForwardedFor(xff string) {
	cur, ok := hostOf(c.remoteAddr())
	if !ok || xff == "" {
		return
	}
	found := false
	for hops := strings.Split(xff, ","); len(hops) > 0 && c.srv.trustedProxy(cur); hops = hops[:len(hops)-1] {
		a, ok := hostOf(strings.TrimSpace(hops[len(hops)-1]))
		if !ok {
			break // not an address (e.g. "unknown"): believe nothing past it
		}
		cur, found = a, true
	}
	if found {
		remote := cur.Unmap().String()
		c.remote.Store(&remote)
	}
}

// hostOf parses an address with or without a port ("[v6]:port" too).
func hostOf(s string) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr(), true
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	return a, err == nil
}

// readProxyHeader does the same on a blocking reader (net engine).
func (c *session) readProxyHeader(br *bufio.Reader) error {
	want := 1
	for c.proxy != proxyDone {
		buf, err := br.Peek(want)
		if err != nil && len(buf) == 0 {
			return err
		}
		buf, _ = br.Peek(br.Buffered())
		size, done, perr := c.takeProxyHeader(buf)
		switch {
		case perr != nil:
			return perr
		case done:
			_, _ = br.Discard(size)
			return nil
		}
		if err != nil {
			return err // the stream ended inside a header
		}
		want = len(buf) + 1
	}
	return nil
}
