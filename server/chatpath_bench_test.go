package server

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/loopchat/loopchat/codec"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// BenchmarkChatPath is what one chat message costs the server, over
// loopback sockets on the embedded store: alice sends to bob (Send, then
// SendOK), bob is pushed the message and acks in batches of 32, as the
// load generator's receivers do. The clients run in this process but
// allocate nothing per message (frames encoded once, pushes parsed with
// protowire into reused buffers), so allocs/op and B/op are the server's
// per message (docs/BENCHMARKS.md, "Allocations per chat message").
//
//	go test ./server -run '^$' -bench ChatPath -benchmem -benchtime 40000x
//
// pairs=1 is one conversation at a time: nothing for the server to
// gather. pairs=16 sends on 16 conversations at once, as a loaded server
// sees them: per-loop work (a write task serving several connections) is
// shared between messages.
//
// blocks: the store holds a block (of two users who do not send), so
// every 1:1 send takes the block check's slow path (block.go), not the
// empty index's one atomic load.
func BenchmarkChatPath(b *testing.B) {
	for _, engine := range engines {
		for _, pairs := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/pairs=%d", engine, pairs), func(b *testing.B) { benchChatPath(b, engine, pairs, false) })
		}
		b.Run(engine+"/pairs=16/blocks", func(b *testing.B) { benchChatPath(b, engine, 16, true) })
	}
}

func benchChatPath(b *testing.B, engine string, pairs int, blocks bool) {
	srv, err := New(Options{
		Listen: "127.0.0.1:0", DataDir: b.TempDir(), Engine: engine, Loops: 1,
		BcryptCost: bcrypt.MinCost, Logger: slog.New(slog.DiscardHandler),
		RateLimit: 1e9, RateBurst: 1 << 30, MaxOutbound: 64 << 20,
	})
	if err != nil {
		b.Fatal(err)
	}
	addr, err := srv.Start()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = srv.Shutdown(b.Context()) })
	const window = 32
	type pair struct {
		alice, bob *benchConn
		burst      []byte // window Sends to bob
		frame      int    // the size of one
	}
	ps := make([]pair, pairs)
	for i := range ps {
		p := &ps[i]
		p.alice = benchLogin(b, addr.String(), fmt.Sprintf("alice%d", i))
		p.bob = benchLogin(b, addr.String(), fmt.Sprintf("bob%d", i))
		send, err := protocol.Encode(&chatpb.Frame{Seq: 1, Body: &chatpb.Frame_Send{Send: &chatpb.Send{
			To:   &chatpb.Send_Username{Username: fmt.Sprintf("bob%d", i)},
			Text: "a chat message of some sixty-four bytes, as the bench sends"}}})
		if err != nil {
			b.Fatal(err)
		}
		p.frame = len(send)
		for range window {
			p.burst = append(p.burst, send...)
		}
	}
	if blocks {
		var ids [2]uint64
		for i, name := range []string{"eve", "mallory"} {
			benchLogin(b, addr.String(), name)
			u, err := srv.store.UserByName(b.Context(), name)
			if err != nil {
				b.Fatal(err)
			}
			ids[i] = u.ID
		}
		if err := srv.store.Block(b.Context(), ids[0], ids[1], Limits{}); err != nil {
			b.Fatal(err)
		}
	}
	errs := make(chan error, 2*pairs)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range ps {
		p := &ps[i]
		want := b.N / pairs
		if i < b.N%pairs {
			want++
		}
		go func() { errs <- p.bob.receive(want, window) }()
		go func() { errs <- p.alice.sendAll(want, p.burst, p.frame, window) }()
	}
	for range 2 * pairs {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
}

// sendAll writes want Sends in bursts of window, reading the SendOKs of
// each burst before the next.
func (bc *benchConn) sendAll(want int, burst []byte, frame, window int) error {
	for sent := 0; sent < want; {
		n := min(window, want-sent)
		if _, err := bc.c.Write(burst[:n*frame]); err != nil {
			return err
		}
		for range n {
			if _, err := bc.next(); err != nil {
				return err
			}
		}
		sent += n
	}
	return nil
}

// benchConn is an allocation-free client for the hot loop.
type benchConn struct {
	c   net.Conn
	r   *bufio.Reader
	hdr [codec.HeaderSize]byte
	buf []byte
	ack []byte
}

// benchLogin registers name and logs in on a new connection.
func benchLogin(b *testing.B, addr, name string) *benchConn {
	b.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	bc := &benchConn{c: c, r: bufio.NewReaderSize(c, 64<<10), buf: make([]byte, 64<<10), ack: make([]byte, 0, 1024)}
	for i, f := range []*chatpb.Frame{
		{Seq: 1, Body: &chatpb.Frame_Register{Register: &chatpb.Register{Username: name, Password: "password1"}}},
		{Seq: 2, Body: &chatpb.Frame_Login{Login: &chatpb.Login{Username: name, Password: "password1"}}},
	} {
		buf, err := protocol.Encode(f)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			p, err := bc.next()
			if err != nil {
				b.Fatalf("%s: step %d: %v", name, i, err)
			}
			resp, err := protocol.Decode(p)
			if err != nil {
				b.Fatal(err)
			}
			if resp.Seq != f.Seq {
				continue // a push
			}
			if e := resp.GetError(); e != nil {
				b.Fatalf("%s: step %d: %v", name, i, e)
			}
			break
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	return bc
}

// next reads one frame's payload into the reused buffer.
func (bc *benchConn) next() ([]byte, error) {
	if _, err := io.ReadFull(bc.r, bc.hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(bc.hdr[:]))
	if n > len(bc.buf) {
		return nil, fmt.Errorf("frame of %d bytes", n)
	}
	_, err := io.ReadFull(bc.r, bc.buf[:n])
	return bc.buf[:n], err
}

// receive reads pushes until it has had want messages, acking every
// batch of them.
func (bc *benchConn) receive(want, batch int) error {
	var ids []uint64
	ids = make([]uint64, 0, batch)
	for got := 0; got < want; {
		p, err := bc.next()
		if err != nil {
			return err
		}
		id, ok := pushedMsgID(p)
		if !ok {
			continue // the answer to an ack
		}
		got++
		if ids = append(ids, id); len(ids) == batch || got == want {
			if err := bc.sendAck(ids); err != nil {
				return err
			}
			ids = ids[:0]
		}
	}
	return nil
}

// sendAck writes Frame{ack: Ack{msg_ids}} encoded by hand.
func (bc *benchConn) sendAck(ids []uint64) error {
	var packed [32 * 10]byte
	body := packed[:0]
	for _, id := range ids {
		body = protowire.AppendVarint(body, id)
	}
	var inner [32*10 + 8]byte
	ack := protowire.AppendBytes(protowire.AppendTag(inner[:0], 1, protowire.BytesType), body)
	frame := protowire.AppendBytes(protowire.AppendTag(bc.ack[:codec.HeaderSize], 15, protowire.BytesType), ack)
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-codec.HeaderSize))
	bc.ack = frame[:0]
	_, err := bc.c.Write(frame)
	return err
}

// pushedMsgID is the msg_id of a Message push (Frame field 70), if p is one.
func pushedMsgID(p []byte) (uint64, bool) {
	msg, ok := field(p, 70)
	if !ok {
		return 0, false
	}
	id, ok := field(msg, 1)
	if !ok {
		return 0, false
	}
	v, n := protowire.ConsumeVarint(id)
	return v, n > 0
}

// field is the value of the first field num in p: the bytes of a
// length-delimited one, or those of a varint.
func field(p []byte, num protowire.Number) ([]byte, bool) {
	for len(p) > 0 {
		n, typ, l := protowire.ConsumeTag(p)
		if l < 0 {
			return nil, false
		}
		p = p[l:]
		if n == num {
			if typ == protowire.BytesType {
				v, l := protowire.ConsumeBytes(p)
				return v, l >= 0
			}
			return p, true
		}
		if l = protowire.ConsumeFieldValue(n, typ, p); l < 0 {
			return nil, false
		}
		p = p[l:]
	}
	return nil, false
}
