//! Request header size limit: the HTTP server already refuses more than 96 headers, or headers it
//! cannot parse within 128 KiB of buffered data; `server.max_header_bytes` (0 = off) lowers the
//! total further (431, RFC 6585 §5).

use actix_web::http::header::HeaderMap;

/// The size of the request headers as the limit counts them: name, value and the 4 bytes of
/// `": "` and CRLF per header.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}
