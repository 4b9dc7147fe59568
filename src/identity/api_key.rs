//! `X-API-Key: <key>`, checked against SHA-256 hashes in the configuration.

use actix_web::http::header::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthError, Identity, Method, Outcome};
use crate::identity::config::ApiKeySettings;

pub const HEADER: &str = "x-api-key";
/// [`HEADER`] as a header name: looking a header up by a `&str` parses (and, for a name HTTP
/// does not define, allocates) a new name on every request.
pub const HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);

/// The `sha256:<hex>` form of a key, as the configuration stores it.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

pub struct ApiKeyAuthenticator {
    keys: Vec<ApiKeySettings>,
}

impl ApiKeyAuthenticator {
    pub fn new(keys: &[ApiKeySettings]) -> Self {
        Self { keys: keys.to_vec() }
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Outcome {
        let Some(value) = headers.get(&HEADER_NAME) else {
            return Outcome::NotMine;
        };
        let presented: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        // Every key is compared, in constant time, so timing tells nothing about which one is close.
        let mut found: Option<&ApiKeySettings> = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(&presented)) {
                found = Some(key);
            }
        }
        match found {
            Some(key) => Outcome::Authenticated(Identity::new(key.subject.clone(), Method::ApiKey)),
            None => Outcome::Rejected(AuthError::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(key: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(HeaderName::from_static(HEADER), HeaderValue::from_str(key).unwrap());
        map
    }

    #[test]
    fn hash_key_matches_the_sha256_of_the_key() {
        // echo -n abc | sha256sum
        assert_eq!(
            hash_key("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_right_key_authenticates_its_subject_and_others_are_refused() {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&hash_key("good-key")[7..], &mut hash).unwrap();
        let auth = ApiKeyAuthenticator::new(&[ApiKeySettings {
            id: "ci".into(),
            hash,
            subject: "svc-ci".into(),
        }]);
        assert!(matches!(auth.authenticate(&headers("good-key")), Outcome::Authenticated(i) if i.subject == "svc-ci"));
        assert!(matches!(
            auth.authenticate(&headers("bad-key")),
            Outcome::Rejected(AuthError::Invalid)
        ));
        assert!(matches!(auth.authenticate(&HeaderMap::new()), Outcome::NotMine));
    }
}
