//! Collecting every problem of a configuration at once, each naming its key.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{raw, Env, Problem};
use crate::outbound;
use crate::scope::{Scope, ScopeSet};
use crate::timespan::TimeSpan;

/// Collects problems while validating.
#[derive(Default)]
pub(super) struct Check {
    pub(super) problems: Vec<Problem>,
}

impl Check {
    pub(super) fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(&mut self, key: &str, value: Option<&raw::DurationText>, default: Duration) -> Duration {
        let Some(value) = value else { return default };
        let span = match value {
            raw::DurationText::Seconds(n) => Ok(TimeSpan::from_seconds(*n as i64)),
            raw::DurationText::Text(text) => match text.trim().parse::<u64>() {
                Ok(n) => Ok(TimeSpan::from_seconds(n as i64)),
                Err(_) => TimeSpan::parse(text),
            },
        };
        match span {
            Ok(span) => span.as_positive_duration().unwrap_or_else(|| {
                self.problem(key, "must be a positive duration");
                default
            }),
            Err(e) => {
                self.problem(key, e.to_string());
                default
            }
        }
    }

    /// An `https://` URL, or `http://` on a loopback address.
    pub(super) fn secure_url(&mut self, key: &str, text: &str) -> Option<Url> {
        match Url::parse(text) {
            Ok(url) if outbound::is_secure_url(&url) => Some(url),
            Ok(_) => {
                self.problem(key, "must be an https:// URL (http:// only on loopback addresses)");
                None
            }
            Err(e) => {
                self.problem(key, format!("not a URL: {e}"));
                None
            }
        }
    }

    pub(super) fn socket_addr(&mut self, key: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.problem(key, format!("`{text}` is not an address:port such as 127.0.0.1:8080"));
            default.parse().expect("default address parses")
        })
    }

    pub(super) fn scopes(&mut self, key: &str, values: &[String]) -> ScopeSet {
        let mut set = ScopeSet::default();
        for (i, value) in values.iter().enumerate() {
            match Scope::parse(value) {
                Ok(scope) => {
                    set.insert(scope);
                }
                Err(e) => self.problem(format!("{key}[{i}]"), e.to_string()),
            }
        }
        set
    }

    pub(super) fn secret(&mut self, key: &str, secret: &raw::Secret, env: &Env) -> SecretString {
        let resolved = match secret {
            raw::Secret::Literal(value) => Ok(value.expose_secret().to_string()),
            raw::Secret::Env { env: name } => env
                .get(name)
                .cloned()
                .ok_or_else(|| format!("environment variable {name} is not set")),
            raw::Secret::File { file } => std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("cannot read secret file {}: {}", file.display(), e.kind())),
        };
        match resolved {
            Ok(value) if value.is_empty() => {
                self.problem(key, "the secret is empty");
                SecretString::from(String::new())
            }
            Ok(value) => SecretString::from(value),
            Err(message) => {
                self.problem(key, message);
                SecretString::from(String::new())
            }
        }
    }
}
