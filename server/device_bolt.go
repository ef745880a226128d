package server

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// bucketDevices holds the devices the embedded store knows per user
// (device.go): uid -> JSON list of encodeDevice strings. Users whose only
// device is the implicit one have no entry.
var bucketDevices = []byte("devices")

// boltDevices is the embedded store's device registry in memory, loaded at
// open and changed only by committed RegisterDevice writes: the message
// copy reads it for every message, so it must not cost a bbolt read.
type boltDevices struct {
	mu   sync.RWMutex
	byID map[uint64][]Device
}

func (d *boltDevices) of(uid uint64) []Device {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.byID[uid]
}

func (d *boltDevices) set(uid uint64, devs []Device) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.byID == nil {
		d.byID = make(map[uint64][]Device)
	}
	d.byID[uid] = devs
}

// load reads every user's devices.
func (d *boltDevices) load(tx *bolt.Tx) error {
	return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
		devs, err := decodeDevices(v)
		if err != nil {
			return err
		}
		d.set(binary.BigEndian.Uint64(k), devs)
		return nil
	})
}

func decodeDevices(v []byte) ([]Device, error) {
	var recs []string
	if err := json.Unmarshal(v, &recs); err != nil {
		return nil, fmt.Errorf("store: devices: %w", err)
	}
	out := make([]Device, 0, len(recs))
	for _, r := range recs {
		d, err := parseDevice(r)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

func encodeDevices(devs []Device) []byte {
	recs := make([]string, len(devs))
	for i, d := range devs {
		recs[i] = encodeDevice(d)
	}
	b, _ := json.Marshal(recs)
	return b
}

func (s *BoltStore) Devices(_ context.Context, uid uint64) ([]Device, error) {
	return slices.Clone(s.devices.of(uid)), nil
}

// RegisterDevice commits the change (when there is one) before it
// returns, and only then does the message copy see the device.
func (s *BoltStore) RegisterDevice(ctx context.Context, uid uint64, device string, nowMs int64) (DeviceReg, error) {
	before := s.devices.of(uid)
	_, changed, reg := registerDevice(slices.Clone(before), device, nowMs)
	if !changed {
		return reg, nil
	}
	// The committer runs one write at a time, and only it changes the
	// registry: computed again inside, it cannot race another login. The
	// memory copy changes in the same commit, so the message copy (also
	// the committer's) sees the device from the next commit on; if the
	// commit fails, it is put back.
	err := s.committer.do(ctx, func(tx *bolt.Tx) error {
		before = s.devices.of(uid)
		devs, changed, r := registerDevice(slices.Clone(before), device, nowMs)
		reg = r
		if !changed {
			return nil
		}
		if reg.Forgot {
			if err := deleteInbox(tx, boxOf(uid, reg.Slot)); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketDevices).Put(u64(uid), encodeDevices(devs)); err != nil {
			return err
		}
		s.devices.set(uid, devs)
		return nil
	})
	if err != nil {
		s.devices.set(uid, before)
		return DeviceReg{}, err
	}
	return reg, nil
}

// deleteInbox empties box.
func deleteInbox(tx *bolt.Tx, box uint64) error {
	inbox := tx.Bucket(bucketInbox)
	c := inbox.Cursor()
	prefix := u64(box)
	for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketInboxCount).Delete(prefix)
}
