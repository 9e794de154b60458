//! Prometheus metrics (prometheus-client): requests by route and outcome, latency
//! histograms, redeem outcomes by error code, issuer call latency and errors, active
//! appliances by health (counted at a scrape when the last count is older than
//! `HEALTH_GAUGE_MAX_AGE`), and database pool usage (sampled at scrape time). Every
//! label's values come from a fixed set.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MailLabels {
    outcome: String,
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpErrorLabels {
    op: String,
    kind: String,
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
    appliances: Family<HealthLabels, Gauge<i64, AtomicU64Compat>>,
    /// When `appliances` was last counted.
    appliances_counted: std::sync::Mutex<Option<std::time::Instant>>,
    pool_size: Gauge<i64, AtomicU64Compat>,
    pool_available: Gauge<i64, AtomicU64Compat>,
    pool_waiting: Gauge<i64, AtomicU64Compat>,
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
            "Issuer call failures by operation and kind",
            issuer_errors.clone(),
        );
        let mail = Family::<MailLabels, Counter>::default();
        registry.register(
            "mail_deliveries",
            "Mail delivery attempts by outcome (sent, retry, failed: retry budget spent or \
             undeliverable) and path (first: inside the request; worker)",
            mail.clone(),
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
        Metrics {
            registry,
            requests,
            latency,
            redeem,
            issuer_latency,
            issuer_errors,
            mail,
            appliances,
            appliances_counted: std::sync::Mutex::new(None),
            pool_size,
            pool_available,
            pool_waiting,
        }
    }

    /// Records one HTTP request.
    pub fn request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteOnly {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records a redeem outcome: `ok` or the stable error code.
    pub fn redeem_outcome(&self, outcome: &str) {
        self.redeem
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Records one issuer call.
    pub fn issuer_call(&self, op: &str, elapsed: Duration, error: Option<&str>) {
        self.issuer_latency
            .get_or_create(&OpLabels { op: op.to_owned() })
            .observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            self.issuer_errors
                .get_or_create(&OpErrorLabels {
                    op: op.to_owned(),
                    kind: kind.to_owned(),
                })
                .inc();
        }
    }

    /// Records one recorded mail attempt: `outcome` is `sent`, `retry` or `failed`,
    /// `path` is `first` (inside the request) or `worker`.
    pub fn mail_delivery(&self, outcome: &str, path: &str) {
        self.mail
            .get_or_create(&MailLabels {
                outcome: outcome.to_owned(),
                path: path.to_owned(),
            })
            .inc();
    }

    /// Sets how many active appliances are in each health (`ok`, `overdue`, `stale`),
    /// counted at `at`.
    pub fn appliances_by_health(&self, counts: &[(&'static str, i64)], at: std::time::Instant) {
        for (health, count) in counts {
            self.appliances
                .get_or_create(&HealthLabels {
                    health: (*health).to_owned(),
                })
                .set(*count);
        }
        if let Ok(mut t) = self.appliances_counted.lock() {
            *t = Some(at);
        }
    }

    /// Whether the appliances-by-health gauge is older than `max_age` at `now` (or was
    /// never counted).
    pub fn appliances_count_due(&self, now: std::time::Instant, max_age: Duration) -> bool {
        self.appliances_counted
            .lock()
            .map(|t| t.is_none_or(|t| now.saturating_duration_since(t) >= max_age))
            .unwrap_or(true)
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
