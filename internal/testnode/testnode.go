// Package testnode starts a real loopchat node in-process for the tests of
// packages outside server (client, cli, bench): on a free loopback port,
// with cheap (still bcrypt) password hashing and quiet logs, stopped when
// the test ends.
package testnode

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/loopchat/loopchat/server"
)

// Start runs a node with opts and returns it and its address. Empty
// Listen means a free port on 127.0.0.1, empty DataDir a temp directory.
func Start(t testing.TB, opts server.Options) (*server.Server, string) {
	t.Helper()
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	opts.BcryptCost = bcrypt.MinCost
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	srv, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := srv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return srv, addr.String()
}
