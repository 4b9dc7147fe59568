//! Forward-auth: the app's own session endpoint says who the caller is.
//!
//! Only the configured cookies (and, when enabled, the `Authorization` header) are forwarded;
//! redirects are not followed. 2xx → the identity from the JSON answer; 401/403 → refused; a
//! timeout or 5xx → 503 `auth_unavailable`. Decisions are cached for `cache_ttl` under a hash of
//! the forwarded credentials (never the raw cookie), and identical concurrent checks share one call.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::{HeaderMap, AUTHORIZATION, COOKIE};
use foldhash::fast::RandomState;
use moka::future::Cache;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{AuthError, Gate, Identity, Method, Outcome};
use crate::identity::config::ForwardSettings;
use crate::outbound::{self, FetchError};

const MAX_BODY_BYTES: usize = 64 * 1024;
const DECISIONS: u64 = 100_000;

#[derive(Clone)]
enum Decision {
    Allowed(Arc<Identity>),
    Refused,
}

/// A decision and the moment it is no longer used: `cache_ttl` after the session endpoint gave
/// it (the shared cache keeps it from a moment later, when the call has returned).
#[derive(Clone)]
struct Decided {
    decision: Decision,
    until: Instant,
}

impl super::recall::Lapses for Decided {
    fn until(&self) -> Instant {
        self.until
    }
}

// Each worker thread's decisions, in front of the shared cache (see `super::recall`).
super::recall::thread_recollection!(DECIDED: [u8; 32], [u8; 32] => Decided);

pub struct ForwardAuthenticator {
    settings: ForwardSettings,
    http: reqwest::Client,
    decisions: Cache<[u8; 32], Decided, RandomState>,
    /// This authenticator's entries in each thread's recollection.
    owner: u64,
}

impl ForwardAuthenticator {
    pub fn new(settings: &ForwardSettings) -> Self {
        Self {
            http: outbound::client(Some(settings.timeout)),
            decisions: Cache::builder()
                .max_capacity(DECISIONS)
                .time_to_live(settings.cache_ttl)
                .build_with_hasher(RandomState::default()),
            settings: settings.clone(),
            owner: super::recall::new_owner(),
        }
    }

    pub fn settings(&self) -> &ForwardSettings {
        &self.settings
    }

    pub async fn authenticate(&self, headers: &HeaderMap, gate: &dyn Gate) -> Outcome {
        let cookies = self.forwarded_cookies(headers);
        let authorization = if self.settings.forward_authorization {
            headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())
        } else {
            None
        };
        if cookies.is_empty() && authorization.is_none() {
            return Outcome::NotMine;
        }
        let mut hasher = Sha256::new();
        hasher.update(cookies.as_bytes());
        hasher.update([0]);
        hasher.update(authorization.unwrap_or("").as_bytes());
        let key: [u8; 32] = hasher.finalize().into();

        // A decision in memory is read without the coalescing machinery of `try_get_with`.
        // Identical concurrent checks share one call; only that call asks the gate.
        let in_memory = match recalled(self.owner, &key) {
            Some(decided) => Some(decided),
            None => {
                let decided = self.decisions.get(&key).await;
                decided.inspect(|decided| remember(self.owner, key, decided.clone()))
            }
        };
        let decided = match in_memory {
            Some(decided) => Ok(decided),
            // Boxed where it starts: the session call's state would otherwise be part of every
            // request's future, and moved with it.
            None => {
                Box::pin(self.decisions.try_get_with(key, async {
                    if !gate.admit() {
                        return Err(AuthError::Throttled);
                    }
                    let decision = self.ask(&cookies, authorization).await.map_err(|error| {
                        tracing::debug!(error = %error, "the session endpoint could not decide");
                        AuthError::Unavailable
                    })?;
                    // The configuration keeps cache_ttl within a day; should the clock still not
                    // count that far, no thread recalls the decision and moka answers.
                    let now = Instant::now();
                    let until = now.checked_add(self.settings.cache_ttl).unwrap_or(now);
                    Ok(Decided { decision, until })
                }))
                .await
            }
        };
        let decision = decided.map(|decided| decided.decision);
        match decision {
            Ok(Decision::Allowed(identity)) => {
                let mut identity = (*identity).clone();
                identity.via_cookie = !cookies.is_empty();
                Outcome::Authenticated(identity)
            }
            Ok(Decision::Refused) => Outcome::Rejected(AuthError::Invalid),
            Err(error) => Outcome::Rejected(*error),
        }
    }

    /// `name=value` pairs of the configured cookies only, in configured order.
    fn forwarded_cookies(&self, headers: &HeaderMap) -> String {
        // About as long as the Cookie headers at most: one allocation, usually, not one per growth.
        let mut pairs = String::with_capacity(headers.get_all(COOKIE).map(|v| v.len() + 2).sum());
        for name in &self.settings.forward_cookies {
            let value = headers
                .get_all(COOKIE)
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(n, _)| n == name)
                .map(|(_, v)| v);
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                if !pairs.is_empty() {
                    pairs.push_str("; ");
                }
                pairs.push_str(name);
                pairs.push('=');
                pairs.push_str(value);
            }
        }
        pairs
    }

    async fn ask(&self, cookies: &str, authorization: Option<&str>) -> Result<Decision, FetchError> {
        let mut request = self
            .http
            .get(self.settings.url.clone())
            .header("accept", "application/json");
        if !cookies.is_empty() {
            request = request.header(COOKIE.as_str(), cookies);
        }
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION.as_str(), authorization);
        }
        let response = request.send().await.map_err(FetchError::Transport)?;
        let status = response.status();
        // A redirect (to a login page, as many apps answer a stale session) is a refusal too.
        if status == 401 || status == 403 || status.is_redirection() {
            return Ok(Decision::Refused);
        }
        if !status.is_success() {
            tracing::warn!(status = status.as_u16(), "the session endpoint answered an error");
            return Err(FetchError::Status(status.as_u16()));
        }
        let body = outbound::read_capped(response, MAX_BODY_BYTES).await?;
        let json: Value = serde_json::from_slice(&body).map_err(FetchError::Json)?;
        let Some(subject) = field(&json, &self.settings.subject_field).and_then(scalar_string) else {
            tracing::warn!(field = %self.settings.subject_field, "the session answer has no subject");
            return Ok(Decision::Refused);
        };
        let mut identity = Identity::new(subject, Method::Forward);
        identity.verified_email = self
            .settings
            .email_field
            .as_deref()
            .and_then(|f| field(&json, f))
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase);
        identity.groups = match self.settings.groups_field.as_deref().and_then(|f| field(&json, f)) {
            Some(Value::Array(values)) => values.iter().filter_map(Value::as_str).map(String::from).collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok(Decision::Allowed(Arc::new(identity)))
    }
}

/// A field by a dotted path such as `user.id`.
fn field<'a>(json: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(json, |value, name| value.get(name))
}

/// A non-empty subject from a string or a number.
fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
