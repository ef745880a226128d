package server

import (
	"math"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// largestLoginOK is the most bytes one LoginOK frame (length prefix
// included) can take under l: every friend and every member of every group
// with the longest name and id. A GroupList is never bigger. It lets the
// server warn when its limits allow a login answer that the slow-consumer
// bound (or a client's frame limit) would refuse.
func largestLoginOK(l Limits, nodeID string) int {
	name := strings.Repeat("n", protocol.MaxUsername)
	friend := proto.Size(&chatpb.Friend{UserId: math.MaxUint64, Username: name, Online: true})
	member := proto.Size(&chatpb.Member{UserId: math.MaxUint64, Username: name, Role: chatpb.Role_ROLE_CREATOR, Online: true})
	group := proto.Size(&chatpb.Group{GroupId: math.MaxUint64, Name: strings.Repeat("g", protocol.MaxGroupName),
		Description: strings.Repeat("d", protocol.MaxGroupDesc)})
	group += l.MembersPerGroup * repeated(member)
	ok := proto.Size(&chatpb.LoginOK{UserId: math.MaxUint64, Username: name, Token: strings.Repeat("t", protocol.MaxTokenLength),
		NodeId: nodeID, TokenExpiresAtMs: math.MaxInt64})
	ok += l.FriendsPerUser*repeated(friend) + l.GroupsPerUser*repeated(group)
	body := (&chatpb.Frame{}).ProtoReflect().Descriptor().Fields().ByName("login_ok").Number()
	frame := 1 + protowire.SizeVarint(math.MaxUint64) + protowire.SizeTag(body) + protowire.SizeBytes(ok)
	return 4 + frame
}

// repeated is the size of one embedded message of n bytes in a repeated
// field numbered below 16 (friends, groups, members): a one-byte tag, the
// length, the bytes.
func repeated(n int) int { return 1 + protowire.SizeBytes(n) }
