//! The token route's JSON answer for one cached token, written when the token is cached rather
//! than on every request: between two requests for it only `expires_in` and `expires_at` change.
//! It also carries what the audit line reports of the token, in the same allocation.
//!
//! `{"access_token":…,"token_type":"Bearer","expires_in":…,"expires_at":…,"scope":…}`

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

pub struct Answer {
    /// The answer up to and including `"expires_in":`, the rest of it from `,"scope":`, then
    /// what the audit line reports of the token (its key's scopes, its fingerprint): one
    /// allocation, as a warm request reads all four. It holds the token, so it is kept as a
    /// secret (never in a `Debug` output, wiped when dropped).
    /// Text, so that the audit line's parts are read without checking their UTF-8 again.
    text: SecretString,
    /// Where the rest of the answer, the scopes and the fingerprint start in `text`.
    tail: usize,
    requested: usize,
    fingerprint: usize,
}

impl Answer {
    /// `requested` are the token's key's scopes, space-separated; `fingerprint` its short name.
    pub fn new(access_token: &str, scope: &str, requested: &str, fingerprint: &str) -> Self {
        let mut text = Vec::with_capacity(access_token.len() + scope.len() + requested.len() + 96);
        text.extend_from_slice(b"{\"access_token\":");
        push_json_string(&mut text, access_token);
        text.extend_from_slice(b",\"token_type\":\"Bearer\",\"expires_in\":");
        let tail = text.len();
        text.extend_from_slice(b",\"scope\":");
        push_json_string(&mut text, scope);
        text.push(b'}');
        let at_requested = text.len();
        text.extend_from_slice(requested.as_bytes());
        let at_fingerprint = text.len();
        text.extend_from_slice(fingerprint.as_bytes());
        // JSON-escaped `&str`s and `&str`s: always UTF-8, checked once here.
        let text = String::from_utf8(text).unwrap_or_default();
        Self {
            text: text.into(),
            tail,
            requested: at_requested,
            fingerprint: at_fingerprint,
        }
    }

    /// The answer's bytes for a token that expires in `expires_in` seconds, at `expires_at`.
    pub fn body(&self, expires_in: u64, expires_at: u64) -> Vec<u8> {
        let text = self.text.expose_secret().as_bytes();
        let (head, tail) = (&text[..self.tail], &text[self.tail..self.requested]);
        let mut numbers = (itoa::Buffer::new(), itoa::Buffer::new());
        let (expires_in, expires_at) = (numbers.0.format(expires_in), numbers.1.format(expires_at));
        let mut body = Vec::with_capacity(head.len() + tail.len() + 64);
        body.extend_from_slice(head);
        body.extend_from_slice(expires_in.as_bytes());
        body.extend_from_slice(b",\"expires_at\":");
        body.extend_from_slice(expires_at.as_bytes());
        body.extend_from_slice(tail);
        body
    }

    /// The token's key's scopes, space-separated, as the audit line reports them.
    pub fn requested(&self) -> &str {
        self.text_at(self.requested, self.fingerprint)
    }

    /// The token's fingerprint (see `CachedToken::fingerprint`).
    pub fn fingerprint(&self) -> &str {
        self.text_at(self.fingerprint, self.text.expose_secret().len())
    }

    /// Text that was a `&str` when the answer was made (so on a character boundary at both ends).
    fn text_at(&self, from: usize, to: usize) -> &str {
        self.text.expose_secret().get(from..to).unwrap_or_default()
    }
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Answer([REDACTED])")
    }
}

/// `value` as a JSON string, escaped as serde_json escapes it.
fn push_json_string(out: &mut Vec<u8>, value: &str) {
    // Writing a `&str` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Expected<'a> {
        access_token: &'a str,
        token_type: &'static str,
        expires_in: u64,
        expires_at: u64,
        scope: &'a str,
    }

    #[test]
    fn the_answer_is_what_serde_json_writes_for_any_token_and_scope() {
        for (token, scope) in [
            ("tok-123", "reports:read"),
            ("a\"quote\\and\nnewline\u{1}", "é ünïcode \u{7f}"),
            ("", ""),
        ] {
            let expected = serde_json::to_vec(&Expected {
                access_token: token,
                token_type: "Bearer",
                expires_in: 3599,
                expires_at: 1_795_509_025,
                scope,
            })
            .unwrap();
            let answer = Answer::new(token, scope, "reports:read reports:write", "0123456789ab");
            assert_eq!(answer.body(3599, 1_795_509_025), expected);
            assert_eq!(answer.requested(), "reports:read reports:write");
            assert_eq!(answer.fingerprint(), "0123456789ab");
        }
        assert_eq!(
            String::from_utf8(Answer::new("t", "s", "s", "f").body(0, u64::MAX)).unwrap(),
            format!("{{\"access_token\":\"t\",\"token_type\":\"Bearer\",\"expires_in\":0,\"expires_at\":{},\"scope\":\"s\"}}", u64::MAX)
        );
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        assert!(!format!("{:?}", Answer::new("secret-token", "s", "s", "f")).contains("secret-token"));
    }
}
