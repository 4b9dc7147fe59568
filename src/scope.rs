//! OAuth2 scopes (RFC 6749 §3.3): one scope token, sets of them, and the space-separated `scope`
//! parameter. A leaf: it depends on nothing of ours.

use std::collections::BTreeSet;
use std::fmt;

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
    let mut joined = String::new();
    for scope in scopes {
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(scope.as_str());
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(list: &[&str]) -> ScopeSet {
        list.iter().map(|s| Scope::parse(s).unwrap()).collect()
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
}
