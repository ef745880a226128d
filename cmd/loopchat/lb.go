package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/loopchat/loopchat/internal/admin"
	"github.com/loopchat/loopchat/loadbalance"
	"github.com/loopchat/loopchat/server"
)

func newLBCmd() *cobra.Command {
	var (
		o                   loadbalance.Options
		redisURL            string
		adminAddr           string
		logLevel, logFormat string
	)
	cmd := &cobra.Command{
		Use:   "lb",
		Short: "Active health checks for an nginx stream load balancer",
		Long: `Keep nginx's upstream equal to the healthy loopchat nodes.

Discovers nodes from the cluster registry (--redis) and/or --nodes, probes
each with a protocol Ping every --probe-interval (down after --fall misses,
up after --rise answers), leaves draining nodes out, and rewrites
--upstream-file (and --ws-upstream-file, the nodes' WebSocket addresses for
the http {} block) atomically, then runs nginx -t and reloads nginx, only
when the set changed. See docs/load-balancing.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(os.Stderr, logLevel, logFormat)
			if err != nil {
				return err
			}
			o.Logger = log
			routeRedisLogs(log)
			if redisURL != "" {
				rdb, _, err := server.NewRedisClient(redisURL)
				if err != nil {
					return fmt.Errorf("--redis: %w", err)
				}
				o.Redis = rdb
				defer o.Redis.Close()
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			o.Registerer = reg
			b, err := loadbalance.New(o)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if adminAddr != "" {
				a, err := admin.Start(adminAddr, admin.Mux(reg, b.Ready, map[string]http.Handler{
					"GET /debug/nodes": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
						w.Header().Set("Content-Type", "application/json")
						_ = json.NewEncoder(w).Encode(b.States())
					}),
				}), log)
				if err != nil {
					return err
				}
				defer a.Close(context.Background())
				log.Info("admin endpoints", "addr", a.Addr().String())
			}
			return b.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&redisURL, "redis", "", "Redis URL of the cluster registry to discover nodes from (redis://host:port/db, or redis-cluster://host:port,... for a Redis Cluster)")
	f.StringVar(&o.Prefix, "redis-prefix", "loopchat:", "prefix of the registry keys")
	f.StringSliceVar(&o.Nodes, "nodes", nil, "node addresses to balance besides (or instead of) the registry's")
	f.DurationVar(&o.Interval, "probe-interval", time.Second, "time between probe rounds")
	f.DurationVar(&o.Timeout, "probe-timeout", 0, "how long a probe may take; 0 means half the interval")
	f.IntVar(&o.Fall, "fall", 3, "missed probes in a row that take a node out")
	f.IntVar(&o.Rise, "rise", 2, "answered probes in a row that put a node back")
	f.StringVar(&o.UpstreamFile, "upstream-file", "", "the nginx include to render (server lines for the upstream block)")
	f.StringVar(&o.WSUpstreamFile, "ws-upstream-file", "", "a second include to render, for nginx's http {} block: the WebSocket address of each node in service that has one (registry ws_addr); empty means none")
	f.StringVar(&o.ServerParams, "server-params", "max_fails=1 fail_timeout=5s", "nginx parameters after each server address")
	f.StringVar(&o.NginxConf, "nginx-conf", "", "nginx's main configuration, for nginx -t and reload; empty means only render the file")
	f.StringVar(&o.NginxBin, "nginx-bin", "nginx", "the nginx executable")
	f.StringVar(&adminAddr, "admin-addr", "", "serve /metrics, /healthz, /readyz, /debug/nodes and /debug/pprof/ here; empty means off")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	return cmd
}
