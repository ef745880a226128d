package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/loopchat/loopchat/client"
	"github.com/loopchat/loopchat/client/cli"
)

func newClientCmd() *cobra.Command {
	var (
		o          client.Options
		jsonOut    bool
		noReconn   bool
		user, pass string
	)
	cmd := &cobra.Command{
		Use:   "client",
		Short: "Chat from the terminal, or run a script of commands",
		Long: `Connect to a loopchat server. On a terminal it is an interactive prompt
with line editing, history, Tab completion of commands and names, and
pushes printed above the line being typed (docs/client.md); --user logs
in at the start, asking for the password without echo.

Otherwise (or with --json) it reads one command per line from stdin and
runs them in order, each after the previous one's response, and exits at
the end of input. Messages received are printed and then acknowledged.

Commands:
` + cli.Usage,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Reconnect = !noReconn
			opts := cli.Options{Client: o, JSON: jsonOut, Out: os.Stdout, User: user, Password: pass}
			inTTY := term.IsTerminal(int(os.Stdin.Fd()))
			var err error
			if !jsonOut && inTTY && term.IsTerminal(int(os.Stdout.Fd())) {
				// The raw terminal takes Ctrl-C as a key; a signal ends
				// the session cleanly, leaving the terminal as it was.
				ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
				defer stop()
				err = cli.RunTerminal(ctx, os.Stdin, os.Stdout, opts)
			} else {
				// Typing on a terminal with output to a pipe or file: the
				// plain prompt, which writes no escape codes. --json keeps
				// stdout to JSON.
				opts.Interactive = inTTY && !jsonOut
				ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
				defer stop()
				err = cli.Run(ctx, os.Stdin, opts)
			}
			if errors.Is(err, cli.ErrConnect) || errors.Is(err, cli.ErrNoPassword) {
				fmt.Fprintln(os.Stderr, "loopchat client:", err)
				return errSilent
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Addr, "addr", "127.0.0.1:7000", "server or load balancer address")
	f.StringVar(&o.LocalAddr, "bind", "", "source IP to connect from (e.g. 127.0.0.5)")
	f.StringVar(&o.DeviceID, "device-id", "", "this device's stable name (each device of a user has its own inbox; at most 64 bytes)")
	f.BoolVar(&jsonOut, "json", false, "print one JSON object per line on stdout and nothing else")
	f.BoolVar(&noReconn, "no-reconnect", false, "do not reconnect (with the login token) when the connection drops")
	f.StringVar(&user, "user", "", "log in as this user at the start")
	f.StringVar(&pass, "password", "", "--user's password (seen by anyone who can list processes: prefer the environment, or on a terminal leave it out to be asked)")
	return cmd
}
