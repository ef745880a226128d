package loadbalance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/protocol"
)

// ListNodes reads the cluster registry: every node whose heartbeat has not
// expired. rdb is one Redis or a Redis Cluster (the entries are then in
// different slots: GETs in a pipeline, not one MGET).
func ListNodes(ctx context.Context, rdb redis.UniversalClient, prefix string) ([]protocol.NodeInfo, error) {
	ids, err := rdb.ZRange(ctx, protocol.NodesKey(prefix), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	pipe := rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.Get(ctx, protocol.NodeKey(prefix, id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("registry: %w", err)
	}
	var out []protocol.NodeInfo
	for _, c := range cmds {
		s, err := c.Result()
		if err != nil {
			continue // expired: the node is gone
		}
		var info protocol.NodeInfo
		if json.Unmarshal([]byte(s), &info) == nil && info.Addr != "" {
			out = append(out, info)
		}
	}
	return out, nil
}
