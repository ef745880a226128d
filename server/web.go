package server

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"path"
	"strconv"
	"strings"

	"github.com/loopchat/loopchat/web"
)

// The web chat page (--web, docs/web.md) is served on the WebSocket
// listener: a request without an Upgrade header is answered from the
// embedded files, one request per connection, on the event loop that read
// it. Every response is built once at start (the files never change), so a
// page load costs the loop a lookup and a write, never a file read or a
// compression. Sharing the WebSocket's address makes the page and its
// socket one origin, through nginx or not.

// webCSP is the page's Content-Security-Policy: its own script and style
// only, and connections only back to where it came from ('self' covers
// ws: and wss: to the same host).
const webCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// webPage holds the prebuilt responses.
type webPage struct {
	files    map[string]*webFile // by URL path
	notFound []byte
	badVerb  []byte
}

// webFile is one file's responses: whole (headers and body) and the
// length of the headers, which alone answer a HEAD.
type webFile struct {
	etag        string
	plain, gz   []byte
	plainHdr    int
	gzHdr       int
	notModified []byte
}

func newWebPage() (*webPage, error) {
	p := &webPage{
		files:    make(map[string]*webFile),
		notFound: webError(404, "Not Found", "no such page"),
		badVerb:  webError(405, "Method Not Allowed", "only GET and HEAD"),
	}
	for name, body := range web.Files() {
		f, err := newWebFile(name, body)
		if err != nil {
			return nil, fmt.Errorf("web page: %w", err)
		}
		p.files["/"+name] = f
	}
	if p.files["/index.html"] == nil {
		return nil, fmt.Errorf("web page: %w: index.html", fs.ErrNotExist)
	}
	p.files["/"] = p.files["/index.html"]
	return p, nil
}

func newWebFile(name string, body []byte) (*webFile, error) {
	sum := sha256.Sum256(body)
	f := &webFile{etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
	ctype := mime.TypeByExtension(path.Ext(name))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(body); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	f.plain, f.plainHdr = webResponse("200 OK", ctype, f.etag, "", body)
	f.gz, f.gzHdr = webResponse("200 OK", ctype, f.etag, "gzip", gz.Bytes())
	f.notModified, _ = webResponse("304 Not Modified", "", f.etag, "", nil)
	return f, nil
}

// webResponse is a whole response and the length of its headers. Pages
// are revalidated on every load (no-cache with an ETag): a node upgraded
// to a new page is seen at the next reload.
func webResponse(status, ctype, etag, encoding string, body []byte) ([]byte, int) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %s\r\n", status)
	if ctype != "" {
		fmt.Fprintf(&b, "Content-Type: %s\r\n", ctype)
	}
	if encoding != "" {
		fmt.Fprintf(&b, "Content-Encoding: %s\r\n", encoding)
	}
	if body != nil {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	fmt.Fprintf(&b, "ETag: %s\r\nCache-Control: no-cache\r\nVary: Accept-Encoding\r\n", etag)
	fmt.Fprintf(&b, "Content-Security-Policy: %s\r\n", webCSP)
	b.WriteString("X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n")
	n := b.Len()
	b.Write(body)
	return b.Bytes(), n
}

func webError(code int, status, text string) []byte {
	allow := ""
	if code == 405 {
		allow = "Allow: GET, HEAD\r\n"
	}
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n%s\n",
		code, status, len(text)+1, allow, text)
}

// reply answers req, a whole HTTP request head (up to the blank line), if
// it is for the page: ok is false for a WebSocket upgrade (any request
// with an Upgrade header), which the handshake takes.
func (p *webPage) reply(req []byte) (resp []byte, ok bool) {
	if p == nil {
		return nil, false
	}
	line, headers, _ := bytes.Cut(req, []byte("\r\n"))
	if httpHeader(headers, "Upgrade") != nil {
		return nil, false
	}
	method, rest, _ := bytes.Cut(line, []byte(" "))
	target, _, _ := bytes.Cut(rest, []byte(" "))
	head := string(method) == "HEAD"
	if !head && string(method) != "GET" {
		return p.badVerb, true
	}
	urlPath, _, _ := strings.Cut(string(target), "?")
	f := p.files[urlPath]
	if f == nil {
		return p.notFound, true
	}
	if inm := httpHeader(headers, "If-None-Match"); inm != nil && etagMatches(string(inm), f.etag) {
		return f.notModified, true
	}
	resp, n := f.plain, f.plainHdr
	if acceptsGzip(httpHeader(headers, "Accept-Encoding")) {
		resp, n = f.gz, f.gzHdr
	}
	if head {
		resp = resp[:n]
	}
	return resp, true
}

// httpHeader returns the value of the first header named name (ASCII case
// ignored) in headers (CRLF-separated lines), or nil.
func httpHeader(headers []byte, name string) []byte {
	for len(headers) > 0 {
		var line []byte
		line, headers, _ = bytes.Cut(headers, []byte("\r\n"))
		k, v, ok := bytes.Cut(line, []byte(":"))
		if ok && strings.EqualFold(string(bytes.TrimSpace(k)), name) {
			return bytes.TrimSpace(v)
		}
	}
	return nil
}

// acceptsGzip: Accept-Encoding lists gzip with a weight above 0.
func acceptsGzip(v []byte) bool {
	for _, part := range strings.Split(string(v), ",") {
		coding, params, _ := strings.Cut(part, ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		if q, ok := strings.CutPrefix(strings.TrimSpace(params), "q="); ok {
			w, err := strconv.ParseFloat(q, 64)
			return err == nil && w > 0
		}
		return true
	}
	return false
}

func etagMatches(inm, etag string) bool {
	for _, t := range strings.Split(inm, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// wsOrigins is the Origin list a WebSocket upgrade is checked against:
// --ws-allowed-origins, and, with --web, the origin of the page itself —
// http:// or https:// and the request's Host — so the page a node served
// can open its socket without being listed (the check browsers' same-origin
// rule makes: a page from elsewhere sends its own Origin, not this host).
func (s *Server) wsOrigins(req []byte) []string {
	if s.web == nil {
		return s.opts.WSAllowedOrigins
	}
	_, headers, _ := bytes.Cut(req, []byte("\r\n"))
	host := httpHeader(headers, "Host")
	if len(host) == 0 {
		return s.opts.WSAllowedOrigins
	}
	out := make([]string, 0, len(s.opts.WSAllowedOrigins)+2)
	out = append(out, s.opts.WSAllowedOrigins...)
	return append(out, "http://"+string(host), "https://"+string(host))
}
