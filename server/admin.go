package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// AdminMux is the operator's HTTP interface, shared by `serve` and `lb`:
// /metrics (Prometheus), /healthz (the process is up), /readyz (ready
// reports nil: 200, otherwise 503 with the reason) and /debug/pprof/.
func AdminMux(reg *prometheus.Registry, ready func(context.Context) error) *http.ServeMux {
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
	return mux
}

// AdminServer runs an AdminMux on its own listener.
type AdminServer struct {
	srv *http.Server
	ln  net.Listener
}

// StartAdmin listens on addr and serves mux in the background.
func StartAdmin(addr string, mux http.Handler) (*AdminServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	a := &AdminServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln}
	go func() { _ = a.srv.Serve(ln) }()
	return a, nil
}

// Addr is where the admin server listens.
func (a *AdminServer) Addr() net.Addr { return a.ln.Addr() }

// Close stops the admin server.
func (a *AdminServer) Close(ctx context.Context) error { return a.srv.Shutdown(ctx) }

// Errors /readyz reports.
var (
	// ErrNotStarted: the engine is not accepting connections yet.
	ErrNotStarted = errors.New("not accepting connections yet")
	// ErrDraining: the node is shutting down and takes no new clients.
	ErrDraining = errors.New("draining")
)

// Ready reports whether the node should get new clients: it accepts
// connections, is not draining, and its store (and Redis) answer.
func (s *Server) Ready(ctx context.Context) error {
	if s.addr == nil {
		return ErrNotStarted
	}
	if s.closing.Load() {
		return ErrDraining
	}
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// AdminAddr is where the admin HTTP server listens, or nil when off.
func (s *Server) AdminAddr() net.Addr {
	if s.admin == nil {
		return nil
	}
	return s.admin.Addr()
}
