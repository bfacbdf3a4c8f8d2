//! A request body lent to one attempt at sending it, and taken back if that attempt never read
//! it: what lets the proxy send a write to another primary when the one it knew refused the
//! connection (docs/proxy.md, "During a failover"). A connection that was never made cannot
//! have executed anything, and a body that was never read can still be sent whole.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::Body;

/// The body, shared by the attempts; `read` once any attempt polled it.
struct Slot {
    body: Mutex<Option<Body>>,
    read: AtomicBool,
}

/// The owner's handle: lends the body out, and says whether it can be lent again.
pub(super) struct Lender(Arc<Slot>);

/// One attempt's body. Dropping it (a failed connect drops the request) leaves the body in
/// the slot for the next attempt.
pub(super) struct Lent(Arc<Slot>);

impl Lender {
    pub(super) fn new(body: Body) -> Lender {
        Lender(Arc::new(Slot {
            body: Mutex::new(Some(body)),
            read: AtomicBool::new(false),
        }))
    }

    /// The body for one attempt.
    pub(super) fn lend(&self) -> Body {
        use http_body_util::BodyExt;
        Lent(self.0.clone()).boxed_unsync()
    }

    /// True while no attempt has read any of the body: it can be sent again, whole.
    pub(super) fn unread(&self) -> bool {
        !self.0.read.load(Ordering::Acquire)
    }
}

impl Lent {
    fn body(&self) -> MutexGuard<'_, Option<Body>> {
        // Poisoned only if a body's poll panicked: the body is as good as its last state.
        self.0.body.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl hyper::body::Body for Lent {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.0.read.store(true, Ordering::Release);
        match self.body().as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body().as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body()
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Body as _;

    fn body(s: &'static str) -> Body {
        Full::new(Bytes::from_static(s.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    #[tokio::test]
    async fn a_body_no_attempt_read_is_lent_again_whole() {
        let lender = Lender::new(body("hello"));
        let first = lender.lend();
        assert_eq!(first.size_hint().exact(), Some(5));
        drop(first); // a refused connection drops its request unread
        assert!(lender.unread());
        let second = lender.lend().collect().await.unwrap().to_bytes();
        assert_eq!(second, "hello");
        assert!(!lender.unread(), "read once: it must not be sent again");
    }
}
