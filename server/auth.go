package server

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// tokenVersion prefixes every token so the format can change later. v1
// tokens were not bound to a store epoch and are refused.
const tokenVersion = "v2"

// tokens issues and checks login tokens: "v2.<payload>.<mac>", where the
// payload is base64url(user id | expiry unix seconds | account nonce, 8
// bytes each, big-endian) and mac is
// HMAC-SHA256 over "v2." + store epoch + "." + payload with the cluster's
// shared secret. Any node with the secret can check a token without a store
// round trip. The epoch names the store's contents (epoch.go): a token
// names a user id, and an id means that user only in the store that gave
// it, so a store that lost its data or was replaced refuses every token
// issued before. The nonce (User.Nonce) names the account itself: a store
// restored from an older copy keeps its epoch but may give the id to
// someone else, whose nonce differs.
type tokens struct {
	secret []byte
	ttl    time.Duration
	// macs holds keyed HMAC states: a fresh one hashes the key into both
	// pads every time, a reset one starts from the saved pads.
	macs *sync.Pool
}

func newTokens(secret []byte, ttl time.Duration) tokens {
	return tokens{secret: secret, ttl: ttl,
		macs: &sync.Pool{New: func() any { return hmac.New(sha256.New, secret) }}}
}

func (t tokens) issue(u User, now time.Time, epoch string) (token string, expires time.Time) {
	// Whole seconds, as the token holds it: the time reported is the
	// moment verify starts refusing it.
	expires = time.Unix(now.Add(t.ttl).Unix(), 0)
	var p [24]byte
	binary.BigEndian.PutUint64(p[:8], u.ID)
	binary.BigEndian.PutUint64(p[8:16], uint64(expires.Unix()))
	binary.BigEndian.PutUint64(p[16:], u.Nonce)
	payload := base64.RawURLEncoding.EncodeToString(p[:])
	return tokenVersion + "." + payload + "." + t.mac(payload, epoch), expires
}

func (t tokens) mac(payload, epoch string) string {
	h := t.macs.Get().(hash.Hash)
	defer t.macs.Put(h)
	h.Reset()
	h.Write([]byte(tokenVersion + "." + epoch + "." + payload))
	var sum [sha256.Size]byte
	return base64.RawURLEncoding.EncodeToString(h.Sum(sum[:0]))
}

// verify returns the user id and account nonce a valid, unexpired token of
// the store epoch names.
func (t tokens) verify(token string, now time.Time, epoch string) (uid, nonce uint64, err error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[0] != tokenVersion {
		return 0, 0, ErrBadToken
	}
	if !hmac.Equal([]byte(parts[2]), []byte(t.mac(parts[1], epoch))) {
		return 0, 0, ErrBadToken
	}
	p, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || len(p) != 24 {
		return 0, 0, ErrBadToken
	}
	if now.Unix() >= int64(binary.BigEndian.Uint64(p[8:16])) {
		return 0, 0, ErrBadToken
	}
	return binary.BigEndian.Uint64(p[:8]), binary.BigEndian.Uint64(p[16:]), nil
}

// loadOrCreateSecret reads the token secret kept in dir, creating a random
// one (mode 0600) on first start, so tokens survive restarts.
func loadOrCreateSecret(dir string) ([]byte, error) {
	path := filepath.Join(dir, "token-secret")
	b, err := os.ReadFile(path)
	if err == nil {
		secret, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(secret) < 16 {
			return nil, fmt.Errorf("token secret %s is not at least 16 hex-encoded bytes", path)
		}
		return secret, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read token secret: %w", err)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write token secret: %w", err)
	}
	return secret, nil
}

// Password hashes come in two formats. New ones are
//
//	prehashPrefix + bcrypt(base64(HMAC-SHA256(prehashKey, password)))
//
// because bcrypt reads at most 72 bytes of its input and the protocol
// allows passwords of up to 128: the pre-hash is 44 bytes that depend on
// every byte of the password. Hashes without the prefix are plain bcrypt of
// the password, from before pre-hashing; they keep verifying, so existing
// accounts need no migration.
const prehashPrefix = "hmac-sha256+bcrypt:"

// prehashKey is not a secret. Keying the pre-hash keeps a bare SHA-256 of a
// user's password, leaked from some other site, from being tried directly
// as the bcrypt input ("shucking").
var prehashKey = []byte("loopchat password pre-hash v1")

// bcryptMaxInput is how much of its input bcrypt reads.
const bcryptMaxInput = 72

func prehash(password string) []byte {
	m := hmac.New(sha256.New, prehashKey)
	m.Write([]byte(password))
	var sum [sha256.Size]byte
	// base64 rather than raw bytes: some bcrypt implementations stop at a
	// NUL byte, which raw digests contain.
	return base64.StdEncoding.AppendEncode(nil, m.Sum(sum[:0]))
}

// hasher runs bcrypt with at most one hash per CPU at a time, so a storm
// of password logins cannot starve the workers serving everything else.
type hasher struct {
	cost  int
	slots chan struct{}
	dummy []byte // bcrypt of a pre-hash, compared against for unknown users, so timing does not reveal them
}

func newHasher(cost, parallel int) *hasher {
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	dummy, _ := bcrypt.GenerateFromPassword(prehash("loopchat-dummy-password"), cost)
	return &hasher{cost: cost, slots: make(chan struct{}, max(parallel, 1)), dummy: dummy}
}

// hash returns password's hash in the current (pre-hashed) format.
func (h *hasher) hash(password string) ([]byte, error) {
	h.slots <- struct{}{}
	defer func() { <-h.slots }()
	b, err := bcrypt.GenerateFromPassword(prehash(password), h.cost)
	if err != nil {
		return nil, fmt.Errorf("hash password: %w", err)
	}
	return append([]byte(prehashPrefix), b...), nil
}

// check reports whether password matches hash, in either format; a nil
// hash (unknown user) costs the same time and never matches.
func (h *hasher) check(hash []byte, password string) bool {
	h.slots <- struct{}{}
	defer func() { <-h.slots }()
	if hash == nil {
		_ = bcrypt.CompareHashAndPassword(h.dummy, prehash(password))
		return false
	}
	if b, ok := bytes.CutPrefix(hash, []byte(prehashPrefix)); ok {
		return bcrypt.CompareHashAndPassword(b, prehash(password)) == nil
	}
	// A legacy hash was made from at most 72 bytes (bcrypt refuses more),
	// and bcrypt ignores what follows them, so a longer password sharing
	// those bytes would match. The comparison still runs, so the answer
	// takes as long either way.
	match := bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil
	return match && len(password) <= bcryptMaxInput
}
