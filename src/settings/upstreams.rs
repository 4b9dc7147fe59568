//! `[upstreams.*]`: token endpoints and the credentials the broker presents to them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::check::Check;
use super::{raw, Env};
use crate::scope::Scope;
use actix_web::http::Method;

use crate::outbound;
use crate::proxy::config::ProxySettings;
use crate::proxy::path::PathPattern;
use crate::scope::ScopeSet;
use crate::upstream::assertion::{KeyError, PrivateKey};
use crate::upstream::certificate::{CertificateError, ClientCertificate};
use crate::upstream::config::{AssertionAudience, ClientAuthMethod, Credential, Endpoint, PrivateCa, UpstreamSettings};
use secrecy::ExposeSecret;

const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
    "audience",
];

/// `[upstreams.*]`.
pub(super) fn validate(
    check: &mut Check,
    upstreams: &BTreeMap<String, raw::Upstream>,
    env: &Env,
) -> BTreeMap<String, UpstreamSettings> {
    if upstreams.is_empty() {
        check.problem("upstreams", "at least one upstream is required");
    }
    upstreams
        .iter()
        .filter_map(|(name, raw)| Some((name.clone(), validate_one(check, name, raw, env)?)))
        .collect()
}

fn validate_one(check: &mut Check, name: &str, raw: &raw::Upstream, env: &Env) -> Option<UpstreamSettings> {
    let key = |field: &str| format!("upstreams.{name}.{field}");
    if !is_valid_name(name) {
        check.problem(
            format!("upstreams.{name}"),
            "upstream names use only letters, digits, '-' and '_'",
        );
    }
    let endpoint = endpoint(check, name, raw);
    if raw.client_id.trim().is_empty() {
        check.problem(key("client_id"), "must not be empty");
    }
    let auth_method = match raw.auth_method.as_deref().unwrap_or("client_secret_post") {
        "client_secret_post" => ClientAuthMethod::ClientSecretPost,
        "client_secret_basic" => ClientAuthMethod::ClientSecretBasic,
        "client_secret_jwt" => ClientAuthMethod::ClientSecretJwt,
        "private_key_jwt" => ClientAuthMethod::PrivateKeyJwt,
        "tls_client_auth" => ClientAuthMethod::TlsClientAuth,
        "self_signed_tls_client_auth" => ClientAuthMethod::SelfSignedTlsClientAuth,
        other => {
            check.problem(
                key("auth_method"),
                format!(
                    "`{other}` is not client_secret_post, client_secret_basic, client_secret_jwt, private_key_jwt, \
                     tls_client_auth or self_signed_tls_client_auth"
                ),
            );
            ClientAuthMethod::ClientSecretPost
        }
    };
    let private_ca = private_ca(check, name, raw);
    let roots = private_ca.as_ref().map(|ca| ca.roots.as_slice());
    let credentials = credentials(check, name, raw, auth_method, roots, env);
    let scopes = check.scopes(&key("scopes"), &raw.scopes);
    for param in raw.params.keys() {
        if RESERVED_PARAMS.contains(&param.as_str()) {
            check.problem(
                key(&format!("params.{param}")),
                "is set by the broker itself and cannot be overridden",
            );
        }
    }
    for (i, resource) in raw.resource.iter().enumerate() {
        // RFC 8707 §2: an absolute URI without a fragment.
        if url::Url::parse(resource).map_or(true, |u| u.fragment().is_some()) {
            check.problem(
                format!("{}[{i}]", key("resource")),
                "must be an absolute URI without a fragment (RFC 8707)",
            );
        }
    }
    if !raw.resource.is_empty() && raw.params.contains_key("resource") {
        check.problem(key("params.resource"), "give resource indicators in `resource` only");
    }
    let timeout = check.duration(&key("timeout"), raw.timeout.as_ref(), Duration::from_secs(5));
    if raw.max_tokens_per_hour == Some(0) {
        check.problem(
            key("max_tokens_per_hour"),
            "must be at least 1 (leave it out for no quota)",
        );
    }
    Some(UpstreamSettings {
        name: name.to_string(),
        assertion_audience: assertion_audience(check, name, raw, auth_method, endpoint.as_ref()),
        endpoint: endpoint?,
        client_id: raw.client_id.clone(),
        auth_method,
        credentials,
        audience: raw.audience.clone(),
        resource: raw.resource.clone(),
        params: raw.params.clone(),
        timeout,
        max_tokens_per_hour: raw.max_tokens_per_hour,
        proxy: raw
            .proxy
            .as_ref()
            .and_then(|proxy| validate_proxy(check, name, proxy, &scopes)),
        expose_tokens: raw.expose_tokens.unwrap_or(true),
        private_ca,
        fingerprints: Default::default(),
        scopes,
    })
}

/// `token_url`, or `issuer` for discovery: one of them.
fn endpoint(check: &mut Check, name: &str, raw: &raw::Upstream) -> Option<Endpoint> {
    let key = |field: &str| format!("upstreams.{name}.{field}");
    match (&raw.token_url, &raw.issuer) {
        (Some(text), None) => {
            let url = check.secure_url(&key("token_url"), text)?;
            if !url.username().is_empty() || url.password().is_some() {
                check.problem(
                    key("token_url"),
                    "must not carry credentials; use client_id and client_secret",
                );
            }
            Some(Endpoint::Fixed(url))
        }
        (None, Some(issuer)) => {
            let url = check.secure_url(&key("issuer"), issuer)?;
            if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
                check.problem(
                    key("issuer"),
                    "an issuer has no query, fragment or credentials (RFC 8414 §2)",
                );
            }
            Some(Endpoint::Discovered {
                issuer: issuer.clone(),
                metadata: None,
            })
        }
        (Some(_), Some(_)) => {
            check.problem(key("issuer"), "give token_url or issuer, not both");
            None
        }
        (None, None) => {
            check.problem(
                key("token_url"),
                "is required (or `issuer`, to find the token endpoint in the issuer's metadata)",
            );
            None
        }
    }
}

/// Refuses a key that `auth_method` does not use.
fn unused(check: &mut Check, key: &str, auth_method: ClientAuthMethod, present: bool) {
    if present {
        check.problem(key, format!("is not used with auth_method = \"{auth_method}\""));
    }
}

/// `assertion_audience`: the token endpoint, or the issuer (which needs `issuer`).
fn assertion_audience(
    check: &mut Check,
    name: &str,
    raw: &raw::Upstream,
    auth_method: ClientAuthMethod,
    endpoint: Option<&Endpoint>,
) -> AssertionAudience {
    let key = format!("upstreams.{name}.assertion_audience");
    let signs = matches!(
        auth_method,
        ClientAuthMethod::PrivateKeyJwt | ClientAuthMethod::ClientSecretJwt
    );
    unused(check, &key, auth_method, !signs && raw.assertion_audience.is_some());
    match raw.assertion_audience.as_deref() {
        None | Some("token_endpoint") => AssertionAudience::TokenEndpoint,
        Some("issuer") => {
            if !matches!(endpoint, Some(Endpoint::Discovered { .. })) {
                check.problem(key, "\"issuer\" needs `issuer` (discovery) instead of token_url");
            }
            AssertionAudience::Issuer
        }
        Some(other) => {
            check.problem(key, format!("`{other}` is not \"token_endpoint\" or \"issuer\""));
            AssertionAudience::TokenEndpoint
        }
    }
}

/// What kind of credential an authentication method presents.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Secret,
    Key,
    Certificate,
}

/// The credentials `auth_method` uses, in the configured order: client secrets, private keys
/// (each parsed and checked against `signing_alg` now) or client certificates with their keys
/// (each built into a TLS client now), so that a wrong one stops start-up rather than a request.
fn credentials(
    check: &mut Check,
    name: &str,
    raw: &raw::Upstream,
    auth_method: ClientAuthMethod,
    roots: Option<&[reqwest::Certificate]>,
    env: &Env,
) -> Vec<Credential> {
    let key = |field: &str| format!("upstreams.{name}.{field}");
    let kind = match auth_method {
        ClientAuthMethod::PrivateKeyJwt => Kind::Key,
        ClientAuthMethod::TlsClientAuth | ClientAuthMethod::SelfSignedTlsClientAuth => Kind::Certificate,
        _ => Kind::Secret,
    };
    let unused = |check: &mut Check, field: &str, present: bool| unused(check, &key(field), auth_method, present);
    unused(check, "signing_alg", kind != Kind::Key && raw.signing_alg.is_some());
    unused(check, "key_id", kind != Kind::Key && raw.key_id.is_some());
    unused(
        check,
        "client_secret",
        kind != Kind::Secret && raw.client_secret.is_some(),
    );
    unused(check, "private_key", kind == Kind::Secret && raw.private_key.is_some());
    unused(
        check,
        "client_certificate",
        kind != Kind::Certificate && raw.client_certificate.is_some(),
    );
    let field = if kind == Kind::Secret {
        "client_secret"
    } else {
        "private_key"
    };
    let configured = if kind == Kind::Secret {
        &raw.client_secret
    } else {
        &raw.private_key
    };
    let Some(secrets) = configured.as_ref().filter(|s| !s.as_slice().is_empty()) else {
        check.problem(key(field), format!("is required with auth_method = \"{auth_method}\""));
        return Vec::new();
    };
    let count = secrets.as_slice().len();
    if kind == Kind::Key && raw.key_id.is_some() && count > 1 {
        check.problem(
            key("key_id"),
            "names one key: with several, leave it out and each key's `kid` is its RFC 7638 thumbprint",
        );
    }
    let certificates = match (kind, &raw.client_certificate) {
        (Kind::Certificate, Some(certificates)) if certificates.as_slice().len() == count => Some(certificates),
        (Kind::Certificate, Some(_)) => {
            check.problem(
                key("client_certificate"),
                "needs one certificate per private key, in the same order",
            );
            return Vec::new();
        }
        (Kind::Certificate, None) => {
            check.problem(
                key("client_certificate"),
                format!("is required with auth_method = \"{auth_method}\""),
            );
            return Vec::new();
        }
        _ => None,
    };
    let mut credentials = Vec::new();
    for (i, secret) in secrets.as_slice().iter().enumerate() {
        let item = secrets.item_key(&key(field), i);
        let value = check.secret(&item, secret, env);
        if value.expose_secret().is_empty() {
            continue;
        }
        match kind {
            Kind::Secret => credentials.push(Credential::Secret(value)),
            Kind::Key => match PrivateKey::from_pem(&value, raw.signing_alg.as_deref(), raw.key_id.as_deref()) {
                Ok(private_key) => credentials.push(Credential::Key(private_key)),
                Err(error @ (KeyError::UnknownAlg(_) | KeyError::AlgDoesNotFit { .. })) => {
                    check.problem(key("signing_alg"), format!("{error} ({item})"));
                }
                Err(error) => check.problem(item, error.to_string()),
            },
            Kind::Certificate => {
                let Some(certificates) = certificates else { continue };
                let certificate_key = certificates.item_key(&key("client_certificate"), i);
                let certificate = check.secret(&certificate_key, &certificates.as_slice()[i], env);
                if certificate.expose_secret().is_empty() {
                    continue;
                }
                match ClientCertificate::from_pem(&certificate, &value, roots) {
                    Ok(certificate) => credentials.push(Credential::Certificate(certificate)),
                    Err(error @ CertificateError::NotCertificates) => check.problem(certificate_key, error.to_string()),
                    Err(error) => check.problem(item, error.to_string()),
                }
            }
        }
    }
    credentials
}

/// `ca_file`: the CAs the token endpoint's (and issuer's) certificates must chain to.
fn private_ca(check: &mut Check, name: &str, raw: &raw::Upstream) -> Option<PrivateCa> {
    let path = raw.ca_file.as_ref()?;
    let key = format!("upstreams.{name}.ca_file");
    let pem = match std::fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(e) => {
            check.problem(key, format!("cannot read {}: {}", path.display(), e.kind()));
            return None;
        }
    };
    let roots = match reqwest::Certificate::from_pem_bundle(pem.as_bytes()) {
        Ok(roots) if !roots.is_empty() => roots,
        _ => {
            check.problem(key, "not a PEM bundle of CA certificates");
            return None;
        }
    };
    match outbound::tls_client(Some(&roots), None) {
        Ok(client) => Some(PrivateCa { pem, roots, client }),
        Err(_) => {
            check.problem(key, "the certificates cannot be used as trust anchors");
            None
        }
    }
}

/// `[upstreams.<name>.proxy]`: where the API is and what may be forwarded to it.
fn validate_proxy(
    check: &mut Check,
    name: &str,
    raw: &raw::Proxy,
    upstream_scopes: &ScopeSet,
) -> Option<ProxySettings> {
    let key = |field: &str| format!("upstreams.{name}.proxy.{field}");
    let url = check.secure_url(&key("url"), &raw.url);
    if let Some(url) = &url {
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            check.problem(key("url"), "a base URL only: no query, fragment or credentials");
        }
    }
    let names = raw.methods.clone().unwrap_or_else(|| vec!["GET".into()]);
    let mut methods = Vec::new();
    for (i, text) in names.iter().enumerate() {
        match Method::from_bytes(text.to_ascii_uppercase().as_bytes()) {
            Ok(method) if method != Method::CONNECT && method != Method::TRACE => methods.push(method),
            _ => check.problem(
                format!("{}[{i}]", key("methods")),
                format!("`{text}` is not a method the proxy forwards"),
            ),
        }
    }
    if raw.paths.is_empty() {
        check.problem(
            key("paths"),
            "list the paths the proxy may forward, e.g. [\"/reports/**\"]",
        );
    }
    let mut paths = Vec::new();
    for (i, text) in raw.paths.iter().enumerate() {
        match PathPattern::parse(text) {
            Ok(pattern) => paths.push(pattern),
            Err(message) => check.problem(format!("{}[{i}]", key("paths")), message),
        }
    }
    let scopes = raw.scopes.as_ref().map(|list| {
        let set = check.scopes(&key("scopes"), list);
        for scope in set.difference(upstream_scopes) {
            check.problem(
                key("scopes"),
                format!("scope `{scope}` is not in upstreams.{name}.scopes"),
            );
        }
        set
    });
    let timeout = check.duration(&key("timeout"), raw.timeout.as_ref(), Duration::from_secs(30));
    let max_body_bytes = raw.max_body_bytes.unwrap_or(10 * 1024 * 1024);
    let url = url?;
    Some(ProxySettings {
        host: ProxySettings::host_of(&url),
        url,
        methods,
        paths,
        scopes,
        timeout,
        max_body_bytes,
    })
}

/// The upstream's configured scopes, ignoring malformed ones (reported under the upstream's key).
pub(super) fn check_upstream_scopes(scopes: &[String]) -> BTreeSet<Scope> {
    scopes.iter().filter_map(|s| Scope::parse(s).ok()).collect()
}

pub(super) fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
