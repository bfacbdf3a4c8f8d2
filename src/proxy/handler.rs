//! One request through the proxy (docs/proxy.md, "Routing" and "During a failover"): safe
//! methods to the local app; unsafe ones to the local app on the primary, or to the primary's
//! proxy from a replica; a request another proxy forwarded is served here or refused, never
//! forwarded again. Bodies stream both ways (hyper's bodies, never collected); an upgrade
//! (WebSocket) is spliced once both sides switched protocols.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::header::{self, HeaderValue};
use axum::http::{Request, Response, StatusCode, Uri, Version};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::consistency::{self, COOKIE_MAX_AGE_S, COOKIE_NAME, Mark, ReadPlan};
use super::directory::{self, ANNOUNCE_PATH, Announce};
use super::headers::{
    DURABILITY, FORWARDED_BY, OUTCOME, PROXY_AUTH, SERVED_BY, add_forwarded, not_executed,
    strip_hop_by_hop, strip_internal, upgrade_protocol,
};
use super::lent::Lender;
use super::replication::{self, POSITIONS_PATH, WAIT_PATH, ledger};
use super::route::{self, NoTarget, Target};
use super::waits::{next_try, wait_for_target};
use super::{Body, Shared};
use crate::litefs::positions::Positions;
use crate::raft::NodeId;

/// Paths under this prefix are the proxies' own (secret required), never the app's.
const INTERNAL_PREFIX: &str = "/.litefs-py/";
/// How soon a write whose primary's proxy refused the connection, or answered `not-executed`,
/// tries the same node again (the view may still name it until its lease or raft says
/// otherwise); the gap doubles up to [`MAX_RETRY_GAP`]. A new primary in the view is tried at
/// once.
const REFUSED_TICK: Duration = Duration::from_millis(50);
const MAX_RETRY_GAP: Duration = Duration::from_millis(400);
/// How long a read with a positions cookie waits for this node's LiteFS to catch up before the
/// primary serves it (LiteFS's own proxy waits 5 s, then answers 504).
const READ_WAIT: Duration = Duration::from_secs(2);
/// How often that wait reads the local `<db>-pos` files (a local FUSE read, no network).
const POSITION_TICK: Duration = Duration::from_millis(2);
/// On a read that was not served from this node's caught-up state: why (`not-caught-up`,
/// `epoch-changed`: the primary served it; `stale`: no primary known, this node's state).
const READ_HEADER: &str = "x-litefs-py-read";

/// Where a request is sent.
enum Hop {
    App,
    Peer { node: NodeId, url: String },
}

pub async fn handle(sh: Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let mut req = req.map(BodyExt::boxed_unsync);
    let from_peer = authenticated_peer(&sh, &req);
    if req.uri().path().starts_with(INTERNAL_PREFIX) {
        return internal(&sh, req, from_peer, peer).await;
    }
    strip_internal(req.headers_mut());
    let forwarded_in = from_peer.is_some();
    if route::is_safe(req.method()) {
        if sh.read_your_writes && !forwarded_in {
            return read(&sh, req, peer).await;
        }
        return pass(&sh, req, peer, Hop::App, forwarded_in, false).await;
    }
    if let Some(from) = from_peer {
        // The loop guard: a forwarded request is served by this node's app or not at all. A
        // primary whose claim lapses for a moment (a late quorum ack under load) gets it back
        // within the wait; a node another one has replaced refuses.
        return match wait_for_target(&sh, Instant::now() + sh.primary_wait).await {
            Ok(Target::Local) => pass(&sh, req, peer, Hop::App, true, true).await,
            Ok(Target::Primary { node, .. }) => answer(
                &sh,
                StatusCode::SERVICE_UNAVAILABLE,
                Some("not-executed"),
                format!(
                    "node {} is no longer the primary (node {node} is; node {from} forwarded \
                     this request here); the request was not executed: send it again",
                    sh.me
                ),
            ),
            Err(why) => answer(
                &sh,
                StatusCode::SERVICE_UNAVAILABLE,
                Some("not-executed"),
                format!(
                    "node {} is not the primary ({why}; node {from} forwarded this request \
                     here); the request was not executed: send it again",
                    sh.me
                ),
            ),
        };
    }
    let deadline = Instant::now() + sh.primary_wait;
    if upgrade_protocol(req.headers()).is_some() {
        // An upgrade's connection is tied to this request's: sent once, as it came.
        return match wait_for_target(&sh, deadline).await {
            Ok(Target::Local) => pass(&sh, req, peer, Hop::App, false, true).await,
            Ok(Target::Primary { node, url }) => {
                pass(&sh, req, peer, Hop::Peer { node, url }, false, true).await
            }
            Err(why) => no_primary(&sh, &why),
        };
    }
    to_primary(&sh, req, peer, deadline).await
}

/// An unsafe request that came from a client: to this node's app if it is the primary, else to
/// the primary's proxy. If that proxy refuses the connection (its node died and the view does
/// not know yet), or answers that it did not execute the request (its node is no longer the
/// primary, or its app is gone while it hands off), the request goes to whichever primary the
/// view names next, until `deadline` (`proxy.primary-wait` after it came), as long as the whole
/// body can be sent again ([`Lender::retire`]).
async fn to_primary(
    sh: &Shared,
    req: Request<Body>,
    peer: SocketAddr,
    deadline: Instant,
) -> Response<Body> {
    let (head, body) = req.into_parts();
    let lender = Lender::new(body);
    let attempt = |hop: &Hop| {
        // Only an attempt at another node's proxy may be followed by another one.
        let mut req = Request::new(lender.lend(matches!(hop, Hop::Peer { .. })));
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = head.uri.clone();
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers.clone();
        req
    };
    let mut gap = REFUSED_TICK;
    loop {
        let hop = match wait_for_target(sh, deadline).await {
            Ok(Target::Local) => Hop::App,
            Ok(Target::Primary { node, url }) => Hop::Peer { node, url },
            Err(why) => return no_primary(sh, &why),
        };
        let Hop::Peer { node, url } = &hop else {
            // This node's own app: sent once, its answer or its failure is the client's.
            return pass(sh, attempt(&hop), peer, hop, false, true).await;
        };
        // `retire` last: it ends the attempt's body, and says whether the next gets it whole.
        let why = match try_pass(sh, attempt(&hop), peer, &hop, false, true).await {
            // The primary's proxy says so (an app's own headers of that name never get here:
            // a proxy strips them from its app's answers).
            Ok(resp)
                if not_executed(resp.status(), resp.headers())
                    && Instant::now() < deadline
                    && lender.retire() =>
            {
                format!("answered {} not-executed", resp.status())
            }
            Ok(resp) => return resp,
            Err(e) if e.is_connect() && Instant::now() < deadline && lender.retire() => {
                format!("not reachable ({})", error_chain(&e))
            }
            Err(e) => return failed(sh, &hop, true, &e),
        };
        tracing::debug!(
            node,
            url,
            "the primary's proxy {why}: the request waits for a primary that takes it"
        );
        next_try(sh, *node, gap, deadline).await;
        gap = (gap * 2).min(MAX_RETRY_GAP);
    }
}

/// No primary (or no address of its proxy) within `proxy.primary-wait`.
fn no_primary(sh: &Shared, why: &NoTarget) -> Response<Body> {
    answer(
        sh,
        StatusCode::SERVICE_UNAVAILABLE,
        Some("not-executed"),
        format!(
            "{why}; waited {:?}; the request was not executed: send it again",
            sh.primary_wait
        ),
    )
}

/// A safe request, read-your-writes: served here once this node's LiteFS reached the
/// client's mark (within [`READ_WAIT`]), else by the primary.
async fn read(sh: &Shared, req: Request<Body>, peer: SocketAddr) -> Response<Body> {
    let mark = Mark::from_headers(req.headers());
    let plan = consistency::plan(mark.as_ref(), sh.state.load().view());
    let why = match (plan, &mark) {
        (ReadPlan::WaitThenPrimary, Some(m)) => {
            if caught_up_within(sh, m).await {
                return pass(sh, req, peer, Hop::App, false, false).await;
            }
            "not-caught-up"
        }
        (ReadPlan::Primary, _) => "epoch-changed",
        _ => return pass(sh, req, peer, Hop::App, false, false).await,
    };
    let target = route::unsafe_target(sh.state.load().view(), |id| directory::lookup(&sh.raft, id));
    match target {
        Ok(Target::Primary { node, url }) => {
            let mut resp = pass(sh, req, peer, Hop::Peer { node, url }, false, false).await;
            resp.headers_mut()
                .insert(READ_HEADER, HeaderValue::from_static(why));
            resp
        }
        // No primary to ask: this node's state, said so.
        _ => {
            let mut resp = pass(sh, req, peer, Hop::App, false, false).await;
            resp.headers_mut()
                .insert(READ_HEADER, HeaderValue::from_static("stale"));
            resp
        }
    }
}

pub(super) async fn positions(sh: &Shared) -> Option<Positions> {
    let reader = sh.positions.clone();
    tokio::task::spawn_blocking(move || reader.read().ok())
        .await
        .ok()
        .flatten()
}

async fn caught_up_within(sh: &Shared, mark: &Mark) -> bool {
    let deadline = Instant::now() + READ_WAIT;
    loop {
        if positions(sh).await.is_some_and(|p| mark.reached_by(&p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POSITION_TICK).await;
    }
}

/// The sending node, if the request carries another proxy's marker and the cluster secret.
fn authenticated_peer(sh: &Shared, req: &Request<Body>) -> Option<NodeId> {
    let from = req
        .headers()
        .get(FORWARDED_BY)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let secret = sh.secret.as_ref()?;
    let presented = req.headers().get(PROXY_AUTH)?.as_bytes();
    let token = presented.strip_prefix(b"Bearer ")?;
    secret.matches(token).then_some(from)
}

/// Sends the request on (to the app or to the primary's proxy) and streams the answer back.
async fn pass(
    sh: &Shared,
    req: Request<Body>,
    peer: SocketAddr,
    hop: Hop,
    forwarded_in: bool,
    unsafe_method: bool,
) -> Response<Body> {
    match try_pass(sh, req, peer, &hop, forwarded_in, unsafe_method).await {
        Ok(resp) => resp,
        Err(e) => failed(sh, &hop, unsafe_method, &e),
    }
}

/// [`pass`], with the error of a request that could not be sent or whose answer did not come.
async fn try_pass(
    sh: &Shared,
    mut req: Request<Body>,
    peer: SocketAddr,
    hop: &Hop,
    forwarded_in: bool,
    unsafe_method: bool,
) -> Result<Response<Body>, hyper_util::client::legacy::Error> {
    let upgrade = upgrade_protocol(req.headers());
    let inbound = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let base = match hop {
        Hop::App => format!("http://{}", sh.target),
        Hop::Peer { url, .. } => url.clone(),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("{base}{path}").parse::<Uri>() {
        Ok(u) => u,
        Err(e) => {
            return Ok(answer(
                sh,
                StatusCode::BAD_REQUEST,
                None,
                format!("bad request target: {e}"),
            ));
        }
    };
    parts.version = Version::HTTP_11;
    parts.extensions = Default::default();
    strip_hop_by_hop(&mut parts.headers, upgrade.as_ref());
    if !forwarded_in {
        add_forwarded(&mut parts.headers, peer);
    }
    if let Hop::Peer { .. } = hop {
        parts.headers.insert(FORWARDED_BY, HeaderValue::from(sh.me));
        if let Some(s) = &sh.secret
            && let Ok(v) = HeaderValue::from_str(&s.bearer())
        {
            parts.headers.insert(PROXY_AUTH, v);
        }
    }
    let term_at_send = sh.state.load().view().term;
    // What this node's LiteFS had before the app ran: if nothing moved by its answer, the
    // request committed nothing and its answer waits for no replica.
    let before = match (hop, &sh.replication) {
        (Hop::App, Some(repl)) if unsafe_method => repl.local(),
        _ => None,
    };
    let mut resp = sh.client.request(Request::from_parts(parts, body)).await?;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(inbound)) = (switching, inbound) {
        let outbound = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(inbound, outbound) {
                Ok((client, server)) => {
                    let (mut c, mut s) = (TokioIo::new(client), TokioIo::new(server));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut s).await {
                        tracing::debug!("an upgraded connection ended: {e}");
                    }
                }
                Err(e) => tracing::debug!("an upgrade did not complete: {e}"),
            }
        });
    }
    let upgraded = switching
        .then(|| resp.headers().get(header::UPGRADE).cloned())
        .flatten();
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgraded.as_ref());
    if let Hop::App = hop {
        // The app's answer: the proxies' headers on it are ours alone.
        strip_internal(&mut parts.headers);
        parts.headers.insert(SERVED_BY, HeaderValue::from(sh.me));
        // An unsafe request reaches this node's app only when this node was primary as it was
        // routed; the app has answered, so what it committed is in the positions now. The term
        // is the one it was sent in: if it changed meanwhile, the mark sends reads to the primary.
        let wants_positions = sh.read_your_writes || sh.replication.is_some();
        let after = if unsafe_method && !switching && wants_positions {
            positions(sh).await
        } else {
            None
        };
        let cookie = after
            .as_ref()
            .filter(|_| sh.read_your_writes)
            .map(|p| {
                format!(
                    "{COOKIE_NAME}={}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Lax",
                    Mark::new(term_at_send, p).encode()
                )
            })
            .and_then(|c| HeaderValue::from_str(&c).ok());
        if let Some(v) = &cookie {
            parts.headers.append(header::SET_COOKIE, v.clone());
        }
        if let Some(repl) = &sh.replication
            && unsafe_method
            && !switching
        {
            let needs_wait = match (&before, &after) {
                (Some(b), Some(a)) => ledger::committed_between(b, a),
                _ => true,
            };
            let confirmed = match &after {
                _ if !needs_wait => Ok(Vec::new()),
                Some(a) => repl.confirmed(a, repl.wait).await,
                None => Err(Vec::new()),
            };
            match confirmed {
                Ok(by) => {
                    parts
                        .headers
                        .insert(DURABILITY, HeaderValue::from_static("replicated"));
                    if needs_wait {
                        tracing::trace!(?by, "a write confirmed by replicas");
                    }
                }
                Err(by) => {
                    let mut resp = not_replicated(sh, repl, after.is_some(), &by);
                    if let Some(v) = cookie {
                        resp.headers_mut().append(header::SET_COOKIE, v);
                    }
                    return Ok(resp);
                }
            }
        }
    }
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// `durability: replicated`, and the replicas did not confirm within the bound: the app's answer
/// is not passed on (a client must never take this write for a replicated one).
fn not_replicated(
    sh: &Shared,
    repl: &replication::Replication,
    known: bool,
    by: &[NodeId],
) -> Response<Body> {
    let why = if known {
        format!(
            "{} of the {} replicas needed confirmed it within {:?}",
            by.len(),
            repl.need,
            repl.wait
        )
    } else {
        "this node's LiteFS positions could not be read, so nothing can be confirmed".into()
    };
    tracing::warn!("a write is not confirmed replicated: {why}");
    let mut resp = answer(
        sh,
        StatusCode::GATEWAY_TIMEOUT,
        Some("not-replicated"),
        format!(
            "the request was executed on the primary (node {}), but {why}: it is not replicated, \
             and is lost if this node fails before a replica has it; check before sending it \
             again",
            sh.me
        ),
    );
    resp.headers_mut()
        .insert(DURABILITY, HeaderValue::from_static("not-replicated"));
    resp
}

/// The answer when the request could not be sent, or its answer did not come.
fn failed(
    sh: &Shared,
    hop: &Hop,
    unsafe_method: bool,
    e: &hyper_util::client::legacy::Error,
) -> Response<Body> {
    let whom = match hop {
        Hop::App => format!("the app at {}", sh.target),
        Hop::Peer { node, url } => format!("the primary's proxy (node {node}, {url})"),
    };
    let detail = error_chain(e);
    if e.is_connect() {
        // Nothing was sent: the outcome is known.
        let (status, waited) = match hop {
            Hop::App => (StatusCode::BAD_GATEWAY, String::new()),
            // `to_primary` tried until `proxy.primary-wait` passed.
            Hop::Peer { .. } if unsafe_method => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    ", and no other primary took over within proxy.primary-wait ({:?})",
                    sh.primary_wait
                ),
            ),
            Hop::Peer { .. } => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
        };
        return answer(
            sh,
            status,
            Some("not-executed"),
            format!(
                "{whom} is not reachable ({detail}){waited}; the request was not sent: send it \
                 again"
            ),
        );
    }
    if !unsafe_method {
        return answer(
            sh,
            StatusCode::BAD_GATEWAY,
            Some("unknown"),
            format!("{whom} failed: {detail}"),
        );
    }
    // Sent, and no answer: it may have been executed. Never sent again by the proxy.
    tracing::warn!("{whom} failed during an unsafe request: {detail}");
    answer(
        sh,
        StatusCode::BAD_GATEWAY,
        Some("unknown"),
        format!(
            "{whom} failed during the request ({detail}); it may or may not have been executed: \
             check before sending it again"
        ),
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// An answer of the proxy itself: plain text, the node, the outcome when it matters.
fn answer(
    sh: &Shared,
    status: StatusCode,
    outcome: Option<&'static str>,
    msg: String,
) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("litefs-py proxy: {msg}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(SERVED_BY, HeaderValue::from(sh.me));
    if let Some(o) = outcome {
        h.insert(OUTCOME, HeaderValue::from_static(o));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// An answer of the proxy itself, as JSON.
fn json(sh: &Shared, status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let text = serde_json::to_vec(body).expect("serialises");
    let mut resp = answer(sh, status, None, String::new());
    *resp.body_mut() = Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The proxies' own routes.
async fn internal(
    sh: &Shared,
    req: Request<Body>,
    from: Option<NodeId>,
    peer: SocketAddr,
) -> Response<Body> {
    if req.uri().path() == WAIT_PATH && req.method() == axum::http::Method::GET {
        let query = req.uri().query().map(str::to_string);
        drop(req);
        let (status, body) = replication::app_wait(sh, query.as_deref(), peer).await;
        return json(sh, status, &body);
    }
    if let (Some(from), true) = (from, req.uri().path() == POSITIONS_PATH) {
        let (status, msg) = replication::receive(sh, req, from).await;
        return answer(sh, status, None, msg);
    }
    if from.is_none() {
        return answer(
            sh,
            StatusCode::NOT_FOUND,
            None,
            format!("{INTERNAL_PREFIX} is reserved for litefs-py's proxies"),
        );
    }
    if req.uri().path() != ANNOUNCE_PATH || req.method() != axum::http::Method::POST {
        return answer(sh, StatusCode::NOT_FOUND, None, "no such route".into());
    }
    // Small and bounded: an id and a URL.
    let body = match http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return answer(sh, StatusCode::BAD_REQUEST, None, e.to_string()),
    };
    let announce: Announce = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return answer(sh, StatusCode::BAD_REQUEST, None, e.to_string()),
    };
    match directory::record_here(&sh.raft, announce.id, &announce.url).await {
        Ok(()) => answer(sh, StatusCode::OK, None, "recorded".into()),
        Err(e) => answer(sh, StatusCode::MISDIRECTED_REQUEST, None, e),
    }
}
