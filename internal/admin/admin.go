// Package admin is the operator's HTTP interface shared by `loopchat serve`
// and `loopchat lb`: /metrics (Prometheus), /healthz (the process is up),
// /readyz (ready or 503 with the reason), /debug/pprof/, plus any extra
// debug views the caller adds.
package admin

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Mux builds the admin routes. ready returns nil when the process should
// get traffic; extra maps more paths (e.g. "GET /debug/conns") to handlers.
func Mux(reg *prometheus.Registry, ready func(context.Context) error, extra map[string]http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	for path, h := range extra {
		mux.Handle(path, h)
	}
	return mux
}

// Server runs a Mux on its own listener.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Start listens on addr and serves h in the background. What net/http
// itself reports (a panicking handler, accept errors) goes to log at warn,
// not to the standard logger, so a JSON log stays JSON.
func Start(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	a := &Server{srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.With("component", "admin-http").Handler(), slog.LevelWarn)}, ln: ln}
	go func() { _ = a.srv.Serve(ln) }()
	return a, nil
}

// Addr is where the admin server listens.
func (a *Server) Addr() net.Addr { return a.ln.Addr() }

// Close stops the admin server.
func (a *Server) Close(ctx context.Context) error { return a.srv.Shutdown(ctx) }
