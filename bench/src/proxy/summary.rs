//! What one case of the proxy benchmark measured (its rounds pooled), and how two cases compare:
//! the throughput ratio and what the slower one adds at p50 and p99. Pure arithmetic, so that it
//! is unit-tested apart from the clusters.

use serde::Serialize;

use crate::measure::percentile;

/// One timed round of one case: the answered requests' latencies and what went wrong.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Latency of each request answered with a 2xx, in µs (unsorted).
    pub latencies_us: Vec<f64>,
    /// Requests answered otherwise, or not at all.
    pub errors: u64,
    /// The first of those, as the client saw it.
    pub first_error: Option<String>,
    /// From the moment every client started to the moment the last one stopped.
    pub elapsed_s: f64,
}

impl Round {
    /// Answered requests per second of this round.
    pub fn rate(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed_s.max(1e-9)
    }
}

/// A case's rounds pooled: the rate over all rounds, latency percentiles over all requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Requests answered with a 2xx.
    pub ok: usize,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Answered requests per second, all rounds together.
    pub rate: f64,
    /// Each round's rate: how much the machine moved the figure.
    pub round_rates: Vec<f64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    /// `None` when no request of any round was answered: there is no figure to give.
    pub fn of(rounds: &[Round]) -> Option<Summary> {
        let mut all: Vec<f64> = rounds
            .iter()
            .flat_map(|r| r.latencies_us.iter().copied())
            .collect();
        if all.is_empty() {
            return None;
        }
        all.sort_by(f64::total_cmp);
        let ms = |us: f64| round3(us / 1000.0);
        let elapsed: f64 = rounds.iter().map(|r| r.elapsed_s).sum();
        Some(Summary {
            ok: all.len(),
            errors: rounds.iter().map(|r| r.errors).sum(),
            first_error: rounds.iter().find_map(|r| r.first_error.clone()),
            rate: round3(all.len() as f64 / elapsed.max(1e-9)),
            round_rates: rounds.iter().map(|r| round3(r.rate())).collect(),
            p50_ms: ms(percentile(&all, 50.0)),
            p90_ms: ms(percentile(&all, 90.0)),
            p99_ms: ms(percentile(&all, 99.0)),
            max_ms: ms(all[all.len() - 1]),
            mean_ms: ms(all.iter().sum::<f64>() / all.len() as f64),
        })
    }

    /// One line for the console: rate and latencies.
    pub fn line(&self) -> String {
        let errors = if self.errors > 0 {
            format!("  ({} errors)", self.errors)
        } else {
            String::new()
        };
        format!(
            "{:>9.0} req/s  p50 {:>7.3}  p99 {:>7.3}  max {:>7.3} ms  n={}{errors}",
            self.rate, self.p50_ms, self.p99_ms, self.max_ms, self.ok
        )
    }
}

/// `case` against `base`, measured in the same run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// case rate / base rate (1.0: as fast; the read target is >= 0.95).
    pub rate_ratio: f64,
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    /// case - base, in ms (what the case adds to a request).
    pub p50_added_ms: f64,
    pub p99_added_ms: f64,
}

impl Comparison {
    pub fn of(case: &Summary, base: &Summary) -> Comparison {
        let ratio = |a: f64, b: f64| if b > 0.0 { round3(a / b) } else { f64::NAN };
        Comparison {
            rate_ratio: ratio(case.rate, base.rate),
            p50_ratio: ratio(case.p50_ms, base.p50_ms),
            p99_ratio: ratio(case.p99_ms, base.p99_ms),
            p50_added_ms: round3(case.p50_ms - base.p50_ms),
            p99_added_ms: round3(case.p99_ms - base.p99_ms),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "rate x{:.3}  p50 {:+.3} ms (x{:.2})  p99 {:+.3} ms (x{:.2})",
            self.rate_ratio, self.p50_added_ms, self.p50_ratio, self.p99_added_ms, self.p99_ratio
        )
    }
}

/// What a case adds over its own cluster's floor (the app straight), minus what the same case
/// adds over the floor of another cluster: the difference between two clusters (two
/// durabilities) with each one's floor taken out, so that a cluster that was slower all over
/// (the machine's load moved between them) does not count as the durability's cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FloorAdjusted {
    pub p50_added_ms: f64,
    pub p99_added_ms: f64,
}

impl FloorAdjusted {
    pub fn of(case: &Summary, floor: &Summary, base: &Summary, base_floor: &Summary) -> Self {
        let over = |c: &Summary, f: &Summary| (c.p50_ms - f.p50_ms, c.p99_ms - f.p99_ms);
        let ((c50, c99), (b50, b99)) = (over(case, floor), over(base, base_floor));
        FloorAdjusted {
            p50_added_ms: round3(c50 - b50),
            p99_added_ms: round3(c99 - b99),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "over each cluster's floor: p50 {:+.3} ms  p99 {:+.3} ms",
            self.p50_added_ms, self.p99_added_ms
        )
    }
}

/// Three decimals: µs resolution in ms, and JSON without float noise.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(us: &[f64], errors: u64, elapsed_s: f64) -> Round {
        Round {
            latencies_us: us.to_vec(),
            errors,
            first_error: (errors > 0).then(|| "503".to_string()),
            elapsed_s,
        }
    }

    #[test]
    fn rounds_pool_into_one_summary() {
        // 100 requests of 1..=100 ms over two rounds of 1 s and 3 s.
        let a: Vec<f64> = (1..=40).map(|i| f64::from(i) * 1000.0).collect();
        let b: Vec<f64> = (41..=100).rev().map(|i| f64::from(i) * 1000.0).collect();
        let s = Summary::of(&[round(&a, 0, 1.0), round(&b, 2, 3.0)]).unwrap();
        assert_eq!(s.ok, 100);
        assert_eq!(s.errors, 2);
        assert_eq!(s.first_error.as_deref(), Some("503"));
        assert_eq!(s.rate, 25.0);
        assert_eq!(s.round_rates, vec![40.0, 20.0]);
        assert_eq!(s.p50_ms, 51.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(s.mean_ms, 50.5);
    }

    #[test]
    fn no_answer_is_no_figure() {
        assert_eq!(Summary::of(&[round(&[], 5, 1.0)]), None);
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn comparison_gives_ratio_and_added_time() {
        let base = Summary::of(&[round(&[1000.0, 2000.0, 3000.0], 0, 1.0)]).unwrap();
        let case = Summary::of(&[round(&[1500.0, 2500.0], 0, 1.0)]).unwrap();
        let c = Comparison::of(&case, &base);
        assert_eq!(c.rate_ratio, 0.667);
        // p50: nearest rank of [1.5, 2.5] is 2.5 ms; of [1, 2, 3] it is 2 ms.
        assert_eq!(c.p50_added_ms, 0.5);
        assert_eq!(c.p50_ratio, 1.25);
        assert_eq!(c.p99_added_ms, -0.5);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["rate_ratio"], 0.667);
    }

    #[test]
    fn floor_adjusted_takes_each_clusters_floor_out() {
        let s = |ms: f64| Summary::of(&[round(&[ms * 1000.0], 0, 1.0)]).unwrap();
        // Replicated: 25 ms through the proxy over a 21 ms floor (+4); async: 18 over 14 (+4).
        let f = FloorAdjusted::of(&s(25.0), &s(21.0), &s(18.0), &s(14.0));
        assert_eq!(f.p50_added_ms, 0.0);
        let f = FloorAdjusted::of(&s(30.0), &s(20.0), &s(18.0), &s(14.0));
        assert_eq!((f.p50_added_ms, f.p99_added_ms), (6.0, 6.0));
    }
}
