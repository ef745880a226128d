package protocol

import "testing"

// Each channel takes what its rules allow and refuses the rest, whatever
// the event would mean on another channel.
func TestChannelRules(t *testing.T) {
	const gid = 5
	for _, c := range []struct {
		payload          string
		user, group, all bool // accepted on a user channel, group 5's, the broadcast channel
	}{
		{`{"type":"message","from_user_id":2,"to_user_id":1,"text":"hi"}`, true, false, false},
		{`{"type":"message","from_user_id":2,"group_id":5,"text":"hi"}`, true, false, false},
		{`{"type":"message","from_user_id":2,"group_id":5,"text":"hi","to":[1,3]}`, false, true, false},
		{`{"type":"message","from_user_id":2,"group_id":6,"text":"hi","to":[1,3]}`, false, false, false},
		{`{"type":"message","group_id":5,"to_user_id":1,"text":"hi","to":[1]}`, false, false, false},
		{`{"type":"message","group_id":5,"text":"hi","to":[]}`, true, false, false},
		{`{"type":"message","group_id":5,"text":"hi","to":[1,0]}`, false, false, false},
		{`{"type":"message","text":"maintenance at 5"}`, true, false, true},
		{`{"type":"message","text":"x","to":[1]}`, false, false, false},
		{`{"type":"typing","user_id":2,"group_id":5,"to":[1]}`, false, true, false},
		{`{"type":"typing","user_id":2}`, true, false, false},
		{`{"type":"login","node_id":"n1","to":[1]}`, false, false, false},
		{`{"type":"group_member","user_id":2,"group_id":5,"joined":true}`, true, false, false},
		{`{"type":"group_member","user_id":2}`, false, false, false},
		{`{"type":"group_member","group_id":5,"to":[2]}`, false, false, false},
	} {
		_, errU := ParseChannelEvent([]byte(c.payload))
		_, errG := ParseGroupEvent([]byte(c.payload), gid)
		_, errB := ParseBroadcastEvent([]byte(c.payload))
		if (errU == nil) != c.user || (errG == nil) != c.group || (errB == nil) != c.all {
			t.Errorf("%s: user %v, group %v, broadcast %v; want accepted %v %v %v", c.payload, errU, errG, errB, c.user, c.group, c.all)
		}
	}
	if gid, ok := ParseGroupChannel(DefaultPrefix, GroupChannel(DefaultPrefix, 42)); !ok || gid != 42 {
		t.Fatalf("group channel round trip = %d, %v", gid, ok)
	}
	for _, ch := range []string{"loopchat:group:", "loopchat:group:0", "loopchat:group:x", "loopchat:user:3", BroadcastChannel(DefaultPrefix),
		"loopchat:group:{c:g7", "loopchat:group:{c:g}", "loopchat:group:{c:d1:2}", ShardUserChannel(DefaultPrefix, 3)} {
		if _, ok := ParseGroupChannel(DefaultPrefix, ch); ok {
			t.Errorf("%q parsed as a group channel", ch)
		}
	}
}

// Shard channels (Redis Cluster) carry the tag of their user's or group's
// keys, and parse back like the plain ones.
func TestShardChannels(t *testing.T) {
	if ch := ShardUserChannel(DefaultPrefix, 3); ch != "loopchat:user:{u:3}" {
		t.Fatalf("ShardUserChannel = %q", ch)
	}
	if ch := ShardGroupChannel(DefaultPrefix, 42); ch != "loopchat:group:{c:g42}" {
		t.Fatalf("ShardGroupChannel = %q", ch)
	}
	if uid, ok := ParseUserChannel(DefaultPrefix, ShardUserChannel(DefaultPrefix, 3)); !ok || uid != 3 {
		t.Fatalf("shard user channel round trip = %d, %v", uid, ok)
	}
	if gid, ok := ParseGroupChannel(DefaultPrefix, ShardGroupChannel(DefaultPrefix, 42)); !ok || gid != 42 {
		t.Fatalf("shard group channel round trip = %d, %v", gid, ok)
	}
	for _, ch := range []string{"loopchat:user:{u:3", "loopchat:user:{u:}", "loopchat:user:{u:x}", ShardGroupChannel(DefaultPrefix, 3)} {
		if _, ok := ParseUserChannel(DefaultPrefix, ch); ok {
			t.Errorf("%q parsed as a user channel", ch)
		}
	}
}
