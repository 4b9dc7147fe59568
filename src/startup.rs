//! Builds the application from [`Settings`], binds its listeners (port 0 in tests), reloads the
//! configuration on SIGHUP and drains on SIGTERM/SIGINT.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer, ResponseError};

use crate::clock::{SharedClock, SystemClock};
use crate::http::auth_failures::AuthFailureLimit;
use crate::http::cors::CorsPolicy;
use crate::http::errors::ApiError;
use crate::http::forwarded::TrustedProxies;
use crate::http::headers::with_no_store;
use crate::http::middleware;
use crate::http::rate_limit::IdentityRateLimit;
use crate::identity::Chain;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::public_tokens::PublicTokens;
use crate::routes;
use crate::settings::{Env, Settings};
use crate::state::{AppState, Broker};
use crate::telemetry::traces::Tracing;
use crate::tokens::{SharedStore, SharedTier, TokenCache};
use crate::upstream::config::{Endpoint, UpstreamSettings};
use crate::upstream::endpoint::{discover_all, Finding};
use crate::upstream::{TokenClient, Upstream};

/// The process state for `settings`: the token cache (with its Redis tier), metrics, and the
/// state of this first configuration.
fn assemble(settings: Settings, clock: SharedClock) -> std::io::Result<Broker> {
    let metrics = Arc::new(Metrics::new());
    let http = TokenClient::http_client();
    let shared: Option<Arc<dyn SharedStore>> = match &settings.cache.redis {
        Some(redis) => Some(Arc::new(
            SharedTier::new(redis, metrics.clone()).map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    let tokens = TokenCache::new(
        clock.clone(),
        metrics.clone(),
        settings.cache.max_entries,
        settings.cache.refresh_skew,
        shared,
    );
    let tracing = Tracing::new(&settings.telemetry, http.clone()).map_err(std::io::Error::other)?;
    let state = build_state(settings, &clock, &http, &metrics, None);
    Ok(Broker::new(state, tokens, metrics, clock, http, tracing))
}

/// Fetches the metadata of the upstreams configured with `issuer` into `settings`: before the
/// broker starts, and before a reload applies (reusing the running upstream's document when its
/// issuer is unchanged, so a reload does not depend on the issuer being up). `Err` holds the
/// problems, which stop start-up or the reload; `Ok` the remarks worth a warning.
pub async fn discover(settings: &mut Settings, previous: Option<&AppState>) -> Result<Vec<Finding>, Vec<Finding>> {
    let discovers = |u: &UpstreamSettings| matches!(u.endpoint, Endpoint::Discovered { .. });
    if !settings.upstreams.values().any(discovers) {
        return Ok(Vec::new());
    }
    let http = TokenClient::http_client();
    // The running document is kept for the same issuer trusted under the same CAs.
    let known = |name: &str, wanted: &UpstreamSettings| {
        let running = previous?.upstreams.get(name)?;
        let same_ca =
            running.settings.private_ca.as_ref().map(|ca| &ca.pem) == wanted.private_ca.as_ref().map(|ca| &ca.pem);
        match (&running.settings.endpoint, &wanted.endpoint) {
            (Endpoint::Discovered { issuer: old, .. }, Endpoint::Discovered { issuer, .. })
                if old == issuer && same_ca =>
            {
                running.endpoint.metadata()
            }
            _ => None,
        }
    };
    let (problems, remarks) = discover_all(&mut settings.upstreams, &http, known).await;
    if problems.is_empty() {
        Ok(remarks)
    } else {
        Err(problems)
    }
}

/// Swaps in a new configuration. Tokens of upstreams whose endpoint or credentials changed, or
/// that were removed, are dropped; the others stay cached.
pub fn apply_reload(broker: &Broker, settings: Settings) {
    let old = broker.state();
    for (name, before) in &old.settings.upstreams {
        match settings.upstreams.get(name) {
            // Tokens fetched with a credential still listed stay, whatever its place in the list.
            Some(after) if after.same_token_settings(before) => {
                broker.tokens.retain_credentials(name, after.credential_fingerprints());
            }
            _ => {
                tracing::info!(upstream = %name, "token settings changed or upstream removed: dropping its cached tokens");
                broker.tokens.invalidate_upstream(name);
            }
        }
    }
    let needs_restart = old.settings.server.listen != settings.server.listen
        || old.settings.server.admin_listen != settings.server.admin_listen
        || old.settings.server.workers != settings.server.workers
        || old.settings.cache.max_entries != settings.cache.max_entries
        || old.settings.cache.redis != settings.cache.redis
        || old.settings.telemetry != settings.telemetry;
    if needs_restart {
        tracing::warn!(
            "listen addresses, workers, cache.max_entries, cache.redis and [telemetry] take effect only after a restart"
        );
    }
    broker.tokens.set_refresh_skew(settings.cache.refresh_skew);
    let state = build_state(settings, broker.clock(), &broker.http, &broker.metrics, Some(&old));
    broker.swap(state);
}

/// The state for `settings`. On a reload (`previous`), what did not change carries over with what
/// it has learnt: an upstream's breaker, refusals and quota; an issuer's keys and verified tokens;
/// forward-auth decisions.
fn build_state(
    settings: Settings,
    clock: &SharedClock,
    http: &reqwest::Client,
    metrics: &Arc<Metrics>,
    previous: Option<&AppState>,
) -> AppState {
    let client = TokenClient::new(http.clone(), settings.cache.default_ttl);
    let same_default_ttl = previous.is_some_and(|p| p.settings.cache.default_ttl == settings.cache.default_ttl);
    let upstreams = settings
        .upstreams
        .iter()
        .map(|(name, wanted)| {
            let kept = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|old| same_default_ttl && old.settings.same_as(wanted));
            let upstream = match kept {
                Some(old) => old.clone(),
                None => Arc::new(Upstream::new(
                    wanted.clone(),
                    client.clone(),
                    clock.clone(),
                    metrics.clone(),
                )),
            };
            (name.clone(), upstream)
        })
        .collect();
    let public_tokens = settings
        .public_tokens
        .as_ref()
        .map(|p| Arc::new(PublicTokens::new(p.signing_key.clone(), &p.previous_keys, &p.issuer)));
    AppState {
        identity: match previous {
            Some(p) => Chain::carry_over(&p.identity, &settings.authenticators, clock, public_tokens.as_ref()),
            None => Chain::new(&settings.authenticators, clock, public_tokens.as_ref()),
        },
        public_tokens,
        policy: Policy::new(settings.grants.clone()),
        upstreams,
        cors: CorsPolicy::new(
            &settings.server.cors_allowed_origins,
            &settings.server.csrf_header,
            settings
                .upstreams
                .values()
                .filter_map(|u| u.proxy.as_ref())
                .flat_map(|p| &p.methods),
        ),
        trusted_proxies: TrustedProxies::new(&settings.server.trusted_proxies),
        rate_limit: match previous {
            // Callers' buckets carry over too: a reload must not hand everyone a fresh burst.
            Some(p)
                if p.settings.server.rate_limit_per_second == settings.server.rate_limit_per_second
                    && p.settings.server.rate_limit_burst == settings.server.rate_limit_burst =>
            {
                p.rate_limit.clone()
            }
            _ => Arc::new(IdentityRateLimit::new(
                settings.server.rate_limit_per_second,
                settings.server.rate_limit_burst,
            )),
        },
        refresh_limit: match previous {
            Some(p) if p.settings.server.refresh_per_minute == settings.server.refresh_per_minute => {
                p.refresh_limit.clone()
            }
            _ => Arc::new(IdentityRateLimit::per_minute(
                settings.server.refresh_per_minute,
                REFRESH_BURST,
            )),
        },
        auth_failures: match previous {
            Some(p) if p.settings.server.auth_failures_per_minute == settings.server.auth_failures_per_minute => {
                p.auth_failures.clone()
            }
            _ => Arc::new(AuthFailureLimit::new(settings.server.auth_failures_per_minute)),
        },
        settings: Arc::new(settings),
    }
}

/// Reports of rejected tokens a caller may make at once before `refresh_per_minute` paces them.
const REFRESH_BURST: u32 = 3;

/// Where a reload reads the configuration from.
#[derive(Clone)]
struct ReloadSource {
    path: PathBuf,
    env: Env,
}

/// The running broker: the public listener and the admin listener.
pub struct Application {
    address: SocketAddr,
    admin_address: SocketAddr,
    server: Server,
    admin: Server,
    broker: web::Data<Broker>,
    reload: Option<ReloadSource>,
}

impl Application {
    pub fn build(settings: Settings) -> std::io::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock))
    }

    /// Binds both listeners; must be called inside a Tokio runtime.
    pub fn build_with_clock(settings: Settings, clock: SharedClock) -> std::io::Result<Self> {
        let listener = bind(settings.server.listen, "server.listen")?;
        let admin_listener = bind(settings.server.admin_listen, "server.admin_listen")?;
        let address = listener.local_addr()?;
        let admin_address = admin_listener.local_addr()?;
        let workers = match settings.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let grace = settings.server.shutdown_grace.as_secs().max(1);

        let broker = web::Data::new(assemble(settings, clock)?);
        let public_broker = broker.clone();
        let server = HttpServer::new(move || {
            let state = public_broker.state();
            // Request id, access line and metric, then CORS (so that every answer within, the
            // header limit's 431 included, carries the CORS headers), then the header limit.
            App::new()
                .wrap(middleware::Front)
                .app_data(public_broker.clone())
                .configure(routes::public(state.upstreams.keys().cloned().collect()))
                // With the token routes' headers: a path next to them (a trailing slash, one
                // more segment) is answered like they are.
                .default_service(web::to(|| async { with_no_store(ApiError::NotFound.error_response()) }))
        })
        .workers(workers)
        .shutdown_timeout(grace)
        .disable_signals()
        .listen(listener)?
        .run();
        let admin_broker = broker.clone();
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(admin_broker.clone())
                .configure(routes::admin::configure)
                .configure(routes::admin_page::configure)
        })
        .workers(1)
        .shutdown_timeout(grace)
        .disable_signals()
        .listen(admin_listener)?
        .run();

        Ok(Self {
            address,
            admin_address,
            server,
            admin,
            broker,
            reload: None,
        })
    }

    /// Re-read `path` (with `env`) on SIGHUP.
    pub fn reload_from(mut self, path: PathBuf, env: Env) -> Self {
        self.reload = Some(ReloadSource { path, env });
        self
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// Serves until SIGTERM or SIGINT, then drains: `/readyz` answers 503, the public listener
    /// stops accepting, requests in flight finish within `server.shutdown_grace`, and it returns.
    /// SIGHUP reloads the configuration when a reload source is set.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let public = self.server.handle();
        let admin = self.admin.handle();
        let mut server = tokio::spawn(self.server);
        let admin_task = tokio::spawn(self.admin);
        if let Some(probe) = self.broker.tokens.probe_shared() {
            tokio::spawn(probe);
        }
        if let Some(watch) = self.broker.tokens.watch_evictions() {
            tokio::spawn(watch);
        }
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        // Reloads run beside the loop (an issuer may take a while to answer), one at a time.
        let reloading = Arc::new(tokio::sync::Mutex::new(()));
        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = hangup.recv() => {
                    let (broker, source, reloading) = (self.broker.clone(), self.reload.clone(), reloading.clone());
                    tokio::spawn(async move {
                        let _one_at_a_time = reloading.lock().await;
                        reload(&broker, source.as_ref()).await;
                    });
                }
                ended = &mut server => {
                    admin.stop(false).await;
                    return ended.map_err(std::io::Error::other)?;
                }
            }
        }
        tracing::info!("draining: /readyz answers 503, finishing requests in flight");
        self.broker.start_draining();
        public.stop(true).await;
        let _ = server.await;
        admin.stop(true).await;
        let _ = admin_task.await;
        let broker = self.broker.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(tracing) = &broker.tracing {
                tracing.shutdown();
            }
        })
        .await;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn reload(broker: &Broker, source: Option<&ReloadSource>) {
    let Some(source) = source else {
        tracing::warn!("SIGHUP ignored: no configuration file to reload");
        return;
    };
    let problems: Vec<(String, String)> = match Settings::load(Some(&source.path), &source.env) {
        Ok(mut settings) => match discover(&mut settings, Some(&broker.state())).await {
            Ok(remarks) => {
                warn_remarks(&remarks);
                apply_reload(broker, settings);
                tracing::info!(config = %source.path.display(), "configuration reloaded");
                return;
            }
            Err(problems) => problems.into_iter().map(|f| (f.key, f.message)).collect(),
        },
        Err(problems) => problems.0.into_iter().map(|p| (p.key, p.message)).collect(),
    };
    for (key, problem) in &problems {
        tracing::error!(key = %key, problem = %problem, "configuration not reloaded");
    }
    tracing::error!("the new configuration is invalid; the running one stays in force");
}

/// Logs what discovery remarked (an `auth_method` the issuer does not list).
pub fn warn_remarks(remarks: &[Finding]) {
    for remark in remarks {
        tracing::warn!(key = %remark.key, remark = %remark.message, "configuration remark");
    }
}

fn bind(address: SocketAddr, key: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(address)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{key}: cannot listen on {address}: {e}")))
}
