package testproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// A Redis Cluster on loopback: three primaries and three replicas, each a
// redis-server with its own port, bus port and data directory, joined by
// `redis-cli --cluster create`. The cluster node timeout is short, so a
// killed primary is failed over within a couple of seconds.

// ClusterNodeTimeout is the cluster-node-timeout a test cluster of
// StartCluster runs with: a primary silent this long is marked failing,
// and its replica takes over soon after (the fault tests kill primaries).
const ClusterNodeTimeout = 1000 * time.Millisecond

// SharedNodeTimeout is the shared cluster's: long enough that a busy
// machine (a primary slow to answer the others for a second) does not set
// off a failover under tests that do not expect one.
const SharedNodeTimeout = 5000 * time.Millisecond

// ClusterNode is one redis-server of a test cluster.
type ClusterNode struct {
	Port    int
	BusPort int
	Addr    string
	dir     string
	bin     string
	timeout time.Duration // cluster-node-timeout

	mu   sync.Mutex
	cmd  *exec.Cmd
	out  *SyncBuffer
	done chan struct{}
}

// Cluster is a running test Redis Cluster.
type Cluster struct {
	Nodes []*ClusterNode
	// URL names every node for loopchat's --redis.
	URL string
	dir string
}

// NewCluster starts primaries+primaries*replicas redis-servers in fresh
// directories under dir and joins them into one cluster, each primary
// with replicas replicas and the given cluster-node-timeout, returning once every node reports cluster_state
// ok and every primary has its replicas online. It needs no testing.TB, so
// a package's TestMain can share one cluster between tests (see Shared).
func NewCluster(dir string, primaries, replicas int, nodeTimeout time.Duration) (*Cluster, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, err
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir}
	n := primaries * (1 + replicas)
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	addrs := make([]string, n)
	for i := range n {
		node := &ClusterNode{Port: ports[2*i], BusPort: ports[2*i+1], bin: bin, timeout: nodeTimeout,
			dir: filepath.Join(dir, "node"+strconv.Itoa(i))}
		node.Addr = "127.0.0.1:" + strconv.Itoa(node.Port)
		if err := os.MkdirAll(node.dir, 0o755); err != nil {
			return nil, err
		}
		if err := node.Start(); err != nil {
			c.Stop()
			return nil, err
		}
		c.Nodes = append(c.Nodes, node)
		addrs[i] = node.Addr
	}
	c.URL = "redis-cluster://" + strings.Join(addrs, ",")
	for _, node := range c.Nodes {
		if err := node.waitPing(10 * time.Second); err != nil {
			c.Stop()
			return nil, err
		}
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		c.Stop()
		return nil, fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	if err := c.WaitHealthy(20 * time.Second); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// StartCluster is NewCluster (3 primaries, 1 replica each, the short
// ClusterNodeTimeout) for one test, stopped at its cleanup; it skips the
// test (fails it under CI) when redis-server or redis-cli is missing.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	return StartClusterWithTimeout(t, ClusterNodeTimeout)
}

// StartClusterWithTimeout is StartCluster with another cluster-node-timeout
// (SharedNodeTimeout for a test that expects no failover).
func StartClusterWithTimeout(t testing.TB, nodeTimeout time.Duration) *Cluster {
	t.Helper()
	Need(t, "redis-server")
	Need(t, "redis-cli")
	c, err := NewCluster(t.TempDir(), 3, 1, nodeTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("redis %s output:\n%s", n.Addr, n.Output())
			}
		}
		c.Stop()
	})
	return c
}

// Shared is a cluster started by the first test of a package that asks
// for it and stopped by the package's TestMain once every test ran:
// starting a cluster takes seconds, and tests that keep to their own key
// prefix can share one.
type Shared struct {
	once sync.Once
	c    *Cluster
	err  error
	dir  string
}

// Get returns the shared cluster, starting it on first use; it skips the
// test (fails it under CI) when redis-server or redis-cli is missing.
func (s *Shared) Get(t testing.TB) *Cluster {
	t.Helper()
	Need(t, "redis-server")
	Need(t, "redis-cli")
	s.once.Do(func() {
		s.dir, s.err = os.MkdirTemp("", "loopchat-cluster-")
		if s.err == nil {
			s.c, s.err = NewCluster(s.dir, 3, 1, SharedNodeTimeout)
		}
	})
	if s.err != nil {
		t.Fatalf("shared Redis Cluster: %v", s.err)
	}
	return s.c
}

// Stop stops the shared cluster if it was started and removes its files.
func (s *Shared) Stop() {
	if s.c != nil {
		s.c.Stop()
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

// Stop kills every node (SIGKILL, by process group).
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		n.Kill()
	}
}

// Addrs lists every node's address.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// Client is a cluster client for the test's own checks; the caller closes it.
func (c *Cluster) Client() *redis.ClusterClient {
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), MaxRedirects: 8})
}

// Node finds the node listening on addr (nil if none).
func (c *Cluster) Node(addr string) *ClusterNode {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// Primaries lists the nodes that are primaries now, as the live nodes see it.
func (c *Cluster) Primaries(ctx context.Context) ([]*ClusterNode, error) {
	var out []*ClusterNode
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		role, err := n.do(ctx, "ROLE")
		if err != nil {
			continue
		}
		if r, ok := role.([]any); ok && len(r) > 0 && r[0] == "master" {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no live primary")
	}
	return out, nil
}

// WaitHealthy waits until every running node reports cluster_state:ok
// with all 16384 slots served, and every primary has as many replicas
// online as the cluster was made with (a node that is down counts as
// missing: a primary whose replica is down never gets healthy).
func (c *Cluster) WaitHealthy(within time.Duration) error {
	deadline := time.Now().Add(within)
	var last string
	for {
		ok, why := c.healthy()
		if ok {
			return nil
		}
		last = why
		if time.Now().After(deadline) {
			return fmt.Errorf("redis cluster not healthy after %v: %s", within, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Cluster) healthy() (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	primaries, replicas := 0, 0
	for _, n := range c.Nodes {
		if !n.Running() {
			return false, n.Addr + " is not running"
		}
		info, err := n.do(ctx, "CLUSTER", "INFO")
		if err != nil {
			return false, n.Addr + ": " + err.Error()
		}
		s, _ := info.(string)
		if !strings.Contains(s, "cluster_state:ok") || !strings.Contains(s, "cluster_slots_ok:16384") {
			return false, n.Addr + " cluster info: " + strings.Join(strings.Fields(s)[:3], " ")
		}
		repl, err := n.do(ctx, "INFO", "replication")
		if err != nil {
			return false, n.Addr + ": " + err.Error()
		}
		r, _ := repl.(string)
		switch {
		case strings.Contains(r, "role:master"):
			primaries++
			replicas += strings.Count(r, "state=online")
		case strings.Contains(r, "master_link_status:up"):
		default:
			return false, n.Addr + " is a replica without its primary's link up"
		}
	}
	if replicas != len(c.Nodes)-primaries {
		return false, fmt.Sprintf("%d primaries see %d replicas online, want %d", primaries, replicas, len(c.Nodes)-primaries)
	}
	return true, ""
}

// Start starts (or restarts, after Kill) the node on its ports and
// directory; its nodes.conf there keeps its identity in the cluster.
func (n *ClusterNode) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	cmd := exec.Command(n.bin,
		"--port", strconv.Itoa(n.Port), "--cluster-port", strconv.Itoa(n.BusPort),
		"--bind", "127.0.0.1", "--dir", n.dir, "--protected-mode", "no", "--daemonize", "no",
		"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", strconv.Itoa(int(n.timeout.Milliseconds())),
		// A replica takes over however long ago it last heard its
		// primary: the tests kill primaries under load.
		"--cluster-replica-validity-factor", "0",
		// The shards that are up keep serving while one fails over.
		"--cluster-require-full-coverage", "no",
		// Replicas sync at once (the default waits 5 s for company).
		"--repl-diskless-sync-delay", "0",
		"--appendonly", "yes", "--appendfsync", "always", "--save", "",
		"--loglevel", "warning")
	out := &SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	n.cmd, n.out, n.done = cmd, out, done
	return nil
}

// StartAgain restarts a killed node and waits until it answers.
func (n *ClusterNode) StartAgain() error {
	if err := n.Start(); err != nil {
		return err
	}
	return n.waitPing(10 * time.Second)
}

// Kill ends the node with SIGKILL (by its process group) and waits for it.
func (n *ClusterNode) Kill() {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// Pid is the running redis-server's process id.
func (n *ClusterNode) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd.Process.Pid
}

// Running reports whether the process is alive.
func (n *ClusterNode) Running() bool {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Output is what the node printed.
func (n *ClusterNode) Output() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.out == nil {
		return ""
	}
	return n.out.String()
}

// Client is a client of this node alone; the caller closes it.
func (n *ClusterNode) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: n.Addr, MaxRetries: -1, DialTimeout: time.Second})
}

// do runs one command on this node alone.
func (n *ClusterNode) do(ctx context.Context, args ...any) (any, error) {
	c := n.Client()
	defer c.Close()
	return c.Do(ctx, args...).Result()
}

func (n *ClusterNode) waitPing(within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := n.do(ctx, "PING")
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || !n.Running() {
			return fmt.Errorf("redis %s not ready: %w\n%s", n.Addr, err, n.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freePorts returns n distinct loopback ports that were free a moment
// ago: each is held open until all are found, so none comes twice.
func freePorts(n int) ([]int, error) {
	out := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// SlotOwner is the primary serving slot, as the first live node asked sees it.
func (c *Cluster) SlotOwner(ctx context.Context, slot int) (*ClusterNode, error) {
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		cl := n.Client()
		shards, err := cl.ClusterShards(ctx).Result()
		cl.Close()
		if err != nil {
			continue
		}
		for _, sh := range shards {
			for _, r := range sh.Slots {
				if int(r.Start) > slot || slot > int(r.End) {
					continue
				}
				for _, node := range sh.Nodes {
					if node.Role == "master" {
						if o := c.Node(net.JoinHostPort(node.IP, strconv.FormatInt(node.Port, 10))); o != nil {
							return o, nil
						}
					}
				}
			}
		}
	}
	return nil, fmt.Errorf("no owner found for slot %d", slot)
}

// MoveSlot migrates slot, with its keys, from its primary to primary to,
// the way `redis-cli --cluster reshard` does: IMPORTING on the target,
// MIGRATING on the source, MIGRATE of every key, then SETSLOT NODE on
// both and on every other primary.
func (c *Cluster) MoveSlot(ctx context.Context, slot int, to *ClusterNode) error {
	from, err := c.SlotOwner(ctx, slot)
	if err != nil {
		return err
	}
	if from == to {
		return nil
	}
	src, dst := from.Client(), to.Client()
	defer src.Close()
	defer dst.Close()
	srcID, err := src.Do(ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		return err
	}
	dstID, err := dst.Do(ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		return err
	}
	if err := dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID).Err(); err != nil {
		return fmt.Errorf("importing: %w", err)
	}
	if err := src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err(); err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", "127.0.0.1", to.Port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		if err := src.Do(ctx, args...).Err(); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	for _, n := range append([]*ClusterNode{to, from}, c.Nodes...) {
		if !n.Running() {
			continue
		}
		cl := n.Client()
		role, _ := cl.Do(ctx, "ROLE").Slice()
		if len(role) > 0 && role[0] == "master" {
			err = cl.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err()
		}
		cl.Close()
		if err != nil {
			return fmt.Errorf("setslot node on %s: %w", n.Addr, err)
		}
	}
	return nil
}

// KeySlot is the cluster slot of key (CLUSTER KEYSLOT).
func (c *Cluster) KeySlot(ctx context.Context, key string) (int, error) {
	cl := c.Nodes[0].Client()
	defer cl.Close()
	n, err := cl.ClusterKeySlot(ctx, key).Result()
	return int(n), err
}

// ReplicaOf is a replica of primary, as the replicas report it (nil if
// none is up).
func (c *Cluster) ReplicaOf(ctx context.Context, primary *ClusterNode) *ClusterNode {
	for _, n := range c.Nodes {
		if n == primary || !n.Running() {
			continue
		}
		role, err := n.do(ctx, "ROLE")
		r, ok := role.([]any)
		if err == nil && ok && len(r) > 2 && r[0] == "slave" {
			if port, ok := r[2].(int64); ok && int(port) == primary.Port {
				return n
			}
		}
	}
	return nil
}
