//! `litefs-py status`: the cluster as the local node sees it.

use litefs_py::client::DaemonClient;
use litefs_py::config::Config;
use litefs_py::raft::status::StatusReport;

use crate::cli::StatusArgs;

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let config = Config::find_and_load(args.config.as_deref())?;
    let client = DaemonClient::new(&config.node.http_addr, None)?;
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
    out
}
