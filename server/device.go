package server

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// Several devices per user (docs/conversations.md, "Devices").
//
// A device is what a client names in Login.device_id; the empty name is a
// device too, the one every client without an id shares. A user's store
// knows up to maxKnownDevices of them, each in a slot. Each known device
// has its own inbox, a box: the user id in the low 56 bits and the slot in
// the top 8, so slot 0's box is the user id itself, the inbox every user
// had before devices. Appending a message puts it in one box per known
// device of each recipient (and of the sender, but for the device it was
// sent from), and each device acks in its own box only.
//
// A user with no device on record (none has logged in since devices
// existed) has the implicit device "" in slot 0. The first device
// recorded, "" included, takes slot 0, with whatever its inbox holds; a
// later one takes a free slot and starts "now": its box gets the messages
// sent from then on (since), and it pulls older ones from history. Past
// maxKnownDevices the device with the oldest login is forgotten, and its
// box emptied. A client without a device id is recorded like any other
// (one write at its first login): were it left implicit, the first named
// device would take slot 0 while it is still in use, and the two would
// share one inbox.
//
// Online, at most Options.MaxDevices devices of a user have a session at
// once. A new login of a device replaces that device's older session
// (LOGGED_IN_ELSEWHERE, ordered by session generation as before); one
// device too many kicks the devices with the oldest logins (DEVICE_LIMIT).

// maxKnownDevices bounds the devices a store keeps a box for, per user.
const maxKnownDevices = 16

// maxDeviceID is the longest Login.device_id accepted, in bytes.
const maxDeviceID = 64

const boxSlotShift = 56

// boxOf is the inbox of uid's device in slot.
func boxOf(uid uint64, slot int) uint64 { return uid | uint64(slot)<<boxSlotShift }

// boxUser is the user whose inbox box is.
func boxUser(box uint64) uint64 { return box & (1<<boxSlotShift - 1) }

// boxSlot is the device slot of box.
func boxSlot(box uint64) int { return int(box >> boxSlotShift) }

// Device is one device a store knows for a user.
type Device struct {
	ID   string
	Slot int
	// SinceMs: messages sent before it are not in the device's box (0:
	// every message, the first device's).
	SinceMs int64
	// LastLoginMs is refreshed at most once per deviceTouchMs, so logins do
	// not write every time; it picks the device to forget when full.
	LastLoginMs int64
}

// DeviceReg is what Store.RegisterDevice did.
type DeviceReg struct {
	Slot int
	// Evicted names the device forgotten to make room ("" none, and
	// Forgot false): a session of it must go, its box is gone.
	Evicted string
	Forgot  bool
}

// DeviceSession is one device's session, by generation.
type DeviceSession struct {
	Device string
	Gen    uint64
}

// deviceTouchMs is how stale LastLoginMs may get before a login rewrites it.
const deviceTouchMs = 24 * 3600 * 1000

// validateDeviceID checks Login.device_id.
func validateDeviceID(id string) error {
	if len(id) > maxDeviceID {
		return protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "device_id longer than %d bytes", maxDeviceID)
	}
	if !utf8.ValidString(id) {
		return protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "device_id is not UTF-8")
	}
	for _, r := range id {
		if unicode.IsControl(r) {
			return protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "device_id has control characters")
		}
	}
	return nil
}

// registerDevice is RegisterDevice on a device list, for both stores:
// the list after, whether it changed, and what was done.
func registerDevice(devs []Device, id string, nowMs int64) ([]Device, bool, DeviceReg) {
	if i := slices.IndexFunc(devs, func(d Device) bool { return d.ID == id }); i >= 0 {
		if nowMs-devs[i].LastLoginMs < deviceTouchMs {
			return devs, false, DeviceReg{Slot: devs[i].Slot}
		}
		devs[i].LastLoginMs = nowMs
		return devs, true, DeviceReg{Slot: devs[i].Slot}
	}
	if len(devs) == 0 {
		// The first device on record, named or not, takes the box the
		// user had before any login.
		return []Device{{ID: id, Slot: 0, SinceMs: 0, LastLoginMs: nowMs}}, true, DeviceReg{}
	}
	var reg DeviceReg
	if len(devs) >= maxKnownDevices {
		oldest := 0
		for i, d := range devs {
			if d.LastLoginMs < devs[oldest].LastLoginMs {
				oldest = i
			}
		}
		reg.Evicted, reg.Forgot = devs[oldest].ID, true
		devs = slices.Delete(devs, oldest, oldest+1)
	}
	used := make([]bool, maxKnownDevices)
	for _, d := range devs {
		used[d.Slot] = true
	}
	// The lowest free slot; when it was the forgotten device's, the
	// caller empties its box before anything is put in it again.
	reg.Slot = slices.Index(used, false)
	return append(devs, Device{ID: id, Slot: reg.Slot, SinceMs: nowMs, LastLoginMs: nowMs}), true, reg
}

// deviceBoxes appends to dst the boxes of uid's devices that get a message
// sent at sentAtMs, leaving out slot skip (-1: none).
func deviceBoxes(dst []uint64, uid uint64, devs []Device, sentAtMs int64, skip int) []uint64 {
	if len(devs) == 0 {
		if skip != 0 {
			dst = append(dst, uid)
		}
		return dst
	}
	for _, d := range devs {
		if d.Slot != skip && d.SinceMs <= sentAtMs {
			dst = append(dst, boxOf(uid, d.Slot))
		}
	}
	return dst
}

// encodeDevice and parseDevice are a device's record in both stores:
// "slot:since:last:id" (the id last, as it may hold colons).
func encodeDevice(d Device) string {
	return strconv.Itoa(d.Slot) + ":" + strconv.FormatInt(d.SinceMs, 10) + ":" + strconv.FormatInt(d.LastLoginMs, 10) + ":" + d.ID
}

func parseDevice(v string) (Device, error) {
	parts := strings.SplitN(v, ":", 4)
	if len(parts) != 4 {
		return Device{}, fmt.Errorf("store: device record %q", v)
	}
	slot, err1 := strconv.Atoi(parts[0])
	since, err2 := strconv.ParseInt(parts[1], 10, 64)
	last, err3 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || slot < 0 || slot >= maxKnownDevices {
		return Device{}, fmt.Errorf("store: device record %q", v)
	}
	return Device{ID: parts[3], Slot: slot, SinceMs: since, LastLoginMs: last}, nil
}

type sendingDeviceKey struct{}

// sender is the session a message is sent from.
type sender struct {
	box    uint64 // its device's inbox
	device string // its device, whose sessions are left out of the push
	node   string // its node and connection
	conn   uint64
}

// withSendingDevice marks an AppendMessage with the session that sends
// it: the sender's other devices get the message in their boxes. Without
// it the sender's devices get nothing (a message from a program).
func withSendingDevice(ctx context.Context, from sender) context.Context {
	return withSender(ctx, &from)
}

// withSender is withSendingDevice with a sender that outlives the
// request (a session's): the context holds the pointer, so marking a send
// costs one allocation, not two.
func withSender(ctx context.Context, from *sender) context.Context {
	return context.WithValue(ctx, sendingDeviceKey{}, from)
}

// sendingDevice is what withSendingDevice set, if anything.
func sendingDevice(ctx context.Context) (sender, bool) {
	from, _ := ctx.Value(sendingDeviceKey{}).(*sender)
	if from == nil {
		return sender{}, false
	}
	return *from, true
}
