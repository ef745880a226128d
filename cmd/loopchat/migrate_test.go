package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/loopchat/loopchat/internal/testproc"
	"github.com/loopchat/loopchat/server"
)

// TestRedisMigrateCommand runs `loopchat redis-migrate` from a real Redis
// onto a real Redis Cluster: a dry run writes nothing, the run prints the
// counts per kind with their check, another run writes nothing, and a
// cluster as --from is refused.
func TestRedisMigrateCommand(t *testing.T) {
	r := testproc.StartRedis(t)
	c := testproc.StartClusterWithTimeout(t, testproc.SharedNodeTimeout)
	ctx := testproc.Ctx(t, 30*time.Second)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	st := server.NewRedisStore(server.RedisConfig{Client: rdb})
	defer st.Close()
	epoch, err := st.Epoch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, err := st.CreateUser(ctx, "ann", []byte("h"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.CreateUser(ctx, "ben", []byte("h"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.AddFriend(ctx, a.ID, b.ID, server.Limits{}); err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(binary, append([]string{"redis-migrate", "--from", r.URL, "--to", c.URL}, args...)...)
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		if err != nil {
			t.Logf("stderr:\n%s", errOut.String())
		}
		return out.String(), err
	}
	out, err := run("--dry-run")
	if err != nil || !strings.Contains(out, "dry run: store epoch "+epoch) {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	cc := c.Client()
	defer cc.Close()
	if n, err := cc.Exists(ctx, "loopchat:{u:1}:user").Result(); err != nil || n != 0 {
		t.Fatalf("the dry run wrote a user (%d, %v)", n, err)
	}

	out, err = run()
	if err != nil || !strings.Contains(out, "migrated: store epoch "+epoch+" kept; the counts match") {
		t.Fatalf("run: %v\n%s", err, out)
	}
	t.Logf("report:\n%s", out)
	for _, kind := range []string{"users", "usernames", "friends"} {
		if row := reportRow(out, kind); row != "2 2 0 2 ok" {
			t.Errorf("%s: %q, want 2 copied and checked:\n%s", kind, row, out)
		}
	}
	dst := server.NewRedisStore(server.RedisConfig{Client: cc})
	defer dst.Close()
	if fs, err := dst.Friends(ctx, b.ID); err != nil || len(fs) != 1 || fs[0].Name != "ann" {
		t.Fatalf("ben's friends on the cluster: %v, %v", fs, err)
	}

	out, err = run()
	if err != nil || !strings.Contains(out, "migrated from this store (epoch "+epoch+") already; nothing written") {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	if _, err := exec.Command(binary, "redis-migrate", "--from", c.URL, "--to", c.URL).CombinedOutput(); err == nil {
		t.Fatal("a cluster as --from was taken")
	}
}

// reportRow is the numbers and check of kind's line in a report:
// one Redis, copied, dropped, cluster, check.
func reportRow(out, kind string) string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && strings.Join(f[:len(f)-5], " ") == kind {
			return strings.Join(f[len(f)-5:], " ")
		}
	}
	return ""
}
