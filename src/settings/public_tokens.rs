//! `[public_tokens]`: keys and limits of the tokens the app's backend mints.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::check::Check;
use super::grants::grantable_names;
use super::{raw, Env};
use crate::identity::config::{AuthenticatorSettings, NamedAuthenticator};
use crate::public_tokens::{verifying_key_from_pem, PublicTokenSettings, SigningKey};

pub(super) fn validate(
    check: &mut Check,
    raw: &raw::PublicTokens,
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
