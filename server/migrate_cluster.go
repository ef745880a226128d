package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// Moving a one-Redis keyspace onto a Redis Cluster, offline
// (`loopchat redis-migrate`; docs/operations.md, "Moving from one Redis to
// Redis Cluster"). The two layouts hold the same data under other names
// (store_redis.go, store_rcluster.go): most keys are copied as they are
// under their cluster name; inboxes take their message bodies along (the
// shared msg:<id> becomes a body per box); dedup entries move under their
// conversation's tag; the store epoch is kept, so tokens issued before
// stay valid, and its per-slot copies are written (epoch_cluster.go).
//
// Every node must be stopped: the copy reads the source while nothing
// writes it. The target records the migration in P{meta}:migration (the
// source's epoch, "copying" or "done"), and gets its epoch only after
// every key is copied, so a node started on a half-copied cluster makes an
// epoch of its own, and the migration then refuses to go on. Each key is
// written again from what the source holds (deleted, then filled), so a
// run cut off, which may leave a key half written, is completed by
// running it again. (go-redis has no MULTI across slots in one pipeline.)

// ErrMigrateLiveNodes: the source Redis shows loopchat nodes that are
// still running; stop them first (or --force).
var ErrMigrateLiveNodes = errors.New("loopchat nodes are still running on the source Redis")

// ErrMigrateTargetInUse: the cluster already holds keys under the target
// prefix, or another store epoch, that this migration did not write.
var ErrMigrateTargetInUse = errors.New("the target cluster already holds loopchat data")

// ErrMigrateSource: the source is not a keyspace this code can move (no
// store epoch, or another schema).
var ErrMigrateSource = errors.New("the source Redis cannot be migrated")

// ErrMigrateCheck: after the copy, the key counts of some kind differ
// between the source and the cluster.
var ErrMigrateCheck = errors.New("the migrated key counts differ")

// MigrateConfig configures MigrateToCluster.
type MigrateConfig struct {
	// From is the one Redis the nodes ran on; To the Redis Cluster.
	From redis.UniversalClient
	To   *redis.ClusterClient
	// FromPrefix and ToPrefix start every key ("": "loopchat:").
	FromPrefix, ToPrefix string
	// DryRun checks both sides and counts the source's keys, writing
	// nothing.
	DryRun bool
	// Force copies even though the source shows live nodes, or the target
	// holds data or another epoch (keys of the same names are overwritten,
	// others left alone), or was migrated already (copied again).
	Force bool
	// Batch is how many keys one SCAN step asks for (0: 500).
	Batch int
	// LiveWindow: a presence instance whose heartbeat is younger than
	// this is a live node (0: 10 s, three times the default node TTL).
	LiveWindow time.Duration
	// Log gets progress lines (nil: none).
	Log *slog.Logger

	// stopAfter, in tests, fails the copy after that many SCAN steps, as
	// a crash would.
	stopAfter int
}

// MigrateReport is what a migration found and did.
type MigrateReport struct {
	// Epoch is the source's store epoch, kept on the cluster.
	Epoch string
	// Resumed: a run cut off before was completed. AlreadyDone: the
	// cluster was migrated from this source before; nothing was written.
	Resumed, AlreadyDone, DryRun bool
	// Kinds counts each kind of key, sorted by name.
	Kinds []MigrateCount
	// Unknown names (some of) the source keys under the prefix that no
	// loopchat layout explains; they are not copied.
	Unknown []string
	// LiveNodes says what showed nodes still running on the source: the
	// run went on only as a dry run, or with Force.
	LiveNodes []string
	// Mismatches describes each kind whose count on the cluster differs
	// from what the check expected (then the error is ErrMigrateCheck).
	Mismatches []string
}

// MigrateCount is one kind of key in a MigrateReport.
type MigrateCount struct {
	Kind string
	// Source: keys of the kind in the one Redis (the final scan).
	Source int64
	// Copied: keys written to the cluster; for "messages", the bodies
	// written into boxes.
	Copied int64
	// Dropped: keys (or for "messages", inbox entries) that could not be
	// carried: see docs/operations.md.
	Dropped int64
	// Target: keys of the kind on the cluster at the check, and Want what
	// the check expected there (-1: not compared).
	Target, Want int64
}

// copyHow is how a source key is carried.
type copyHow int

const (
	howSkip    copyHow = iota // counted, not copied as a key
	howPlain                  // copied whole under its cluster name, with its TTL
	howGroup                  // howPlain, plus the group's join counter (mseq)
	howInbox                  // the inbox and its bodies
	howDedup                  // under its conversation's tag, marked done
	howUnknown                // not a loopchat key
)

// Kinds of keys, as the report names them.
const (
	kindMessages = "messages"
	kindInboxes  = "inboxes"
	kindBodies   = "inbox bodies"
	kindDedup    = "dedup"
	kindGroups   = "groups"
	kindEpoch    = "epoch"
	kindSchema   = "schema"
	kindRegistry = "registry"
	kindUnknown  = "unknown"
	kindCopies   = "epoch copies"
	kindState    = "epoch state"
)

// userTagKinds are the keys under a user's tag, by suffix, named the same
// in both layouts, with their kind.
var userTagKinds = map[string]string{
	"convs": "conversation indexes", "devices": "devices", "devgen": "device generations",
	"online": "online devices", "read": "read state", "presence": "presence", "pnodes": "presence nodes",
	"blocked": "blocks",
}

// convKinds are a conversation's keys, by suffix, named the same in both
// layouts.
var convKinds = map[string]string{"seq": "conversation seqs", "log": "conversation logs", "first": "conversation firsts"}

// kindsNotOnTarget are the source kinds the cluster holds no keys of:
// carried in other keys, written by the migration itself, or left behind.
var kindsNotOnTarget = map[string]bool{kindMessages: true, "member:seq": true, "epoch quiet": true,
	kindRegistry: true, kindUnknown: true}

// isID reports whether s is a decimal id.
func isID(s string) bool {
	_, err := strconv.ParseUint(s, 10, 64)
	return err == nil && s != ""
}

// classifyOneRedis says what a one-Redis key (its name without the
// prefix) is, its cluster name (without the prefix) and how it is carried.
func classifyOneRedis(rest string) (kind, dst string, how copyHow) {
	switch rest {
	case "user:seq", "friend:seq", "group:seq":
		return rest, "{meta}:" + rest, howPlain
	case "member:seq":
		// The cluster counts join order in each group's record (mseq).
		return rest, "", howSkip
	case "schema":
		return kindSchema, "", howSkip // written with the epoch, last
	case "epoch":
		return kindEpoch, "", howSkip
	case "epoch:quiet":
		// Only live nodes wait for it; there are none.
		return "epoch quiet", "", howSkip
	case "token-secret":
		return "token secret", rest, howPlain
	case "presence:nodes", "presence:dead":
		return "presence instances", "{meta}:" + rest, howPlain
	case "nodes":
		return kindRegistry, "", howSkip
	}
	head, tail, _ := strings.Cut(rest, ":")
	switch head {
	case "user":
		uid, sub, _ := strings.Cut(tail, ":")
		if isID(uid) && sub == "" {
			return "users", "{u:" + uid + "}:user", howPlain
		}
		if isID(uid) && sub == "groups" {
			return "user groups", "{u:" + uid + "}:groups", howPlain
		}
	case "username":
		if tail != "" {
			return "usernames", "{n:" + tail + "}:username", howPlain
		}
	case "friends":
		if isID(tail) {
			return "friends", "{u:" + tail + "}:friends", howPlain
		}
	case "group":
		gid, sub, _ := strings.Cut(tail, ":")
		if isID(gid) {
			switch sub {
			case "":
				return kindGroups, "{c:g" + gid + "}:group", howGroup
			case "members", "roles", "joined":
				return "group " + sub, "{c:g" + gid + "}:group:" + sub, howPlain
			}
		}
	case "inbox":
		uid, slot, withSlot := strings.Cut(tail, ":")
		if isID(uid) && (!withSlot || isID(slot)) {
			dst = "{u:" + uid + "}:inbox"
			if withSlot {
				dst += ":" + slot
			}
			return kindInboxes, dst, howInbox
		}
	case "msg":
		if len(tail) == 16 {
			return kindMessages, "", howSkip
		}
	case "dedup":
		if uid, _, ok := strings.Cut(tail, ":"); ok && isID(uid) {
			return kindDedup, "", howDedup
		}
	case "session":
		if isID(tail) {
			return "sessions", "{u:" + tail + "}:session", howPlain
		}
	case "node", "nodenum":
		return kindRegistry, "", howSkip
	case "presence":
		what, inst, _ := strings.Cut(tail, ":")
		if (what == "node" || what == "dead") && inst != "" {
			return "presence instances", "{i:" + inst + "}:presence:" + what, howPlain
		}
	}
	if tag, sub, ok := cutTag(rest); ok {
		switch {
		case strings.HasPrefix(tag, "u:") && isID(tag[2:]) && userTagKinds[sub] != "":
			return userTagKinds[sub], rest, howPlain
		case strings.HasPrefix(tag, "c:") && convKinds[sub] != "":
			return convKinds[sub], rest, howPlain
		}
	}
	return kindUnknown, "", howUnknown
}

// cutTag splits "{tag}:rest" into tag and rest.
func cutTag(name string) (tag, rest string, ok bool) {
	if !strings.HasPrefix(name, "{") {
		return "", "", false
	}
	tag, rest, ok = strings.Cut(name[1:], "}:")
	return tag, rest, ok
}

// classifyCluster says what a key of the cluster layout (its name without
// the prefix) is, in the kinds classifyOneRedis names.
func classifyCluster(rest string) string {
	switch rest {
	case "token-secret":
		return "token secret"
	case "nodes":
		return kindRegistry
	}
	if h, _, _ := strings.Cut(rest, ":"); h == "node" || h == "nodenum" {
		return kindRegistry
	}
	tag, sub, ok := cutTag(rest)
	if !ok {
		return kindUnknown
	}
	switch {
	case tag == "meta":
		switch sub {
		case "user:seq", "friend:seq", "group:seq":
			return sub
		case "presence:nodes", "presence:dead":
			return "presence instances"
		case "epoch":
			return kindEpoch
		case "schema":
			return kindSchema
		}
		return kindState // epoch:gen, epoch:copied, epoch:quiet, migration
	case strings.HasPrefix(tag, "u:"):
		base, _, _ := strings.Cut(sub, ":")
		switch base {
		case "user":
			return "users"
		case "friends":
			return base
		case "session":
			return "sessions"
		case "groups":
			return "user groups"
		case "inbox":
			return kindInboxes
		case "bodies":
			return kindBodies
		case "fpend":
			return "pending friends"
		}
		if k := userTagKinds[sub]; k != "" {
			return k
		}
	case strings.HasPrefix(tag, "n:") && sub == "username":
		return "usernames"
	case strings.HasPrefix(tag, "c:"):
		if k := convKinds[sub]; k != "" {
			return k
		}
		switch {
		case strings.HasPrefix(sub, "dedup:"):
			return kindDedup
		case sub == "group":
			return kindGroups
		case sub == "group:members" || sub == "group:roles" || sub == "group:joined":
			return "group " + strings.TrimPrefix(sub, "group:")
		case sub == "group:inflight":
			return "group inflight"
		}
	case strings.HasPrefix(tag, "i:") && (sub == "presence:node" || sub == "presence:dead"):
		return "presence instances"
	case strings.HasPrefix(tag, "s") && (sub == "epoch" || sub == "epoch:gen" || sub == "epoch:quiet"):
		return kindCopies
	}
	return kindUnknown
}

// migration is one run of MigrateToCluster.
type migration struct {
	cfg      MigrateConfig
	from     redis.UniversalClient
	to       *redis.ClusterClient
	src, dst string // prefixes
	epoch    string
	// memberSeq is the source's member:seq: every group's join counter
	// starts at it (or the group's highest member score, if higher).
	memberSeq int64
	counts    map[string]*MigrateCount
	unknown   []string
}

// maxUnknownListed bounds the unknown key names a report lists.
const maxUnknownListed = 20

// migrationKey is the target's record of the migration: a HASH of epoch,
// state ("copying", "done"), started and finished (ms), and report (the
// counts of the finished run, JSON).
func (m *migration) migrationKey() string { return m.dst + "{meta}:migration" }

func (m *migration) count(kind string) *MigrateCount {
	c := m.counts[kind]
	if c == nil {
		c = &MigrateCount{Kind: kind, Want: -1}
		m.counts[kind] = c
	}
	return c
}

func (m *migration) logf(msg string, args ...any) {
	if m.cfg.Log != nil {
		m.cfg.Log.Info(msg, args...)
	}
}

// MigrateToCluster copies a one-Redis keyspace into a Redis Cluster in the
// cluster layout (see the top of this file), then checks the key counts
// per kind. It refuses a source with live nodes and a target that holds
// data it did not write, unless cfg.Force; a target this source was
// migrated to already is left as it is (AlreadyDone).
func MigrateToCluster(ctx context.Context, cfg MigrateConfig) (*MigrateReport, error) {
	if _, ok := cfg.From.(*redis.ClusterClient); ok || cfg.From == nil || cfg.To == nil {
		return nil, fmt.Errorf("migrate: need one Redis to copy from and a Redis Cluster to copy to: %w", ErrMigrateSource)
	}
	m := &migration{cfg: cfg, from: cfg.From, to: cfg.To, src: cmpPrefix(cfg.FromPrefix), dst: cmpPrefix(cfg.ToPrefix),
		counts: make(map[string]*MigrateCount)}
	if m.cfg.Batch <= 0 {
		m.cfg.Batch = 500
	}
	if m.cfg.LiveWindow <= 0 {
		m.cfg.LiveWindow = 10 * time.Second
	}
	if strings.ContainsAny(m.dst, "{}") {
		return nil, fmt.Errorf("migrate: the target prefix %q has a brace, which breaks the cluster's hash tags", m.dst)
	}
	live, err := m.checkSource(ctx)
	if err != nil {
		return nil, err
	}
	rep := &MigrateReport{Epoch: m.epoch, DryRun: cfg.DryRun, LiveNodes: live}
	state, err := m.checkTarget(ctx)
	if err != nil {
		return nil, err
	}
	switch {
	case state == "done" && !cfg.Force:
		rep.AlreadyDone = true
		m.logf("the cluster was migrated from this source already; nothing to copy", "epoch", m.epoch)
		return rep, m.finish(ctx, rep, true)
	case cfg.DryRun:
		return rep, m.finish(ctx, rep, false)
	case state == "copying":
		rep.Resumed = true
		m.logf("completing a migration that was cut off", "epoch", m.epoch)
	}
	started := time.Now()
	if err := m.to.HSet(ctx, m.migrationKey(), "epoch", m.epoch, "state", "copying",
		"started", started.UnixMilli()).Err(); err != nil {
		return nil, fmt.Errorf("migrate: mark the target: %w", err)
	}
	if err := m.copyAll(ctx); err != nil {
		return nil, err
	}
	if err := m.writeEpoch(ctx); err != nil {
		return nil, err
	}
	m.logf("copied", "took", time.Since(started).Round(time.Millisecond))
	if err := m.finish(ctx, rep, false); err != nil {
		// Left "copying": the next run copies and checks again.
		return rep, err
	}
	report, _ := json.Marshal(rep.Kinds)
	if err := m.to.HSet(ctx, m.migrationKey(), "state", "done", "finished", time.Now().UnixMilli(),
		"report", report).Err(); err != nil {
		return rep, fmt.Errorf("migrate: mark the target done: %w", err)
	}
	return rep, nil
}

// cmpPrefix is p, or the default prefix.
func cmpPrefix(p string) string {
	if p == "" {
		return protocol.DefaultPrefix
	}
	return p
}

// checkSource reads the source's epoch and schema and looks for live
// nodes: registry entries (they expire a node TTL after the last
// heartbeat), pub/sub subscribers, presence heartbeats younger than the
// live window. It returns what it found of them, and refuses to go on
// with any but for a dry run or with Force.
func (m *migration) checkSource(ctx context.Context) ([]string, error) {
	pipe := m.from.Pipeline()
	epoch := pipe.Get(ctx, m.src+"epoch")
	schema := pipe.Get(ctx, m.src+"schema")
	ids := pipe.ZRange(ctx, protocol.NodesKey(m.src), 0, -1)
	chans := pipe.PubSubChannels(ctx, globEscape(m.src)+"*")
	now := pipe.Time(ctx)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("migrate: read the source: %w", err)
	}
	m.epoch = epoch.Val()
	if m.epoch == "" {
		return nil, fmt.Errorf("migrate: no store epoch under %q (never used by loopchat, or another prefix): %w", m.src, ErrMigrateSource)
	}
	if v := schema.Val(); v != strconv.Itoa(redisSchema) {
		return nil, fmt.Errorf("migrate: the source keyspace has schema %q, this loopchat moves schema %d only: "+
			"start one node of this version on it once (it upgrades the keyspace), stop it, then migrate: %w",
			v, redisSchema, ErrMigrateSource)
	}
	var live []string
	if len(ids.Val()) > 0 {
		p := m.from.Pipeline()
		exists := make([]*redis.IntCmd, len(ids.Val()))
		for i, id := range ids.Val() {
			exists[i] = p.Exists(ctx, protocol.NodeKey(m.src, id))
		}
		if _, err := p.Exec(ctx); err != nil {
			return nil, fmt.Errorf("migrate: read the registry: %w", err)
		}
		for i, id := range ids.Val() {
			if exists[i].Val() == 1 {
				live = append(live, "node "+id+" is registered")
			}
		}
	}
	if n := len(chans.Val()); n > 0 {
		live = append(live, fmt.Sprintf("%d channels have subscribers (%s…)", n, chans.Val()[0]))
	}
	since := now.Val().Add(-m.cfg.LiveWindow).UnixMilli()
	inst, err := m.from.ZRangeByScore(ctx, m.src+"presence:nodes",
		&redis.ZRangeBy{Min: strconv.FormatInt(since, 10), Max: "+inf"}).Result()
	if err != nil {
		return nil, fmt.Errorf("migrate: read presence: %w", err)
	}
	for _, i := range inst {
		live = append(live, fmt.Sprintf("presence instance %s beat within %v", i, m.cfg.LiveWindow))
	}
	switch {
	case len(live) == 0:
	case m.cfg.DryRun:
		m.logf("nodes are still running: stop them before the migration", "found", strings.Join(live, "; "))
	case !m.cfg.Force:
		return live, fmt.Errorf("migrate: %s: %w", strings.Join(live, "; "), ErrMigrateLiveNodes)
	default:
		m.logf("copying with live nodes (--force)", "found", strings.Join(live, "; "))
	}
	return live, nil
}

// checkTarget reads what the cluster holds under the target prefix: ""
// (nothing, or --force), "copying" (a run of this source's was cut off),
// or "done".
func (m *migration) checkTarget(ctx context.Context) (string, error) {
	pipe := m.to.Pipeline()
	mark := pipe.HGetAll(ctx, m.migrationKey())
	epoch := pipe.Get(ctx, m.dst+"{meta}:epoch")
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("migrate: read the target: %w", err)
	}
	state, markEpoch, e := mark.Val()["state"], mark.Val()["epoch"], epoch.Val()
	switch {
	case markEpoch == m.epoch && state == "copying" && e == m.epoch:
		// Cut off after the epoch was written (or its check failed):
		// nodes could have served since, and their writes must not be
		// copied over.
		served, err := m.targetServed(ctx)
		if err != nil {
			return "", err
		}
		if served != "" && !m.cfg.Force {
			return "", fmt.Errorf("migrate: nodes have run on the half-migrated cluster (%s): %w", served, ErrMigrateTargetInUse)
		}
		return state, nil
	case markEpoch == m.epoch && (state == "copying" && e == "" || state == "done" && e == m.epoch):
		return state, nil
	case e != "" && e != m.epoch:
		if !m.cfg.Force {
			return "", fmt.Errorf("migrate: the cluster's store epoch under %q is %s, not the source's %s "+
				"(a node ran on it, or another store was migrated there): %w", m.dst, e, m.epoch, ErrMigrateTargetInUse)
		}
	case markEpoch != "" && markEpoch != m.epoch:
		if !m.cfg.Force {
			return "", fmt.Errorf("migrate: the cluster holds a migration of another store (epoch %s) under %q: %w",
				markEpoch, m.dst, ErrMigrateTargetInUse)
		}
	default:
		key, err := m.anyTargetKey(ctx)
		if err != nil {
			return "", err
		}
		if key != "" && !m.cfg.Force {
			return "", fmt.Errorf("migrate: the cluster already holds keys under %q (%s): %w", m.dst, key, ErrMigrateTargetInUse)
		}
	}
	if m.cfg.Force {
		m.logf("writing over what the cluster holds (--force)")
	}
	return "", nil
}

// targetServed says what shows a node ran on the cluster under the
// target prefix ("": nothing): a registry index, or a presence instance
// the source never had.
func (m *migration) targetServed(ctx context.Context) (string, error) {
	pipe := m.to.Pipeline()
	nodes := pipe.ZRange(ctx, protocol.NodesKey(m.dst), 0, -1)
	var inst []*redis.StringSliceCmd
	for _, k := range []string{"presence:nodes", "presence:dead"} {
		inst = append(inst, pipe.ZRange(ctx, m.dst+"{meta}:"+k, 0, -1))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return "", fmt.Errorf("migrate: read the target's registry: %w", err)
	}
	if len(nodes.Val()) > 0 {
		return "node " + nodes.Val()[0] + " registered", nil
	}
	pipe = m.from.Pipeline()
	var known []*redis.FloatCmd
	var names []string
	for _, c := range inst {
		for _, i := range c.Val() {
			names = append(names, i)
			known = append(known, pipe.ZScore(ctx, m.src+"presence:nodes", i),
				pipe.ZScore(ctx, m.src+"presence:dead", i))
		}
	}
	if len(names) == 0 {
		return "", nil
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("migrate: read the source's presence: %w", err)
	}
	for i, name := range names {
		if known[2*i].Err() != nil && known[2*i+1].Err() != nil {
			return "presence instance " + name, nil
		}
	}
	return "", nil
}

// anyTargetKey finds a key under the target prefix on some primary ("":
// none).
func (m *migration) anyTargetKey(ctx context.Context) (string, error) {
	var mu sync.Mutex
	found := ""
	err := m.to.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		it := c.Scan(ctx, 0, globEscape(m.dst)+"*", 1000).Iterator()
		if it.Next(ctx) {
			mu.Lock()
			found = it.Val()
			mu.Unlock()
		}
		return it.Err()
	})
	if err != nil {
		return "", fmt.Errorf("migrate: scan the target: %w", err)
	}
	return found, nil
}

// copyAll walks the source with SCAN and copies each batch.
func (m *migration) copyAll(ctx context.Context) error {
	var memberSeq int64
	switch v, err := m.from.Get(ctx, m.src+"member:seq").Int64(); {
	case err == nil:
		memberSeq = v
	case !errors.Is(err, redis.Nil):
		return fmt.Errorf("migrate: read member:seq: %w", err)
	}
	m.memberSeq = memberSeq
	var cursor uint64
	steps, keys := 0, 0
	for {
		batch, next, err := m.from.Scan(ctx, cursor, globEscape(m.src)+"*", int64(m.cfg.Batch)).Result()
		if err != nil {
			return fmt.Errorf("migrate: scan the source: %w", err)
		}
		if err := m.copyBatch(ctx, batch); err != nil {
			return err
		}
		keys += len(batch)
		if steps++; steps%100 == 0 {
			m.logf("copying", "keys", keys)
		}
		if m.cfg.stopAfter > 0 && steps >= m.cfg.stopAfter {
			return fmt.Errorf("migrate: stopped after %d steps (test)", steps)
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// srcKey is one source key to copy.
type srcKey struct {
	name, dst string // dst with the target prefix
	kind      string
}

// copyBatch copies the keys one SCAN step returned.
func (m *migration) copyBatch(ctx context.Context, names []string) error {
	var plain, groups, inboxes, dedups []srcKey
	for _, name := range names {
		kind, dst, how := classifyOneRedis(strings.TrimPrefix(name, m.src))
		k := srcKey{name: name, dst: m.dst + dst, kind: kind}
		switch how {
		case howPlain:
			plain = append(plain, k)
		case howGroup:
			groups = append(groups, k)
		case howInbox:
			inboxes = append(inboxes, k)
		case howDedup:
			dedups = append(dedups, k)
		}
	}
	if err := m.copyPlain(ctx, plain, false); err != nil {
		return err
	}
	if err := m.copyPlain(ctx, groups, true); err != nil {
		return err
	}
	if err := m.copyInboxes(ctx, inboxes); err != nil {
		return err
	}
	return m.copyDedups(ctx, dedups)
}

// keyValue is a key's contents and TTL, by its type.
type keyValue struct {
	typ  string
	ttl  time.Duration // <= 0: none
	str  string
	hash map[string]string
	set  []string
	zset []redis.Z
	list []string
}

// copyChunk is how many keys' values are held at once: a conversation
// log may be megabytes. inboxChunk is how many inboxes, each with up to
// the inbox limit of bodies (10,000 by default, some 200 bytes each).
// probeChunk bounds the log reads of one pipeline while dedup entries
// look for their conversation.
const (
	copyChunk  = 64
	inboxChunk = 8
	probeChunk = 5000
)

// copyPlain copies keys whole under their cluster names; groups also get
// their join counter.
func (m *migration) copyPlain(ctx context.Context, keys []srcKey, groups bool) error {
	for len(keys) > 0 {
		n := min(len(keys), copyChunk)
		chunk := keys[:n]
		keys = keys[n:]
		names := make([]string, n)
		for i, k := range chunk {
			names[i] = k.name
		}
		vals, err := m.readValues(ctx, names)
		if err != nil {
			return err
		}
		var seqs []int64
		if groups {
			if seqs, err = m.groupJoinCounters(ctx, names); err != nil {
				return err
			}
		}
		_, err = m.to.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, k := range chunk {
				if vals[i].typ == "none" {
					continue // expired since the scan
				}
				writeValue(ctx, p, k.dst, vals[i])
				if groups {
					p.HSet(ctx, k.dst, "mseq", seqs[i])
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("migrate: write: %w", err)
		}
		for i, k := range chunk {
			if vals[i].typ != "none" {
				m.count(k.kind).Copied++
			}
		}
	}
	return nil
}

// groupJoinCounters is, for each group record named, the counter its
// next join takes its order from on a cluster (the record's mseq): at
// least every member's order.
func (m *migration) groupJoinCounters(ctx context.Context, records []string) ([]int64, error) {
	pipe := m.from.Pipeline()
	tops := make([]*redis.ZSliceCmd, len(records))
	for i, r := range records {
		tops[i] = pipe.ZRangeWithScores(ctx, r+":members", -1, -1)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("migrate: read group members: %w", err)
	}
	out := make([]int64, len(records))
	for i, c := range tops {
		out[i] = m.memberSeq
		if z := c.Val(); len(z) == 1 {
			out[i] = max(out[i], int64(z[0].Score))
		}
	}
	return out, nil
}

// readValues reads keys' types, TTLs and contents from the source.
func (m *migration) readValues(ctx context.Context, names []string) ([]keyValue, error) {
	pipe := m.from.Pipeline()
	types := make([]*redis.StatusCmd, len(names))
	ttls := make([]*redis.DurationCmd, len(names))
	for i, k := range names {
		types[i], ttls[i] = pipe.Type(ctx, k), pipe.PTTL(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("migrate: read types: %w", err)
	}
	out := make([]keyValue, len(names))
	pipe = m.from.Pipeline()
	cmds := make([]redis.Cmder, len(names))
	for i, k := range names {
		out[i] = keyValue{typ: types[i].Val(), ttl: ttls[i].Val()}
		switch out[i].typ {
		case "string":
			cmds[i] = pipe.Get(ctx, k)
		case "hash":
			cmds[i] = pipe.HGetAll(ctx, k)
		case "set":
			cmds[i] = pipe.SMembers(ctx, k)
		case "zset":
			cmds[i] = pipe.ZRangeWithScores(ctx, k, 0, -1)
		case "list":
			cmds[i] = pipe.LRange(ctx, k, 0, -1)
		case "none":
		default:
			return nil, fmt.Errorf("migrate: %s is a %s, which no loopchat key is", k, out[i].typ)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("migrate: read values: %w", err)
	}
	for i, c := range cmds {
		switch c := c.(type) {
		case *redis.StringCmd:
			if c.Err() != nil {
				out[i].typ = "none" // expired between the two reads
			}
			out[i].str = c.Val()
		case *redis.MapStringStringCmd:
			out[i].hash = c.Val()
		case *redis.StringSliceCmd:
			if out[i].typ == "set" {
				out[i].set = c.Val()
			} else {
				out[i].list = c.Val()
			}
		case *redis.ZSliceCmd:
			out[i].zset = c.Val()
		}
		if c != nil && out[i].typ != "string" && out[i].typ != "none" && emptyValue(out[i]) {
			out[i].typ = "none"
		}
	}
	return out, nil
}

func emptyValue(v keyValue) bool {
	return len(v.hash) == 0 && len(v.set) == 0 && len(v.zset) == 0 && len(v.list) == 0
}

// writeValue queues dst's replacement by v: deleted, written, its TTL set.
func writeValue(ctx context.Context, p redis.Pipeliner, dst string, v keyValue) {
	ttl := max(v.ttl, 0)
	if v.typ == "string" {
		p.Set(ctx, dst, v.str, ttl)
		return
	}
	p.Del(ctx, dst)
	switch v.typ {
	case "hash":
		args := make([]any, 0, 2*len(v.hash))
		for f, x := range v.hash {
			args = append(args, f, x)
		}
		p.HSet(ctx, dst, args...)
	case "set":
		members := make([]any, len(v.set))
		for i, x := range v.set {
			members[i] = x
		}
		p.SAdd(ctx, dst, members...)
	case "zset":
		p.ZAdd(ctx, dst, v.zset...)
	case "list":
		items := make([]any, len(v.list))
		for i, x := range v.list {
			items[i] = x
		}
		p.RPush(ctx, dst, items...)
	}
	if ttl > 0 {
		p.PExpire(ctx, dst, ttl)
	}
}

// bodiesOf is the bodies hash beside a cluster inbox (dst, with the
// prefix): {u:<uid>}:bodies[:<slot>].
func bodiesOf(inbox string) string {
	head, slot, _ := strings.Cut(inbox, "}:inbox")
	return head + "}:bodies" + slot
}

// copyInboxes copies inboxes, each with the bodies of its messages from
// their shared msg:<id>.
func (m *migration) copyInboxes(ctx context.Context, keys []srcKey) error {
	for len(keys) > 0 {
		n := min(len(keys), inboxChunk)
		chunk := keys[:n]
		keys = keys[n:]
		pipe := m.from.Pipeline()
		members := make([]*redis.ZSliceCmd, n)
		for i, k := range chunk {
			members[i] = pipe.ZRangeWithScores(ctx, k.name, 0, -1)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("migrate: read inboxes: %w", err)
		}
		pipe = m.from.Pipeline()
		bodies := make([][]*redis.StringCmd, n)
		for i, c := range members {
			for _, z := range c.Val() {
				mem, _ := z.Member.(string)
				bodies[i] = append(bodies[i], pipe.HGet(ctx, m.src+"msg:"+mem, "body"))
			}
		}
		if pipe.Len() > 0 {
			if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
				return fmt.Errorf("migrate: read message bodies: %w", err)
			}
		}
		var written, dropped, emptied, boxes int64
		_, err := m.to.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, k := range chunk {
				bk := bodiesOf(k.dst)
				p.Del(ctx, k.dst, bk)
				var zs []redis.Z
				var hs []any
				for j, z := range members[i].Val() {
					b, err := bodies[i][j].Result()
					if err != nil {
						// Its message is gone (cannot be, on a store that
						// was not written by hand): the inbox read would
						// skip it too.
						dropped++
						continue
					}
					zs = append(zs, z)
					hs = append(hs, z.Member, b)
				}
				if len(zs) == 0 {
					if len(members[i].Val()) > 0 {
						emptied++
					}
					continue
				}
				p.ZAdd(ctx, k.dst, zs...)
				p.HSet(ctx, bk, hs...)
				written += int64(len(zs))
				boxes++
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("migrate: write inboxes: %w", err)
		}
		m.count(kindInboxes).Copied += boxes
		m.count(kindInboxes).Dropped += emptied
		m.count(kindMessages).Copied += written
		m.count(kindMessages).Dropped += dropped
	}
	return nil
}

// dedupEntry is a dedup key being carried.
type dedupEntry struct {
	srcKey
	uid, client string
	value       string // "<msg_id>:<seq>", or a bare msg_id
	id, seq     uint64
	ttl         time.Duration
	conv        Conversation
	found       bool
}

// copyDedups moves dedup entries under their conversation's tag, marked
// done (every step of the send ran: on one Redis a send is one step). One
// Redis keys them by sender and client id only, so the conversation is
// found from the message: its shared body while some inbox holds it, else
// the sender's conversations' logs at its seq. An entry whose message is
// in neither is dropped: a resend with its client_msg_id is then stored
// as a new message.
func (m *migration) copyDedups(ctx context.Context, keys []srcKey) error {
	if len(keys) == 0 {
		return nil
	}
	pipe := m.from.Pipeline()
	vals := make([]*redis.StringCmd, len(keys))
	ttls := make([]*redis.DurationCmd, len(keys))
	for i, k := range keys {
		vals[i], ttls[i] = pipe.Get(ctx, k.name), pipe.PTTL(ctx, k.name)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("migrate: read dedup entries: %w", err)
	}
	var es []*dedupEntry
	for i, k := range keys {
		v, err := vals[i].Result()
		if err != nil {
			continue // expired since the scan
		}
		uid, client, _ := strings.Cut(strings.TrimPrefix(k.name, m.src+"dedup:"), ":")
		e := &dedupEntry{srcKey: k, uid: uid, client: client, value: strings.TrimSuffix(v, ":d"), ttl: ttls[i].Val()}
		if e.id, e.seq, err = parseDedupValue(e.value); err != nil {
			m.count(kindDedup).Dropped++
			continue
		}
		es = append(es, e)
	}
	// The message's shared body, while an inbox holds it.
	pipe = m.from.Pipeline()
	bodies := make([]*redis.StringCmd, len(es))
	for i, e := range es {
		bodies[i] = pipe.HGet(ctx, m.src+"msg:"+msgMember(e.id), "body")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("migrate: read message bodies: %w", err)
	}
	var rest []*dedupEntry
	for i, e := range es {
		msg := new(chatpb.Message)
		if b, err := bodies[i].Bytes(); err == nil && proto.Unmarshal(b, msg) == nil && msg.MsgId == e.id {
			e.conv, e.found = ConversationOf(msg), true
		} else if e.seq > 0 {
			rest = append(rest, e)
		}
	}
	if err := m.findInLogs(ctx, rest); err != nil {
		return err
	}
	_, err := m.to.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, e := range es {
			if !e.found {
				continue
			}
			dst := m.dst + "{c:" + e.conv.Key() + "}:dedup:" + e.uid + ":" + e.client
			p.Set(ctx, dst, e.value+":d", max(e.ttl, 0))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("migrate: write dedup entries: %w", err)
	}
	for _, e := range es {
		if e.found {
			m.count(kindDedup).Copied++
		} else {
			m.count(kindDedup).Dropped++
		}
	}
	return nil
}

// findInLogs finds the conversation of each entry among its sender's
// (their 1:1 index and groups) by the log's value at the entry's seq.
func (m *migration) findInLogs(ctx context.Context, es []*dedupEntry) error {
	if len(es) == 0 {
		return nil
	}
	pipe := m.from.Pipeline()
	convs := make([]*redis.StringSliceCmd, len(es))
	groups := make([]*redis.StringSliceCmd, len(es))
	for i, e := range es {
		convs[i] = pipe.SMembers(ctx, m.src+"{u:"+e.uid+"}:convs")
		groups[i] = pipe.SMembers(ctx, m.src+"user:"+e.uid+":groups")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("migrate: read conversation indexes: %w", err)
	}
	type probe struct {
		e    *dedupEntry
		conv Conversation
	}
	var probes []probe
	for i, e := range es {
		for _, k := range convs[i].Val() {
			if c, err := ParseConversationKey(k); err == nil {
				probes = append(probes, probe{e, c})
			}
		}
		for _, gid := range parseIDs(groups[i].Val()) {
			probes = append(probes, probe{e, GroupConversation(gid)})
		}
	}
	for len(probes) > 0 {
		n := min(len(probes), probeChunk)
		chunk := probes[:n]
		probes = probes[n:]
		pipe = m.from.Pipeline()
		cmds := make([]*redis.StringCmd, n)
		for i, pr := range chunk {
			if !pr.e.found {
				cmds[i] = pipe.HGet(ctx, m.src+"{c:"+pr.conv.Key()+"}:log", strconv.FormatUint(pr.e.seq, 10))
			}
		}
		if pipe.Len() == 0 {
			continue
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("migrate: read conversation logs: %w", err)
		}
		for i, pr := range chunk {
			if cmds[i] == nil {
				continue
			}
			v, err := cmds[i].Bytes()
			msg := new(chatpb.Message)
			if err != nil || len(v) < 8 || proto.Unmarshal(v[8:], msg) != nil || msg.MsgId != pr.e.id {
				continue
			}
			pr.e.conv, pr.e.found = pr.conv, true
		}
	}
	return nil
}

// writeEpoch gives the cluster the source's schema and epoch, then every
// slot its copy of the epoch (epoch_cluster.go), under a new generation:
// copies of an older use of the target prefix are overwritten.
func (m *migration) writeEpoch(ctx context.Context) error {
	st := NewRedisStore(RedisConfig{Client: m.to, Prefix: m.dst})
	defer st.Close()
	var gen *redis.IntCmd
	_, err := m.to.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, st.metaKey("schema"), redisSchema, 0)
		p.Set(ctx, st.metaKey("epoch"), m.epoch, 0)
		p.Del(ctx, st.metaKey("epoch:quiet"))
		gen = p.Incr(ctx, st.metaKey("epoch:gen"))
		return nil
	})
	if err != nil {
		return fmt.Errorf("migrate: write the epoch: %w", err)
	}
	if err := st.writeEpochCopies(ctx, m.epoch, gen.Val(), 0); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if err := scriptEpochCopied.Run(ctx, m.to, []string{st.metaKey("epoch:gen"), st.metaKey("epoch:copied")}, gen.Val()).Err(); err != nil {
		return fmt.Errorf("migrate: mark the epoch copies done: %w", err)
	}
	// What a node will find at its start: the same epoch, every copy in
	// place.
	e, err := st.Epoch(ctx)
	if err != nil {
		return fmt.Errorf("migrate: read the epoch back: %w", err)
	}
	if e != m.epoch {
		return fmt.Errorf("migrate: the cluster's epoch reads %s after writing %s", e, m.epoch)
	}
	return nil
}

// finish counts both sides per kind and fills the report; compare checks
// the cluster's counts against the source's (after a copy).
func (m *migration) finish(ctx context.Context, rep *MigrateReport, already bool) error {
	if err := m.scanSource(ctx); err != nil {
		return err
	}
	if !m.cfg.DryRun {
		if err := m.scanTarget(ctx); err != nil {
			return err
		}
	}
	if already {
		m.restoreCopied(ctx)
	}
	compare := !m.cfg.DryRun && !already
	for _, c := range m.counts {
		if !compare || kindsNotOnTarget[c.Kind] || c.Source == 0 && c.Target == 0 {
			continue
		}
		switch c.Kind {
		case kindEpoch, kindSchema:
			c.Want = 1
		case kindInboxes, kindDedup:
			c.Want = c.Source - c.Dropped
		case kindBodies:
			c.Want = m.count(kindInboxes).Target
		case kindCopies:
			c.Want = 2 * clusterSlots // epoch and generation
		case kindState:
			continue
		default:
			c.Want = c.Source
		}
		if c.Target != c.Want {
			rep.Mismatches = append(rep.Mismatches, fmt.Sprintf("%s: %d on the cluster, want %d", c.Kind, c.Target, c.Want))
		}
	}
	slices.Sort(rep.Mismatches)
	rep.Kinds = m.sortedCounts()
	rep.Unknown = m.unknown
	if len(rep.Mismatches) > 0 {
		return fmt.Errorf("migrate: %s: %w", strings.Join(rep.Mismatches, "; "), ErrMigrateCheck)
	}
	return nil
}

// restoreCopied fills Copied and Dropped from the report of the run that
// finished the migration (a run that found it done copies nothing).
func (m *migration) restoreCopied(ctx context.Context) {
	b, err := m.to.HGet(ctx, m.migrationKey(), "report").Bytes()
	var prev []MigrateCount
	if err != nil || json.Unmarshal(b, &prev) != nil {
		return
	}
	for _, p := range prev {
		c := m.count(p.Kind)
		c.Copied, c.Dropped = p.Copied, p.Dropped
	}
}

func (m *migration) sortedCounts() []MigrateCount {
	out := make([]MigrateCount, 0, len(m.counts))
	for _, c := range m.counts {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b MigrateCount) int { return strings.Compare(a.Kind, b.Kind) })
	return out
}

// scanSource counts the source's keys per kind.
func (m *migration) scanSource(ctx context.Context) error {
	for _, c := range m.counts {
		c.Source = 0
	}
	m.unknown = nil
	it := m.from.Scan(ctx, 0, globEscape(m.src)+"*", int64(m.cfg.Batch)).Iterator()
	for it.Next(ctx) {
		kind, _, _ := classifyOneRedis(strings.TrimPrefix(it.Val(), m.src))
		m.count(kind).Source++
		if kind == kindUnknown && len(m.unknown) < maxUnknownListed {
			m.unknown = append(m.unknown, it.Val())
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("migrate: count the source: %w", err)
	}
	return nil
}

// scanTarget counts the cluster's keys per kind, on every primary.
func (m *migration) scanTarget(ctx context.Context) error {
	var mu sync.Mutex
	got := make(map[string]int64)
	err := m.to.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		local := make(map[string]int64)
		it := c.Scan(ctx, 0, globEscape(m.dst)+"*", int64(m.cfg.Batch)).Iterator()
		for it.Next(ctx) {
			local[classifyCluster(strings.TrimPrefix(it.Val(), m.dst))]++
		}
		mu.Lock()
		defer mu.Unlock()
		for k, n := range local {
			got[k] += n
		}
		return it.Err()
	})
	if err != nil {
		return fmt.Errorf("migrate: count the target: %w", err)
	}
	for _, c := range m.counts {
		c.Target = 0
	}
	for k, n := range got {
		m.count(k).Target = n
	}
	return nil
}
