//! Authorization server metadata: an upstream configured with `issuer` instead of `token_url`
//! finds its token endpoint in RFC 8414 metadata (`/.well-known/oauth-authorization-server`),
//! else in OpenID Connect Discovery (`/.well-known/openid-configuration`). The document's `issuer`
//! must equal the configured one exactly (RFC 8414 §3.3), and every endpoint in it must be
//! `https://` — plain `http://` only on loopback and only for a loopback issuer, so that a remote
//! issuer's document cannot send the credentials in clear text to a port on the broker's host.
//! The document decides where the credentials go: an endpoint on another host than the issuer's
//! is reported, and a refresh that moves it to another host is not followed.

use serde::Deserialize;
use url::Url;

use crate::outbound::{self, FetchError};

/// Metadata documents are small; anything larger is refused before it fills memory.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// What the broker uses from the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerMetadata {
    pub issuer: String,
    pub token_endpoint: Url,
    /// RFC 8705 §5: `mtls_endpoint_aliases.token_endpoint`, used with certificate authentication.
    pub mtls_token_endpoint: Option<Url>,
    /// `token_endpoint_auth_methods_supported`; RFC 8414 §2: absent means `client_secret_basic`.
    pub auth_methods: Vec<String>,
    /// Where the document was found, for the operator.
    pub document: Url,
}

impl ServerMetadata {
    /// The token endpoint for a client that authenticates with a certificate (`mtls`) or not:
    /// RFC 8705 §5's alias when there is one.
    pub fn token_endpoint_for(&self, mtls: bool) -> &Url {
        match (&self.mtls_token_endpoint, mtls) {
            (Some(alias), true) => alias,
            _ => &self.token_endpoint,
        }
    }

    /// The host the token endpoint (for `mtls` or not) is on, when it is not the issuer's.
    pub fn foreign_host(&self, mtls: bool) -> Option<&str> {
        let issuer_host = Url::parse(&self.issuer).ok()?.host_str()?.to_ascii_lowercase();
        let host = self.token_endpoint_for(mtls).host_str()?;
        (!host.eq_ignore_ascii_case(&issuer_host)).then_some(host)
    }

    /// Whether the server says it accepts `method` at its token endpoint.
    pub fn supports(&self, method: &str) -> bool {
        self.auth_methods.iter().any(|m| m == method)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("no metadata at {rfc8414} or {oidc}: {last}")]
    NotFound {
        rfc8414: String,
        oidc: String,
        last: String,
    },
    #[error("the metadata at {document} names the issuer `{found}`, not `{expected}`")]
    IssuerMismatch {
        document: String,
        expected: String,
        found: String,
    },
    #[error("the metadata at {document} is not usable: {reason}")]
    Invalid { document: String, reason: String },
}

/// The two places metadata may be, in the order they are tried.
pub fn well_known_urls(issuer: &Url) -> (Url, Url) {
    // RFC 8414 §3.1: the well-known segment goes between the host and the issuer's path.
    let path = issuer.path().trim_end_matches('/');
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    // OpenID Connect Discovery §4: appended to the issuer.
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    (rfc8414, oidc)
}

#[derive(Deserialize)]
struct Document {
    issuer: Option<String>,
    token_endpoint: Option<String>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    mtls_endpoint_aliases: Option<Aliases>,
}

#[derive(Deserialize)]
struct Aliases {
    token_endpoint: Option<String>,
}

/// The metadata of `issuer` (as configured, compared as written).
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<ServerMetadata, DiscoveryError> {
    let issuer_url = Url::parse(issuer).map_err(|_| DiscoveryError::Invalid {
        document: issuer.to_string(),
        reason: "the issuer is not a URL".into(),
    })?;
    let (rfc8414, oidc) = well_known_urls(&issuer_url);
    let mut last = String::new();
    for document in [&rfc8414, &oidc] {
        match fetch(http, document).await {
            Ok(body) => return parse(document, &body, issuer),
            Err(error) => last = error,
        }
    }
    Err(DiscoveryError::NotFound {
        rfc8414: rfc8414.to_string(),
        oidc: oidc.to_string(),
        last,
    })
}

/// The body of a 200 answer at `url`, or why there was none.
async fn fetch(http: &reqwest::Client, url: &Url) -> Result<Vec<u8>, String> {
    let response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| describe(&FetchError::Transport(e)))?;
    if !response.status().is_success() {
        return Err(describe(&FetchError::Status(response.status().as_u16())));
    }
    outbound::read_capped(response, MAX_BODY_BYTES)
        .await
        .map_err(|e| describe(&e))
}

fn describe(error: &FetchError) -> String {
    match error {
        FetchError::Transport(e) if e.is_timeout() => "no answer in time".into(),
        FetchError::Transport(e) if e.is_connect() => "connection failed".into(),
        other => other.to_string(),
    }
}

fn parse(document: &Url, body: &[u8], issuer: &str) -> Result<ServerMetadata, DiscoveryError> {
    let loopback_issuer = Url::parse(issuer).is_ok_and(|url| outbound::is_loopback_url(&url));
    let invalid = |reason: &str| DiscoveryError::Invalid {
        document: document.to_string(),
        reason: reason.into(),
    };
    let parsed: Document = serde_json::from_slice(body).map_err(|_| invalid("not a JSON metadata document"))?;
    let found = parsed.issuer.unwrap_or_default();
    if found != issuer {
        return Err(DiscoveryError::IssuerMismatch {
            document: document.to_string(),
            expected: issuer.to_string(),
            // The document is not trusted: only a short, printable part of it goes into messages.
            found: found.chars().filter(|c| !c.is_control()).take(200).collect(),
        });
    }
    let endpoint = |text: Option<String>, what: &str| -> Result<Option<Url>, DiscoveryError> {
        let Some(text) = text else { return Ok(None) };
        let url = Url::parse(&text).map_err(|_| invalid(&format!("{what} is not a URL")))?;
        let secure = url.scheme() == "https" || (loopback_issuer && outbound::is_secure_url(&url));
        if !secure || !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(&format!(
                "{what} is not https:// without credentials (http:// only for a loopback issuer on loopback)"
            )));
        }
        Ok(Some(url))
    };
    let token_endpoint =
        endpoint(parsed.token_endpoint, "token_endpoint")?.ok_or_else(|| invalid("it has no token_endpoint"))?;
    let mtls_token_endpoint = endpoint(
        parsed.mtls_endpoint_aliases.and_then(|a| a.token_endpoint),
        "mtls_endpoint_aliases.token_endpoint",
    )?;
    Ok(ServerMetadata {
        issuer: found,
        token_endpoint,
        mtls_token_endpoint,
        auth_methods: parsed
            .token_endpoint_auth_methods_supported
            .unwrap_or_else(|| vec!["client_secret_basic".into()]),
        document: document.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_8414_puts_the_well_known_segment_before_the_issuers_path() {
        let urls = |issuer: &str| {
            let (a, b) = well_known_urls(&Url::parse(issuer).unwrap());
            (a.to_string(), b.to_string())
        };
        assert_eq!(
            urls("https://login.example.com"),
            (
                "https://login.example.com/.well-known/oauth-authorization-server".into(),
                "https://login.example.com/.well-known/openid-configuration".into()
            )
        );
        assert_eq!(
            urls("https://login.example.com/realms/acme/"),
            (
                "https://login.example.com/.well-known/oauth-authorization-server/realms/acme".into(),
                "https://login.example.com/realms/acme/.well-known/openid-configuration".into()
            )
        );
    }

    fn document(json: serde_json::Value) -> Result<ServerMetadata, DiscoveryError> {
        let url = Url::parse("https://login.example.com/.well-known/openid-configuration").unwrap();
        parse(&url, json.to_string().as_bytes(), "https://login.example.com")
    }

    #[test]
    fn the_issuer_must_match_exactly_and_endpoints_must_be_secure() {
        let ok = document(serde_json::json!({
            "issuer": "https://login.example.com",
            "token_endpoint": "https://login.example.com/token",
            "mtls_endpoint_aliases": { "token_endpoint": "https://mtls.login.example.com/token" },
        }))
        .unwrap();
        assert_eq!(ok.token_endpoint.as_str(), "https://login.example.com/token");
        assert_eq!(
            ok.mtls_token_endpoint.unwrap().as_str(),
            "https://mtls.login.example.com/token"
        );
        assert_eq!(ok.auth_methods, ["client_secret_basic"], "RFC 8414's default");

        for issuer in [
            "https://login.example.com/",
            "https://LOGIN.example.com",
            "https://evil.example",
            "",
        ] {
            let refused = document(serde_json::json!({
                "issuer": issuer, "token_endpoint": "https://login.example.com/token",
            }));
            assert!(
                matches!(refused, Err(DiscoveryError::IssuerMismatch { .. })),
                "{issuer}: {refused:?}"
            );
        }
        for token_endpoint in [
            "http://login.example.com/token",
            "https://u:p@login.example.com/t",
            "/token",
        ] {
            let refused = document(serde_json::json!({
                "issuer": "https://login.example.com", "token_endpoint": token_endpoint,
            }));
            assert!(
                matches!(refused, Err(DiscoveryError::Invalid { .. })),
                "{token_endpoint}: {refused:?}"
            );
        }
        assert!(document(serde_json::json!({ "issuer": "https://login.example.com" })).is_err());

        // A loopback issuer (a test or a sidecar) may name plain-http loopback endpoints.
        let url = Url::parse("http://127.0.0.1:8000/.well-known/openid-configuration").unwrap();
        let local =
            serde_json::json!({ "issuer": "http://127.0.0.1:8000", "token_endpoint": "http://127.0.0.1:8000/token" });
        assert!(parse(&url, local.to_string().as_bytes(), "http://127.0.0.1:8000").is_ok());

        let elsewhere = document(serde_json::json!({
            "issuer": "https://login.example.com", "token_endpoint": "https://tokens.example.net/token",
        }))
        .unwrap();
        assert_eq!(elsewhere.foreign_host(false), Some("tokens.example.net"));
        assert_eq!(
            document(serde_json::json!({ "issuer": "https://login.example.com", "token_endpoint": "https://LOGIN.example.com/t" }))
                .unwrap()
                .foreign_host(false),
            None
        );
    }
}
