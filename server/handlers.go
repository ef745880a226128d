package server

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// handle runs one request and writes its response. It runs off the event
// loops, one request of a connection at a time.
func (c *session) handle(f *chatpb.Frame) {
	kind := protocol.Kind(f)
	switch {
	case !protocol.IsRequest(f):
		c.fail(f.Seq, kind, ErrNotARequest)
		return
	case protocol.NeedsLogin(f) && c.user.Load() == nil:
		c.fail(f.Seq, kind, ErrNotLoggedIn)
		return
	}
	ctx := c.srv.ctx
	switch f.Body.(type) {
	case *chatpb.Frame_Ping, *chatpb.Frame_Ack:
		// The most frequent requests after sends skip the timer: a ping
		// answers from memory, and an ack waits at most for the store's
		// own bounded queues (a message log batch, a Redis pipeline with
		// its timeout). The ack runs to the end (durable) before this
		// connection's next request: that is what makes a later answer
		// mean the ack survives a crash (Store.Ack).
	default:
		ctx = c.srv.deadlines.context()
	}
	if _, ping := f.Body.(*chatpb.Frame_Ping); !ping {
		if c.srv.storeResetting() {
			c.fail(f.Seq, kind, ErrStoreResetting)
			return
		}
		// The store checks its writes against the epoch the session (or,
		// before login, the node) was under when the request came.
		if u := c.user.Load(); u != nil {
			if c.reqCtx == nil {
				c.reqCtx = new(requestCtx)
			}
			ctx = c.reqCtx.of(ctx, u)
		} else {
			ctx = withEpoch(ctx, c.srv.epoch())
		}
	}

	var resp *chatpb.Frame
	var sent sendReceipt // a send's, answered with SendOK
	var isSend bool
	var err error
	var after func() // runs after the response is written
	switch b := f.Body.(type) {
	case *chatpb.Frame_Ping:
		resp = &chatpb.Frame{Body: &chatpb.Frame_Pong{Pong: &chatpb.Pong{ServerTimeMs: time.Now().UnixMilli()}}}
	case *chatpb.Frame_Register:
		resp, err = c.register(ctx, b.Register)
	case *chatpb.Frame_Login:
		resp, after, err = c.login(ctx, b.Login)
	case *chatpb.Frame_Logout:
		resp, err = c.logout(ctx)
	case *chatpb.Frame_Send:
		sent, err = c.sendMessage(ctx, b.Send)
		isSend = true
	case *chatpb.Frame_Ack:
		err = c.ack(ctx, b.Ack)
	case *chatpb.Frame_AddFriend:
		resp, err = c.addFriend(ctx, b.AddFriend)
	case *chatpb.Frame_RemoveFriend:
		resp, err = c.removeFriend(ctx, b.RemoveFriend)
	case *chatpb.Frame_Block:
		resp, err = c.block(ctx, b.Block.Username, true)
	case *chatpb.Frame_Unblock:
		resp, err = c.block(ctx, b.Unblock.Username, false)
	case *chatpb.Frame_ListBlocked:
		resp, err = c.listBlocked(ctx)
	case *chatpb.Frame_ListFriends:
		resp, err = c.listFriends(ctx)
	case *chatpb.Frame_CreateGroup:
		resp, err = c.createGroup(ctx, b.CreateGroup)
	case *chatpb.Frame_JoinGroup:
		resp, err = c.joinGroup(ctx, b.JoinGroup)
	case *chatpb.Frame_LeaveGroup:
		resp, err = c.leaveGroup(ctx, b.LeaveGroup)
	case *chatpb.Frame_ListGroups:
		resp, err = c.listGroups(ctx)
	case *chatpb.Frame_History:
		resp, err = c.history(ctx, b.History)
	case *chatpb.Frame_MarkRead:
		resp, err = c.markRead(ctx, b.MarkRead)
	case *chatpb.Frame_ListConversations:
		resp, err = c.listConversations(ctx, b.ListConversations)
	case *chatpb.Frame_SetPresenceVisible:
		resp, err = c.setPresenceVisible(ctx, b.SetPresenceVisible)
	case *chatpb.Frame_Typing:
		resp, err = c.typingNotice(ctx, b.Typing)
	default:
		// A request type IsRequest knows but this switch does not: a bug,
		// never silence.
		err = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INTERNAL, "request %s not handled", kind)
	}
	if errors.Is(err, errSuperseded) {
		// Kicked already: the Kicked frame is this request's last word.
		c.srv.metrics.requests.WithLabelValues(kind, "superseded").Inc()
		return
	}
	if errors.Is(err, ErrStoreReset) {
		c.srv.pokeEpoch()
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			err = errUnavailable
		}
		c.fail(f.Seq, kind, err)
		return
	}
	c.srv.metrics.requestOK(kind)
	switch {
	case isSend:
		c.sendOK(f.Seq, sent)
	case resp != nil:
		resp.Seq = f.Seq
		c.write(resp)
	}
	if after != nil {
		after()
	}
}

// requestCtx keeps the context a logged-in session's requests last ran
// under, so that the next ones, as long as they share its deadline (one
// in sharedDeadline's slack), cost no context of their own: at thousands
// of sends a second the epoch and the sender were two allocations each.
// Only handle uses it, which runs one request of a connection at a time.
type requestCtx struct {
	base context.Context // the deadline context it derives from
	user *sessionUser
	ctx  context.Context // base with the user's epoch
	// sender is ctx with the session as a message's sender (withSender),
	// made at the first send.
	sender context.Context
}

// of is base with u's epoch, made anew when base or u changed.
func (r *requestCtx) of(base context.Context, u *sessionUser) context.Context {
	if r.base != base || r.user != u {
		*r = requestCtx{base: base, user: u, ctx: withEpochOf(base, &u.epoch)}
	}
	return r.ctx
}

// withSender is of's context with u as the sender, for ctx made by of.
func (r *requestCtx) withSender(ctx context.Context, u *sessionUser) context.Context {
	if ctx != r.ctx || r.user != u {
		return withSender(ctx, &u.from)
	}
	if r.sender == nil {
		r.sender = withSender(ctx, &u.from)
	}
	return r.sender
}

// sendOK answers request seq with r's SendOK. On gnet the frame is
// encoded on the stack and copied into the connection's out buffer, not
// allocated: it is the most frequent frame a server writes.
func (c *session) sendOK(seq uint64, r sendReceipt) {
	if t, ok := c.out.(*gnetTransport); ok {
		var buf [protocol.SendOKMaxSize]byte
		t.send(protocol.AppendSendOK(buf[:0], seq, r.msgID, r.sentAtMs, r.online, r.seq))
		return
	}
	c.out.send(protocol.EncodeSendOK(seq, r.msgID, r.sentAtMs, r.online, r.seq))
}

func okFrame() *chatpb.Frame { return &chatpb.Frame{Body: &chatpb.Frame_Ok{Ok: &chatpb.OK{}}} }

func (c *session) register(ctx context.Context, req *chatpb.Register) (*chatpb.Frame, error) {
	u, err := c.srv.createUser(ctx, req.Username, req.Password)
	if err != nil {
		return nil, err
	}
	c.logger().Info("registered", "user_id", u.ID, "user", u.Name)
	return &chatpb.Frame{Body: &chatpb.Frame_RegisterOk{RegisterOk: &chatpb.RegisterOK{UserId: u.ID}}}, nil
}

// createUser registers an account with a valid name and password: a
// client's Register, or the API's user creation. The name the API sends
// as is never anyone's.
func (s *Server) createUser(ctx context.Context, name, password string) (User, error) {
	if err := protocol.ValidateUsername(name); err != nil {
		return User{}, err
	}
	if err := protocol.ValidatePassword(password); err != nil {
		return User{}, err
	}
	if strings.EqualFold(name, s.opts.APISystemUser) {
		return User{}, ErrUsernameReserved
	}
	hash, err := s.hasher.hash(password)
	if err != nil {
		return User{}, err
	}
	return s.store.CreateUser(ctx, name, hash)
}

// login authenticates, makes this the user's only session (newest wins),
// answers LoginOK and then replays the inbox (the returned func).
func (c *session) login(ctx context.Context, req *chatpb.Login) (*chatpb.Frame, func(), error) {
	if c.user.Load() != nil {
		return nil, nil, ErrAlreadyLoggedIn
	}
	if err := validateDeviceID(req.DeviceId); err != nil {
		return nil, nil, err
	}
	device := req.DeviceId
	if c.srv.opts.MaxDevices == 1 {
		device = "" // one device per user: every login replaces the last
	}
	ep := requestEpoch(ctx)
	u, err := c.authenticate(ctx, req, ep)
	if err != nil {
		c.srv.metrics.loginFailures.Inc()
		return nil, nil, err
	}
	now := time.Now()
	reg, err := c.srv.store.RegisterDevice(ctx, u.ID, device, now.UnixMilli())
	if err != nil {
		c.srv.metrics.loginFailures.Inc()
		return nil, nil, err
	}
	if reg.Forgot {
		// Its box is gone: a session of it must not go on as if it had one.
		c.srv.kickDevice(ctx, u.ID, ep, DeviceSession{Device: reg.Evicted, Gen: math.MaxUint64})
	}
	// Newest login of a device wins, in the order the store gives
	// (sessiongen.go).
	gen, err := c.srv.store.NewSession(ctx, u.ID, device)
	if err != nil {
		c.srv.metrics.loginFailures.Inc()
		return nil, nil, err
	}
	info := &sessionUser{id: u.ID, name: u.Name, loginAtMs: now.UnixMilli(), gen: gen, epoch: ep,
		device: device, box: boxOf(u.ID, reg.Slot)}
	info.from = sender{box: info.box, device: device, node: c.srv.opts.NodeID, conn: c.id}

	// Hold live pushes from the moment we subscribe until the replay is
	// done: subscribe first, then read the inbox, so nothing falls between.
	c.beginReplay()
	c.user.Store(info)
	// abandon undoes a login that got as far as setting the user: nothing
	// of it stays bound, subscribed or holding pushes.
	abandon := func(err error) (*chatpb.Frame, func(), error) {
		c.cleanup()
		c.endReplay()
		if errors.Is(err, errSuperseded) {
			c.kick(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE, "logged in from another connection")
		} else {
			c.srv.metrics.loginFailures.Inc()
		}
		return nil, nil, err
	}
	old, err := c.srv.bindUser(ctx, u.ID, c, info)
	if err != nil {
		return abandon(err)
	}
	if old != nil && old != c {
		old.kick(chatpb.KickReason_KICK_REASON_LOGGED_IN_ELSEWHERE, "logged in from another connection")
	}
	// Tell other nodes, whose older sessions of this user must go. Without
	// the notice out, an older session elsewhere could stay for good
	// (sessiongen.go), so a login that cannot publish fails.
	notice := Event{Login: &LoginNotice{NodeID: c.srv.opts.NodeID, ConnID: c.id, AtMs: info.loginAtMs, Gen: gen, Epoch: ep,
		Device: device}}
	if _, err := c.srv.broker.Publish(ctx, []uint64{u.ID}, notice); err != nil {
		return abandon(err)
	}
	// A newer login whose notice went out before we were subscribed shows
	// here instead; without this check both sessions could stay.
	latest, err := c.srv.store.LatestSession(ctx, u.ID, device)
	switch {
	case err != nil:
		return abandon(err)
	case latest > gen:
		return abandon(errSuperseded)
	case c.srv.epoch() != ep:
		// The node adopted a new store epoch while we logged in, and its
		// kicks may have run before we set our user: this user id may now
		// be someone else's.
		return abandon(ErrStoreReset)
	case c.isGone():
		// The connection closed while we logged in; its cleanup may have
		// run before we bound the user, so undo it here.
		return abandon(errUnavailable)
	}

	// One device too many: the oldest logins go. A failure here leaves
	// the user over the limit until their next login, which is better
	// than failing a login that is otherwise done.
	if kick, err := c.srv.store.DeviceOnline(ctx, u.ID, device, gen, c.srv.opts.MaxDevices); err != nil {
		c.logger().Warn("login: device limit not checked", "err", err)
	} else {
		for _, k := range kick {
			c.srv.kickDevice(ctx, u.ID, ep, k)
		}
	}

	ok := &chatpb.LoginOK{UserId: u.ID, Username: u.Name, NodeId: c.srv.opts.NodeID, StoreEpoch: ep, DeviceId: device}
	var expires time.Time
	ok.Token, expires = c.srv.tokens.Load().issue(u, now, ep)
	ok.TokenExpiresAtMs = expires.UnixMilli()
	var friends []User
	if ok.Friends, ok.Groups, friends, err = c.contacts(ctx, u.ID); err != nil {
		c.logger().Warn("login: contacts unavailable", "err", err)
	}
	// Hear the user's groups before the replay reads the inbox: a group
	// message stored from then on reaches this node live (fanout.go). A
	// join that the list read missed is announced on the user's channel,
	// which this node already hears.
	if err == nil {
		gids := make([]uint64, len(ok.Groups))
		for i, g := range ok.Groups {
			gids[i] = g.GroupId
		}
		_, err = c.srv.groups.add(ctx, u.ID, gids)
	} else {
		err = c.srv.hearGroups(ctx, u.ID)
	}
	if err != nil {
		return abandon(err)
	}
	// Online to friends from now: after the friend list was read, so that
	// a friend's change from here on reaches this session after LoginOK
	// (pushes wait for the replay), and the list is never newer than it.
	ok.PresenceHidden = c.srv.presence.join(ctx, info, friends)
	// The groups' members were read before this session counted: list the
	// user as a ListGroups now would, online unless hidden.
	for _, g := range ok.Groups {
		for _, m := range g.Members {
			if m.UserId == u.ID {
				m.Online = !ok.PresenceHidden
			}
		}
	}
	c.srv.metrics.logins.Inc()
	c.loggedInOnce.Store(true)
	c.srv.releaseAnonymous(c)
	c.debug("logged in") // debug: at C10K rates one line per login is noise
	// The replay outlives this request's timeout: a big inbox to a slow
	// reader takes as long as it takes (waitWritable bounds the stalls).
	replay := func() { c.replayInbox(c.srv.ctx, info.box) }
	return &chatpb.Frame{Body: &chatpb.Frame_LoginOk{LoginOk: ok}}, replay, nil
}

// kickDevice ends uid's session of k.Device at or below k.Gen, wherever
// it is, with DEVICE_LIMIT.
func (s *Server) kickDevice(ctx context.Context, uid uint64, epoch string, k DeviceSession) {
	s.metrics.deviceKicks.Inc()
	if _, err := s.broker.Publish(ctx, []uint64{uid}, Event{Epoch: epoch, DeviceKick: &k}); err != nil {
		s.log.Warn("device kick not published", "user_id", uid, "err", err)
	}
}

func (c *session) authenticate(ctx context.Context, req *chatpb.Login, epoch string) (User, error) {
	if req.Token != "" {
		if len(req.Token) > protocol.MaxTokenLength {
			return User{}, ErrBadToken
		}
		uid, nonce, err := c.srv.tokens.Load().verify(req.Token, time.Now(), epoch)
		if err != nil {
			return User{}, err
		}
		u, err := c.srv.store.Account(ctx, uid)
		if errors.Is(err, ErrUserNotFound) || err == nil && u.Nonce != nonce {
			// Gone, or the id now names another account (or the API
			// revoked the account's tokens): the token was issued to
			// someone else.
			return User{}, ErrBadToken
		}
		if err != nil {
			return User{}, err
		}
		return u, loginAllowed(u, time.Now(), true)
	}
	if err := protocol.ValidateUsername(req.Username); err != nil {
		return User{}, err
	}
	if len(req.Password) > protocol.MaxPassword {
		return User{}, ErrBadCredentials
	}
	if !c.srv.guard.allow(c.remoteAddr(), time.Now()) {
		c.srv.metrics.loginThrottled.Inc()
		return User{}, ErrLoginThrottled
	}
	u, err := c.srv.store.Credentials(ctx, req.Username)
	if err != nil && !errors.Is(err, ErrUserNotFound) {
		return User{}, err
	}
	// Unknown users cost a hash too, so timing does not reveal who exists.
	if !c.srv.hasher.check(u.PasswordHash, req.Password) {
		c.srv.guard.failed(c.remoteAddr(), time.Now())
		return User{}, ErrBadCredentials
	}
	return u, loginAllowed(u, time.Now(), false)
}

// contacts lists uid's friends and groups with their presence now, and
// the friends as the store has them.
func (c *session) contacts(ctx context.Context, uid uint64) ([]*chatpb.Friend, []*chatpb.Group, []User, error) {
	friends, err := c.srv.store.Friends(ctx, uid)
	if err != nil {
		return nil, nil, nil, err
	}
	groups, err := c.srv.store.GroupsOf(ctx, uid)
	if err != nil {
		return nil, nil, friends, err
	}
	ids := make([]uint64, len(friends))
	for i, f := range friends {
		ids[i] = f.ID
	}
	if len(groups) == 0 {
		// Friends are each listed once: no set needed.
		states, err := c.srv.store.Presence(ctx, ids)
		if err != nil {
			return nil, nil, friends, err
		}
		return friendList(friends, states), nil, friends, nil
	}
	for _, g := range groups {
		for _, m := range g.Members {
			ids = append(ids, m.UserID)
		}
	}
	pres, err := c.presenceOf(ctx, ids)
	if err != nil {
		return nil, nil, friends, err
	}
	states := make([]PresenceState, len(friends))
	for i, f := range friends {
		states[i] = pres[f.ID]
	}
	return friendList(friends, states), groupList(groups, pres), friends, nil
}

// presenceOf reads the presence of ids (each once) as friends see it.
func (c *session) presenceOf(ctx context.Context, ids []uint64) (map[uint64]PresenceState, error) {
	set := make(map[uint64]PresenceState, len(ids))
	uniq := make([]uint64, 0, len(ids))
	for _, id := range ids {
		if _, dup := set[id]; !dup {
			set[id] = PresenceState{}
			uniq = append(uniq, id)
		}
	}
	states, err := c.srv.store.Presence(ctx, uniq)
	if err != nil {
		return nil, err
	}
	for i, id := range uniq {
		set[id] = states[i]
	}
	return set, nil
}

// friendList is friends with their presence, states[i] being friends[i]'s.
func friendList(friends []User, states []PresenceState) []*chatpb.Friend {
	out := make([]*chatpb.Friend, 0, len(friends))
	for i, f := range friends {
		p := states[i]
		out = append(out, &chatpb.Friend{UserId: f.ID, Username: f.Name, Online: p.Online, LastSeenMs: p.LastSeenMs})
	}
	return out
}

func groupList(groups []Group, pres map[uint64]PresenceState) []*chatpb.Group {
	out := make([]*chatpb.Group, 0, len(groups))
	for _, g := range groups {
		pg := &chatpb.Group{GroupId: g.ID, Name: g.Name, Description: g.Description}
		for _, m := range g.Members {
			pg.Members = append(pg.Members, &chatpb.Member{UserId: m.UserID, Username: m.Username, Role: m.Role, Online: pres[m.UserID].Online})
		}
		out = append(out, pg)
	}
	return out
}

func (c *session) logout(ctx context.Context) (*chatpb.Frame, error) {
	if u := c.user.Swap(nil); u != nil {
		c.srv.unbindUser(ctx, u, c)
		c.dropUserState()
		c.debug("logged out", "user_id", u.id)
	}
	return okFrame(), nil
}

// sendReceipt is what SendOK reports.
type sendReceipt struct {
	msgID    uint64
	sentAtMs int64
	online   bool
	seq      uint64
}

// sendMessage checks a client's Send and resolves its recipients, as the
// logged-in user may send (a group only by a member, paying for its size in
// the rate limit); storeAndPush does the rest.
func (c *session) sendMessage(ctx context.Context, req *chatpb.Send) (sendReceipt, error) {
	u := c.user.Load()
	if err := protocol.ValidateText(req.Text); err != nil {
		return sendReceipt{}, err
	}
	if err := protocol.ValidateClientMsgID(req.ClientMsgId); err != nil {
		return sendReceipt{}, err
	}
	// The message and a single recipient's slice in one allocation.
	blk := &struct {
		m  chatpb.Message
		to [1]uint64
	}{}
	m := &blk.m
	m.FromUserId, m.FromUsername, m.Text = u.id, u.name, req.Text
	var recipients []uint64
	switch to := req.To.(type) {
	case *chatpb.Send_UserId:
		target, err := c.srv.store.UserByID(ctx, to.UserId)
		if err != nil {
			return sendReceipt{}, err
		}
		blk.to[0] = target.ID
		m.ToUserId, recipients = target.ID, blk.to[:]
	case *chatpb.Send_Username:
		if err := protocol.ValidateUsername(to.Username); err != nil {
			return sendReceipt{}, err
		}
		target, err := c.srv.store.UserByName(ctx, to.Username)
		if err != nil {
			return sendReceipt{}, err
		}
		blk.to[0] = target.ID
		m.ToUserId, recipients = target.ID, blk.to[:]
	case *chatpb.Send_GroupId:
		if order := c.srv.groupOrder(to.GroupId); order != nil {
			order.RLock()
			defer order.RUnlock()
		}
		g, err := c.srv.store.Group(ctx, to.GroupId)
		if err != nil {
			return sendReceipt{}, err
		}
		if !g.HasMember(u.id) {
			return sendReceipt{}, ErrNotMember
		}
		m.GroupId, recipients = g.ID, g.recipients(u.id)
		if !c.allowFanout(len(recipients)) {
			c.srv.metrics.rateLimited.Inc()
			return sendReceipt{}, ErrFanoutLimited
		}
	default:
		return sendReceipt{}, ErrNoRecipient
	}
	o := outgoing{msg: m, recipients: recipients, clientMsgID: req.ClientMsgId, epoch: u.epoch}
	if m.ToUserId != u.id {
		// The sender's other devices get it too. (A note to yourself
		// already goes to every device of yours, this one included.)
		o.from = &u.from
		if c.reqCtx != nil {
			o.fromCtx = c.reqCtx.withSender(ctx, u)
		}
	}
	return c.srv.storeAndPush(ctx, o)
}

// outgoing is one message to store and push, whoever asked for it: a
// client's Send, or the API's publish and broadcast (api.go).
type outgoing struct {
	// msg has its sender, its recipient (ToUserId or GroupId) and its text;
	// storeAndPush gives it its id, time and seq.
	msg         *chatpb.Message
	recipients  []uint64
	clientMsgID string // "": not idempotent
	epoch       string // the store epoch it is sent under (epoch.go)
	// from is the sending session, if any: the sender's other devices get
	// the message too, and that session does not. A message from a
	// program has none (nil), and the sender's devices get nothing
	// (withSendingDevice).
	from *sender
	// fromCtx, if set, is ctx with from as the sender already.
	fromCtx context.Context
}

// storeAndPush stores o.msg durably for its recipients, then pushes it to
// those online through the broker: the one send path of the node. Once it
// returns nil the message is stored, whatever happened to the push.
func (s *Server) storeAndPush(ctx context.Context, o outgoing) (sendReceipt, error) {
	m, recipients := o.msg, o.recipients
	m.MsgId, m.SentAtMs = s.ids.next(time.Now())

	appendCtx := ctx
	switch {
	case o.fromCtx != nil:
		appendCtx = o.fromCtx
	case o.from != nil:
		appendCtx = withSender(ctx, o.from)
	}
	res, err := s.store.AppendMessage(appendCtx, m, recipients, o.clientMsgID)
	if err != nil {
		return sendReceipt{}, err
	}
	s.metrics.inboxTrimmed.Add(float64(res.Trimmed))
	s.metrics.historyTrimmed.Add(float64(res.HistoryTrimmed))
	online := 0
	switch {
	case res.Duplicate:
		flags, err := s.broker.Online(ctx, recipients)
		if err == nil {
			for _, f := range flags {
				if f {
					online++
				}
			}
		}
	case res.Published:
		s.metrics.messagesSent.Inc()
		online = res.Online
		stored := len(recipients)
		if res.Recipients > 0 {
			stored = res.Recipients // the group's members at the append
		}
		s.metrics.storedOffline.Add(float64(stored - online))
	default:
		s.metrics.messagesSent.Inc()
		// Stored: SendOK is now true whatever happens to the live push.
		ev := Event{Message: m, Epoch: o.epoch}
		switch {
		case res.Push != nil:
			ev.frame = res.Push
		case res.Encoded != nil:
			ev.frame = protocol.EncodeMessagePush(res.Encoded)
		default:
			if ev.frame, err = encodePush(m); err != nil {
				return sendReceipt{}, err
			}
		}
		if m.GroupId != 0 {
			// One event for the group's recipients online and the
			// sender's other devices (not the sending one: the origin
			// says so).
			var copies uint64
			if o.from != nil {
				ev.OriginNode, ev.OriginConn, ev.OriginDevice = o.from.node, o.from.conn, o.from.device
				if res.SenderCopies > 0 {
					copies = m.FromUserId
				}
			}
			if online, err = s.publishGroupMessage(ctx, m.GroupId, recipients, copies, ev); err != nil {
				s.log.Warn("live push failed; message waits in the inbox", "msg_id", m.MsgId, "err", err)
			}
			s.metrics.storedOffline.Add(float64(len(recipients) - online))
			break
		}
		if online, err = s.broker.Publish(ctx, recipients, ev); err != nil {
			s.log.Warn("live push failed; message waits in the inbox", "msg_id", m.MsgId, "err", err)
		}
		s.metrics.storedOffline.Add(float64(len(recipients) - online))
		if res.SenderCopies > 0 {
			// The sender's other devices; the sending device is left out.
			ev.OriginNode, ev.OriginConn, ev.OriginDevice = o.from.node, o.from.conn, o.from.device
			if _, err := s.broker.Publish(ctx, []uint64{m.FromUserId}, ev); err != nil {
				s.log.Warn("live push to the sender's devices failed; it waits in their inboxes", "msg_id", m.MsgId, "err", err)
			}
		}
	}
	stored := res.Message
	return sendReceipt{msgID: stored.MsgId, sentAtMs: stored.SentAtMs, online: online > 0, seq: stored.Seq}, nil
}

// fanoutPerRequest is how many recipients one request's worth of the rate
// limit pays for.
const fanoutPerRequest = 100

// allowFanout charges a group send for its recipients beyond the first
// fanoutPerRequest, in requests of the connection's rate limit: the send
// itself was charged one when it arrived. Otherwise one member of a big
// group could make the node push 100 × the group's size messages a second.
// A charge is capped at half the burst, so a send to any group can pass.
func (c *session) allowFanout(recipients int) bool {
	extra := min(recipients/fanoutPerRequest, c.srv.opts.RateBurst/2)
	return extra == 0 || c.limiter.AllowN(time.Now(), extra)
}

func (c *session) ack(ctx context.Context, req *chatpb.Ack) error {
	if len(req.MsgIds) > protocol.MaxAckIDs {
		return protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "at most %d ids per Ack", protocol.MaxAckIDs)
	}
	if len(req.MsgIds) == 0 {
		return nil
	}
	return c.srv.store.Ack(ctx, c.user.Load().box, req.MsgIds)
}

// otherUser looks up the user a friend or block request names, answering
// self when it names the session's own user.
func (c *session) otherUser(ctx context.Context, name string, self error) (uid uint64, target User, err error) {
	if err := protocol.ValidateUsername(name); err != nil {
		return 0, User{}, err
	}
	uid = c.user.Load().id
	if target, err = c.srv.store.UserByName(ctx, name); err != nil {
		return 0, User{}, err
	}
	if target.ID == uid {
		return 0, User{}, self
	}
	return uid, target, nil
}

func (c *session) addFriend(ctx context.Context, req *chatpb.AddFriend) (*chatpb.Frame, error) {
	uid, target, err := c.otherUser(ctx, req.Username, ErrFriendSelf)
	if err != nil {
		return nil, err
	}
	if err := c.srv.store.AddFriend(ctx, uid, target.ID, c.srv.opts.limits()); err != nil {
		return nil, err
	}
	return okFrame(), nil
}

// removeFriend ends a friendship. Nothing is pushed to either side:
// presence is announced to the friends the store lists at each change, so
// the next change of either is no longer told to the other.
func (c *session) removeFriend(ctx context.Context, req *chatpb.RemoveFriend) (*chatpb.Frame, error) {
	uid, target, err := c.otherUser(ctx, req.Username, ErrUnfriendSelf)
	if err != nil {
		return nil, err
	}
	if err := c.srv.store.RemoveFriend(ctx, uid, target.ID); err != nil {
		return nil, err
	}
	return okFrame(), nil
}

// block blocks (on) or unblocks the user named. The API's own account
// cannot be blocked: its durable broadcasts go to every user.
func (c *session) block(ctx context.Context, name string, on bool) (*chatpb.Frame, error) {
	uid, target, err := c.otherUser(ctx, name, ErrBlockSelf)
	if err != nil {
		return nil, err
	}
	switch {
	case !on:
		err = c.srv.store.Unblock(ctx, uid, target.ID)
	case strings.EqualFold(target.Name, c.srv.opts.APISystemUser):
		return nil, ErrBlockSystem
	default:
		err = c.srv.store.Block(ctx, uid, target.ID, c.srv.opts.limits())
	}
	if err != nil {
		return nil, err
	}
	return okFrame(), nil
}

func (c *session) listBlocked(ctx context.Context) (*chatpb.Frame, error) {
	users, err := c.srv.store.BlockedUsers(ctx, c.user.Load().id)
	if err != nil {
		return nil, err
	}
	out := make([]*chatpb.BlockedUser, len(users))
	for i, b := range users {
		out[i] = &chatpb.BlockedUser{UserId: b.ID, Username: b.Name}
	}
	return &chatpb.Frame{Body: &chatpb.Frame_BlockList{BlockList: &chatpb.BlockList{Users: out}}}, nil
}

func (c *session) listFriends(ctx context.Context) (*chatpb.Frame, error) {
	friends, err := c.srv.store.Friends(ctx, c.user.Load().id)
	if err != nil {
		return nil, err
	}
	ids := make([]uint64, len(friends))
	for i, f := range friends {
		ids[i] = f.ID
	}
	states, err := c.srv.store.Presence(ctx, ids)
	if err != nil {
		return nil, err
	}
	return &chatpb.Frame{Body: &chatpb.Frame_FriendList{FriendList: &chatpb.FriendList{Friends: friendList(friends, states)}}}, nil
}

func (c *session) createGroup(ctx context.Context, req *chatpb.CreateGroup) (*chatpb.Frame, error) {
	if err := protocol.ValidateGroupName(req.Name); err != nil {
		return nil, err
	}
	if err := protocol.ValidateGroupDescription(req.Description); err != nil {
		return nil, err
	}
	g, err := c.srv.createGroup(ctx, c.user.Load().id, req.Name, req.Description)
	if err != nil {
		return nil, err
	}
	return &chatpb.Frame{Body: &chatpb.Frame_GroupCreated{GroupCreated: &chatpb.GroupCreated{GroupId: g.ID}}}, nil
}

func (c *session) joinGroup(ctx context.Context, req *chatpb.JoinGroup) (*chatpb.Frame, error) {
	if err := c.srv.joinGroup(ctx, req.GroupId, c.user.Load().id); err != nil {
		return nil, err
	}
	return okFrame(), nil
}

func (c *session) leaveGroup(ctx context.Context, req *chatpb.LeaveGroup) (*chatpb.Frame, error) {
	if err := c.srv.leaveGroup(ctx, req.GroupId, c.user.Load().id); err != nil {
		return nil, err
	}
	return okFrame(), nil
}

func (c *session) listGroups(ctx context.Context) (*chatpb.Frame, error) {
	_, groups, _, err := c.contacts(ctx, c.user.Load().id)
	if err != nil {
		return nil, err
	}
	return &chatpb.Frame{Body: &chatpb.Frame_GroupList{GroupList: &chatpb.GroupList{Groups: groups}}}, nil
}

// history answers one page of a conversation of the caller's: with a peer,
// or with a group they are in, from when they joined.
func (c *session) history(ctx context.Context, req *chatpb.History) (*chatpb.Frame, error) {
	limit := int(req.Limit)
	switch {
	case limit == 0:
		limit = protocol.DefHistoryLimit
	case limit > protocol.MaxHistoryLimit:
		return nil, protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "limit is at most %d", protocol.MaxHistoryLimit)
	}
	if req.BeforeSeq != nil && req.AfterSeq != nil {
		return nil, ErrHistoryBothBounds
	}
	conv, floor, err := c.conversation(ctx, req.PeerUserId, req.PeerUsername, req.GroupId)
	if err != nil {
		return nil, err
	}
	q := HistoryQuery{Conv: conv, Floor: floor, Limit: limit}
	switch {
	case req.BeforeSeq != nil:
		if *req.BeforeSeq <= 1 {
			// Nothing lies below seq 1 (and the store reads 0 as "latest").
			return historyPage(nil, false), nil
		}
		q.Newest, q.Before = true, *req.BeforeSeq
	case req.AfterSeq != nil:
		q.After = *req.AfterSeq
	default:
		q.Newest = true
	}
	page, err := c.srv.store.History(ctx, q)
	if err != nil {
		return nil, err
	}
	return historyPage(page.Messages, page.HasMore), nil
}

func historyPage(msgs []*chatpb.Message, more bool) *chatpb.Frame {
	return &chatpb.Frame{Body: &chatpb.Frame_HistoryPage{HistoryPage: &chatpb.HistoryPage{Messages: msgs, HasMore: more}}}
}

// conversation resolves a request's conversation of the caller's: with a
// peer (by id or name), or with a group they are in, whose messages they
// see above floor (their join point).
func (c *session) conversation(ctx context.Context, peerID uint64, peerName string, groupID uint64) (conv Conversation, floor uint64, err error) {
	named := 0
	for _, set := range []bool{peerID != 0, peerName != "", groupID != 0} {
		if set {
			named++
		}
	}
	if named != 1 {
		return Conversation{}, 0, ErrConversationTarget
	}
	u := c.user.Load()
	if groupID != 0 {
		g, err := c.srv.store.Group(ctx, groupID)
		if err != nil {
			return Conversation{}, 0, err
		}
		i := slices.IndexFunc(g.Members, func(m Member) bool { return m.UserID == u.id })
		if i < 0 {
			return Conversation{}, 0, ErrNotMember
		}
		return GroupConversation(g.ID), g.Members[i].JoinedSeq, nil
	}
	var peer User
	if peerName != "" {
		if err := protocol.ValidateUsername(peerName); err != nil {
			return Conversation{}, 0, err
		}
		peer, err = c.srv.store.UserByName(ctx, peerName)
	} else {
		peer, err = c.srv.store.UserByID(ctx, peerID)
	}
	if err != nil {
		return Conversation{}, 0, err
	}
	return DirectConversation(u.id, peer.ID), 0, nil
}

// markRead moves the caller's read seq; when it moved, the caller's other
// sessions and, in a 1:1 conversation, the peer are told (ReadReceipt).
func (c *session) markRead(ctx context.Context, req *chatpb.MarkRead) (*chatpb.Frame, error) {
	conv, _, err := c.conversation(ctx, req.PeerUserId, req.PeerUsername, req.GroupId)
	if err != nil {
		return nil, err
	}
	u := c.user.Load()
	seq, moved, err := c.srv.store.MarkRead(ctx, u.id, conv, req.UpToSeq)
	if err != nil || !moved {
		return okFrame(), err
	}
	// This session is told no receipt of its own mark, but must not be
	// told a lower one of a racing mark afterwards either.
	c.readMoved(u, readerConv{reader: u.id, conv: conv}, seq, nil)
	to := []uint64{u.id}
	if conv.GroupID == 0 && conv.A != conv.B {
		peer := conv.A + conv.B - u.id // the other of the pair
		// Between two users one of whom blocks the other, a read is no
		// more told than typing is: a receipt is a sign of activity the
		// block withholds. If the check fails, the peer is not told
		// either (receipts are live only; the read seq is stored).
		blocked, err := c.srv.store.Blocked(ctx, u.id, peer)
		if err != nil {
			c.logger().Warn("read receipt not sent to the peer: block check failed", "err", err)
		} else if !blocked {
			to = append(to, peer)
		}
	}
	ev := Event{Epoch: u.epoch, Read: &ReadNotice{Reader: u.id, Conv: conv, UpTo: seq, NodeID: c.srv.opts.NodeID, ConnID: c.id}}
	if _, err := c.srv.broker.Publish(ctx, to, ev); err != nil {
		// Stored: the read seq is right for whoever asks; only the live
		// notice is lost.
		c.logger().Warn("read receipt not published", "err", err)
	}
	return okFrame(), nil
}

// listConversations answers the caller's conversations, most recent first,
// each named from the caller's side.
func (c *session) listConversations(ctx context.Context, req *chatpb.ListConversations) (*chatpb.Frame, error) {
	limit := int(req.Limit)
	switch {
	case limit == 0:
		limit = protocol.DefConvListLimit
	case limit > protocol.MaxConvListLimit:
		return nil, protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "limit is at most %d", protocol.MaxConvListLimit)
	}
	u := c.user.Load()
	list, more, err := c.srv.store.ListConversations(ctx, u.id, limit)
	if err != nil {
		return nil, err
	}
	out := &chatpb.ConversationList{Conversations: make([]*chatpb.ConversationSummary, 0, len(list)), HasMore: more}
	for _, cs := range list {
		e := &chatpb.ConversationSummary{LastMessage: cs.Last, LastSeq: cs.LastSeq, ReadSeq: cs.ReadSeq, Unread: cs.Unread}
		if gid := cs.Conv.GroupID; gid != 0 {
			e.GroupId, e.GroupName = gid, cs.Name
		} else {
			e.PeerUserId, e.PeerUsername = cs.Peer(u.id), cs.Name
		}
		out.Conversations = append(out.Conversations, e)
	}
	return &chatpb.Frame{Body: &chatpb.Frame_ConversationList{ConversationList: out}}, nil
}

// setPresenceVisible shows or hides the caller's presence from their
// friends, who are told when what they see changes.
func (c *session) setPresenceVisible(ctx context.Context, req *chatpb.SetPresenceVisible) (*chatpb.Frame, error) {
	u := c.user.Load()
	m := c.srv.presence.lock(u.id)
	defer m.Unlock()
	ch, err := c.srv.store.SetPresenceVisible(ctx, u.id, req.Visible)
	if err != nil {
		return nil, err
	}
	c.srv.presence.announce(ctx, u.id, u.name, u.epoch, ch, nil)
	return okFrame(), nil
}
