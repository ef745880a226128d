package loadbalance

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"time"

	"github.com/loopchat/loopchat/codec"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// Probe checks that a node answers the protocol, not just that its port is
// open: it connects, sends Ping and waits for Pong, all within ctx.
func Probe(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	ping, err := protocol.Encode(&chatpb.Frame{Seq: 1, Body: &chatpb.Frame_Ping{Ping: &chatpb.Ping{}}})
	if err != nil {
		return err
	}
	if _, err := conn.Write(ping); err != nil {
		return err
	}
	payload, err := codec.NewReader(bufio.NewReader(conn), protocol.ClientMaxFrame).Next()
	if err != nil {
		return fmt.Errorf("no pong: %w", err)
	}
	f, err := protocol.Decode(payload)
	if err != nil {
		return err
	}
	if f.Seq != 1 || f.GetPong() == nil {
		return fmt.Errorf("answered %s instead of pong", protocol.Kind(f))
	}
	return nil
}

// probeTimeout is used when Options.Timeout is zero.
func probeTimeout(interval time.Duration) time.Duration {
	return max(interval/2, 100*time.Millisecond)
}
