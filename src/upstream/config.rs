//! `[upstreams.*]` as the token request uses it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::proxy::config::ProxySettings;
use crate::scope::ScopeSet;
use crate::upstream::assertion::PrivateKey;
use crate::upstream::certificate::ClientCertificate;
use crate::upstream::discovery::ServerMetadata;

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
    /// RFC 8705 §2.1: a client certificate from a CA the server trusts, on the TLS connection.
    TlsClientAuth,
    /// RFC 8705 §2.2: a self-signed client certificate the server has registered.
    SelfSignedTlsClientAuth,
}

impl ClientAuthMethod {
    /// Whether the client authenticates with a certificate on the TLS connection (RFC 8705).
    pub fn uses_certificate(self) -> bool {
        matches!(self, Self::TlsClientAuth | Self::SelfSignedTlsClientAuth)
    }
}

impl fmt::Display for ClientAuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClientSecretPost => "client_secret_post",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretJwt => "client_secret_jwt",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::TlsClientAuth => "tls_client_auth",
            Self::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
        })
    }
}

/// SHA-256 over what shapes an upstream's tokens ([`UpstreamSettings::token_fingerprint`]) or
/// over that and one credential ([`UpstreamSettings::credential_fingerprints`]). Its `Debug`
/// shows a prefix only.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The first 8 hex digits: enough for an operator to see that a rotation changed something.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..4]))
    }
}

/// One credential the broker can present to the token endpoint. An upstream has one or more,
/// tried in order (rotation).
#[derive(Debug, Clone)]
pub enum Credential {
    /// `client_secret_post`, `client_secret_basic`, `client_secret_jwt`.
    Secret(SecretString),
    /// `private_key_jwt`.
    Key(PrivateKey),
    /// `tls_client_auth`, `self_signed_tls_client_auth`.
    Certificate(ClientCertificate),
}

impl Credential {
    /// What the fingerprint covers: the kind and the material.
    fn digest_into(&self, field: &mut dyn FnMut(&[u8])) {
        match self {
            Self::Secret(secret) => {
                field(b"client secret");
                field(secret.expose_secret().as_bytes());
            }
            Self::Key(key) => {
                field(b"private key");
                field(key.pem().expose_secret().as_bytes());
                field(format!("{:?}", key.alg()).as_bytes());
                field(key.kid().as_bytes());
            }
            Self::Certificate(certificate) => {
                field(b"client certificate");
                field(certificate.material().expose_secret().as_bytes());
            }
        }
    }
}

/// Where the token endpoint is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `token_url`.
    Fixed(Url),
    /// `issuer`: the token endpoint is in the issuer's metadata, fetched before the broker starts
    /// (`metadata`) and refreshed while it runs.
    Discovered {
        /// As configured: the metadata's `issuer` must be exactly this.
        issuer: String,
        metadata: Option<Arc<ServerMetadata>>,
    },
}

/// The `aud` of a client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAudience {
    TokenEndpoint,
    /// Only with `issuer`.
    Issuer,
}

/// PBKDF2 rounds of a credential fingerprint: a few milliseconds per credential at start-up.
pub const FINGERPRINT_ROUNDS: std::num::NonZeroU32 = match std::num::NonZeroU32::new(20_000) {
    Some(rounds) => rounds,
    None => panic!("a non-zero constant"),
};

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub name: String,
    pub endpoint: Endpoint,
    pub assertion_audience: AssertionAudience,
    pub client_id: String,
    pub auth_method: ClientAuthMethod,
    /// At least one, of the kind `auth_method` uses; tried in order.
    pub credentials: Vec<Credential>,
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
    /// `ca_file`: the CAs (PEM) the token endpoint's and the issuer's certificates must chain to,
    /// instead of the built-in ones; with the client that trusts only them.
    pub private_ca: Option<PrivateCa>,
    /// [`Self::credential_fingerprints`], computed on first use.
    pub fingerprints: std::sync::OnceLock<Vec<Fingerprint>>,
}

/// The CAs of `ca_file` and the HTTP client that trusts only them.
#[derive(Debug, Clone)]
pub struct PrivateCa {
    pub pem: String,
    pub roots: Vec<reqwest::Certificate>,
    pub client: reqwest::Client,
}

impl UpstreamSettings {
    /// A digest of what shapes this upstream's tokens apart from the credential presented: the
    /// token endpoint, client id, authentication method, audience, resources and extra
    /// parameters. It is part of every cache key, in memory and in Redis. Fields are
    /// length-prefixed, so no two settings share an encoding.
    pub fn token_fingerprint(&self) -> Fingerprint {
        digest(|field| {
            field(b"token-broker token settings v2");
            // The issuer identifies the server however its metadata moves the endpoint.
            match &self.endpoint {
                Endpoint::Fixed(url) => field(url.as_str().as_bytes()),
                Endpoint::Discovered { issuer, .. } => {
                    field(b"issuer");
                    field(issuer.as_bytes());
                }
            }
            field(self.client_id.as_bytes());
            field(format!("{:?}", self.auth_method).as_bytes());
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
        })
    }

    /// One digest per credential, over [`Self::token_fingerprint`] and the credential: each cached
    /// token records the one it was fetched with, and is served only while that credential is
    /// still configured, so a token fetched under other credentials or settings is never served.
    ///
    /// Its prefix is shown to operators (`check`, logs, the admin API) and everything else it
    /// covers is in the configuration, so it is stretched (PBKDF2, [`FINGERPRINT_ROUNDS`]) to make
    /// checking guesses at a secret against a shown prefix slow. Computed once per settings.
    pub fn credential_fingerprints(&self) -> Vec<Fingerprint> {
        self.fingerprints
            .get_or_init(|| {
                let settings = self.token_fingerprint();
                self.credentials
                    .iter()
                    .map(|credential| {
                        let material = digest(|field| {
                            field(b"token-broker credential v2");
                            field(&settings.0);
                            credential.digest_into(field);
                        });
                        let mut stretched = [0u8; 32];
                        ring::pbkdf2::derive(
                            ring::pbkdf2::PBKDF2_HMAC_SHA256,
                            FINGERPRINT_ROUNDS,
                            &settings.0,
                            &material.0,
                            &mut stretched,
                        );
                        Fingerprint(stretched)
                    })
                    .collect()
            })
            .clone()
    }

    /// The client for requests to the token endpoint without a client certificate, and to the
    /// issuer: the one trusting `ca_file` when set, else `shared`.
    pub fn http<'a>(&'a self, shared: &'a reqwest::Client) -> &'a reqwest::Client {
        self.private_ca.as_ref().map_or(shared, |ca| &ca.client)
    }

    /// Whether tokens cached under `other` were asked for in the same way (the credential apart).
    pub fn same_token_settings(&self, other: &Self) -> bool {
        self.token_fingerprint() == other.token_fingerprint()
    }

    /// Whether nothing at all differs, so the upstream's state (circuit breaker, remembered
    /// refusals, hourly quota) carries over a reload.
    pub fn same_as(&self, other: &Self) -> bool {
        self.same_token_settings(other)
            && self.credential_fingerprints() == other.credential_fingerprints()
            && self.assertion_audience == other.assertion_audience
            && self.name == other.name
            && self.scopes == other.scopes
            && self.timeout == other.timeout
            && self.max_tokens_per_hour == other.max_tokens_per_hour
            && self.proxy == other.proxy
            && self.expose_tokens == other.expose_tokens
            && self.private_ca.as_ref().map(|ca| &ca.pem) == other.private_ca.as_ref().map(|ca| &ca.pem)
    }
}

/// SHA-256 over the fields `feed` gives, each length-prefixed.
fn digest(feed: impl FnOnce(&mut dyn FnMut(&[u8]))) -> Fingerprint {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    feed(&mut |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    });
    Fingerprint(hasher.finalize().into())
}
