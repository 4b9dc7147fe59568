//! Where an upstream's token requests go: its `token_url`, or the token endpoint its `issuer`'s
//! metadata names — fetched before the broker starts (or a reload applies), then refreshed daily
//! in the background, the last good document kept when a refresh fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use parking_lot::Mutex;
use url::Url;

use super::config::{Endpoint, UpstreamSettings};
use super::discovery::{self, ServerMetadata};
use crate::clock::{later, SharedClock};

/// How often an issuer's metadata is fetched again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(24 * 3600);
/// After a failed refresh, when to try again (the last good document serves meanwhile).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);
/// Bounds a metadata fetch: the upstream's own `timeout`, but at least the first and at most the
/// second (so that `check`, start-up and a reload never wait long on an issuer).
const MIN_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);

fn discovery_timeout(upstream: &UpstreamSettings) -> Duration {
    upstream.timeout.clamp(MIN_DISCOVERY_TIMEOUT, MAX_DISCOVERY_TIMEOUT)
}

/// Where one token request goes and what its assertion's `aud` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub token_url: Url,
    /// The issuer, when the upstream was configured with one.
    pub issuer: Option<String>,
}

/// An upstream's token endpoint while the broker runs.
pub struct LiveEndpoint {
    fixed: Option<Url>,
    /// Certificate authentication uses the metadata's mTLS alias when there is one.
    mtls: bool,
    discovered: Option<Discovered>,
}

struct Discovered {
    issuer: String,
    /// Whether the certificate endpoint (`mtls_endpoint_aliases`) is the one in use.
    mtls: bool,
    http: reqwest::Client,
    timeout: Duration,
    clock: SharedClock,
    state: Arc<Mutex<State>>,
}

struct State {
    current: Option<Arc<ServerMetadata>>,
    next_refresh: Instant,
    refreshing: bool,
    /// Why the last refresh failed, while it has not succeeded since.
    last_error: Option<String>,
}

/// An issuer's metadata as the admin API shows it.
#[derive(Debug, serde::Serialize)]
pub struct DiscoveryStatus {
    pub issuer: String,
    /// Where the document in use was found.
    pub document: Option<String>,
    /// Seconds until the next refresh.
    pub refresh_in: u64,
    /// Why the last refresh failed (the last good document stays in use).
    pub last_error: Option<String>,
}

impl LiveEndpoint {
    pub fn new(settings: &UpstreamSettings, http: &reqwest::Client, clock: SharedClock) -> Self {
        let mtls = settings.auth_method.uses_certificate();
        match &settings.endpoint {
            Endpoint::Fixed(url) => Self {
                fixed: Some(url.clone()),
                mtls,
                discovered: None,
            },
            Endpoint::Discovered { issuer, metadata } => {
                let now = clock.now();
                let next_refresh = if metadata.is_some() {
                    later(now, REFRESH_EVERY)
                } else {
                    now
                };
                Self {
                    fixed: None,
                    mtls,
                    discovered: Some(Discovered {
                        issuer: issuer.clone(),
                        mtls,
                        http: settings.http(http).clone(),
                        timeout: discovery_timeout(settings),
                        clock,
                        state: Arc::new(Mutex::new(State {
                            current: metadata.clone(),
                            next_refresh,
                            refreshing: false,
                            last_error: None,
                        })),
                    }),
                }
            }
        }
    }

    /// Where the next token request goes; `None` while an issuer's metadata has never been
    /// fetched. Starts a background refresh of the metadata when one is due.
    pub fn target(&self) -> Option<Target> {
        if let Some(url) = &self.fixed {
            return Some(Target {
                token_url: url.clone(),
                issuer: None,
            });
        }
        let discovered = self.discovered.as_ref()?;
        let metadata = discovered.current_and_refresh();
        metadata.map(|metadata| Target {
            token_url: metadata.token_endpoint_for(self.mtls).clone(),
            issuer: Some(discovered.issuer.clone()),
        })
    }

    /// The token endpoint in use (without starting a refresh), if known.
    pub fn current_url(&self) -> Option<Url> {
        if let Some(url) = &self.fixed {
            return Some(url.clone());
        }
        self.metadata()
            .map(|metadata| metadata.token_endpoint_for(self.mtls).clone())
    }

    /// The discovery state, for an upstream configured with an issuer.
    pub fn status(&self) -> Option<DiscoveryStatus> {
        let discovered = self.discovered.as_ref()?;
        let state = discovered.state.lock();
        Some(DiscoveryStatus {
            issuer: discovered.issuer.clone(),
            document: state.current.as_ref().map(|m| m.document.to_string()),
            refresh_in: state
                .next_refresh
                .saturating_duration_since(discovered.clock.now())
                .as_secs(),
            last_error: state.last_error.clone(),
        })
    }

    /// The metadata in use, for an upstream configured with an issuer.
    pub fn metadata(&self) -> Option<Arc<ServerMetadata>> {
        self.discovered.as_ref()?.state.lock().current.clone()
    }
}

/// Clears `refreshing` when the refresh task ends, or is dropped.
struct RefreshingFlag(Arc<Mutex<State>>);

impl Drop for RefreshingFlag {
    fn drop(&mut self) {
        self.0.lock().refreshing = false;
    }
}

impl Discovered {
    fn current_and_refresh(&self) -> Option<Arc<ServerMetadata>> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        if now >= state.next_refresh && !state.refreshing {
            state.refreshing = true;
            let (issuer, http, timeout, mtls) = (self.issuer.clone(), self.http.clone(), self.timeout, self.mtls);
            let (shared, clock) = (self.state.clone(), self.clock.clone());
            tokio::spawn(async move {
                // Cleared however the task ends, so a dropped refresh does not stop later ones.
                let _refreshing = RefreshingFlag(shared.clone());
                let result = discover_within(&http, &issuer, timeout)
                    .await
                    .and_then(|metadata| {
                        let state = shared.lock();
                        let host = |m: &ServerMetadata| m.token_endpoint_for(mtls).host_str().map(str::to_ascii_lowercase);
                        match state.current.as_deref() {
                            // Where the credentials go changes only by an operator's reload.
                            Some(current) if host(current) != host(&metadata) => Err(format!(
                                "the metadata moved the token endpoint to another host ({}); not followed: reload or restart to accept it",
                                metadata.token_endpoint_for(mtls)
                            )),
                            _ => Ok(metadata),
                        }
                    });
                let now = clock.now();
                let mut state = shared.lock();
                match result {
                    Ok(metadata) => {
                        if state.current.as_ref().map(|c| &c.token_endpoint) != Some(&metadata.token_endpoint) {
                            tracing::info!(issuer = %issuer, token_endpoint = %metadata.token_endpoint, "issuer metadata: token endpoint set");
                        }
                        state.current = Some(Arc::new(metadata));
                        state.next_refresh = later(now, REFRESH_EVERY);
                        state.last_error = None;
                    }
                    Err(error) => {
                        tracing::warn!(issuer = %issuer, error = %error, "issuer metadata could not be refreshed; the last good document stays in use");
                        state.next_refresh = later(now, RETRY_AFTER_FAILURE);
                        state.last_error = Some(error);
                    }
                }
            });
        }
        state.current.clone()
    }
}

/// The metadata of `issuer` within `timeout`, or why not (for a log line or a problem).
async fn discover_within(http: &reqwest::Client, issuer: &str, timeout: Duration) -> Result<ServerMetadata, String> {
    match tokio::time::timeout(timeout, discovery::discover(http, issuer)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer from {issuer} within {timeout:?}")),
    }
}

/// Text from a metadata document, fit for a terminal or a log line: no control characters, short.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(100).collect()
}

/// The first few items of a list from a metadata document, each [`printable`].
fn printable_list(items: &[String]) -> String {
    let mut shown: Vec<String> = items.iter().take(12).map(|item| printable(item)).collect();
    if items.len() > 12 {
        shown.push(format!("and {} more", items.len() - 12));
    }
    shown.join(", ")
}

/// A problem with an upstream's issuer, by configuration key; or a remark that does not stop it.
#[derive(Debug)]
pub struct Finding {
    pub key: String,
    pub message: String,
}

/// Fetches the metadata of every upstream configured with `issuer` (concurrently) and keeps it in
/// its settings. `known` gives metadata already held for an issuer (a reload keeps the running
/// one's instead of asking again). Returns the problems (which stop start-up or a reload) and the
/// remarks (an `auth_method` the server does not list).
pub async fn discover_all(
    upstreams: &mut BTreeMap<String, UpstreamSettings>,
    http: &reqwest::Client,
    known: impl Fn(&str, &UpstreamSettings) -> Option<Arc<ServerMetadata>>,
) -> (Vec<Finding>, Vec<Finding>) {
    let wanted: Vec<(String, String, Duration, reqwest::Client)> = upstreams
        .iter()
        .filter_map(|(name, upstream)| match &upstream.endpoint {
            Endpoint::Discovered { issuer, .. } if known(name, upstream).is_none() => Some((
                name.clone(),
                issuer.clone(),
                discovery_timeout(upstream),
                upstream.http(http).clone(),
            )),
            _ => None,
        })
        .collect();
    let fetched = join_all(wanted.into_iter().map(|(name, issuer, timeout, http)| async move {
        let result = discover_within(&http, &issuer, timeout).await;
        (name, result)
    }))
    .await;
    let mut fetched: BTreeMap<String, Result<ServerMetadata, String>> = fetched.into_iter().collect();
    let (mut problems, mut remarks) = (Vec::new(), Vec::new());
    for (name, upstream) in upstreams.iter_mut() {
        let method = upstream.auth_method;
        if !matches!(upstream.endpoint, Endpoint::Discovered { .. }) {
            continue;
        }
        let found = match fetched.remove(name.as_str()) {
            Some(Ok(document)) => Arc::new(document),
            Some(Err(message)) => {
                problems.push(Finding {
                    key: format!("upstreams.{name}.issuer"),
                    message,
                });
                continue;
            }
            None => match known(name, upstream) {
                Some(document) => document,
                None => continue,
            },
        };
        if !found.supports(&method.to_string()) {
            remarks.push(Finding {
                key: format!("upstreams.{name}.auth_method"),
                message: format!(
                    "`{method}` is not among the issuer's token_endpoint_auth_methods_supported ({})",
                    printable_list(&found.auth_methods)
                ),
            });
        }
        if let Some(host) = found.foreign_host(method.uses_certificate()) {
            remarks.push(Finding {
                key: format!("upstreams.{name}.issuer"),
                message: format!(
                    "the issuer's metadata sends token requests (and the credentials) to another host: {}",
                    printable(host)
                ),
            });
        }
        if let Endpoint::Discovered { metadata, .. } = &mut upstream.endpoint {
            *metadata = Some(found);
        }
    }
    (problems, remarks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_a_metadata_document_is_made_printable_and_short() {
        assert_eq!(printable("private_key_jwt\u{1b}[2J\r\nFAKE"), "private_key_jwt[2JFAKE");
        assert_eq!(printable(&"x".repeat(500)).len(), 100);
        let many: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        assert!(printable_list(&many).ends_with("m11, and 8 more"));
    }
}
