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
        let (text, tail, at_requested, at_fingerprint) = text(access_token, scope, requested, fingerprint);
        // JSON-escaped `&str`s and `&str`s: always UTF-8, checked once here. Made at its exact
        // size, the text becomes the secret's box where it is, without a copy left unwiped.
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

/// The answer's text and where its tail, the scopes and the fingerprint start in it, in one
/// allocation of exactly its size: growing or shrinking it would leave a copy of the token behind
/// in freed memory, where nothing wipes it.
fn text(access_token: &str, scope: &str, requested: &str, fingerprint: &str) -> (Vec<u8>, usize, usize, usize) {
    const HEAD: &[u8] = b"{\"access_token\":";
    const MIDDLE: &[u8] = b",\"token_type\":\"Bearer\",\"expires_in\":";
    const SCOPE: &[u8] = b",\"scope\":";
    let size = HEAD.len()
        + json_len(access_token)
        + MIDDLE.len()
        + SCOPE.len()
        + json_len(scope)
        + 1
        + requested.len()
        + fingerprint.len();
    let mut text = Vec::with_capacity(size);
    text.extend_from_slice(HEAD);
    push_json_string(&mut text, access_token);
    text.extend_from_slice(MIDDLE);
    let tail = text.len();
    text.extend_from_slice(SCOPE);
    push_json_string(&mut text, scope);
    text.push(b'}');
    let at_requested = text.len();
    text.extend_from_slice(requested.as_bytes());
    let at_fingerprint = text.len();
    text.extend_from_slice(fingerprint.as_bytes());
    (text, tail, at_requested, at_fingerprint)
}

/// `value` as a JSON string, escaped as serde_json escapes it.
fn push_json_string(out: &mut Vec<u8>, value: &str) {
    // Writing a `&str` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// The length of `value` as serde_json writes it: quoted, with `"`, `\\` and the control
/// characters escaped (`\n` and its like in two bytes, the others as `\u00XX`).
fn json_len(value: &str) -> usize {
    value.bytes().fold(2, |size, byte| {
        size + match byte {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        }
    })
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
    fn the_text_is_made_at_its_exact_size_whatever_the_token_holds() {
        let every_byte: String = (0u8..0x80).map(char::from).collect();
        for token in ["tok-123", "", "a\"quote\\and\nnewline\u{1}\u{1f}é", every_byte.as_str()] {
            let (text, ..) = text(token, token, "reports:read", "0123456789ab");
            assert_eq!(text.capacity(), text.len(), "{token:?}");
        }
        for byte in 0u8..0x80 {
            let value = char::from(byte).to_string();
            assert_eq!(
                json_len(&value),
                serde_json::to_string(&value).unwrap().len(),
                "{byte:#x}"
            );
        }
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        assert!(!format!("{:?}", Answer::new("secret-token", "s", "s", "f")).contains("secret-token"));
    }
}
