//! Grants → what an identity may get from an upstream. Default deny; scope narrowing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::identity::Identity;
use crate::settings::GrantSettings;

/// One OAuth2 scope token (RFC 6749 §3.3: `%x21 / %x23-5B / %x5D-7E`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(String);

/// Scopes sorted and de-duplicated, so "a b" and "b a" are one set (and one cache key).
pub type ScopeSet = BTreeSet<Scope>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("empty scope")]
    Empty,
    #[error("an empty scope list never widens to the whole grant: leave `scope` out instead")]
    EmptyList,
    #[error("scope holds a character outside RFC 6749 §3.3 (no spaces, quotes or backslashes)")]
    InvalidCharacter,
    #[error("scope is longer than 256 characters")]
    TooLong,
    #[error("more than 64 scopes requested")]
    TooMany,
}

const MAX_SCOPE_LEN: usize = 256;
const MAX_SCOPES: usize = 64;

impl Scope {
    pub fn parse(text: &str) -> Result<Self, ScopeError> {
        if text.is_empty() {
            return Err(ScopeError::Empty);
        }
        if text.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong);
        }
        let valid = text
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        if !valid {
            return Err(ScopeError::InvalidCharacter);
        }
        Ok(Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a space-separated `scope` parameter. A blank one is refused: to most token endpoints no
/// `scope` means "everything this client may have", so an empty list must never reach them.
pub fn parse_scope_param(text: &str) -> Result<ScopeSet, ScopeError> {
    let mut set = ScopeSet::new();
    for part in text.split(' ').filter(|p| !p.is_empty()) {
        set.insert(Scope::parse(part)?);
        if set.len() > MAX_SCOPES {
            return Err(ScopeError::TooMany);
        }
    }
    if set.is_empty() {
        return Err(ScopeError::EmptyList);
    }
    Ok(set)
}

/// Joins scopes with single spaces, the form of the `scope` parameter (RFC 6749 §3.3).
pub fn join_scopes(scopes: &ScopeSet) -> String {
    ScopeList(scopes).to_string()
}

/// Displays scopes space-separated without building a string (for log fields).
pub struct ScopeList<'a>(pub &'a ScopeSet);

impl fmt::Display for ScopeList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

/// What an identity may fetch from one upstream: the scopes to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    pub upstream: String,
    pub scopes: ScopeSet,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no grant covers this upstream")]
    NoGrant,
    #[error("the requested scope is beyond what is granted")]
    ScopeNotGranted,
    #[error("this caller may not mint public tokens")]
    NotAMinter,
}

/// Where an identity's rights come from.
#[derive(Debug, Clone)]
pub enum Rights {
    /// The grants table of the configuration.
    Grants,
    /// Rights carried by the credential itself, which replace the grants table.
    Carried(BTreeMap<String, ScopeSet>),
}

/// The grants table, compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    grants: Vec<GrantSettings>,
}

impl Policy {
    pub fn new(grants: Vec<GrantSettings>) -> Self {
        Self { grants }
    }

    /// Everything the grants give `identity` for `upstream`, added up over all matching grants;
    /// `None` when no grant names the upstream for this identity.
    pub fn granted(&self, identity: &Identity, upstream: &str) -> Option<ScopeSet> {
        if let Rights::Carried(rights) = &identity.rights {
            return rights.get(upstream).cloned();
        }
        let mut total: Option<ScopeSet> = None;
        for grant in self.grants.iter().filter(|g| grant_matches(g, identity)) {
            if let Some(scopes) = grant.upstreams.get(upstream) {
                total.get_or_insert_with(ScopeSet::new).extend(scopes.iter().cloned());
            }
        }
        total
    }

    /// Decides the scopes to fetch: the requested ones when all are granted, else the whole grant.
    pub fn entitle(
        &self,
        identity: &Identity,
        upstream: &str,
        requested: Option<ScopeSet>,
    ) -> Result<Entitlement, Denied> {
        let granted = self.granted(identity, upstream).ok_or(Denied::NoGrant)?;
        let scopes = match requested {
            None => granted,
            Some(requested) if requested.is_subset(&granted) => requested,
            Some(_) => return Err(Denied::ScopeNotGranted),
        };
        Ok(Entitlement {
            upstream: upstream.to_string(),
            scopes,
        })
    }
}

fn grant_matches(grant: &GrantSettings, identity: &Identity) -> bool {
    // Identities are namespaced by authenticator; validation makes sure a grant without the list
    // cannot be matched from two namespaces by subject or group.
    if let Some(names) = &grant.authenticators {
        if !names.iter().any(|n| **n == *identity.authenticator) {
            return false;
        }
    }
    if grant.subjects.iter().any(|s| s == "*" || *s == identity.subject) {
        return true;
    }
    if let Some(email) = identity.verified_email.as_deref() {
        let email = email.to_ascii_lowercase();
        if grant.emails.contains(&email) {
            return true;
        }
        if let Some(domain) = email_domain(&email) {
            if grant.email_domains.iter().any(|d| d == domain) {
                return true;
            }
        }
    }
    identity.groups.iter().any(|g| grant.groups.contains(g))
}

/// The domain of an address with exactly one `@`; `a@evil.com@corp.com` has none.
fn email_domain(email: &str) -> Option<&str> {
    let (local, domain) = email.split_once('@')?;
    (!local.is_empty() && !domain.is_empty() && !domain.contains('@')).then_some(domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, Method};

    fn scopes(list: &[&str]) -> ScopeSet {
        list.iter().map(|s| Scope::parse(s).unwrap()).collect()
    }

    fn grant(subjects: &[&str], upstream: &str, list: &[&str]) -> GrantSettings {
        GrantSettings {
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            upstreams: [(upstream.to_string(), scopes(list))].into(),
            ..Default::default()
        }
    }

    fn user(subject: &str) -> Identity {
        Identity::new(subject, Method::ApiKey)
    }

    proptest::proptest! {
        #[test]
        fn any_scope_parameter_is_valid_scopes_or_an_error(text in ".{0,300}", many in "([a-z:]{1,3} ){60,70}") {
            for text in [text, many] {
                if let Ok(set) = parse_scope_param(&text) {
                    proptest::prop_assert!(set.len() <= MAX_SCOPES);
                    for scope in &set {
                        proptest::prop_assert_eq!(Scope::parse(scope.as_str()), Ok(scope.clone()));
                    }
                }
            }
        }
    }

    #[test]
    fn scope_parameters_are_sorted_and_deduplicated() {
        assert_eq!(parse_scope_param("b a  b").unwrap(), scopes(&["a", "b"]));
        assert_eq!(parse_scope_param("   "), Err(ScopeError::EmptyList));
        assert_eq!(parse_scope_param(""), Err(ScopeError::EmptyList));
        assert_eq!(parse_scope_param("a\"b"), Err(ScopeError::InvalidCharacter));
        assert_eq!(parse_scope_param("a\tb"), Err(ScopeError::InvalidCharacter));
        assert_eq!(parse_scope_param("é"), Err(ScopeError::InvalidCharacter));
    }

    #[test]
    fn default_deny_and_narrowing() {
        let policy = Policy::new(vec![grant(&["alice"], "triumph", &["r", "w"])]);
        assert_eq!(policy.entitle(&user("bob"), "triumph", None), Err(Denied::NoGrant));
        assert_eq!(policy.entitle(&user("alice"), "other", None), Err(Denied::NoGrant));
        assert_eq!(
            policy.entitle(&user("alice"), "triumph", None).unwrap().scopes,
            scopes(&["r", "w"])
        );
        assert_eq!(
            policy
                .entitle(&user("alice"), "triumph", Some(scopes(&["r"])))
                .unwrap()
                .scopes,
            scopes(&["r"])
        );
        assert_eq!(
            policy.entitle(&user("alice"), "triumph", Some(scopes(&["admin"]))),
            Err(Denied::ScopeNotGranted)
        );
    }

    #[test]
    fn matching_grants_add_up() {
        let policy = Policy::new(vec![
            grant(&["*"], "triumph", &["r"]),
            grant(&["alice"], "triumph", &["w"]),
        ]);
        assert_eq!(policy.granted(&user("alice"), "triumph"), Some(scopes(&["r", "w"])));
        assert_eq!(policy.granted(&user("bob"), "triumph"), Some(scopes(&["r"])));
    }

    #[test]
    fn email_domains_match_exactly_on_verified_addresses() {
        let policy = Policy::new(vec![GrantSettings {
            email_domains: vec!["corp.com".into()],
            upstreams: [("triumph".to_string(), scopes(&["r"]))].into(),
            ..Default::default()
        }]);
        let with_email = |email: &str| {
            let mut identity = user("x");
            identity.verified_email = Some(email.to_string());
            identity
        };
        assert!(policy.granted(&with_email("a@corp.com"), "triumph").is_some());
        assert!(policy.granted(&with_email("A@CORP.COM"), "triumph").is_some());
        assert!(policy.granted(&with_email("a@evil.com@corp.com"), "triumph").is_none());
        assert!(policy.granted(&with_email("a@corp.com.evil.com"), "triumph").is_none());
        assert!(policy.granted(&with_email("a@sub.corp.com"), "triumph").is_none());
        assert!(policy.granted(&user("a@corp.com"), "triumph").is_none());
    }
}
