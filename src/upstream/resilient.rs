//! One upstream as the cache sees it: the token request wrapped in what keeps an outage harmless
//! to the upstream and short for the browser.
//!
//! - connect errors and 5xx are retried with exponential backoff and full jitter, all inside the
//!   upstream's `timeout`, which bounds the whole exchange;
//! - 429 stops all requests to the upstream until its `Retry-After` has passed;
//! - a circuit breaker opens after consecutive failures for a growing, capped cool-down, then lets
//!   one probe through;
//! - refusals (`invalid_client`, other 4xx) are not retried and are remembered for a few seconds
//!   per cache key, so a wrong secret does not hammer the upstream;
//! - an optional `max_tokens_per_hour` quota refuses fresh fetches past it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

use super::client::{FetchedToken, TokenClient};
use super::error::UpstreamError;
use crate::clock::{later, SharedClock};
use crate::metrics::{Metrics, ProxyMetrics, ServedMetrics, UpstreamCredential, UpstreamLabel};
use crate::scope::ScopeSet;
use crate::upstream::config::{Credential, Fingerprint, UpstreamSettings};
use crate::upstream::endpoint::{DiscoveryStatus, LiveEndpoint};

/// Attempts per exchange for connect errors and 5xx, time permitting.
pub const MAX_ATTEMPTS: u32 = 3;
/// Backoff before retry n is uniformly random in [0, min(BASE · 2ⁿ, CAP)] ("full jitter").
pub const RETRY_BASE: Duration = Duration::from_millis(100);
pub const RETRY_CAP: Duration = Duration::from_secs(1);
/// Consecutive failed exchanges that open the circuit.
pub const BREAKER_THRESHOLD: u32 = 5;
/// First cool-down of an open circuit; it doubles at each failed probe up to the cap.
pub const BREAKER_COOL_DOWN: Duration = Duration::from_secs(5);
pub const BREAKER_COOL_DOWN_CAP: Duration = Duration::from_secs(60);
/// How long a refusal (e.g. `invalid_client`) is answered from memory.
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(10);
/// Used when a 429 carries no `Retry-After`.
pub const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(5);
const HOUR: Duration = Duration::from_secs(3600);

pub struct Upstream {
    pub settings: UpstreamSettings,
    /// What the cache keys this upstream's tokens under, besides the name and scopes.
    pub token_settings: Fingerprint,
    /// One per configured credential, in order: a cached token is served only while the one it
    /// was fetched with is among them.
    pub credentials: Vec<Fingerprint>,
    /// The credential tried first: the one that last worked.
    preferred: AtomicUsize,
    /// How long the last request answered with a token took, in microseconds (0 before any).
    last_answer_micros: AtomicU64,
    /// Where token requests go (the issuer's metadata, when configured with one).
    pub endpoint: LiveEndpoint,
    /// The upstream's metric label, made once rather than on every request.
    pub label: UpstreamLabel,
    /// This upstream's proxy metrics, looked up once.
    pub proxy_metrics: ProxyMetrics,
    /// This upstream's token-serving counters, looked up once.
    pub served_metrics: ServedMetrics,
    client: TokenClient,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    guard: Mutex<Guard>,
}

#[derive(Default)]
struct Guard {
    consecutive_failures: u32,
    /// Set while the circuit is open.
    open_until: Option<Instant>,
    cool_down: Duration,
    /// When the probe in flight (half-open) started; everybody else is turned away meanwhile.
    /// A probe abandoned by a cancelled request is forgotten after the upstream's timeout.
    probing_since: Option<Instant>,
    rate_limited_until: Option<Instant>,
    refusals: HashMap<ScopeSet, (Instant, UpstreamError)>,
    /// Fetch times of the last hour, for `max_tokens_per_hour`.
    fetches: VecDeque<Instant>,
    /// How the last exchange ended, and the last one that failed.
    last_outcome: Option<Outcome>,
    last_error: Option<Outcome>,
    /// Exchanges (each with its retries) that ended in a token, and that did not.
    succeeded: u64,
    failed: u64,
}

/// How an exchange with the token endpoint ended, for operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// `success`, or the failure's kind (`refused`, `timeout`, `server_error`, …).
    pub outcome: &'static str,
    /// The RFC 6749 error code of a refusal, when it gave one.
    pub oauth_error: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

/// An upstream's state as the admin API shows it: never a secret, key or token.
#[derive(Debug, serde::Serialize)]
pub struct UpstreamStatus {
    pub upstream: String,
    /// `closed`, `open` (cooling down) or `half_open` (a probe may go, or is under way).
    pub breaker: &'static str,
    /// Seconds until an open circuit lets a probe through.
    pub breaker_retry_in: Option<u64>,
    pub consecutive_failures: u32,
    pub last_outcome: Option<Outcome>,
    pub last_error: Option<Outcome>,
    /// Seconds left of a pause the endpoint asked for (429 `Retry-After`).
    pub rate_limited_for: Option<u64>,
    /// `max_tokens_per_hour` and the fetches of the last hour.
    pub quota_limit: Option<u32>,
    pub quota_used: usize,
    /// Fingerprint prefixes, in the configured order, and the one tried first.
    pub credentials: Vec<String>,
    pub preferred_credential: usize,
    pub token_endpoint: Option<String>,
    pub discovery: Option<DiscoveryStatus>,
    /// The circuit is open or the last exchange failed.
    pub failing: bool,
    /// Counters since start-up (or since this upstream's settings last changed): tokens handed
    /// to callers, and exchanges with the token endpoint that succeeded and failed.
    pub tokens_served: u64,
    pub exchanges_succeeded: u64,
    pub exchanges_failed: u64,
}

/// What a fetch is for. The hourly quota keeps a share that replacements of rejected tokens
/// (which any entitled caller can ask for) can never take, so one caller cannot spend it for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A token for callers who have none: a miss.
    Serve,
    /// A refresh ahead of expiry, while the current token still serves: one attempt, not held
    /// back by an open circuit (each key's refreshes are paced by their own backoff, which
    /// shortens as the served life runs out), and its failure does not count toward opening it.
    /// So a flapping endpoint's healthy moments are used before tokens run out.
    Refresh,
    /// A replacement for a token a caller reported as rejected.
    Replace,
}

/// The part of `max_tokens_per_hour` that replacements may use: at most half, rounded down.
fn replacement_share(limit: u32) -> usize {
    (limit / 2) as usize
}

/// What the guard allows before an exchange.
enum Admission {
    Go { probe: bool },
    Refuse(UpstreamError),
}

impl Upstream {
    pub fn new(settings: UpstreamSettings, client: TokenClient, clock: SharedClock, metrics: Arc<Metrics>) -> Self {
        let label = UpstreamLabel {
            upstream: settings.name.clone(),
        };
        // Each upstream's series exist from the start (a new one starts closed), so dashboards
        // and alerts see zeros rather than nothing.
        metrics.circuit_open.get_or_create(&label).set(0);
        for index in 0..settings.credentials.len() {
            metrics
                .credential_refusals
                .get_or_create(&UpstreamCredential {
                    upstream: settings.name.clone(),
                    credential: index as u32,
                })
                .inc_by(0);
        }
        match settings.max_tokens_per_hour {
            Some(limit) => {
                metrics.quota_limit.get_or_create(&label).set(i64::from(limit));
                metrics.quota_fetches.get_or_create(&label).inc_by(0);
            }
            None => {
                metrics.quota_limit.remove(&label);
            }
        }
        Self {
            served_metrics: metrics.served_metrics(&label),
            label,
            token_settings: settings.token_fingerprint(),
            credentials: settings.credential_fingerprints(),
            preferred: AtomicUsize::new(0),
            last_answer_micros: AtomicU64::new(0),
            endpoint: LiveEndpoint::new(&settings, client.http(), clock.clone()),
            proxy_metrics: metrics.proxy_metrics(&settings.name),
            settings,
            client,
            clock,
            metrics,
            guard: Mutex::new(Guard::default()),
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// This upstream's state for the admin API.
    pub fn status(&self) -> UpstreamStatus {
        let now = self.clock.now();
        let guard = self.guard.lock();
        let secs_until = |until: Instant| until.saturating_duration_since(now).as_secs();
        let breaker = match guard.open_until {
            None => "closed",
            Some(until) if now < until => "open",
            Some(_) => "half_open",
        };
        let quota_used = guard
            .fetches
            .iter()
            .filter(|at| now.saturating_duration_since(**at) < HOUR)
            .count();
        let last_failed = guard.last_outcome.as_ref().is_some_and(|o| o.outcome != "success");
        UpstreamStatus {
            upstream: self.settings.name.clone(),
            breaker,
            breaker_retry_in: guard.open_until.filter(|until| now < *until).map(secs_until),
            consecutive_failures: guard.consecutive_failures,
            last_outcome: guard.last_outcome.clone(),
            last_error: guard.last_error.clone(),
            rate_limited_for: guard.rate_limited_until.filter(|until| now < *until).map(secs_until),
            quota_limit: self.settings.max_tokens_per_hour,
            quota_used,
            credentials: self.credentials.iter().map(ToString::to_string).collect(),
            preferred_credential: self.preferred.load(Ordering::Relaxed) % self.credentials.len().max(1),
            token_endpoint: self.endpoint.current_url().map(|url| url.to_string()),
            discovery: self.endpoint.status(),
            failing: breaker != "closed" || last_failed,
            tokens_served: self.metrics.tokens_served.get_or_create(&self.label).get(),
            exchanges_succeeded: guard.succeeded,
            exchanges_failed: guard.failed,
        }
    }

    /// Whether a token fetched with `credential` may be served: that credential is still configured.
    pub fn accepts(&self, credential: &Fingerprint) -> bool {
        self.credentials.contains(credential)
    }

    /// A new token for `scopes`, unless the guard says the upstream must not be asked now. The
    /// exchange, retries included, is bounded by `limit` (the upstream's `timeout`, or less for a
    /// refresh ahead near the end of a token's served life); past it, it ends as a timeout.
    pub async fn fetch(
        &self,
        scopes: &ScopeSet,
        purpose: Purpose,
        limit: Duration,
    ) -> Result<FetchedToken, UpstreamError> {
        let probe = match self.admit(scopes, purpose) {
            Admission::Go { probe } => probe,
            Admission::Refuse(error) => return Err(error),
        };
        let attempts = if purpose == Purpose::Refresh { 1 } else { MAX_ATTEMPTS };
        let exchange = self.exchange_with_retries(scopes, attempts);
        let result = match tokio::time::timeout(limit, exchange).await {
            Ok(result) => result,
            Err(_) => {
                // The attempt in flight was abandoned.
                self.metrics.upstream_request(self.name(), "timeout", None);
                Err(UpstreamError::Timeout)
            }
        };
        self.record(scopes, &result, probe, purpose);
        result
    }

    /// How long the last request that was answered with a token took, its own time only (not
    /// the failed attempts and pauses of its exchange before it); zero before any.
    pub fn last_answer_time(&self) -> Duration {
        Duration::from_micros(self.last_answer_micros.load(Ordering::Relaxed))
    }

    fn probe_in_flight(&self, guard: &Guard, now: Instant) -> bool {
        guard
            .probing_since
            .is_some_and(|since| now.saturating_duration_since(since) < self.settings.timeout + Duration::from_secs(1))
    }

    fn admit(&self, scopes: &ScopeSet, purpose: Purpose) -> Admission {
        let now = self.clock.now();
        let mut guard = self.guard.lock();
        if let Some((until, error)) = guard.refusals.get(scopes) {
            if now < *until {
                return Admission::Refuse(error.clone());
            }
        }
        if let Some(until) = guard.rate_limited_until.filter(|until| now < *until) {
            return Admission::Refuse(UpstreamError::RateLimited {
                retry_after: Some(until - now),
            });
        }
        let mut probe = false;
        if let Some(until) = guard.open_until.filter(|_| purpose != Purpose::Refresh) {
            if now < until || self.probe_in_flight(&guard, now) {
                let wait = until.saturating_duration_since(now).max(Duration::from_secs(1));
                return Admission::Refuse(UpstreamError::CircuitOpen { retry_after: wait });
            }
            guard.probing_since = Some(now);
            probe = true;
        }
        if let Some(limit) = self.settings.max_tokens_per_hour {
            while guard
                .fetches
                .front()
                .is_some_and(|at| now.saturating_duration_since(*at) >= HOUR)
            {
                guard.fetches.pop_front();
            }
            let allowed = match purpose {
                Purpose::Serve | Purpose::Refresh => limit as usize,
                Purpose::Replace => replacement_share(limit),
            };
            if guard.fetches.len() >= allowed {
                // A slot opens when enough of the oldest fetches leave the hour.
                let freeing = guard
                    .fetches
                    .len()
                    .checked_sub(allowed.max(1))
                    .and_then(|i| guard.fetches.get(i));
                let retry_after = freeing.map_or(HOUR, |at| HOUR.saturating_sub(now.saturating_duration_since(*at)));
                if probe {
                    guard.probing_since = None;
                }
                return Admission::Refuse(UpstreamError::QuotaExhausted { retry_after });
            }
            guard.fetches.push_back(now);
            self.metrics.quota_fetches.get_or_create(&self.label).inc();
        }
        Admission::Go { probe }
    }

    fn record(&self, scopes: &ScopeSet, result: &Result<FetchedToken, UpstreamError>, probe: bool, purpose: Purpose) {
        let now = self.clock.now();
        let outcome = Outcome {
            outcome: result.as_ref().map_or_else(UpstreamError::outcome, |_| "success"),
            oauth_error: result
                .as_ref()
                .err()
                .and_then(UpstreamError::oauth_error)
                .map(str::to_string),
            at: self.clock.unix_now(),
        };
        let mut guard = self.guard.lock();
        if result.is_err() {
            guard.last_error = Some(outcome.clone());
            guard.failed += 1;
        } else {
            guard.succeeded += 1;
        }
        guard.last_outcome = Some(outcome);
        if probe {
            guard.probing_since = None;
        }
        match result {
            Ok(_) => {
                guard.consecutive_failures = 0;
                guard.open_until = None;
                self.metrics.circuit_open.get_or_create(&self.label).set(0);
                guard.cool_down = Duration::ZERO;
                guard.refusals.remove(scopes);
            }
            // The broker's configuration and the server's disagree: asking again won't help.
            Err(error) if error.is_refusal() => {
                guard.refusals.retain(|_, (until, _)| now < *until);
                guard
                    .refusals
                    .insert(scopes.clone(), (later(now, REFUSAL_MEMORY), error.clone()));
            }
            Err(UpstreamError::RateLimited { retry_after }) => {
                // `Retry-After` is the upstream's number: bounded where it is parsed, added with care.
                let pause = retry_after.unwrap_or(DEFAULT_RATE_LIMIT_PAUSE);
                guard.rate_limited_until = Some(later(now, pause));
            }
            // A failed refresh ahead leaves callers served: it does not open the circuit.
            Err(_) if purpose == Purpose::Refresh => {}
            Err(_) => {
                guard.consecutive_failures += 1;
                if probe || guard.consecutive_failures >= BREAKER_THRESHOLD {
                    guard.cool_down = if guard.cool_down.is_zero() {
                        BREAKER_COOL_DOWN
                    } else {
                        (guard.cool_down * 2).min(BREAKER_COOL_DOWN_CAP)
                    };
                    guard.open_until = Some(later(now, guard.cool_down));
                    self.metrics.circuit_open.get_or_create(&self.label).set(1);
                    tracing::warn!(
                        upstream = %self.settings.name,
                        cool_down_secs = guard.cool_down.as_secs(),
                        "circuit opened after consecutive failures"
                    );
                }
            }
        }
    }

    /// The exchange with the preferred credential; when the endpoint answers `invalid_client` and
    /// another credential is configured, one more with the next. The one that works is preferred
    /// from then on; after two refusals the one after them is tried first next time.
    async fn exchange_with_retries(&self, scopes: &ScopeSet, attempts: u32) -> Result<FetchedToken, UpstreamError> {
        let count = self.credentials.len();
        let first = self.preferred.load(Ordering::Relaxed) % count.max(1);
        let mut index = first;
        loop {
            let result = self.exchange_with(index, scopes, attempts).await;
            match &result {
                Ok(_) => self.preferred.store(index, Ordering::Relaxed),
                // A certificate the server refuses in the handshake often shows only as a lost
                // connection (TLS 1.3 sends the alert after the client's request is on its way).
                Err(error)
                    if error.is_credential_refused()
                        || (error.broke_off()
                            && matches!(self.settings.credentials[index], Credential::Certificate(_))) =>
                {
                    self.credential_refused(index);
                    let next = (index + 1) % count;
                    if next != first && index == first {
                        index = next;
                        continue;
                    }
                    self.preferred.store(next, Ordering::Relaxed);
                }
                Err(_) => {}
            }
            return result;
        }
    }

    fn credential_refused(&self, index: usize) {
        self.metrics
            .credential_refusals
            .get_or_create(&UpstreamCredential {
                upstream: self.settings.name.clone(),
                credential: index as u32,
            })
            .inc();
        tracing::warn!(
            upstream = %self.settings.name,
            credential = index,
            credentials = self.credentials.len(),
            fingerprint = %self.credentials[index],
            "the token endpoint refused a credential (invalid_client, or a certificate refused or cut off at the TLS handshake)"
        );
    }

    /// One exchange with credential `index`: connect errors and 5xx retried with backoff.
    async fn exchange_with(
        &self,
        index: usize,
        scopes: &ScopeSet,
        attempts: u32,
    ) -> Result<FetchedToken, UpstreamError> {
        let credential = (&self.settings.credentials[index], self.credentials[index]);
        let target = self.endpoint.target().ok_or(UpstreamError::Unreachable(
            "the issuer's metadata has not been fetched yet".into(),
        ))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result = self.client.fetch(&self.settings, &target, credential, scopes).await;
            let took = started.elapsed();
            let outcome = result.as_ref().map_or_else(UpstreamError::outcome, |_| "success");
            self.metrics.upstream_request(self.name(), outcome, Some(took));
            if result.is_ok() {
                let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                self.last_answer_micros.store(micros, Ordering::Relaxed);
            }
            match &result {
                Err(UpstreamError::Unreachable(_) | UpstreamError::ServerError { .. }) if attempt < attempts => {
                    let pause = rand::rng().random_range(Duration::ZERO..=retry_ceiling(attempt));
                    tracing::debug!(upstream = %self.settings.name, attempt, "retrying the token request");
                    tokio::time::sleep(pause).await;
                }
                _ => return result,
            }
        }
    }
}

/// The longest pause before retry `attempt` + 1: exponential, capped.
fn retry_ceiling(attempt: u32) -> Duration {
    RETRY_BASE.saturating_mul(1 << (attempt - 1).min(16)).min(RETRY_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_pauses_grow_exponentially_and_are_capped() {
        assert_eq!(retry_ceiling(1), Duration::from_millis(100));
        assert_eq!(retry_ceiling(2), Duration::from_millis(200));
        assert_eq!(retry_ceiling(4), Duration::from_millis(800));
        assert_eq!(retry_ceiling(5), Duration::from_secs(1));
        assert_eq!(retry_ceiling(40), Duration::from_secs(1));
    }
}
