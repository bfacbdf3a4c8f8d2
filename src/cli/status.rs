//! `litefs-py status`: the cluster as the local node sees it.

use super::client::DaemonClient;
use crate::config::Config;
use crate::node::StatusReport;

use super::args::StatusArgs;

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let config = Config::find_and_load(args.config.as_deref())?;
    let client = DaemonClient::new(&config.node.http_addr, None, config.tls()?)?;
    let status = client.status()?;
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
    let mut rows = vec![[
        "ID".to_string(),
        "HOSTNAME".into(),
        "RAFT ADDR".into(),
        "MEMBER".into(),
        "LAST CONTACT".into(),
        "MATCHED".into(),
    ]];
    for m in &s.members {
        rows.push([
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
        ]);
    }
    let widths: Vec<usize> = (0..6)
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
}
