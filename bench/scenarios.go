package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Scenarios by name.
var Scenarios = map[string]func(context.Context, Config) (Result, error){
	"conns":     Conns,
	"login":     Login,
	"chat":      Chat,
	"group":     GroupChat,
	"echo":      Echo,
	"history":   History,
	"broadcast": Broadcast,
}

// Conns opens Conns connections, logs each in with a token and holds them
// idle: connect and login rates; for a server whose PID is known, RSS
// growth per connection after settling and CPU use while idle; for one
// whose admin address is known, the live memory per connection (liveBytes).
func Conns(ctx context.Context, cfg Config) (Result, error) {
	cfg.defaults()
	res := Result{Server: cfg.Server, Scenario: "conns", Conns: cfg.Conns}
	toks, _, err := tokens(ctx, &cfg, cfg.Conns)
	if err != nil {
		return res, err
	}
	var rssBefore, liveBefore int64
	if cfg.ServerPID > 0 {
		if err := waitIdle(ctx, cfg.ServerPID); err != nil {
			return res, err
		}
		rssBefore, _, _ = procStats(cfg.ServerPID)
	}
	if cfg.ServerAdmin != "" {
		if liveBefore, err = liveBytes(ctx, cfg.ServerAdmin); err != nil {
			return res, err
		}
	}
	rec := newRecorder()
	stop := make(chan struct{})
	var done atomic.Int64
	go progress(&cfg, "conns", stop, func() string { return fmt.Sprintf("logged in %d/%d", done.Load(), cfg.Conns) })
	conns, took, err := connectAll(ctx, &cfg, toks, func(_ int, d time.Duration) { rec.record(d); done.Add(1) })
	close(stop)
	if err != nil {
		return res, err
	}
	defer closeAll(conns)
	res.ConnectPerSec = float64(cfg.Conns) / took.Seconds()
	res.MsgsPerSec = res.ConnectPerSec // logins per second, connect included
	res.Delivered = int64(cfg.Conns)
	rec.fill(&res)
	res.Seconds = took.Seconds()
	if cfg.ServerPID > 0 {
		time.Sleep(cfg.Duration) // settle: the server's GC and buffers calm down
		if err := waitIdle(ctx, cfg.ServerPID); err != nil {
			return res, err
		}
		rss, cpu0, err := procStats(cfg.ServerPID)
		if err != nil {
			return res, err
		}
		res.RSSBytesPerConn = float64(rss-rssBefore) / float64(cfg.Conns)
		if cfg.ServerAdmin != "" {
			live, err := liveBytes(ctx, cfg.ServerAdmin)
			if err != nil {
				return res, err
			}
			res.LiveBytesPerConn = float64(live-liveBefore) / float64(cfg.Conns)
		}
		idle := 5 * time.Second
		time.Sleep(idle)
		_, cpu1, _ := procStats(cfg.ServerPID)
		res.IdleCPUPercent = 100 * float64(cpu1-cpu0) / float64(idle)
	}
	return res, nil
}

// waitIdle waits until the server at pid has used under idleCPU of its
// time for idleFor, or until a minute has passed, so that Conns samples its
// resident memory after the collection a loopchat server makes once idle
// for 2 s (server/gctune.go), and the setup's garbage (registrations,
// logins: some 20-40 MiB at 5,000 users) is in neither sample. With a
// fixed 1 s wait it was in the first sample and gone by the second, and
// gnet's growth per connection came out at -1.5 to -5.2 KiB (5,000
// connections, 2026-12-06); the setup's logouts alone keep a server busy
// for the 5 s presence grace.
func waitIdle(ctx context.Context, pid int) error {
	const (
		tick    = 250 * time.Millisecond
		idleFor = 3 * time.Second
		idleCPU = 0.03 // of one CPU: the once-a-second sweep is well under
	)
	deadline := time.Now().Add(time.Minute)
	var window []time.Duration // CPU time at each tick, the last idleFor of them
	for time.Now().Before(deadline) {
		_, cpu, err := procStats(pid)
		if err != nil {
			return err
		}
		window = append(window, cpu)
		if n := int(idleFor / tick); len(window) > n {
			window = window[len(window)-n-1:]
			if used := window[n] - window[0]; float64(used) < idleCPU*float64(idleFor) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(tick):
		}
	}
	return nil // never idle: sample anyway; the figure is what it is
}

// Login is a login storm: Conns connections each connect and log in with a
// token, at Rate per second (open loop) or as fast as possible with 512 at
// once; latency runs from when the login was due (at Rate) or started to
// its LoginOK, failures are counted. With Friends, every user has that
// many friends among the others, befriended first (not measured).
func Login(ctx context.Context, cfg Config) (Result, error) {
	cfg.defaults()
	res := Result{Server: cfg.Server, Scenario: "login", Conns: cfg.Conns, OfferedRate: cfg.Rate}
	toks, _, err := tokens(ctx, &cfg, cfg.Conns)
	if err != nil {
		return res, err
	}
	if cfg.Friends > 0 {
		if err := befriend(ctx, &cfg, toks); err != nil {
			return res, err
		}
	}
	rec := newRecorder()
	conns := make([]*Conn, cfg.Conns)
	defer func() { closeAll(conns) }()
	var ok, failed atomic.Int64
	stop := make(chan struct{})
	go progress(&cfg, "login", stop, func() string {
		return fmt.Sprintf("logged in %d, failed %d", ok.Load(), failed.Load())
	})
	collectBetweenPhases()
	cpu := startCPU(cfg.cpuPIDs()...)
	// A fixed pool of workers, not a goroutine per login: a fresh
	// goroutine grows its stack through the dial path every time.
	const inFlight = 512
	type job struct {
		i   int
		due time.Time
	}
	jobs := make(chan job)
	var wg sync.WaitGroup
	for range inFlight {
		wg.Go(func() {
			for j := range jobs {
				c, err := holdLogin(ctx, cfg.Transport, cfg.addr(j.i), SourceIP(cfg.SourceOffset+j.i), toks[j.i])
				if err != nil {
					failed.Add(1)
					continue
				}
				conns[j.i] = c
				rec.record(time.Since(j.due))
				ok.Add(1)
			}
		})
	}
	start := time.Now()
	for i := range toks {
		// Open loop: latency runs from when a login was due, so a
		// generator or server that falls behind cannot hide it.
		due := time.Now()
		if cfg.Rate > 0 {
			due = start.Add(time.Duration(float64(i) / cfg.Rate * float64(time.Second)))
			time.Sleep(time.Until(due))
		}
		jobs <- job{i, due}
	}
	close(jobs)
	wg.Wait()
	took := time.Since(start)
	close(stop)
	res.Delivered, res.Errors, res.Seconds = ok.Load(), failed.Load(), took.Seconds()
	res.MsgsPerSec = float64(ok.Load()) / took.Seconds()
	rec.fill(&res)
	cpu.fill(&res)
	return res, nil
}

// pair is one sender and one receiver of the chat scenario.
type pair struct {
	from, to *Conn
	toID     uint64
	mu       sync.Mutex
	phase    int     // current step; late traffic of earlier steps is ignored
	sentOK   []bool  // by message number: SendOK received
	got      []uint8 // by message number: pushes received
	settled  []bool  // by message number: its window slot given back (saturated runs)
	acks     []uint64
}

// settle gives message k's slot in the window back once the message is
// done: SendOK'd and delivered, or failed. A closed loop needs both, not
// the first: what the sender waits for bounds every kind of work the
// server has in flight. p.mu is held; win nil (open loop) does nothing.
func (p *pair) settle(win *inFlight, i, k int, failed bool) {
	if win == nil {
		return
	}
	for len(p.settled) <= k {
		p.settled = append(p.settled, false)
	}
	done := failed || (k < len(p.sentOK) && p.sentOK[k] && k < len(p.got) && p.got[k] > 0)
	if done && !p.settled[k] {
		p.settled[k] = true
		win.release(i)
	}
}

// ackDelay is how long a receiver waits before acknowledging, gathering
// what arrives meanwhile into one Ack, as a client showing messages would.
// Each receiver keeps its own clock, so acks arrive spread out like a real
// population's rather than all at once.
const ackDelay = 50 * time.Millisecond

// ack records a message to acknowledge. p.mu is held.
func (p *pair) ack(id uint64) {
	p.acks = append(p.acks, id)
	if len(p.acks) == 1 {
		time.AfterFunc(ackDelay, p.flushAcks)
	}
}

func (p *pair) flushAcks() {
	p.mu.Lock()
	ids := p.acks
	p.acks = nil
	p.mu.Unlock()
	if len(ids) > 0 {
		_ = p.to.Go(&chatpb.Frame{Body: &chatpb.Frame_Ack{Ack: &chatpb.Ack{MsgIds: ids}}}, true, nil)
	}
}

func (p *pair) mark(list *[]bool, k int) {
	for len(*list) <= k {
		*list = append(*list, false)
	}
	(*list)[k] = true
}

// messageText encodes who sent message k and when it was due; the rest is
// padding to the configured size.
func messageText(phase, sender, k int, due time.Time, size int) string {
	s := fmt.Sprintf("b %d %d %d %d ", phase, sender, k, due.UnixNano())
	if len(s) < size {
		s += strings.Repeat("x", size-len(s))
	}
	return s
}

func parseText(text string) (phase, sender, k int, due time.Time, ok bool) {
	f := strings.SplitN(text, " ", 6)
	if len(f) < 5 || f[0] != "b" {
		return 0, 0, 0, time.Time{}, false
	}
	ph, err0 := strconv.Atoi(f[1])
	s, err1 := strconv.Atoi(f[2])
	n, err2 := strconv.Atoi(f[3])
	ns, err3 := strconv.ParseInt(f[4], 10, 64)
	return ph, s, n, time.Unix(0, ns), err0 == nil && err1 == nil && err2 == nil && err3 == nil
}

// openLoop runs n senders for d at rate messages per second in all,
// staggered over one interval: sender i calls send(i, k, due) for its k-th
// message at the time it is due, whatever happened to the earlier ones (so
// a stalled server shows as latency, not as a lower offered rate). It
// returns how long sending took and how late the senders woke, each
// second (so that a slow second can be told the generator's or the
// server's).
func openLoop(ctx context.Context, n int, rate float64, d time.Duration, send func(i, k int, due time.Time)) (took time.Duration, late *recorder) {
	late = newRecorder()
	start := late.start
	end := start.Add(d)
	interval := time.Duration(float64(n) / rate * float64(time.Second))
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			due := start.Add(interval * time.Duration(i) / time.Duration(n))
			for k := 0; due.Before(end) && ctx.Err() == nil; k++ {
				time.Sleep(time.Until(due))
				late.record(time.Since(due))
				send(i, k, due)
				due = due.Add(interval)
			}
		}()
	}
	wg.Wait()
	return time.Since(start), late
}

// inFlight is the window of each sender of a closed loop: a slot taken
// per message sent, given back when the message is done.
type inFlight struct{ slots []chan struct{} }

func newInFlight(senders, window int) *inFlight {
	f := &inFlight{slots: make([]chan struct{}, senders)}
	for i := range f.slots {
		f.slots[i] = make(chan struct{}, window)
	}
	return f
}

// release gives back one of sender i's slots. It never blocks: a message
// released twice (an error reported both by a write and by the closing
// reader) frees at most what was taken, and no reader waits on it.
func (f *inFlight) release(i int) {
	select {
	case <-f.slots[i]:
	default:
	}
}

// closedLoop runs one sender per slot set of f for d: sender i calls
// send(i, k, now) for its k-th message as soon as it has a free slot, and
// the caller releases the slot when the message is done. Offered load is
// then whatever the server (or the generator) can take, and the
// generator's memory stays bounded by the window. It returns how long
// sending took.
func closedLoop(ctx context.Context, f *inFlight, d time.Duration, send func(i, k int, sent time.Time)) time.Duration {
	start := time.Now()
	stop := make(chan struct{})
	var once sync.Once
	end := func() { once.Do(func() { close(stop) }) }
	t := time.AfterFunc(d, end)
	defer t.Stop()
	defer context.AfterFunc(ctx, end)()
	var wg sync.WaitGroup
	for i, slots := range f.slots {
		wg.Go(func() {
			for k := 0; ; k++ {
				select {
				case slots <- struct{}{}:
				case <-stop:
					return
				}
				select {
				case <-stop: // both were ready: the time is up
					return
				default:
				}
				send(i, k, time.Now())
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// Chat runs Pairs sender->receiver pairs among Conns logged-in connections,
// open loop at Rate messages per second in all; latency is from when a
// message was due to when its receiver got it. With Step it raises the rate
// until p99 passes P99Bound (or anything is lost) and reports the last
// rate that held. With Saturate it runs closed loop instead (see
// Config.Saturate): latency is then from each send.
func Chat(ctx context.Context, cfg Config) (Result, error) {
	cfg.defaults()
	conns, ids, err := loggedIn(ctx, &cfg)
	if err != nil {
		return Result{}, err
	}
	defer closeAll(conns)
	pairs := make([]*pair, cfg.Pairs)
	for i := range pairs {
		p := &pair{from: conns[i], to: conns[cfg.Pairs+i], toID: ids[cfg.Pairs+i]}
		pairs[i] = p
	}
	phase := 0
	return stepped(ctx, &cfg, "chat", func(rate float64) (Result, error) {
		phase++
		return chatPhase(ctx, &cfg, pairs, rate, phase)
	})
}

// stepped runs one phase, or with cfg.Step a series of rising rates.
func stepped(ctx context.Context, cfg *Config, name string, measure func(rate float64) (Result, error)) (Result, error) {
	phase := func(rate float64) (Result, error) {
		collectBetweenPhases()
		return measure(rate)
	}
	if cfg.Saturate && cfg.Step {
		return Result{}, fmt.Errorf("%s: saturate and step are two different measurements; choose one", name)
	}
	rate := cfg.Rate
	if rate <= 0 {
		rate = 1000
	}
	if cfg.Warmup > 0 {
		measured := cfg.Duration
		cfg.Duration = cfg.Warmup
		r, err := phase(rate)
		cfg.Duration = measured
		if err != nil {
			return r, err
		}
		if cfg.Progress != nil {
			offered := fmt.Sprintf("%.0f/s", rate)
			if cfg.Saturate {
				offered = fmt.Sprintf("saturated (got %.0f/s)", r.MsgsPerSec)
			}
			fmt.Fprintf(cfg.Progress, "[%s %s] warm-up %s for %v: p99 %.2fms (not counted)\n", name, cfg.Server, offered, cfg.Warmup, r.P99ms)
		}
	}
	if !cfg.Step {
		return phase(rate)
	}
	var best Result
	failed := 0.0 // the lowest rate that did not hold
	refines := cfg.Refine
	for {
		r, err := phase(rate)
		if err != nil {
			return best, err
		}
		held := r.P99ms <= float64(cfg.P99Bound)/float64(time.Millisecond) && r.Lost == 0 && r.Errors == 0 &&
			r.MsgsPerSec >= 0.9*rate
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "[%s %s] step %.0f/s: got %.0f/s p99 %.2fms lost %d errors %d -> %v\n",
				name, cfg.Server, rate, r.MsgsPerSec, r.P99ms, r.Lost, r.Errors, map[bool]string{true: "held", false: "limit"}[held])
		}
		switch {
		case held:
			best = r
		case best.Scenario == "":
			return r, nil // even the first step failed: report it
		default:
			failed = rate
		}
		if ctx.Err() != nil {
			return best, nil
		}
		if failed == 0 { // still climbing
			if cfg.MaxRate > 0 && rate*1.5 > cfg.MaxRate {
				return best, nil
			}
			rate *= 1.5
			continue
		}
		// Narrow the gap between the best rate that held and the lowest
		// that failed, so the ×1.5 steps do not decide the answer.
		if refines <= 0 {
			return best, nil
		}
		refines--
		rate = (best.OfferedRate + failed) / 2
	}
}

func chatPhase(ctx context.Context, cfg *Config, pairs []*pair, rate float64, phase int) (Result, error) {
	res := Result{Server: cfg.Server, Scenario: "chat", Conns: cfg.Conns, OfferedRate: rate}
	var win *inFlight
	if cfg.Saturate {
		res.OfferedRate, res.Window = 0, cfg.Window
		win = newInFlight(len(pairs), cfg.Window)
	}
	rec := newRecorder()
	var delivered, dups, sentOK, errs, attempts atomic.Int64
	for i, p := range pairs {
		p.mu.Lock()
		p.sentOK, p.got, p.settled, p.phase = nil, nil, nil, phase
		p.mu.Unlock()
		p.to.OnPush(func(f *chatpb.Frame) {
			m := f.GetMessage()
			if m == nil {
				return
			}
			ph, sender, k, due, ok := parseText(m.Text)
			if !ok || sender != i {
				return
			}
			p.mu.Lock()
			if ph != p.phase {
				p.ack(m.MsgId) // late from an earlier step: just ack it
				p.mu.Unlock()
				return
			}
			for len(p.got) <= k {
				p.got = append(p.got, 0)
			}
			p.got[k]++
			first := p.got[k] == 1
			p.ack(m.MsgId)
			p.settle(win, i, k, false)
			p.mu.Unlock()
			if first {
				rec.record(time.Since(due))
				delivered.Add(1)
			} else {
				dups.Add(1)
			}
		})
	}
	cpu := startCPU(cfg.cpuPIDs()...)
	stop := make(chan struct{})
	offered := fmt.Sprintf("offered %.0f/s", rate)
	if win != nil {
		offered = "saturated"
	}
	go progress(cfg, "chat", stop, func() string {
		n, p99 := rec.snapshot()
		return fmt.Sprintf("%s sent %d delivered %d p99 %.2fms errors %d", offered, sentOK.Load(), n, p99, errs.Load())
	})
	okLatency := newQuantiles()
	failed := func(p *pair, i, k int) {
		errs.Add(1)
		if win != nil {
			p.mu.Lock()
			if p.phase == phase {
				p.settle(win, i, k, true)
			}
			p.mu.Unlock()
		}
	}
	send := func(i, k int, due time.Time) {
		p := pairs[i]
		f := &chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{
			To: &chatpb.Send_UserId{UserId: p.toID}, Text: messageText(phase, i, k, due, cfg.TextSize)}}}
		attempts.Add(1)
		err := p.from.Go(f, true, func(r *chatpb.Frame, err error) {
			if err != nil || r.GetSendOk() == nil {
				failed(p, i, k)
				return
			}
			okLatency.record(time.Since(due))
			p.mu.Lock()
			if p.phase == phase {
				sentOK.Add(1)
				p.mark(&p.sentOK, k)
				p.settle(win, i, k, false)
			}
			p.mu.Unlock()
		})
		if err != nil {
			failed(p, i, k)
		}
	}
	var sendEnd time.Duration
	var late *recorder
	var inTime int64 // saturated: delivered before sending stopped
	if win != nil {
		sendEnd = closedLoop(ctx, win, cfg.Duration, send)
		inTime = delivered.Load()
	} else {
		sendEnd, late = openLoop(ctx, len(pairs), rate, cfg.Duration, send)
	}
	// Let what is in flight arrive (bounded): every response, then every
	// message that got SendOK. Counts alone could match while different
	// messages are outstanding, so check message by message.
	missing := func() (n int64) {
		for _, p := range pairs {
			p.mu.Lock()
			for k, ok := range p.sentOK {
				if ok && (k >= len(p.got) || p.got[k] == 0) {
					n++
				}
			}
			p.mu.Unlock()
		}
		return n
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && (sentOK.Load()+errs.Load() < attempts.Load() || missing() > 0) {
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	lost := missing()
	res.Sent, res.Delivered, res.Duplicates, res.Errors, res.Lost = sentOK.Load(), delivered.Load(), dups.Load(), errs.Load(), lost
	res.Seconds = sendEnd.Seconds()
	res.MsgsPerSec = float64(res.Delivered) / sendEnd.Seconds()
	if win != nil {
		// What drains after sending stopped (up to a window per pair) is
		// not throughput; counting it would flatter a short run. CPU per
		// message still divides all the work by all the deliveries.
		res.MsgsPerSec = float64(inTime) / sendEnd.Seconds()
	}
	res.SendOKP99ms = okLatency.p99ms()
	rec.fill(&res)
	if late != nil {
		late.fillLate(&res)
	}
	cpu.fill(&res)
	return res, nil
}

// GroupChat makes Groups groups of GroupSize members; each group's first
// member sends at Rate/Groups per second; latency is until the last
// member got the message, and throughput counts every delivery.
func GroupChat(ctx context.Context, cfg Config) (Result, error) {
	cfg.defaults()
	n := cfg.Groups * cfg.GroupSize
	res := Result{Server: cfg.Server, Scenario: fmt.Sprintf("group%d", cfg.GroupSize), Conns: n, OfferedRate: cfg.Rate}
	toks, _, err := tokens(ctx, &cfg, n)
	if err != nil {
		return res, err
	}
	conns, _, err := connectAll(ctx, &cfg, toks, nil)
	if err != nil {
		return res, err
	}
	defer closeAll(conns)
	gids := make([]uint64, cfg.Groups)
	for g := range cfg.Groups {
		owner := conns[g*cfg.GroupSize]
		resp, err := owner.Call(ctx, &chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: fmt.Sprintf("bench%d", g)}}})
		if err != nil {
			return res, err
		}
		gids[g] = resp.GetGroupCreated().GetGroupId()
		for m := 1; m < cfg.GroupSize; m++ {
			if _, err := conns[g*cfg.GroupSize+m].Call(ctx, &chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gids[g]}}}); err != nil {
				return res, err
			}
		}
	}
	rate := cfg.Rate
	if rate <= 0 {
		rate = 100
	}
	rec := newRecorder()
	type tally struct {
		count int
		worst time.Duration
	}
	var mu sync.Mutex
	tallies := map[[2]int]*tally{} // (group, k) -> deliveries so far
	var deliveries, complete, sentOK, errs, attempts atomic.Int64
	for g := range cfg.Groups {
		for m := 1; m < cfg.GroupSize; m++ {
			c := conns[g*cfg.GroupSize+m]
			c.OnPush(func(f *chatpb.Frame) {
				msg := f.GetMessage()
				if msg == nil {
					return
				}
				_, sender, k, due, ok := parseText(msg.Text)
				if !ok {
					return
				}
				lat := time.Since(due)
				deliveries.Add(1)
				mu.Lock()
				t := tallies[[2]int{sender, k}]
				if t == nil {
					t = &tally{}
					tallies[[2]int{sender, k}] = t
				}
				t.count++
				t.worst = max(t.worst, lat)
				last := t.count == cfg.GroupSize-1
				if last {
					delete(tallies, [2]int{sender, k})
				}
				mu.Unlock()
				if last {
					rec.record(t.worst)
					complete.Add(1)
				}
			})
		}
	}
	collectBetweenPhases()
	cpu := startCPU(cfg.cpuPIDs()...)
	stop := make(chan struct{})
	go progress(&cfg, res.Scenario, stop, func() string {
		return fmt.Sprintf("sent %d deliveries %d complete %d", sentOK.Load(), deliveries.Load(), complete.Load())
	})
	took, late := openLoop(ctx, cfg.Groups, rate, cfg.Duration, func(g, k int, due time.Time) {
		f := &chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{
			To: &chatpb.Send_GroupId{GroupId: gids[g]}, Text: messageText(0, g, k, due, cfg.TextSize)}}}
		attempts.Add(1)
		if err := conns[g*cfg.GroupSize].Go(f, true, func(r *chatpb.Frame, err error) {
			if err != nil || r.GetSendOk() == nil {
				errs.Add(1)
				return
			}
			sentOK.Add(1)
		}); err != nil {
			errs.Add(1)
		}
	})
	want := func() int64 { return sentOK.Load() * int64(cfg.GroupSize-1) }
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && (sentOK.Load()+errs.Load() < attempts.Load() || deliveries.Load() < want()) {
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	res.Sent, res.Delivered, res.Errors = sentOK.Load(), deliveries.Load(), errs.Load()
	res.Lost = max(0, want()-deliveries.Load())
	res.Seconds = took.Seconds()
	res.MsgsPerSec = float64(res.Delivered) / took.Seconds()
	rec.fill(&res)
	late.fillLate(&res)
	cpu.fill(&res)
	return res, nil
}

// Echo loads an echo server (same framing) the way Chat loads a chat
// server: Conns connections, Pairs of them sending at Rate in all (or
// closed loop with Saturate), with frames the size of a chat message;
// latency is the round trip.
func Echo(ctx context.Context, cfg Config) (Result, error) {
	cfg.defaults()
	if cfg.Transport != TransportTCP {
		return Result{}, fmt.Errorf("echo: the echo server speaks %s only", TransportTCP)
	}
	conns := make([]*Conn, cfg.Conns)
	defer func() { closeAll(conns) }()
	for i := range conns {
		c, err := Dial(ctx, cfg.Transport, cfg.addr(i), SourceIP(cfg.SourceOffset+i))
		if err != nil {
			return Result{}, err
		}
		conns[i] = c
	}
	return stepped(ctx, &cfg, "echo", func(rate float64) (Result, error) {
		res := Result{Server: cfg.Server, Scenario: "echo", Conns: cfg.Conns, OfferedRate: rate}
		offered := fmt.Sprintf("offered %.0f/s", rate)
		var win *inFlight
		if cfg.Saturate {
			res.OfferedRate, res.Window, offered = 0, cfg.Window, "saturated"
			win = newInFlight(cfg.Pairs, cfg.Window)
		}
		release := func(i int) {
			if win != nil {
				win.release(i)
			}
		}
		rec := newRecorder()
		var sent, got, errs atomic.Int64
		cpu := startCPU(cfg.cpuPIDs()...)
		stop := make(chan struct{})
		go progress(&cfg, "echo", stop, func() string {
			n, p99 := rec.snapshot()
			return fmt.Sprintf("%s echoed %d p99 %.2fms", offered, n, p99)
		})
		send := func(i, k int, due time.Time) {
			f := &chatpb.Frame{Body: &chatpb.Frame_Send{Send: &chatpb.Send{
				To: &chatpb.Send_UserId{UserId: 1}, Text: messageText(0, i, k, due, cfg.TextSize)}}}
			sent.Add(1)
			if err := conns[i].Go(f, true, func(_ *chatpb.Frame, err error) {
				defer release(i)
				if err != nil {
					errs.Add(1)
					return
				}
				rec.record(time.Since(due))
				got.Add(1)
			}); err != nil {
				errs.Add(1)
				release(i)
			}
		}
		var took time.Duration
		var late *recorder
		var inTime int64 // saturated: echoed before sending stopped
		if win != nil {
			took = closedLoop(ctx, win, cfg.Duration, send)
			inTime = got.Load()
		} else {
			took, late = openLoop(ctx, cfg.Pairs, rate, cfg.Duration, send)
		}
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) && got.Load()+errs.Load() < sent.Load() {
			time.Sleep(10 * time.Millisecond)
		}
		close(stop)
		res.Sent, res.Delivered, res.Errors = sent.Load(), got.Load(), errs.Load()
		res.Lost = res.Sent - res.Delivered - res.Errors
		res.Seconds = took.Seconds()
		res.MsgsPerSec = float64(res.Delivered) / took.Seconds()
		if win != nil {
			res.MsgsPerSec = float64(inTime) / took.Seconds() // as chat: not what drained after
		}
		rec.fill(&res)
		if late != nil {
			late.fillLate(&res)
		}
		cpu.fill(&res)
		return res, nil
	})
}

// loggedIn makes cfg.Conns users and connects each, logged in with its
// token: the setup the pair scenarios share. ids[i] is conns[i]'s user.
func loggedIn(ctx context.Context, cfg *Config) (conns []*Conn, ids []uint64, err error) {
	toks, ids, err := tokens(ctx, cfg, cfg.Conns)
	if err != nil {
		return nil, nil, err
	}
	conns, _, err = connectAll(ctx, cfg, toks, nil)
	return conns, ids, err
}
