//! `litefs-py cluster add|remove`: membership changes via the local node.

use std::path::Path;

use super::client::DaemonClient;
use crate::config::Config;
use crate::raft::membership::MembershipOutcome;

use super::args::ClusterCommand;

pub fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    let outcome = match cmd {
        ClusterCommand::Add(args) => {
            client(args.config.as_deref())?.add(args.id, &args.raft_addr)?
        }
        ClusterCommand::Remove(args) => client(args.config.as_deref())?.remove(args.id)?,
    };
    print_outcome(&outcome);
    Ok(())
}

/// A client of the local node, with the secret membership changes need.
fn client(config: Option<&Path>) -> anyhow::Result<DaemonClient> {
    let config = Config::find_and_load(config)?;
    DaemonClient::new(&config.node.http_addr, config.secret()?, config.tls()?)
}

fn print_outcome(o: &MembershipOutcome) {
    let list = |ids: &[u64]| {
        if ids.is_empty() {
            "none".to_string()
        } else {
            ids.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    println!("{}", o.message);
    println!(
        "voters: {}; learners: {}",
        list(&o.voters),
        list(&o.learners)
    );
}
