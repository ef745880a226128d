package testproc

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RepoRoot is the directory holding go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// Nginx is an nginx master process serving the project's template.
type Nginx struct {
	Bin        string
	Conf       string // main configuration file
	Upstream   string // the stream include `loopchat lb` renders
	Addr       string // client-facing stream (TCP) address
	WSUpstream string // the http include: the nodes' --ws-listen addresses
	WSAddr     string // browser-facing HTTP/WebSocket address
	Dir        string
	proc       *Proc
}

// NginxUpstreams are the servers of the template's two upstreams.
type NginxUpstreams struct {
	Stream []string // nodes' --listen addresses
	WS     []string // nodes' --ws-listen addresses
}

// StartNginx renders nginx/nginx.conf.tmpl into a temp dir with a stream
// upstream include listing servers, and runs nginx in the foreground.
func StartNginx(t testing.TB, servers ...string) *Nginx {
	t.Helper()
	return StartNginxWith(t, NginxUpstreams{Stream: servers})
}

// StartNginxWith is StartNginx with both upstreams given.
func StartNginxWith(t testing.TB, up NginxUpstreams) *Nginx {
	t.Helper()
	n := RenderNginx(t, up)
	n.proc = Start(t, n.Bin, "-c", n.Conf, "-e", "stderr", "-g", "daemon off;")
	WaitListening(t, n.Addr, 10*time.Second)
	WaitListening(t, n.WSAddr, 10*time.Second)
	return n
}

// RenderNginx writes the configuration and its includes into a temp dir
// without starting nginx.
func RenderNginx(t testing.TB, up NginxUpstreams) *Nginx {
	t.Helper()
	bin := Need(t, "nginx", "/usr/sbin/nginx")
	if _, err := os.Stat("/usr/lib/nginx/modules/ngx_stream_module.so"); err != nil {
		msg := "nginx's stream module is not installed (libnginx-mod-stream): run `make deps`"
		if os.Getenv("CI") != "" {
			t.Fatal("CI: " + msg)
		}
		t.Skip("SKIPPING: " + msg)
	}
	dir := t.TempDir()
	n := &Nginx{Bin: bin, Dir: dir, Conf: filepath.Join(dir, "nginx.conf"),
		Upstream: filepath.Join(dir, "upstream.conf"), Addr: "127.0.0.1:" + strconv.Itoa(FreePort(t)),
		WSUpstream: filepath.Join(dir, "ws-upstream.conf"), WSAddr: "127.0.0.1:" + strconv.Itoa(FreePort(t))}
	tmpl, err := os.ReadFile(filepath.Join(RepoRoot(t), "nginx", "nginx.conf.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer("@PREFIX@", dir, "@LISTEN@", n.Addr, "@UPSTREAM@", n.Upstream,
		"@WS_LISTEN@", n.WSAddr, "@WS_UPSTREAM@", n.WSUpstream).Replace(string(tmpl))
	if err := os.WriteFile(n.Conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	writeUpstream(t, n.Upstream, up.Stream)
	writeUpstream(t, n.WSUpstream, up.WS)
	return n
}

// writeUpstream writes an include of server lines; with none, a
// placeholder marked down (nginx refuses an empty upstream).
func writeUpstream(t testing.TB, path string, servers []string) {
	t.Helper()
	var up strings.Builder
	for _, s := range servers {
		up.WriteString("server " + s + ";\n")
	}
	if len(servers) == 0 {
		up.WriteString("server 127.0.0.1:1 down;\n")
	}
	if err := os.WriteFile(path, []byte(up.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Check runs `nginx -t` on the configuration and returns its output.
func (n *Nginx) Check() (string, error) {
	out, err := exec.Command(n.Bin, "-t", "-c", n.Conf, "-e", "stderr").CombinedOutput()
	return string(out), err
}

// Proc is the nginx master process.
func (n *Nginx) Proc() *Proc { return n.proc }

// Logs returns nginx's error and access logs, for failure reports.
func (n *Nginx) Logs() string {
	e, _ := os.ReadFile(filepath.Join(n.Dir, "error.log"))
	a, _ := os.ReadFile(filepath.Join(n.Dir, "access.log"))
	h, _ := os.ReadFile(filepath.Join(n.Dir, "http-access.log"))
	return "error.log:\n" + string(e) + "\naccess.log:\n" + string(a) + "\nhttp-access.log:\n" + string(h)
}
