//! Results: collected per section (rows × three columns), printed as tables, saved as JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};

use crate::measure::{Col, Kind, Metric};

#[derive(Debug, Clone)]
pub enum Cell {
    Empty,
    Value(f64),
    Error(String),
}

#[derive(Debug, Clone)]
pub struct Row {
    pub key: String,
    pub name: String,
    pub unit: &'static str,
    pub kind: Kind,
    pub cells: [Cell; 3],
    pub reqs: [Option<f64>; 3],
    pub spread: [Option<(f64, f64)>; 3],
}

#[derive(Debug)]
pub struct Section {
    pub title: String,
    /// Column names; [0] is the baseline the ratios divide by.
    pub columns: [&'static str; 3],
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Section {
    pub fn new(title: &str, columns: [&'static str; 3]) -> Self {
        Section {
            title: title.into(),
            columns,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn row(&mut self, key: &str, name: &str, unit: &'static str, kind: Kind) -> &mut Row {
        if let Some(i) = self.rows.iter().position(|r| r.key == key) {
            return &mut self.rows[i];
        }
        self.rows.push(Row {
            key: key.into(),
            name: name.into(),
            unit,
            kind,
            cells: [Cell::Empty, Cell::Empty, Cell::Empty],
            reqs: [None; 3],
            spread: [None; 3],
        });
        self.rows.last_mut().expect("just pushed")
    }

    /// Files a workload's outcome under column `col`; a failure lands on the `key` row.
    pub fn record(&mut self, col: Col, key: &str, name: &str, outcome: Result<Vec<Metric>>) {
        match outcome {
            Ok(metrics) => {
                for m in metrics {
                    let row = self.row(&m.key, &m.name, m.unit, m.kind);
                    row.cells[col as usize] = Cell::Value(m.value);
                    row.reqs[col as usize] = m.req_per_op;
                    row.spread[col as usize] = m.spread;
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                eprintln!(
                    "litefs-py-bench: {name} [{}]: {msg}",
                    self.columns[col as usize]
                );
                // A workload's first metric key is its row key by convention (see callers).
                let row = self.row(key, name, "", Kind::Info);
                row.cells[col as usize] = Cell::Error(msg);
            }
        }
    }

    pub fn value(&self, key: &str, col: Col) -> Option<f64> {
        let r = self.rows.iter().find(|r| r.key == key)?;
        match r.cells[col as usize] {
            Cell::Value(v) => Some(v),
            _ => None,
        }
    }

    /// Adds "what the shim adds" rows: shim minus baseline of a latency row, per shim column;
    /// with `per_request`, divided by the FUSE requests that operation sent (when it sent any),
    /// which is the cost of one round trip through the shim.
    pub fn add_delta(&mut self, src: &str, key: &str, name: &str, per_request: bool) {
        let Some(base) = self.value(src, Col::Base) else {
            return;
        };
        let Some(src_row) = self.rows.iter().find(|r| r.key == src) else {
            return;
        };
        let vals: Vec<_> = [Col::Passthrough, Col::Symlink]
            .iter()
            .map(|&c| {
                let added = self.value(src, c)? - base;
                match src_row.reqs[c as usize] {
                    _ if !per_request => Some(added),
                    Some(r) if r >= 0.5 => Some(added / r),
                    _ => None,
                }
            })
            .collect();
        let row = self.row(key, name, "µs", Kind::Info);
        for (i, v) in vals.into_iter().enumerate() {
            if let Some(v) = v {
                row.cells[i + 1] = Cell::Value(v);
            }
        }
    }

    pub fn ratio(row: &Row, col: usize) -> Option<f64> {
        if row.kind == Kind::Info {
            return None;
        }
        match (&row.cells[0], &row.cells[col]) {
            (Cell::Value(b), Cell::Value(v)) if *b != 0.0 => Some(v / b),
            _ => None,
        }
    }

    pub fn print(&self) {
        println!("\n{}", self.title);
        let head = [
            "workload",
            self.columns[0],
            self.columns[1],
            "ratio",
            self.columns[2],
            "ratio",
            "unit",
        ];
        let mut lines = vec![head.map(String::from).to_vec()];
        let mut errors = Vec::new();
        for r in &self.rows {
            let mut cell = |i: usize| match &r.cells[i] {
                Cell::Empty => "-".to_string(),
                Cell::Value(v) => fmt_num(*v),
                Cell::Error(e) => {
                    errors.push(format!("{} [{}]: {e}", r.name, self.columns[i]));
                    format!("ERR{}", errors.len())
                }
            };
            let (c0, c1, c2) = (cell(0), cell(1), cell(2));
            let ratio = |i| Self::ratio(r, i).map_or("-".into(), |x| format!("{x:.2}x"));
            lines.push(vec![
                r.name.clone(),
                c0,
                c1,
                ratio(1),
                c2,
                ratio(2),
                r.unit.to_string(),
            ]);
        }
        print_aligned(&lines);
        let reqs: Vec<_> = self
            .rows
            .iter()
            .filter(|r| r.reqs[1].is_some() || r.reqs[2].is_some())
            .map(|r| {
                let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.2}"));
                vec![r.name.clone(), f(r.reqs[1]), f(r.reqs[2])]
            })
            .collect();
        if !reqs.is_empty() {
            println!(
                "\nFUSE requests reaching the shim daemon per operation ({})",
                self.title
            );
            let mut lines = vec![vec![
                "workload".into(),
                self.columns[1].into(),
                self.columns[2].into(),
            ]];
            lines.extend(reqs);
            print_aligned(&lines);
        }
        for (i, e) in errors.iter().enumerate() {
            println!("ERR{}: {e}", i + 1);
        }
        for r in &self.rows {
            for (i, sp) in r.spread.iter().enumerate() {
                if let Some((lo, hi)) = sp.filter(|(lo, hi)| *hi > 1.5 * lo) {
                    let (lo, hi) = (fmt_num(lo), fmt_num(hi));
                    println!(
                        "unsteady: {} [{}]: slices ranged {lo}..{hi} {}",
                        r.name, self.columns[i], r.unit
                    );
                }
            }
        }
        for n in &self.notes {
            println!("note: {n}");
        }
    }

    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut values = BTreeMap::new();
                let mut errors = BTreeMap::new();
                let mut ratios = BTreeMap::new();
                let mut reqs = BTreeMap::new();
                let mut spread = BTreeMap::new();
                for (i, col) in self.columns.iter().enumerate() {
                    let v = match r.cells[i] {
                        Cell::Value(v) => Some(v),
                        _ => None,
                    };
                    values.insert(*col, v);
                    if let Some(sp) = r.spread[i] {
                        spread.insert(*col, [sp.0, sp.1]);
                    }
                    if let Cell::Error(e) = &r.cells[i] {
                        errors.insert(*col, e.clone());
                    }
                    if i > 0 {
                        ratios.insert(*col, Self::ratio(r, i));
                        reqs.insert(*col, r.reqs[i]);
                    }
                }
                json!({
                    "key": r.key, "name": r.name, "unit": r.unit, "kind": r.kind,
                    "values": values, "ratio_to_baseline": ratios,
                    "fuse_requests_per_op": reqs, "slice_rate_min_max": spread, "errors": errors,
                })
            })
            .collect();
        json!({ "title": self.title, "columns": self.columns, "rows": rows, "notes": self.notes })
    }
}

fn fmt_num(v: f64) -> String {
    // A difference of two medians can land a hair below zero; "-0.00" would suggest a gain.
    let v = if v.abs() < 0.005 { 0.0 } else { v };
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn print_aligned(lines: &[Vec<String>]) {
    let n = lines[0].len();
    let width: Vec<usize> = (0..n)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (li, l) in lines.iter().enumerate() {
        let mut out = String::new();
        for (i, c) in l.iter().enumerate() {
            let pad = width[i] - c.chars().count();
            // Names left-aligned, numbers right-aligned so magnitudes line up.
            if i == 0 || i == n - 1 {
                out.push_str(c);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str(&" ".repeat(pad));
                out.push_str(c);
            }
            out.push_str("  ");
        }
        println!("{}", out.trim_end());
        if li == 0 {
            println!("{}", "-".repeat(width.iter().sum::<usize>() + 2 * (n - 1)));
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub nproc: usize,
    pub cpu: Option<String>,
    pub mem_total_mib: Option<u64>,
    pub bench_dir: String,
    pub bench_dir_fstype: Option<String>,
    pub litefs_py: String,
    pub litefs_py_binary: String,
    pub sqlite: String,
    pub litefs: Option<String>,
}

/// The `machine` object of a cluster benchmark's JSON: this host and the litefs-py binary
/// measured (`version`: its `version` output).
pub fn machine(version: &str, binary: &Path) -> serde_json::Map<String, Value> {
    let v = json!({
        "kernel": crate::sys::kernel_release(),
        "nproc": crate::sys::online_cpus(),
        "cpu": crate::sys::cpu_model(),
        "mem_total_mib": crate::sys::mem_total_kib().map(|k| k >> 10),
        "litefs_py": version,
        "litefs_py_binary": binary.display().to_string(),
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    }
}

/// Prints the error of each kill that had one (numbered from 1) and why the run stopped early.
pub fn print_kill_errors<'a>(
    errors: impl IntoIterator<Item = Option<&'a String>>,
    aborted: Option<&String>,
) {
    for (i, e) in errors.into_iter().enumerate() {
        if let Some(e) = e {
            println!("kill {}: {e}", i + 1);
        }
    }
    if let Some(e) = aborted {
        println!("run stopped early: {e}");
    }
}

/// Writes `<prefix>-<unix_time>.json` and `<prefix>-latest.json` in `dir`; returns the first.
pub fn write_json(dir: &Path, prefix: &str, unix_time: u64, doc: &Value) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(doc)? + "\n";
    let path = dir.join(format!("{prefix}-{unix_time}.json"));
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    let latest = format!("{prefix}-latest.json");
    std::fs::write(dir.join(&latest), &text).with_context(|| format!("writing {latest}"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_deltas() {
        let mut s = Section::new("t", ["direct", "passthrough", "symlink"]);
        let m = |v| {
            Ok(vec![Metric::new(
                "stat_p50",
                "stat",
                "µs",
                Kind::Latency,
                v,
            )])
        };
        s.record(Col::Base, "stat_p50", "stat", m(2.0));
        s.record(Col::Passthrough, "stat_p50", "stat", m(10.0));
        s.record(
            Col::Symlink,
            "stat_p50",
            "stat",
            Err(anyhow::anyhow!("boom")),
        );
        assert_eq!(Section::ratio(&s.rows[0], 1), Some(5.0));
        assert_eq!(Section::ratio(&s.rows[0], 2), None);
        s.add_delta("stat_p50", "stat_added", "added", false);
        assert_eq!(s.value("stat_added", Col::Passthrough), Some(8.0));
        assert_eq!(s.value("stat_added", Col::Symlink), None);
        let j = s.to_json();
        assert_eq!(j["rows"][0]["errors"]["symlink"], "boom");
    }
}
