//! `litefs-py`: high availability for SQLite apps on LiteFS, without Consul.

mod cli;
mod cmd_cluster;
mod cmd_mount;
mod cmd_status;
mod cmd_witness;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    init_logging(cli.log_level.as_deref());
    let result = match cli.command {
        cli::Command::Mount(args) => cmd_mount::run(args),
        cli::Command::Witness(args) => cmd_witness::run(args),
        cli::Command::Status(args) => cmd_status::run(args),
        cli::Command::Cluster(cmd) => cmd_cluster::run(cmd),
        cli::Command::Config(cli::ConfigCommand::Check(args)) => config_check(args),
        cli::Command::Config(cli::ConfigCommand::Litefs(args)) => config_litefs(args),
        cli::Command::Version => {
            println!("litefs-py {}", env!("CARGO_PKG_VERSION"));
            println!("expects LiteFS {}", cli::LITEFS_VERSION);
            Ok(())
        }
    };
    if let Err(e) = result {
        // One line naming the problem; the chain of causes is in the context already.
        eprintln!("litefs-py: {e:#}");
        std::process::exit(1);
    }
}

fn config_check(args: cli::ConfigArgs) -> anyhow::Result<()> {
    use litefs_py::config::{Config, ConfigError};
    let path = Config::find(args.config.as_deref())?.ok_or(ConfigError::NotFound)?;
    let config = Config::load(&path)?;
    config.secret()?;
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    eprintln!("{}: ok", path.display());
    print!("{}", config.to_yaml());
    Ok(())
}

fn config_litefs(args: cli::ConfigArgs) -> anyhow::Result<()> {
    use litefs_py::config::{Config, ConfigError};
    let path = Config::find(args.config.as_deref())?.ok_or(ConfigError::NotFound)?;
    let config = Config::load(&path)?;
    print!("{}", litefs_py::litefs_config::generate(&config)?);
    Ok(())
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        // fuser warns when the unmount it attempts finds our detach already done, and errors
        // when a reply finds its requester gone (killed, or the connection aborted): not news.
        // openraft logs every vote at info and every failed heartbeat (10/s per dead peer) at
        // warn; litefs-py reports peers, roles and elections itself (log, /status, /metrics).
        None => EnvFilter::try_from_env("LITEFS_PY_LOG").unwrap_or_else(|_| {
            EnvFilter::new("info,fuser::session=error,fuser::reply=off,openraft=error")
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
