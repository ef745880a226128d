package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

// historyLimit is the page size the history scenario asks for: the issue's
// "50-message pages" (and the server's default limit).
const historyLimit = 50

// Seeding bounds. A few sends in flight per connection let the server's
// log writer batch them without queueing hundreds behind one connection,
// and the overall bound keeps the last of them well inside the server's
// 10 s request timeout however many connections there are.
const (
	seedInFlightPerConn = 4
	seedInFlight        = 2048
)

// quietCPU is how little of a CPU the server may use before the measured
// phase starts: after seeding it still copies the messages into the
// conversation logs (bbolt, every 50 ms), work that belongs to the seeding,
// not to the pages read after it.
const (
	quietCPU     = 0.10
	quietWindow  = 250 * time.Millisecond
	quietMaxWait = 60 * time.Second
)

// conversation is one 1:1 conversation of the history scenario: two logged-in
// users, and the highest seq it had after seeding.
type conversation struct {
	side [2]*Conn
	id   [2]uint64
	top  uint64
}

// History measures reading conversation history: Pairs 1:1 conversations
// among Conns logged-in connections, each seeded (unmeasured) with
// SeedMessages messages sent by both sides, then History requests for
// 50-message pages, open loop at Rate per second in all: the latest page
// and a page before a random seq, taking turns, from either side. Latency
// runs from when a request was due to its HistoryPage; MsgsPerSec counts
// pages. Every page is checked — the right number of messages, seqs
// strictly descending without gaps from where it should start, both users
// of the conversation and nobody else, has_more — and one that is not
// right counts as an error. With Step it searches for the highest rate
// whose p99 stays under P99Bound, as chat does.
//
// The checks assume the conversation keeps every seeded message: a server
// whose --history-max-messages is below SeedMessages+50 trims what pages
// ask for, and they count as errors.
func History(ctx context.Context, cfg Config) (Result, error) {
	cfg.defaults()
	conns, ids, err := loggedIn(ctx, &cfg)
	if err != nil {
		return Result{}, err
	}
	defer closeAll(conns)
	convs := make([]*conversation, cfg.Pairs)
	for i := range convs {
		convs[i] = &conversation{side: [2]*Conn{conns[i], conns[cfg.Pairs+i]}, id: [2]uint64{ids[i], ids[cfg.Pairs+i]}}
	}
	if err := seedConversations(ctx, &cfg, convs); err != nil {
		return Result{}, err
	}
	waitServerQuiet(ctx, &cfg)
	return stepped(ctx, &cfg, "history", func(rate float64) (Result, error) {
		return historyPhase(ctx, &cfg, convs, rate)
	})
}

// acker acknowledges what a connection is pushed, gathered over ackDelay
// as the chat scenario's receivers do, so seeded messages leave the
// inboxes as they would on a client that showed them; history is then
// read from the conversation logs alone, with no inbox left to copy.
type acker struct {
	c   *Conn
	mu  sync.Mutex
	ids []uint64
}

func (a *acker) add(id uint64) {
	a.mu.Lock()
	a.ids = append(a.ids, id)
	first := len(a.ids) == 1
	a.mu.Unlock()
	if first {
		time.AfterFunc(ackDelay, a.flush)
	}
}

func (a *acker) flush() {
	a.mu.Lock()
	ids := a.ids
	a.ids = nil
	a.mu.Unlock()
	if len(ids) > 0 {
		_ = a.c.Go(&chatpb.Frame{Body: &chatpb.Frame_Ack{Ack: &chatpb.Ack{MsgIds: ids}}}, true, nil)
	}
}

// seedConversations sends cfg.SeedMessages messages into each conversation,
// half from each side, as fast as the server takes them; receivers ack
// what they are pushed. It sets each conversation's top seq from the
// SendOKs (users reused from an earlier run continue its seqs).
func seedConversations(ctx context.Context, cfg *Config, convs []*conversation) error {
	total := int64(len(convs) * cfg.SeedMessages)
	var sent, pushed atomic.Int64
	for _, cv := range convs {
		for _, c := range cv.side {
			a := &acker{c: c}
			c.OnPush(func(f *chatpb.Frame) {
				if m := f.GetMessage(); m != nil {
					a.add(m.MsgId)
					pushed.Add(1)
				}
			})
		}
	}
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "[history %s] seeding %d conversations with %d messages each (not measured)\n", cfg.Server, len(convs), cfg.SeedMessages)
	}
	stopProgress := startProgress(cfg, func() string {
		return fmt.Sprintf("seeding: sent %d/%d, pushed %d", sent.Load(), total, pushed.Load())
	})
	start := time.Now()
	global := make(chan struct{}, seedInFlight)
	tops := make([][2]uint64, len(convs))
	errs := make([]error, 2*len(convs))
	var wg sync.WaitGroup
	for i, cv := range convs {
		for s := range 2 {
			// Side 0 sends the odd one out: a seed of 1 is still a
			// conversation.
			n := cfg.SeedMessages / 2
			if s == 0 {
				n = cfg.SeedMessages - n
			}
			wg.Go(func() {
				tops[i][s], errs[2*i+s] = seedSide(ctx, cfg, cv.side[s], cv.id[1-s], n, i, global, &sent)
			})
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		stopProgress()
		return fmt.Errorf("seeding: %w", err)
	}
	// Every message is pushed to its receiver, who acks it within ackDelay;
	// wait for both (bounded) so no inbox work spills into the measurement.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && pushed.Load() < total && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * ackDelay)
	stopProgress()
	for i, cv := range convs {
		cv.top = max(tops[i][0], tops[i][1])
		if cv.top == 0 {
			return errors.New("seeding: SendOK carried no seq; the server has no conversation history")
		}
	}
	if cfg.Progress != nil {
		took := time.Since(start)
		fmt.Fprintf(cfg.Progress, "[history %s] seeded %d messages in %.1fs (%.0f/s), pushed %d\n",
			cfg.Server, sent.Load(), took.Seconds(), float64(sent.Load())/took.Seconds(), pushed.Load())
	}
	return ctx.Err()
}

// seedSide sends n messages from c to the user peer, at most
// seedInFlightPerConn at once (and seedInFlight over all connections). A
// send refused with RATE_LIMITED was not carried out (protocol.md,
// "Pipelining"); it is sent again after the 10 ms the default limit asks
// for. It returns the highest seq a SendOK carried.
func seedSide(ctx context.Context, cfg *Config, c *Conn, peer uint64, n, conv int, global chan struct{}, sent *atomic.Int64) (uint64, error) {
	type outcome struct {
		k       int
		seq     uint64
		limited bool
		err     error
	}
	// The callbacks run on the reader and only hand the outcome over:
	// writing (Go) stays on this goroutine. done never blocks them, since
	// no more than its capacity are in flight.
	done := make(chan outcome, seedInFlightPerConn)
	var retry []int
	var top uint64
	next, pending := 0, 0
	for next < n || len(retry) > 0 || pending > 0 {
		for pending < seedInFlightPerConn && (next < n || len(retry) > 0) && ctx.Err() == nil {
			k := next
			if len(retry) > 0 {
				k, retry = retry[0], retry[1:]
			} else {
				next++
			}
			global <- struct{}{}
			f := &chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{
				To: &chatpb.Send_UserId{UserId: peer}, Text: seedText(conv, k, cfg.TextSize)}}}
			err := c.Go(f, true, func(r *chatpb.Frame, err error) {
				// Released here, not by the loop below: a goroutine
				// waiting for a global slot must not hold ones that
				// only it would give back.
				<-global
				o := outcome{k: k, err: err}
				switch {
				case err != nil:
				case r.GetSendOk() != nil:
					o.seq = r.GetSendOk().Seq
				case r.GetError().GetCode() == chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED:
					o.limited = true
				default:
					o.err = fmt.Errorf("send answered with %v", r.Body)
				}
				done <- o
			})
			if err != nil {
				<-global
				return top, err
			}
			pending++
		}
		if pending == 0 {
			return top, ctx.Err()
		}
		o := <-done
		pending--
		switch {
		case o.err != nil:
			return top, o.err
		case o.limited:
			time.Sleep(10 * time.Millisecond)
			retry = append(retry, o.k)
		default:
			top = max(top, o.seq)
			sent.Add(1)
		}
	}
	return top, nil
}

// startProgress runs progress for the history scenario until the
// returned func is called, which also waits for its last write: the
// lines printed next (seeded, step) then start on a line of their own
// instead of after a status line not yet cleared.
func startProgress(cfg *Config, line func() string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { progress(cfg, "history", done, line) })
	return func() {
		close(done)
		wg.Wait()
	}
}

func seedText(conv, k, size int) string {
	s := fmt.Sprintf("h %d %d ", conv, k)
	if len(s) < size {
		s += strings.Repeat("x", size-len(s))
	}
	return s
}

// waitServerQuiet waits (bounded) until the server, when its PID is known,
// uses under quietCPU of a CPU: what seeding left it to do is not charged
// to the pages.
func waitServerQuiet(ctx context.Context, cfg *Config) {
	if cfg.ServerPID <= 0 {
		return
	}
	start := time.Now()
	for time.Since(start) < quietMaxWait && ctx.Err() == nil {
		_, cpu0, err := procStats(cfg.ServerPID)
		if err != nil {
			return
		}
		time.Sleep(quietWindow)
		_, cpu1, err := procStats(cfg.ServerPID)
		if err != nil || float64(cpu1-cpu0) < quietCPU*float64(quietWindow) {
			break
		}
	}
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "[history %s] server quiet after %.1fs\n", cfg.Server, time.Since(start).Seconds())
	}
}

// historyRequest is the k-th request of a conversation: sides take turns
// every two requests, and within them the latest page and one before a
// random seq, so both of the store's read paths (from the end, from a
// seek) are measured from both users.
func historyRequest(cv *conversation, k, seed int) (side int, before uint64) {
	side = (k / 2) % 2
	if k%2 == 0 {
		return side, 0
	}
	return side, randomBefore(cv.top, uint64(seed))
}

// randomBefore picks a before_seq for a full page when the conversation
// has one: in [limit+1, top], and within the last seed seqs so that a
// conversation grown by earlier runs (users reused) is read where its
// messages are still kept. A conversation of limit or fewer has no full
// page: then any seq in [2, top].
func randomBefore(top, seed uint64) uint64 {
	lo := uint64(2)
	if top > historyLimit {
		lo = historyLimit + 1
		if top >= seed && top-seed+1 > lo {
			lo = top - seed + 1
		}
	}
	if top < lo {
		return top
	}
	return lo + rand.Uint64N(top-lo+1)
}

// checkPage says what is wrong with a page of the conversation between
// users a and b whose top seq is top, read before before (0: the latest),
// or nil. Nothing is sent while pages are read, so the page is exactly
// known: limit messages (fewer only when the conversation has fewer
// below), seqs descending by one from the highest asked for, each between
// a and b, and has_more exactly when seq 1 is not on it.
func checkPage(p *chatpb.HistoryPage, a, b, top, before uint64) error {
	first := top
	if before != 0 {
		first = min(top, before-1)
	}
	want := min(uint64(historyLimit), first)
	msgs := p.GetMessages()
	if uint64(len(msgs)) != want {
		return fmt.Errorf("%d messages, want %d (top seq %d, before %d)", len(msgs), want, top, before)
	}
	for j, m := range msgs {
		if m.Seq != first-uint64(j) {
			return fmt.Errorf("message %d has seq %d, want %d (top seq %d, before %d)", j, m.Seq, first-uint64(j), top, before)
		}
		if !(m.FromUserId == a && m.ToUserId == b) && !(m.FromUserId == b && m.ToUserId == a) {
			return fmt.Errorf("seq %d is from user %d to %d, not between %d and %d", m.Seq, m.FromUserId, m.ToUserId, a, b)
		}
	}
	if more := first > want; p.GetHasMore() != more {
		return fmt.Errorf("has_more %v, want %v (lowest seq %d)", p.GetHasMore(), more, first-want+1)
	}
	return nil
}

func historyPhase(ctx context.Context, cfg *Config, convs []*conversation, rate float64) (Result, error) {
	res := Result{Server: cfg.Server, Scenario: "history", Conns: cfg.Conns, OfferedRate: rate}
	rec := newRecorder()
	var pages, errs, attempts atomic.Int64
	var firstBad atomic.Pointer[string]
	bad := func(format string, args ...any) {
		errs.Add(1)
		s := fmt.Sprintf(format, args...)
		firstBad.CompareAndSwap(nil, &s)
	}
	cpu := startCPU(cfg.cpuPIDs()...)
	stopProgress := startProgress(cfg, func() string {
		n, p99 := rec.snapshot()
		return fmt.Sprintf("offered %.0f/s pages %d p99 %.2fms errors %d", rate, n, p99, errs.Load())
	})
	took, late := openLoop(ctx, len(convs), rate, cfg.Duration, func(i, k int, due time.Time) {
		cv := convs[i]
		side, before := historyRequest(cv, k, cfg.SeedMessages)
		h := &chatpb.History{PeerUserId: cv.id[1-side], Limit: historyLimit}
		if before != 0 {
			h.BeforeSeq = &before
		}
		attempts.Add(1)
		err := cv.side[side].Go(&chatpb.Frame{Body: &chatpb.Frame_History{History: h}}, true, func(r *chatpb.Frame, err error) {
			switch {
			case err != nil:
				bad("conversation %d: %v", i, err)
			case r.GetHistoryPage() == nil:
				bad("conversation %d: History answered with %v", i, r.Body)
			default:
				if err := checkPage(r.GetHistoryPage(), cv.id[0], cv.id[1], cv.top, before); err != nil {
					bad("conversation %d: malformed page: %v", i, err)
					return
				}
				rec.record(time.Since(due))
				pages.Add(1)
			}
		})
		if err != nil {
			bad("conversation %d: %v", i, err)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && pages.Load()+errs.Load() < attempts.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	stopProgress()
	if s := firstBad.Load(); s != nil && cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "[history %s] %d errors; the first: %s\n", cfg.Server, errs.Load(), *s)
	}
	res.Sent, res.Delivered, res.Errors = attempts.Load(), pages.Load(), errs.Load()
	res.Lost = max(0, res.Sent-res.Delivered-res.Errors)
	res.Seconds = took.Seconds()
	res.MsgsPerSec = float64(res.Delivered) / took.Seconds()
	rec.fill(&res)
	late.fillLate(&res)
	cpu.fill(&res)
	return res, nil
}
