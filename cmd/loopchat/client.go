package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/loopchat/loopchat/client"
	"github.com/loopchat/loopchat/client/cli"
)

func newClientCmd() *cobra.Command {
	var (
		o        client.Options
		jsonOut  bool
		noReconn bool
	)
	cmd := &cobra.Command{
		Use:   "client",
		Short: "Chat from the terminal, or run a script of commands",
		Long: `Connect to a loopchat server. On a terminal it is an interactive prompt;
otherwise it reads one command per line from stdin and runs them in order,
each after the previous one's response, and exits at the end of input.
Messages received are printed and then acknowledged.

Commands:
` + cli.Usage,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Reconnect = !noReconn
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			err := cli.Run(ctx, os.Stdin, cli.Options{
				Client:      o,
				JSON:        jsonOut,
				Interactive: term.IsTerminal(int(os.Stdin.Fd())),
				Out:         os.Stdout,
			})
			if errors.Is(err, cli.ErrConnect) {
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
	return cmd
}
