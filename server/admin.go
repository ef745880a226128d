package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/loopchat/loopchat/internal/admin"
)

// Errors /readyz reports.
var (
	// ErrNotStarted: the engine is not accepting connections yet.
	ErrNotStarted = errors.New("not accepting connections yet")
	// ErrDraining: the node is shutting down and takes no new clients.
	ErrDraining = errors.New("draining")
	// ErrFull: the node holds --max-conns connections and refuses more.
	ErrFull = errors.New("at its connection limit")
)

// Ready reports whether the node should get new clients: it accepts
// connections, is not draining, its store (and Redis) answer, and it is
// not waiting out a store reset (epoch.go).
func (s *Server) Ready(ctx context.Context) error {
	if s.addr == nil {
		return ErrNotStarted
	}
	if s.closing.Load() {
		return ErrDraining
	}
	if s.slots.Load() >= int64(s.opts.MaxConns) {
		return ErrFull
	}
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if s.storeResetting() {
		return ErrStoreResetting
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

func (s *Server) adminMux() http.Handler {
	return admin.Mux(s.metrics.registry, s.Ready, map[string]http.Handler{
		"GET /debug/conns": http.HandlerFunc(s.serveConns),
	})
}

// ConnInfo is one connection in the /debug/conns view.
type ConnInfo struct {
	Conn     uint64 `json:"conn"`
	Remote   string `json:"remote"`         // the client, as told by a PROXY header when trusted
	Peer     string `json:"peer,omitempty"` // the TCP peer when it differs (the proxy)
	UserID   uint64 `json:"user_id,omitempty"`
	Username string `json:"user,omitempty"`
	OpenSecs int64  `json:"open_seconds"`
	IdleSecs int64  `json:"idle_seconds"`
}

// serveConns lists open connections (at most ?limit=N, default 1000).
func (s *Server) serveConns(w http.ResponseWriter, r *http.Request) {
	limit := 1000
	if v := r.URL.Query().Get("limit"); v != "" {
		fmt.Sscan(v, &limit)
	}
	now := time.Now().UnixNano()
	out := []ConnInfo{}
	for _, c := range s.snapshotConns() {
		if len(out) >= limit {
			break
		}
		info := ConnInfo{Conn: c.id, Remote: c.remoteAddr(), OpenSecs: (now - c.openedAt) / 1e9,
			IdleSecs: (now - c.lastSeen.Load()) / 1e9}
		if info.Remote != c.peer {
			info.Peer = c.peer
		}
		if u := c.user.Load(); u != nil {
			info.UserID, info.Username = u.id, u.name
		}
		out = append(out, info)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}
