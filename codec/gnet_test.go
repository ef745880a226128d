package codec

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/loopchat/loopchat/internal/testproc"
)

// gnet.Conn is the Peeker the server decodes from.
var _ Peeker = gnet.Conn(nil)

// echoServer decodes frames on a real gnet event loop and echoes each one.
type echoServer struct {
	gnet.BuiltinEventEngine
	max    int
	booted chan gnet.Engine
	errs   chan error
}

func (s *echoServer) OnBoot(eng gnet.Engine) gnet.Action {
	s.booted <- eng
	return gnet.None
}

func (s *echoServer) OnTraffic(c gnet.Conn) gnet.Action {
	for {
		p, size, err := PeekFrame(c, s.max)
		if err != nil {
			s.errs <- err
			return gnet.Close
		}
		if p == nil {
			return gnet.None
		}
		_, _ = c.Write(AppendFrame(nil, p))
		_, _ = c.Discard(size)
	}
}

func TestDecodeFromGnetConn(t *testing.T) {
	const max = 64
	addr := testproc.FreeAddr(t)
	srv := &echoServer{max: max, booted: make(chan gnet.Engine, 1), errs: make(chan error, 4)}
	done := make(chan error, 1)
	go func() { done <- gnet.Run(srv, "tcp://"+addr, gnet.WithMulticore(true)) }()
	var eng gnet.Engine
	select {
	case eng = <-srv.booted:
	case err := <-done:
		t.Fatalf("gnet.Run: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = eng.Stop(ctx)
		<-done
	})

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := NewReader(bufio.NewReader(conn), max)

	// A frame dribbled one byte per write arrives whole.
	for _, b := range frame("dribbled") {
		if _, err := conn.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	// Many frames in one write all arrive, in order, including exactly max.
	var batch []byte
	var want []string
	for i := range 20 {
		s := fmt.Sprintf("frame-%02d", i)
		want = append(want, s)
		batch = append(batch, frame(s)...)
	}
	maxFrame := strings.Repeat("M", max)
	want = append(want, maxFrame)
	batch = append(batch, frame(maxFrame)...)
	if _, err := conn.Write(batch); err != nil {
		t.Fatal(err)
	}
	want = append([]string{"dribbled"}, want...)
	for _, w := range want {
		p, err := r.Next()
		if err != nil {
			t.Fatalf("reading echo of %q: %v", w, err)
		}
		if string(p) != w {
			t.Fatalf("echo = %q, want %q", p, w)
		}
	}

	// An oversize header is rejected and the connection closed.
	if _, err := conn.Write(header(max + 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("after oversize header: %v, want EOF", err)
	}
	if err := <-srv.errs; !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("server saw %v, want ErrFrameTooLarge", err)
	}
}
