//! The client's address and scheme. `X-Forwarded-For` and `X-Forwarded-Proto` are believed only
//! when the peer is a trusted proxy; the client is then the rightmost address that is not itself a
//! trusted proxy, so a client cannot choose its own address by sending the header.

use std::net::IpAddr;

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Whether the peer is a trusted proxy (then its `X-Request-Id` is believed too).
    pub via_trusted_proxy: bool,
}

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: &[IpNet]) -> Self {
        Self(nets.to_vec())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn client(&self, peer: Option<IpAddr>, scheme: &'static str, headers: &HeaderMap) -> ClientInfo {
        let untrusted = ClientInfo {
            ip: peer,
            scheme,
            via_trusted_proxy: false,
        };
        let Some(peer) = peer.filter(|p| self.trusts(*p)) else {
            return ClientInfo {
                ip: peer.map(canonical),
                ..untrusted
            };
        };
        // Read as bytes: one hop a client wrote in non-ASCII must not make the whole header (and
        // the hops the proxies appended after it) disappear.
        let hops: Vec<Option<IpAddr>> = headers
            .get_all("x-forwarded-for")
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(parse_hop)
            .collect();
        let mut client = canonical(peer);
        for hop in hops.iter().rev() {
            let Some(ip) = *hop else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        let forwarded_scheme = headers
            .get_all("x-forwarded-proto")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .next_back()
            .and_then(|s| match s {
                "http" => Some("http"),
                "https" => Some("https"),
                _ => None,
            });
        ClientInfo {
            ip: Some(client),
            scheme: forwarded_scheme.unwrap_or(scheme),
            via_trusted_proxy: true,
        }
    }
}

/// One `X-Forwarded-For` hop: an address, or an address with a port as some load balancers write
/// it (`203.0.113.7:5555`, `[2001:db8::1]:443`).
fn parse_hop(bytes: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let ip = text
        .parse::<IpAddr>()
        .or_else(|_| text.parse::<std::net::SocketAddr>().map(|a| a.ip()))
        .ok()?;
    Some(canonical(ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) compare as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        map
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(&["10.0.0.0/8".parse().unwrap(), "127.0.0.1/32".parse().unwrap()])
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address() {
        let info = proxies().client(
            Some("203.0.113.9".parse().unwrap()),
            "http",
            &headers(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https")]),
        );
        assert_eq!(info.ip, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(info.scheme, "http");
        assert!(!info.via_trusted_proxy);
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let info = proxies().client(
            Some("127.0.0.1".parse().unwrap()),
            "http",
            &headers(&[
                ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
                ("x-forwarded-for", "10.1.2.3"),
                ("x-forwarded-proto", "https"),
            ]),
        );
        assert_eq!(info.ip, Some("198.51.100.7".parse().unwrap()));
        assert_eq!(info.scheme, "https");
        let all_trusted = proxies().client(
            Some("::ffff:127.0.0.1".parse().unwrap()),
            "http",
            &headers(&[("x-forwarded-for", "10.0.0.5")]),
        );
        assert_eq!(all_trusted.ip, Some("10.0.0.5".parse().unwrap()));
    }

    #[test]
    fn hops_with_ports_and_a_client_written_non_ascii_hop_still_name_the_client() {
        let with_port = proxies().client(
            Some("127.0.0.1".parse().unwrap()),
            "http",
            &headers(&[("x-forwarded-for", "203.0.113.10:5555")]),
        );
        assert_eq!(with_port.ip, Some("203.0.113.10".parse().unwrap()));
        let v6 = proxies().client(
            Some("127.0.0.1".parse().unwrap()),
            "http",
            &headers(&[("x-forwarded-for", "[2001:db8::1]:443")]),
        );
        assert_eq!(v6.ip, Some("2001:db8::1".parse().unwrap()));
        let mut map = HeaderMap::new();
        map.append(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_bytes(b"\xff, 203.0.113.7").unwrap(),
        );
        let non_ascii = proxies().client(Some("127.0.0.1".parse().unwrap()), "http", &map);
        assert_eq!(non_ascii.ip, Some("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn no_proxy_is_trusted_by_default() {
        let info = TrustedProxies::default().client(
            Some("127.0.0.1".parse().unwrap()),
            "http",
            &headers(&[("x-forwarded-for", "1.2.3.4")]),
        );
        assert_eq!(info.ip, Some("127.0.0.1".parse().unwrap()));
    }
}
