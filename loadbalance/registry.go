package loadbalance

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/protocol"
)

// ListNodes reads the cluster registry: every node whose heartbeat has not
// expired.
func ListNodes(ctx context.Context, rdb *redis.Client, prefix string) ([]protocol.NodeInfo, error) {
	ids, err := rdb.ZRange(ctx, protocol.NodesKey(prefix), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = protocol.NodeKey(prefix, id)
	}
	vals, err := rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	var out []protocol.NodeInfo
	for _, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue // expired: the node is gone
		}
		var info protocol.NodeInfo
		if json.Unmarshal([]byte(s), &info) == nil && info.Addr != "" {
			out = append(out, info)
		}
	}
	return out, nil
}
