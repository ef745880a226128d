package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/loopchat/loopchat/bench"
)

// generatorHeapLimit is where the load generator collects if a phase runs
// long: at about 2 KiB of garbage per chat message it is some 500,000
// messages, and the live heap at 19,000 connections is under 200 MiB.
const generatorHeapLimit = 1 << 30

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load-generate against loopchat servers, compare engines, report",
		Long: `C10K load generation. Scenarios run against any address (a node, several, or nginx):

  conns   open N connections, log each in with a token, hold them idle
  login   a login storm at --rate per second, or as fast as possible
  chat    --pairs sender->receiver pairs among N connections, open loop at --rate
          (or --step to find the highest rate with p99 under --p99-bound, or
          --saturate: closed loop, --window messages in flight per sender, as
          many delivered per second as the server takes)
  group   groups of --group-size; latency until the last member has it
  history --pairs 1:1 conversations, each seeded with --seed-messages (not
          measured), then 50-message History pages open loop at --rate
          (latest and before a random seq, each page checked); pages/s in
          the msgs/s column, latency and CPU per page (or --step)
  broadcast
          N connections across --addr (a cluster's nodes), a broadcast
          published to the cluster's Redis (--redis) --rate times a second
          (1 by default); time until 99% and 100% of them had each, and
          CPU per delivery
  echo    the same framing against 'loopchat bench echo-server' (--step, --saturate too)

Every scenario but echo can speak WebSocket instead of TCP (--transport ws,
--addr at the servers' --ws-listen): an upgrade offering loopchat.v1, then
one masked binary message per frame.

'loopchat bench compare' starts the servers itself (gnet, net, echo), pinned
apart from the generator, --repeat rounds interleaved (a fresh server per
run), from one loopchat binary or several (--binary NAME=PATH, for A/B), and
prints each server's medians and ranges and the ratios of the medians;
--transport tcp,ws measures each loopchat server over both in the same run.
The headline measurement (docs/BENCHMARKS.md, "How to measure"):

  loopchat bench compare --scenario chat --conns 10000 --saturate --duration 10s --repeat 3`,
	}
	// The generator's own profile: on one box it competes with the server
	// for CPU, and this is how to see what it spends it on.
	var cpuProfile, traceFile string
	var profile, traced *os.File
	cmd.PersistentFlags().StringVar(&cpuProfile, "cpuprofile", "", "write the load generator's CPU profile (pprof) to this file")
	cmd.PersistentFlags().StringVar(&traceFile, "trace", "", "write the load generator's execution trace (go tool trace) to this file")
	cmd.PersistentPreRunE = func(run *cobra.Command, _ []string) error {
		// The generator is short-lived, and on one box its CPU is the
		// server's: a collection scanning ~19,000 goroutine stacks on its
		// one CPU stalls every reader for tens of milliseconds, which
		// would be charged to the server as latency. So it collects only
		// between measured phases (bench.collectBetweenPhases) or past
		// a heap limit. The echo server, a server under test, keeps Go's
		// defaults, as does anyone who sets GOGC or GOMEMLIMIT.
		if run.Name() != "echo-server" && os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == "" {
			debug.SetGCPercent(-1)
			debug.SetMemoryLimit(generatorHeapLimit)
		}
		if traceFile != "" {
			f, err := os.Create(traceFile)
			if err != nil {
				return err
			}
			traced = f
			if err := trace.Start(f); err != nil {
				return err
			}
		}
		if cpuProfile == "" {
			return nil
		}
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		profile = f
		return pprof.StartCPUProfile(f)
	}
	cmd.PersistentPostRunE = func(*cobra.Command, []string) error {
		var errs []error
		if traced != nil {
			trace.Stop()
			errs = append(errs, traced.Close())
		}
		if profile != nil {
			pprof.StopCPUProfile()
			errs = append(errs, profile.Close())
		}
		return errors.Join(errs...)
	}
	for _, name := range []string{"conns", "login", "chat", "group", "history", "broadcast", "echo"} {
		cmd.AddCommand(newScenarioCmd(name))
	}
	cmd.AddCommand(newCompareCmd(), newEchoServerCmd())
	return cmd
}

// scenarioFlags are shared by the scenarios and compare.
func scenarioFlags(f *pflag.FlagSet, c *bench.Config) {
	f.IntVar(&c.Conns, "conns", 100, "connections")
	f.IntVar(&c.Pairs, "pairs", 0, "sender->receiver pairs (chat, echo) or 1:1 conversations (history); 0 means conns/2")
	f.DurationVar(&c.Warmup, "warmup", time.Second, "chat/echo/history: run the first rate this long, unmeasured, before measuring (0 for none)")
	f.Float64Var(&c.Rate, "rate", 0, "offered rate per second in all (messages, logins or History pages); 0 means the scenario's default")
	f.BoolVar(&c.Step, "step", false, "chat/echo/history: raise the rate ×1.5 per step until p99 passes --p99-bound; report the last that held")
	f.BoolVar(&c.Saturate, "saturate", false, "chat/echo: closed loop, --window messages in flight per sender: delivered/s is what the server takes (--rate is ignored, latency decides nothing)")
	f.IntVar(&c.Window, "window", 1, "messages each sender keeps in flight with --saturate")
	f.DurationVar(&c.P99Bound, "p99-bound", 10*time.Millisecond, "latency bound for --step")
	f.Float64Var(&c.MaxRate, "max-rate", 0, "stop --step at this rate; 0 means no limit")
	f.IntVar(&c.Refine, "refine", 2, "after --step finds a rate that fails, halve the gap to the last that held this many times")
	f.DurationVar(&c.Duration, "duration", 5*time.Second, "length of a measurement (of each step)")
	f.IntVar(&c.GroupSize, "group-size", 10, "members per group (group)")
	f.IntVar(&c.Groups, "groups", 0, "number of groups (group); 0 means conns/group-size")
	f.IntVar(&c.TextSize, "text-size", 64, "message size in bytes")
	f.IntVar(&c.Friends, "friends", 0, "login: befriend each user with this many others before the storm (not measured)")
	f.IntVar(&c.SeedMessages, "seed-messages", 60, "history: messages sent into each conversation before pages are read (not measured)")
	f.StringVar(&c.Users, "users", "", "user name prefix; empty means a fresh one per run")
	f.StringVar(&c.Redis, "redis", "", "broadcast: the cluster's Redis URL, where the broadcasts are published")
	f.StringVar(&c.RedisPrefix, "redis-prefix", "loopchat:", "broadcast: the cluster's --redis-prefix")
}

type outputFlags struct {
	json bool
	plot string
}

func (o *outputFlags) add(f *pflag.FlagSet) {
	f.BoolVar(&o.json, "json", false, "print the results as JSON on stdout")
	f.StringVar(&o.plot, "plot", "", "draw throughput and latency over time into this .png or .svg file")
}

// emit writes v as JSON with --json, else human (which writes a table),
// and the plot of results with --plot.
func (o *outputFlags) emit(w io.Writer, v any, results []bench.Result, human func(io.Writer)) error {
	if o.plot != "" {
		if err := bench.Plot(o.plot, results); err != nil {
			return err
		}
	}
	if o.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	human(w)
	return nil
}

// checkSaturate refuses --saturate where it has no meaning, before any
// setup runs.
func checkSaturate(scenario string, c *bench.Config) error {
	if !c.Saturate {
		return nil
	}
	if c.Step {
		return errors.New("--saturate and --step are two measurements: run them apart")
	}
	if scenario != "chat" && scenario != "echo" {
		return fmt.Errorf("--saturate is for chat and echo, not %s", scenario)
	}
	return nil
}

func freshUsers() string { return fmt.Sprintf("b%06x", time.Now().UnixNano()&0xffffff) }

func newScenarioCmd(name string) *cobra.Command {
	var (
		c      bench.Config
		addrs  []string
		out    outputFlags
		procs  int
		worker bool
	)
	cmd := &cobra.Command{
		Use:   name,
		Short: "Run the " + name + " scenario",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkSaturate(name, &c); err != nil {
				return err
			}
			if err := bench.CheckTransport(c.Transport); err != nil {
				return err
			}
			c.Addrs = addrs
			if c.Users == "" {
				c.Users = freshUsers()
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if !worker {
				c.Progress = os.Stderr
			}
			var res bench.Result
			var err error
			if procs > 1 && name == "broadcast" {
				return errors.New("broadcast runs in one generator process (each would publish its own broadcasts)")
			}
			if procs > 1 {
				res, err = runProcs(ctx, name, c, procs)
			} else {
				res, err = bench.Scenarios[name](ctx, c)
			}
			if err != nil {
				return err
			}
			res.Transport = c.Transport
			if worker {
				return json.NewEncoder(os.Stdout).Encode(exported(res))
			}
			return out.emit(os.Stdout, res, []bench.Result{res}, func(w io.Writer) { bench.WriteTable(w, []bench.Result{res}) })
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&addrs, "addr", []string{"127.0.0.1:7000"}, "server addresses (comma-separated or repeated), used round-robin; with --transport ws, their --ws-listen addresses")
	f.StringVar(&c.Transport, "transport", bench.TransportTCP, "what the connections speak: tcp (length-prefixed frames) or ws (WebSocket, one masked binary message per frame)")
	scenarioFlags(f, &c)
	f.IntVar(&c.ServerPID, "server-pid", 0, "PID of the server, to sample its RSS (conns) and CPU (every scenario)")
	f.IntSliceVar(&c.CPUPIDs, "cpu-pid", nil, "more PIDs whose CPU counts as the server's (repeated or comma-separated): a cluster's other nodes and Redis servers")
	f.StringVar(&c.ServerAdmin, "server-admin", "", "the server's --admin-addr, for conns to report the live memory per connection (Go heap objects and stacks live after a collection)")
	f.IntVar(&procs, "procs", 1, "generator processes (each may hold ~19,000 connections); their results are merged")
	f.IntVar(&c.SourceOffset, "source-offset", 0, "first source address index (set for each --procs child)")
	f.BoolVar(&worker, "worker", false, "internal: run as a --procs child")
	_ = f.MarkHidden("worker")
	_ = f.MarkHidden("source-offset")
	out.add(f)
	return cmd
}

func exported(r bench.Result) bench.Result {
	r.ExportHist()
	return r
}

// runProcs splits the connections over k child processes of this binary,
// with disjoint users and source addresses, and merges their results.
func runProcs(ctx context.Context, name string, c bench.Config, k int) (bench.Result, error) {
	self, err := os.Executable()
	if err != nil {
		return bench.Result{}, err
	}
	parts := make([]bench.Result, k)
	errs := make([]error, k)
	var wg sync.WaitGroup
	for i := range k {
		n := c.Conns / k
		if i == k-1 {
			n = c.Conns - n*(k-1)
		}
		args := []string{"bench", name, "--worker", "--addr", strings.Join(c.Addrs, ","),
			"--conns", strconv.Itoa(n), "--pairs", strconv.Itoa(c.Pairs / k), "--rate", fmt.Sprint(c.Rate / float64(k)),
			"--duration", c.Duration.String(), "--group-size", strconv.Itoa(c.GroupSize), "--groups", strconv.Itoa(c.Groups / k),
			"--text-size", strconv.Itoa(c.TextSize), "--seed-messages", strconv.Itoa(c.SeedMessages),
			"--friends", strconv.Itoa(c.Friends),
			"--saturate=" + strconv.FormatBool(c.Saturate), "--window", strconv.Itoa(c.Window), "--transport", c.Transport,
			"--users", fmt.Sprintf("%sp%dx", c.Users, i),
			"--source-offset", strconv.Itoa(c.SourceOffset + i*(c.Conns/k))}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.CommandContext(ctx, self, args...)
			cmd.Stderr = os.Stderr
			outb, err := cmd.Output()
			if err != nil {
				errs[i] = fmt.Errorf("generator %d: %w", i, err)
				return
			}
			errs[i] = json.Unmarshal(outb, &parts[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return bench.Result{}, err
	}
	return bench.Merge(parts), nil
}

func newCompareCmd() *cobra.Command {
	var (
		cc       bench.CompareConfig
		servers  []string
		binaries []string
		genCPUs  string
		out      outputFlags
	)
	cmd := &cobra.Command{
		Use:   "compare",
		Short: "Start gnet, net and echo servers and run the same scenario against each",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			if cc.Builds, err = bench.ParseBuilds(binaries); err != nil {
				return err
			}
			cc.Binary, cc.Servers, cc.Progress = self, servers, os.Stderr
			// Refuse a bad command line here, before pinning re-runs it.
			if err := cc.Validate(); err != nil {
				return err
			}
			if genCPUs != "" && os.Getenv("LOOPCHAT_BENCH_PINNED") == "" {
				if tp, err := exec.LookPath("taskset"); err == nil {
					// Re-run this command pinned, so generator and servers do
					// not share a CPU.
					c := exec.Command(tp, append([]string{"-c", genCPUs, self}, os.Args[1:]...)...)
					c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
					c.Env = append(os.Environ(), "LOOPCHAT_BENCH_PINNED=1")
					return c.Run()
				}
			}
			if cc.Users == "" {
				cc.Users = freshUsers()
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cmp, err := bench.Compare(ctx, cc)
			if err != nil {
				return err
			}
			// Each run's own line went to stderr as it ended; the JSON has
			// everything.
			return out.emit(os.Stdout, cmp, cmp.Results, func(w io.Writer) {
				bench.WriteSummary(w, cmp.Summary)
				if len(cmp.Ratios) > 0 {
					fmt.Fprintln(w)
					bench.WriteRatios(w, cmp.Ratios)
				}
			})
		},
	}
	f := cmd.Flags()
	scenarioFlags(f, &cc.Config)
	f.StringVar(&cc.Scenario, "scenario", "chat", "scenario: chat, conns, login, group or history")
	f.StringSliceVar(&servers, "servers", []string{"gnet", "net", "echo"}, "servers to compare")
	f.StringSliceVar(&cc.Transports, "transport", []string{bench.TransportTCP}, "transports to measure each loopchat server over, in turn: tcp, ws (WebSocket: the server also gets --ws-listen); the echo server is TCP only")
	f.IntVar(&cc.Repeat, "repeat", 1, "rounds, each running every server once in turn (3 for figures to keep: medians and ranges)")
	f.StringSliceVar(&binaries, "binary", nil, "loopchat binaries to compare as NAME=PATH (repeated or comma-separated), each server from each in turn; default this one")
	f.IntVar(&cc.Loops, "loops", 1, "event loops of the gnet servers")
	f.StringVar(&cc.ServerCPUs, "server-cpus", "0", "taskset CPU list for the servers; empty means no pinning")
	f.StringVar(&genCPUs, "gen-cpus", "1", "taskset CPU list for the load generator; empty means no pinning")
	out.add(f)
	return cmd
}

func newEchoServerCmd() *cobra.Command {
	var (
		listen string
		loops  int
	)
	cmd := &cobra.Command{
		Use:   "echo-server",
		Short: "A bare gnet echo server with loopchat's framing (the bench's upper bound)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := bench.StartEchoServer(listen, loops)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return s.Stop(sctx)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:7100", "address")
	cmd.Flags().IntVar(&loops, "loops", 1, "event loops")
	return cmd
}
