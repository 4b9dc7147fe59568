//! What a cached token is filed under, in memory and (hashed) in Redis.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::LazyLock;

use moka::Equivalent;

use crate::scope::ScopeSet;
use crate::upstream::config::Fingerprint;
use crate::upstream::Upstream;

/// One cache entry per upstream, token settings and set of scopes. Which credential fetched the
/// token is recorded in the entry, not in the key, so that reordering or adding credentials keeps
/// the tokens fetched under those that stay.
///
/// Besides its parts, a key holds what a lookup compares, laid out so that it reads little
/// memory: a hash of the parts, and the upstream's name and scopes as one text. With thousands of
/// tokens cached, each lookup's probes would otherwise chase the name's, the set's and every
/// scope's allocations, few of which the CPU's caches still hold.
#[derive(Debug, Clone)]
pub struct CacheKey {
    pub upstream: String,
    /// Tokens asked for with other settings (endpoint, client id, audience, …) are other entries.
    pub settings: Fingerprint,
    pub scopes: ScopeSet,
    /// `<upstream>\n<scope> <scope>…`: names have no line break, scopes no space or line break
    /// (see [`Scope::parse`] and the upstream names' check), so the text spells the parts
    /// unambiguously.
    text: Box<str>,
    hash: u64,
}

/// The hash of a key's parts, keyed per process (as the caches' own hashers), so that callers
/// cannot choose scope sets that collide.
static PARTS: LazyLock<foldhash::fast::RandomState> = LazyLock::new(foldhash::fast::RandomState::default);

fn hash_of(upstream: &str, settings: &Fingerprint, scopes: &ScopeSet) -> u64 {
    PARTS.hash_one((upstream, settings, scopes))
}

impl CacheKey {
    pub fn new(upstream: &Upstream, scopes: &ScopeSet) -> Self {
        KeyRef::new(upstream, scopes).to_key()
    }

    pub fn from_parts(upstream: &str, settings: Fingerprint, scopes: &ScopeSet) -> Self {
        Self::with_hash(upstream, settings, scopes, hash_of(upstream, &settings, scopes))
    }

    fn with_hash(upstream: &str, settings: Fingerprint, scopes: &ScopeSet, hash: u64) -> Self {
        Self {
            upstream: upstream.to_string(),
            settings,
            scopes: scopes.clone(),
            text: text_of(upstream, scopes),
            hash,
        }
    }
}

fn text_of(upstream: &str, scopes: &ScopeSet) -> Box<str> {
    let mut text =
        String::with_capacity(upstream.len() + 1 + scopes.iter().map(|s| s.as_str().len() + 1).sum::<usize>());
    text.push_str(upstream);
    text.push('\n');
    for (i, scope) in scopes.iter().enumerate() {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(scope.as_str());
    }
    text.into()
}

/// What a lookup compares of a key, without the parts themselves: a worker thread's
/// recollection of the tokens it served keeps this, without the name's and the scopes' own copies.
pub(super) struct KeyText {
    hash: u64,
    settings: Fingerprint,
    text: Box<str>,
}

impl KeyText {
    pub(super) fn hash_value(&self) -> u64 {
        self.hash
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        // The text determines the name and the scopes.
        self.hash == other.hash && self.settings == other.settings && self.text == other.text
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A [`CacheKey`] made of what the request already holds, to look a token up with: the warm path
/// neither copies the upstream's name and every scope into a new key nor frees them afterwards.
/// It hashes as the key it stands for (the same hash of the same parts) and equals it exactly
/// when the parts are the same.
pub struct KeyRef<'a> {
    upstream: &'a str,
    settings: Fingerprint,
    scopes: &'a ScopeSet,
    hash: u64,
}

impl<'a> KeyRef<'a> {
    pub fn new(upstream: &'a Upstream, scopes: &'a ScopeSet) -> Self {
        let (name, settings) = (upstream.name(), upstream.token_settings);
        Self {
            upstream: name,
            settings,
            scopes,
            hash: hash_of(name, &settings, scopes),
        }
    }

    /// The hash of the key's parts: what the key's `Hash` writes, and [`KeyText::hash_value`].
    pub(super) fn hash_value(&self) -> u64 {
        self.hash
    }

    /// The key itself, to file a token under.
    pub fn to_key(&self) -> CacheKey {
        CacheKey::with_hash(self.upstream, self.settings, self.scopes, self.hash)
    }

    /// What a lookup compares of this key.
    pub(super) fn to_text(&self) -> KeyText {
        KeyText {
            hash: self.hash,
            settings: self.settings,
            text: text_of(self.upstream, self.scopes),
        }
    }

    /// Whether `key` is this key's: the same comparison as [`Equivalent::equivalent`] makes with
    /// the whole key.
    pub(super) fn is(&self, key: &KeyText) -> bool {
        self.compares_as(key.hash, &key.settings, &key.text)
    }

    /// Whether a key of this hash, settings and text is this one.
    fn compares_as(&self, hash: u64, settings: &Fingerprint, text: &str) -> bool {
        self.hash == hash && self.settings == *settings && self.spells(text)
    }

    /// Whether `text` is this key's text, read in place: the upstream, a newline, then the
    /// scopes one after another with a space between (a scope holds no space), and nothing more.
    /// Stripped piece by piece: splitting the text into an iterator cost several times as much.
    fn spells(&self, text: &str) -> bool {
        let Some(mut rest) = text
            .strip_prefix(self.upstream)
            .and_then(|rest| rest.strip_prefix('\n'))
        else {
            return false;
        };
        for (i, scope) in self.scopes.iter().enumerate() {
            let next = if i == 0 { Some(rest) } else { rest.strip_prefix(' ') };
            match next.and_then(|next| next.strip_prefix(scope.as_str())) {
                Some(after) => rest = after,
                None => return false,
            }
        }
        rest.is_empty()
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Equivalent<CacheKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        self.compares_as(key.hash, &key.settings, &key.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::Scope;

    fn scopes(list: &[&str]) -> ScopeSet {
        list.iter().map(|s| Scope::parse(s).unwrap()).collect()
    }

    fn borrowed<'a>(upstream: &'a str, settings: u8, scopes: &'a ScopeSet) -> KeyRef<'a> {
        let settings = Fingerprint([settings; 32]);
        KeyRef {
            upstream,
            settings,
            scopes,
            hash: hash_of(upstream, &settings, scopes),
        }
    }

    /// Each pair differs in one part, some only where one text could be read as another's prefix.
    #[test]
    fn a_key_matches_only_the_key_of_the_same_parts() {
        let sets = [
            scopes(&[]),
            scopes(&["a"]),
            scopes(&["a", "b"]),
            scopes(&["ab"]),
            scopes(&["a", "bc"]),
            scopes(&["a", "b", "c"]),
        ];
        let mut parts: Vec<(&str, u8, &ScopeSet)> = Vec::new();
        for name in ["u", "uu", "u-1"] {
            for settings in [1u8, 2] {
                parts.extend(sets.iter().map(|set| (name, settings, set)));
            }
        }
        for &(name, settings, set) in &parts {
            let looked_up = borrowed(name, settings, set);
            for &(other_name, other_settings, other_set) in &parts {
                let same = (name, settings, set) == (other_name, other_settings, other_set);
                let filed = CacheKey::from_parts(other_name, Fingerprint([other_settings; 32]), other_set);
                assert_eq!(
                    looked_up.equivalent(&filed),
                    same,
                    "{name} {settings} {set:?} / {filed:?}"
                );
                // The text on its own, as if two hashes had collided.
                let text_same = (name, set) == (other_name, other_set);
                assert_eq!(looked_up.spells(&filed.text), text_same, "{name} {set:?} / {filed:?}");
                assert_eq!(looked_up.to_key() == filed, same);
                // What a worker thread recalls a token under compares as the key does.
                let recalled = borrowed(other_name, other_settings, other_set).to_text();
                assert_eq!(looked_up.is(&recalled), same, "{name} {settings} {set:?} / {filed:?}");
            }
            let hasher = std::hash::RandomState::new();
            assert_eq!(hasher.hash_one(&looked_up), hasher.hash_one(looked_up.to_key()));
            assert_eq!(looked_up.hash_value(), looked_up.to_text().hash_value());
        }
    }
}
