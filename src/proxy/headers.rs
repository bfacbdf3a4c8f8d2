//! What the proxy does to headers on the way through (docs/proxy.md, "Headers"):
//!
//! - hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and every header it names, `Keep-Alive`,
//!   `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) are dropped; hyper frames each
//!   hop's body itself. An upgrade keeps `Connection: upgrade` and `Upgrade`;
//! - `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` are set where the request entered
//!   the cluster, not again on the hop from a replica's proxy to the primary's;
//! - the proxies' own headers (`x-litefs-py-*`) never come from a client: one that does not
//!   carry the cluster secret is removed before anything reads it.

use std::net::SocketAddr;

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// On a request from another node's proxy: the sender's node id. Its presence is the loop
/// guard: such a request is served here or refused, never forwarded again.
pub const FORWARDED_BY: &str = "x-litefs-py-forwarded-by";
/// On a request from another node's proxy: `Bearer <cluster secret>`.
pub const PROXY_AUTH: &str = "x-litefs-py-auth";
/// On an error the proxy itself answers: whether the request reached the app. `not-executed`:
/// it did not (safe to send again); `unknown`: it may have (the primary went away mid-request).
pub const OUTCOME: &str = "x-litefs-py-outcome";
/// With `durability: replicated`, on the answer to an unsafe request the primary's app served:
/// `replicated` (enough replicas confirmed it) or `not-replicated` (the 504 saying they did not).
pub const DURABILITY: &str = "x-litefs-py-durability";
/// On every answer: the node whose app answered, or whose proxy refused.
pub const SERVED_BY: &str = "x-litefs-py-node";

const PREFIX: &str = "x-litefs-py-";

/// RFC 9110's hop-by-hop headers, plus the old `Proxy-Connection`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The protocol an upgrade request asks for (`Connection: upgrade` and `Upgrade: <p>`).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())?
}

/// Removes the hop-by-hop headers and those `Connection` names; keeps `upgrade` (the protocol
/// asked for or switched to) when `upgrade` is given.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
}

/// Whether an answer is a proxy's own `not-executed` (a 5xx with [`OUTCOME`]): the request never
/// reached an app. An app's headers of that name never pass a proxy ([`strip_internal`]).
pub fn not_executed(status: axum::http::StatusCode, headers: &HeaderMap) -> bool {
    status.is_server_error()
        && headers
            .get(OUTCOME)
            .is_some_and(|v| v.as_bytes() == b"not-executed")
}

/// Removes every `x-litefs-py-*` header (a client's, or a peer's once it has been read).
pub fn strip_internal(headers: &mut HeaderMap) {
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(PREFIX))
        .cloned()
        .collect();
    for k in ours {
        headers.remove(k);
    }
}

/// Appends the client `peer` to `X-Forwarded-For` and `Forwarded`, and sets
/// `X-Forwarded-Proto: http` unless a proxy in front (a TLS-terminating load balancer) said
/// otherwise already.
pub fn add_forwarded(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| !p.is_empty())
        .unwrap_or("http")
        .to_string();
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    // RFC 7239: an IPv6 address is quoted and bracketed; the host is the one the client asked.
    let node = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto={proto}");
    if let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok())
        && host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        element.push_str(&format!(";host=\"{host}\""));
    }
    let forwarded = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {element}"),
        _ => element,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("content-length", "12"),
            ("cookie", "a=b"),
        ]);
        assert_eq!(upgrade_protocol(&h), None);
        strip_hop_by_hop(&mut h, None);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-length", "cookie"]);
    }

    #[test]
    fn an_upgrade_keeps_its_protocol() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        let p = upgrade_protocol(&h).unwrap();
        assert_eq!(p, "websocket");
        strip_hop_by_hop(&mut h, Some(&p));
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
        // `Upgrade` without `Connection: upgrade` asks for nothing.
        assert_eq!(upgrade_protocol(&map(&[("upgrade", "websocket")])), None);
    }

    #[test]
    fn forwarded_headers_are_appended() {
        let mut h = map(&[("host", "app.example"), ("x-forwarded-for", "10.1.1.1")]);
        add_forwarded(&mut h, "192.0.2.7:5555".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.1.1.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=http;host=\"app.example\""
        );
        // Behind a TLS-terminating balancer: its proto stays, and is what Forwarded says.
        let mut h = map(&[("x-forwarded-proto", "https"), ("forwarded", "for=1.2.3.4")]);
        add_forwarded(&mut h, "[2001:db8::1]:80".parse().unwrap());
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(
            h["forwarded"],
            "for=1.2.3.4, for=\"[2001:db8::1]\";proto=https"
        );
    }

    #[test]
    fn internal_headers_are_removed() {
        let mut h = map(&[
            (FORWARDED_BY, "2"),
            (PROXY_AUTH, "Bearer guess"),
            ("x-litefs-py-anything", "1"),
            ("x-other", "1"),
        ]);
        strip_internal(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-other"]);
    }

    #[test]
    fn only_a_proxys_5xx_says_not_executed() {
        use axum::http::StatusCode;
        let said = map(&[(OUTCOME, "not-executed")]);
        assert!(not_executed(StatusCode::BAD_GATEWAY, &said));
        assert!(not_executed(StatusCode::SERVICE_UNAVAILABLE, &said));
        assert!(!not_executed(StatusCode::OK, &said));
        assert!(!not_executed(
            StatusCode::BAD_GATEWAY,
            &map(&[(OUTCOME, "unknown")])
        ));
        assert!(!not_executed(StatusCode::SERVICE_UNAVAILABLE, &map(&[])));
    }
}
