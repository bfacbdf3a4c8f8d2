//! The nemesis's table. Every acknowledged write, double-primary sample and loss is attributed
//! to the fault whose window it fell in: from that fault's start to the next fault's start
//! (before the first fault: "none").

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::faults::Kind;
use crate::observe::{Ack, Sampled};

/// One injected fault and its aftermath.
pub struct Fault {
    pub kind: Kind,
    pub node: u64,
    pub was_primary: bool,
    pub at: Instant,
    /// When the fault was undone (SIGCONT, thaw, restart, the handoff command returned).
    pub ended: Instant,
    /// The first write acknowledged after `at`.
    pub first_ack: Option<Instant>,
    /// A write was acknowledged after `ended` within the recovery bound.
    pub recovered_after_end: bool,
    pub note: String,
}

impl Fault {
    /// Time without a writable primary after the fault began (to the first acknowledged write).
    pub fn unavailable(&self) -> Option<Duration> {
        self.first_ack.map(|a| a - self.at)
    }

    pub fn line(&self, t0: Instant) -> String {
        format!(
            "{:>7.1}s {:<21} node {}{} for {:.1}s; writable again after {}{}",
            (self.at - t0).as_secs_f64(),
            self.kind.name(),
            self.node,
            if self.was_primary { " (primary)" } else { "" },
            (self.ended - self.at).as_secs_f64(),
            self.unavailable()
                .map_or("never (within the bound)".to_string(), |d| format!(
                    "{:.2}s",
                    d.as_secs_f64()
                )),
            if self.note.is_empty() {
                String::new()
            } else {
                format!(" [{}]", self.note)
            }
        )
    }
}

pub struct Report {
    pub seed: u64,
    /// When the schedule started, by the monotonic clock and by the wall clock (the nodes'
    /// logs are stamped in UTC).
    pub t0: Instant,
    pub t0_wall: std::time::SystemTime,
    pub duration: Duration,
    pub faults: Vec<Fault>,
    pub acks: Vec<Ack>,
    /// The ids in the final primary's table.
    pub present: BTreeSet<i64>,
    pub sampled: Sampled,
    pub problems: Vec<String>,
}

#[derive(Default)]
struct Row {
    count: usize,
    on_primary: usize,
    worst: Option<Duration>,
    never: usize,
    info_doubles: usize,
    role_doubles: usize,
    acked: usize,
    lost: usize,
}

impl Report {
    /// `t` on the wall clock, `hh:mm:ss.mmm` UTC.
    fn utc(&self, t: Instant) -> String {
        let wall = self.t0_wall + (t - self.t0);
        let ms = wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let s = (ms / 1000) % 86_400;
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            s / 3600,
            (s / 60) % 60,
            s % 60,
            ms % 1000
        )
    }

    /// The fault whose window `t` falls in.
    fn window(&self, t: Instant) -> Option<&Fault> {
        self.faults.iter().rev().find(|f| f.at <= t)
    }

    /// Prints the table; returns whether an invariant failed (a double primary, or a write
    /// acknowledged in a handoff's window lost).
    pub fn print(&self) -> bool {
        let mut rows: BTreeMap<Option<Kind>, Row> = BTreeMap::new();
        for f in &self.faults {
            let r = rows.entry(Some(f.kind)).or_default();
            r.count += 1;
            r.on_primary += usize::from(f.was_primary);
            match f.unavailable() {
                Some(d) => r.worst = Some(r.worst.map_or(d, |w| w.max(d))),
                None => r.never += 1,
            }
            r.never += usize::from(f.unavailable().is_some() && !f.recovered_after_end);
        }
        for t in &self.sampled.info_doubles {
            rows.entry(self.window(*t).map(|f| f.kind))
                .or_default()
                .info_doubles += 1;
        }
        for t in &self.sampled.role_doubles {
            rows.entry(self.window(*t).map(|f| f.kind))
                .or_default()
                .role_doubles += 1;
        }
        let mut lost_ids = Vec::new();
        for a in &self.acks {
            let r = rows.entry(self.window(a.at).map(|f| f.kind)).or_default();
            r.acked += 1;
            if !self.present.contains(&a.id) {
                r.lost += 1;
                lost_ids.push(format!("{}@node{}", a.id, a.node));
            }
        }

        println!();
        println!(
            "litefs-nemesis: seed {}, {:.0} s, {} faults, 3 nodes of litefs-py run with LiteFS",
            self.seed,
            self.duration.as_secs_f64(),
            self.faults.len()
        );
        println!(
            "{:<22} {:>6} {:>10} {:>22} {:>10} {:>8} {:>8} {:>8} {:>6}",
            "fault",
            "count",
            "on primary",
            "longest unwritable (s)",
            "not healed",
            "2x /info",
            "2x .role",
            "acked",
            "lost"
        );
        for (kind, r) in &rows {
            println!(
                "{:<22} {:>6} {:>10} {:>22} {:>10} {:>8} {:>8} {:>8} {:>6}",
                kind.map_or("(before any fault)", Kind::name),
                r.count,
                r.on_primary,
                r.worst
                    .map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64())),
                r.never,
                r.info_doubles,
                r.role_doubles,
                r.acked,
                r.lost
            );
        }
        let lost_in_handoffs = rows.get(&Some(Kind::Handoff)).map_or(0, |r| r.lost);
        let doubles = self.sampled.info_doubles.len() + self.sampled.role_doubles.len();
        println!();
        println!(
            "double-primary samples: /info {} and .role {} of {} rounds",
            self.sampled.info_doubles.len(),
            self.sampled.role_doubles.len(),
            self.sampled.rounds
        );
        println!(
            "acknowledged writes: {}; lost in handoffs: {lost_in_handoffs}; lost in total: {}",
            self.acks.len(),
            lost_ids.len()
        );
        if !lost_ids.is_empty() {
            let shown: Vec<&str> = lost_ids.iter().take(20).map(String::as_str).collect();
            println!(
                "lost ids@acknowledging node (first 20): {}",
                shown.join(" ")
            );
        }
        for e in self
            .sampled
            .info_examples
            .iter()
            .map(|e| format!("/info: {e}"))
            .chain(
                self.sampled
                    .role_examples
                    .iter()
                    .map(|e| format!(".role: {e}")),
            )
            .take(10)
        {
            println!("  {e}");
        }
        // When each double-primary sample and each lost write happened, to find it in the
        // nodes' logs.
        let when = self
            .sampled
            .info_doubles
            .iter()
            .map(|t| ("/info", *t))
            .chain(self.sampled.role_doubles.iter().map(|t| (".role", *t)));
        let lost = self
            .acks
            .iter()
            .filter(|a| !self.present.contains(&a.id))
            .map(|a| ("lost write", a.at));
        for (what, t) in when.chain(lost).take(20) {
            println!(
                "  {what} at {:.3} s ({} UTC), in the window of: {}",
                (t - self.t0).as_secs_f64(),
                self.utc(t),
                self.window(t)
                    .map_or("no fault".into(), |f| f.line(self.t0))
            );
        }
        for p in &self.problems {
            println!("problem: {p}");
        }
        let failed = doubles > 0 || lost_in_handoffs > 0;
        println!(
            "invariants (no double primary, no write acknowledged in a handoff lost): {}",
            if failed { "VIOLATED" } else { "held" }
        );
        failed
    }
}
