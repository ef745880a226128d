package server

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are one server's counters, registered on its own registry (never
// the global one) so several servers can live in one process.
type metrics struct {
	registry         *prometheus.Registry
	connsOpen        prometheus.Gauge
	connsTotal       prometheus.Counter
	requests         *prometheus.CounterVec // kind, result
	logins           prometheus.Counter
	loginFailures    prometheus.Counter
	messagesSent     prometheus.Counter
	deliveredLive    prometheus.Counter
	deliveredReplay  prometheus.Counter
	storedOffline    prometheus.Counter
	inboxTrimmed     prometheus.Counter
	frameErrors      *prometheus.CounterVec // kind: zero_length, too_large, garbage
	kicks            *prometheus.CounterVec // reason
	rateLimited      prometheus.Counter
	externalPushes   prometheus.Counter
	pubsubReconnects prometheus.Counter
	channelErrors    prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		connsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "loopchat_connections_open", Help: "Client connections open now."}),
		connsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_connections_total", Help: "Client connections accepted."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loopchat_requests_total", Help: "Requests handled, by type and result (ok or an error code)."},
			[]string{"type", "result"}),
		logins: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_logins_total", Help: "Successful logins."}),
		loginFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_login_failures_total", Help: "Failed login attempts."}),
		messagesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_messages_sent_total", Help: "Messages accepted (SendOK, not counting retried duplicates)."}),
		deliveredLive: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_messages_delivered_live_total", Help: "Message pushes to online recipients."}),
		deliveredReplay: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_messages_delivered_replay_total", Help: "Message pushes replayed from inboxes at login."}),
		storedOffline: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_messages_stored_offline_total", Help: "Message copies stored for recipients that were offline."}),
		inboxTrimmed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_inbox_trimmed_total", Help: "Oldest inbox messages dropped because an inbox was full."}),
		frameErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loopchat_frame_errors_total", Help: "Connections closed for broken framing, by kind."},
			[]string{"kind"}),
		kicks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loopchat_kicks_total", Help: "Connections the server closed, by reason."},
			[]string{"reason"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_rate_limited_total", Help: "Requests refused by the per-connection rate or in-flight limit."}),
		externalPushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_external_pushes_total", Help: "Messages published to user channels by other programs (pushed live, not stored)."}),
		pubsubReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_pubsub_reconnects_total", Help: "Times the Redis pub/sub connection came back after a loss."}),
		channelErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loopchat_channel_payload_errors_total", Help: "User channel payloads dropped as invalid JSON or events."}),
	}
	m.registry.MustRegister(m.externalPushes, m.pubsubReconnects, m.channelErrors, m.connsOpen, m.connsTotal, m.requests, m.logins, m.loginFailures,
		m.messagesSent, m.deliveredLive, m.deliveredReplay, m.storedOffline, m.inboxTrimmed,
		m.frameErrors, m.kicks, m.rateLimited)
	return m
}

// Registry is the Prometheus registry holding this server's metrics.
func (s *Server) Registry() *prometheus.Registry { return s.metrics.registry }
