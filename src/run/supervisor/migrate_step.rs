//! The IO of `run --migrate` ([`crate::run::migrate`] decides): the command as a child of the
//! supervisor, LiteFS's positions, the marker in raft.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use litefs_py_fuse::Role as ViewRole;

use super::super::children::{describe, shell_code};
use super::super::migrate::{self, Finished, Marker, Role, Seen, Step};
use super::super::{RunError, exit};
use super::Supervisor;
use crate::litefs::positions::{Positions, read_positions};

/// How long the marker's raft write may take.
const RECORD_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the wait says what it waits for when that does not change.
const SAY_EVERY: Duration = Duration::from_secs(10);

/// The migrate command, while it runs.
pub(super) struct Migration {
    pub(super) pid: i32,
    pub(super) exited: Option<ExitStatus>,
    /// The raft term it started in.
    term: u64,
}

/// The wait's log and its deadline.
#[derive(Default)]
pub(super) struct WaitLog {
    since: Option<Instant>,
    said: String,
    said_at: Option<Instant>,
}

impl Supervisor {
    fn migrate_role(&self) -> Role {
        match self.daemon.as_ref().map(|d| d.state().load().view().role()) {
            Some(ViewRole::Primary) => Role::Primary,
            Some(ViewRole::Replica) => Role::Replica,
            _ => Role::NoPrimary,
        }
    }

    fn local_positions(&self) -> Positions {
        read_positions(&self.opts.config.mount.lower).unwrap_or_else(|e| {
            tracing::debug!("reading LiteFS's positions: {e}");
            Positions::new()
        })
    }

    pub(super) fn migration_running(&self) -> bool {
        self.migration.as_ref().is_some_and(|m| m.exited.is_none())
    }

    /// One look: the command's end handled, then the next step taken. `Err`: the command
    /// failed (or could not start), with the status `run` exits with.
    pub(super) fn migrate_tick(&mut self) -> Result<Step, i32> {
        let Some(command) = self.opts.migrate.clone() else {
            return Ok(Step::Ready);
        };
        if self.migration_running() {
            return Ok(Step::Wait("the migrate command runs".into()));
        }
        let (me, term) = self
            .daemon
            .as_ref()
            .map_or((0, 0), |d| d.raft_id_and_term());
        let role = self.migrate_role();
        if let Some(m) = self.migration.take() {
            let status = m.exited.expect("checked above");
            match migrate::finished(shell_code(status), m.term, role, term) {
                Finished::Done => {
                    tracing::info!(term = m.term, "the migrate command succeeded");
                    self.migrated_in = Some(m.term);
                }
                Finished::Again => tracing::warn!(
                    "the migrate command exited with {} after this node stopped being the \
                     primary of term {}: looking again",
                    describe(status),
                    m.term
                ),
                Finished::Failed(code) => {
                    tracing::error!(
                        command = %command,
                        "the migrate command exited with {} (its output is above): stopping",
                        describe(status)
                    );
                    return Err(code);
                }
            }
        }
        let marker = self
            .daemon
            .as_ref()
            .and_then(|d| d.kv_get(migrate::KEY))
            .and_then(|v| Marker::from_json(&v));
        // Read (a directory listing of LiteFS's mount) only where the decision needs them.
        let local = if role == Role::Replica || self.migrated_in == Some(term) {
            self.local_positions()
        } else {
            Positions::new()
        };
        let step = migrate::decide(&Seen {
            role,
            term,
            me,
            marker: marker.as_ref(),
            local: &local,
            migrated_in: self.migrated_in,
        });
        match &step {
            Step::Migrate => {
                tracing::info!(term, command = %command, "this node is the primary: running the migrate command");
                let mut cmd = self.child_command("sh".as_ref(), &["-c".into(), command.into()]);
                match cmd.spawn() {
                    Ok(child) => {
                        let pid = child.id() as i32;
                        drop(child); // reaped by the supervisor
                        self.migration = Some(Migration {
                            pid,
                            exited: None,
                            term,
                        });
                        Ok(Step::Wait("the migrate command runs".into()))
                    }
                    Err(e) => {
                        tracing::error!("cannot start the migrate command with sh: {e}");
                        Err(if e.kind() == std::io::ErrorKind::NotFound {
                            exit::APP_NOT_FOUND
                        } else {
                            exit::APP_NOT_EXECUTABLE
                        })
                    }
                }
            }
            Step::Record => {
                let value = Marker {
                    term,
                    node: me,
                    positions: local,
                };
                let daemon = self.daemon.as_ref().expect("checked by must_stop");
                match daemon.kv_set_as_leader(term, migrate::KEY, value.to_json(), RECORD_TIMEOUT) {
                    Ok(()) => {
                        tracing::info!(term, positions = ?value.positions, "recorded the migration in raft: replicas start once they have reached these positions");
                        Ok(Step::Ready)
                    }
                    Err(e) => Ok(Step::Wait(format!("recording the migration in raft: {e}"))),
                }
            }
            Step::Wait(_) | Step::Ready => Ok(step),
        }
    }

    /// While the app runs: only a primary has anything to do (a new term: migrate again).
    pub(super) fn migrate_while_app_runs(&mut self) -> Result<(), i32> {
        if self.opts.migrate.is_none()
            || (self.migration.is_none() && self.migrate_role() != Role::Primary)
        {
            return Ok(());
        }
        self.migrate_tick().map(drop)
    }

    /// Before the app starts: until the schema is ready here, the command failed, the wait ran
    /// out (`run.migrate-timeout`, an error), or everything must stop (`Ok(Some(status))`).
    pub(super) fn migrate_before_app(&mut self) -> Result<Option<i32>, RunError> {
        let timeout = self.opts.migrate_timeout;
        let mut log = WaitLog::default();
        loop {
            if let Some(code) = self.must_stop() {
                return Ok(Some(code));
            }
            match self.migrate_tick() {
                Err(code) => return Ok(Some(code)),
                Ok(Step::Ready) => return Ok(None),
                Ok(Step::Wait(why)) => {
                    // This node's own command is not bounded: migrations may take long.
                    if self.migration_running() {
                        log.since = None;
                    } else {
                        let since = *log.since.get_or_insert_with(Instant::now);
                        if since.elapsed() > timeout {
                            return Err(RunError::MigrateTimeout { timeout, why });
                        }
                    }
                    if why != log.said || log.said_at.is_none_or(|t| t.elapsed() >= SAY_EVERY) {
                        tracing::info!("the app waits for the schema: {why}");
                        log.said = why;
                        log.said_at = Some(Instant::now());
                    }
                }
                Ok(Step::Migrate | Step::Record) => {}
            }
            self.poll(super::TICK);
        }
    }

    /// Stops the migrate command if it runs (at shutdown): SIGTERM, `grace`, SIGKILL.
    pub(super) fn stop_migration(&mut self) {
        let Some(pid) = self
            .migration
            .as_ref()
            .filter(|m| m.exited.is_none())
            .map(|m| m.pid)
        else {
            return;
        };
        self.stop_child("the migrate command", pid, Some(libc::SIGTERM), |s| {
            !s.migration_running()
        });
    }
}
