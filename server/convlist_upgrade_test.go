package server

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// A file of schema 2 (no conversation index) is indexed when it opens, from
// the conversations bbolt holds and from those only in the message log.
func TestBoltConversationListIndexesASchema2File(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenBoltStore(BoltConfig{Path: filepath.Join(dir, "live", "test.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, _ := s.CreateUser(ctx, "a", nil)
	b, _ := s.CreateUser(ctx, "b", nil)
	c, _ := s.CreateUser(ctx, "c", nil)
	g, err := s.CreateGroup(ctx, a.ID, "g", "", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	ids := newMsgIDGen(0)
	sendText(t, s, ids, a, b.ID, 0, 1)
	sendText(t, s, ids, c, a.ID, 0, 1)
	sendText(t, s, ids, a, 0, g.ID, 1)
	listOf(t, s, a.ID, 10) // copies the log into bbolt
	base := filepath.Join(dir, "base.db")
	if err := s.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(base, 0o600) }); err != nil {
		t.Fatal(err)
	}
	sendText(t, s, ids, b, c.ID, 0, 1) // only in the log
	img := filepath.Join(dir, "img", "test.db")
	crashImage(t, s, base, img)
	// What schema 2 left: no index, schema 2.
	db, err := bolt.Open(img, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketUserConvs); err != nil {
			return err
		}
		// Schema 2 wrote every conversation's last seq to conv_meta
		// (schema 4 only when retention empties one).
		metas := tx.Bucket(bucketConvMeta)
		c := tx.Bucket(bucketConvLog).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			ck, seq := k[:len(k)-8], k[len(k)-8:]
			if err := metas.Put(ck, seq); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keySchema, u64(2))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	r, err := OpenBoltStore(BoltConfig{Path: img})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	names := func(u User) []string {
		list, _ := listOf(t, r, u.ID, 10)
		var out []string
		for _, cs := range list {
			out = append(out, cs.Name)
		}
		slices.Sort(out)
		return out
	}
	for _, st := range []struct {
		u    User
		want []string
	}{{a, []string{"b", "c", "g"}}, {b, []string{"a", "c"}}, {c, []string{"a", "b"}}} {
		if got := names(st.u); !slices.Equal(got, st.want) {
			t.Fatalf("%s's conversations after the upgrade: %v, want %v", st.u.Name, got, st.want)
		}
	}
	_ = r.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keySchema); string(v) != string(u64(boltSchema)) || boltSchema != 4 {
			t.Errorf("schema after opening: %x", v)
		}
		return nil
	})
}

// A keyspace of schema 2 (no conversation index) is indexed by the first
// Epoch of a node, before it is marked schema 3; other prefixes are left
// alone, whatever their names have in common with the pattern.
func TestRedisConversationListIndexesASchema2Keyspace(t *testing.T) {
	ctx := context.Background()
	_, rdb := testRedis(t)
	for _, p := range []string{"m?g:", "mxg:"} {
		s := NewRedisStore(RedisConfig{Client: rdb, Prefix: p})
		if _, err := s.Epoch(ctx); err != nil {
			t.Fatal(err)
		}
		a, _ := s.CreateUser(ctx, "a", nil)
		b, _ := s.CreateUser(ctx, "b", nil)
		c, _ := s.CreateUser(ctx, "c", nil)
		ids := newMsgIDGen(0)
		sendText(t, s, ids, a, b.ID, 0, 1)
		sendText(t, s, ids, c, a.ID, 0, 1)
		sendText(t, s, ids, c, c.ID, 0, 1)
		s.Close()
	}
	// What schema 2 left in m?g: no index, schema 2.
	keys, err := rdb.Keys(ctx, "m\\?g:{u:*}:convs").Result()
	if err != nil || len(keys) != 3 {
		t.Fatalf("index keys %v, %v", keys, err)
	}
	rdb.Del(ctx, keys...)
	rdb.Set(ctx, "m?g:schema", 2, 0)
	rdb.Del(ctx, "mxg:{u:1}:convs") // must stay gone

	s := NewRedisStore(RedisConfig{Client: rdb, Prefix: "m?g:"})
	defer s.Close()
	if _, err := s.Epoch(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := rdb.Get(ctx, "m?g:schema").Result(); v != fmt.Sprint(redisSchema) || redisSchema != 3 {
		t.Fatalf("schema after Epoch = %q", v)
	}
	for uid, want := range map[uint64][]string{1: {"b", "c"}, 2: {"a"}, 3: {"a", "c"}} {
		list, _ := listOf(t, s, uid, 10)
		var got []string
		for _, cs := range list {
			got = append(got, cs.Name)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("user %d's conversations after the upgrade: %v, want %v", uid, got, want)
		}
	}
	if n, err := rdb.Exists(ctx, "mxg:{u:1}:convs").Result(); err != nil || n != 0 {
		t.Fatalf("another prefix's index was written: %d, %v", n, err)
	}
	// Marked 3, a keyspace is not scanned again: an index removed now
	// stays removed (nothing else removes one).
	rdb.Del(ctx, "m?g:{u:2}:convs")
	s2 := NewRedisStore(RedisConfig{Client: rdb, Prefix: "m?g:"})
	defer s2.Close()
	if _, err := s2.Epoch(ctx); err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(ctx, "m?g:{u:2}:convs").Val(); n != 0 {
		t.Fatal("a keyspace of schema 3 was indexed again")
	}
}
