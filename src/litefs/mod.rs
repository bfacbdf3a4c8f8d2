//! Everything that knows LiteFS (v0.5.14), and nothing else does:
//! - [`info`]: the one client of its `GET /info`; `events`: its event stream (`GET /events`);
//! - `api`: the local LiteFS's HTTP API (`/halt`) and positions, as the handoff and the
//!   freshest-node check use them; `positions`: the `<db>-pos` files; `report`: what a node
//!   tells its peers about its LiteFS; `lag`: a node's positions against the primary's;
//! - [`stream`]: cuts its replication stream from a primary that went silent;
//! - [`yaml`]: the generated litefs.yml;
//! - `process`: the `litefs mount` child of `litefs-py run`; `probe`: its readiness and
//!   health; `state`: what the lease API and the probe learn about it, for the view.
//!
//! See docs/architecture.md, "Stacking on LiteFS".

use std::net::{SocketAddr, ToSocketAddrs};

pub(crate) mod api;
pub(crate) mod events;
pub mod info;
pub(crate) mod lag;
pub(crate) mod positions;
pub(crate) mod probe;
pub(crate) mod process;
pub(crate) mod report;
pub(crate) mod state;
pub mod stream;
pub mod yaml;

/// LiteFS did not answer, or not as expected.
#[derive(Debug, Clone, thiserror::Error)]
#[error("LiteFS: {0}")]
pub(crate) struct LiteFsError(pub String);

/// Where to reach LiteFS's API from this host, given `litefs.http-addr` (its `http.addr`): an
/// empty or wildcard host replaced by loopback (`:20202` listens on every interface).
pub(crate) fn local_http_addr(http_addr: &str) -> Option<SocketAddr> {
    let (host, port) = http_addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = match host {
        "" | "0.0.0.0" => format!("127.0.0.1:{port}"),
        "::" => format!("[::1]:{port}"),
        h if h.contains(':') => format!("[{h}]:{port}"),
        h => format!("{h}:{port}"),
    };
    addr.to_socket_addrs().ok()?.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            local_http_addr(":20202"),
            Some("127.0.0.1:20202".parse().unwrap())
        );
        assert_eq!(
            local_http_addr("0.0.0.0:1"),
            Some("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(local_http_addr("[::]:2"), Some("[::1]:2".parse().unwrap()));
        assert_eq!(
            local_http_addr("127.0.0.2:3"),
            Some("127.0.0.2:3".parse().unwrap())
        );
        assert_eq!(local_http_addr("nonsense"), None);
    }
}
