package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/loopchat/loopchat/internal/logsample"
)

// errSilent marks an error already reported to the user.
var errSilent = errors.New("")

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "loopchat",
		Short:         "A reactor chat server for native TCP clients",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyEnv(cmd.Flags())
		},
	}
	root.AddCommand(newServeCmd(), newClientCmd(), newLBCmd(), newBenchCmd(), newAPICmd(), newMigrateCmd(), newVersionCmd())
	for _, c := range root.Commands() {
		describeEnv(c.Flags())
		describeEnv(c.PersistentFlags())
	}
	return root
}

func execute(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		if !errors.Is(err, errSilent) {
			fmt.Fprintln(os.Stderr, "loopchat:", err)
		}
		return 1
	}
	return 0
}

// envName is the environment variable that can set a flag:
// --idle-timeout reads LOOPCHAT_IDLE_TIMEOUT.
func envName(flag string) string {
	return "LOOPCHAT_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// envAnnotation, on a flag, names the variable that sets it instead of
// envName's: the api command's --key and --addr read $LOOPCHAT_API_KEY and
// $LOOPCHAT_API_ADDR, which client's --addr does not.
const envAnnotation = "loopchat-env"

// flagEnv is the environment variable that can set f.
func flagEnv(f *pflag.Flag) string {
	if v := f.Annotations[envAnnotation]; len(v) == 1 {
		return v[0]
	}
	return envName(f.Name)
}

// describeEnv appends each flag's variable to its help text.
func describeEnv(fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" {
			f.Usage += " [$" + flagEnv(f) + "]"
		}
	})
}

// applyEnv sets every flag not given on the command line from its
// environment variable, if set: flags win over the environment.
func applyEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || err != nil || f.Name == "help" {
			return
		}
		if v, ok := os.LookupEnv(flagEnv(f)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("$%s: %w", flagEnv(f), e)
			}
		}
	})
	return err
}

// routeRedisLogs sends go-redis's own messages through log instead of its
// default stderr logger, so that --log-format json stays one JSON object
// per line. They go at debug level: each is a failed dial or a pub/sub
// reconnect that loopchat already reports once, with context, at warn
// (and counts in its metrics), while go-redis repeats it for every dial —
// hundreds of lines a second under load while Redis is down. go-redis has
// one logger per process, so this is set once, by the command.
func routeRedisLogs(log *slog.Logger) {
	redis.SetLogger(redisLogs{log.With("component", "go-redis")})
}

type redisLogs struct{ log *slog.Logger }

func (r redisLogs) Printf(ctx context.Context, format string, v ...any) {
	r.log.DebugContext(ctx, strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
}

// logLinesPerSecond is how many lines with the same message (below Error)
// a process writes in a second; the rest are counted in the next one's
// suppressed=N.
const logLinesPerSecond = 10

// newLogger builds the process logger from --log-level and --log-format.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler
	switch format {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format must be text or json, not %q", format)
	}
	// An outage makes every refused request log the same warning; keep
	// ten of each a second and count the rest.
	return slog.New(logsample.New(h, logLinesPerSecond)), nil
}
