//! A request body lent to one attempt at sending it, and lent again to the next attempt when
//! the first one is known not to have executed anything (docs/proxy.md, "During a failover"): a
//! connection that was never made, or a `not-executed` answer from the primary's proxy. The
//! data an attempt read is kept, up to [`KEEP_MAX`], so that the next attempt reads the body
//! from its start; a body larger than that can be lent again only while nothing of it was read.
//!
//! An attempt given up on may still be polled by its connection (hyper goes on writing a body
//! after the answer came): [`Lender::retire`] fences it off first, in the same step that decides
//! whether the body is whole, so that it can never read on and take data the next attempt needs.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::Body;

/// How much of a body is kept for another attempt: a form or a JSON document, not an upload
/// (which is streamed, and sent once).
pub(super) const KEEP_MAX: usize = 64 * 1024;

/// The body, shared by the attempts.
struct Slot {
    /// What no attempt has read yet; `None` once it ended.
    rest: Option<Body>,
    /// Every data frame read from `rest` so far, while they fit in [`KEEP_MAX`] (then no more
    /// is added).
    kept: Vec<Bytes>,
    kept_bytes: usize,
    /// Something was read that is not in `kept` (too large, trailers, an error, or read by an
    /// attempt that keeps nothing): the body cannot be sent again.
    lost: bool,
    /// The attempt allowed to read: one with another generation is retired.
    generation: u64,
}

/// The owner's handle: lends the body out, and says whether it can be lent again.
pub(super) struct Lender(Arc<Mutex<Slot>>);

/// One attempt's body: first what earlier attempts read (kept), then the rest.
pub(super) struct Lent {
    slot: Arc<Mutex<Slot>>,
    /// Frames of `kept` this attempt has given out.
    at: usize,
    generation: u64,
    /// Whether what it reads is kept for another attempt (not when it goes to this node's own
    /// app: that attempt is never made again once it read anything).
    keep: bool,
}

impl Lender {
    pub(super) fn new(body: Body) -> Lender {
        Lender(Arc::new(Mutex::new(Slot {
            rest: Some(body),
            kept: Vec::new(),
            kept_bytes: 0,
            lost: false,
            generation: 0,
        })))
    }

    /// The body for one attempt, from its start; `keep`: keep what it reads for another one.
    pub(super) fn lend(&self, keep: bool) -> Body {
        use http_body_util::BodyExt;
        Lent {
            slot: self.0.clone(),
            at: 0,
            generation: lock(&self.0).generation,
            keep,
        }
        .boxed_unsync()
    }

    /// Gives up on the attempt lent last: from now on it reads nothing more (its body ends).
    /// True if the next attempt can still be given the whole body.
    pub(super) fn retire(&self) -> bool {
        let mut s = lock(&self.0);
        s.generation += 1;
        !s.lost
    }
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // Poisoned only if a body's poll panicked: the body is as good as its last state.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl hyper::body::Body for Lent {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let slot = self.slot.clone();
        let mut s = lock(&slot);
        if self.generation != s.generation {
            // Retired: the request it belonged to was answered or refused without running.
            return Poll::Ready(None);
        }
        if self.at < s.kept.len() {
            let data = s.kept[self.at].clone();
            self.at += 1;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let Some(rest) = s.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(rest).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                s.rest = None;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                s.lost = true;
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        match frame.data_ref() {
            Some(data) if self.keep && !s.lost && s.kept_bytes + data.len() <= KEEP_MAX => {
                s.kept_bytes += data.len();
                s.kept.push(data.clone());
                self.at = s.kept.len();
            }
            // Once something is not kept, the body is never lent again; this attempt, the only
            // one reading (the others are retired), goes on with the rest.
            _ => {
                s.lost = true;
                s.kept = Vec::new();
                s.kept_bytes = 0;
                self.at = 0;
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.slot);
        self.generation != s.generation
            || (self.at >= s.kept.len() && s.rest.as_ref().is_none_or(|b| b.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.slot);
        let kept: usize = s.kept[self.at.min(s.kept.len())..]
            .iter()
            .map(Bytes::len)
            .sum();
        let mut hint = s
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
        let kept = kept as u64;
        // Upper first: a lower bound above the upper one panics.
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + kept);
        }
        hint.set_lower(hint.lower() + kept);
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Body as _;

    fn body(s: &'static str) -> Body {
        Full::new(Bytes::from_static(s.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    /// A body of `n` chunks of `size` bytes each.
    fn chunks(n: usize, size: usize) -> Body {
        let frames = (0..n).map(move |i| {
            Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8; size])))
        });
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn a_body_is_lent_again_whole_after_an_attempt_read_it() {
        let lender = Lender::new(body("hello"));
        let first = lender.lend(true);
        assert_eq!(first.size_hint().exact(), Some(5));
        drop(first); // a refused connection drops its request unread
        assert!(lender.retire());
        let second = lender.lend(true).collect().await.unwrap().to_bytes();
        assert_eq!(second, "hello");
        // Read whole, and kept: a `not-executed` answer lets a third attempt send it again.
        assert!(lender.retire());
        let third = lender.lend(true);
        assert_eq!(third.size_hint().exact(), Some(5));
        assert_eq!(third.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn an_attempt_that_read_part_leaves_the_next_one_the_whole_body() {
        let lender = Lender::new(chunks(3, 10));
        let mut first = lender.lend(true);
        let one = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(one.len(), 10);
        drop(first);
        assert!(lender.retire());
        let all = lender.lend(true).collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 30);
        assert_eq!(&all[..10], &[b'a'; 10]);
        assert_eq!(&all[20..], &[b'c'; 10]);
    }

    #[tokio::test]
    async fn a_body_larger_than_the_keep_is_sent_once() {
        let lender = Lender::new(chunks(3, KEEP_MAX / 2));
        let all = lender.lend(true).collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 3 * (KEEP_MAX / 2));
        assert!(
            !lender.retire(),
            "more was read than kept: it must not be sent again"
        );
        // Unread, a large body can still be lent again.
        let lender = Lender::new(chunks(3, KEEP_MAX));
        drop(lender.lend(true));
        assert!(lender.retire());
        // An attempt that keeps nothing (to this node's app) is never followed by another.
        let lender = Lender::new(body("hello"));
        let mut once = lender.lend(false);
        once.frame().await.unwrap().unwrap();
        assert!(!lender.retire());
    }

    #[tokio::test]
    async fn a_retired_attempt_reads_nothing_more() {
        let lender = Lender::new(chunks(3, 10));
        let mut old = lender.lend(true);
        old.frame().await.unwrap().unwrap();
        assert!(lender.retire());
        let new = lender.lend(true);
        // Its connection polls on after the answer came: it gets nothing the new one needs.
        assert!(old.frame().await.is_none());
        assert!(old.is_end_stream());
        let all = new.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 30);
        assert_eq!(&all[10..20], &[b'b'; 10]);
    }
}
