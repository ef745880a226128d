package server

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
)

// metrics are one server's counters, registered on its own registry (never
// the global one) so several servers can live in one process. Every metric
// is described in docs/operations.md.
type metrics struct {
	registry    *prometheus.Registry
	connsOpen   prometheus.Gauge
	connsByLoop *prometheus.GaugeVec // loop
	connsTotal  prometheus.Counter
	requests    *prometheus.CounterVec // type, result
	// requestsOK caches requests' "ok" child per type (string →
	// prometheus.Counter): WithLabelValues hashes both labels and takes
	// a lock on every call, and every request ends here.
	requestsOK       sync.Map
	logins           prometheus.Counter
	loginFailures    prometheus.Counter
	loginThrottled   prometheus.Counter
	connsRefused     *prometheus.CounterVec
	messagesSent     prometheus.Counter
	deliveredLive    prometheus.Counter
	deliveredReplay  prometheus.Counter
	storedOffline    prometheus.Counter
	inboxReplay      prometheus.Histogram
	inboxTrimmed     prometheus.Counter
	historyTrimmed   prometheus.Counter
	frameErrors      *prometheus.CounterVec // kind: zero_length, too_large, garbage, proxy_header, ws_upgrade
	kicks            *prometheus.CounterVec // reason
	slowConsumers    prometheus.Counter
	rateLimited      prometheus.Counter
	externalPushes   prometheus.Counter
	broadcasts       prometheus.Counter
	groupChannels    prometheus.Gauge
	pubsubReconnects prometheus.Counter
	channelErrors    prometheus.Counter
	storeResets      prometheus.Counter
	staleEvents      prometheus.Counter
	deviceKicks      prometheus.Counter
	presenceChanges  *prometheus.CounterVec // state
	presencePending  prometheus.Gauge
	presenceSwept    prometheus.Counter
	presenceErrors   prometheus.Counter
	typingNotices    *prometheus.CounterVec // result
	storeCommit      prometheus.Histogram
	storeBatch       prometheus.Histogram
	logSync          prometheus.Histogram
	logBatch         prometheus.Histogram
	redisLatency     *prometheus.HistogramVec // cmd
	redisErrors      *prometheus.CounterVec   // cmd
	apiRequests      *prometheus.CounterVec   // route, code
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		connsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "loopchat_connections_open", Help: "Client connections open now."}),
		connsByLoop: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loopchat_loop_connections_open", Help: "Client connections open now, by gnet event loop."},
			[]string{"loop"}),
		connsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_connections_total", Help: "Client connections accepted."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loopchat_requests_total", Help: "Requests handled, by type and result (ok or an error code)."},
			[]string{"type", "result"}),
		logins: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_logins_total", Help: "Successful logins."}),
		loginFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_login_failures_total", Help: "Failed login attempts."}),
		connsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loopchat_connections_refused_total", Help: "Connections refused and closed, by reason: max_conns (the node is full), address (its address has too many not logged in)."},
			[]string{"reason"}),
		loginThrottled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_login_throttled_total", Help: "Password logins refused unchecked: their source address failed too often (--login-failures)."}),
		messagesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_messages_sent_total", Help: "Messages accepted (SendOK, not counting retried duplicates)."}),
		deliveredLive: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_messages_delivered_live_total", Help: "Message pushes to online recipients."}),
		deliveredReplay: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_messages_delivered_replay_total", Help: "Message pushes replayed from inboxes at login or resync."}),
		storedOffline: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_messages_stored_offline_total", Help: "Message copies stored for recipients that were offline."}),
		inboxReplay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "loopchat_inbox_replay_messages", Help: "Inbox size replayed per login or resync.",
			Buckets: []float64{0, 1, 10, 100, 1000, 10000}}),
		inboxTrimmed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_inbox_trimmed_total", Help: "Oldest inbox messages dropped because an inbox was full."}),
		historyTrimmed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_history_trimmed_total", Help: "Messages dropped from conversations' history by retention (--history-max-messages, --history-max-age)."}),
		frameErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loopchat_frame_errors_total", Help: "Connections closed for broken framing, by kind."},
			[]string{"kind"}),
		kicks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loopchat_kicks_total", Help: "Connections the server closed, by reason."},
			[]string{"reason"}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_slow_consumers_total", Help: "Times a client's unread output passed the outbound limit."}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_rate_limited_total", Help: "Requests refused by the per-connection rate or in-flight limit."}),
		externalPushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_external_pushes_total", Help: "Messages published to user channels by other programs (pushed live, not stored)."}),
		broadcasts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_broadcasts_total", Help: "Broadcast messages this node pushed to all its logged-in sessions."}),
		groupChannels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "loopchat_group_channels", Help: "Group channels this node hears: groups with a member logged in here, as far as it knows."}),
		pubsubReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_pubsub_reconnects_total", Help: "Times the Redis pub/sub connection came back after a loss."}),
		channelErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_channel_payload_errors_total", Help: "User, group or broadcast channel payloads dropped as invalid JSON or events."}),
		storeResets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_store_resets_total", Help: "Times this node found the store's epoch changed (the store lost its data, was replaced or rolled back) and kicked every session."}),
		staleEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_stale_events_total", Help: "Channel events dropped because they belong to other store contents than the session they reached (store epoch)."}),
		deviceKicks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_device_kicks_total", Help: "Device sessions kicked for DEVICE_LIMIT (too many devices of one user online, or a device forgotten to make room)."}),
		presenceChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loopchat_presence_changes_total", Help: "Users this node announced to their friends as come online or gone offline, by state."},
			[]string{"state"}),
		presencePending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "loopchat_presence_settles_pending", Help: "Users whose last session on this node ended and whose offline grace is not over."}),
		presenceSwept: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_presence_swept_total", Help: "Users of dead nodes this node settled (offline unless online elsewhere)."}),
		presenceErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_presence_errors_total", Help: "Presence changes not recorded or not told (the store or Redis failed); a failed settle is retried."}),
		typingNotices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loopchat_typing_notices_total", Help: "Typing requests, by result: sent (published to the other side), dropped (over the typing rate), blocked (one of a 1:1 conversation's two blocks the other)."},
			[]string{"result"}),
		storeCommit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "loopchat_store_commit_seconds", Help: "Embedded store group-commit duration (one fsync'd transaction).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		storeBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "loopchat_store_commit_batch_size", Help: "Writes per embedded store commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		logSync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "loopchat_store_log_sync_seconds", Help: "Embedded store message log: write and fdatasync of one batch of sends.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16)}),
		logBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "loopchat_store_log_batch_size", Help: "Sends and acks per message log fdatasync.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		redisLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "loopchat_redis_command_seconds", Help: "Redis command (or pipeline) latency, by command.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"cmd"}),
		redisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loopchat_redis_errors_total", Help: "Redis commands that failed, by command."}, []string{"cmd"}),
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loopchat_api_requests_total", Help: "HTTP API calls, by route (its pattern, or \"unmatched\") and HTTP status code."},
			[]string{"route", "code"}),
	}
	m.registry.MustRegister(m.connsOpen, m.connsByLoop, m.connsTotal, m.requests, m.logins,
		m.loginFailures, m.loginThrottled, m.connsRefused, m.messagesSent, m.deliveredLive, m.deliveredReplay, m.storedOffline,
		m.inboxReplay, m.inboxTrimmed, m.historyTrimmed, m.frameErrors, m.kicks, m.slowConsumers, m.rateLimited,
		m.externalPushes, m.broadcasts, m.groupChannels, m.pubsubReconnects, m.channelErrors, m.storeResets, m.staleEvents, m.deviceKicks,
		m.presenceChanges, m.presencePending, m.presenceSwept, m.presenceErrors, m.typingNotices, m.storeCommit, m.storeBatch, m.logSync, m.logBatch,
		m.redisLatency, m.redisErrors, m.apiRequests,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the Prometheus registry holding this server's metrics.
func (s *Server) Registry() *prometheus.Registry { return s.metrics.registry }

// redisMetricsHook times every Redis command and pipeline.
type redisMetricsHook struct{ m *metrics }

func (h redisMetricsHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h redisMetricsHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmd)
		h.observe(cmd.Name(), start, err)
		return err
	}
}

func (h redisMetricsHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmds)
		h.observe("pipeline", start, err)
		return err
	}
}

func (h redisMetricsHook) observe(cmd string, start time.Time, err error) {
	h.m.redisLatency.WithLabelValues(cmd).Observe(time.Since(start).Seconds())
	var ne net.Error
	if err != nil && !errors.Is(err, redis.Nil) && (errors.As(err, &ne) || !isRedisReply(err)) {
		h.m.redisErrors.WithLabelValues(cmd).Inc()
	}
}

// isRedisReply tells a server's error reply (a script's business) from a
// transport failure.
func isRedisReply(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// requestOK counts one request of the given type that succeeded.
func (m *metrics) requestOK(kind string) {
	if c, ok := m.requestsOK.Load(kind); ok {
		c.(prometheus.Counter).Inc()
		return
	}
	c, _ := m.requestsOK.LoadOrStore(kind, m.requests.WithLabelValues(kind, "ok"))
	c.(prometheus.Counter).Inc()
}
