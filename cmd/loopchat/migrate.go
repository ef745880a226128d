package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/loopchat/loopchat/protocol"
	"github.com/loopchat/loopchat/server"
)

func newMigrateCmd() *cobra.Command {
	var (
		from, to             string
		fromPrefix, toPrefix string
		cfg                  server.MigrateConfig
		logLevel, logFormat  string
	)
	cmd := &cobra.Command{
		Use:   "redis-migrate",
		Short: "Move a one-Redis keyspace onto a Redis Cluster (every node stopped)",
		Long: `Copy everything loopchat keeps in one Redis (--from) into a Redis Cluster
(--to redis-cluster://h:p,...) in the cluster's key layout: accounts, friends,
groups, inboxes with their messages, conversations and history, devices, read
state, presence, bans, sessions, and the store epoch, so tokens issued before
stay valid. Every node must be stopped: it refuses while the source shows live
nodes, and a cluster that holds other loopchat data, unless --force. A run cut
off is completed by running it again; a run after a finished one writes
nothing. It ends with a check of the key counts per kind on both sides. See
docs/operations.md, "Moving from one Redis to Redis Cluster".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(cmd.ErrOrStderr(), logLevel, logFormat)
			if err != nil {
				return err
			}
			routeRedisLogs(log)
			if strings.HasPrefix(from, "redis-cluster://") {
				return errors.New("--from is the one Redis the nodes ran on, not a cluster")
			}
			if !strings.HasPrefix(to, "redis-cluster://") {
				return errors.New("--to must name the cluster: redis-cluster://host:port[,host:port...]")
			}
			src, _, err := server.NewRedisToolClient(from)
			if err != nil {
				return fmt.Errorf("--from: %w", err)
			}
			defer src.Close()
			dst, _, err := server.NewRedisToolClient(to)
			if err != nil {
				return fmt.Errorf("--to: %w", err)
			}
			defer dst.Close()
			if !cmd.Flags().Changed("to-prefix") {
				toPrefix = fromPrefix
			}
			cfg.From, cfg.To, cfg.FromPrefix, cfg.ToPrefix, cfg.Log = src, dst.(*redis.ClusterClient), fromPrefix, toPrefix, log
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := server.MigrateToCluster(ctx, cfg)
			if rep != nil {
				printMigrateReport(cmd.OutOrStdout(), rep)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "the one Redis to copy from: redis://host:port/db (required)")
	f.StringVar(&to, "to", "", "the Redis Cluster to copy to: redis-cluster://host:port,host:port,... (required)")
	f.StringVar(&fromPrefix, "from-prefix", protocol.DefaultPrefix, "key prefix on the one Redis (the nodes' --redis-prefix)")
	f.StringVar(&toPrefix, "to-prefix", protocol.DefaultPrefix, "key prefix on the cluster (default: --from-prefix)")
	f.BoolVar(&cfg.DryRun, "dry-run", false, "check both sides and count the source's keys; write nothing")
	f.BoolVar(&cfg.Force, "force", false, "copy although nodes look live or the cluster holds other data (keys of the same names are overwritten)")
	f.IntVar(&cfg.Batch, "batch", 500, "keys per SCAN step")
	f.DurationVar(&cfg.LiveWindow, "live-window", 10*time.Second, "a presence heartbeat younger than this means a node is still running")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	// Variables of their own: a stray $LOOPCHAT_FORCE or $LOOPCHAT_FROM
	// meant for something else must not steer a migration.
	for _, name := range []string{"from", "to", "from-prefix", "to-prefix", "dry-run", "force", "batch", "live-window"} {
		_ = f.SetAnnotation(name, envAnnotation, []string{"LOOPCHAT_MIGRATE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))})
	}
	_ = cmd.MarkFlagRequired("from")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

// printMigrateReport writes the counts per kind and what the run did.
func printMigrateReport(w io.Writer, rep *server.MigrateReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "kind\tone Redis\tcopied\tdropped\tcluster\tcheck\t")
	for _, k := range rep.Kinds {
		check := "-"
		switch {
		case k.Want >= 0 && k.Target == k.Want:
			check = "ok"
		case k.Want >= 0:
			check = fmt.Sprintf("want %d", k.Want)
		case k.Kind == "messages":
			check = "as bodies"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t\n", k.Kind, k.Source, k.Copied, k.Dropped, k.Target, check)
	}
	_ = tw.Flush()
	for _, l := range rep.LiveNodes {
		fmt.Fprintf(w, "still running on the source: %s\n", l)
	}
	for _, u := range rep.Unknown {
		fmt.Fprintf(w, "not copied (no loopchat key): %s\n", u)
	}
	switch {
	case rep.DryRun:
		fmt.Fprintf(w, "dry run: store epoch %s; nothing written\n", rep.Epoch)
	case rep.AlreadyDone:
		fmt.Fprintf(w, "the cluster was migrated from this store (epoch %s) already; nothing written\n", rep.Epoch)
	case len(rep.Mismatches) == 0:
		how := "migrated"
		if rep.Resumed {
			how = "migrated (completing an earlier run)"
		}
		fmt.Fprintf(w, "%s: store epoch %s kept; the counts match\n", how, rep.Epoch)
	}
}
