//! `[[grants]]`: default deny; whose subjects a grant means.

use std::collections::BTreeMap;

use super::check::Check;
use super::raw;
use super::upstreams::check_upstream_scopes;
use crate::identity::config::{AuthenticatorSettings, NamedAuthenticator};
use crate::policy::GrantSettings;

/// Names of the authenticators whose identities grants can match (public tokens carry their own rights).
pub(super) fn grantable_names(authenticators: &[NamedAuthenticator]) -> Vec<&str> {
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
pub(super) fn validate(
    check: &mut Check,
    raws: &[raw::Grant],
    upstreams: &BTreeMap<String, raw::Upstream>,
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
        validate_whose(check, i, raw, authenticators, &grantable);
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

/// `grants[i].authenticators`: known names that can match grants, and present wherever subjects or
/// groups could otherwise come from more than one authenticator.
fn validate_whose(
    check: &mut Check,
    i: usize,
    raw: &raw::Grant,
    authenticators: &[NamedAuthenticator],
    grantable: &[&str],
) {
    let key = |field: &str| format!("grants[{i}].{field}");
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
}
