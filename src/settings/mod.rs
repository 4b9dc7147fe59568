//! Configuration: a TOML file, then `TOKEN_BROKER__<SECTION>__<KEY>` environment overrides.
//!
//! Loading happens in two steps. The file and the environment are deserialized into the [`raw`]
//! shapes, which hold what the operator wrote; each section's validator then turns its part into
//! the configuration type of the component that uses it, collecting every problem at once as a
//! [`Problem`] that names its key (or the environment variable it came from) and never a secret's
//! value. This module only loads and validates: the types belong to the components.

mod cache;
mod check;
mod grants;
mod identity;
mod public_tokens;
mod raw;
mod server;
#[cfg(test)]
mod tests;
mod upstreams;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use crate::http::config::ServerSettings;
use crate::identity::config::NamedAuthenticator;
use crate::policy::GrantSettings;
use crate::public_tokens::PublicTokenSettings;
use crate::telemetry::traces::TelemetrySettings;
use crate::tokens::config::CacheSettings;
use crate::upstream::config::UpstreamSettings;
use check::Check;

/// The environment the settings are read against: overrides and `{ env = … }` secrets.
/// Passed in rather than read globally so tests never touch the process environment.
pub type Env = HashMap<String, String>;

/// The process environment, for `main`.
pub fn process_env() -> Env {
    std::env::vars().collect()
}

/// The validated configuration the broker runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub cache: CacheSettings,
    pub upstreams: BTreeMap<String, UpstreamSettings>,
    pub authenticators: Vec<NamedAuthenticator>,
    pub grants: Vec<GrantSettings>,
    pub public_tokens: Option<PublicTokenSettings>,
    pub telemetry: TelemetrySettings,
}

/// One thing wrong with the configuration: the key and what is wrong, never a secret's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Everything wrong with a configuration, one line per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

impl Problems {
    /// A problem with a value that came from an environment variable names the variable: the
    /// operator looks for it there, not in the file.
    fn naming_variables(mut self, variables: &[String]) -> Self {
        for problem in &mut self.0 {
            let from_variable = variables.iter().find(|variable| {
                let key = variable[ENV_PREFIX.len() + 2..].replace("__", ".").to_ascii_lowercase();
                problem.key == key
                    || problem
                        .key
                        .strip_prefix(key.as_str())
                        .is_some_and(|rest| rest.starts_with(['.', '[']))
            });
            if let Some(variable) = from_variable {
                problem.key = variable.clone();
            }
        }
        self
    }

    fn one(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![Problem {
            key: key.into(),
            message: message.into(),
        }])
    }
}

const ENV_PREFIX: &str = "TOKEN_BROKER";

impl Settings {
    /// Reads `path` (when given) and the `TOKEN_BROKER__…` overrides in `env`, then validates.
    pub fn load(path: Option<&Path>, env: &Env) -> Result<Self, Problems> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            if !path.is_file() {
                return Err(Problems::one(
                    "--config",
                    format!("cannot read configuration file {}", path.display()),
                ));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let overrides: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let variables: Vec<String> = overrides.keys().cloned().collect();
        let loaded = builder
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(overrides)),
            )
            .build()
            .and_then(|built| built.try_deserialize::<raw::Settings>())
            .map_err(|e| Problems::one(config_error_key(&e), config_error_message(e)));
        loaded
            .and_then(|raw| raw.validate(env))
            .map_err(|problems| problems.naming_variables(&variables))
    }

    /// Parses TOML text directly (no environment overrides besides secrets), for tests and `demo`.
    pub fn from_toml(text: &str, env: &Env) -> Result<Self, Problems> {
        let built = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|e| Problems::one(config_error_key(&e), config_error_message(e)))?;
        let raw: raw::Settings = built
            .try_deserialize()
            .map_err(|e| Problems::one(config_error_key(&e), config_error_message(e)))?;
        raw.validate(env)
    }
}

fn config_error_key(error: &config::ConfigError) -> String {
    match error {
        config::ConfigError::Type { key: Some(key), .. } => key.clone(),
        config::ConfigError::At { key: Some(key), .. } => key.clone(),
        config::ConfigError::At {
            origin: Some(origin), ..
        } => origin.clone(),
        _ => "configuration".to_string(),
    }
}

fn config_error_message(error: config::ConfigError) -> String {
    match error {
        // The unexpected value is left out: it may be a misplaced secret.
        config::ConfigError::Type { expected, .. } => format!("wrong type: expected {expected}"),
        config::ConfigError::At { error, .. } => error.to_string(),
        other => other.to_string(),
    }
}

/// `[telemetry]`: where traces go (OTLP/HTTP), if anywhere.
fn telemetry(check: &mut Check, raw: &raw::Telemetry) -> TelemetrySettings {
    let otlp_endpoint = raw.otlp_endpoint.as_ref().and_then(|text| match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.query().is_none() && url.username().is_empty() => {
            Some(url)
        }
        _ => {
            check.problem(
                "telemetry.otlp_endpoint",
                "must be the collector's OTLP/HTTP base URL, such as http://127.0.0.1:4318",
            );
            None
        }
    });
    let service_name = raw.service_name.clone().unwrap_or_else(|| "token-broker".into());
    if service_name.trim().is_empty() {
        check.problem("telemetry.service_name", "must not be empty");
    }
    TelemetrySettings {
        otlp_endpoint,
        service_name,
    }
}

impl raw::Settings {
    /// Every section, each by its own validator; the problems of all of them at once.
    fn validate(self, env: &Env) -> Result<Settings, Problems> {
        let mut check = Check::default();
        let server = server::validate(&mut check, &self.server, env);
        let cache = cache::validate(&mut check, &self.cache, env);
        let upstreams = upstreams::validate(&mut check, &self.upstreams, env);
        let authenticators = identity::validate(&mut check, &self.authenticators, self.public_tokens.is_some());
        let grants = grants::validate(&mut check, &self.grants, &self.upstreams, &authenticators);
        let public_tokens = self
            .public_tokens
            .as_ref()
            .and_then(|raw| public_tokens::validate(&mut check, raw, env, &authenticators));
        let telemetry = telemetry(&mut check, &self.telemetry);
        if check.problems.is_empty() {
            Ok(Settings {
                telemetry,
                server,
                cache,
                upstreams,
                authenticators,
                grants,
                public_tokens,
            })
        } else {
            Err(Problems(check.problems))
        }
    }
}
