//! "Poll until a deadline", once: the handoff and the leadership transfer wait for other nodes
//! (a LiteFS catching up, a LiteFS demoting, a new leader) by asking again on a short interval.

use std::time::{Duration, Instant};

/// Calls `attempt` until it returns `Ok`, sleeping `interval` between calls. Once `deadline`
/// has passed, the last `Err` is returned: it says what was still missing. `attempt` always
/// runs at least once, also when the deadline has passed already.
pub async fn poll_until<T, E, F, Fut>(
    deadline: Instant,
    interval: Duration,
    mut attempt: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(interval).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_success_or_the_last_error_after_the_deadline() {
        let mut calls = 0;
        let r: Result<u32, u32> = poll_until(
            Instant::now() + Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                calls += 1;
                let n = calls;
                async move { if n == 3 { Ok(n) } else { Err(n) } }
            },
        )
        .await;
        assert_eq!(r, Ok(3));
        let mut calls = 0;
        let r: Result<(), u32> = poll_until(Instant::now(), Duration::from_millis(1), || {
            calls += 1;
            let n = calls;
            async move { Err(n) }
        })
        .await;
        assert_eq!(
            r,
            Err(1),
            "one attempt even past the deadline, its error returned"
        );
    }
}
