//! The audit lines of a token served and of a request proxied: the one line every request of the
//! token route, and of the proxy route, writes.
//!
//! It reads as any other JSON line (see [`super::JsonLines`]), byte for byte, but when the JSON
//! sink is installed it is written there directly, its field names as one piece of text each,
//! instead of going through `tracing`'s event machinery: the fields visited one by one through
//! dynamic calls and the message formatted were a tenth of the token route's instructions. Where
//! the sink is not installed (the demo's text format, a test's own subscriber) the line is a
//! `tracing` event as before, and the level filter decides in both cases.

use std::time::SystemTime;

use tracing::Level;

use super::{push_json_string, with_line, write_timestamp, JSON_SINK};

const TARGET: &str = "token_broker::audit";

/// What the audit line of a token served says.
pub struct TokenServed<'a> {
    pub request_id: &'a str,
    pub authenticator: &'a str,
    pub subject: &'a str,
    pub upstream: &'a str,
    /// The served token's scopes, space-separated.
    pub scopes: &'a str,
    pub cache_hit: bool,
    pub token_fingerprint: &'a str,
}

impl TokenServed<'_> {
    pub fn log(&self) {
        if !tracing::enabled!(target: TARGET, Level::INFO) || write_direct(|line, now| self.json_line(line, now)) {
            return;
        }
        tracing::info!(
            target: TARGET,
            request_id = self.request_id,
            authenticator = self.authenticator,
            subject = self.subject,
            upstream = self.upstream,
            scopes = self.scopes,
            cache_hit = self.cache_hit,
            token_fingerprint = self.token_fingerprint,
            "token served"
        );
    }

    /// The line [`super::JsonLines`] writes for the `tracing` event above, at `now`.
    fn json_line(&self, line: &mut String, now: SystemTime) {
        framed(line, now, "token served", |line| self.fields(line));
    }

    fn fields(&self, line: &mut String) {
        who(line, self.request_id, self.authenticator, self.subject, self.upstream);
        line.push_str(",\"scopes\":");
        push_json_string(line, self.scopes);
        line.push_str(if self.cache_hit {
            ",\"cache_hit\":true,\"token_fingerprint\":"
        } else {
            ",\"cache_hit\":false,\"token_fingerprint\":"
        });
        push_json_string(line, self.token_fingerprint);
    }
}

/// What the audit line of a request proxied says (a WebSocket's has status 101).
pub struct RequestProxied<'a> {
    pub request_id: &'a str,
    pub authenticator: &'a str,
    pub subject: &'a str,
    pub upstream: &'a str,
    pub method: &'a str,
    /// The path forwarded, below the upstream's base.
    pub path: &'a str,
    pub status: u16,
    pub token_fingerprint: &'a str,
}

impl RequestProxied<'_> {
    pub fn log(&self) {
        if !tracing::enabled!(target: TARGET, Level::INFO) || write_direct(|line, now| self.json_line(line, now)) {
            return;
        }
        tracing::info!(
            target: TARGET,
            request_id = self.request_id,
            authenticator = self.authenticator,
            subject = self.subject,
            upstream = self.upstream,
            method = self.method,
            path = self.path,
            status = self.status,
            token_fingerprint = self.token_fingerprint,
            "request proxied"
        );
    }

    /// The line [`super::JsonLines`] writes for the `tracing` event above, at `now`.
    fn json_line(&self, line: &mut String, now: SystemTime) {
        framed(line, now, "request proxied", |line| self.fields(line));
    }

    fn fields(&self, line: &mut String) {
        who(line, self.request_id, self.authenticator, self.subject, self.upstream);
        line.push_str(",\"method\":");
        push_json_string(line, self.method);
        line.push_str(",\"path\":");
        push_json_string(line, self.path);
        line.push_str(",\"status\":");
        line.push_str(itoa::Buffer::new().format(self.status));
        line.push_str(",\"token_fingerprint\":");
        push_json_string(line, self.token_fingerprint);
    }
}

/// An audit line as [`super::JsonLines`] frames an event: the timestamp, level and `message` (a
/// plain literal: nothing in it to escape), the fields `fields` writes, each after a comma, and
/// the target.
fn framed(line: &mut String, now: SystemTime, message: &str, fields: impl FnOnce(&mut String)) {
    line.push_str("{\"timestamp\":\"");
    write_timestamp(line, now);
    line.push_str("\",\"level\":\"INFO\",\"message\":\"");
    line.push_str(message);
    line.push('"');
    fields(line);
    line.push_str(",\"target\":\"token_broker::audit\"}\n");
}

/// Writes the line `json_line` makes straight into the JSON sink, when it is installed; `false`
/// when it is not (the caller then logs through `tracing`).
fn write_direct(json_line: impl FnOnce(&mut String, SystemTime)) -> bool {
    let Some(sink) = JSON_SINK.get() else { return false };
    with_line(|line| {
        json_line(line, SystemTime::now());
        sink.write_line(line.as_bytes());
    });
    true
}

/// The fields both audit lines begin with: the request, who made it, and for which upstream.
fn who(line: &mut String, request_id: &str, authenticator: &str, subject: &str, upstream: &str) {
    line.push_str(",\"request_id\":");
    push_json_string(line, request_id);
    line.push_str(",\"authenticator\":");
    push_json_string(line, authenticator);
    line.push_str(",\"subject\":");
    push_json_string(line, subject);
    line.push_str(",\"upstream\":");
    push_json_string(line, upstream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::json_lines_of;

    #[test]
    fn the_direct_line_is_the_one_tracing_writes_byte_for_byte() {
        for (subject, cache_hit) in [("alice", true), ("odd \"sub\"\\ject\n\u{1}é✓", false)] {
            let served = TokenServed {
                request_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                authenticator: "api_key",
                subject,
                upstream: "triumph",
                scopes: "reports:read reports:write",
                cache_hit,
                token_fingerprint: "7cb3242304a2",
            };
            let expected = json_lines_of(|| served.log());
            let mut direct = String::new();
            served.json_line(&mut direct, SystemTime::now());
            // The timestamps differ (fixed width, after `{"timestamp":"`); everything else is equal.
            let stamp = 14..14 + "2026-11-22T00:04:45.966552Z".len();
            assert_eq!(direct[..stamp.start], expected[..stamp.start]);
            assert_eq!(direct[stamp.end..], expected[stamp.end..]);
            assert!(direct.ends_with("}\n"));
            let parsed: serde_json::Value = serde_json::from_str(&direct).unwrap();
            assert_eq!(parsed["subject"], subject);
            assert_eq!(parsed["cache_hit"], cache_hit);
        }
    }

    #[test]
    fn the_direct_proxied_line_is_the_one_tracing_writes_byte_for_byte() {
        for (path, status) in [("/reports/1", 200), ("/odd \"pa\\th\n\u{1}é✓", 101)] {
            let proxied = RequestProxied {
                request_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                authenticator: "api_key",
                subject: "alice",
                upstream: "triumph",
                method: "GET",
                path,
                status,
                token_fingerprint: "7cb3242304a2",
            };
            let expected = json_lines_of(|| proxied.log());
            let mut direct = String::new();
            proxied.json_line(&mut direct, SystemTime::now());
            let stamp = 14..14 + "2026-11-22T00:04:45.966552Z".len();
            assert_eq!(direct[..stamp.start], expected[..stamp.start]);
            assert_eq!(direct[stamp.end..], expected[stamp.end..]);
            let parsed: serde_json::Value = serde_json::from_str(&direct).unwrap();
            assert_eq!(parsed["path"], path);
            assert_eq!(parsed["status"], status);
        }
    }
}
