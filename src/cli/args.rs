//! The command line. Parsing only: each command turns its arguments into typed options.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// The LiteFS release litefs-py is built and tested against.
pub const LITEFS_VERSION: &str = "v0.5.14";

#[derive(Debug, Parser)]
#[command(
    name = "litefs-py",
    version,
    about = "High availability for SQLite apps on LiteFS, without Consul"
)]
pub struct Cli {
    /// Log filter: error, warn, info, debug, trace, or a tracing directive such as
    /// `litefs_py_fuse=debug`. Defaults to $LITEFS_PY_LOG, else info.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount the shim over a lower dir (LiteFS's FUSE dir, or any directory) in the foreground.
    ///
    /// Everything passes through to the lower dir; `.primary`, `.role` and `.health` are
    /// answered by litefs-py. With a config file this node also runs its raft node (peers,
    /// status and metrics on node.http-addr) and the files follow the cluster, and it serves the
    /// lease API LiteFS follows on lease.addr (see `config litefs`); without one it is a
    /// one-node cluster and primary. SIGINT or SIGTERM unmounts and exits 0; if the
    /// process dies, a watchdog unmounts.
    Mount(MountArgs),
    /// The container entrypoint: raft, LiteFS, the shim, then CMD; stops them in reverse.
    ///
    /// Starts, in order: this node's raft node and the lease API on lease.addr (required: if it
    /// cannot listen, nothing starts), and the HTTP proxy on proxy.addr if `proxy:` is set
    /// (writes forwarded to the primary; docs/proxy.md); LiteFS (`litefs.binary mount -config FILE`, with the
    /// litefs.yml that `config litefs` prints, written to FILE = --litefs-config, else
    /// run.litefs-config, else litefs.yml inside cluster.data-dir, e.g.
    /// /var/lib/litefs-py/raft/litefs.yml), waiting up to 30 s for its FUSE mount at mount.lower and
    /// its HTTP API; the shim at mount.dir over mount.lower; and, once LiteFS is primary or has
    /// caught up with the primary, CMD with LITEFS_DIR=<mount.dir> added to its environment
    /// (stdin, stdout and stderr are passed on).
    ///
    /// On SIGTERM or SIGINT, a node whose LiteFS is primary first hands the primary to the
    /// freshest healthy replica, as `litefs-py handoff` does (writes pause about a second
    /// instead of a failover's several seconds without a primary), for up to
    /// run.stop-handoff-timeout (default 10 s); if that fails or times out, one line says so and
    /// the stop goes on. A second signal stops waiting for it. The same when CMD exits on its
    /// own on the primary (a crash): the replicas catch up with CMD's last writes before one
    /// takes over (a first signal stops waiting then). --no-handoff or
    /// run.handoff-on-stop: false skips it.
    ///
    /// The proxy stops first (requests in flight get 5 s). SIGTERM or SIGINT goes to CMD; CMD gets --grace to exit (then SIGKILL), then the
    /// shim is unmounted, then LiteFS is stopped (SIGTERM; SIGKILL and a lazy unmount if it
    /// does not exit), then raft. The same order when CMD exits, LiteFS exits, the shim is
    /// unmounted from outside, or raft or the lease API stops. SIGHUP, SIGUSR1 and SIGUSR2 are
    /// passed on to CMD. As PID 1 it reaps orphaned processes.
    ///
    /// Exit status: CMD's own (128 + N if a signal N killed it); 1 if litefs-py could not start
    /// (one line says why); 70 if LiteFS exited; 71 if the shim's mount was removed from
    /// outside; 72 if raft or the lease API stopped; 126/127 if CMD could not be executed / was
    /// not found; 128 + N if signal N stopped it before CMD started.
    Run(RunArgs),
    /// Run a raft voter only (no LiteFS, no FUSE): the third vote of a two-data-node cluster.
    ///
    /// A witness votes and is never primary: if it wins an election (its log the only complete
    /// one), it hands raft leadership to a data node at once. SIGINT or SIGTERM stops it.
    Witness(WitnessArgs),
    /// Show the cluster as the local node sees it (asks the daemon on node.http-addr).
    ///
    /// One row per member: its raft membership, last contact and matched log index, and its
    /// LiteFS: primary, replica, unknown, or - (no LiteFS: a witness, a `mount` node), with
    /// each database's TXID and how many transactions it is behind the primary's ("lag"; up to
    /// 3 databases listed, more summarised by the largest lag). The daemon asks every member's
    /// LiteFS within 1 s; a member that does not answer shows as unknown, with the reason
    /// under the table.
    Status(StatusArgs),
    /// Change the cluster's membership, via the local node (forwarded to the leader).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Move the raft leadership and the LiteFS primary to another node, losing no acknowledged
    /// write (a planned switch-over: maintenance, a rolling upgrade).
    ///
    /// Asks the local daemon on node.http-addr (forwarded to the leader; the cluster secret is
    /// required). The leader HALTs its LiteFS's databases (writers on the old primary wait),
    /// waits until the target's LiteFS has replicated every one of them to the same position,
    /// has its own LiteFS give up the primary lease, records that in raft, and transfers raft
    /// leadership to the target, whose LiteFS becomes primary without waiting out a lease.
    /// Writes are paused for about a second (up to lease.ttl / 2 + the transfer). Every node
    /// must run `litefs-py run`.
    ///
    /// Exits 1 with one line saying why if: ID is not a member, is a learner or a witness, or
    /// is not keeping up; no leader is known; the target did not catch up within 10 s; the
    /// local LiteFS did not demote in time (nothing changed then: it stays primary).
    Handoff(HandoffArgs),
    /// Validate and print the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the litefs-py version, the LiteFS version it expects, and the LiteFS `run` would
    /// start without `litefs.binary` (the wheel's own, or `litefs` on PATH) with its version.
    Version,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate litefs-py.yml and print the effective config (defaults filled in).
    ///
    /// Exits 1 with one line naming the key at fault if the config is invalid.
    Check(ConfigArgs),
    /// Print the litefs.yml that makes LiteFS follow this node's raft cluster.
    ///
    /// LiteFS gets `lease.type: consul` pointed at lease.addr (this node's Consul-compatible
    /// lease API), the TTL from lease.ttl, fuse.dir = mount.lower, data.dir = litefs.data-dir,
    /// http.addr = litefs.http-addr, and the proxy section from litefs.proxy if set; no exec
    /// (litefs-py runs the app). Use it as `litefs mount -config FILE` on a data node whose
    /// `litefs-py mount` or `run` serves the lease API. Exits 1 naming the key at fault if the
    /// config is invalid.
    Litefs(ConfigArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The config file [default: ./litefs-py.yml, then /etc/litefs-py.yml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// How long CMD gets to exit after SIGTERM/SIGINT was passed on, before SIGKILL, e.g. 30s
    /// [default: run.grace, else 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub grace: Option<Duration>,

    /// Where to write the generated litefs.yml [default: run.litefs-config, else litefs.yml
    /// inside cluster.data-dir].
    #[arg(long, value_name = "FILE")]
    pub litefs_config: Option<PathBuf>,

    /// Let other users (e.g. an app running as www-data) use the shim's mount.
    #[arg(long)]
    pub allow_other: bool,

    /// A shell command that brings the schema up to date, e.g. "python manage.py migrate
    /// --no-input" [default: run.migrate]. The primary runs it before starting CMD (again
    /// whenever a node becomes primary in a new raft term); if it fails, run stops with its
    /// exit status. A replica starts CMD only once the migration has replicated to it (waiting
    /// up to run.migrate-timeout, default 10m).
    #[arg(long, value_name = "SHELL-COMMAND")]
    pub migrate: Option<String>,
    /// On SIGTERM/SIGINT or CMD's exit, stop at once even if this node is the primary, without
    /// handing the primary to another node first (the others then fail over) [default: hand
    /// off, as run.handoff-on-stop says].
    #[arg(long)]
    pub no_handoff: bool,

    /// The app to run, and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// A duration as litefs-py.yml writes them (`10s`, `500ms`, `1m`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    use serde::de::IntoDeserializer;
    let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = s.into_deserializer();
    humantime_serde::deserialize(d).map_err(|e| format!("{s:?}: {e}"))
}

#[derive(Debug, clap::Args)]
pub struct WitnessArgs {
    /// The config file [default: ./litefs-py.yml, then /etc/litefs-py.yml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The config file whose node.http-addr to ask [default: ./litefs-py.yml, then
    /// /etc/litefs-py.yml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the daemon's JSON instead of a table (`GET /status?litefs=true`: every database's
    /// TXID, checksum and lag per member).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Add node ID, reachable at RAFT_ADDR, as a voter: it joins as a learner and is promoted
    /// once it has caught up with the log.
    ///
    /// The node must be running (`litefs-py mount` or `witness`, cluster.bootstrap false) with
    /// the same cluster secret. Exits 1 if it cannot be reached, answers as another id, rejects
    /// the secret, or does not catch up within 30 s.
    Add(ClusterAddArgs),
    /// Remove node ID from the cluster (voter or learner). Stop the node afterwards.
    Remove(ClusterRemoveArgs),
}

#[derive(Debug, clap::Args)]
pub struct ClusterAddArgs {
    /// The new node's node.id (unique, > 0, never used before).
    pub id: u64,
    /// The new node's node.raft-addr (host:port).
    pub raft_addr: String,
    /// The local node's config file (for node.http-addr and the secret).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct HandoffArgs {
    /// The node.id to hand to [default: the data voter furthest along in replication].
    #[arg(long, value_name = "ID")]
    pub to: Option<u64>,
    /// Hand off only if this node is the primary; elsewhere print why not and exit 0 (for a
    /// container's stop hook, e.g. Kubernetes preStop, which runs on every node).
    #[arg(long)]
    pub if_primary: bool,
    /// The local node's config file (for node.http-addr and the secret) [default:
    /// ./litefs-py.yml, then /etc/litefs-py.yml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ClusterRemoveArgs {
    /// The node.id to remove.
    pub id: u64,
    /// The local node's config file (for node.http-addr and the secret).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// The config file [default: ./litefs-py.yml, then /etc/litefs-py.yml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataPathArg {
    /// Symlink over LiteFS's own mount (the production stack), passthrough over any other dir.
    Auto,
    /// Every file is a shim file: data via kernel passthrough, locks forwarded per owner.
    Passthrough,
    /// Regular files appear as symlinks into the lower dir: SQLite's I/O and locks bypass
    /// the shim and its write gate (tools that refuse symlinks, O_NOFOLLOW, will not open
    /// them).
    Symlink,
}

#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Where the app sees its files.
    pub mountpoint: PathBuf,

    /// The config file [default: ./litefs-py.yml, then /etc/litefs-py.yml, else none: a
    /// one-node cluster]. Supplies mount.lower, mount.data-path and node.hostname.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The directory to pass through to: LiteFS's FUSE dir [default: mount.lower from the
    /// config, else /var/lib/litefs-py/lower].
    #[arg(long, value_name = "DIR")]
    pub lower: Option<PathBuf>,

    /// How database files reach the app [default: mount.data-path, else auto].
    #[arg(long, value_enum)]
    pub data_path: Option<DataPathArg>,

    /// Let other users (e.g. an app running as www-data) use the mount.
    #[arg(long)]
    pub allow_other: bool,

    /// FUSE worker threads [default: number of CPUs, between 2 and 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: Option<u16>,

    /// The name `.primary` shows for this node on the other nodes [default: node.hostname,
    /// else the host name].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Do not fork the watchdog that unmounts if this process is killed.
    #[arg(long)]
    pub no_auto_unmount: bool,
}
