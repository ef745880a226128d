package client

import (
	"context"
	"time"

	chatpb "github.com/loopchat/loopchat/proto"
)

// Register creates an account and returns its user id.
func (c *Client) Register(ctx context.Context, username, password string) (uint64, error) {
	resp, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_Register{Register: &chatpb.Register{Username: username, Password: password}}})
	if err != nil {
		return 0, err
	}
	return resp.GetRegisterOk().GetUserId(), nil
}

// Login logs in with a password. The server then pushes every message
// waiting in the inbox, oldest first.
func (c *Client) Login(ctx context.Context, username, password string) (*chatpb.LoginOK, error) {
	return c.login(ctx, &chatpb.Login{Username: username, Password: password, DeviceId: c.opts.DeviceID})
}

// LoginToken logs in with a token from an earlier LoginOK.
func (c *Client) LoginToken(ctx context.Context, token string) (*chatpb.LoginOK, error) {
	return c.login(ctx, &chatpb.Login{Token: token, DeviceId: c.opts.DeviceID})
}

func (c *Client) login(ctx context.Context, req *chatpb.Login) (*chatpb.LoginOK, error) {
	resp, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_Login{Login: req}})
	if err != nil {
		return nil, err
	}
	ok := resp.GetLoginOk()
	c.mu.Lock()
	c.token, c.stopRe = ok.GetToken(), c.closed
	c.mu.Unlock()
	return ok, nil
}

// Logout ends the session; the connection stays open, unauthenticated.
func (c *Client) Logout(ctx context.Context) error {
	c.mu.Lock()
	c.token, c.stopRe, c.username, c.userID = "", true, "", 0
	c.mu.Unlock()
	_, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_Logout{Logout: &chatpb.Logout{}}})
	return err
}

// Ping asks for the server's clock.
func (c *Client) Ping(ctx context.Context) (time.Time, error) {
	resp, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_Ping{Ping: &chatpb.Ping{}}})
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(resp.GetPong().GetServerTimeMs()), nil
}

// Send sends a message as described by req (recipient, text, optional
// client_msg_id). SendOK means it is stored for every recipient.
func (c *Client) Send(ctx context.Context, req *chatpb.Send) (*chatpb.SendOK, error) {
	resp, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_Send{Send: req}})
	if err != nil {
		return nil, err
	}
	return resp.GetSendOk(), nil
}

// SendToUser sends text to a user by name.
func (c *Client) SendToUser(ctx context.Context, username, text string) (*chatpb.SendOK, error) {
	return c.Send(ctx, &chatpb.Send{To: &chatpb.Send_Username{Username: username}, Text: text})
}

// SendToUserID sends text to a user by id.
func (c *Client) SendToUserID(ctx context.Context, uid uint64, text string) (*chatpb.SendOK, error) {
	return c.Send(ctx, &chatpb.Send{To: &chatpb.Send_UserId{UserId: uid}, Text: text})
}

// SendToGroup sends text to every other member of a group.
func (c *Client) SendToGroup(ctx context.Context, gid uint64, text string) (*chatpb.SendOK, error) {
	return c.Send(ctx, &chatpb.Send{To: &chatpb.Send_GroupId{GroupId: gid}, Text: text})
}

// Ack removes shown messages from the inbox. It has no response on
// success; it only fails if the request cannot be written.
func (c *Client) Ack(msgIDs ...uint64) error {
	if len(msgIDs) == 0 {
		return nil
	}
	_, err := c.write(&chatpb.Frame{Body: &chatpb.Frame_Ack{Ack: &chatpb.Ack{MsgIds: msgIDs}}}, false)
	return err
}

// AddFriend befriends a user (both ways).
func (c *Client) AddFriend(ctx context.Context, username string) error {
	_, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_AddFriend{AddFriend: &chatpb.AddFriend{Username: username}}})
	return err
}

// RemoveFriend ends a friendship (both ways): neither side is told of the
// other's presence any more. The conversation and its history stay. Not
// friends (or no such user) is a NOT_FOUND error.
func (c *Client) RemoveFriend(ctx context.Context, username string) error {
	_, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_RemoveFriend{RemoveFriend: &chatpb.RemoveFriend{Username: username}}})
	return err
}

// Block blocks a user: while either of two users blocks the other, 1:1
// messages and friend requests between them are refused
// (PERMISSION_DENIED) and typing notices dropped; it ends the friendship.
// Group messages are not affected.
func (c *Client) Block(ctx context.Context, username string) error {
	_, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_Block{Block: &chatpb.Block{Username: username}}})
	return err
}

// Unblock lifts a block; NOT_FOUND if the user was not blocked.
func (c *Client) Unblock(ctx context.Context, username string) error {
	_, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_Unblock{Unblock: &chatpb.Unblock{Username: username}}})
	return err
}

// ListBlocked lists the users this user blocks, by user id.
func (c *Client) ListBlocked(ctx context.Context) ([]*chatpb.BlockedUser, error) {
	resp, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_ListBlocked{ListBlocked: &chatpb.ListBlocked{}}})
	if err != nil {
		return nil, err
	}
	return resp.GetBlockList().GetUsers(), nil
}

// ListFriends lists friends with their presence: online, or when last seen.
func (c *Client) ListFriends(ctx context.Context) ([]*chatpb.Friend, error) {
	resp, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_ListFriends{ListFriends: &chatpb.ListFriends{}}})
	if err != nil {
		return nil, err
	}
	return resp.GetFriendList().GetFriends(), nil
}

// SetPresenceVisible shows (true) or hides (false) the user's presence
// from their friends; the setting is kept across logins
// (LoginOK.presence_hidden).
func (c *Client) SetPresenceVisible(ctx context.Context, visible bool) error {
	_, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_SetPresenceVisible{SetPresenceVisible: &chatpb.SetPresenceVisible{Visible: visible}}})
	return err
}

// Typing tells the other side of a conversation (named as for History:
// peer by id or name, or a group) that the user is typing. Call it every
// 3 s while they type; receivers show it for 5 s. The server drops notices
// past its typing rate (1 a second, 3 at once) and still answers OK.
func (c *Client) Typing(ctx context.Context, req *chatpb.Typing) error {
	_, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_Typing{Typing: req}})
	return err
}

// TypingTo tells a user (by name) that the user is typing to them.
func (c *Client) TypingTo(ctx context.Context, username string) error {
	return c.Typing(ctx, &chatpb.Typing{PeerUsername: username})
}

// TypingInGroup tells a group's other members that the user is typing there.
func (c *Client) TypingInGroup(ctx context.Context, gid uint64) error {
	return c.Typing(ctx, &chatpb.Typing{GroupId: gid})
}

// CreateGroup creates a group with the caller as its creator and returns its id.
func (c *Client) CreateGroup(ctx context.Context, name, description string) (uint64, error) {
	resp, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_CreateGroup{CreateGroup: &chatpb.CreateGroup{Name: name, Description: description}}})
	if err != nil {
		return 0, err
	}
	return resp.GetGroupCreated().GetGroupId(), nil
}

// JoinGroup joins a group.
func (c *Client) JoinGroup(ctx context.Context, gid uint64) error {
	_, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_JoinGroup{JoinGroup: &chatpb.JoinGroup{GroupId: gid}}})
	return err
}

// LeaveGroup leaves a group.
func (c *Client) LeaveGroup(ctx context.Context, gid uint64) error {
	_, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_LeaveGroup{LeaveGroup: &chatpb.LeaveGroup{GroupId: gid}}})
	return err
}

// ListGroups lists the caller's groups with their members and who is online.
func (c *Client) ListGroups(ctx context.Context) ([]*chatpb.Group, error) {
	resp, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_ListGroups{ListGroups: &chatpb.ListGroups{}}})
	if err != nil {
		return nil, err
	}
	return resp.GetGroupList().GetGroups(), nil
}

// History reads one page of a conversation: req names the peer (by id or
// name) or the group, and at most one of before_seq (newer to older, below
// it) and after_seq (older to newer, above it); neither gives the latest.
func (c *Client) History(ctx context.Context, req *chatpb.History) (*chatpb.HistoryPage, error) {
	resp, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_History{History: req}})
	if err != nil {
		return nil, err
	}
	return resp.GetHistoryPage(), nil
}

// MarkRead moves the caller's read seq in a conversation (named as for
// History) up to upTo; the peer of a 1:1 conversation gets a ReadReceipt.
func (c *Client) MarkRead(ctx context.Context, req *chatpb.MarkRead) error {
	_, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_MarkRead{MarkRead: req}})
	return err
}

// ListConversations lists the caller's conversations, most recent first,
// each with its last message, last seq, the caller's read seq and unread
// count: up to limit (1-500; 0 means 100), and whether there are more.
func (c *Client) ListConversations(ctx context.Context, limit uint32) (*chatpb.ConversationList, error) {
	resp, err := c.Do(ctx, &chatpb.Frame{Body: &chatpb.Frame_ListConversations{ListConversations: &chatpb.ListConversations{Limit: limit}}})
	if err != nil {
		return nil, err
	}
	return resp.GetConversationList(), nil
}
