//! `litefs-py status`: the cluster as the local node sees it.

use std::collections::BTreeMap;

use super::client::DaemonClient;
use crate::config::Config;
use crate::litefs::lag::DbPosition;
use crate::node::{MemberLiteFs, StatusReport};

use super::args::StatusArgs;

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let config = Config::find_and_load(args.config.as_deref())?;
    let client = DaemonClient::new(&config.node.http_addr, None, config.tls()?)?;
    let status = client.status(true)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", table(&status));
    }
    Ok(())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn age(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_string(), |ms| format!("{ms}ms"))
}

/// Up to this many databases are listed one by one in a row; more are summarised.
const LIST_DATABASES: usize = 3;

/// The LITEFS cell of a member.
fn litefs_role(m: Option<&MemberLiteFs>) -> &'static str {
    match m {
        None | Some(MemberLiteFs::None) => "-",
        Some(MemberLiteFs::Unknown { .. }) => "unknown",
        Some(MemberLiteFs::Known {
            is_primary: true, ..
        }) => "primary",
        Some(MemberLiteFs::Known { .. }) => "replica",
    }
}

/// One database in a row: its TXID, then (on a replica) how far behind the primary it is.
fn database(db: &str, p: &DbPosition, is_primary: bool) -> String {
    let txid = p.txid.map_or_else(|| "none".to_string(), |t| t.to_string());
    if is_primary {
        return format!("{db} {txid}");
    }
    let lag = match p.lag {
        _ if p.diverged => "DIVERGED".to_string(),
        Some(l) if l < 0 => format!("ahead {}", l.unsigned_abs()),
        Some(l) => format!("lag {l}"),
        None => "lag ?".to_string(),
    };
    format!("{db} {txid} {lag}")
}

/// The POSITIONS cell: every database (TXID and lag) when there are few, else a summary with
/// the largest lag.
fn positions(m: Option<&MemberLiteFs>) -> String {
    let Some(MemberLiteFs::Known {
        is_primary,
        databases,
    }) = m
    else {
        return "-".into();
    };
    if databases.is_empty() {
        return "no databases".into();
    }
    if databases.len() <= LIST_DATABASES {
        return databases
            .iter()
            .map(|(db, p)| database(db, p, *is_primary))
            .collect::<Vec<_>>()
            .join(", ");
    }
    summary(databases, *is_primary)
}

fn summary(databases: &BTreeMap<String, DbPosition>, is_primary: bool) -> String {
    let mut out = format!("{} dbs", databases.len());
    if is_primary {
        return out;
    }
    let behind: Vec<(&String, i64)> = databases
        .iter()
        .filter_map(|(db, p)| p.lag.filter(|l| *l > 0).map(|l| (db, l)))
        .collect();
    // The largest lag; the first name on a tie.
    let worst = behind
        .iter()
        .fold(None, |best: Option<(&String, i64)>, (db, l)| match best {
            Some((_, b)) if b >= *l => best,
            _ => Some((db, *l)),
        });
    match worst {
        Some((db, l)) => out += &format!(", max lag {l} ({db}), {} behind", behind.len()),
        None if databases.values().any(|p| p.lag == Some(0)) => out += ", lag 0",
        None => {}
    }
    let count = |f: fn(&DbPosition) -> bool| databases.values().filter(|p| f(p)).count();
    for (n, what) in [
        (count(|p| p.lag.is_some_and(|l| l < 0)), "ahead"),
        (count(|p| p.lag.is_none()), "lag ?"),
        (count(|p| p.diverged), "DIVERGED"),
    ] {
        if n > 0 {
            out += &format!(", {n} {what}");
        }
    }
    out
}

/// The lines under the table that say why a LiteFS position or lag is unknown, and warn about
/// divergent histories.
fn litefs_notes(s: &StatusReport) -> String {
    let mut out = String::new();
    if let Some(why) = s.litefs.as_ref().and_then(|l| l.lag_unknown.as_ref()) {
        out += &format!("LiteFS lag unknown: {why}\n");
    }
    for m in &s.members {
        match &m.litefs {
            Some(MemberLiteFs::Unknown { reason }) => {
                out += &format!("node {}: LiteFS position unknown: {reason}\n", m.id);
            }
            Some(MemberLiteFs::Known { databases, .. }) => {
                for (db, p) in databases.iter().filter(|(_, p)| p.diverged) {
                    out += &format!(
                        "WARNING: node {}: {db} is at the primary's TXID {} with another checksum: its history differs from the primary's\n",
                        m.id,
                        opt(p.txid),
                    );
                }
            }
            _ => {}
        }
    }
    out
}

/// A readable summary, then one row per member.
pub fn table(s: &StatusReport) -> String {
    let mut out = format!(
        "node {} ({}){}: {}, raft {} term {}, leader {}, primary {}\n",
        s.node_id,
        s.hostname,
        if s.witness { " witness" } else { "" },
        s.role,
        s.raft_state,
        s.term,
        opt(s.leader_id),
        s.primary.as_deref().unwrap_or("unknown"),
    );
    out += &format!(
        "commit {} applied {} last log {}; quorum {}; since quorum ack {}, since leader contact {} (lease {}ms)\n",
        opt(s.commit_index),
        opt(s.last_applied),
        opt(s.last_log_index),
        if s.quorum_ok { "ok" } else { "NOT ok" },
        age(s.ms_since_quorum_ack),
        age(s.ms_since_leader_contact),
        s.lease_bound_ms,
    );
    if !s.initialized {
        out += "not initialized: waiting to be added to a cluster (or for the bootstrap node)\n";
    }
    // LiteFS columns only when the daemon reported them (an older daemon does not).
    let litefs = s.litefs.is_some();
    let mut rows = vec![vec![
        "ID".to_string(),
        "HOSTNAME".into(),
        "RAFT ADDR".into(),
        "MEMBER".into(),
        "LAST CONTACT".into(),
        "MATCHED".into(),
    ]];
    if litefs {
        rows[0].extend(["LITEFS".into(), "POSITIONS (TXID, LAG)".into()]);
    }
    for m in &s.members {
        let mut row = vec![
            format!("{}{}", m.id, if m.this_node { "*" } else { "" }),
            if m.hostname.is_empty() {
                "?".into()
            } else {
                m.hostname.clone()
            },
            m.raft_addr.clone(),
            if m.witness {
                format!("{} (witness)", m.role)
            } else {
                m.role.clone()
            },
            if m.this_node {
                "this node".into()
            } else {
                age(m.ms_since_contact)
            },
            opt(m.matched_index),
        ];
        if litefs {
            row.push(litefs_role(m.litefs.as_ref()).into());
            row.push(positions(m.litefs.as_ref()));
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out += &litefs_notes(s);
    for m in &s.members {
        if let Some(diff) = &m.timing_mismatch {
            out += &format!(
                "WARNING: node {} runs with other timing settings ({diff}); every node needs the same raft: section and lease.ttl\n",
                m.id
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_warns_about_a_member_with_other_timing_settings() {
        let member = |id: u64, mismatch: Option<&str>| {
            serde_json::json!({
                "id": id, "raft_addr": format!("10.0.0.{id}:20301"), "hostname": format!("node-{id}"),
                "role": "voter", "witness": false, "this_node": id == 1,
                "ms_since_contact": 12, "matched_index": 40, "timing_mismatch": mismatch,
            })
        };
        let report: StatusReport = serde_json::from_value(serde_json::json!({
            "node_id": 1, "hostname": "node-1", "witness": false, "role": "primary",
            "primary": "node-1", "raft_state": "Leader", "initialized": true, "term": 3,
            "leader_id": 1, "commit_index": 40, "last_applied": 40, "last_log_index": 40,
            "quorum_ok": true, "ms_since_quorum_ack": 20, "ms_since_leader_contact": null,
            "lease_bound_ms": 200,
            "members": [member(1, None), member(2, None), member(3, Some("lease.ttl 2s here, 10s there"))],
        }))
        .unwrap();
        let out = table(&report);
        let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("WARNING")).collect();
        assert_eq!(
            warnings,
            [
                "WARNING: node 3 runs with other timing settings (lease.ttl 2s here, 10s there); every node needs the same raft: section and lease.ttl"
            ]
        );
    }

    fn pos(txid: Option<u64>, lag: Option<i64>) -> DbPosition {
        DbPosition {
            txid,
            checksum: None,
            lag,
            diverged: false,
        }
    }

    /// Members 1 (this node, replica), 2 (primary), 3 (not answering) and 4 (a witness).
    fn litefs_report(replica_dbs: BTreeMap<String, DbPosition>) -> StatusReport {
        let member = |id: u64, litefs: MemberLiteFs| {
            serde_json::json!({
                "id": id, "raft_addr": format!("10.0.0.{id}:20301"), "hostname": format!("node-{id}"),
                "role": "voter", "witness": id == 4, "this_node": id == 1,
                "ms_since_contact": 12, "matched_index": 40, "litefs": litefs,
            })
        };
        let primary_dbs = BTreeMap::from([("app.db".to_string(), pos(Some(1234), Some(0)))]);
        serde_json::from_value(serde_json::json!({
            "node_id": 1, "hostname": "node-1", "witness": false, "role": "replica",
            "primary": "node-2", "raft_state": "Follower", "initialized": true, "term": 3,
            "leader_id": 2, "commit_index": 40, "last_applied": 40, "last_log_index": 40,
            "quorum_ok": true, "ms_since_quorum_ack": null, "ms_since_leader_contact": 20,
            "lease_bound_ms": 200,
            "members": [
                member(1, MemberLiteFs::Known { is_primary: false, databases: replica_dbs }),
                member(2, MemberLiteFs::Known { is_primary: true, databases: primary_dbs }),
                member(3, MemberLiteFs::Unknown { reason: "10.0.0.3:20301 did not answer within 1s".into() }),
                member(4, MemberLiteFs::None),
            ],
            "litefs": {"primary": 2, "asked_within_ms": 1000},
        }))
        .unwrap()
    }

    /// The member rows and the notes under them.
    fn rows(out: &str) -> Vec<&str> {
        out.lines().skip(2).collect()
    }

    #[test]
    fn each_member_shows_its_litefs_role_txids_and_lag() {
        let dbs = BTreeMap::from([
            ("app.db".to_string(), pos(Some(1230), Some(4))),
            ("new.db".to_string(), pos(None, Some(7))),
            ("old.db".to_string(), pos(Some(3), None)),
        ]);
        let out = table(&litefs_report(dbs));
        assert_eq!(
            rows(&out),
            [
                "ID  HOSTNAME  RAFT ADDR       MEMBER           LAST CONTACT  MATCHED  LITEFS   POSITIONS (TXID, LAG)",
                "1*  node-1    10.0.0.1:20301  voter            this node     40       replica  app.db 1230 lag 4, new.db none lag 7, old.db 3 lag ?",
                "2   node-2    10.0.0.2:20301  voter            12ms          40       primary  app.db 1234",
                "3   node-3    10.0.0.3:20301  voter            12ms          40       unknown  -",
                "4   node-4    10.0.0.4:20301  voter (witness)  12ms          40       -        -",
                "node 3: LiteFS position unknown: 10.0.0.3:20301 did not answer within 1s",
            ],
            "{out}"
        );
    }

    #[test]
    fn many_databases_are_summarised_by_the_largest_lag() {
        let mut dbs: BTreeMap<String, DbPosition> = (0..6)
            .map(|i| (format!("db{i}.db"), pos(Some(10), Some(0))))
            .collect();
        dbs.insert("db2.db".into(), pos(Some(5), Some(40)));
        dbs.insert("db4.db".into(), pos(Some(9), Some(1)));
        dbs.insert("db5.db".into(), pos(Some(11), Some(-1)));
        let mut diverged = pos(Some(10), Some(0));
        diverged.diverged = true;
        dbs.insert("db1.db".into(), diverged);
        let out = table(&litefs_report(dbs.clone()));
        assert!(
            out.contains("replica  6 dbs, max lag 40 (db2.db), 2 behind, 1 ahead, 1 DIVERGED\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "WARNING: node 1: db1.db is at the primary's TXID 10 with another checksum"
            ),
            "{out}"
        );
        // Caught up everywhere: lag 0.
        let level: BTreeMap<String, DbPosition> = (0..5)
            .map(|i| (format!("db{i}.db"), pos(Some(10), Some(0))))
            .collect();
        assert!(table(&litefs_report(level)).contains("replica  5 dbs, lag 0\n"));
    }

    #[test]
    fn an_unknown_lag_is_explained_and_an_older_daemon_gets_no_litefs_columns() {
        let mut report = litefs_report(BTreeMap::new());
        report.litefs.as_mut().unwrap().lag_unknown = Some("no LiteFS says it is primary".into());
        let out = table(&report);
        assert!(out.contains("replica  no databases\n"), "{out}");
        assert!(
            out.contains("LiteFS lag unknown: no LiteFS says it is primary\n"),
            "{out}"
        );
        report.litefs = None;
        for m in &mut report.members {
            m.litefs = None;
        }
        let out = table(&report);
        assert!(!out.contains("LITEFS") && !out.contains("unknown"), "{out}");
    }
}
