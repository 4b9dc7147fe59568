//! Grants → what an identity may get from an upstream. Default deny; scope narrowing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::identity::{Identity, Rights};
use crate::scope::ScopeSet;

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

/// What an identity may fetch from one upstream: the scopes to ask for. Borrowed from the grants
/// when they are one grant's scopes as they stand (the common case: no `scope` asked for), so a
/// long grant is not copied on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement<'a> {
    pub scopes: Cow<'a, ScopeSet>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no grant covers this upstream")]
    NoGrant,
    #[error("the requested scope is beyond what is granted")]
    ScopeNotGranted,
    #[error("this caller may not mint public tokens")]
    NotAMinter,
    #[error("this upstream's tokens are used by the proxy only")]
    TokensNotExposed,
    #[error("the proxy does not forward this path")]
    PathNotAllowed,
    #[error("a cookie-authenticated WebSocket handshake needs an Origin in server.cors_allowed_origins")]
    CrossSiteWebSocket,
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
        self.entitle(identity, upstream, None)
            .ok()
            .map(|e| e.scopes.into_owned())
    }

    /// Decides the scopes to fetch: the requested ones when all are granted, else the whole grant.
    pub fn entitle<'a>(
        &'a self,
        identity: &'a Identity,
        upstream: &str,
        requested: Option<ScopeSet>,
    ) -> Result<Entitlement<'a>, Denied> {
        // Checked against the grants where they are: a grant can list hundreds of scopes, and
        // adding them up into a new set on every request cost more than the rest of the route.
        let sets = self.granted_sets(identity, upstream);
        let scopes = match (requested, &sets[..]) {
            (_, []) => return Err(Denied::NoGrant),
            (None, [only]) => Cow::Borrowed(*only),
            (None, _) => Cow::Owned(sets.into_iter().flatten().cloned().collect()),
            (Some(requested), _) if requested.iter().all(|scope| sets.iter().any(|set| set.contains(scope))) => {
                Cow::Owned(requested)
            }
            (Some(_), _) => return Err(Denied::ScopeNotGranted),
        };
        Ok(Entitlement { scopes })
    }

    /// The scope sets that the grants matching `identity` (or its carried rights) give for
    /// `upstream`; none when no grant names the upstream for this identity.
    fn granted_sets<'a>(&'a self, identity: &'a Identity, upstream: &str) -> Vec<&'a ScopeSet> {
        if let Rights::Carried(rights) = &identity.rights {
            return rights.get(upstream).into_iter().collect();
        }
        self.grants
            .iter()
            .filter(|g| grant_matches(g, identity))
            .filter_map(|g| g.upstreams.get(upstream))
            .collect()
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
    use crate::scope::Scope;

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

    #[test]
    fn default_deny_and_narrowing() {
        let policy = Policy::new(vec![grant(&["alice"], "triumph", &["r", "w"])]);
        assert_eq!(policy.entitle(&user("bob"), "triumph", None), Err(Denied::NoGrant));
        assert_eq!(policy.entitle(&user("alice"), "other", None), Err(Denied::NoGrant));
        assert_eq!(
            policy
                .entitle(&user("alice"), "triumph", None)
                .unwrap()
                .scopes
                .into_owned(),
            scopes(&["r", "w"])
        );
        assert_eq!(
            policy
                .entitle(&user("alice"), "triumph", Some(scopes(&["r"])))
                .unwrap()
                .scopes
                .into_owned(),
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
        // A request may span the grants that match, and nothing else.
        let asked = |who: &str, list: &[&str]| {
            policy
                .entitle(&user(who), "triumph", Some(scopes(list)))
                .map(|e| e.scopes.into_owned())
        };
        assert_eq!(asked("alice", &["r", "w"]), Ok(scopes(&["r", "w"])));
        assert_eq!(asked("bob", &["r", "w"]), Err(Denied::ScopeNotGranted));
        assert_eq!(
            policy
                .entitle(&user("bob"), "other", Some(scopes(&["r"])))
                .map(|e| e.scopes),
            Err(Denied::NoGrant)
        );
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
