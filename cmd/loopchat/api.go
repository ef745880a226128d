package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// apiCall is what `loopchat api` needs to reach a node's HTTP API.
type apiCall struct {
	addr    string
	key     string
	timeout time.Duration
	out     io.Writer
}

func newAPICmd() *cobra.Command {
	c := &apiCall{out: os.Stdout}
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Call a node's HTTP server API (publish, broadcast, disconnect, ...)",
		Long: `Call the HTTP server API of a node started with --api-addr and --api-key
(docs/api.md). Every node serves every call for the whole cluster. The
node's JSON answer is printed on stdout; a failed call prints its JSON
error there too, says why on stderr and exits non-zero.

The key comes from --key or $LOOPCHAT_API_KEY (the first, if it holds a
comma-separated list as serve reads it).`,
		Example: `  loopchat api --addr http://127.0.0.1:8080 --key K publish --to alice "your parcel shipped"
  loopchat api publish --to-group 7 --from shop "sale starts now"
  loopchat api broadcast --durable "maintenance tonight at 22:00"
  loopchat api disconnect alice --reason "security check" --revoke-tokens
  loopchat api users ban alice --until 24h --reason spam`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&c.addr, "addr", "http://127.0.0.1:8080", "the node's --api-addr, as a URL")
	pf.StringVar(&c.key, "key", "", "an API key of the node")
	pf.DurationVar(&c.timeout, "timeout", 2*time.Minute, "give up on a call after this long (a durable broadcast to many users takes a while; retry it with the same --idempotency-key)")
	_ = pf.SetAnnotation("addr", envAnnotation, []string{"LOOPCHAT_API_ADDR"})
	_ = pf.SetAnnotation("key", envAnnotation, []string{"LOOPCHAT_API_KEY"})
	_ = pf.SetAnnotation("timeout", envAnnotation, []string{"LOOPCHAT_API_TIMEOUT"})
	keyFromEnv := func() {
		if v, ok := os.LookupEnv("LOOPCHAT_API_KEY"); ok && c.key == v {
			// serve reads the same variable as a list.
			c.key, _, _ = strings.Cut(c.key, ",")
		}
	}
	run := func(method string, path func(args []string) (string, error), body func(args []string) (any, error)) func(*cobra.Command, []string) error {
		return func(_ *cobra.Command, args []string) error {
			keyFromEnv()
			p, err := path(args)
			if err != nil {
				return err
			}
			var b any
			if body != nil {
				if b, err = body(args); err != nil {
					return err
				}
			}
			return c.do(method, p, b)
		}
	}
	fixed := func(p string) func([]string) (string, error) {
		return func([]string) (string, error) { return p, nil }
	}

	var (
		to                    []string
		toGroup               uint64
		from, idemKey         string
		durable               bool
		reason                string
		revoke                bool
		refuseUntil, banUntil string
		password              string
	)
	publish := &cobra.Command{
		Use:   "publish (--to USER... | --to-group GROUP_ID) TEXT...",
		Short: "Store a message for users or a group and push it live",
		Args:  cobra.MinimumNArgs(1),
		RunE: run("POST", fixed("/api/v1/publish"), func(args []string) (any, error) {
			b := map[string]any{"text": strings.Join(args, " ")}
			switch {
			case len(to) > 0 && toGroup != 0, len(to) == 0 && toGroup == 0:
				return nil, errors.New("give --to (one or more) or --to-group")
			case toGroup != 0:
				b["to_group"] = toGroup
			case len(to) == 1:
				b["to_user"] = to[0]
			default:
				b["to_users"] = to
			}
			setOptional(b, "from", from)
			setOptional(b, "idempotency_key", idemKey)
			return b, nil
		}),
	}
	publish.Flags().StringSliceVar(&to, "to", nil, "a user to send to; repeat, or separate with commas, for several (at most 10,000)")
	publish.Flags().Uint64Var(&toGroup, "to-group", 0, "a group to send to")
	publish.Flags().StringVar(&from, "from", "", "the sender, an existing user; empty means the system user")
	publish.Flags().StringVar(&idemKey, "idempotency-key", "", "makes a retry return the first call's messages and store nothing twice (at most 64 bytes)")

	broadcast := &cobra.Command{
		Use:   "broadcast [--durable] TEXT...",
		Short: "Send a message to every user (--durable, stored) or every online user",
		Args:  cobra.MinimumNArgs(1),
		RunE: run("POST", fixed("/api/v1/broadcast"), func(args []string) (any, error) {
			b := map[string]any{"text": strings.Join(args, " "), "durable": durable}
			setOptional(b, "from", from)
			setOptional(b, "idempotency_key", idemKey)
			return b, nil
		}),
	}
	broadcast.Flags().BoolVar(&durable, "durable", false, "store it for every registered user (costs one stored message per user)")
	broadcast.Flags().StringVar(&from, "from", "", "the sender, an existing user; empty means the system user")
	broadcast.Flags().StringVar(&idemKey, "idempotency-key", "", "with --durable: a retry reaches only the users the first call did not")

	disconnect := &cobra.Command{
		Use:   "disconnect USER",
		Short: "End every session of a user, on every node",
		Args:  cobra.ExactArgs(1),
		RunE: run("POST", fixed("/api/v1/disconnect"), func(args []string) (any, error) {
			b := map[string]any{"user": args[0]}
			setOptional(b, "reason", reason)
			switch {
			case refuseUntil != "":
				ms, err := parseUntil(refuseUntil, time.Now())
				if err != nil {
					return nil, fmt.Errorf("--refuse-tokens-until: %w", err)
				}
				b["revoke_tokens_until_ms"] = ms
			case revoke:
				b["revoke_tokens_until_ms"] = 0
			}
			return b, nil
		}),
	}
	disconnect.Flags().StringVar(&reason, "reason", "", "what the kicked sessions are told")
	disconnect.Flags().BoolVar(&revoke, "revoke-tokens", false, "refuse every login token issued before now, for good (the password still works)")
	disconnect.Flags().StringVar(&refuseUntil, "refuse-tokens-until", "", "revoke the tokens, and refuse every token login until then: a duration from now (24h), RFC 3339, or unix ms")

	presence := &cobra.Command{
		Use:   "presence USER",
		Short: "Whether a user is online, and when last seen",
		Args:  cobra.ExactArgs(1),
		RunE: run("GET", func(args []string) (string, error) {
			return "/api/v1/presence?user=" + url.QueryEscape(args[0]), nil
		}, nil),
	}
	nodes := &cobra.Command{Use: "nodes", Short: "The cluster's live nodes", Args: cobra.NoArgs,
		RunE: run("GET", fixed("/api/v1/nodes"), nil)}
	stats := &cobra.Command{Use: "stats", Short: "Counters of the node and the cluster", Args: cobra.NoArgs,
		RunE: run("GET", fixed("/api/v1/stats"), nil)}

	users := &cobra.Command{Use: "users", Short: "Create users, ban and unban them", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() }}
	create := &cobra.Command{
		Use:   "create NAME --password PASSWORD",
		Short: "Create a user, as a client's Register does",
		Args:  cobra.ExactArgs(1),
		RunE: run("POST", fixed("/api/v1/users"), func(args []string) (any, error) {
			if password == "" {
				return nil, errors.New("give --password (or $LOOPCHAT_PASSWORD)")
			}
			return map[string]any{"username": args[0], "password": password}, nil
		}),
	}
	create.Flags().StringVar(&password, "password", "", "the new user's password, 8-128 bytes")
	ban := &cobra.Command{
		Use:   "ban NAME [--until TIME] [--reason TEXT]",
		Short: "Keep a user from logging in, and disconnect their sessions",
		Args:  cobra.ExactArgs(1),
		RunE: run("POST", func(args []string) (string, error) {
			return "/api/v1/users/" + url.PathEscape(args[0]) + "/ban", nil
		}, func([]string) (any, error) {
			b := map[string]any{}
			if banUntil != "" {
				ms, err := parseUntil(banUntil, time.Now())
				if err != nil {
					return nil, fmt.Errorf("--until: %w", err)
				}
				b["until_ms"] = ms
			}
			setOptional(b, "reason", reason)
			return b, nil
		}),
	}
	ban.Flags().StringVar(&banUntil, "until", "", "when the ban ends: a duration from now (24h), RFC 3339, or unix ms; empty means until lifted")
	ban.Flags().StringVar(&reason, "reason", "", "what the kicked sessions are told")
	unban := &cobra.Command{
		Use:   "unban NAME",
		Short: "Lift a user's ban",
		Args:  cobra.ExactArgs(1),
		RunE: run("DELETE", func(args []string) (string, error) {
			return "/api/v1/users/" + url.PathEscape(args[0]) + "/ban", nil
		}, nil),
	}
	users.AddCommand(create, ban, unban)

	groups := &cobra.Command{Use: "groups", Short: "Add and remove group members", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() }}
	groupPath := func(args []string) (string, error) {
		if _, err := strconv.ParseUint(args[0], 10, 64); err != nil {
			return "", fmt.Errorf("group id %q is not a number", args[0])
		}
		return "/api/v1/groups/" + args[0] + "/members", nil
	}
	addMember := &cobra.Command{
		Use:   "add-member GROUP_ID USER",
		Short: "Add a user to a group",
		Args:  cobra.ExactArgs(2),
		RunE: run("POST", groupPath, func(args []string) (any, error) {
			return map[string]any{"user": args[1]}, nil
		}),
	}
	removeMember := &cobra.Command{
		Use:   "remove-member GROUP_ID USER",
		Short: "Take a user out of a group",
		Args:  cobra.ExactArgs(2),
		RunE: run("DELETE", func(args []string) (string, error) {
			p, err := groupPath(args)
			return p + "/" + url.PathEscape(args[1]), err
		}, nil),
	}
	groups.AddCommand(addMember, removeMember)

	cmd.AddCommand(publish, broadcast, disconnect, presence, nodes, stats, users, groups)
	return cmd
}

func setOptional(b map[string]any, field, v string) {
	if v != "" {
		b[field] = v
	}
}

// parseUntil reads a time as a duration from now ("24h"), RFC 3339, or
// unix milliseconds, and returns it in unix milliseconds.
func parseUntil(s string, now time.Time) (int64, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return 0, fmt.Errorf("%q is not in the future", s)
		}
		return now.Add(d).UnixMilli(), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UnixMilli(), nil
	}
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return ms, nil
	}
	return 0, fmt.Errorf("%q is neither a duration, an RFC 3339 time nor unix ms", s)
}

// do makes one call and prints the answer.
func (c *apiCall) do(method, path string, body any) error {
	if c.key == "" {
		return errors.New("no API key: give --key or $LOOPCHAT_API_KEY")
	}
	base := strings.TrimRight(c.addr, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if _, err := c.out.Write(answer); err != nil {
		return err
	}
	if resp.StatusCode/100 == 2 {
		return nil
	}
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(answer, &e) == nil && e.Error.Code != "" {
		return fmt.Errorf("%s: %s (%s)", e.Error.Code, e.Error.Message, resp.Status)
	}
	return fmt.Errorf("%s %s: %s", method, path, resp.Status)
}
