//! Prometheus metrics (prometheus-client): requests by route and outcome, latency
//! histograms, redeem outcomes by error code, issuer call latency and errors, active
//! appliances by health (counted at a scrape when the last count is older than
//! `HEALTH_GAUGE_MAX_AGE`), database pool usage (sampled at scrape time), the
//! listeners' open, refused and timed-out connections, and the seconds left until the
//! newest appliance CA expires (computed at scrape time).
//!
//! Every label's values come from a fixed set, whatever a client sends: the route is
//! the router's template (or `unmatched`), the method one of [`METHODS`] or `other`,
//! the status a number from 100 to 599 (or `other`); every other label is a string
//! constant of the code (`&'static str`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use time::OffsetDateTime;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: &'static str,
    status: StatusLabel,
}

/// The methods that get their own `method` label; any other is `other`.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// The `method` label of a request method: itself when it is one of [`METHODS`]
/// (exact, as methods are case-sensitive), else `other`.
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// The `status` label: the code when it is a valid HTTP status (100 to 599), else
/// `other`; at most 501 values.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct StatusLabel(u16);

impl prometheus_client::encoding::EncodeLabelValue for StatusLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        if (100..=599).contains(&self.0) {
            write!(encoder, "{}", self.0)
        } else {
            encoder.write_str("other")
        }
    }
}

impl StatusLabel {
    fn new(status: u16) -> StatusLabel {
        // Every invalid code shares one series.
        StatusLabel(if (100..=599).contains(&status) {
            status
        } else {
            0
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// Why a connection was closed at accept (`reason` of `connections_refused_total`).
pub const REFUSED_PER_SOURCE_LIMIT: &str = "per_source_limit";

/// What a slow client was doing when its timeout closed it (`phase` of
/// `connection_timeouts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// The TLS handshake did not finish within `limits.tls_handshake_timeout_secs`.
    TlsHandshake,
    /// A request's headers did not arrive within `limits.header_read_timeout_secs`.
    Header,
    /// A request's body did not arrive within `limits.body_read_timeout_secs`.
    Body,
    /// No request in progress for `limits.idle_timeout_secs`.
    Idle,
    /// An HTTP/2 ping was not answered within `limits.http2_keep_alive_timeout_secs`.
    Http2KeepAlive,
}

impl TimeoutPhase {
    /// Every phase, in label order.
    pub const ALL: [TimeoutPhase; 5] = [
        TimeoutPhase::TlsHandshake,
        TimeoutPhase::Header,
        TimeoutPhase::Body,
        TimeoutPhase::Idle,
        TimeoutPhase::Http2KeepAlive,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            TimeoutPhase::TlsHandshake => "tls_handshake",
            TimeoutPhase::Header => "header",
            TimeoutPhase::Body => "body",
            TimeoutPhase::Idle => "idle",
            TimeoutPhase::Http2KeepAlive => "http2_keep_alive",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MailLabels {
    outcome: &'static str,
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpErrorLabels {
    op: &'static str,
    kind: &'static str,
}

/// [`CaExpiry`]'s value while no appliance CA is known.
const NO_CA: i64 = i64::MIN;

/// `appliance_ca_expiry_seconds`: seconds from the scrape until the newest appliance
/// CA certificate's notAfter (negative once it has passed), from the chain last
/// fetched from the issuer; absent while there is none. Computed at each scrape, so it
/// counts down between key refreshes and never shows a stale value.
#[derive(Debug)]
struct CaExpiry {
    /// The newest CA's notAfter, Unix seconds, or [`NO_CA`].
    not_after: Arc<AtomicI64>,
}

impl Collector for CaExpiry {
    #[allow(
        clippy::disallowed_methods,
        reason = "reads the clock at an edge and passes `now` down"
    )]
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let not_after = self.not_after.load(Ordering::Relaxed);
        let Ok(not_after) = OffsetDateTime::from_unix_timestamp(not_after) else {
            return Ok(());
        };
        let gauge = ConstGauge::new(crate::keys::seconds_until(
            not_after,
            OffsetDateTime::now_utc(),
        ));
        let metric = encoder.encode_descriptor(
            "appliance_ca_expiry_seconds",
            "Seconds until the newest appliance CA certificate expires (negative: expired); \
             the issuer refuses to sign credentials before then: rotate it \
             (alga-issuer keys rotate ca) well ahead",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

/// Every metric of the gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteLabels, Counter>,
    latency: Family<RouteOnly, Histogram>,
    redeem: Family<OutcomeLabels, Counter>,
    issuer_latency: Family<OpLabels, Histogram>,
    issuer_errors: Family<OpErrorLabels, Counter>,
    mail: Family<MailLabels, Counter>,
    witness: Family<OutcomeLabels, Counter>,
    webhook: Family<OutcomeLabels, Counter>,
    webhook_backlog: Gauge<i64, AtomicU64Compat>,
    webhook_oldest: Gauge<i64, AtomicU64Compat>,
    appliances: Family<HealthLabels, Gauge<i64, AtomicU64Compat>>,
    /// When a count of `appliances` was last claimed.
    appliances_counted: std::sync::Mutex<Option<std::time::Instant>>,
    pool_size: Gauge<i64, AtomicU64Compat>,
    pool_available: Gauge<i64, AtomicU64Compat>,
    pool_waiting: Gauge<i64, AtomicU64Compat>,
    connections_open: Gauge<i64, AtomicU64Compat>,
    connections_refused: Family<ReasonLabels, Counter>,
    connection_timeouts: Family<PhaseLabels, Counter>,
    /// What `appliance_ca_expiry_seconds` is computed from (see [`CaExpiry`]).
    appliance_ca_not_after: Arc<AtomicI64>,
}

/// The gauge atomic (i64 values).
type AtomicU64Compat = std::sync::atomic::AtomicI64;

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("alga_gateway");
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteOnly, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        let redeem = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "redeem_outcomes",
            "POST /register outcomes (ok or the error code)",
            redeem.clone(),
        );
        let issuer_latency = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "issuer_call_duration_seconds",
            "Issuer call latency by operation",
            issuer_latency.clone(),
        );
        let issuer_errors = Family::<OpErrorLabels, Counter>::default();
        registry.register(
            "issuer_call_errors",
            "Issuer call failures by operation and kind (unreachable, unavailable, \
             ca_expiring: the issuer refuses to sign until its appliance CA is rotated, \
             refused, protocol, config)",
            issuer_errors.clone(),
        );
        let mail = Family::<MailLabels, Counter>::default();
        registry.register(
            "mail_deliveries",
            "Mail delivery attempts by outcome (sent, retry, failed: retry budget spent or \
             undeliverable) and path (first: inside the request; worker)",
            mail.clone(),
        );
        let witness = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "witness_submissions",
            "Audit log checkpoints submitted to witnesses by outcome (cosigned, conflict: \
             the witness named another size and the submission was redone, refused: the \
             witness refused the checkpoint, look at the error log, unreachable, error)",
            witness.clone(),
        );
        let webhook = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered: the receiver answered 2xx, \
             retry: it did not, the event is retried after a back-off)",
            webhook.clone(),
        );
        for outcome in ["delivered", "retry"] {
            webhook.get_or_create(&OutcomeLabels { outcome }).get();
        }
        let webhook_backlog = Gauge::<i64, AtomicU64Compat>::default();
        registry.register(
            "webhook_backlog_events",
            "Events not yet delivered to the webhook endpoints (all endpoints; set by the \
             gateway leading the audit sequencer, 0 on the others)",
            webhook_backlog.clone(),
        );
        let webhook_oldest = Gauge::<i64, AtomicU64Compat>::default();
        registry.register(
            "webhook_oldest_undelivered_age_seconds",
            "Age of the oldest event not yet delivered to a webhook endpoint (0: none; set \
             by the gateway leading the audit sequencer)",
            webhook_oldest.clone(),
        );
        let appliances = Family::<HealthLabels, Gauge<i64, AtomicU64Compat>>::default();
        registry.register(
            "appliances",
            "Active appliances of paid editions by health (ok, overdue: past the next \
             expected check-in and the edition's grace, stale: no check-in for 30 days), \
             counted when /metrics is scraped and the last count is older than 30 s",
            appliances.clone(),
        );
        let pool_size = Gauge::<i64, AtomicU64Compat>::default();
        registry.register(
            "db_pool_connections",
            "Open database connections",
            pool_size.clone(),
        );
        let pool_available = Gauge::<i64, AtomicU64Compat>::default();
        registry.register(
            "db_pool_available",
            "Idle database connections (negative: waiters)",
            pool_available.clone(),
        );
        let pool_waiting = Gauge::<i64, AtomicU64Compat>::default();
        registry.register(
            "db_pool_waiting",
            "Requests waiting for a database connection",
            pool_waiting.clone(),
        );
        let connections_open = Gauge::<i64, AtomicU64Compat>::default();
        registry.register(
            "connections_open",
            "Open connections on the API port (TLS handshakes included)",
            connections_open.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept, before any TLS work, by reason (per_source_limit: \
             the source already holds limits.max_connections_per_source)",
            connections_refused.clone(),
        );
        let connection_timeouts = Family::<PhaseLabels, Counter>::default();
        registry.register(
            "connection_timeouts",
            "Connections and requests closed by a [limits] timeout, by phase (tls_handshake, \
             header, body, idle, http2_keep_alive)",
            connection_timeouts.clone(),
        );
        let appliance_ca_not_after = Arc::new(AtomicI64::new(NO_CA));
        registry.register_collector(Box::new(CaExpiry {
            not_after: appliance_ca_not_after.clone(),
        }));
        // Present from the start, at 0: a dashboard sees the series before the first event.
        connections_refused
            .get_or_create(&ReasonLabels {
                reason: REFUSED_PER_SOURCE_LIMIT,
            })
            .get();
        for phase in TimeoutPhase::ALL {
            connection_timeouts
                .get_or_create(&PhaseLabels {
                    phase: phase.label(),
                })
                .get();
        }
        Metrics {
            registry,
            requests,
            latency,
            redeem,
            issuer_latency,
            issuer_errors,
            mail,
            witness,
            webhook,
            webhook_backlog,
            webhook_oldest,
            appliances,
            appliances_counted: std::sync::Mutex::new(None),
            pool_size,
            pool_available,
            pool_waiting,
            connections_open,
            connections_refused,
            connection_timeouts,
            appliance_ca_not_after,
        }
    }

    /// Records one HTTP request. `route` is the router's template of the matched route
    /// (or `unmatched`), never the request's path; `method` is mapped by
    /// [`method_label`] and `status` to 100..=599 or `other`, so no request can add a
    /// series of its own.
    pub fn request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method: method_label(method),
                status: StatusLabel::new(status),
            })
            .inc();
        self.latency
            .get_or_create(&RouteOnly {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records a redeem outcome: `ok` or the stable error code.
    pub fn redeem_outcome(&self, outcome: &'static str) {
        self.redeem.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Records one issuer call.
    pub fn issuer_call(&self, op: &'static str, elapsed: Duration, error: Option<&'static str>) {
        self.issuer_latency
            .get_or_create(&OpLabels { op })
            .observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            self.issuer_errors
                .get_or_create(&OpErrorLabels { op, kind })
                .inc();
        }
    }

    /// Records an issuer failure that was not a call's own: a license refused inside a
    /// batch the issuer answered (`op` the single call's, `kind` as
    /// [`Metrics::issuer_call`]'s).
    pub fn issuer_error(&self, op: &'static str, kind: &'static str) {
        self.issuer_errors
            .get_or_create(&OpErrorLabels { op, kind })
            .inc();
    }

    /// Sets the notAfter of the newest appliance CA (`None`: no chain fetched yet), from
    /// which each scrape computes `appliance_ca_expiry_seconds`.
    pub fn set_appliance_ca_not_after(&self, not_after: Option<OffsetDateTime>) {
        self.appliance_ca_not_after.store(
            not_after.map_or(NO_CA, OffsetDateTime::unix_timestamp),
            Ordering::Relaxed,
        );
    }

    /// Records one recorded mail attempt: `outcome` is `sent`, `retry` or `failed`,
    /// `path` is `first` (inside the request) or `worker`.
    pub fn mail_delivery(&self, outcome: &'static str, path: &str) {
        let path = match path {
            "first" => "first",
            "worker" => "worker",
            _ => "other",
        };
        self.mail.get_or_create(&MailLabels { outcome, path }).inc();
    }

    /// Records one checkpoint submission to a witness: `cosigned`, `conflict`,
    /// `refused`, `unreachable` or `error`.
    pub fn witness_submission(&self, outcome: &'static str) {
        self.witness.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Records one webhook delivery attempt: `delivered` or `retry`.
    pub fn webhook_delivery(&self, outcome: &'static str) {
        self.webhook.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Sets the webhook backlog: undelivered events and the oldest one's age.
    pub fn webhook_backlog(&self, events: i64, oldest_age_secs: i64) {
        self.webhook_backlog.set(events);
        self.webhook_oldest.set(oldest_age_secs);
    }

    /// Sets how many active appliances are in each health (`ok`, `overdue`, `stale`).
    pub fn appliances_by_health(&self, counts: &[(&'static str, i64)]) {
        for &(health, count) in counts {
            self.appliances
                .get_or_create(&HealthLabels { health })
                .set(count);
        }
    }

    /// Claims the next count of the appliances-by-health gauge: `true` (and the claim
    /// is recorded at `now`) when the last claim is older than `max_age` or there was
    /// none. Concurrent scrapes at the due moment get one `true` between them, so a
    /// burst of anonymous scrapes costs one count, not one each.
    pub fn claim_appliances_count(&self, now: std::time::Instant, max_age: Duration) -> bool {
        let mut last = self
            .appliances_counted
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| now.saturating_duration_since(t) >= max_age);
        if due {
            *last = Some(now);
        }
        due
    }

    /// A connection was opened on the API port; it counts as open until the guard drops.
    pub fn connection_opened(self: &std::sync::Arc<Self>) -> OpenConnection {
        self.connections_open.inc();
        OpenConnection(self.clone())
    }

    /// A connection was closed at accept (`reason`: [`REFUSED_PER_SOURCE_LIMIT`]).
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A slow client was cut off by a timeout.
    pub fn connection_timeout(&self, phase: TimeoutPhase) {
        self.connection_timeouts
            .get_or_create(&PhaseLabels {
                phase: phase.label(),
            })
            .inc();
    }

    /// Renders the text exposition format, sampling the pool first.
    pub fn render(&self, pool: &deadpool_postgres::Pool) -> Result<String, std::fmt::Error> {
        let s = pool.status();
        self.pool_size
            .set(i64::try_from(s.size).unwrap_or(i64::MAX));
        self.pool_available
            .set(i64::try_from(s.available).unwrap_or(i64::MAX));
        self.pool_waiting
            .set(i64::try_from(s.waiting).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// An open connection in `alga_gateway_connections_open`, until dropped.
#[derive(Debug)]
pub struct OpenConnection(std::sync::Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_statuses_map_to_a_fixed_set() {
        for m in METHODS {
            assert_eq!(method_label(m), m);
        }
        for junk in ["get", "FOO", "", "GET ", &"X".repeat(60_000)] {
            assert_eq!(method_label(junk), "other", "{junk:.10}");
        }
        let m = Metrics::new();
        let series = |m: &Metrics| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &m.registry).expect("encodes");
            out.lines()
                .filter(|l| l.starts_with("alga_gateway_http_requests_total{"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        for i in 0..500u16 {
            m.request("unmatched", &format!("JUNK{i}"), 405, Duration::ZERO);
            m.request("unmatched", "GET", 1000 + i, Duration::ZERO);
            m.request("unmatched", "GET", i % 100, Duration::ZERO);
        }
        let s = series(&m);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(
            s.iter()
                .any(|l| l.contains(r#"method="other",status="405""#)),
            "{s:?}"
        );
        assert!(
            s.iter()
                .any(|l| l.contains(r#"method="GET",status="other""#)),
            "{s:?}"
        );
    }

    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "reads the clock at an edge and passes `now` down"
    )]
    fn the_ca_expiry_gauge_counts_down_from_the_newest_ca_and_is_absent_without_one() {
        let m = Metrics::new();
        let text = |m: &Metrics| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &m.registry).expect("encodes");
            out
        };
        let value = |m: &Metrics| -> Option<i64> {
            text(m)
                .lines()
                .find_map(|l| l.strip_prefix("alga_gateway_appliance_ca_expiry_seconds "))
                .map(|v| v.parse().expect("an integer"))
        };
        assert_eq!(value(&m), None, "no CA known yet: no series");
        let now = OffsetDateTime::now_utc();
        m.set_appliance_ca_not_after(Some(now + time::Duration::days(30)));
        let v = value(&m).expect("a value");
        let expect = time::Duration::days(30).whole_seconds();
        assert!((expect - 5..=expect).contains(&v), "{v}");
        assert!(
            text(&m).contains("# TYPE alga_gateway_appliance_ca_expiry_seconds gauge"),
            "{}",
            text(&m)
        );
        m.set_appliance_ca_not_after(Some(now - time::Duration::hours(1)));
        let v = value(&m).expect("a value");
        assert!((-3605..=-3600).contains(&v), "expired: negative ({v})");
        m.set_appliance_ca_not_after(None);
        assert_eq!(value(&m), None);
    }

    #[test]
    fn one_count_per_max_age_whatever_the_scrapes() {
        let m = Metrics::new();
        let t0 = std::time::Instant::now();
        let age = Duration::from_secs(30);
        assert!(m.claim_appliances_count(t0, age), "never counted: due");
        for s in 0..30 {
            assert!(
                !m.claim_appliances_count(t0 + Duration::from_secs(s), age),
                "{s}"
            );
        }
        assert!(m.claim_appliances_count(t0 + age, age));
        assert!(!m.claim_appliances_count(t0 + age, age), "claimed once");
    }
}
