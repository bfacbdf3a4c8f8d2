//! Blocking lock requests (FUSE_SETLKW): answered by a waiter thread once the lock is granted
//! (see `waiters`), so that no FUSE worker sits in a lock wait.

use std::sync::Arc;

use fuser::ReplyEmpty;
use tracing::Span;

use super::reply::log_failure;
use crate::fs::ShimFs;
use crate::locks::PendingWait;
use crate::metrics::{FuseMetrics, InFlight};

/// Hands `pending` to a waiter thread that answers `reply` when the lock is granted or the
/// wait is interrupted. The request's span and count travel with it: its time includes the
/// wait, and it is counted once, when answered.
pub(super) fn answer_when_granted(
    fs: &ShimFs,
    metrics: &Arc<FuseMetrics>,
    requester_tid: u32,
    pending: PendingWait,
    reply: ReplyEmpty,
    (span, request): (Span, InFlight<'_>),
) {
    let (op, started) = request.detach();
    // On a spawn failure the reply comes back unused.
    let slot = Arc::new(parking_lot::Mutex::new(Some(reply)));
    let for_thread = slot.clone();
    let for_thread_metrics = metrics.clone();
    let waiter_span = span.clone();
    let spawned = fs.waiters.spawn(requester_tid, pending, move |r| {
        let _span = waiter_span.enter();
        if let Some(reply) = for_thread.lock().take() {
            for_thread_metrics.record(op, started.elapsed(), r.is_err());
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(log_failure(op, &e)),
            }
        }
    });
    if let Err(e) = spawned
        && let Some(reply) = slot.lock().take()
    {
        let _span = span.enter();
        metrics.record(op, started.elapsed(), true);
        reply.error(log_failure(op, &e));
    }
}
