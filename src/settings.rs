//! Configuration: a TOML file, then `TOKEN_BROKER__<SECTION>__<KEY>` environment overrides.
//!
//! Loading happens in two steps. The file and the environment are deserialized into the `file`
//! structs, which hold what the operator wrote; `validate` then turns them into [`Settings`],
//! collecting every problem at once as a [`Problem`] that names its key and never a secret's value.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::http::header::HeaderName;
use base64::Engine;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::policy::{Scope, ScopeSet};
use crate::public_tokens::{verifying_key_from_pem, SigningKey, VerifyingKey};
use crate::timespan::TimeSpan;

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
}

/// `[public_tokens]`: the app's backend mints scoped, short-lived tokens for its browser.
#[derive(Debug, Clone)]
pub struct PublicTokenSettings {
    pub signing_key: SigningKey,
    pub previous_keys: Vec<VerifyingKey>,
    pub default_expiration: Duration,
    pub max_expiration: Duration,
    pub issuer: String,
    pub mint_subjects: Vec<String>,
    /// Whose subjects `mint_subjects` are: authenticator names (default: every api_key one).
    pub mint_authenticators: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// 0 means one worker per core.
    pub workers: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub cors_allowed_origins: Vec<String>,
    pub csrf_header: HeaderName,
    pub max_body_bytes: usize,
    /// Total size of the request headers; more is 431. 0 leaves only the HTTP server's own limits.
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Token-route requests per second per identity; 0 turns the limit off.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// `/refresh` requests per minute per caller (a burst of up to 3); 0 turns the limit off.
    pub refresh_per_minute: u32,
    /// When set, every admin route but `/healthz` and `/readyz` wants `Authorization: Bearer` it.
    pub admin_token: Option<SecretString>,
    /// Failed authentications per minute per client address (and as a burst); 0 turns it off.
    pub auth_failures_per_minute: u32,
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub max_entries: u64,
    pub refresh_skew: Duration,
    pub default_ttl: Duration,
    /// The tier shared by replicas; absent: memory only.
    pub redis: Option<RedisSettings>,
}

/// `[cache.redis]`: a Redis (or Valkey) that replicas share.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    /// With a `rediss://` URL: the CA certificates (PEM) Redis's certificate must chain to, read
    /// from `ca_file`; absent, the system's trusted roots.
    pub ca_pem: Option<Vec<u8>>,
    pub key_prefix: String,
    /// AES-256-GCM key for the stored tokens.
    pub encryption_key: [u8; 32],
    pub timeout: Duration,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url_password(&self.url))
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|pem| format!("{} bytes", pem.len())),
            )
            .field("key_prefix", &self.key_prefix)
            .field("encryption_key", &"[redacted]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A Redis URL with its password (if any) replaced, for logs and `Debug`.
pub fn redact_url_password(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "[unparsable]".to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// RFC 6749 §2.3.1: credentials in the request body.
    ClientSecretPost,
    /// RFC 6749 §2.3.1: HTTP Basic with the form-urlencoded id and secret.
    ClientSecretBasic,
}

/// SHA-256 over an upstream's credentials and token-shaping settings; see
/// [`UpstreamSettings::credential_fingerprint`]. Its `Debug` shows a prefix only.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialFingerprint(pub [u8; 32]);

impl fmt::Debug for CredentialFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialFingerprint({})", hex::encode(&self.0[..4]))
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub name: String,
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    pub auth_method: ClientAuthMethod,
    pub scopes: ScopeSet,
    pub audience: Option<String>,
    pub params: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Fresh fetches allowed per rolling hour, for vendors that bill or cap tokens.
    pub max_tokens_per_hour: Option<u32>,
}

impl UpstreamSettings {
    /// A digest of everything that shapes the tokens this upstream hands out: the token endpoint,
    /// client id, authentication method, secret, audience and extra parameters. It is part of every
    /// cache key, in memory and in Redis, so a token fetched under other credentials or settings
    /// is never served. Fields are length-prefixed, so no two settings share an encoding.
    pub fn credential_fingerprint(&self) -> CredentialFingerprint {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        field(b"token-broker credentials v1");
        field(self.token_url.as_str().as_bytes());
        field(self.client_id.as_bytes());
        field(format!("{:?}", self.auth_method).as_bytes());
        field(self.client_secret.expose_secret().as_bytes());
        match &self.audience {
            Some(audience) => {
                field(b"audience");
                field(audience.as_bytes());
            }
            None => field(b"no audience"),
        }
        for (name, value) in &self.params {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        CredentialFingerprint(hasher.finalize().into())
    }

    /// Whether `other` asks the same token endpoint with the same credentials and parameters,
    /// so that tokens cached under one are valid under the other.
    pub fn same_credentials(&self, other: &Self) -> bool {
        self.credential_fingerprint() == other.credential_fingerprint()
    }

    /// Whether nothing at all differs, so the upstream's state (circuit breaker, remembered
    /// refusals, hourly quota) carries over a reload.
    pub fn same_as(&self, other: &Self) -> bool {
        self.same_credentials(other)
            && self.name == other.name
            && self.scopes == other.scopes
            && self.timeout == other.timeout
            && self.max_tokens_per_hour == other.max_tokens_per_hour
    }
}

/// An authenticator and its name: identities are (name, subject) pairs, so the same subject from
/// two authenticators is two callers.
#[derive(Debug, Clone)]
pub struct NamedAuthenticator {
    pub name: std::sync::Arc<str>,
    pub settings: AuthenticatorSettings,
}

#[derive(Debug, Clone)]
pub enum AuthenticatorSettings {
    ApiKey {
        keys: Vec<ApiKeySettings>,
    },
    Jwt(JwtSettings),
    Forward(ForwardSettings),
    /// Tokens minted at `POST /v1/public-tokens`, verified with `[public_tokens]` keys.
    PublicToken,
}

/// An OIDC issuer whose id_tokens authenticate callers.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSettings {
    /// The issuer as configured; discovery starts from it.
    pub issuer: String,
    /// Every `iss` value accepted (Google uses two spellings).
    pub accepted_issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub jwks_url: Option<Url>,
    pub hosted_domain: Option<String>,
    /// Google's issuer: an address counts only with `hd` equal to its domain, or at gmail.com,
    /// since `email_verified` alone holds for a consumer account made for anyone's address.
    pub google: bool,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway: Duration,
    pub groups_claim: String,
    pub max_token_bytes: usize,
    /// How long keys are kept when the JWKS answer has no `Cache-Control: max-age`.
    pub jwks_cache_ttl: Duration,
    pub timeout: Duration,
}

/// The app's own session endpoint, asked with the caller's cookies.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardSettings {
    pub url: Url,
    pub forward_cookies: Vec<String>,
    pub forward_authorization: bool,
    pub subject_field: String,
    pub email_field: Option<String>,
    pub groups_field: Option<String>,
    pub cache_ttl: Duration,
    pub timeout: Duration,
}

pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// Google's id_tokens carry either spelling of its issuer.
pub const GOOGLE_ISSUERS: [&str; 2] = [GOOGLE_ISSUER, "accounts.google.com"];

#[derive(Clone)]
pub struct ApiKeySettings {
    pub id: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    pub subject: String,
}

impl fmt::Debug for ApiKeySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeySettings")
            .field("id", &self.id)
            .field("hash", &"[redacted]")
            .field("subject", &self.subject)
            .finish()
    }
}

#[derive(Debug, Clone, Default)]
pub struct GrantSettings {
    /// The authenticators whose identities this grant matches; `None`: any (allowed only where
    /// that cannot confuse two namespaces, see `validate_grants`).
    pub authenticators: Option<Vec<String>>,
    pub subjects: Vec<String>,
    pub emails: Vec<String>,
    pub email_domains: Vec<String>,
    pub groups: Vec<String>,
    pub upstreams: BTreeMap<String, ScopeSet>,
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
        let built = builder
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(overrides)),
            )
            .build()
            .map_err(|e| Problems::one(config_error_key(&e), config_error_message(e)))?;
        let raw: file::Settings = built
            .try_deserialize()
            .map_err(|e| Problems::one(config_error_key(&e), config_error_message(e)))?;
        raw.validate(env)
    }

    /// Parses TOML text directly (no environment overrides besides secrets), for tests and `demo`.
    pub fn from_toml(text: &str, env: &Env) -> Result<Self, Problems> {
        let built = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|e| Problems::one(config_error_key(&e), config_error_message(e)))?;
        let raw: file::Settings = built
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

/// Whether `url` may be used without TLS: only loopback hosts.
pub fn is_loopback_url(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The form the operator writes: strings and numbers as they came from TOML and the environment.
mod file {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Settings {
        #[serde(default)]
        pub server: Server,
        #[serde(default)]
        pub cache: Cache,
        #[serde(default)]
        pub upstreams: BTreeMap<String, Upstream>,
        #[serde(default)]
        pub authenticators: Vec<Authenticator>,
        #[serde(default)]
        pub grants: Vec<Grant>,
        pub public_tokens: Option<PublicTokens>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PublicTokens {
        pub signing_key: Secret,
        #[serde(default)]
        pub previous_keys: Vec<Secret>,
        pub default_expiration: Option<DurationText>,
        pub max_expiration: Option<DurationText>,
        pub issuer: Option<String>,
        #[serde(default, deserialize_with = "string_or_list")]
        pub mint_subjects: Vec<String>,
        #[serde(default, deserialize_with = "optional_list")]
        pub mint_authenticators: Option<Vec<String>>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Server {
        pub listen: Option<String>,
        pub admin_listen: Option<String>,
        pub workers: Option<usize>,
        #[serde(default, deserialize_with = "string_or_list")]
        pub trusted_proxies: Vec<String>,
        #[serde(default, deserialize_with = "string_or_list")]
        pub cors_allowed_origins: Vec<String>,
        pub csrf_header: Option<String>,
        pub max_body_bytes: Option<usize>,
        pub max_header_bytes: Option<usize>,
        pub shutdown_grace: Option<DurationText>,
        pub rate_limit_per_second: Option<u32>,
        pub rate_limit_burst: Option<u32>,
        pub refresh_per_minute: Option<u32>,
        pub admin_token: Option<Secret>,
        pub auth_failures_per_minute: Option<u32>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Cache {
        pub max_entries: Option<u64>,
        pub refresh_skew: Option<DurationText>,
        pub default_ttl: Option<DurationText>,
        pub redis: Option<Redis>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Redis {
        pub url: Secret,
        pub ca_file: Option<String>,
        pub key_prefix: Option<String>,
        pub encryption_key: Secret,
        pub timeout: Option<DurationText>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Upstream {
        pub token_url: String,
        pub client_id: String,
        pub client_secret: Secret,
        pub auth_method: Option<String>,
        #[serde(default, deserialize_with = "string_or_list")]
        pub scopes: Vec<String>,
        pub audience: Option<String>,
        #[serde(default)]
        pub params: BTreeMap<String, String>,
        pub timeout: Option<DurationText>,
        pub max_tokens_per_hour: Option<u32>,
    }

    /// A secret: a literal, `{ env = "NAME" }` or `{ file = "/path" }`.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Secret {
        Literal(SecretString),
        Env { env: String },
        File { file: PathBuf },
    }

    impl fmt::Debug for Secret {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Secret::Literal(_) => f.write_str("Literal([redacted])"),
                Secret::Env { env } => write!(f, "Env({env})"),
                Secret::File { file } => write!(f, "File({})", file.display()),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    pub enum Authenticator {
        ApiKey {
            name: Option<String>,
            #[serde(default)]
            keys: Vec<ApiKey>,
        },
        Jwt(Jwt),
        Forward(Forward),
        PublicToken {
            name: Option<String>,
        },
    }

    impl Authenticator {
        /// The `type` as written, and the name the operator gave, if any.
        pub fn type_and_name(&self) -> (&'static str, Option<&str>) {
            match self {
                Self::ApiKey { name, .. } => ("api_key", name.as_deref()),
                Self::Jwt(jwt) => ("jwt", jwt.name.as_deref()),
                Self::Forward(forward) => ("forward", forward.name.as_deref()),
                Self::PublicToken { name } => ("public_token", name.as_deref()),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Jwt {
        pub name: Option<String>,
        pub preset: Option<String>,
        pub issuer: Option<String>,
        #[serde(default, deserialize_with = "string_or_list")]
        pub audiences: Vec<String>,
        pub jwks_url: Option<String>,
        pub hosted_domain: Option<String>,
        #[serde(default, deserialize_with = "string_or_list")]
        pub algorithms: Vec<String>,
        pub leeway: Option<DurationText>,
        pub groups_claim: Option<String>,
        pub max_token_bytes: Option<usize>,
        pub jwks_cache_ttl: Option<DurationText>,
        pub timeout: Option<DurationText>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Forward {
        pub name: Option<String>,
        pub url: String,
        #[serde(default, deserialize_with = "string_or_list")]
        pub forward_cookies: Vec<String>,
        #[serde(default)]
        pub forward_authorization: bool,
        pub subject_field: Option<String>,
        pub email_field: Option<String>,
        pub groups_field: Option<String>,
        pub cache_ttl: Option<DurationText>,
        pub timeout: Option<DurationText>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ApiKey {
        pub id: String,
        pub hash: String,
        pub subject: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Grant {
        #[serde(default, deserialize_with = "optional_list")]
        pub authenticators: Option<Vec<String>>,
        #[serde(default)]
        pub subjects: Vec<String>,
        #[serde(default)]
        pub emails: Vec<String>,
        #[serde(default)]
        pub email_domains: Vec<String>,
        #[serde(default)]
        pub groups: Vec<String>,
        #[serde(default)]
        pub upstreams: BTreeMap<String, Vec<String>>,
    }

    /// A duration as written: a time span string or a number of seconds.
    #[derive(Debug, Deserialize, Clone)]
    #[serde(untagged)]
    pub enum DurationText {
        Seconds(u64),
        Text(String),
    }

    /// As [`string_or_list`], keeping "absent" apart from "empty".
    fn optional_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
        string_or_list(d).map(Some)
    }

    fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        // A comma-separated string is how a list arrives from an environment variable.
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            OneOrMany::Many(v) => v,
        })
    }
}

/// Collects problems while validating.
#[derive(Default)]
struct Check {
    problems: Vec<Problem>,
}

impl Check {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: Option<&file::DurationText>, default: Duration) -> Duration {
        let Some(value) = value else { return default };
        let span = match value {
            file::DurationText::Seconds(n) => Ok(TimeSpan::from_seconds(*n as i64)),
            file::DurationText::Text(text) => match text.trim().parse::<u64>() {
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
    fn secure_url(&mut self, key: &str, text: &str) -> Option<Url> {
        match Url::parse(text) {
            Ok(url) if url.scheme() == "https" => Some(url),
            Ok(url) if url.scheme() == "http" && is_loopback_url(&url) => Some(url),
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

    fn socket_addr(&mut self, key: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.problem(key, format!("`{text}` is not an address:port such as 127.0.0.1:8080"));
            default.parse().expect("default address parses")
        })
    }

    fn scopes(&mut self, key: &str, values: &[String]) -> ScopeSet {
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

    fn secret(&mut self, key: &str, secret: &file::Secret, env: &Env) -> SecretString {
        let resolved = match secret {
            file::Secret::Literal(value) => Ok(value.expose_secret().to_string()),
            file::Secret::Env { env: name } => env
                .get(name)
                .cloned()
                .ok_or_else(|| format!("environment variable {name} is not set")),
            file::Secret::File { file } => std::fs::read_to_string(file)
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

const RESERVED_PARAMS: &[&str] = &["grant_type", "client_id", "client_secret", "scope", "audience"];

impl file::Settings {
    fn validate(self, env: &Env) -> Result<Settings, Problems> {
        let mut check = Check::default();

        let server = {
            let s = &self.server;
            let mut trusted_proxies = Vec::new();
            for (i, text) in s.trusted_proxies.iter().enumerate() {
                let parsed = text
                    .parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
                match parsed {
                    Ok(net) => trusted_proxies.push(net),
                    Err(_) => check.problem(
                        format!("server.trusted_proxies[{i}]"),
                        format!("`{text}` is not a CIDR or IP address"),
                    ),
                }
            }
            let mut cors_allowed_origins = Vec::new();
            for (i, origin) in s.cors_allowed_origins.iter().enumerate() {
                match validate_origin(origin) {
                    Ok(origin) => cors_allowed_origins.push(origin),
                    Err(message) => check.problem(format!("server.cors_allowed_origins[{i}]"), message),
                }
            }
            let csrf_header = validate_csrf_header(&mut check, s.csrf_header.as_deref());
            let max_body_bytes = s.max_body_bytes.unwrap_or(16 * 1024);
            if max_body_bytes == 0 {
                check.problem("server.max_body_bytes", "must be greater than 0");
            }
            ServerSettings {
                listen: check.socket_addr("server.listen", s.listen.as_deref(), "127.0.0.1:8080"),
                admin_listen: check.socket_addr("server.admin_listen", s.admin_listen.as_deref(), "127.0.0.1:9090"),
                workers: s.workers.unwrap_or(0),
                trusted_proxies,
                cors_allowed_origins,
                csrf_header,
                max_body_bytes,
                max_header_bytes: s.max_header_bytes.unwrap_or(0),
                shutdown_grace: check.duration(
                    "server.shutdown_grace",
                    s.shutdown_grace.as_ref(),
                    Duration::from_secs(30),
                ),
                rate_limit_per_second: s.rate_limit_per_second.unwrap_or(100),
                rate_limit_burst: s.rate_limit_burst.unwrap_or(1000),
                refresh_per_minute: s.refresh_per_minute.unwrap_or(6),
                auth_failures_per_minute: s.auth_failures_per_minute.unwrap_or(30),
                admin_token: s.admin_token.as_ref().map(|secret| {
                    let token = check.secret("server.admin_token", secret, env);
                    if !token.expose_secret().is_empty() && token.expose_secret().len() < 16 {
                        check.problem(
                            "server.admin_token",
                            "must be at least 16 characters (openssl rand -base64 32)",
                        );
                    }
                    token
                }),
            }
        };

        let cache = CacheSettings {
            max_entries: self.cache.max_entries.unwrap_or(10_000),
            refresh_skew: check.duration(
                "cache.refresh_skew",
                self.cache.refresh_skew.as_ref(),
                Duration::from_secs(60),
            ),
            default_ttl: check.duration(
                "cache.default_ttl",
                self.cache.default_ttl.as_ref(),
                Duration::from_secs(300),
            ),
            redis: self
                .cache
                .redis
                .as_ref()
                .and_then(|raw| validate_redis(&mut check, raw, env)),
        };
        if cache.max_entries == 0 {
            check.problem("cache.max_entries", "must be greater than 0");
        }

        if self.upstreams.is_empty() {
            check.problem("upstreams", "at least one upstream is required");
        }
        let mut upstreams = BTreeMap::new();
        for (name, raw) in &self.upstreams {
            let key = |field: &str| format!("upstreams.{name}.{field}");
            if !is_valid_upstream_name(name) {
                check.problem(
                    format!("upstreams.{name}"),
                    "upstream names use only letters, digits, '-' and '_'",
                );
            }
            let token_url = check.secure_url(&key("token_url"), &raw.token_url);
            if let Some(url) = &token_url {
                if !url.username().is_empty() || url.password().is_some() {
                    check.problem(
                        key("token_url"),
                        "must not carry credentials; use client_id and client_secret",
                    );
                }
            }
            if raw.client_id.trim().is_empty() {
                check.problem(key("client_id"), "must not be empty");
            }
            let client_secret = check.secret(&key("client_secret"), &raw.client_secret, env);
            let auth_method = match raw.auth_method.as_deref().unwrap_or("client_secret_post") {
                "client_secret_post" => ClientAuthMethod::ClientSecretPost,
                "client_secret_basic" => ClientAuthMethod::ClientSecretBasic,
                other => {
                    check.problem(
                        key("auth_method"),
                        format!("`{other}` is not client_secret_post or client_secret_basic"),
                    );
                    ClientAuthMethod::ClientSecretPost
                }
            };
            let scopes = check.scopes(&key("scopes"), &raw.scopes);
            for param in raw.params.keys() {
                if RESERVED_PARAMS.contains(&param.as_str()) {
                    check.problem(
                        key(&format!("params.{param}")),
                        "is set by the broker itself and cannot be overridden",
                    );
                }
            }
            let timeout = check.duration(&key("timeout"), raw.timeout.as_ref(), Duration::from_secs(5));
            if raw.max_tokens_per_hour == Some(0) {
                check.problem(
                    key("max_tokens_per_hour"),
                    "must be at least 1 (leave it out for no quota)",
                );
            }
            if let Some(token_url) = token_url {
                upstreams.insert(
                    name.clone(),
                    UpstreamSettings {
                        name: name.clone(),
                        token_url,
                        client_id: raw.client_id.clone(),
                        client_secret,
                        auth_method,
                        scopes,
                        audience: raw.audience.clone(),
                        params: raw.params.clone(),
                        timeout,
                        max_tokens_per_hour: raw.max_tokens_per_hour,
                    },
                );
            }
        }

        let authenticators = validate_authenticators(&mut check, &self.authenticators, self.public_tokens.is_some());
        let grants = validate_grants(&mut check, &self.grants, &self.upstreams, &authenticators);

        let public_tokens = self
            .public_tokens
            .as_ref()
            .and_then(|raw| validate_public_tokens(&mut check, raw, env, &authenticators));

        if check.problems.is_empty() {
            Ok(Settings {
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

/// The authenticators with their names: by default the `type` (`google` for the Google preset);
/// two of one type must be told apart by `name`.
fn validate_authenticators(
    check: &mut Check,
    raws: &[file::Authenticator],
    has_public_tokens: bool,
) -> Vec<NamedAuthenticator> {
    if raws.is_empty() {
        check.problem(
            "authenticators",
            "at least one authenticator is required: nobody could be served",
        );
    }
    let mut authenticators = Vec::new();
    let mut key_ids = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, raw) in raws.iter().enumerate() {
        let settings = match raw {
            file::Authenticator::ApiKey { keys, .. } => AuthenticatorSettings::ApiKey {
                keys: validate_api_keys(check, i, keys, &mut key_ids),
            },
            file::Authenticator::Jwt(raw) => AuthenticatorSettings::Jwt(validate_jwt(check, i, raw)),
            file::Authenticator::Forward(raw) => match validate_forward(check, i, raw) {
                Some(forward) => AuthenticatorSettings::Forward(forward),
                None => continue,
            },
            file::Authenticator::PublicToken { .. } => {
                if !has_public_tokens {
                    check.problem(
                        format!("authenticators[{i}].type"),
                        "a public_token authenticator needs a [public_tokens] section",
                    );
                }
                AuthenticatorSettings::PublicToken
            }
        };
        let (kind, given) = raw.type_and_name();
        let name = match (given, &settings) {
            (Some(name), _) => name,
            (None, AuthenticatorSettings::Jwt(jwt)) if jwt.google => "google",
            (None, _) => kind,
        };
        if !is_valid_upstream_name(name) {
            check.problem(
                format!("authenticators[{i}].name"),
                "names use only letters, digits, '-' and '_'",
            );
        } else if !names.insert(name.to_string()) {
            let hint = if given.is_some() {
                "is taken by another authenticator"
            } else {
                "is the default name of another authenticator of this type too: give each its own `name`"
            };
            check.problem(format!("authenticators[{i}].name"), format!("`{name}` {hint}"));
        }
        authenticators.push(NamedAuthenticator {
            name: name.into(),
            settings,
        });
    }
    authenticators
}

fn validate_api_keys(
    check: &mut Check,
    i: usize,
    keys: &[file::ApiKey],
    key_ids: &mut BTreeSet<String>,
) -> Vec<ApiKeySettings> {
    if keys.is_empty() {
        check.problem(
            format!("authenticators[{i}].keys"),
            "an api_key authenticator needs at least one key",
        );
    }
    let mut parsed = Vec::new();
    for (j, k) in keys.iter().enumerate() {
        let key = |field: &str| format!("authenticators[{i}].keys[{j}].{field}");
        if !key_ids.insert(k.id.clone()) {
            check.problem(key("id"), format!("duplicate key id `{}`", k.id));
        }
        if k.subject.trim().is_empty() {
            check.problem(key("subject"), "must not be empty");
        }
        match parse_sha256(&k.hash) {
            Some(hash) => parsed.push(ApiKeySettings {
                id: k.id.clone(),
                hash,
                subject: k.subject.clone(),
            }),
            None => check.problem(
                key("hash"),
                "must be `sha256:` and 64 hex digits (see `token-broker hash-key`)",
            ),
        }
    }
    parsed
}

/// Names of the authenticators whose identities grants can match (public tokens carry their own rights).
fn grantable_names(authenticators: &[NamedAuthenticator]) -> Vec<&str> {
    authenticators
        .iter()
        .filter(|a| !matches!(a.settings, AuthenticatorSettings::PublicToken))
        .map(|a| &*a.name)
        .collect()
}

/// Grants: known upstreams and scopes, and whose identities they match. A subject or group means
/// nothing without its authenticator (`svc-backend` from an API key is not `svc-backend` from a
/// session endpoint), so a grant naming them must say which authenticators it means, unless only
/// one could be meant.
fn validate_grants(
    check: &mut Check,
    raws: &[file::Grant],
    upstreams: &BTreeMap<String, file::Upstream>,
    authenticators: &[NamedAuthenticator],
) -> Vec<GrantSettings> {
    let grantable = grantable_names(authenticators);
    let mut grants = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let key = |field: &str| format!("grants[{i}].{field}");
        if raw.subjects.is_empty() && raw.emails.is_empty() && raw.email_domains.is_empty() && raw.groups.is_empty() {
            check.problem(
                key("subjects"),
                "a grant must name subjects, emails, email_domains or groups",
            );
        }
        match &raw.authenticators {
            Some(names) => {
                if names.is_empty() {
                    check.problem(key("authenticators"), "must name at least one authenticator");
                }
                for (j, name) in names.iter().enumerate() {
                    if authenticators
                        .iter()
                        .any(|a| &*a.name == name && matches!(a.settings, AuthenticatorSettings::PublicToken))
                    {
                        check.problem(
                            format!("grants[{i}].authenticators[{j}]"),
                            format!("`{name}` is a public_token authenticator: its tokens carry their own scopes and never match grants"),
                        );
                    } else if !grantable.contains(&name.as_str()) {
                        check.problem(
                            format!("grants[{i}].authenticators[{j}]"),
                            format!("no authenticator named `{name}` (names: {})", grantable.join(", ")),
                        );
                    }
                }
            }
            None if (!raw.subjects.is_empty() || !raw.groups.is_empty()) && grantable.len() > 1 => check.problem(
                key("authenticators"),
                format!(
                    "this grant names subjects or groups, and {} authenticators could have vouched for them ({}): \
                     list the ones it means, e.g. authenticators = [\"{}\"]. Since subjects are namespaced \
                     by authenticator, a grant without this key is valid only while one authenticator is configured",
                    grantable.len(),
                    grantable.join(", "),
                    grantable[0],
                ),
            ),
            None => {}
        }
        let mut granted = BTreeMap::new();
        for (upstream, scopes) in &raw.upstreams {
            let scope_key = key(&format!("upstreams.{upstream}"));
            let set = check.scopes(&scope_key, scopes);
            match upstreams.get(upstream) {
                None => check.problem(scope_key, format!("no upstream named `{upstream}`")),
                Some(up) => {
                    let allowed = check_upstream_scopes(&up.scopes);
                    for scope in &set {
                        if !allowed.contains(scope) {
                            check.problem(
                                scope_key.clone(),
                                format!("scope `{scope}` is not in upstreams.{upstream}.scopes"),
                            );
                        }
                    }
                }
            }
            granted.insert(upstream.clone(), set);
        }
        grants.push(GrantSettings {
            authenticators: raw.authenticators.clone(),
            subjects: raw.subjects.clone(),
            emails: raw.emails.iter().map(|e| e.to_ascii_lowercase()).collect(),
            email_domains: raw.email_domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            groups: raw.groups.clone(),
            upstreams: granted,
        });
    }
    grants
}

/// Algorithms an id_token may be signed with: asymmetric only, so a public key can never be
/// used as an HMAC secret.
const ASYMMETRIC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn validate_jwt(check: &mut Check, i: usize, raw: &file::Jwt) -> JwtSettings {
    let key = |field: &str| format!("authenticators[{i}].{field}");
    let google = match raw.preset.as_deref() {
        None => raw.issuer.as_deref().is_some_and(|iss| GOOGLE_ISSUERS.contains(&iss)),
        Some("google") => true,
        Some(other) => {
            check.problem(
                key("preset"),
                format!("unknown preset `{other}`: the only preset is \"google\""),
            );
            false
        }
    };
    let issuer = match (&raw.issuer, google) {
        (Some(issuer), _) => issuer.clone(),
        (None, true) => GOOGLE_ISSUER.to_string(),
        (None, false) => {
            check.problem(key("issuer"), "an issuer is required (or preset = \"google\")");
            String::new()
        }
    };
    let accepted_issuers = if google {
        GOOGLE_ISSUERS.iter().map(|s| s.to_string()).collect()
    } else {
        if !issuer.is_empty() {
            check.secure_url(&key("issuer"), &issuer);
        }
        vec![issuer.clone()]
    };
    if raw.audiences.is_empty() {
        check.problem(key("audiences"), "at least one audience (your client id) is required");
    }
    let jwks_url = raw
        .jwks_url
        .as_deref()
        .and_then(|u| check.secure_url(&key("jwks_url"), u));
    if google && raw.jwks_url.is_none() && raw.issuer.as_deref().is_some_and(|i| !GOOGLE_ISSUERS.contains(&i)) {
        check.problem(key("issuer"), "the google preset takes Google's issuer");
    }
    let names: Vec<String> = if raw.algorithms.is_empty() {
        vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
    } else {
        raw.algorithms.clone()
    };
    let mut algorithms = Vec::new();
    for (j, name) in names.iter().enumerate() {
        match name.parse::<jsonwebtoken::Algorithm>() {
            Ok(alg) if ASYMMETRIC_ALGORITHMS.contains(&name.as_str()) => algorithms.push(alg),
            _ => check.problem(
                format!("authenticators[{i}].algorithms[{j}]"),
                format!(
                    "`{name}` is not allowed: use one of {}",
                    ASYMMETRIC_ALGORITHMS.join(", ")
                ),
            ),
        }
    }
    let max_token_bytes = raw.max_token_bytes.unwrap_or(8 * 1024);
    if max_token_bytes < 512 {
        check.problem(key("max_token_bytes"), "must be at least 512");
    }
    JwtSettings {
        issuer,
        accepted_issuers,
        audiences: raw.audiences.clone(),
        jwks_url,
        hosted_domain: raw.hosted_domain.as_ref().map(|d| d.to_ascii_lowercase()),
        google,
        algorithms,
        leeway: check.duration(&key("leeway"), raw.leeway.as_ref(), Duration::from_secs(60)),
        groups_claim: raw.groups_claim.clone().unwrap_or_else(|| "groups".into()),
        max_token_bytes,
        jwks_cache_ttl: check.duration(
            &key("jwks_cache_ttl"),
            raw.jwks_cache_ttl.as_ref(),
            Duration::from_secs(600),
        ),
        timeout: check.duration(&key("timeout"), raw.timeout.as_ref(), Duration::from_secs(5)),
    }
}

fn validate_forward(check: &mut Check, i: usize, raw: &file::Forward) -> Option<ForwardSettings> {
    let key = |field: &str| format!("authenticators[{i}].{field}");
    if raw.forward_cookies.is_empty() && !raw.forward_authorization {
        check.problem(
            key("forward_cookies"),
            "name the session cookies to forward, or set forward_authorization",
        );
    }
    for (j, name) in raw.forward_cookies.iter().enumerate() {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        {
            check.problem(
                format!("authenticators[{i}].forward_cookies[{j}]"),
                format!("`{name}` is not a cookie name"),
            );
        }
    }
    // The session endpoint sees the caller's session cookie: never in clear past this host.
    let url = check.secure_url(&key("url"), &raw.url);
    let settings = ForwardSettings {
        url: url?,
        forward_cookies: raw.forward_cookies.clone(),
        forward_authorization: raw.forward_authorization,
        subject_field: raw.subject_field.clone().unwrap_or_else(|| "sub".into()),
        email_field: raw.email_field.clone(),
        groups_field: raw.groups_field.clone(),
        cache_ttl: check.duration(&key("cache_ttl"), raw.cache_ttl.as_ref(), Duration::from_secs(30)),
        timeout: check.duration(&key("timeout"), raw.timeout.as_ref(), Duration::from_secs(2)),
    };
    Some(settings)
}

fn validate_redis(check: &mut Check, raw: &file::Redis, env: &Env) -> Option<RedisSettings> {
    // The URL may carry a password, so it is read like a secret: literal, env or file.
    let url = check.secret("cache.redis.url", &raw.url, env);
    let url = url.expose_secret().to_string();
    let parsed = Url::parse(&url).ok();
    let tls = parsed.as_ref().is_some_and(|u| u.scheme() == "rediss");
    let url_ok = match &parsed {
        Some(u) if u.fragment() == Some("insecure") => {
            check.problem(
                "cache.redis.url",
                "#insecure would accept any certificate: give cache.redis.ca_file, the CA that signed Redis's certificate",
            );
            false
        }
        Some(u) if u.scheme() == "redis" || u.scheme() == "rediss" => true,
        _ if url.is_empty() => false,
        _ => {
            check.problem(
                "cache.redis.url",
                "must be a redis:// or rediss:// (TLS) URL such as redis://127.0.0.1:6379/0",
            );
            false
        }
    };
    let ca_pem = raw.ca_file.as_deref().and_then(|path| {
        if !tls {
            check.problem("cache.redis.ca_file", "applies to a rediss:// (TLS) url only");
            return None;
        }
        match std::fs::read(path) {
            Ok(pem) if pem::parse_many(&pem).is_ok_and(|blocks| blocks.iter().any(|b| b.tag() == "CERTIFICATE")) => {
                Some(pem)
            }
            Ok(_) => {
                check.problem("cache.redis.ca_file", format!("{path}: no PEM certificate in it"));
                None
            }
            Err(e) => {
                check.problem("cache.redis.ca_file", format!("cannot read {path}: {e}"));
                None
            }
        }
    });
    let key = check.secret("cache.redis.encryption_key", &raw.encryption_key, env);
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.expose_secret().trim());
    let encryption_key: Option<[u8; 32]> = match decoded {
        Ok(bytes) => match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(array) => Some(array),
            Err(_) => {
                check.problem(
                    "cache.redis.encryption_key",
                    "must be 32 bytes, base64-encoded (openssl rand -base64 32)",
                );
                None
            }
        },
        Err(_) if key.expose_secret().is_empty() => None,
        Err(_) => {
            check.problem("cache.redis.encryption_key", "is not base64 (openssl rand -base64 32)");
            None
        }
    };
    let timeout = check.duration("cache.redis.timeout", raw.timeout.as_ref(), Duration::from_millis(200));
    let key_prefix = raw.key_prefix.clone().unwrap_or_else(|| "token-broker:".to_string());
    (url_ok).then_some(())?;
    Some(RedisSettings {
        url,
        ca_pem,
        key_prefix,
        encryption_key: encryption_key?,
        timeout,
    })
}

fn validate_public_tokens(
    check: &mut Check,
    raw: &file::PublicTokens,
    env: &Env,
    authenticators: &[NamedAuthenticator],
) -> Option<PublicTokenSettings> {
    let pem = check.secret("public_tokens.signing_key", &raw.signing_key, env);
    let signing_key = match SigningKey::from_pem(pem.expose_secret()) {
        Ok(key) => Some(key),
        Err(e) if !pem.expose_secret().is_empty() => {
            check.problem("public_tokens.signing_key", e.to_string());
            None
        }
        Err(_) => None,
    };
    let mut previous_keys = Vec::new();
    for (i, secret) in raw.previous_keys.iter().enumerate() {
        let key = format!("public_tokens.previous_keys[{i}]");
        let pem = check.secret(&key, secret, env);
        match verifying_key_from_pem(pem.expose_secret()) {
            Ok(verifying) => previous_keys.push(verifying),
            Err(e) if !pem.expose_secret().is_empty() => check.problem(key, e.to_string()),
            Err(_) => {}
        }
    }
    let default_expiration = check.duration(
        "public_tokens.default_expiration",
        raw.default_expiration.as_ref(),
        Duration::from_secs(15 * 60),
    );
    let max_expiration = check.duration(
        "public_tokens.max_expiration",
        raw.max_expiration.as_ref(),
        Duration::from_secs(24 * 3600),
    );
    if default_expiration > max_expiration {
        check.problem("public_tokens.default_expiration", "must not exceed max_expiration");
    }
    let issuer = raw.issuer.clone().unwrap_or_else(|| "token-broker".to_string());
    if issuer.trim().is_empty() {
        check.problem("public_tokens.issuer", "must not be empty");
    }
    let mint_authenticators = match &raw.mint_authenticators {
        Some(names) => {
            let grantable = grantable_names(authenticators);
            for (i, name) in names.iter().enumerate() {
                if !grantable.contains(&name.as_str()) {
                    check.problem(
                        format!("public_tokens.mint_authenticators[{i}]"),
                        format!(
                            "no authenticator named `{name}` that can mint (names: {})",
                            grantable.join(", ")
                        ),
                    );
                }
            }
            names.clone()
        }
        None => authenticators
            .iter()
            .filter(|a| matches!(a.settings, AuthenticatorSettings::ApiKey { .. }))
            .map(|a| a.name.to_string())
            .collect(),
    };
    Some(PublicTokenSettings {
        mint_authenticators,
        signing_key: signing_key?,
        previous_keys,
        default_expiration,
        max_expiration,
        issuer,
        mint_subjects: raw.mint_subjects.clone(),
    })
}

/// The upstream's configured scopes, ignoring malformed ones (reported under the upstream's key).
fn check_upstream_scopes(scopes: &[String]) -> BTreeSet<Scope> {
    scopes.iter().filter_map(|s| Scope::parse(s).ok()).collect()
}

fn is_valid_upstream_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let hex_digits = text.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).ok()?;
    Some(out)
}

/// Headers a page can send cross-site without a CORS preflight (Fetch standard, CORS-safelisted
/// request headers), or that a page cannot set at all (forbidden request headers): neither proves
/// that the request came from a page the broker's CORS policy allowed.
const UNFIT_CSRF_HEADERS: &[&str] = &[
    "accept",
    "accept-language",
    "content-language",
    "content-type",
    "range",
    "accept-charset",
    "accept-encoding",
    "access-control-request-headers",
    "access-control-request-method",
    "connection",
    "content-length",
    "cookie",
    "cookie2",
    "date",
    "dnt",
    "expect",
    "host",
    "keep-alive",
    "origin",
    "referer",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
];

/// The header a cookie-authenticated request must carry. It works because a page can send a
/// custom header to another origin only after a preflight the CORS policy answers.
fn validate_csrf_header(check: &mut Check, value: Option<&str>) -> HeaderName {
    let text = value.unwrap_or("x-requested-with");
    let Ok(name) = HeaderName::try_from(text) else {
        check.problem("server.csrf_header", format!("`{text}` is not a valid header name"));
        return HeaderName::from_static("x-requested-with");
    };
    let lower = name.as_str();
    if UNFIT_CSRF_HEADERS.contains(&lower) || lower.starts_with("proxy-") || lower.starts_with("sec-") {
        check.problem(
            "server.csrf_header",
            format!(
                "`{text}` proves nothing: browsers send it cross-site without a CORS preflight, or pages cannot \
                 set it; use a custom header such as x-requested-with"
            ),
        );
    }
    name
}

/// An origin as browsers send it: scheme, host and port only (RFC 6454); `*` and `null` refused.
fn validate_origin(origin: &str) -> Result<String, String> {
    if origin == "*" || origin.eq_ignore_ascii_case("null") {
        return Err(format!("`{origin}` is never allowed: list exact origins"));
    }
    let url = Url::parse(origin).map_err(|_| format!("`{origin}` is not an origin such as https://app.example.com"))?;
    let serialized = url.origin().ascii_serialization();
    if !matches!(url.scheme(), "http" | "https") || serialized != origin.trim_end_matches('/') {
        return Err(format!(
            "`{origin}` is not an origin such as https://app.example.com (no path)"
        ));
    }
    Ok(serialized)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const MINIMAL: &str = r#"
        [upstreams.triumph]
        token_url = "https://auth.example.com/token"
        client_id = "id"
        client_secret = { env = "TRIUMPH_SECRET" }
        scopes = ["reports:read", "reports:write"]

        [[authenticators]]
        type = "api_key"
        keys = [{ id = "ci", hash = "sha256:0000000000000000000000000000000000000000000000000000000000000000", subject = "svc-ci" }]

        [[grants]]
        authenticators = ["api_key"]
        subjects = ["*"]
        upstreams = { triumph = ["reports:read"] }
    "#;

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let settings = Settings::from_toml(MINIMAL, &env(&[("TRIUMPH_SECRET", "s3cret")])).unwrap();
        assert_eq!(settings.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.server.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(settings.cache.refresh_skew, Duration::from_secs(60));
        assert_eq!(settings.cache.default_ttl, Duration::from_secs(300));
        assert_eq!(settings.cache.max_entries, 10_000);
        assert_eq!(settings.server.csrf_header.as_str(), "x-requested-with");
        let up = &settings.upstreams["triumph"];
        assert_eq!(up.auth_method, ClientAuthMethod::ClientSecretPost);
        assert_eq!(up.timeout, Duration::from_secs(5));
        assert_eq!(up.client_secret.expose_secret(), "s3cret");
    }

    #[test]
    fn environment_overrides_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let settings = Settings::load(
            Some(&path),
            &env(&[
                ("TRIUMPH_SECRET", "s"),
                ("TOKEN_BROKER__SERVER__LISTEN", "0.0.0.0:8081"),
                ("TOKEN_BROKER__CACHE__REFRESH_SKEW", "30"),
                ("TOKEN_BROKER__CACHE__DEFAULT_TTL", "2 min"),
                (
                    "TOKEN_BROKER__SERVER__CORS_ALLOWED_ORIGINS",
                    "https://a.example.com, https://b.example.com",
                ),
                ("TOKEN_BROKER__UPSTREAMS__TRIUMPH__CLIENT_SECRET", "12345"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.server.listen.to_string(), "0.0.0.0:8081");
        assert_eq!(settings.cache.refresh_skew, Duration::from_secs(30));
        assert_eq!(settings.cache.default_ttl, Duration::from_secs(120));
        assert_eq!(
            settings.server.cors_allowed_origins,
            ["https://a.example.com", "https://b.example.com"]
        );
        assert_eq!(settings.upstreams["triumph"].client_secret.expose_secret(), "12345");
    }

    #[test]
    fn secrets_come_from_files_without_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-file\n").unwrap();
        let text = MINIMAL.replace(
            r#"{ env = "TRIUMPH_SECRET" }"#,
            &format!("{{ file = {:?} }}", secret.display().to_string()),
        );
        let settings = Settings::from_toml(&text, &Env::new()).unwrap();
        assert_eq!(settings.upstreams["triumph"].client_secret.expose_secret(), "from-file");
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_its_key() {
        let text = r#"
            [cache]
            refresh_skew = "3 months"

            [upstreams.triumph]
            token_url = "http://auth.example.com/token"
            client_id = "id"
            client_secret = { env = "NOT_SET" }
            scopes = ["reports:read"]

            [[authenticators]]
            type = "api_key"
            keys = [{ id = "ci", hash = "md5:abc", subject = "svc" }]

            [[grants]]
            subjects = ["*"]
            upstreams = { nope = ["x"], triumph = ["reports:write"] }
        "#;
        let problems = Settings::from_toml(text, &Env::new()).unwrap_err();
        let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cache.refresh_skew",
                "upstreams.triumph.token_url",
                "upstreams.triumph.client_secret",
                "authenticators[0].keys[0].hash",
                "grants[0].upstreams.nope",
                "grants[0].upstreams.triumph",
            ]
        );
    }

    #[test]
    fn loopback_token_urls_may_use_http() {
        for url in [
            "http://127.0.0.1:9000/token",
            "http://localhost/token",
            "http://[::1]:8000/t",
        ] {
            let text = MINIMAL.replace("https://auth.example.com/token", url);
            assert!(
                Settings::from_toml(&text, &env(&[("TRIUMPH_SECRET", "s")])).is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn a_literal_secret_never_shows_in_debug_output_or_errors() {
        let text = MINIMAL
            .replace(r#"{ env = "TRIUMPH_SECRET" }"#, r#""canary-literal-secret""#)
            .replace("https://auth", "http://auth");
        let problems = Settings::from_toml(&text, &Env::new()).unwrap_err();
        assert!(!problems.to_string().contains("canary-literal-secret"));
        let ok = Settings::from_toml(
            &MINIMAL.replace(r#"{ env = "TRIUMPH_SECRET" }"#, r#""canary-literal-secret""#),
            &Env::new(),
        )
        .unwrap();
        assert!(!format!("{ok:?}").contains("canary-literal-secret"));
    }

    #[test]
    fn jwt_authenticators_refuse_symmetric_algorithms_and_need_an_audience() {
        let text = format!(
            "{MINIMAL}\n[[authenticators]]\ntype = \"jwt\"\nissuer = \"http://idp.example.com\"\nalgorithms = [\"RS256\", \"HS256\", \"none\"]\n"
        );
        let problems = Settings::from_toml(&text, &env(&[("TRIUMPH_SECRET", "s")])).unwrap_err();
        let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "authenticators[1].issuer",
                "authenticators[1].audiences",
                "authenticators[1].algorithms[1]",
                "authenticators[1].algorithms[2]"
            ]
        );
    }

    #[test]
    fn the_google_preset_accepts_both_issuer_spellings() {
        let text = format!("{MINIMAL}\n[[authenticators]]\ntype = \"jwt\"\npreset = \"google\"\naudiences = [\"x.apps.googleusercontent.com\"]\n");
        let settings = Settings::from_toml(&text, &env(&[("TRIUMPH_SECRET", "s")])).unwrap();
        let AuthenticatorSettings::Jwt(jwt) = &settings.authenticators[1].settings else {
            panic!("a jwt authenticator")
        };
        assert_eq!(jwt.issuer, GOOGLE_ISSUER);
        assert_eq!(jwt.accepted_issuers, GOOGLE_ISSUERS);
        assert_eq!(jwt.leeway, Duration::from_secs(60));
        assert_eq!(jwt.algorithms.len(), 3);
    }

    #[test]
    fn a_redis_tier_needs_a_redis_url_and_a_32_byte_key() {
        let with =
            |url: &str, key: &str| format!("{MINIMAL}\n[cache.redis]\nurl = \"{url}\"\nencryption_key = \"{key}\"\n");
        let env = env(&[("TRIUMPH_SECRET", "s")]);
        let good = Settings::from_toml(
            &with(
                "redis://127.0.0.1:6379/0",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            ),
            &env,
        )
        .unwrap();
        let redis = good.cache.redis.unwrap();
        assert_eq!(redis.timeout, Duration::from_millis(200));
        assert_eq!(redis.key_prefix, "token-broker:");
        assert!(!format!("{redis:?}").contains("MDEy"));
        let problems = Settings::from_toml(&with("http://127.0.0.1:6379", "c2hvcnQ="), &env).unwrap_err();
        let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["cache.redis.url", "cache.redis.encryption_key"]);
        let password = redact_url_password("redis://:hunter2@127.0.0.1:6379/0");
        assert!(!password.contains("hunter2"), "{password}");
    }

    #[test]
    fn a_tls_redis_is_rediss_with_certificate_checks_that_cannot_be_turned_off() {
        const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]))).unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let with = |url: &str, ca_file: Option<&std::path::Path>| {
            let ca_line = ca_file.map_or(String::new(), |p| format!("ca_file = \"{}\"\n", p.display()));
            format!("{MINIMAL}\n[cache.redis]\nurl = \"{url}\"\nencryption_key = \"{KEY}\"\n{ca_line}")
        };
        let env = env(&[("TRIUMPH_SECRET", "s")]);
        let problem_keys = |toml: String| -> Vec<String> {
            let problems = Settings::from_toml(&toml, &env).unwrap_err();
            problems.0.iter().map(|p| format!("{}: {}", p.key, p.message)).collect()
        };

        let system_roots = Settings::from_toml(&with("rediss://redis.internal:6380/0", None), &env).unwrap();
        assert_eq!(system_roots.cache.redis.unwrap().ca_pem, None);
        let own_ca = Settings::from_toml(&with("rediss://redis.internal:6380/0", Some(&ca)), &env).unwrap();
        assert_eq!(own_ca.cache.redis.unwrap().ca_pem, Some(std::fs::read(&ca).unwrap()));

        let insecure = problem_keys(with("rediss://redis.internal:6380/0#insecure", None));
        assert!(insecure[0].starts_with("cache.redis.url: #insecure"), "{insecure:?}");
        let plain = problem_keys(with("redis://redis.internal:6379/0", Some(&ca)));
        assert_eq!(plain, ["cache.redis.ca_file: applies to a rediss:// (TLS) url only"]);
        let not_a_certificate = problem_keys(with("rediss://redis.internal:6380/0", Some(&not_pem)));
        assert!(
            not_a_certificate[0].contains("no PEM certificate"),
            "{not_a_certificate:?}"
        );
        let missing = problem_keys(with("rediss://r:6380/0", Some(&dir.path().join("absent.pem"))));
        assert!(
            missing[0].starts_with("cache.redis.ca_file: cannot read"),
            "{missing:?}"
        );
    }

    #[test]
    fn wildcard_and_null_origins_are_refused() {
        assert!(validate_origin("*").is_err());
        assert!(validate_origin("null").is_err());
        assert!(validate_origin("https://app.example.com/path").is_err());
        assert_eq!(
            validate_origin("https://app.example.com").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            validate_origin("http://localhost:5173").unwrap(),
            "http://localhost:5173"
        );
    }
}
