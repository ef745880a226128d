// Package cli is the `loopchat client` command: an interactive prompt on a
// terminal, or a script runner reading one command per line, with human
// output or one JSON object per line (--json).
package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/loopchat/loopchat/client"
	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// Usage lists the commands, one per line.
const Usage = `/register USERNAME PASSWORD
/login USERNAME PASSWORD
/logout
/msg USERNAME TEXT...
/friend add USERNAME
/unfriend USERNAME
/friends
/block USERNAME
/unblock USERNAME
/blocked
/group create NAME [DESCRIPTION...]
/group join GROUP_ID
/group leave GROUP_ID
/group msg GROUP_ID TEXT...
/groups
/history USERNAME|group GROUP_ID [N]
/read USERNAME|group GROUP_ID SEQ
/conversations [N]
/presence visible|hidden
/typing USERNAME|group GROUP_ID
/ping
/wait DURATION
/quit`

// Options configures a CLI session.
type Options struct {
	Client      client.Options
	JSON        bool // one JSON object per line on Out
	Interactive bool // print a prompt and help; otherwise run a script
	Out         io.Writer
	// User, if set, logs in as this user before the first command, with
	// Password. Without a Password, RunTerminal asks for it (no echo);
	// Run, which has no terminal to ask on, fails.
	User, Password string
}

// ErrNoPassword: Options.User without a Password, and no terminal to ask on.
var ErrNoPassword = errors.New("--user needs --password (or $LOOPCHAT_PASSWORD) when stdin is not a terminal")

// ErrConnect wraps a failure to reach the server (exit status non-zero).
var ErrConnect = errors.New("cannot connect")

// Run executes commands from in until /quit or end of input.
func Run(ctx context.Context, in io.Reader, opts Options) error {
	if opts.User != "" && opts.Password == "" {
		return ErrNoPassword
	}
	c, err := client.Dial(ctx, opts.Client)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConnect, err)
	}
	s := &shell{c: c, opts: opts, out: opts.Out}
	pushesDone := make(chan struct{})
	go func() {
		defer close(pushesDone)
		s.pushes(c)
	}()
	defer func() {
		c.Close()
		<-pushesDone
	}()

	if opts.Interactive {
		s.println("connected to " + opts.Client.Addr + "; /help lists commands")
	}
	if opts.User != "" {
		s.report(s.do(ctx, "login", []string{opts.User, opts.Password}, ""))
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for {
		if opts.Interactive {
			s.prompt()
		}
		if !sc.Scan() {
			break
		}
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if line == "/quit" || line == "/exit" {
			break
		}
		s.run(ctx, line)
	}
	return sc.Err()
}

type shell struct {
	// c is the connection commands use. Only the goroutine running
	// commands replaces it (the interactive mode redials a dead one).
	c    *client.Client
	opts Options
	out  io.Writer

	// names, if set, learns users' names from logins, lists and history,
	// for the interactive mode's completion.
	names *nameSet
	// watch, if set, sees each event of c first and says whether to print
	// it as the script mode does; the interactive mode shows some its own way.
	watch func(c *client.Client, ev client.Event) bool

	mu sync.Mutex // one line at a time on out
}

func (s *shell) println(line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintln(s.out, line)
}

// prompt names the logged-in user ("alice> "), so that two terminals side
// by side tell who is typing; "> " before login.
func (s *shell) prompt() {
	name := s.c.Username()
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprint(s.out, name+"> ")
}

func (s *shell) emit(obj map[string]any, human string) {
	if s.opts.JSON {
		s.println(marshalOrdered(obj))
		return
	}
	s.println(human)
}

// pushes prints c's messages (then acknowledges them), kicks and
// disconnects, until c is closed.
func (s *shell) pushes(c *client.Client) {
	for ev := range c.Events() {
		if s.watch != nil && !s.watch(c, ev) {
			continue
		}
		s.show(c, ev)
	}
}

// show prints one event of c.
func (s *shell) show(c *client.Client, ev client.Event) {
	switch {
	case ev.Message != nil:
		m := ev.Message
		obj := map[string]any{"event": "message", "msg_id": m.MsgId, "seq": m.Seq, "from": m.FromUsername,
			"text": m.Text, "sent_at_ms": m.SentAtMs}
		when := time.UnixMilli(m.SentAtMs).Format("15:04:05")
		var human string
		if m.GroupId != 0 {
			obj["group_id"] = m.GroupId
			human = fmt.Sprintf("[%s] %s @ group %d: %s", when, m.FromUsername, m.GroupId, m.Text)
		} else if m.FromUserId == c.UserID() && m.ToUserId != m.FromUserId {
			// Sent by this user from another device.
			obj["to_user_id"], obj["own"] = m.ToUserId, true
			to := s.names.name(m.ToUserId)
			if to == "" {
				to = fmt.Sprintf("user %d", m.ToUserId)
			}
			human = fmt.Sprintf("[%s] you (another device) -> %s: %s", when, to, m.Text)
		} else {
			obj["to"] = c.Username()
			human = fmt.Sprintf("[%s] %s: %s", when, m.FromUsername, m.Text)
		}
		s.emit(obj, human)
		_ = c.Ack(m.MsgId)
	case ev.Kicked != nil:
		reason := protocol.KickReasonName(ev.Kicked.Reason)
		s.emit(map[string]any{"event": "kicked", "reason": reason, "message": ev.Kicked.Message},
			"kicked by the server: "+strings.ReplaceAll(reason, "_", " "))
	case ev.Error != nil:
		s.emit(map[string]any{"event": "error", "error": errObj(ev.Error.Code, ev.Error.Message)},
			"server error: "+ev.Error.Message)
	case ev.Read != nil:
		r := ev.Read
		obj := map[string]any{"event": "read", "reader_user_id": r.ReaderUserId, "up_to_seq": r.UpToSeq}
		where := fmt.Sprintf("user %d", r.PeerUserId)
		if r.GroupId != 0 {
			obj["group_id"], where = r.GroupId, fmt.Sprintf("group %d", r.GroupId)
		} else {
			obj["peer_user_id"] = r.PeerUserId
		}
		s.emit(obj, fmt.Sprintf("user %d read your conversation with %s up to #%d", r.ReaderUserId, where, r.UpToSeq))
	case ev.Presence != nil:
		p := ev.Presence
		obj := map[string]any{"event": "presence", "user_id": p.UserId, "username": p.Username, "online": p.Online}
		who := p.Username
		if who == "" {
			who = fmt.Sprintf("user %d", p.UserId)
		}
		human := who + " is online"
		if !p.Online {
			obj["last_seen_ms"] = p.LastSeenMs
			human = who + " went offline" + lastSeen(p.LastSeenMs, "15:04:05")
		}
		s.emit(obj, human)
	case ev.Typing != nil:
		n := ev.Typing
		obj := map[string]any{"event": "typing", "user_id": n.UserId, "username": n.Username}
		who := n.Username
		if who == "" {
			who = fmt.Sprintf("user %d", n.UserId)
		}
		human := who + " is typing…"
		if n.GroupId != 0 {
			obj["group_id"] = n.GroupId
			human = fmt.Sprintf("%s is typing in group %d…", who, n.GroupId)
		}
		s.emit(obj, human)
	case ev.Reconnected != nil:
		s.emit(map[string]any{"event": "reconnected", "user_id": ev.Reconnected.UserId, "node_id": ev.Reconnected.NodeId},
			"reconnected to node "+ev.Reconnected.NodeId)
	default: // Disconnected
		s.emit(map[string]any{"event": "disconnected"}, "disconnected")
	}
}

func errObj(code chatpb.ErrorCode, msg string) map[string]any {
	return map[string]any{"code": protocol.CodeName(code), "message": msg}
}

// run executes one command line and prints its response.
func (s *shell) run(ctx context.Context, line string) {
	name, args := parse(line)
	s.report(s.do(ctx, name, args, line))
}

// parse splits a command line into the command's name ("msg", or for
// two-word commands "friend add", "group create", ...) and its arguments.
func parse(line string) (name string, args []string) {
	words := strings.Fields(line)
	cmd, args := words[0], words[1:]
	name = strings.TrimPrefix(cmd, "/")
	if (cmd == "/friend" || cmd == "/group") && len(args) > 0 {
		name += " " + args[0]
		args = args[1:]
	}
	return name, args
}

// result is a command's outcome: its JSON fields and human text, or its error.
type result struct {
	name   string
	fields map[string]any
	human  string
	err    error
}

// do runs a parsed command; line is the whole of it, for the text of /msg
// and the like.
func (s *shell) do(ctx context.Context, name string, args []string, line string) result {
	fields, human, err := s.dispatch(ctx, name, args, line)
	return result{name, fields, human, err}
}

// report prints a command's outcome.
func (s *shell) report(r result) {
	name, fields, human, err := r.name, r.fields, r.human, r.err
	if errors.Is(err, errUsage) && name == "help" {
		s.println(Usage)
		return
	}
	if fields == nil && err == nil {
		return // /wait prints nothing itself
	}
	obj := map[string]any{"event": "response", "cmd": name}
	if err != nil {
		obj["ok"] = false
		var pe *protocol.Error
		switch {
		case errors.As(err, &pe):
			obj["error"] = errObj(pe.Code, pe.Message)
			human = fmt.Sprintf("error (%s): %s", protocol.CodeName(pe.Code), pe.Message)
		case errors.Is(err, errUsage):
			obj["error"] = map[string]any{"code": "usage", "message": err.Error()}
			human = err.Error()
		default:
			obj["error"] = map[string]any{"code": "client", "message": err.Error()}
			human = "error: " + err.Error()
		}
		s.emit(obj, human)
		return
	}
	obj["ok"] = true
	for k, v := range fields {
		obj[k] = v
	}
	s.emit(obj, human)
}

var errUsage = errors.New("usage")

func usage(form string) error { return fmt.Errorf("%w: %s", errUsage, form) }

// restAfter returns the text of line after its first n words, spaces kept.
func restAfter(line string, n int) string {
	rest := strings.TrimSpace(line)
	for range n {
		i := strings.IndexFunc(rest, func(r rune) bool { return r == ' ' || r == '\t' })
		if i < 0 {
			return ""
		}
		rest = strings.TrimLeft(rest[i:], " \t")
	}
	return rest
}

func (s *shell) dispatch(ctx context.Context, name string, args []string, line string) (map[string]any, string, error) {
	switch name {
	case "register":
		if len(args) != 2 {
			return nil, "", usage("/register USERNAME PASSWORD")
		}
		id, err := s.c.Register(ctx, args[0], args[1])
		return map[string]any{"user_id": id}, fmt.Sprintf("registered %s (user %d)", args[0], id), err
	case "login":
		if len(args) != 2 {
			return nil, "", usage("/login USERNAME PASSWORD")
		}
		ok, err := s.c.Login(ctx, args[0], args[1])
		if err != nil {
			return nil, "", err
		}
		s.names.setFriends(ok.Friends)
		human := fmt.Sprintf("logged in as %s (user %d) on node %s; %d friends, %d groups",
			ok.Username, ok.UserId, ok.NodeId, len(ok.Friends), len(ok.Groups))
		if ok.PresenceHidden {
			human += "; your presence is hidden"
		}
		return map[string]any{"user_id": ok.UserId, "username": ok.Username, "node_id": ok.NodeId,
			"friends": friendsJSON(ok.Friends), "groups": groupsJSON(ok.Groups), "presence_hidden": ok.PresenceHidden}, human, nil
	case "logout":
		err := s.c.Logout(ctx)
		return map[string]any{}, "logged out", err
	case "msg":
		if len(args) < 2 {
			return nil, "", usage("/msg USERNAME TEXT...")
		}
		ok, err := s.c.SendToUser(ctx, args[0], restAfter(line, 2))
		return sendFields(ok, err)
	case "friend add":
		if len(args) != 1 {
			return nil, "", usage("/friend add USERNAME")
		}
		err := s.c.AddFriend(ctx, args[0])
		if err == nil {
			s.names.addFriend(0, args[0])
		}
		return map[string]any{}, args[0] + " is now your friend", err
	case "unfriend":
		if len(args) != 1 {
			return nil, "", usage("/unfriend USERNAME")
		}
		err := s.c.RemoveFriend(ctx, args[0])
		if err == nil {
			s.names.removeFriend(args[0])
		}
		return map[string]any{}, args[0] + " is no longer your friend", err
	case "block", "unblock":
		if len(args) != 1 {
			return nil, "", usage("/" + name + " USERNAME")
		}
		if name == "block" {
			err := s.c.Block(ctx, args[0])
			if err == nil {
				s.names.removeFriend(args[0])
			}
			return map[string]any{}, "blocked " + args[0] + ": neither of you can message or befriend the other", err
		}
		return map[string]any{}, "unblocked " + args[0], s.c.Unblock(ctx, args[0])
	case "blocked":
		bl, err := s.c.ListBlocked(ctx)
		var b strings.Builder
		users := make([]map[string]any, 0, len(bl))
		fmt.Fprintf(&b, "%d blocked", len(bl))
		for _, u := range bl {
			fmt.Fprintf(&b, "\n  %s (user %d)", u.Username, u.UserId)
			users = append(users, map[string]any{"user_id": u.UserId, "username": u.Username})
		}
		return map[string]any{"users": users}, b.String(), err
	case "friends":
		fl, err := s.c.ListFriends(ctx)
		if err == nil {
			s.names.setFriends(fl)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%d friends", len(fl))
		for _, f := range fl {
			mark := onlineMark(f.Online)
			if !f.Online && f.LastSeenMs != 0 {
				mark = " —" + lastSeen(f.LastSeenMs, "01-02 15:04")
			}
			fmt.Fprintf(&b, "\n  %s (user %d)%s", f.Username, f.UserId, mark)
		}
		return map[string]any{"friends": friendsJSON(fl)}, b.String(), err
	case "group create":
		if len(args) < 1 {
			return nil, "", usage("/group create NAME [DESCRIPTION...]")
		}
		id, err := s.c.CreateGroup(ctx, args[0], restAfter(line, 3))
		return map[string]any{"group_id": id}, fmt.Sprintf("created group %d", id), err
	case "group join", "group leave":
		if len(args) != 1 {
			return nil, "", usage("/" + name + " GROUP_ID")
		}
		gid, err := strconv.ParseUint(args[0], 10, 64)
		if err != nil {
			return nil, "", usage("/" + name + " GROUP_ID (a number)")
		}
		if name == "group join" {
			err = s.c.JoinGroup(ctx, gid)
			return map[string]any{"group_id": gid}, fmt.Sprintf("joined group %d", gid), err
		}
		err = s.c.LeaveGroup(ctx, gid)
		return map[string]any{"group_id": gid}, fmt.Sprintf("left group %d", gid), err
	case "group msg":
		if len(args) < 2 {
			return nil, "", usage("/group msg GROUP_ID TEXT...")
		}
		gid, err := strconv.ParseUint(args[0], 10, 64)
		if err != nil {
			return nil, "", usage("/group msg GROUP_ID (a number) TEXT...")
		}
		ok, err := s.c.SendToGroup(ctx, gid, restAfter(line, 3))
		return sendFields(ok, err)
	case "groups":
		gl, err := s.c.ListGroups(ctx)
		var b strings.Builder
		fmt.Fprintf(&b, "%d groups", len(gl))
		for _, g := range gl {
			fmt.Fprintf(&b, "\n  %d %s — %s", g.GroupId, g.Name, g.Description)
			for _, m := range g.Members {
				fmt.Fprintf(&b, "\n    %s%s%s", m.Username, roleMark(m.Role), onlineMark(m.Online))
			}
		}
		return map[string]any{"groups": groupsJSON(gl)}, b.String(), err
	case "read":
		const form = "/read USERNAME SEQ or /read group GROUP_ID SEQ"
		req := &chatpb.MarkRead{}
		switch {
		case len(args) == 3 && args[0] == "group":
			gid, err := strconv.ParseUint(args[1], 10, 64)
			if err != nil {
				return nil, "", usage(form)
			}
			req.GroupId, args = gid, args[2:]
		case len(args) == 2:
			req.PeerUsername, args = args[0], args[1:]
		default:
			return nil, "", usage(form)
		}
		seq, err := strconv.ParseUint(args[0], 10, 64)
		if err != nil {
			return nil, "", usage(form)
		}
		req.UpToSeq = seq
		err = s.c.MarkRead(ctx, req)
		return map[string]any{}, fmt.Sprintf("read up to #%d", seq), err
	case "history":
		req, err := historyRequest(args)
		if err != nil {
			return nil, "", err
		}
		page, err := s.c.History(ctx, req)
		if err != nil {
			return nil, "", err
		}
		// Oldest first on screen, as a chat reads, though the page comes
		// newest first.
		msgs := slices.Clone(page.GetMessages())
		slices.Reverse(msgs)
		var b strings.Builder
		fmt.Fprintf(&b, "%d messages", len(msgs))
		if page.GetHasMore() && len(msgs) > 0 {
			fmt.Fprintf(&b, " (older ones before #%d)", msgs[0].Seq)
		}
		list := make([]map[string]any, 0, len(msgs))
		for _, m := range msgs {
			s.names.add(m.FromUserId, m.FromUsername)
			fmt.Fprintf(&b, "\n  #%d [%s] %s: %s", m.Seq, time.UnixMilli(m.SentAtMs).Format("01-02 15:04:05"), m.FromUsername, m.Text)
			list = append(list, map[string]any{"seq": m.Seq, "msg_id": m.MsgId, "from": m.FromUsername,
				"text": m.Text, "sent_at_ms": m.SentAtMs})
		}
		return map[string]any{"messages": list, "has_more": page.GetHasMore()}, b.String(), nil
	case "conversations":
		return s.conversations(ctx, args)
	case "presence":
		if len(args) != 1 || args[0] != "visible" && args[0] != "hidden" {
			return nil, "", usage("/presence visible|hidden")
		}
		visible := args[0] == "visible"
		err := s.c.SetPresenceVisible(ctx, visible)
		human := "your friends see your presence"
		if !visible {
			human = "your presence is hidden: friends see you offline"
		}
		return map[string]any{"visible": visible}, human, err
	case "typing":
		const form = "/typing USERNAME or /typing group GROUP_ID"
		req := &chatpb.Typing{}
		where := ""
		switch {
		case len(args) == 2 && args[0] == "group":
			gid, err := strconv.ParseUint(args[1], 10, 64)
			if err != nil {
				return nil, "", usage(form)
			}
			req.GroupId, where = gid, fmt.Sprintf("group %d", gid)
		case len(args) == 1:
			req.PeerUsername, where = args[0], args[0]
		default:
			return nil, "", usage(form)
		}
		err := s.c.Typing(ctx, req)
		return map[string]any{}, "told " + where + " you are typing", err
	case "ping":
		start := time.Now()
		t, err := s.c.Ping(ctx)
		rtt := time.Since(start)
		return map[string]any{"server_time_ms": t.UnixMilli(), "rtt_ms": float64(rtt.Microseconds()) / 1000},
			fmt.Sprintf("pong in %v", rtt.Round(10*time.Microsecond)), err
	case "wait":
		if len(args) != 1 {
			return nil, "", usage("/wait DURATION")
		}
		d, err := time.ParseDuration(args[0])
		if err != nil || d < 0 {
			return nil, "", usage("/wait DURATION (e.g. 2s)")
		}
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
		return nil, "", nil
	case "help":
		return nil, "", errUsage
	}
	return nil, "", usage("unknown command " + strconv.Quote("/"+name) + "; /help lists them")
}

// conversations runs `/conversations [N]`: the N (default 20) most recent
// conversations, with their last message and unread count.
func (s *shell) conversations(ctx context.Context, args []string) (map[string]any, string, error) {
	form := fmt.Sprintf("/conversations [N] (N from 1 to %d)", protocol.MaxConvListLimit)
	limit := uint64(20)
	switch len(args) {
	case 0:
	case 1:
		n, err := strconv.ParseUint(args[0], 10, 32)
		if err != nil || n == 0 || n > protocol.MaxConvListLimit {
			return nil, "", usage(form)
		}
		limit = n
	default:
		return nil, "", usage(form)
	}
	l, err := s.c.ListConversations(ctx, uint32(limit))
	if err != nil {
		return nil, "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d conversations", len(l.GetConversations()))
	list := make([]map[string]any, 0, len(l.GetConversations()))
	for _, c := range l.GetConversations() {
		obj := map[string]any{"last_seq": c.LastSeq, "read_seq": c.ReadSeq, "unread": c.Unread}
		if c.GroupId != 0 {
			obj["group_id"], obj["group_name"] = c.GroupId, c.GroupName
			fmt.Fprintf(&b, "\n  group %d %s", c.GroupId, c.GroupName)
		} else {
			s.names.add(c.PeerUserId, c.PeerUsername)
			obj["peer_user_id"], obj["peer_username"] = c.PeerUserId, c.PeerUsername
			fmt.Fprintf(&b, "\n  %s (user %d)", c.PeerUsername, c.PeerUserId)
		}
		if c.Unread > 0 {
			fmt.Fprintf(&b, ", %d unread", c.Unread)
		}
		if m := c.LastMessage; m != nil {
			obj["last_message"] = map[string]any{"seq": m.Seq, "msg_id": m.MsgId, "from": m.FromUsername,
				"text": m.Text, "sent_at_ms": m.SentAtMs}
			fmt.Fprintf(&b, " — #%d [%s] %s: %s", m.Seq, time.UnixMilli(m.SentAtMs).Format("01-02 15:04:05"), m.FromUsername, m.Text)
		} else {
			fmt.Fprintf(&b, " — no message to show (last #%d)", c.LastSeq)
		}
		list = append(list, obj)
	}
	if l.GetHasMore() {
		fmt.Fprintf(&b, "\n  (more: /conversations N, N up to %d)", protocol.MaxConvListLimit)
	}
	return map[string]any{"conversations": list, "has_more": l.GetHasMore()}, b.String(), nil
}

func sendFields(ok *chatpb.SendOK, err error) (map[string]any, string, error) {
	if err != nil {
		return nil, "", err
	}
	state := "delivered live"
	if !ok.Online {
		state = "stored for later"
	}
	return map[string]any{"msg_id": ok.MsgId, "sent_at_ms": ok.SentAtMs, "online": ok.Online, "seq": ok.Seq},
		fmt.Sprintf("sent (message %d, #%d, %s)", ok.MsgId, ok.Seq, state), nil
}

func onlineMark(online bool) string {
	if online {
		return " — online"
	}
	return ""
}

// lastSeen is " (last seen <when>)", or "" when not known.
func lastSeen(ms int64, layout string) string {
	if ms == 0 {
		return ""
	}
	return " (last seen " + time.UnixMilli(ms).Format(layout) + ")"
}

func roleMark(r chatpb.Role) string {
	if r == chatpb.Role_ROLE_CREATOR {
		return " (creator)"
	}
	return ""
}

func friendsJSON(fl []*chatpb.Friend) []map[string]any {
	out := make([]map[string]any, 0, len(fl))
	for _, f := range fl {
		out = append(out, map[string]any{"user_id": f.UserId, "username": f.Username, "online": f.Online, "last_seen_ms": f.LastSeenMs})
	}
	return out
}

func groupsJSON(gl []*chatpb.Group) []map[string]any {
	out := make([]map[string]any, 0, len(gl))
	for _, g := range gl {
		members := make([]map[string]any, 0, len(g.Members))
		for _, m := range g.Members {
			role := "member"
			if m.Role == chatpb.Role_ROLE_CREATOR {
				role = "creator"
			}
			members = append(members, map[string]any{"user_id": m.UserId, "username": m.Username, "role": role, "online": m.Online})
		}
		out = append(out, map[string]any{"group_id": g.GroupId, "name": g.Name, "description": g.Description, "members": members})
	}
	return out
}

// marshalOrdered encodes obj as one JSON line with "event", "cmd" and "ok"
// first (easier to read and to grep), the rest in sorted order.
func marshalOrdered(obj map[string]any) string {
	var b strings.Builder
	b.WriteByte('{')
	first := true
	put := func(k string, v any) {
		if !first {
			b.WriteByte(',')
		}
		first = false
		kb, _ := json.Marshal(k)
		vb, err := json.Marshal(v)
		if err != nil {
			vb = []byte("null")
		}
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
	}
	lead := []string{"event", "cmd", "ok"}
	for _, k := range lead {
		if v, ok := obj[k]; ok {
			put(k, v)
		}
	}
	rest := make([]string, 0, len(obj))
	for k := range obj {
		if !slices.Contains(lead, k) {
			rest = append(rest, k)
		}
	}
	slices.Sort(rest)
	for _, k := range rest {
		put(k, obj[k])
	}
	b.WriteByte('}')
	return b.String()
}

// historyRequest reads `/history USERNAME [N]` or `/history group GROUP_ID [N]`:
// the latest N (default 20) messages.
func historyRequest(args []string) (*chatpb.History, error) {
	const form = "/history USERNAME [N] or /history group GROUP_ID [N]"
	req := &chatpb.History{Limit: 20}
	switch {
	case len(args) >= 2 && args[0] == "group":
		gid, err := strconv.ParseUint(args[1], 10, 64)
		if err != nil {
			return nil, usage(form)
		}
		req.GroupId, args = gid, args[2:]
	case len(args) >= 1:
		req.PeerUsername, args = args[0], args[1:]
	default:
		return nil, usage(form)
	}
	switch len(args) {
	case 0:
	case 1:
		n, err := strconv.ParseUint(args[0], 10, 32)
		if err != nil || n == 0 || n > protocol.MaxHistoryLimit {
			return nil, usage(fmt.Sprintf("%s (N from 1 to %d)", form, protocol.MaxHistoryLimit))
		}
		req.Limit = uint32(n)
	default:
		return nil, usage(form)
	}
	return req, nil
}
