//! A token as the cache holds it: what it answers with, how long it is served, and the pacing
//! of its refresh ahead (see [`super`]).

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::later;
use crate::scope::{join_scopes, ScopeSet};
use crate::tokens::answer::Answer;
use crate::tokens::store::StoredToken;
use crate::upstream::config::Fingerprint;
use crate::upstream::{FetchedToken, Upstream, MAX_LIFETIME};

/// The share of the served life after which a refresh starts, and its jitter.
const REFRESH_AT: f64 = 0.80;
const REFRESH_JITTER: f64 = 0.05;
/// Pause after a failed refresh-ahead: doubling from the base, capped.
const REFRESH_RETRY_BASE: Duration = Duration::from_secs(1);
const REFRESH_RETRY_CAP: Duration = Duration::from_secs(30);
const REFRESH_RETRY_FLOOR: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct CachedToken {
    pub access_token: SecretString,
    /// A short, non-reversible name for the token in logs: the first 12 hex digits of its SHA-256.
    pub fingerprint: String,
    /// What to report as `scope`: the endpoint's granted scope, else the requested one.
    pub scope: String,
    /// The token route's answer, written once, with the audit line's scopes and fingerprint.
    pub answer: Answer,
    pub fetched_at: Instant,
    /// The same moment on the wall clock (Unix milliseconds), as replicas compare it.
    pub fetched_at_ms: u64,
    pub lifetime: Duration,
    /// After this instant the token is never handed out.
    pub serve_until: Instant,
    /// From this instant on, the next caller starts a background refresh.
    pub refresh_at: Instant,
    /// The credential it was fetched with: served only while the upstream still has it.
    pub credential: Fingerprint,
    /// Whether this replica fetched it or adopted it from the shared tier.
    pub source: Source,
    refresh: Mutex<RefreshAhead>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Fetched from the token endpoint by this replica (and held in its memory).
    Memory,
    /// Adopted from the shared (Redis) tier, fetched by another replica.
    Redis,
}

#[derive(Debug)]
struct RefreshAhead {
    in_flight: bool,
    not_before: Instant,
    failures: u32,
}

impl CachedToken {
    pub(super) fn new(
        fetched: FetchedToken,
        requested: &ScopeSet,
        now: (Instant, u64),
        refresh_skew: Duration,
    ) -> Self {
        let lifetime = fetched.lifetime;
        // A short-lived token loses at most a quarter of its life, so it still caches.
        let skew = refresh_skew.min(lifetime / 4);
        Self::assemble(
            fetched.access_token,
            (fetched.credential, Source::Memory),
            requested,
            fetched
                .granted
                .as_ref()
                .map_or_else(|| join_scopes(requested), join_scopes),
            now,
            lifetime,
            lifetime - skew,
        )
    }

    /// A token another replica fetched, placed on this replica's monotonic clock.
    pub(super) fn from_shared(stored: StoredToken, requested: &ScopeSet, now: Instant, now_ms: u64) -> Option<Self> {
        if stored.serve_until_ms <= now_ms || stored.fetched_at_ms > now_ms {
            return None;
        }
        let credential = Fingerprint(hex::decode(&stored.credential).ok()?.try_into().ok()?);
        let age = Duration::from_millis(now_ms - stored.fetched_at_ms);
        let fetched_at = now.checked_sub(age)?;
        // The stored times are bounded as a token endpoint's `expires_in` is.
        let served_life = Duration::from_millis(stored.serve_until_ms - stored.fetched_at_ms).min(MAX_LIFETIME);
        Some(Self::assemble(
            SecretString::from(stored.access_token),
            (credential, Source::Redis),
            requested,
            stored.scope,
            (fetched_at, stored.fetched_at_ms),
            Duration::from_millis(stored.lifetime_ms).min(MAX_LIFETIME),
            served_life,
        ))
    }

    fn assemble(
        access_token: SecretString,
        (credential, source): (Fingerprint, Source),
        requested: &ScopeSet,
        scope: String,
        (fetched_at, fetched_at_ms): (Instant, u64),
        lifetime: Duration,
        served_life: Duration,
    ) -> Self {
        let share = rand::rng().random_range(REFRESH_AT - REFRESH_JITTER..=REFRESH_AT + REFRESH_JITTER);
        let fingerprint = hex::encode(&Sha256::digest(access_token.expose_secret().as_bytes())[..6]);
        Self {
            answer: Answer::new(
                access_token.expose_secret(),
                &scope,
                &join_scopes(requested),
                &fingerprint,
            ),
            access_token,
            fingerprint,
            scope,
            fetched_at,
            fetched_at_ms,
            lifetime,
            serve_until: later(fetched_at, served_life),
            refresh_at: later(fetched_at, served_life.mul_f64(share)),
            credential,
            source,
            refresh: Mutex::new(RefreshAhead {
                in_flight: false,
                not_before: fetched_at,
                failures: 0,
            }),
        }
    }

    pub(super) fn stored(&self) -> StoredToken {
        let served_life_ms = self.served_life().as_millis() as u64;
        StoredToken {
            access_token: self.access_token.expose_secret().to_string(),
            scope: self.scope.clone(),
            lifetime_ms: self.lifetime.as_millis() as u64,
            fetched_at_ms: self.fetched_at_ms,
            serve_until_ms: self.fetched_at_ms + served_life_ms,
            credential: hex::encode(self.credential.0),
        }
    }

    pub(super) fn served_life(&self) -> Duration {
        self.serve_until.saturating_duration_since(self.fetched_at)
    }

    /// Claims the one background refresh of this token, if it is due and nobody has it.
    pub(super) fn claim_refresh(&self, now: Instant) -> bool {
        let mut state = self.refresh.lock();
        if now < self.refresh_at || state.in_flight || now < state.not_before {
            return false;
        }
        state.in_flight = true;
        true
    }

    /// The pause before the next try doubles from a second, but is never more than a quarter of
    /// the served life left (nor less than [`REFRESH_RETRY_FLOOR`]): a few more tries fit before
    /// the token runs out, so a flapping endpoint's healthy moments are found in time.
    pub(super) fn refresh_failed(&self, now: Instant) {
        let mut state = self.refresh.lock();
        state.in_flight = false;
        state.failures += 1;
        let pause = REFRESH_RETRY_BASE
            .saturating_mul(1 << (state.failures - 1).min(16))
            .min(REFRESH_RETRY_CAP)
            .min(self.quarter_left(now))
            .max(REFRESH_RETRY_FLOOR);
        state.not_before = later(now, pause);
    }

    /// How long a refresh ahead at `now` waits for its answer: a quarter of the served life left,
    /// as the pause between tries, or twice what `upstream`'s last token took when that is
    /// longer (known once this process has fetched one); never less than
    /// [`REFRESH_RETRY_FLOOR`] nor more than the upstream's `timeout`.
    /// A try that hangs thus gives way to the next while the token is still in service (waiting
    /// out the whole timeout could let an endpoint's healthy moment pass unused, and the token
    /// lapse), and an endpoint that is slow but answering still has the time it takes.
    pub(super) fn refresh_wait(&self, now: Instant, upstream: &Upstream) -> Duration {
        self.quarter_left(now)
            .max(upstream.last_answer_time().saturating_mul(2))
            .max(REFRESH_RETRY_FLOOR)
            .min(upstream.settings.timeout)
    }

    /// Another replica is refreshing: look again without counting a failure, after a second or
    /// a quarter of the served life left, whichever is sooner (nor sooner than
    /// [`REFRESH_RETRY_FLOOR`]): should that replica fail, this one still has tries left.
    pub(super) fn refresh_deferred(&self, now: Instant) {
        let mut state = self.refresh.lock();
        state.in_flight = false;
        let pause = REFRESH_RETRY_BASE.min(self.quarter_left(now)).max(REFRESH_RETRY_FLOOR);
        state.not_before = later(now, pause);
    }

    /// A quarter of the served life left at `now`: the unit the refresh ahead is paced by, so
    /// that a few more tries fit before the token runs out.
    fn quarter_left(&self, now: Instant) -> Duration {
        self.serve_until.saturating_duration_since(now) / 4
    }

    pub(super) fn is(&self, token: &str) -> bool {
        self.access_token
            .expose_secret()
            .as_bytes()
            .ct_eq(token.as_bytes())
            .into()
    }
}
