//! The token route's JSON answer for one cached token, written when the token is cached rather
//! than on every request: between two requests for it only `expires_in` and `expires_at` change.
//!
//! `{"access_token":…,"token_type":"Bearer","expires_in":…,"expires_at":…,"scope":…}`

use std::fmt;

use secrecy::{ExposeSecret, SecretSlice};

pub struct Answer {
    /// Up to and including `"expires_in":`; it holds the token, so it is kept as a secret
    /// (never in a `Debug` output, wiped when dropped).
    head: SecretSlice<u8>,
    /// From `,"scope":` to the end.
    tail: Box<[u8]>,
}

impl Answer {
    pub fn new(access_token: &str, scope: &str) -> Self {
        let mut head = Vec::with_capacity(access_token.len() + 64);
        head.extend_from_slice(b"{\"access_token\":");
        push_json_string(&mut head, access_token);
        head.extend_from_slice(b",\"token_type\":\"Bearer\",\"expires_in\":");
        let mut tail = Vec::with_capacity(scope.len() + 12);
        tail.extend_from_slice(b",\"scope\":");
        push_json_string(&mut tail, scope);
        tail.push(b'}');
        Self {
            head: head.into(),
            tail: tail.into(),
        }
    }

    /// The answer's bytes for a token that expires in `expires_in` seconds, at `expires_at`.
    pub fn body(&self, expires_in: u64, expires_at: u64) -> Vec<u8> {
        let head = self.head.expose_secret();
        let mut numbers = (itoa::Buffer::new(), itoa::Buffer::new());
        let (expires_in, expires_at) = (numbers.0.format(expires_in), numbers.1.format(expires_at));
        let mut body = Vec::with_capacity(head.len() + self.tail.len() + 64);
        body.extend_from_slice(head);
        body.extend_from_slice(expires_in.as_bytes());
        body.extend_from_slice(b",\"expires_at\":");
        body.extend_from_slice(expires_at.as_bytes());
        body.extend_from_slice(&self.tail);
        body
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
            assert_eq!(Answer::new(token, scope).body(3599, 1_795_509_025), expected);
        }
        assert_eq!(
            String::from_utf8(Answer::new("t", "s").body(0, u64::MAX)).unwrap(),
            format!("{{\"access_token\":\"t\",\"token_type\":\"Bearer\",\"expires_in\":0,\"expires_at\":{},\"scope\":\"s\"}}", u64::MAX)
        );
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        assert!(!format!("{:?}", Answer::new("secret-token", "s")).contains("secret-token"));
    }
}
