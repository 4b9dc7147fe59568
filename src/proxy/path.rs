//! The path a proxied request names, normalised before anything is sent: whatever could escape the
//! API's base URL or read differently to the API than to the allow-list is refused — `.` and `..`
//! segments (plain or percent-encoded, once or twice, or padded with dots and spaces), encoded
//! slashes and backslashes and their Unicode look-alikes, `//`, `;` (matrix parameters some
//! servers strip), NUL and control characters, and over-long paths.
//! What passes is forwarded exactly as received, and matched against the allow-list decoded.

use std::fmt;

/// Longest path the proxy forwards.
pub const MAX_PATH_BYTES: usize = 2048;

/// A path after `/v1/proxy/<name>` that is safe to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPath {
    /// As received (percent-encoded), starting with `/`, or empty.
    raw: String,
    /// Each segment percent-decoded.
    segments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is over {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("the path holds a character that could confuse the API")]
    Character,
    #[error("the path has an empty segment (`//`)")]
    EmptySegment,
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
    #[error("the path has a percent-encoding that does not decode to plain text")]
    Encoding,
}

impl ProxyPath {
    /// `raw`: the request path after `/v1/proxy/<name>`, exactly as the client sent it.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        if raw
            .bytes()
            .any(|b| b.is_ascii_control() || b == b'\\' || b == b';' || b >= 0x80)
        {
            return Err(PathError::Character);
        }
        let mut segments = Vec::new();
        if !raw.is_empty() {
            let rest = raw.strip_prefix('/').ok_or(PathError::Character)?;
            let parts: Vec<&str> = rest.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                // A trailing slash is one empty last segment; anywhere else `//` is refused.
                if part.is_empty() && i + 1 != parts.len() {
                    return Err(PathError::EmptySegment);
                }
                let decoded = decode(part)?;
                if is_dot_segment(&decoded) {
                    return Err(PathError::DotSegment);
                }
                segments.push(decoded);
            }
        }
        Ok(Self {
            raw: raw.to_string(),
            segments,
        })
    }

    /// The path as the API receives it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The path as logs show it: `/` for the upstream's base itself.
    pub fn shown(&self) -> &str {
        if self.raw.is_empty() {
            "/"
        } else {
            &self.raw
        }
    }
}

impl fmt::Display for ProxyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

/// One segment, percent-decoded once. It may not decode to anything a second decoding, the URL
/// parser or the API could read as structure: `%`, `/`, `\`, `;`, control characters, or bytes
/// that are not UTF-8.
fn decode(segment: &str) -> Result<String, PathError> {
    let bytes: Vec<u8> = percent_decode(segment.as_bytes()).ok_or(PathError::Encoding)?;
    let text = String::from_utf8(bytes).map_err(|_| PathError::Encoding)?;
    if text.chars().any(|c| {
        c.is_control() || matches!(c, '%' | '/' | '\\' | ';') || is_invisible_formatting(c) || is_look_alike(c)
    }) {
        return Err(PathError::Encoding);
    }
    Ok(text)
}

/// `.`, `..`, and what some servers normalise to them: more dots (`...`), or dots with spaces
/// around them (`.. `, `\u{a0}..`), which Windows file systems and some frameworks trim.
fn is_dot_segment(segment: &str) -> bool {
    let trimmed = segment.trim_matches(char::is_whitespace);
    trimmed.starts_with('.') && trimmed.chars().all(|c| c == '.' || c.is_whitespace())
}

/// Characters that look like, or are folded by Unicode normalisation (NFKC) into, a dot, a slash
/// or a backslash: an API that normalises would read a different path than the allow-list did.
fn is_look_alike(c: char) -> bool {
    matches!(
        c,
        '\u{2024}' // one dot leader
            | '\u{2025}' // two dot leader
            | '\u{2026}' // horizontal ellipsis
            | '\u{FE52}' // small full stop
            | '\u{FF0E}' // fullwidth full stop
            | '\u{2044}' // fraction slash
            | '\u{2215}' // division slash
            | '\u{FF0F}' // fullwidth solidus
            | '\u{29F5}' // reverse solidus operator
            | '\u{FE68}' // small reverse solidus
            | '\u{FF3C}' // fullwidth reverse solidus
            | '\u{FF05}' // fullwidth percent sign
            | '\u{FE6A}' // small percent sign
            | '\u{FF1B}' // fullwidth semicolon
            | '\u{FE54}' // small semicolon
    )
}

/// Zero-width and bidirectional-override characters: they make a path read differently in a log
/// or an allow-list review than it is.
fn is_invisible_formatting(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn percent_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// An allow-list entry: `/reports/**`, `/me`, `/items/*/history`. `*` is one segment, `**` any
/// number of them (none included); other segments match literally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segments: Vec<String>,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| format!("`{text}` must start with /"))?;
        let segments: Vec<String> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').map(String::from).collect()
        };
        if segments
            .iter()
            .any(|s| s.is_empty() || s == "." || s == ".." || (s.contains('*') && s != "*" && s != "**"))
        {
            return Err(format!(
                "`{text}`: segments are literal, `*` (one segment) or `**` (any number); no empty, `.` or `..` ones"
            ));
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    pub fn matches(&self, path: &ProxyPath) -> bool {
        let mut segments: &[String] = &path.segments;
        // A trailing slash matches as the path without it.
        if segments.last().is_some_and(|s| s.is_empty()) {
            segments = &segments[..segments.len() - 1];
        }
        matches(&self.segments, segments)
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn matches(pattern: &[String], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|skip| matches(rest, &path[skip..])),
        Some((first, rest)) => path
            .split_first()
            .is_some_and(|(segment, tail)| (first == "*" || first == segment) && matches(rest, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern)
            .unwrap()
            .matches(&ProxyPath::parse(path).unwrap())
    }

    #[test]
    fn traversal_and_smuggling_forms_are_refused() {
        for path in [
            "/..",
            "/reports/../admin",
            "/reports/./x",
            "/reports/%2e%2e/admin",
            "/reports/%2E%2E/admin",
            "/reports/.%2e/admin",
            "/reports/%2e./admin",
            "/reports/%2e/admin",
            "/reports/%252e%252e/admin",
            "/reports/%252E%252E/admin",
            "/reports%2f..%2fadmin",
            "/reports%2F..%2Fadmin",
            "/reports/%5c..%5cadmin",
            "/reports\\..\\admin",
            "/reports//admin",
            "//admin",
            "/reports/%00",
            "/reports/\0",
            "/reports/%0d%0aHost:%20evil",
            "/reports/\t",
            "/reports;/../admin",
            "/reports/%3b/admin",
            "/reports/%25",
            "/reports/%zz",
            "/reports/%",
            "/reports/%c0%ae%c0%ae/admin",
            "/reports/%e2%80%ae",
            "/reports/...",
            "/reports/..%20/admin",
            "/reports/%20../admin",
            "/reports/..%c2%a0/admin",
            "/reports/%ef%bc%8e%ef%bc%8e/admin",
            "/reports/%e2%80%a5/admin",
            "/reports/..%ef%bc%8fadmin",
            "/reports/..%e2%88%95admin",
            "/reports/..%ef%bc%bcadmin",
            "/reports/%ef%bc%85%32%65",
            "reports",
        ] {
            assert!(ProxyPath::parse(path).is_err(), "{path:?} must be refused");
        }
        assert_eq!(
            ProxyPath::parse(&format!("/{}", "a".repeat(MAX_PATH_BYTES))),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn plain_paths_pass_as_received() {
        for path in [
            "",
            "/",
            "/reports/42",
            "/reports/a%20b",
            "/reports/2024-01/",
            "/me",
            "/reports/v1.2",
            "/reports/.well-known",
            "/reports/a..b",
        ] {
            assert_eq!(ProxyPath::parse(path).unwrap().as_str(), path);
        }
    }

    #[test]
    fn globs_match_segments_after_decoding() {
        assert!(allowed("/reports/**", "/reports"));
        assert!(allowed("/reports/**", "/reports/42/history"));
        assert!(allowed("/reports/*", "/reports/42"));
        assert!(!allowed("/reports/*", "/reports/42/history"));
        assert!(!allowed("/reports/*", "/reports"));
        assert!(allowed("/items/*/history", "/items/7/history"));
        assert!(allowed("/me", "/me"));
        assert!(allowed("/me", "/me/"));
        assert!(!allowed("/me", "/me2"));
        assert!(!allowed("/reports/**", "/reportsx"));
        assert!(allowed("/reports/a b", "/reports/a%20b"));
        assert!(allowed("/**", ""));
        for bad in ["reports", "/a//b", "/a/../b", "/a*", "/**x"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
