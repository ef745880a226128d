package protocol

import (
	"testing"

	chatpb "github.com/loopchat/loopchat/proto"
)

// TestEveryKickReasonHasAName: the CLI's --json shows kicks by these names,
// so a reason added to chat.proto must get one.
func TestEveryKickReasonHasAName(t *testing.T) {
	seen := map[string]bool{}
	for n := range chatpb.KickReason_name {
		r := chatpb.KickReason(n)
		name := KickReasonName(r)
		if r != chatpb.KickReason_KICK_REASON_UNSPECIFIED && (name == "unspecified" || seen[name]) {
			t.Errorf("kick reason %v has name %q", r, name)
		}
		seen[name] = true
	}
}
