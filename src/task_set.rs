//! Background tasks a component owns and stops with itself, once: the raft node and the node
//! above it both keep a set and join it, bounded, at shutdown.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;

/// Tasks spawned on the current runtime, joined at shutdown.
#[derive(Default)]
pub struct TaskSet(Mutex<Vec<JoinHandle<()>>>);

impl TaskSet {
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.0.lock().push(tokio::spawn(fut));
    }

    /// Waits for every task, each for at most `each`: a task that does not stop in time is
    /// abandoned (logged at debug), so shutdown is bounded. The tasks are told to stop by
    /// their owner first (a watch channel), not here.
    pub async fn join_within(&self, each: Duration, owner: &str) {
        let tasks: Vec<_> = self.0.lock().drain(..).collect();
        for t in tasks {
            if tokio::time::timeout(each, t).await.is_err() {
                tracing::debug!("a {owner} task did not stop within {each:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn joins_what_stops_and_abandons_what_does_not() {
        let set = TaskSet::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        set.spawn(async {
            let _ = rx.await;
        });
        set.spawn(std::future::pending());
        drop(tx);
        set.join_within(Duration::from_millis(50), "test").await;
        assert!(set.0.lock().is_empty(), "joined or abandoned, never kept");
    }
}
