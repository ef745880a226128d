package server

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Redis Cluster hash slots, computed the way Redis does (CLUSTER KEYSLOT):
// CRC16 (XMODEM) of the key's hash tag, modulo 16384. The store needs
// them for its per-slot copies of the epoch (epoch_cluster.go): a script
// may touch keys of one slot only, so each slot carries its own copy,
// under a tag chosen to hash to that slot.

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// crc16 is CRC-16/XMODEM (polynomial 0x1021, no reflection, init 0).
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// keySlot is the hash slot of key: that of the part between the first
// '{' and the next '}' when that part is not empty, else of the whole key.
func keySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key) % clusterSlots)
}

// slotTags names, for each slot, a hash tag that hashes to it: "s"
// followed by base 36 digits, which no other tag of the layout looks like
// (theirs hold a colon, or are "meta"). Found by trying the numbers in
// order; some 160,000 tries fill every slot (a few milliseconds, once per
// store).
func slotTags() []string {
	tags := make([]string, clusterSlots)
	left := clusterSlots
	for i := uint64(0); left > 0; i++ {
		tag := "s" + strconv.FormatUint(i, 36)
		if slot := crc16(tag) % clusterSlots; tags[slot] == "" {
			tags[slot] = tag
			left--
		}
	}
	return tags
}

// slotOwners asks a Redis Cluster (CLUSTER SHARDS, one node's view) which
// primary serves each slot: the address for each of the 16,384, "" for a
// slot no primary serves.
func slotOwners(ctx context.Context, rdb *redis.ClusterClient) ([]string, error) {
	shards, err := rdb.ClusterShards(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("cluster shards: %w", err)
	}
	owners := make([]string, clusterSlots)
	for _, sh := range shards {
		for _, n := range sh.Nodes {
			if n.Role != "master" || n.Health == "fail" {
				continue
			}
			addr := net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10))
			for _, r := range sh.Slots {
				for i := r.Start; i <= r.End && i < clusterSlots; i++ {
					owners[i] = addr
				}
			}
		}
	}
	return owners, nil
}
