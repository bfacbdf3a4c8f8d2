//! The `litefs-py` command as a library function, [`cli_main`], for callers that cannot run the
//! binary: the Python package's `litefs-py` script calls it through its extension module (a
//! wheel cannot ship a binary next to a PyO3 extension, PyO3/maturin#368).
//!
//! The binary's `main` is this function too, so both run the same code.
//!
//! - [`args`]: the clap definitions; one module per command ([`mount`], [`run`], [`witness`],
//!   [`status`], [`cluster`], [`handoff`]; `config` is here); [`client`]: the HTTP client of
//!   the local node's `node.http-addr`.

mod args;
mod client;
mod cluster;
mod handoff;
mod mount;
mod run;
mod status;
mod witness;

use std::ffi::OsString;

use clap::Parser;

use self::args as cli;
use crate::config::{Config, ConfigError};
use crate::litefs::process::{litefs_binary, litefs_version};

/// Runs the command line `args` (`args[0]` is the program name) and returns the process exit
/// status: 0, 1 with one line on stderr naming the problem, or clap's status for `--help`,
/// `--version` and usage errors. Never calls `std::process::exit`.
pub fn cli_main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    init_logging(cli.log_level.as_deref());
    let result = match cli.command {
        cli::Command::Mount(args) => mount::run(args),
        // Everything `run` started has stopped by the time it returns.
        cli::Command::Run(args) => match run::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        cli::Command::Witness(args) => witness::run(args),
        cli::Command::Status(args) => status::run(args),
        cli::Command::Cluster(cmd) => cluster::run(cmd),
        cli::Command::Handoff(args) => handoff::run(args),
        cli::Command::Config(cli::ConfigCommand::Check(args)) => config_check(args),
        cli::Command::Config(cli::ConfigCommand::Litefs(args)) => config_litefs(args),
        cli::Command::Version => {
            println!("litefs-py {}", env!("CARGO_PKG_VERSION"));
            println!("expects LiteFS {}", cli::LITEFS_VERSION);
            // The LiteFS that `run` would start with no `litefs.binary` set.
            match litefs_binary(None) {
                Ok(bin) => match litefs_version(&bin) {
                    Some(v) => println!("LiteFS: {} ({v})", bin.display()),
                    None => println!("LiteFS: {} (its version cannot be read)", bin.display()),
                },
                Err(e) => println!("LiteFS: none found ({e})"),
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            // One line naming the problem; the chain of causes is in the context already.
            eprintln!("litefs-py: {e:#}");
            1
        }
    }
}

fn config_check(args: cli::ConfigArgs) -> anyhow::Result<()> {
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
    let path = Config::find(args.config.as_deref())?.ok_or(ConfigError::NotFound)?;
    let config = Config::load(&path)?;
    print!("{}", crate::litefs::yaml::generate(&config)?);
    Ok(())
}

/// Logs to stderr. A second call in one process (a caller running several commands) keeps the
/// first subscriber.
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
