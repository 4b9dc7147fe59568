//! The broker's Prometheus metrics, one registry per application (no global state), served on the
//! admin listener at `/metrics` in the OpenMetrics text format.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamOutcome {
    pub upstream: String,
    pub outcome: &'static str,
}

/// The public routes, as label values (resources are named after their patterns).
const KNOWN_ROUTES: &[&str] = &[
    "/v1/token/{upstream}",
    "/v1/token/{upstream}/refresh",
    "/v1/public-tokens",
    "/.well-known/jwks.json",
    "/v1/access-token-provider.js",
    "/v1/access-token-provider.d.ts",
    "/v1/openapi.yaml",
    "/v1/proxy/{upstream}/{path}",
    "/v1/proxy/{upstream}",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamCredential {
    pub upstream: String,
    /// The credential's position in its configured list, from 0: never its value.
    pub credential: u32,
}

type Durations = Family<UpstreamLabel, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RouteStatus, Counter>,
    /// Each known route's counter of 200 answers, once it has one (shared with the family).
    route_ok: [std::sync::OnceLock<Counter>; KNOWN_ROUTES.len()],
    pub cache_hits: Family<UpstreamLabel, Counter>,
    pub cache_misses: Family<UpstreamLabel, Counter>,
    pub upstream_requests: Family<UpstreamOutcome, Counter>,
    pub upstream_duration: Durations,
    pub tokens_served: Family<UpstreamLabel, Counter>,
    pub shared_cache_errors: Counter,
    pub shared_cache_hits: Counter,
    pub proxied_requests: Family<UpstreamStatus, Counter>,
    pub proxy_duration: Durations,
    pub proxy_bytes: Family<UpstreamDirection, Counter>,
    pub credential_refusals: Family<UpstreamCredential, Counter>,
    /// 1 while an upstream's circuit is open (cooling down or probing), else 0.
    pub circuit_open: Family<UpstreamLabel, Gauge>,
    /// Fetches counted against `max_tokens_per_hour`, and that limit (upstreams with one only).
    pub quota_fetches: Family<UpstreamLabel, Counter>,
    pub quota_limit: Family<UpstreamLabel, Gauge>,
    /// 1 while the broker takes requests, 0 while it drains on shutdown.
    pub ready: Gauge,
}

/// One upstream's proxy metrics, held by the upstream.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

impl ProxyMetrics {
    /// A proxied request the API answered with `status` after `took`.
    pub fn answered(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(took.as_secs_f64());
    }
}

/// One upstream's token-serving counters, held by the upstream.
#[derive(Clone, Debug)]
pub struct ServedMetrics {
    hits: Counter,
    misses: Counter,
    served: Counter,
}

impl ServedMetrics {
    /// A token served from the cache (`cache_hit`) or after a fetch.
    pub fn served(&self, cache_hit: bool) {
        if cache_hit {
            self.hits.inc();
        } else {
            self.misses.inc();
        }
        self.served.inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamStatus {
    pub upstream: String,
    /// `2xx`, `4xx`, … of the API's answer.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamDirection {
    pub upstream: String,
    /// `in` (to the API) or `out` (to the browser).
    pub direction: &'static str,
}

fn duration_histogram() -> Histogram {
    // 5 ms … 10 s: token endpoints answer in tens to hundreds of milliseconds.
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("token_broker");
        let http_requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        let cache_hits = Family::default();
        registry.register(
            "cache_hits",
            "Token requests answered from the cache",
            cache_hits.clone(),
        );
        let cache_misses = Family::default();
        registry.register(
            "cache_misses",
            "Token requests that started an upstream fetch",
            cache_misses.clone(),
        );
        let upstream_requests = Family::default();
        registry.register(
            "upstream_requests",
            "Requests to token endpoints by outcome",
            upstream_requests.clone(),
        );
        let upstream_duration: Durations = Family::new_with_constructor(duration_histogram);
        registry.register(
            "upstream_request_duration_seconds",
            "Time token endpoints took to answer",
            upstream_duration.clone(),
        );
        let tokens_served = Family::default();
        registry.register("tokens_served", "Tokens handed to callers", tokens_served.clone());
        let shared_cache_errors = Counter::default();
        registry.register(
            "shared_cache_errors",
            "Shared (Redis) cache operations that failed or timed out",
            shared_cache_errors.clone(),
        );
        let shared_cache_hits = Counter::default();
        registry.register(
            "shared_cache_hits",
            "Tokens taken from the shared (Redis) cache instead of the upstream",
            shared_cache_hits.clone(),
        );
        let proxied_requests = Family::default();
        registry.register(
            "proxied_requests",
            "Requests proxied to APIs, by upstream and the class of the API's status",
            proxied_requests.clone(),
        );
        let proxy_duration: Durations = Family::new_with_constructor(duration_histogram);
        registry.register(
            "proxy_request_duration_seconds",
            "Time APIs took to answer proxied requests (to the answer's headers)",
            proxy_duration.clone(),
        );
        let proxy_bytes = Family::default();
        registry.register(
            "proxy_bytes",
            "Body bytes proxied, to the API (in) and to the browser (out)",
            proxy_bytes.clone(),
        );
        let credential_refusals = Family::default();
        registry.register(
            "upstream_credential_refusals",
            "Credentials a token endpoint refused with invalid_client, by their place in the configured list",
            credential_refusals.clone(),
        );
        let circuit_open = Family::default();
        registry.register(
            "upstream_circuit_open",
            "1 while the upstream's circuit breaker is open (cooling down or probing), else 0",
            circuit_open.clone(),
        );
        let quota_fetches = Family::default();
        registry.register(
            "upstream_quota_fetches",
            "Token fetches counted against max_tokens_per_hour",
            quota_fetches.clone(),
        );
        let quota_limit = Family::default();
        registry.register(
            "upstream_quota_limit",
            "max_tokens_per_hour, for upstreams that have one",
            quota_limit.clone(),
        );
        let ready = Gauge::default();
        ready.set(1);
        registry.register(
            "ready",
            "1 while the broker takes requests, 0 while it drains on shutdown",
            ready.clone(),
        );
        Self {
            registry,
            circuit_open,
            quota_fetches,
            quota_limit,
            ready,
            credential_refusals,
            proxied_requests,
            proxy_duration,
            proxy_bytes,
            shared_cache_errors,
            shared_cache_hits,
            http_requests,
            route_ok: Default::default(),
            cache_hits,
            cache_misses,
            upstream_requests,
            upstream_duration,
            tokens_served,
        }
    }

    /// The proxy metrics of `upstream`, looked up once (when the upstream is built) rather than on
    /// every request.
    pub fn proxy_metrics(&self, upstream: &str) -> ProxyMetrics {
        let status = |class| {
            self.proxied_requests
                .get_or_create(&UpstreamStatus {
                    upstream: upstream.to_string(),
                    status: class,
                })
                .clone()
        };
        let bytes = |direction| {
            self.proxy_bytes
                .get_or_create(&UpstreamDirection {
                    upstream: upstream.to_string(),
                    direction,
                })
                .clone()
        };
        ProxyMetrics {
            by_class: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(status),
            duration: self
                .proxy_duration
                .get_or_create(&UpstreamLabel {
                    upstream: upstream.to_string(),
                })
                .clone(),
            bytes_in: bytes("in"),
            bytes_out: bytes("out"),
        }
    }

    pub fn upstream_request(&self, upstream: &str, outcome: &'static str, took: Option<Duration>) {
        self.upstream_requests
            .get_or_create(&UpstreamOutcome {
                upstream: upstream.to_string(),
                outcome,
            })
            .inc();
        if let Some(took) = took {
            self.upstream_duration
                .get_or_create(&UpstreamLabel {
                    upstream: upstream.to_string(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// The token-serving counters of the upstream labelled `label`, looked up once (when the
    /// upstream is built) rather than on every request; each starts at zero, so dashboards and
    /// alerts see zeros rather than nothing.
    pub fn served_metrics(&self, label: &UpstreamLabel) -> ServedMetrics {
        let counter = |family: &Family<UpstreamLabel, Counter>| {
            let counter = family.get_or_create(label).clone();
            counter.inc_by(0);
            counter
        };
        ServedMetrics {
            hits: counter(&self.cache_hits),
            misses: counter(&self.cache_misses),
            served: counter(&self.tokens_served),
        }
    }

    /// Counts an answer; `route` is a resource name (one of a fixed set), else "unmatched".
    pub fn request(&self, route: &str, status: u16) {
        let known = KNOWN_ROUTES.iter().position(|known| *known == route);
        let route = known.map_or("unmatched", |i| KNOWN_ROUTES[i]);
        let count = || self.http_requests.get_or_create(&RouteStatus { route, status }).clone();
        match known {
            // A route's 200s, most of what is counted, keep their counter at hand: the family's
            // lookup locks and hashes its label.
            Some(i) if status == 200 => self.route_ok[i].get_or_init(count).inc(),
            _ => count().inc(),
        };
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
