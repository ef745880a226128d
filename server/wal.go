package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The embedded store's message log: segment files of records, each
//
//	length   uint32 big-endian, of the payload (never zero)
//	checksum uint32 big-endian, CRC-32C of the payload
//	payload  a send: uvarint-prefixed message bytes (never empty), uvarint
//	         recipient count and ids, uvarint-prefixed client_msg_id;
//	         or an ack: a zero byte (an empty message), uvarint user id,
//	         uvarint count and msg ids
//
// Acks are logged beside sends so that one fdatasync makes both durable;
// an empty message marks them, which no send has, so logs written before
// acks were logged read the same. A send's message carries its seq (the
// log writer appends the field before encoding the record), so replay
// puts it back under the same seq; records written before conversations
// had seqs have none, and replay leaves them out of every history.
//
// written in batches, one fdatasync per batch. Segments are preallocated,
// so a sync has no file size to update, and their unwritten tail reads as
// zeros: a zero length, a length past the end or a bad checksum ends the
// segment (a torn tail after a crash). A segment is never appended to after
// a restart or a failed write; the next batch starts a new one.

const (
	walHeaderSize  = 8
	walSegmentSize = 64 << 20
	walSuffix      = ".wal"
)

// walPos is a position in the log: the end of a record.
type walPos struct {
	seg uint64
	off int64
}

func (p walPos) bytes() []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, p.seg), uint64(p.off))
}

// before reports whether p comes before q in the log.
func (p walPos) before(q walPos) bool {
	return p.seg < q.seg || (p.seg == q.seg && p.off < q.off)
}

// later is the later of p and q.
func later(p, q walPos) walPos {
	if p.before(q) {
		return q
	}
	return p
}

func parseWALPos(b []byte) walPos {
	if len(b) != 16 {
		return walPos{}
	}
	return walPos{seg: binary.BigEndian.Uint64(b), off: int64(binary.BigEndian.Uint64(b[8:]))}
}

// walRecord is one logged AppendMessage (message is set) or Ack (it is
// empty, and ackUser acknowledged acked).
type walRecord struct {
	message     []byte // chatpb.Message, protobuf-encoded, with its seq
	recipients  []uint64
	clientMsgID string
	// senderBox (when fromDevice) is the sending device's box. It is
	// logged as one more entry of the recipient list, marked with
	// senderBoxMark: a log from before devices has no such entry.
	senderBox  uint64
	fromDevice bool
	ackUser    uint64 // the box (device.go) that acked
	acked      []uint64
}

// senderBoxMark flags the sending device's box among a record's recipients
// (user ids and boxes stay far below it).
const senderBoxMark = 1 << 63

func (r *walRecord) isAck() bool { return len(r.message) == 0 }

func appendWALRecord(dst []byte, r *walRecord) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, walHeaderSize)...)
	dst = binary.AppendUvarint(dst, uint64(len(r.message)))
	if r.isAck() {
		dst = binary.AppendUvarint(dst, r.ackUser)
		dst = binary.AppendUvarint(dst, uint64(len(r.acked)))
		for _, id := range r.acked {
			dst = binary.AppendUvarint(dst, id)
		}
	} else {
		dst = append(dst, r.message...)
		n := len(r.recipients)
		if r.fromDevice {
			n++
		}
		dst = binary.AppendUvarint(dst, uint64(n))
		for _, uid := range r.recipients {
			dst = binary.AppendUvarint(dst, uid)
		}
		if r.fromDevice {
			dst = binary.AppendUvarint(dst, r.senderBox|senderBoxMark)
		}
		dst = binary.AppendUvarint(dst, uint64(len(r.clientMsgID)))
		dst = append(dst, r.clientMsgID...)
	}
	payload := dst[start+walHeaderSize:]
	binary.BigEndian.PutUint32(dst[start:], uint32(len(payload)))
	binary.BigEndian.PutUint32(dst[start+4:], crc32.Checksum(payload, crc32.MakeTable(crc32.Castagnoli)))
	return dst
}

var errBadWALRecord = errors.New("malformed log record")

func parseWALRecord(p []byte) (walRecord, error) {
	var r walRecord
	take := func() ([]byte, bool) {
		n, k := binary.Uvarint(p)
		if k <= 0 || n > uint64(len(p)-k) {
			return nil, false
		}
		b := p[k : k+int(n)]
		p = p[k+int(n):]
		return b, true
	}
	// ids reads a uvarint count and that many uvarints.
	ids := func() ([]uint64, bool) {
		count, k := binary.Uvarint(p)
		if k <= 0 || count > uint64(len(p)) {
			return nil, false
		}
		p = p[k:]
		out := make([]uint64, 0, count)
		for range count {
			id, k := binary.Uvarint(p)
			if k <= 0 {
				return nil, false
			}
			out = append(out, id)
			p = p[k:]
		}
		return out, true
	}
	msg, ok := take()
	if !ok {
		return r, errBadWALRecord
	}
	if len(msg) == 0 {
		uid, k := binary.Uvarint(p)
		if k <= 0 {
			return r, errBadWALRecord
		}
		p = p[k:]
		if r.acked, ok = ids(); !ok || len(p) != 0 {
			return r, errBadWALRecord
		}
		r.ackUser = uid
		return r, nil
	}
	if r.recipients, ok = ids(); !ok {
		return r, errBadWALRecord
	}
	if n := len(r.recipients); n > 0 && r.recipients[n-1]&senderBoxMark != 0 {
		r.senderBox, r.fromDevice = r.recipients[n-1]&^senderBoxMark, true
		r.recipients = r.recipients[:n-1]
	}
	cmid, ok := take()
	if !ok || len(p) != 0 {
		return r, errBadWALRecord
	}
	r.message, r.clientMsgID = msg, string(cmid)
	return r, nil
}

func segmentPath(dir string, seg uint64) string {
	return filepath.Join(dir, fmt.Sprintf("%016x%s", seg, walSuffix))
}

// listSegments returns the numbers of the segments in dir, ascending.
func listSegments(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var segs []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), walSuffix)
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(name, 16, 64); err == nil {
			segs = append(segs, n)
		}
	}
	slices.Sort(segs)
	return segs, nil
}

// replayWAL calls fn with every intact record after from, in log order,
// and the position after it. It returns the highest segment number seen.
func replayWAL(dir string, from walPos, fn func(r walRecord, end walPos) error) (uint64, error) {
	segs, err := listSegments(dir)
	if err != nil {
		return 0, err
	}
	last := from.seg
	for _, seg := range segs {
		last = max(last, seg)
		if seg < from.seg {
			continue
		}
		data, err := os.ReadFile(segmentPath(dir, seg))
		if err != nil {
			return last, err
		}
		off := int64(0)
		if seg == from.seg {
			off = from.off
		}
		for off+walHeaderSize <= int64(len(data)) {
			n := int64(binary.BigEndian.Uint32(data[off:]))
			sum := binary.BigEndian.Uint32(data[off+4:])
			if n == 0 || off+walHeaderSize+n > int64(len(data)) {
				break
			}
			payload := data[off+walHeaderSize : off+walHeaderSize+n]
			if crc32.Checksum(payload, crc32.MakeTable(crc32.Castagnoli)) != sum {
				break
			}
			r, err := parseWALRecord(payload)
			if err != nil {
				break
			}
			off += walHeaderSize + n
			if err := fn(r, walPos{seg: seg, off: off}); err != nil {
				return last, err
			}
		}
	}
	return last, nil
}

// messageLog appends batches of records to the newest segment. It is used
// by one goroutine at a time.
type messageLog struct {
	dir     string
	segSize int64
	f       *os.File
	pos     walPos // where the next record goes
	// broken is set after a failed write: the segment may hold a partial
	// batch, so the next batch starts a new one.
	broken bool
}

// errLogWrite marks a failed log write: a full disk or an I/O error. The
// batch was not answered and the log holds none of it, so its senders may
// retry.
var errLogWrite = errors.New("message log write failed")

// createWAL starts a log whose first segment is seg.
func createWAL(dir string, seg uint64, segSize int64) (*messageLog, error) {
	l := &messageLog{dir: dir, segSize: segSize}
	if err := l.open(seg); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *messageLog) open(seg uint64) error {
	path := segmentPath(l.dir, seg)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	// Preallocate so each batch's fdatasync has no size change to log.
	// Filesystems without fallocate still work, a little slower.
	_ = unix.Fallocate(int(f.Fd()), 0, 0, l.segSize)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = syncDir(l.dir)
	}
	if err != nil {
		// Nothing was answered from it: the next attempt starts it afresh.
		f.Close()
		_ = os.Remove(path)
		return err
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.pos, l.broken = f, walPos{seg: seg}, false
	return nil
}

// write appends buf (whole records) and syncs it; it returns the position
// after the last record.
func (l *messageLog) write(buf []byte) (walPos, error) {
	if l.broken || (l.pos.off > 0 && l.pos.off+int64(len(buf)) > l.segSize) {
		if err := l.open(l.pos.seg + 1); err != nil {
			l.broken = true
			return walPos{}, err
		}
	}
	_, err := l.f.WriteAt(buf, l.pos.off)
	if err == nil {
		err = unix.Fdatasync(int(l.f.Fd()))
	}
	if err != nil {
		l.discardFailed()
		return walPos{}, fmt.Errorf("%w: %w", errLogWrite, err)
	}
	l.pos.off += int64(len(buf))
	return l.pos, nil
}

// discardFailed undoes what a failed write may have left. Its senders were
// told it failed, so a restart must not replay part of it: the segment is
// cut back to its last answered record. A segment with none is removed
// outright, and the next write makes it again under the same number — so
// a disk that stays full does not fill its directory with empty segments,
// one per refused send.
func (l *messageLog) discardFailed() {
	l.broken = true
	if l.pos.off > 0 {
		// Best effort: if the cut fails the tail is a torn batch that
		// replay may read, the duplicate risk any log has after an I/O
		// error; the next batch still starts a fresh segment.
		if err := l.f.Truncate(l.pos.off); err == nil {
			_ = unix.Fdatasync(int(l.f.Fd()))
		}
		return
	}
	l.f.Close()
	l.f = nil
	if os.Remove(segmentPath(l.dir, l.pos.seg)) == nil {
		_ = syncDir(l.dir)
		l.pos.seg-- // open(seg+1) makes it again
	}
}

func (l *messageLog) close() error {
	if l.f == nil {
		return nil
	}
	return l.f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
