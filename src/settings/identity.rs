//! `[[authenticators]]`: who callers are, and the names that keep their identities apart.

use std::collections::BTreeSet;
use std::time::Duration;

use super::check::Check;
use super::raw;
use super::upstreams::is_valid_name;
use crate::identity::config::{
    ApiKeySettings, AuthenticatorSettings, ForwardSettings, JwtSettings, NamedAuthenticator, GOOGLE_ISSUER,
    GOOGLE_ISSUERS,
};

/// The authenticators with their names: by default the `type` (`google` for the Google preset);
/// two of one type must be told apart by `name`.
pub(super) fn validate(
    check: &mut Check,
    raws: &[raw::Authenticator],
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
            raw::Authenticator::ApiKey { keys, .. } => AuthenticatorSettings::ApiKey {
                keys: validate_api_keys(check, i, keys, &mut key_ids),
            },
            raw::Authenticator::Jwt(raw) => AuthenticatorSettings::Jwt(validate_jwt(check, i, raw)),
            raw::Authenticator::Forward(raw) => match validate_forward(check, i, raw) {
                Some(forward) => AuthenticatorSettings::Forward(forward),
                None => continue,
            },
            raw::Authenticator::PublicToken { .. } => {
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
        if !is_valid_name(name) {
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
    keys: &[raw::ApiKey],
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

/// Algorithms an id_token may be signed with: asymmetric only, so a public key can never be
/// used as an HMAC secret.
const ASYMMETRIC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn validate_jwt(check: &mut Check, i: usize, raw: &raw::Jwt) -> JwtSettings {
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

fn validate_forward(check: &mut Check, i: usize, raw: &raw::Forward) -> Option<ForwardSettings> {
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
    // A decision outliving a day would ignore logouts for days; far longer ones the cache refuses.
    if settings.cache_ttl > MAX_DECISION_TTL {
        check.problem(
            key("cache_ttl"),
            "must be at most 24h: a decision is asked for again at least daily",
        );
    }
    Some(settings)
}

/// The longest `cache_ttl` of a forward authenticator.
const MAX_DECISION_TTL: Duration = Duration::from_secs(24 * 3600);

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let hex_digits = text.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).ok()?;
    Some(out)
}
