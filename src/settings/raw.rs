//! The form the operator writes: strings and numbers as they came from TOML and the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use secrecy::SecretString;

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
    #[serde(default)]
    pub telemetry: Telemetry,
}

/// `[telemetry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
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
    pub token_url: Option<String>,
    pub issuer: Option<String>,
    pub client_id: String,
    pub client_secret: Option<Secrets>,
    pub auth_method: Option<String>,
    pub private_key: Option<Secrets>,
    pub client_certificate: Option<Secrets>,
    pub ca_file: Option<PathBuf>,
    pub signing_alg: Option<String>,
    pub key_id: Option<String>,
    pub assertion_audience: Option<String>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub resource: Vec<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub timeout: Option<DurationText>,
    pub max_tokens_per_hour: Option<u32>,
    pub proxy: Option<Proxy>,
    pub expose_tokens: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    pub url: String,
    #[serde(default, deserialize_with = "optional_list")]
    pub methods: Option<Vec<String>>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub paths: Vec<String>,
    #[serde(default, deserialize_with = "optional_list")]
    pub scopes: Option<Vec<String>>,
    pub timeout: Option<DurationText>,
    pub max_body_bytes: Option<u64>,
}

/// A secret: a literal, `{ env = "NAME" }` or `{ file = "/path" }`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Secret {
    Literal(SecretString),
    Env { env: String },
    File { file: PathBuf },
}

/// One secret, or an ordered list of them (credential rotation).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Secrets {
    One(Secret),
    Many(Vec<Secret>),
}

impl Secrets {
    pub fn as_slice(&self) -> &[Secret] {
        match self {
            Self::One(secret) => std::slice::from_ref(secret),
            Self::Many(list) => list,
        }
    }

    /// The configuration key of item `i` under `key`: `key` itself for a single secret.
    pub fn item_key(&self, key: &str, i: usize) -> String {
        match self {
            Self::One(_) => key.to_string(),
            Self::Many(_) => format!("{key}[{i}]"),
        }
    }
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
