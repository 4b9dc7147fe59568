//! `[upstreams.*]` as the token request uses it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::proxy::config::ProxySettings;
use crate::scope::ScopeSet;
use crate::upstream::assertion::PrivateKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// RFC 6749 §2.3.1: credentials in the request body.
    ClientSecretPost,
    /// RFC 6749 §2.3.1: HTTP Basic with the form-urlencoded id and secret.
    ClientSecretBasic,
    /// RFC 7523 §2.2: an assertion signed with the client secret (HS256).
    ClientSecretJwt,
    /// RFC 7523 §2.2: an assertion signed with the client's private key.
    PrivateKeyJwt,
}

impl fmt::Display for ClientAuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClientSecretPost => "client_secret_post",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretJwt => "client_secret_jwt",
            Self::PrivateKeyJwt => "private_key_jwt",
        })
    }
}

/// SHA-256 over an upstream's credentials and token-shaping settings; see
/// [`UpstreamSettings::credential_fingerprint`]. Its `Debug` shows a prefix only.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialFingerprint(pub [u8; 32]);

impl fmt::Debug for CredentialFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialFingerprint({self})")
    }
}

/// The first 8 hex digits: enough for an operator to see that a rotation changed something.
impl fmt::Display for CredentialFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..4]))
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub name: String,
    pub token_url: Url,
    pub client_id: String,
    /// Empty with `private_key_jwt`, which signs with `private_key` instead.
    pub client_secret: SecretString,
    pub auth_method: ClientAuthMethod,
    /// The key `private_key_jwt` signs with.
    pub private_key: Option<PrivateKey>,
    pub scopes: ScopeSet,
    pub audience: Option<String>,
    /// RFC 8707 resource indicators, one `resource` form field each.
    pub resource: Vec<String>,
    pub params: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Fresh fetches allowed per rolling hour, for vendors that bill or cap tokens.
    pub max_tokens_per_hour: Option<u32>,
    /// Proxy mode for this upstream's API, when configured.
    pub proxy: Option<ProxySettings>,
    /// Whether the token route hands this upstream's tokens out (else only the proxy uses them).
    pub expose_tokens: bool,
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
        if let Some(key) = &self.private_key {
            field(b"private key");
            field(key.pem().expose_secret().as_bytes());
            field(format!("{:?}", key.alg()).as_bytes());
            field(key.kid().as_bytes());
        }
        match &self.audience {
            Some(audience) => {
                field(b"audience");
                field(audience.as_bytes());
            }
            None => field(b"no audience"),
        }
        for resource in &self.resource {
            field(b"resource");
            field(resource.as_bytes());
        }
        for (name, value) in &self.params {
            field(b"param");
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
            && self.proxy == other.proxy
            && self.expose_tokens == other.expose_tokens
    }
}
