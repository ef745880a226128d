package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// The embedded store's send path. A bbolt commit costs two fdatasyncs and
// copy-on-write page work, and sends are most of what a chat server
// writes, so messages go to an append-only log first (wal.go) with one
// fdatasync per batch. The committer copies them into bbolt with its next
// commit; by then most have been delivered and acknowledged, and those
// recipients are left out, so the inbox B-tree mostly sees messages for
// users who are away. Once bbolt records (in the same transaction) how far
// the log is copied, the segments behind that point are removed. On open,
// whatever the log holds past that point is copied before anything else.
//
// Acks go to the same log, in the same batches as sends (one fdatasync for
// both), so an ack is durable when Ack returns; in memory they then take
// effect as before (a logged message is copied without the recipients who
// acked it, an ack of a message already in bbolt is applied with the next
// commit). Replaying the log applies sends and acks in log order. The
// copied-up-to point moves only with copied messages: acks logged after it
// are replayed again after a crash, which changes nothing the second time.
//
// Seqs are handed out by the log writer, one goroutine, so they follow the
// log's order: each new message gets its conversation's next seq just
// before its record is encoded into the batch, appended to the message's
// protobuf bytes (field 8, so no re-encoding), and the logged record
// carries it. The same bytes go to the push, the inboxes and the
// conversation's history. The writer keeps each conversation's last seq in
// memory (convState), read from bbolt the first time the conversation
// sends after a start; a batch whose log write fails gives its seqs back,
// so there is never a gap.
//
// A message's history is copied apart from its inbox copy, and later. The
// inbox copy goes in log order, logCopyDelay after the log write. The
// history copy goes by conversation: each conversation's logged messages
// wait in its convState, and its turn comes once per historyCopyPeriod
// (conversations are spread over historySlots slots, one slot's worth per
// commit or so), when all of them are copied together. A conversation
// sending several messages a period then has its conv_log page written
// once, not once per commit; and the history does not need the bbolt copy
// for durability, as the log holds it until then. History first copies
// whatever of its conversation is only in the log. So bbolt records two
// points: keyWALInbox, how far the inbox copy has gone, and keyWALApplied,
// the end of the last batch whose messages are wholly copied (no further
// than keyWALInbox); only the segments before the latter are removed, and
// recovery replays from it, copying again only the history of what lies
// up to keyWALInbox, and of that only what bbolt lacks (historyCopy).

// walEntry is a logged message waiting to be copied into bbolt (into the
// inboxes, its conversation's history, or both).
type walEntry struct {
	msg         *chatpb.Message
	message     []byte // msg, encoded (with its seq once the log writer gave it one)
	conv        Conversation
	seq         uint64     // 0: none yet, or logged before conversations had seqs
	cs          *convState // conv's seq state; set by the log writer
	msgID       uint64
	sender      uint64
	recipients  []uint64
	clientMsgID string
	// senderBox is the box of the device that sent it (fromDevice): the
	// sender's other devices get it too (withSendingDevice).
	senderBox  uint64
	fromDevice bool
	end        walPos    // the end of its batch in the log
	logged     time.Time // when its batch was synced
	// Guarded by BoltStore.mem:
	taken     bool   // its inbox copy is in the commit under way
	inboxDone bool   // its inbox copy is committed
	histTaken bool   // its history copy is in the commit under way
	histDone  bool   // its history copy is committed (or it has none)
	ackedBy   ackers // users who acked before it was copied
}

// ackers is a set of user ids: a short list, as nearly every message has
// one recipient and one ack, and a map once a big group's acks pile up
// (so neither memory nor the time per ack grows with repeats).
type ackers struct {
	few  []uint64
	many map[uint64]struct{}
	// one holds the first: nearly every message's only acker costs no
	// allocation. (An ackers is never copied: it lives in its walEntry.)
	one [1]uint64
}

const ackersListMax = 16

func (a *ackers) add(uid uint64) {
	switch {
	case a.many != nil:
		a.many[uid] = struct{}{}
	case slices.Contains(a.few, uid):
	case a.few == nil:
		a.one[0] = uid
		a.few = a.one[:]
	case len(a.few) < ackersListMax:
		a.few = append(a.few, uid)
	default:
		a.many = make(map[uint64]struct{}, 2*ackersListMax)
		for _, u := range a.few {
			a.many[u] = struct{}{}
		}
		a.many[uid] = struct{}{}
		a.few = nil
	}
}

func (a *ackers) has(uid uint64) bool {
	if a.many != nil {
		_, ok := a.many[uid]
		return ok
	}
	return slices.Contains(a.few, uid)
}

// appendOp is one AppendMessage (entry) or Ack (ackUser, acked) waiting
// for the log writer.
type appendOp struct {
	entry   *walEntry
	ackUser uint64
	acked   []uint64
	res     AppendResult
	err     error
	done    chan struct{}
	// dupOf is the op of the same batch whose (sender, client_msg_id) this
	// one repeats; its outcome is this one's.
	dupOf *appendOp
}

// maxUnapplied bounds logged messages held in memory before they are
// wholly in bbolt; past it the log writer waits for a commit that copies
// them all.
const maxUnapplied = 100_000

// maxLogBatch bounds the bytes of one log write.
const maxLogBatch = 4 << 20

// logCopyDelay is how long a logged message waits before it is copied
// into bbolt (unless something needs it there sooner): long enough for
// most recipients to have acknowledged it, so that the copy leaves them
// out, short enough to keep little in memory and to replay.
const logCopyDelay = 500 * time.Millisecond

// historyCopyPeriod is how long a logged message waits at most before its
// history is copied into bbolt (unless History or memory needs it
// sooner). A conversation's messages are copied together, so a
// conversation that sends several in that time has its conv_log page
// written once; and the conversations are spread over historySlots slots,
// copied in turn, so that each commit writes an even share.
const historyCopyPeriod = 2 * time.Second

// historySlots is how many slots the conversations are spread over.
const historySlots = 64

// historySlot is c's slot. Conversations next to each other in conv_log
// share one, in runs of historyRun ids (the key sorts by the lower user
// id first), so that a slot's copy writes neighbouring leaves under the
// same branch pages rather than one leaf and its branches per
// conversation. A slot may so hold more than its share (a user with a
// great many conversations); historyTakeMin and the budget in
// takeHistoryLocked spread its copy over the next commits.
func historySlot(c Conversation) int {
	if c.GroupID != 0 {
		return int(c.GroupID / historyRun % historySlots)
	}
	return int(c.A / historyRun % historySlots)
}

const historyRun = 8

// historyTakeMin is how many conversations' history a commit may always
// copy (beside the urgent ones), however few wait.
const historyTakeMin = 64

// historyHeldHigh is how many held messages (see BoltStore.held) make
// each commit copy, without a budget, the history of the conversations
// whose turn came and of those in the next historySlots/8 slots: sends
// faster than the period's worth of memory allows catch up before
// maxUnapplied stops them.
const historyHeldHigh = maxUnapplied / 2

// historyConvMax is how many of one conversation's messages may wait for
// their history copy before it goes with the next commit.
const historyConvMax = 1024

// seqFieldMax is the most bytes Message.seq takes on the wire.
var seqFieldMax = protowire.SizeTag(seqField) + protowire.SizeVarint(math.MaxUint64)

// seqField is Message.seq's field number.
const seqField = 8

// AppendMessage hands m to the log writer, which sets m.Seq before the
// message is logged. Until AppendMessage returns, m is the store's: when
// ctx ends first, the writer may still set m.Seq, so the caller must leave
// m alone (it treats the outcome as unknown anyway).
func (s *BoltStore) AppendMessage(ctx context.Context, m *chatpb.Message, recipients []uint64, clientMsgID string) (AppendResult, error) {
	// Encoded without a seq, with room for the one the writer appends:
	// as cheap as proto.Marshal (which sizes first too), and the writer
	// neither re-encodes nor copies.
	// Room before it too, for the header that makes it a push (Push).
	m.Seq = 0
	const room = protocol.MessagePushRoom
	buf := make([]byte, room, room+proto.Size(m)+seqFieldMax)
	encoded, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(buf[room:], m)
	if err != nil {
		return AppendResult{}, fmt.Errorf("store: encode message: %w", err)
	}
	if len(encoded) == 0 {
		// The log marks acks with an empty message; a real one always
		// has at least its msg_id.
		return AppendResult{}, errors.New("store: empty message")
	}
	// One allocation for the op, its entry and (the usual case) a single
	// recipient: sends are most of what the server allocates, and
	// allocation is what sets how often the collector runs.
	block := &struct {
		op    appendOp
		entry walEntry
		one   [1]uint64
	}{}
	op := &block.op
	op.done, op.entry = s.doneChans.Get().(chan struct{}), &block.entry
	block.entry = walEntry{msg: m, message: encoded, conv: ConversationOf(m), msgID: m.MsgId, sender: m.FromUserId,
		recipients: append(block.one[:0:1], recipients...), clientMsgID: clientMsgID}
	senderCopies := 0
	if from, ok := sendingDevice(ctx); ok {
		block.entry.senderBox, block.entry.fromDevice = from.box, true
		if devs := s.devices.of(m.FromUserId); len(devs) > 1 {
			senderCopies = len(deviceBoxes(nil, m.FromUserId, devs, m.SentAtMs, boxSlot(from.box)))
		}
	}
	if err := s.appends.send(ctx, op); err != nil {
		s.doneChans.Put(op.done) // never queued, never signalled
		return AppendResult{}, err
	}
	select {
	case <-op.done:
		s.doneChans.Put(op.done) // signalled once and drained: reusable
		if !op.res.Duplicate {
			op.res.SenderCopies = senderCopies
			if e := op.res.Encoded; op.err == nil && len(e) > 0 && len(e) <= cap(buf)-room {
				if full := buf[:room+len(e)]; &full[room] == &e[0] {
					// The writer appended the seq in place, as there was room.
					op.res.Push = protocol.MessagePushInPlace(full, room)
				}
			}
		}
		return op.res, op.err
	case <-ctx.Done():
		// It may still be logged; the caller treats the outcome as unknown.
		// The writer's signal will land in the channel's buffer, so this
		// channel is left to the collector, not reused.
		return AppendResult{}, ctx.Err()
	}
}

// newDoneChan makes an appendOp's completion signal: buffered, so that
// the log writer never waits on it, and reusable once drained.
func newDoneChan() any { return make(chan struct{}, 1) }

// writeLog is the log writer: it logs whatever is queued as one batch.
func (s *BoltStore) writeLog() {
	defer close(s.logDone)
	var batch []*appendOp
	var buf []byte
	busy := false // the last batch had company
	for op := range s.appends.ch {
		start := time.Now()
		batch = s.appends.fill(append(batch[:0], op), s.cfg.MaxBatch)
		if s.cfg.LogLinger > 0 && (busy || len(batch) > 1) && len(batch) < s.cfg.MaxBatch {
			// Sends are arriving together: an fdatasync costs tens of
			// microseconds of CPU whatever it carries, so let a few more
			// share this one.
			time.Sleep(time.Until(start.Add(s.cfg.LogLinger)))
			batch = s.appends.fill(batch, s.cfg.MaxBatch)
		}
		busy = len(batch) > 1
		buf = s.logBatch(batch, buf[:0])
		if cap(buf) > maxLogBatch {
			buf = nil // do not keep a rare huge batch's buffer
		}
	}
}

// logBatch answers duplicates, logs the rest with one write and one sync,
// and hands them to the committer. buf is scratch space, returned for reuse.
func (s *BoltStore) logBatch(batch []*appendOp, buf []byte) []byte {
	s.findDuplicates(batch)
	s.refuseBlocked(batch)
	s.convStates(batch)
	var logged []*appendOp
	for _, op := range batch {
		if op.res.Duplicate || op.err != nil {
			continue
		}
		if len(logged) > 0 && len(buf) > maxLogBatch {
			buf = s.flushLog(logged, buf)[:0]
			logged = logged[:0]
		}
		if e := op.entry; e != nil {
			// After any flush above: a failed flush gives back the seqs
			// of its own records, the last ones handed out.
			takeSeq(e)
			buf = appendWALRecord(buf, &walRecord{message: e.message, recipients: e.recipients, clientMsgID: e.clientMsgID,
				senderBox: e.senderBox, fromDevice: e.fromDevice})
		} else {
			buf = appendWALRecord(buf, &walRecord{ackUser: op.ackUser, acked: op.acked})
		}
		logged = append(logged, op)
	}
	if len(logged) > 0 {
		buf = s.flushLog(logged, buf)
	}
	for _, op := range batch {
		if first := op.dupOf; first != nil && first.err != nil {
			// A duplicate of a send whose log write failed: not stored
			// either, so it must not be answered SendOK.
			op.res, op.err = AppendResult{}, first.err
		}
		op.done <- struct{}{}
	}
	s.mem.Lock()
	behind := len(s.held)-s.heldHead > maxUnapplied
	s.mem.Unlock()
	if behind {
		// bbolt is not keeping up (or failing): hold further sends until
		// it catches up rather than grow memory without bound.
		s.forceCopy.Store(true)
		s.forceHistory.Store(true)
		_ = s.committer.do(context.Background(), noWrite)
	}
	return buf
}

func (s *BoltStore) flushLog(ops []*appendOp, buf []byte) []byte {
	start := time.Now()
	end, err := s.log.write(buf)
	if s.cfg.ObserveLog != nil {
		s.cfg.ObserveLog(time.Since(start), len(ops))
	}
	if err != nil {
		// A full disk or failing I/O: nothing was stored, the client may
		// retry (UNAVAILABLE), and the node keeps serving everything else.
		err = fmt.Errorf("store: message log: %w: %w", errUnavailable, err)
		for _, op := range ops {
			op.err = err
			if e := op.entry; e != nil {
				// This batch's seqs are the last handed out: give them
				// back, so the next message takes them and no gap opens.
				e.cs.next = e.cs.last
				e.seq, e.msg.Seq = 0, 0
			}
		}
		return buf
	}
	now := time.Now()
	s.mem.Lock()
	// In log order, so memory agrees with what a replay would do: an ack
	// affects the messages logged before it.
	for _, op := range ops {
		e := op.entry
		if e == nil {
			s.applyAckLocked(op.ackUser, op.acked)
			continue
		}
		e.end, e.logged = end, now
		e.cs.last = e.seq
		s.holdHistoryLocked(e)
		op.res = AppendResult{Message: e.msg, Encoded: e.message}
		s.held = append(s.held, e)
		s.unapplied = append(s.unapplied, e)
		s.unappliedIDs[e.msgID] = e
		for _, uid := range e.recipients {
			s.unappliedFor[uid]++
		}
		if e.fromDevice {
			s.unappliedFor[e.sender]++
		}
		s.unappliedFrom[e.sender]++
		if e.clientMsgID != "" {
			s.dedupPending[senderMsgID{e.sender, e.clientMsgID}] = e
		}
	}
	s.mem.Unlock()
	return buf
}

// findDuplicates marks the ops whose (sender, client_msg_id) was appended
// before: by a message still waiting for bbolt, by one in bbolt, or by an
// earlier op of the same batch. Waiting messages are looked at before
// bbolt: one leaves the waiting set only after its commit, so a message
// missed there is in any bbolt view begun afterwards.
func (s *BoltStore) findDuplicates(batch []*appendOp) {
	var rest []*appendOp
	s.mem.Lock()
	for _, op := range batch {
		e := op.entry
		if e == nil || e.clientMsgID == "" { // an ack, or nothing to dedup
			continue
		}
		if first := s.dedupPending[senderMsgID{e.sender, e.clientMsgID}]; first != nil {
			op.res = AppendResult{Message: first.msg, Duplicate: true}
			continue
		}
		rest = append(rest, op)
	}
	s.mem.Unlock()
	if len(rest) == 0 {
		return
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		dedup, msgs := tx.Bucket(bucketDedup), tx.Bucket(bucketMessages)
		for _, op := range rest {
			e := op.entry
			v := dedup.Get(dedupKey(e.sender, e.clientMsgID))
			if v == nil {
				continue
			}
			first := new(chatpb.Message)
			if err := proto.Unmarshal(msgs.Get(v), first); err != nil {
				op.err = fmt.Errorf("store: dedup message: %w", err)
				continue
			}
			op.res = AppendResult{Message: first, Duplicate: true}
		}
		return nil
	})
	seen := map[senderMsgID]*appendOp{}
	for _, op := range rest {
		if err != nil {
			op.err = fmt.Errorf("store: dedup: %w", err)
			continue
		}
		if op.res.Duplicate || op.err != nil {
			continue
		}
		key := senderMsgID{op.entry.sender, op.entry.clientMsgID}
		if first := seen[key]; first != nil {
			// Settled once first is logged (settleDuplicates): its write
			// may yet fail, and then this one was not stored either.
			op.res, op.dupOf = AppendResult{Message: first.entry.msg, Duplicate: true}, first
			continue
		}
		seen[key] = op
	}
}

// takeSeq gives e its conversation's next seq, in the encoded message
// too: appending a field to protobuf bytes is a valid encoding of the
// message with it set. Log writer only, after convStates.
func takeSeq(e *walEntry) {
	e.cs.next++
	e.seq = e.cs.next
	e.msg.Seq = e.seq
	e.message = protowire.AppendVarint(protowire.AppendTag(e.message, seqField, protowire.VarintType), e.seq)
}

// convStates points each new message of the batch at its conversation's
// seq state, reading the last seq from bbolt for conversations without
// state in memory: with nothing of theirs waiting to be copied, bbolt has
// it (recovery copied the whole log before the store served anything).
// Log writer only: it alone adds and removes states, so it reads the map
// without the lock.
func (s *BoltStore) convStates(batch []*appendOp) {
	// First, before this batch points at any state: a state dropped now
	// has nothing pending and no seq in flight.
	s.dropConvStates()
	var missing []*appendOp
	for _, op := range batch {
		e := op.entry
		if e == nil || op.res.Duplicate || op.err != nil {
			continue
		}
		if e.cs = s.convs[e.conv]; e.cs == nil {
			missing = append(missing, op)
		}
	}
	if len(missing) == 0 {
		return
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, op := range missing {
			e := op.entry
			if e.cs = s.convs[e.conv]; e.cs != nil {
				continue // read for an earlier message of this batch
			}
			last := storedLastSeq(tx, convKey(e.conv))
			e.cs = &convState{next: last, last: last, conv: e.conv, slot: historySlot(e.conv)}
			s.mem.Lock()
			s.convs[e.conv] = e.cs
			s.mem.Unlock()
		}
		return nil
	})
	if err != nil {
		for _, op := range missing {
			if op.entry.cs == nil {
				op.err = fmt.Errorf("store: conversation seq: %w", err)
			}
		}
	}
}

// dropConvStates bounds the seq states kept: past s.maxConvs it drops
// some whose conversation has no history waiting for bbolt, a bounded
// number per batch. Log writer only, between batches (every state's next is its
// last then).
func (s *BoltStore) dropConvStates() {
	excess := len(s.convs) - s.maxConvs
	if excess <= 0 {
		return
	}
	drop, visit := excess+64, 4*(excess+64)
	s.mem.Lock()
	defer s.mem.Unlock()
	for c, cs := range s.convs {
		if drop == 0 || visit == 0 {
			return
		}
		visit--
		if len(cs.hist) == 0 {
			delete(s.convs, c)
			drop--
		}
	}
}

// holdHistoryLocked keeps e with its conversation until its history is
// copied, and puts the conversation in its slot (or, past
// historyConvMax waiting, among the urgent). s.mem is held.
func (s *BoltStore) holdHistoryLocked(e *walEntry) {
	if e.seq == 0 {
		e.histDone = true // no history to copy
		return
	}
	cs := e.cs
	cs.hist = append(cs.hist, e)
	s.countHistoryLocked(e, 1)
	if !cs.queued {
		s.histSlots[cs.slot] = append(s.histSlots[cs.slot], cs)
		cs.queued = true
		s.histQueued++
	}
	if len(cs.hist)-cs.histTaken >= historyConvMax {
		s.urgeHistoryLocked(cs)
	}
}

// countHistoryLocked adds d to histFor of e's sender and recipients.
// s.mem is held.
func (s *BoltStore) countHistoryLocked(e *walEntry, d int) {
	if s.histFor == nil {
		s.histFor = map[uint64]int{}
	}
	add := func(uid uint64) {
		if s.histFor[uid] += d; s.histFor[uid] <= 0 {
			delete(s.histFor, uid)
		}
	}
	add(e.sender)
	for _, uid := range e.recipients {
		if uid != e.sender {
			add(uid)
		}
	}
}

// pendingReadLocked is the highest seq uid sent from a device in c whose
// history (and so whose read mark, historyCopy.readBy) is not in bbolt
// yet; 0 if none. s.mem is held.
func (s *BoltStore) pendingReadLocked(uid uint64, c Conversation) uint64 {
	cs := s.convs[c]
	if cs == nil {
		return 0
	}
	for i := len(cs.hist) - 1; i >= 0; i-- {
		if e := cs.hist[i]; e.fromDevice && e.sender == uid {
			return e.seq
		}
	}
	return 0
}

// urgeHistoryLocked makes the next commit copy cs's history. s.mem is held.
func (s *BoltStore) urgeHistoryLocked(cs *convState) {
	if !cs.urgent {
		s.histUrgent = append(s.histUrgent, cs)
		cs.urgent = true
	}
}

// takePending is the committer's lazy write: the logged messages and the
// acks waiting for the inboxes, the history of the conversations whose
// turn it is, and the position reached in the log.
func (s *BoltStore) takePending() *writeOp {
	all := s.forceCopy.Swap(false)
	allHistory := s.forceHistory.Swap(false)
	now := time.Now()
	cutoff := now.Add(-logCopyDelay)
	s.mem.Lock()
	// unapplied is in log order, so the old enough ones are a prefix.
	n := len(s.unapplied)
	if !all {
		n, _ = slices.BinarySearchFunc(s.unapplied, cutoff, func(e *walEntry, t time.Time) int {
			return e.logged.Compare(t)
		})
	}
	// Copy out the taken prefix (one commit interval's worth) and shift
	// the rest down in place, rather than copying the rest (up to
	// logCopyDelay's worth) to a new array every commit.
	entries := slices.Clone(s.unapplied[:n])
	clear(s.unapplied[copy(s.unapplied, s.unapplied[n:]):])
	s.unapplied = s.unapplied[:len(s.unapplied)-n]
	for _, e := range entries {
		e.taken = true
	}
	acks := s.acks
	s.acks, s.ackCount = nil, 0
	s.takenAcks = acks
	convs, hist := s.takeHistoryLocked(now, allHistory)
	applied := s.appliedAfterLocked()
	s.mem.Unlock()
	if len(entries) == 0 && len(acks) == 0 && len(hist) == 0 {
		return nil
	}
	var h *historyCopy
	trimmed, histTrimmed := 0, 0
	fn := func(tx *bolt.Tx) error {
		var err error
		h = s.newHistoryCopy(tx, false)
		if trimmed, histTrimmed, err = s.copyLogged(tx, entries, hist, h, acks, applied); err != nil {
			return err
		}
		for uid, ids := range acks {
			if err := applyAcks(tx, uid, ids); err != nil {
				return err
			}
		}
		return nil
	}
	after := func(err error) {
		s.mem.Lock()
		s.takenAcks = nil
		if err != nil {
			// Keep them for the next commit.
			for _, e := range entries {
				e.taken = false
			}
			s.unapplied = append(entries, s.unapplied...)
			s.restoreAcks(acks)
			for _, cs := range convs {
				for _, e := range cs.hist[:cs.histTaken] {
					e.histTaken = false
				}
				cs.histTaken = 0
				if !cs.queued {
					// Its turn came: again with the next commits.
					s.histDue = append(s.histDue, cs)
					cs.queued = true
					s.histQueued++
				}
			}
			s.mem.Unlock()
			return
		}
		for _, e := range entries {
			e.inboxDone = true
			delete(s.unappliedIDs, e.msgID)
			for _, uid := range e.recipients {
				if s.unappliedFor[uid]--; s.unappliedFor[uid] <= 0 {
					delete(s.unappliedFor, uid)
				}
			}
			if e.fromDevice {
				if s.unappliedFor[e.sender]--; s.unappliedFor[e.sender] <= 0 {
					delete(s.unappliedFor, e.sender)
				}
			}
			if s.unappliedFrom[e.sender]--; s.unappliedFrom[e.sender] <= 0 {
				delete(s.unappliedFrom, e.sender)
			}
			if e.clientMsgID != "" {
				key := senderMsgID{e.sender, e.clientMsgID}
				if s.dedupPending[key] == e {
					delete(s.dedupPending, key)
				}
			}
		}
		for _, cs := range convs {
			for _, e := range cs.hist[:cs.histTaken] {
				e.histTaken, e.histDone = false, true
				s.countHistoryLocked(e, -1)
			}
			rest := copy(cs.hist, cs.hist[cs.histTaken:])
			clear(cs.hist[rest:])
			cs.hist, cs.histTaken = cs.hist[:rest], 0
		}
		s.releaseHeldLocked()
		s.mem.Unlock()
		h.keepRanges()
		if applied != s.applied {
			s.applied = applied
			s.removeLogBelow(applied.seg)
		}
		if trimmed > 0 && s.cfg.ObserveTrim != nil {
			s.cfg.ObserveTrim(trimmed)
		}
		if histTrimmed > 0 && s.cfg.ObserveHistoryTrim != nil {
			s.cfg.ObserveHistoryTrim(histTrimmed)
		}
	}
	return &writeOp{fn: fn, after: after}
}

// takeHistoryLocked takes for this commit the pending history of the
// urgent conversations, and of those whose slot came round (every slot
// once per historyPeriod) in the order their turn came, as many as the
// commit's share of the waiting conversations (twice the average, at
// least historyTakeMin), so that commits share the work evenly even
// when slots are uneven; with all, of every conversation. It returns the
// conversations and their messages, grouped by conversation in seq order
// and the conversations in key order. s.mem is held; committer goroutine
// only.
func (s *BoltStore) takeHistoryLocked(now time.Time, all bool) (convs []*convState, hist []*walEntry) {
	take := func(cs *convState) bool {
		if cs.histTaken > 0 || len(cs.hist) == 0 {
			return false // taken from another list just now, or copied already
		}
		for _, e := range cs.hist {
			e.histTaken = true
		}
		cs.histTaken = len(cs.hist)
		convs = append(convs, cs)
		return true
	}
	for _, cs := range s.histUrgent {
		cs.urgent = false
		take(cs)
	}
	clear(s.histUrgent)
	s.histUrgent = s.histUrgent[:0]
	// The slots whose turn came since the last commit: first, and the
	// n-1 after it.
	first, n := int64(0), int64(0)
	period := s.cfg.historyPeriod
	budget := math.MaxInt
	if period > 0 {
		// On the monotonic clock: a step of the wall clock neither
		// skips turns nor holds them back.
		tick := int64(now.Sub(s.histEpoch) / max(period/historySlots, 1))
		n = min(max(tick-s.histTick, 0), historySlots)
		first = tick - n + 1
		s.histTick = max(s.histTick, tick)
		if len(s.held)-s.heldHead > historyHeldHigh {
			// Those whose turn comes next, too: they waited longest.
			n = min(n+historySlots/8, historySlots)
		} else {
			elapsed := min(max(now.Sub(s.histTakenAt), 0), period)
			budget = max(historyTakeMin, int(2*float64(s.histQueued)*float64(elapsed)/float64(period)))
		}
		s.histTakenAt = now
	}
	if all {
		first, n, budget = 0, historySlots, math.MaxInt
	}
	for i := range n {
		slot := &s.histSlots[(first+i)%historySlots]
		s.histDue = append(s.histDue, *slot...)
		clear(*slot)
		*slot = (*slot)[:0]
	}
	for ; budget > 0 && s.histDueHead < len(s.histDue); s.histDueHead++ {
		cs := s.histDue[s.histDueHead]
		s.histDue[s.histDueHead] = nil
		cs.queued = false
		s.histQueued--
		if take(cs) {
			budget--
		}
	}
	if s.histDueHead > len(s.histDue)/2 {
		rest := copy(s.histDue, s.histDue[s.histDueHead:])
		clear(s.histDue[rest:])
		s.histDue, s.histDueHead = s.histDue[:rest], 0
	}
	// In key order, so that neighbouring conversations' puts find their
	// pages and branches at hand.
	slices.SortFunc(convs, func(a, b *convState) int { return compareConvKeys(a.conv, b.conv) })
	hist = hist[:0]
	for _, cs := range convs {
		hist = append(hist, cs.hist[:cs.histTaken]...)
	}
	return convs, hist
}

// compareConvKeys orders conversations as their convKeys sort.
func compareConvKeys(a, b Conversation) int {
	if a.GroupID != 0 || b.GroupID != 0 {
		// 'd' sorts before 'g': a direct conversation has GroupID 0.
		return cmp.Compare(a.GroupID, b.GroupID)
	}
	return cmp.Or(cmp.Compare(a.A, b.A), cmp.Compare(a.B, b.B))
}

// appliedAfterLocked is where the log will be copied up to once the
// commit under way is: the end of the last whole batch of held messages
// whose inbox and history copies are both done or in this commit. (A
// batch's messages share its end, so a batch only partly copied keeps
// the position before it.) s.mem is held.
func (s *BoltStore) appliedAfterLocked() walPos {
	pos := s.applied
	held := s.held[s.heldHead:]
	for i, e := range held {
		if !(e.inboxDone || e.taken) || !(e.histDone || e.histTaken) {
			break
		}
		if i+1 == len(held) || held[i+1].end != e.end {
			pos = e.end
		}
	}
	return pos
}

// releaseHeldLocked lets go of the held messages now wholly in bbolt.
// s.mem is held.
func (s *BoltStore) releaseHeldLocked() {
	for s.heldHead < len(s.held) {
		e := s.held[s.heldHead]
		if !e.inboxDone || !e.histDone {
			break
		}
		s.held[s.heldHead] = nil
		s.heldHead++
	}
	if s.heldHead > len(s.held)/2 {
		// Shift down (in place, and only once half is gone, so each
		// message is moved about once).
		rest := copy(s.held, s.held[s.heldHead:])
		clear(s.held[rest:])
		s.held, s.heldHead = s.held[:rest], 0
	}
}

// copyLogged copies logged messages into bbolt: entries into the inboxes
// (see applyMessage), hist into their conversations' history (through h),
// and records, in the same transaction, how far the inbox copy and the
// whole copy (applied) have gone. It returns how many older messages full
// inboxes lost, and how many retention dropped from conversations.
func (s *BoltStore) copyLogged(tx *bolt.Tx, entries, hist []*walEntry, h *historyCopy,
	acks map[uint64]map[uint64]struct{}, applied walPos) (trimmed, histTrimmed int, err error) {
	for _, e := range entries {
		n, err := s.applyMessage(tx, e, acks)
		if err != nil {
			return 0, 0, err
		}
		trimmed += n
	}
	for _, e := range hist {
		if err := h.add(e); err != nil {
			return 0, 0, err
		}
	}
	if histTrimmed, err = h.finish(s.historyCutoffMs(time.Now())); err != nil {
		return 0, 0, err
	}
	meta := tx.Bucket(bucketMeta)
	if len(entries) > 0 {
		if err := meta.Put(keyWALInbox, entries[len(entries)-1].end.bytes()); err != nil {
			return 0, 0, err
		}
	}
	if applied != s.applied {
		if err := meta.Put(keyWALApplied, applied.bytes()); err != nil {
			return 0, 0, err
		}
	}
	return trimmed, histTrimmed, nil
}

// restoreAcks puts back acks whose commit failed. s.mem is held.
func (s *BoltStore) restoreAcks(acks map[uint64]map[uint64]struct{}) {
	for uid, ids := range acks {
		if s.acks == nil {
			s.acks = make(map[uint64]map[uint64]struct{})
		}
		m := s.acks[uid]
		if m == nil {
			s.acks[uid] = ids
			s.ackCount += len(ids)
			continue
		}
		for id := range ids {
			if _, dup := m[id]; !dup {
				m[id] = struct{}{}
				s.ackCount++
			}
		}
	}
}

// applyLogFor makes sure every message logged for uid so far is in bbolt,
// so that an inbox read sees them all, trimmed as bbolt trims.
func (s *BoltStore) applyLogFor(ctx context.Context, uid uint64) error {
	s.mem.Lock()
	waiting := s.unappliedFor[uid] > 0
	s.mem.Unlock()
	if !waiting {
		return nil
	}
	s.forceCopy.Store(true)
	return s.committer.do(ctx, noWrite)
}

// applyLogForConv makes sure the history of every message logged in
// conversation c so far is in bbolt, so that a history read sees them all.
// It copies c's alone, with the next commit.
func (s *BoltStore) applyLogForConv(ctx context.Context, c Conversation) error {
	s.mem.Lock()
	cs := s.convs[c]
	if cs == nil || len(cs.hist) == 0 {
		s.mem.Unlock()
		return nil
	}
	upTo := cs.hist[len(cs.hist)-1].seq
	s.urgeHistoryLocked(cs)
	s.mem.Unlock()
	if err := s.committer.do(ctx, noWrite); err != nil {
		return err
	}
	s.mem.Lock()
	missing := len(cs.hist) > 0 && cs.hist[0].seq <= upTo
	s.mem.Unlock()
	if missing {
		// The copy's commit failed (noWrite succeeds on its own): a page
		// read now could skip a seq.
		return fmt.Errorf("store: history copy: %w", errUnavailable)
	}
	return nil
}

// removeLogBelow removes the segments before seg, all copied into bbolt.
func (s *BoltStore) removeLogBelow(seg uint64) {
	for ; s.logLowest < seg; s.logLowest++ {
		err := os.Remove(segmentPath(s.logDir(), s.logLowest))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return // try again after the next commit
		}
	}
}

func (s *BoltStore) logDir() string { return s.cfg.Path + ".log" }

// recoverLog copies into bbolt whatever the log holds past the point bbolt
// recorded (messages whose SendOK went out before a crash, and acks that
// had returned), in log order, then removes the old segments and starts a
// new one. Records up to keyWALInbox had their inbox copy (and acks their
// effect) already: only their history may be missing, and historyCopy
// puts back only what is.
func (s *BoltStore) recoverLog() error {
	dir := s.logDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("store: message log: %w", err)
	}
	var applied, inboxAt walPos
	if err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		applied = parseWALPos(meta.Get(keyWALApplied))
		inboxAt = applied
		if v := meta.Get(keyWALInbox); v != nil {
			inboxAt = later(inboxAt, parseWALPos(v))
		}
		return nil
	}); err != nil {
		return err
	}
	// chunk holds records in log order: a message entry, or an ack (nil
	// entry) of ack.acked by ack.ackUser; inboxDone says the record is
	// at or before inboxAt.
	type recovered struct {
		entry     *walEntry
		ack       walRecord
		end       walPos
		inboxDone bool
	}
	var chunk []recovered
	cutoffMs := s.historyCutoffMs(time.Now())
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			h := s.newHistoryCopy(tx, true)
			for _, r := range chunk {
				if r.entry != nil {
					if err := h.add(r.entry); err != nil {
						return err
					}
					if r.inboxDone {
						continue
					}
					if _, err := s.applyMessage(tx, r.entry, nil); err != nil {
						return err
					}
					continue
				}
				if r.inboxDone {
					continue
				}
				ids := make(map[uint64]struct{}, len(r.ack.acked))
				for _, id := range r.ack.acked {
					ids[id] = struct{}{}
				}
				if err := applyAcks(tx, r.ack.ackUser, ids); err != nil {
					return err
				}
			}
			if _, err := h.finish(cutoffMs); err != nil {
				return err
			}
			end := chunk[len(chunk)-1].end
			meta := tx.Bucket(bucketMeta)
			if err := meta.Put(keyWALInbox, later(inboxAt, end).bytes()); err != nil {
				return err
			}
			return meta.Put(keyWALApplied, end.bytes())
		})
		if err == nil {
			applied = chunk[len(chunk)-1].end
		}
		chunk = chunk[:0]
		return err
	}
	last, err := replayWAL(dir, applied, func(r walRecord, end walPos) error {
		inboxDone := !inboxAt.before(end)
		if r.isAck() {
			chunk = append(chunk, recovered{ack: r, end: end, inboxDone: inboxDone})
		} else {
			m := new(chatpb.Message)
			if err := proto.Unmarshal(r.message, m); err != nil {
				return fmt.Errorf("message at %d:%d: %w", end.seg, end.off, err)
			}
			// Records logged before conversations had seqs have none:
			// their messages go to the inboxes only (historyCopy.add).
			chunk = append(chunk, recovered{entry: &walEntry{msg: m, message: r.message, conv: ConversationOf(m),
				seq: m.Seq, msgID: m.MsgId, sender: m.FromUserId, recipients: r.recipients,
				clientMsgID: r.clientMsgID, senderBox: r.senderBox, fromDevice: r.fromDevice}, end: end, inboxDone: inboxDone})
		}
		if len(chunk) == 4096 {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return fmt.Errorf("store: recover message log: %w", err)
	}
	segs, err := listSegments(dir)
	if err != nil {
		return fmt.Errorf("store: message log: %w", err)
	}
	for _, seg := range segs {
		if err := os.Remove(segmentPath(dir, seg)); err != nil {
			return fmt.Errorf("store: message log: %w", err)
		}
	}
	s.applied = applied
	s.logLowest = last + 1
	if s.log, err = createWAL(dir, last+1, s.cfg.segmentSize); err != nil {
		return fmt.Errorf("store: message log: %w", err)
	}
	return nil
}
