//! Builds the application from [`Settings`] and binds its listeners (port 0 in tests).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use tracing_actix_web::TracingLogger;

use crate::clock::{SharedClock, SystemClock};
use crate::http::cors::{self, CorsPolicy};
use crate::identity::Chain;
use crate::policy::Policy;
use crate::routes;
use crate::settings::Settings;
use crate::tokens::TokenCache;
use crate::upstream::{TokenClient, Upstream};

/// What every request handler shares.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub identity: Chain,
    pub policy: Policy,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub tokens: TokenCache,
}

impl AppState {
    pub fn new(settings: Settings, clock: SharedClock) -> Self {
        let client = TokenClient::new(settings.cache.default_ttl);
        let upstreams = settings
            .upstreams
            .iter()
            .map(|(name, upstream)| {
                let upstream = Upstream::new(upstream.clone(), client.clone(), clock.clone());
                (name.clone(), Arc::new(upstream))
            })
            .collect();
        Self {
            identity: Chain::new(&settings.authenticators, &clock),
            policy: Policy::new(settings.grants.clone()),
            upstreams,
            tokens: TokenCache::new(clock, settings.cache.max_entries, settings.cache.refresh_skew),
            settings: Arc::new(settings),
        }
    }
}

/// The running broker: the public listener and the admin listener.
pub struct Application {
    address: SocketAddr,
    admin_address: SocketAddr,
    server: Server,
    admin: Server,
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

        let cors = web::Data::new(CorsPolicy::new(
            &settings.server.cors_allowed_origins,
            &settings.server.csrf_header,
        ));
        let state = web::Data::new(AppState::new(settings, clock));
        let server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(cors::cors))
                .wrap(TracingLogger::default())
                .app_data(state.clone())
                .app_data(cors.clone())
                .configure(routes::token::configure)
        })
        .workers(workers)
        .listen(listener)?
        .run();
        let admin = HttpServer::new(|| App::new().configure(routes::admin::configure))
            .workers(1)
            .listen(admin_listener)?
            .run();

        Ok(Self {
            address,
            admin_address,
            server,
            admin,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// Serves until a signal stops the servers (actix-web handles SIGINT and SIGTERM gracefully).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        tokio::try_join!(self.server, self.admin).map(|_| ())
    }
}

fn bind(address: SocketAddr, key: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(address)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{key}: cannot listen on {address}: {e}")))
}
