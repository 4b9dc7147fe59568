//! What requests are served with: the state one configuration builds ([`AppState`], swapped
//! whole on reload) and the state of the process ([`Broker`]: the token cache, metrics, the
//! lifecycle). Middleware and routes read it; `startup` assembles it.

use crate::telemetry::traces::Tracing;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::clock::SharedClock;
use crate::http::auth_failures::AuthFailureLimit;
use crate::http::cors::CorsPolicy;
use crate::http::forwarded::TrustedProxies;
use crate::http::rate_limit::IdentityRateLimit;
use crate::identity::Chain;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::proxy::forward::Forwarder;
use crate::public_tokens::PublicTokens;
use crate::settings::Settings;
use crate::tokens::TokenCache;
use crate::upstream::Upstream;

/// What a configuration decides; built whole and swapped atomically on reload.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub identity: Chain,
    pub public_tokens: Option<Arc<PublicTokens>>,
    pub policy: Policy,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub cors: CorsPolicy,
    pub trusted_proxies: TrustedProxies,
    pub rate_limit: Arc<IdentityRateLimit>,
    /// Reports of rejected tokens (`/refresh`) per caller: each may cost an upstream fetch.
    pub refresh_limit: Arc<IdentityRateLimit>,
    /// Failed authentications per client address, checked before any authentication work.
    pub auth_failures: Arc<AuthFailureLimit>,
}

/// What lives as long as the process: the token cache, metrics, the HTTP client, the lifecycle.
pub struct Broker {
    state: ArcSwap<AppState>,
    pub tokens: TokenCache,
    pub metrics: Arc<Metrics>,
    /// Forwards proxied requests to the APIs (one connection pool).
    pub forwarder: Forwarder,
    clock: SharedClock,
    /// The HTTP client every upstream shares (one connection pool).
    pub(crate) http: reqwest::Client,
    draining: AtomicBool,
    /// OpenTelemetry traces, when `[telemetry] otlp_endpoint` is set (from start-up; a reload
    /// does not change it).
    pub tracing: Option<Tracing>,
}

impl Broker {
    pub(crate) fn new(
        state: AppState,
        tokens: TokenCache,
        metrics: Arc<Metrics>,
        clock: SharedClock,
        http: reqwest::Client,
        tracing: Option<Tracing>,
    ) -> Self {
        Self {
            state: ArcSwap::from_pointee(state),
            tokens,
            metrics,
            forwarder: Forwarder::new(),
            clock,
            http,
            draining: AtomicBool::new(false),
            tracing,
        }
    }

    /// The configuration in force now; hold the `Arc` for as long as it is used.
    pub fn state(&self) -> Arc<AppState> {
        self.state.load_full()
    }

    /// Puts a new configuration's state in force.
    pub(crate) fn swap(&self, state: AppState) {
        self.state.store(Arc::new(state));
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.metrics.ready.set(0);
    }
}
