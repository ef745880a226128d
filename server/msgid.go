package server

import (
	"sync"
	"time"
)

// Message ids are 64-bit, time-ordered and unique across a cluster without
// a central counter (the "snowflake" layout):
//
//	42 bits  milliseconds since 2024-01-01 UTC (good until 2163)
//	10 bits  node number (0-1023), unique among live nodes
//	12 bits  sequence within the millisecond
//
// Sorting by id sorts by send time, which is what inbox order relies on.
const (
	msgIDEpochMs  = 1704067200000
	msgIDNodeBits = 10
	msgIDSeqBits  = 12
	msgIDMaxNode  = 1<<msgIDNodeBits - 1
	msgIDSeqMask  = 1<<msgIDSeqBits - 1
)

// msgIDGen hands out ids for one node. If the clock steps back it keeps
// counting from the last millisecond it used, so ids never go backwards.
type msgIDGen struct {
	mu     sync.Mutex
	node   uint64 // guarded by mu: a cluster node may be renumbered
	lastMs int64
	seq    uint64
}

func newMsgIDGen(node uint64) *msgIDGen {
	return &msgIDGen{node: node & msgIDMaxNode}
}

// setNode changes the node number for ids issued from now on.
func (g *msgIDGen) setNode(node uint64) {
	g.mu.Lock()
	g.node = node & msgIDMaxNode
	g.mu.Unlock()
}

// next returns a fresh id and the millisecond timestamp it encodes.
func (g *msgIDGen) next(now time.Time) (id uint64, unixMs int64) {
	ms := now.UnixMilli() - msgIDEpochMs
	g.mu.Lock()
	defer g.mu.Unlock()
	if ms <= g.lastMs {
		ms = g.lastMs
		g.seq = (g.seq + 1) & msgIDSeqMask
		if g.seq == 0 {
			// 4096 ids in one millisecond: borrow the next one.
			ms++
		}
	} else {
		g.seq = 0
	}
	g.lastMs = ms
	id = uint64(ms)<<(msgIDNodeBits+msgIDSeqBits) | g.node<<msgIDSeqBits | g.seq
	return id, ms + msgIDEpochMs
}

// msgIDFloor is the smallest id any node can issue at or after t.
func msgIDFloor(t time.Time) uint64 {
	ms := t.UnixMilli() - msgIDEpochMs
	if ms < 0 {
		return 0
	}
	return uint64(ms) << (msgIDNodeBits + msgIDSeqBits)
}

// msgIDUnixMs is the send time encoded in a message id.
func msgIDUnixMs(id uint64) int64 {
	return int64(id>>(msgIDNodeBits+msgIDSeqBits)) + msgIDEpochMs
}
