//! The waits of an unsafe request (docs/proxy.md, "During a failover"): for a primary whose
//! proxy's address is known, for this node's LiteFS to say it is primary before its own app
//! gets a write, and between attempts at a primary that did not take the request.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Shared;
use super::directory;
use super::route::{self, NoTarget, Target};
use crate::raft::NodeId;

/// How often a request waiting for a primary looks at the view again (it is in memory).
const WAIT_TICK: Duration = Duration::from_millis(10);

/// Until a primary and its proxy's address are known, or `deadline` (`proxy.primary-wait` after
/// the request came) passed. This node as the primary counts once its LiteFS says so too.
pub(super) async fn wait_for_target(sh: &Shared, deadline: Instant) -> Result<Target, NoTarget> {
    loop {
        let found =
            route::unsafe_target(sh.state.load().view(), |id| directory::lookup(&sh.raft, id));
        let stopping = *sh.stop.borrow();
        match found {
            Ok(Target::Local) => {
                // At the deadline the app answers, as it would have without this wait.
                if stopping || Instant::now() >= deadline || local_writable(sh).await {
                    return Ok(Target::Local);
                }
                tokio::time::sleep(WAIT_TICK).await;
            }
            Ok(t) => return Ok(t),
            Err(why) if Instant::now() >= deadline || stopping => return Err(why),
            Err(_) => tokio::time::sleep(WAIT_TICK).await,
        }
    }
}

/// Whether this node's LiteFS says it is primary, asked once per raft term. The view says
/// primary as soon as the lease API grants LiteFS the lease; LiteFS takes a moment more to
/// accept writes, and a write in between fails in the app (`read only replica`, SQLite's
/// `disk I/O error`): seen in `tests/proxy_durability.rs` once writes were retried to a new
/// primary the instant the view named it.
async fn local_writable(sh: &Shared) -> bool {
    let term = sh.state.load().view().term;
    if sh.writable_term.load(Ordering::Acquire) == term {
        return true;
    }
    let Some((addr, client)) = &sh.litefs_api else {
        return true;
    };
    match crate::litefs::info::get(client, addr).await {
        Ok(info) if info.is_primary => {
            sh.writable_term.store(term, Ordering::Release);
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::debug!("asking the local LiteFS whether it is primary: {e}");
            false
        }
    }
}

/// After an attempt at node `tried` that did not run: waits until the view names another
/// primary, or `gap` passed (the same one is asked again, less often each time), or `deadline`.
pub(super) async fn next_try(sh: &Shared, tried: NodeId, gap: Duration, deadline: Instant) {
    let until = (Instant::now() + gap).min(deadline);
    loop {
        let moved = match route::unsafe_target(sh.state.load().view(), |id| {
            directory::lookup(&sh.raft, id)
        }) {
            Ok(Target::Local) => true,
            Ok(Target::Primary { node, .. }) => node != tried,
            Err(_) => false,
        };
        if moved || Instant::now() >= until {
            return;
        }
        tokio::time::sleep(WAIT_TICK).await;
    }
}
