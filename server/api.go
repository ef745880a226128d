package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"

	chatpb "github.com/loopchat/loopchat/proto"
	"github.com/loopchat/loopchat/protocol"
)

// The HTTP server API (docs/api.md; every route in docs/api.yaml): what an
// application's backend asks of the chat — push a message to users, a
// group or everyone, end a user's sessions, read presence, manage
// accounts and members. Every node serves every call for the whole
// cluster: calls go through the Store and the Broker, never through this
// node's sessions alone. JSON in and out; errors carry the wire protocol's
// codes. Callers are trusted backends, holding one of Options.APIKeys: a
// publish need not come from a friend or a member.

// Limits of the API.
const (
	// apiMaxBody bounds a request body.
	apiMaxBody = 1 << 20
	// apiMaxUsers bounds the users one publish names.
	apiMaxUsers = 10000
	// apiFanout is how many sends of one publish or broadcast run at once:
	// enough to fill the store's shared batches (a message log batch, the
	// Redis pipelines), few enough to leave the workers to the clients.
	apiFanout = 32
	// broadcastPage is how many users a durable broadcast reads at a time.
	broadcastPage = 500
	// broadcastRate and broadcastBurst bound broadcasts per node: each
	// reaches every user.
	broadcastRate  = rate.Limit(1)
	broadcastBurst = 3
)

// Errors only the API answers. Each is a *protocol.Error with a wire code;
// those that need an HTTP status other than their code's are apiErrors.
var (
	// ErrAPIKey: no Authorization: Bearer header, or a key not configured.
	ErrAPIKey = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, "missing or unknown API key: send Authorization: Bearer <key>")
	// ErrAPIRoute: no route has this path.
	ErrAPIRoute = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_NOT_FOUND, "no such API route (see docs/api.yaml)")
	// ErrPublishTarget: a publish naming none, or more than one, of to_user, to_users and to_group.
	ErrPublishTarget = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "name exactly one of to_user, to_users and to_group")
	// ErrPublishTooMany: a publish to more users than apiMaxUsers.
	ErrPublishTooMany = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "to_users names at most 10000 users")
	// ErrPublishNoUsers: a publish with an empty to_users.
	ErrPublishNoUsers = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "to_users is empty")
	// ErrIdempotencyKey: an idempotency_key over 64 bytes.
	ErrIdempotencyKey = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "idempotency_key is at most 64 bytes")
	// ErrIdempotencyLive: an idempotency_key on a transient broadcast, which stores nothing to compare it with.
	ErrIdempotencyLive = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "idempotency_key needs durable: true")
	// ErrBroadcastRate: past the node's broadcast rate.
	ErrBroadcastRate = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED, "broadcast rate limit: 1 a second per node, 3 at once")
	// ErrBroadcastBusy: a durable broadcast while another runs on this node.
	ErrBroadcastBusy = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED, "a durable broadcast is already running on this node")
	// ErrBanUntil: a ban whose until_ms has passed.
	ErrBanUntil = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "until_ms is not in the future (leave it out for a ban until lifted)")
	// ErrGroupID: a path whose group id is not a positive integer.
	ErrGroupID = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "the group id in the path is not a positive integer")
	// ErrSystemUserTaken: the system user's name belongs to an account someone can log in to.
	ErrSystemUserTaken = protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INTERNAL, "the API's system user is a regular account; set --api-system-user to an unused name")

	// ErrAPIBodyTooLarge: a request body over apiMaxBody (413).
	ErrAPIBodyTooLarge = &apiError{http.StatusRequestEntityTooLarge,
		protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "request body over 1 MiB")}
	// ErrAPIMethod: the route exists, not with this method (405).
	ErrAPIMethod = &apiError{http.StatusMethodNotAllowed,
		protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "method not allowed on this route (see the Allow header)")}
)

// apiError is a protocol error answered with its own HTTP status rather
// than its code's.
type apiError struct {
	status int
	err    *protocol.Error
}

func (e *apiError) Error() string { return e.err.Error() }
func (e *apiError) Unwrap() error { return e.err }

// apiHandler serves one route: the status and body of a success, or an
// error (any error; clientError tells the caller what it may know).
type apiHandler func(a *api, r *http.Request) (status int, body any, err error)

// apiRoute is one route of the API.
type apiRoute struct {
	method, path string
	handle       apiHandler
	// long: the call may take longer than one request's timeout (it sends
	// many messages), and bounds each step itself.
	long bool
}

// pattern is the route's net/http ServeMux pattern.
func (rt apiRoute) pattern() string { return rt.method + " " + rt.path }

// apiRoutes is every route the API serves: the mux registers these, and a
// test checks docs/api.yaml names exactly these.
var apiRoutes = []apiRoute{
	{method: "POST", path: "/api/v1/publish", handle: (*api).publish, long: true},
	{method: "POST", path: "/api/v1/broadcast", handle: (*api).broadcast, long: true},
	{method: "POST", path: "/api/v1/disconnect", handle: (*api).disconnect},
	{method: "GET", path: "/api/v1/presence", handle: (*api).presence},
	{method: "GET", path: "/api/v1/nodes", handle: (*api).nodes},
	{method: "GET", path: "/api/v1/stats", handle: (*api).stats},
	{method: "POST", path: "/api/v1/users", handle: (*api).createUser},
	{method: "POST", path: "/api/v1/users/{name}/ban", handle: (*api).ban},
	{method: "DELETE", path: "/api/v1/users/{name}/ban", handle: (*api).unban},
	{method: "POST", path: "/api/v1/groups/{id}/members", handle: (*api).addMember},
	{method: "DELETE", path: "/api/v1/groups/{id}/members/{user}", handle: (*api).removeMember},
}

// api is the HTTP API of one node.
type api struct {
	s    *Server
	log  *slog.Logger
	keys [][sha256.Size]byte // SHA-256 of each key: compared in constant time and length
	mux  *http.ServeMux
	http *http.Server
	ln   net.Listener

	broadcasts *rate.Limiter
	durable    chan struct{} // holds a token while a durable broadcast runs

	systemMu sync.Mutex // serialises making the system user
	system   atomic.Pointer[systemUser]

	inflight sync.WaitGroup // handlers running: the store outlives them
	done     chan struct{}  // closed when the listener has stopped (close)
}

// systemUser is the API's sender for calls that name none, as known
// under one store epoch (in another, its id may be someone else's).
type systemUser struct {
	epoch string
	user  User
}

// unusableHash is the system user's password hash. It has no pre-hash
// prefix, so hasher.check reads it as plain bcrypt, and it is not bcrypt:
// no password matches, and nobody logs in as the system user.
var unusableHash = []byte("!loopchat api system user: no password")

func newAPI(s *Server) *api {
	a := &api{s: s, log: s.log.With("component", "api"), mux: http.NewServeMux(),
		broadcasts: rate.NewLimiter(broadcastRate, broadcastBurst), durable: make(chan struct{}, 1),
		done: make(chan struct{})}
	for _, k := range s.opts.APIKeys {
		a.keys = append(a.keys, sha256.Sum256([]byte(k)))
	}
	for _, rt := range apiRoutes {
		a.mux.Handle(rt.pattern(), a.wrap(rt.pattern(), rt))
	}
	a.mux.Handle("/", a.wrap("unmatched", apiRoute{handle: (*api).unmatched}))
	return a
}

// start listens on addr and serves in the background. What net/http
// itself reports goes to the log at warn, so a JSON log stays JSON.
func (a *api) start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	a.ln = ln
	a.http = &http.Server{Handler: a.mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
		ErrorLog: slog.NewLogLogger(a.s.log.With("component", "api-http").Handler(), slog.LevelWarn)}
	go func() {
		defer close(a.done)
		_ = a.http.Serve(ln)
	}()
	return nil
}

// close stops taking calls and waits up to ctx for those under way; past
// it, their connections are closed (a durable broadcast stops where it is).
func (a *api) close(ctx context.Context) {
	if a.http == nil {
		return
	}
	if err := a.http.Shutdown(ctx); err != nil {
		_ = a.http.Close()
	}
	<-a.done
}

// wait returns when no handler runs any more: after close, and after the
// server's context ended (handlers watch it), before the store closes.
func (a *api) wait() { a.inflight.Wait() }

// APIAddr is where the HTTP API listens, or nil when off.
func (s *Server) APIAddr() net.Addr {
	if s.api == nil || s.api.ln == nil {
		return nil
	}
	return s.api.ln.Addr()
}

// wrap serves one route: the key, the body bound, the request's context
// (ended by the server's shutdown, marked with the store epoch), the JSON
// answer, the metric and the log.
func (a *api) wrap(route string, rt apiRoute) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.inflight.Add(1)
		defer a.inflight.Done()
		start := time.Now()
		status, body, err := a.serve(w, r, rt)
		if err != nil {
			status, body = a.failure(route, err)
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="loopchat"`)
			}
			if status == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "1")
			}
			if status == http.StatusMethodNotAllowed {
				w.Header().Set("Allow", strings.Join(a.allowed(r), ", "))
			}
		}
		writeJSON(w, status, body)
		a.s.metrics.apiRequests.WithLabelValues(route, strconv.Itoa(status)).Inc()
		a.log.Debug("api call", "route", route, "status", status, "remote", r.RemoteAddr, "took", time.Since(start))
	})
}

func (a *api) serve(w http.ResponseWriter, r *http.Request, rt apiRoute) (int, any, error) {
	if !a.authorized(r) {
		return 0, nil, ErrAPIKey
	}
	if a.s.storeResetting() {
		return 0, nil, ErrStoreResetting
	}
	r.Body = http.MaxBytesReader(w, r.Body, apiMaxBody)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(a.s.ctx, cancel) // the node shuts down
	defer stop()
	if !rt.long {
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	// Writes check the store epoch they were made under (epoch.go).
	return rt.handle(a, r.WithContext(withEpoch(ctx, a.s.epoch())))
}

// authorized reports whether r carries one of the keys. Each presented
// key is hashed and the hash compared with every configured key's, all of
// them, in constant time: neither the time nor the answer says how much
// of a key was right, or how long one is.
func (a *api) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	if len(h) < len("Bearer ") || !strings.EqualFold(h[:len("Bearer ")], "Bearer ") {
		return false
	}
	key := strings.TrimSpace(h[len("Bearer "):])
	if key == "" {
		return false
	}
	sum := sha256.Sum256([]byte(key))
	match := 0
	for _, k := range a.keys {
		match |= subtle.ConstantTimeCompare(sum[:], k[:])
	}
	return match == 1
}

// apiErrorBody is the JSON of a failed call.
type apiErrorBody struct {
	Error apiErrorDetail `json:"error"`
}

type apiErrorDetail struct {
	Code    string `json:"code"` // the wire ErrorCode's name without ERROR_CODE_
	Message string `json:"message"`
}

// failure is the status and body of a failed call, counting the store's
// faults in the log as a session's failures are.
func (a *api) failure(route string, err error) (int, apiErrorBody) {
	if errors.Is(err, ErrStoreReset) {
		a.s.pokeEpoch()
	}
	err = unavailableIfDone(err)
	pe := clientError(err)
	status := httpStatus(pe.Code)
	var ae *apiError
	if errors.As(err, &ae) {
		// An answer of the API's own (a 501 is no outage): nothing to log.
		return ae.status, apiErrorBody{apiErrorDetail{Code: codeName(pe.Code), Message: pe.Message}}
	}
	if pe.Code == chatpb.ErrorCode_ERROR_CODE_INTERNAL || pe.Code == chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE {
		a.log.Warn("api call failed", "route", route, "err", err)
	}
	return status, apiErrorBody{apiErrorDetail{Code: codeName(pe.Code), Message: pe.Message}}
}

// codeName is a wire code as the API names it: INVALID_ARGUMENT, ...
func codeName(c chatpb.ErrorCode) string { return strings.TrimPrefix(c.String(), "ERROR_CODE_") }

// httpStatus is the HTTP status of a wire error code.
func httpStatus(code chatpb.ErrorCode) int {
	switch code {
	case chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, chatpb.ErrorCode_ERROR_CODE_PROTOCOL:
		return http.StatusBadRequest
	case chatpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED:
		return http.StatusUnauthorized
	case chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED:
		return http.StatusForbidden
	case chatpb.ErrorCode_ERROR_CODE_NOT_FOUND:
		return http.StatusNotFound
	case chatpb.ErrorCode_ERROR_CODE_ALREADY_EXISTS:
		return http.StatusConflict
	case chatpb.ErrorCode_ERROR_CODE_RATE_LIMITED:
		return http.StatusTooManyRequests
	case chatpb.ErrorCode_ERROR_CODE_UNAVAILABLE:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// unmatched answers a path no route has (404), or a route's path with
// another method (405).
func (a *api) unmatched(r *http.Request) (int, any, error) {
	if len(a.allowed(r)) > 0 {
		return 0, nil, ErrAPIMethod
	}
	return 0, nil, ErrAPIRoute
}

// allowed lists the methods that have a route for r's path.
func (a *api) allowed(r *http.Request) []string {
	var out []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
		probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
		if _, pattern := a.mux.Handler(probe); pattern != "/" && pattern != "" {
			out = append(out, m)
		}
	}
	return out
}

// decodeBody reads r's JSON body into v: one object of known fields,
// valid UTF-8 and no escape that is not a character (encoding/json would
// turn invalid bytes and lone surrogates into U+FFFD without a word, and
// a message must arrive as it was sent).
func decodeBody(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return ErrAPIBodyTooLarge
	case err != nil:
		return protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "reading the body: %v", err)
	case !bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")):
		// Empty, or null, an array, a string: the decoder would take a
		// null as an object of defaults (a ban until lifted, for one).
		return protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "the body must be a JSON object")
	case !utf8.Valid(body) || !escapesValid(body):
		return protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "the body is not valid UTF-8")
	}
	if err := exactFields(body, v); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "malformed JSON body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "malformed JSON body: more after the object")
	}
	return nil
}

// exactFields checks the names in the JSON object body against v, a
// pointer to a flat struct: each spelled as a json tag of v's, and none
// twice. encoding/json would take the last of a name given twice, and
// match names ignoring case (folding ſ to s and K to k besides), so
// "TO_USER", or a second "to_user", would pass for what nobody meant.
// Whatever is malformed is left for the decoder to refuse.
func exactFields(body []byte, v any) error {
	t := reflect.TypeOf(v).Elem()
	known := make(map[string]bool, t.NumField())
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			known[name] = true
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil { // the object's '{'
		return nil
	}
	seen := make(map[string]bool, len(known))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		name, _ := tok.(string)
		switch {
		case !known[name]:
			return protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "malformed JSON body: unknown field %q", name)
		case seen[name]:
			return protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "malformed JSON body: field %q twice", name)
		}
		seen[name] = true
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return nil
		}
	}
	return nil
}

// escapesValid reports whether every \u escape in the JSON text b is a
// character: a surrogate only as the first of a pair. Backslashes occur
// only inside strings, so no string tracking is needed; a malformed
// escape is left for the decoder to refuse.
func escapesValid(b []byte) bool {
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		i++ // the escaped character; for "\\" the second backslash
		if i >= len(b) || b[i] != 'u' {
			continue
		}
		r, ok := hex4(b[i+1:])
		if !ok {
			continue
		}
		i += 4
		switch {
		case r >= 0xd800 && r < 0xdc00:
			if len(b) > i+2 && b[i+1] == '\\' && b[i+2] == 'u' {
				if lo, ok := hex4(b[i+3:]); ok && lo >= 0xdc00 && lo < 0xe000 {
					i += 6
					continue
				}
			}
			return false
		case r >= 0xdc00 && r < 0xe000:
			return false
		}
	}
	return true
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	v, err := strconv.ParseUint(string(b[:4]), 16, 16)
	return rune(v), err == nil
}

// userByName resolves a name given in field of a call, saying which name
// was wrong.
func (a *api) userByName(ctx context.Context, field, name string) (User, error) {
	if err := protocol.ValidateUsername(name); err != nil {
		return User{}, protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "%s %q: %s", field, name, clientError(err).Message)
	}
	u, err := a.s.store.UserByName(ctx, name)
	if errors.Is(err, ErrUserNotFound) {
		return User{}, protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_NOT_FOUND, "%s: no user %q", field, name)
	}
	return u, err
}

// sender is who a call's message comes from: the named user, or the
// system user when from is empty (or names it).
func (a *api) sender(ctx context.Context, from string) (User, error) {
	if from == "" || strings.EqualFold(from, a.s.opts.APISystemUser) {
		return a.systemUser(ctx)
	}
	return a.userByName(ctx, "from", from)
}

// systemUser is the API's own sender, made on first use: an account
// whose password hash no password matches, under the reserved name
// (Register refuses it). Another node making it at the same moment is
// fine: one CreateUser wins and both read the winner. A name already
// taken by an account someone can log in to is refused, not sent as.
func (a *api) systemUser(ctx context.Context) (User, error) {
	ep := requestEpoch(ctx)
	if su := a.system.Load(); su != nil && su.epoch == ep {
		return su.user, nil
	}
	a.systemMu.Lock()
	defer a.systemMu.Unlock()
	if su := a.system.Load(); su != nil && su.epoch == ep {
		return su.user, nil
	}
	name := a.s.opts.APISystemUser
	u, err := a.s.store.Credentials(ctx, name)
	if errors.Is(err, ErrUserNotFound) {
		u, err = a.s.store.CreateUser(ctx, name, unusableHash)
		if errors.Is(err, ErrUsernameTaken) {
			u, err = a.s.store.Credentials(ctx, name)
		} else if err == nil {
			a.log.Info("made the API's system user", "user", name, "user_id", u.ID)
		}
	}
	if err != nil {
		return User{}, err
	}
	if !bytes.Equal(u.PasswordHash, unusableHash) {
		a.log.Error("the API's system user is a regular account: calls without a sender fail", "user", name)
		return User{}, ErrSystemUserTaken
	}
	su := &systemUser{epoch: ep, user: u.nameOnly()}
	a.system.Store(su)
	return su.user, nil
}

// idempotencyKey is the client_msg_id a call's idempotency key gives the
// message to one recipient ("u" and a user id) or group ("g" and its id):
// the store's dedup is per sender and message, and one call makes a
// message per recipient.
func idempotencyKey(key, kind string, id uint64) string {
	if key == "" {
		return ""
	}
	return key + "/" + kind + strconv.FormatUint(id, 10)
}

// sendEach sends text from from to each of to, a message of its own to
// each (its own conversation, its own seq), apiFanout at a time, and
// returns each one's receipt. It stops at the first failure, and returns
// it with how many it stored before: a retry with the same key stores
// only the rest. With skipBlocked, a recipient who blocks from (or whom
// from blocks) is left out, with a zero receipt, rather than failing it.
func (a *api) sendEach(ctx context.Context, from User, text, key string, to []uint64, skipBlocked bool) ([]sendReceipt, int, error) {
	receipts := make([]sendReceipt, len(to))
	ep := requestEpoch(ctx)
	var next atomic.Int64
	// A failure stops the workers from starting more sends, but does not
	// cancel the ones under way: cut off between their steps (on a Redis
	// Cluster), they would leave a message in history that reached no
	// inbox, and one that finished would go uncounted in the answer.
	var failMu sync.Mutex
	var failure error
	failed := func() bool {
		failMu.Lock()
		defer failMu.Unlock()
		return failure != nil
	}
	var wg sync.WaitGroup
	for range min(apiFanout, len(to)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(to) || ctx.Err() != nil || failed() {
					return
				}
				m := &chatpb.Message{FromUserId: from.ID, FromUsername: from.Name, ToUserId: to[i], Text: text}
				sctx, done := context.WithTimeout(ctx, requestTimeout)
				r, err := a.s.storeAndPush(sctx, outgoing{msg: m, recipients: to[i : i+1],
					clientMsgID: idempotencyKey(key, "u", to[i]), epoch: ep})
				done()
				if skipBlocked && errors.Is(err, ErrBlocked) {
					continue
				}
				if err != nil {
					failMu.Lock()
					if failure == nil {
						failure = &recipientError{index: i, err: err}
					}
					failMu.Unlock()
					return
				}
				receipts[i] = r
			}
		})
	}
	wg.Wait()
	stored := 0
	for _, r := range receipts {
		if r.msgID != 0 {
			stored++
		}
	}
	if failure == nil && ctx.Err() != nil {
		failure = context.Cause(ctx)
	}
	if failure != nil {
		return nil, stored, failure
	}
	return receipts, stored, nil
}

// recipientError is the failure of sendEach's send to to[index].
type recipientError struct {
	index int
	err   error
}

func (e *recipientError) Error() string { return e.err.Error() }
func (e *recipientError) Unwrap() error { return e.err }

// namingBlocked names the recipient of users whose block (theirs or the
// sender's) failed a sendEach: a retry must leave them out, and in a long
// list the caller could not tell whom otherwise.
func namingBlocked(err error, field string, users []User) error {
	var re *recipientError
	if !errors.Is(err, ErrBlocked) || !errors.As(err, &re) || re.index >= len(users) {
		return err
	}
	return fmt.Errorf("%w: %w", protocol.Errorf(chatpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED,
		"%s %q: %s", field, users[re.index].Name, ErrBlocked.Message), err)
}

// partial is err, telling the caller how far a fan-out got before it.
func partial(err error, stored int) error {
	err = unavailableIfDone(err)
	pe := clientError(err)
	retry := "retry with the same idempotency_key to reach only the rest"
	if errors.Is(err, ErrBlocked) {
		retry = "retry without that user, with the same idempotency_key, to reach only the rest"
	}
	return fmt.Errorf("%w: %w", protocol.Errorf(pe.Code,
		"%s (stored for %d recipients first; %s)", pe.Message, stored, retry), err)
}

// unavailableIfDone marks a call's timeout or cancellation as the
// dependency being unavailable, as a session's requests are: nothing
// more was done, and a retry may succeed.
func unavailableIfDone(err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("%w: %w", errUnavailable, err)
	}
	return err
}

// The calls' JSON.

type publishRequest struct {
	ToUser         string   `json:"to_user"`
	ToUsers        []string `json:"to_users"`
	ToGroup        uint64   `json:"to_group"`
	From           string   `json:"from"`
	Text           string   `json:"text"`
	IdempotencyKey string   `json:"idempotency_key"`
}

// publishResult is one message a publish stored. msg_id is a string:
// ids exceed 2^53, past which a JavaScript number loses digits.
type publishResult struct {
	To       string `json:"to,omitempty"`
	ToGroup  uint64 `json:"to_group,omitempty"`
	MsgID    uint64 `json:"msg_id,string"`
	Seq      uint64 `json:"seq"`
	SentAtMs int64  `json:"sent_at_ms"`
	Online   bool   `json:"online"`
}

type publishResponse struct {
	Results []publishResult `json:"results"`
}

// publish stores a message to a user, to each of a list of users, or to a
// group, durably like a client's Send (inboxes, seq, history), then pushes
// it live through the broker. The API is trusted: the sender need not be
// a friend or a member.
func (a *api) publish(r *http.Request) (int, any, error) {
	var req publishRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	if err := protocol.ValidateText(req.Text); err != nil {
		return 0, nil, err
	}
	if len(req.IdempotencyKey) > protocol.MaxClientMsgID {
		return 0, nil, ErrIdempotencyKey
	}
	named := 0
	for _, set := range []bool{req.ToUser != "", req.ToUsers != nil, req.ToGroup != 0} {
		if set {
			named++
		}
	}
	if named != 1 {
		return 0, nil, ErrPublishTarget
	}
	names := req.ToUsers
	switch {
	case req.ToUser != "":
		names = []string{req.ToUser}
	case len(names) > apiMaxUsers:
		return 0, nil, ErrPublishTooMany
	case req.ToGroup == 0 && len(names) == 0:
		return 0, nil, ErrPublishNoUsers
	}
	ctx := r.Context()
	bounded, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	from, err := a.sender(bounded, req.From)
	if err != nil {
		return 0, nil, err
	}
	if req.ToGroup != 0 {
		if order := a.s.groupOrder(req.ToGroup); order != nil {
			order.RLock()
			defer order.RUnlock()
		}
		g, err := a.s.store.Group(bounded, req.ToGroup)
		if err != nil {
			return 0, nil, err
		}
		m := &chatpb.Message{FromUserId: from.ID, FromUsername: from.Name, GroupId: g.ID, Text: req.Text}
		rc, err := a.s.storeAndPush(bounded, outgoing{msg: m, recipients: g.recipients(from.ID),
			clientMsgID: idempotencyKey(req.IdempotencyKey, "g", g.ID), epoch: requestEpoch(ctx)})
		if err != nil {
			return 0, nil, err
		}
		return http.StatusOK, publishResponse{[]publishResult{{ToGroup: g.ID, MsgID: rc.msgID, Seq: rc.seq,
			SentAtMs: rc.sentAtMs, Online: rc.online}}}, nil
	}
	field := "to_users"
	if req.ToUser != "" {
		field = "to_user"
	}
	users, err := a.resolve(ctx, field, names)
	if err != nil {
		return 0, nil, err
	}
	ids := make([]uint64, len(users))
	for i, u := range users {
		ids[i] = u.ID
	}
	receipts, stored, err := a.sendEach(ctx, from, req.Text, req.IdempotencyKey, ids, false)
	if err != nil {
		return 0, nil, partial(namingBlocked(err, field, users), stored)
	}
	out := make([]publishResult, len(users))
	for i, rc := range receipts {
		out[i] = publishResult{To: users[i].Name, MsgID: rc.msgID, Seq: rc.seq, SentAtMs: rc.sentAtMs, Online: rc.online}
	}
	return http.StatusOK, publishResponse{out}, nil
}

// resolve names users (given in field), apiFanout lookups at a time, each user once in the
// order first named. Any name that is invalid or unknown fails the whole
// call before anything is sent.
func (a *api) resolve(ctx context.Context, field string, names []string) ([]User, error) {
	users := make([]User, len(names))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(apiFanout, len(names)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(names) || ctx.Err() != nil {
					return
				}
				lctx, done := context.WithTimeout(ctx, requestTimeout)
				u, err := a.userByName(lctx, field, names[i])
				done()
				if err != nil {
					cancel(err)
					return
				}
				users[i] = u
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	seen := make(map[uint64]bool, len(users))
	out := users[:0]
	for _, u := range users {
		if !seen[u.ID] {
			seen[u.ID] = true
			out = append(out, u)
		}
	}
	return out, nil
}

type broadcastRequest struct {
	Text           string `json:"text"`
	Durable        bool   `json:"durable"`
	From           string `json:"from"`
	IdempotencyKey string `json:"idempotency_key"`
}

// broadcastResponse answers a durable broadcast.
type broadcastResponse struct {
	// Recipients: users the message was stored for.
	Recipients int `json:"recipients"`
	// Online: of those, how many were online.
	Online int `json:"online"`
}

// liveBroadcastResponse answers a transient broadcast: it has no
// recipients to count (a "recipients": 0 would read as "nobody got it").
type liveBroadcastResponse struct {
	// Nodes: how many nodes it reached, each of which pushed it to every
	// session logged in there.
	Nodes int `json:"nodes"`
}

// broadcast sends a message to every user: durable, stored for each
// registered user like a publish to each (which costs what that many
// sends cost); or transient, pushed to every online user and stored
// nowhere. Both are rate-limited per node.
func (a *api) broadcast(r *http.Request) (int, any, error) {
	var req broadcastRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	if err := protocol.ValidateText(req.Text); err != nil {
		return 0, nil, err
	}
	switch {
	case len(req.IdempotencyKey) > protocol.MaxClientMsgID:
		return 0, nil, ErrIdempotencyKey
	case req.IdempotencyKey != "" && !req.Durable:
		return 0, nil, ErrIdempotencyLive
	}
	if !a.broadcasts.Allow() {
		return 0, nil, ErrBroadcastRate
	}
	ctx := r.Context()
	bounded, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	from, err := a.sender(bounded, req.From)
	if err != nil {
		return 0, nil, err
	}
	if !req.Durable {
		m := &chatpb.Message{FromUserId: from.ID, FromUsername: from.Name, Text: req.Text}
		nodes, err := a.s.broadcastLive(bounded, m)
		if err != nil {
			return 0, nil, err
		}
		return http.StatusOK, liveBroadcastResponse{Nodes: nodes}, nil
	}
	select {
	case a.durable <- struct{}{}:
		defer func() { <-a.durable }()
	default:
		return 0, nil, ErrBroadcastBusy
	}
	var resp broadcastResponse
	for after := uint64(0); ; {
		pctx, done := context.WithTimeout(ctx, requestTimeout)
		page, err := a.s.store.Users(pctx, after, broadcastPage)
		done()
		if err != nil {
			return 0, nil, partial(err, resp.Recipients)
		}
		if len(page) == 0 {
			break
		}
		after = page[len(page)-1].ID
		ids := make([]uint64, 0, len(page))
		for _, u := range page {
			if u.ID != from.ID {
				ids = append(ids, u.ID)
			}
		}
		receipts, stored, err := a.sendEach(ctx, from, req.Text, req.IdempotencyKey, ids, true)
		if err != nil {
			return 0, nil, partial(err, resp.Recipients+stored)
		}
		for _, rc := range receipts {
			if rc.msgID == 0 {
				continue // blocked: not a recipient
			}
			resp.Recipients++
			if rc.online {
				resp.Online++
			}
		}
	}
	a.log.Info("durable broadcast", "from", from.Name, "recipients", resp.Recipients, "online", resp.Online)
	return http.StatusOK, resp, nil
}

type disconnectRequest struct {
	User   string `json:"user"`
	Reason string `json:"reason"`
	// RevokeTokensUntilMs, when present, revokes the user's tokens: every
	// one issued before is refused for good, and token logins are refused
	// until this time (0 or past: no such window).
	RevokeTokensUntilMs *int64 `json:"revoke_tokens_until_ms"`
}

type disconnectResponse struct {
	User          string `json:"user"`
	Online        bool   `json:"online"` // some node had a session of the user
	TokensRevoked bool   `json:"tokens_revoked"`
}

// disconnect ends every session of a user, on every node (a kick event on
// the user's channel), after revoking their tokens if asked.
func (a *api) disconnect(r *http.Request) (int, any, error) {
	var req disconnectRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	if err := protocol.ValidateKickText(req.Reason); err != nil {
		return 0, nil, err
	}
	ctx := r.Context()
	u, err := a.userByName(ctx, "user", req.User)
	if err != nil {
		return 0, nil, err
	}
	resp := disconnectResponse{User: u.Name}
	if req.RevokeTokensUntilMs != nil {
		// First: a client that reconnects the moment it is kicked must
		// already find its token refused.
		if err := a.s.store.RevokeTokens(ctx, u.ID, *req.RevokeTokensUntilMs); err != nil {
			return 0, nil, err
		}
		resp.TokensRevoked = true
	}
	if resp.Online, err = a.s.disconnect(ctx, u.ID, req.Reason); err != nil {
		return 0, nil, err
	}
	a.log.Info("disconnected a user", "user", u.Name, "user_id", u.ID, "online", resp.Online, "tokens_revoked", resp.TokensRevoked)
	return http.StatusOK, resp, nil
}

type presenceResponse struct {
	User   string `json:"user"`
	UserID uint64 `json:"user_id"`
	// Online: some node has a session of the user now (hidden presence or
	// not).
	Online bool `json:"online"`
	// LastSeenMs: when the user's last session ended, as friends see it
	// (0 while online, and when unknown or hidden).
	LastSeenMs int64 `json:"last_seen_ms"`
	// DevicesOnline: the devices with a session, when this node knows them
	// all (one node on the embedded store); absent in a cluster.
	DevicesOnline []string `json:"devices_online,omitempty"`
}

// presence reads one user's presence: online from the broker (a session
// anywhere), last seen from the presence store.
func (a *api) presence(r *http.Request) (int, any, error) {
	ctx := r.Context()
	u, err := a.userByName(ctx, "user", r.URL.Query().Get("user"))
	if err != nil {
		return 0, nil, err
	}
	online, err := a.s.broker.Online(ctx, []uint64{u.ID})
	if err != nil {
		return 0, nil, err
	}
	states, err := a.s.store.Presence(ctx, []uint64{u.ID})
	if err != nil {
		return 0, nil, err
	}
	resp := presenceResponse{User: u.Name, UserID: u.ID, Online: online[0], LastSeenMs: states[0].LastSeenMs}
	if resp.Online {
		resp.LastSeenMs = 0
	}
	if a.s.registry == nil && resp.Online {
		resp.DevicesOnline = []string{}
		for _, c := range a.s.users.get(u.ID) {
			if su := c.user.Load(); su != nil {
				resp.DevicesOnline = append(resp.DevicesOnline, su.device)
			}
		}
	}
	return http.StatusOK, resp, nil
}

type nodesResponse struct {
	Nodes []protocol.NodeInfo `json:"nodes"`
}

// nodes lists the cluster's live nodes from the registry (this node alone
// on the embedded store).
func (a *api) nodes(r *http.Request) (int, any, error) {
	nodes, err := a.s.clusterNodes(r.Context())
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, nodesResponse{nodes}, nil
}

// clusterNodes is every live node's registry entry.
func (s *Server) clusterNodes(ctx context.Context) ([]protocol.NodeInfo, error) {
	if s.registry == nil {
		return []protocol.NodeInfo{s.nodeInfo()}, nil
	}
	return s.registry.list(ctx)
}

type statsResponse struct {
	NodeID string `json:"node_id"`
	// Connections: client connections open on this node; UsersHere: users
	// logged in on it.
	Connections int `json:"connections"`
	UsersHere   int `json:"users_here"`
	// Cluster sums the registry: its nodes and their connections (as of
	// each node's last heartbeat).
	Cluster clusterStats `json:"cluster"`
}

type clusterStats struct {
	Nodes       int `json:"nodes"`
	Connections int `json:"connections"`
}

// stats answers a few counters: this node's from memory, the cluster's
// from the registry (two reads).
func (a *api) stats(r *http.Request) (int, any, error) {
	nodes, err := a.s.clusterNodes(r.Context())
	if err != nil {
		return 0, nil, err
	}
	resp := statsResponse{NodeID: a.s.opts.NodeID, Connections: a.s.connCount(), UsersHere: a.s.users.count()}
	resp.Cluster.Nodes = len(nodes)
	for _, n := range nodes {
		resp.Cluster.Connections += n.Conns
	}
	return http.StatusOK, resp, nil
}

type createUserRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

type userResponse struct {
	UserID   uint64 `json:"user_id"`
	Username string `json:"username"`
}

// createUser registers an account, as Register does.
func (a *api) createUser(r *http.Request) (int, any, error) {
	var req createUserRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	u, err := a.s.createUser(r.Context(), req.Username, req.Password)
	if err != nil {
		return 0, nil, err
	}
	a.log.Info("made a user", "user", u.Name, "user_id", u.ID)
	return http.StatusCreated, userResponse{UserID: u.ID, Username: u.Name}, nil
}

type banRequest struct {
	// UntilMs: the ban ends then (unix ms); absent or 0: when lifted.
	UntilMs int64  `json:"until_ms"`
	Reason  string `json:"reason"`
}

type banResponse struct {
	User    string `json:"user"`
	Banned  bool   `json:"banned"`
	UntilMs int64  `json:"until_ms,omitempty"` // absent: until lifted
	Online  bool   `json:"online,omitempty"`   // a session was there to disconnect
}

// ban keeps a user from logging in, and disconnects their sessions.
func (a *api) ban(r *http.Request) (int, any, error) {
	var req banRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	if err := protocol.ValidateKickText(req.Reason); err != nil {
		return 0, nil, err
	}
	until := req.UntilMs
	switch {
	case until == 0:
		until = math.MaxInt64
	case until <= time.Now().UnixMilli():
		return 0, nil, ErrBanUntil
	}
	ctx := r.Context()
	u, err := a.userByName(ctx, "user", r.PathValue("name"))
	if err != nil {
		return 0, nil, err
	}
	if err := a.s.store.SetBan(ctx, u.ID, until); err != nil {
		return 0, nil, err
	}
	msg := req.Reason
	if msg == "" {
		msg = "this account is banned"
	}
	resp := banResponse{User: u.Name, Banned: true, UntilMs: req.UntilMs}
	if resp.Online, err = a.s.disconnect(ctx, u.ID, msg); err != nil {
		// Banned: no login gets through; only the live sessions stay
		// until the call is repeated.
		return 0, nil, fmt.Errorf("banned, but the sessions were not disconnected: %w", err)
	}
	a.log.Info("banned a user", "user", u.Name, "user_id", u.ID, "until_ms", req.UntilMs)
	return http.StatusOK, resp, nil
}

// unban lifts a user's ban.
func (a *api) unban(r *http.Request) (int, any, error) {
	ctx := r.Context()
	u, err := a.userByName(ctx, "user", r.PathValue("name"))
	if err != nil {
		return 0, nil, err
	}
	if err := a.s.store.SetBan(ctx, u.ID, 0); err != nil {
		return 0, nil, err
	}
	a.log.Info("lifted a ban", "user", u.Name, "user_id", u.ID)
	return http.StatusOK, banResponse{User: u.Name}, nil
}

type memberRequest struct {
	User string `json:"user"`
}

type memberResponse struct {
	GroupID uint64 `json:"group_id"`
	User    string `json:"user"`
	Member  bool   `json:"member"`
}

// addMember adds a user to a group as JoinGroup would (the same limits).
// The group's next message reaches them wherever they are logged in: the
// nodes holding their sessions hear the group (Server.joinGroup).
func (a *api) addMember(r *http.Request) (int, any, error) {
	gid, err := groupIDOf(r)
	if err != nil {
		return 0, nil, err
	}
	var req memberRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	ctx := r.Context()
	u, err := a.userByName(ctx, "user", req.User)
	if err != nil {
		return 0, nil, err
	}
	if err := a.s.joinGroup(ctx, gid, u.ID); err != nil {
		return 0, nil, err
	}
	a.log.Info("added a group member", "group_id", gid, "user", u.Name)
	return http.StatusOK, memberResponse{GroupID: gid, User: u.Name, Member: true}, nil
}

// removeMember takes a user out of a group as LeaveGroup would.
func (a *api) removeMember(r *http.Request) (int, any, error) {
	gid, err := groupIDOf(r)
	if err != nil {
		return 0, nil, err
	}
	ctx := r.Context()
	u, err := a.userByName(ctx, "user", r.PathValue("user"))
	if err != nil {
		return 0, nil, err
	}
	if err := a.s.leaveGroup(ctx, gid, u.ID); err != nil {
		return 0, nil, err
	}
	a.log.Info("removed a group member", "group_id", gid, "user", u.Name)
	return http.StatusOK, memberResponse{GroupID: gid, User: u.Name}, nil
}

func groupIDOf(r *http.Request) (uint64, error) {
	gid, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || gid == 0 {
		return 0, ErrGroupID
	}
	return gid, nil
}
