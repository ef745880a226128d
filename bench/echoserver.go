package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/loopchat/loopchat/codec"
)

// EchoServer is the upper bound of this stack: gnet with the same reactor
// setup and the same framing as loopchat, echoing every frame straight
// back on the event loop — no decoding, no store, no workers.
type EchoServer struct {
	gnet.BuiltinEventEngine
	maxFrame int
	eng      gnet.Engine
	booted   chan struct{}
	done     chan error
}

// StartEchoServer listens on addr with loops event loops.
func StartEchoServer(addr string, loops int) (*EchoServer, error) {
	s := &EchoServer{maxFrame: codec.DefaultMaxFrame, booted: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		s.done <- gnet.Run(s, "tcp://"+addr, gnet.WithMulticore(true), gnet.WithNumEventLoop(loops),
			gnet.WithLoadBalancing(gnet.RoundRobin), gnet.WithLockOSThread(false), gnet.WithReuseAddr(true),
			gnet.WithTCPNoDelay(gnet.TCPNoDelay))
	}()
	select {
	case <-s.booted:
		return s, nil
	case err := <-s.done:
		return nil, fmt.Errorf("echo server: %w", err)
	case <-time.After(5 * time.Second):
		return nil, fmt.Errorf("echo server: did not start")
	}
}

func (s *EchoServer) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	close(s.booted)
	return gnet.None
}

func (s *EchoServer) OnTraffic(c gnet.Conn) gnet.Action {
	for {
		payload, size, err := codec.PeekFrame(c, s.maxFrame)
		if err != nil {
			return gnet.Close
		}
		if payload == nil {
			return gnet.None
		}
		frame, _ := c.Peek(size)
		_, _ = c.Write(frame) // copies into the socket or the outbound buffer
		_, _ = c.Discard(size)
	}
}

// Stop shuts the echo server down.
func (s *EchoServer) Stop(ctx context.Context) error {
	err := s.eng.Stop(ctx)
	<-s.done
	return err
}
