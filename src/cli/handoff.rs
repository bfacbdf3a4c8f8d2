//! `litefs-py handoff [--to ID]`: the planned move of the raft leadership and the LiteFS
//! primary, via the local node (which forwards it to the leader).

use super::client::DaemonClient;
use crate::config::Config;

use super::args::HandoffArgs;

pub fn run(args: HandoffArgs) -> anyhow::Result<()> {
    let config = Config::find_and_load(args.config.as_deref())?;
    let client = DaemonClient::new(&config.node.http_addr, config.secret()?, config.tls()?)?;
    if args.if_primary {
        // Not atomic with the handoff: a primary that changes in between is moved by the
        // leader's own handoff rules, or by a failover; a stop hook needs no more.
        let status = client.status(false)?;
        if status.role != "primary" {
            println!(
                "node {} is {}, not the primary: nothing to hand off",
                status.node_id, status.role
            );
            return Ok(());
        }
    }
    let outcome = client.handoff(args.to)?;
    println!("{}", outcome.message);
    let steps: Vec<String> = outcome
        .steps
        .iter()
        .map(|s| format!("{} {} ms", s.what, s.ms))
        .collect();
    println!("steps: {}", steps.join(", "));
    for (db, pos) in &outcome.positions {
        println!("{db}: handed over at {pos}");
    }
    Ok(())
}
