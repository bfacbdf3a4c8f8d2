//! The running supervisor of `litefs-py run` (see the module doc of [`super`]): it watches the
//! node, LiteFS, the shim and the app, and stops them in reverse order.

mod app_step;
mod migrate_step;

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use litefs_py_fuse::{MountOptions, MountedShim};

use super::children::{self, Event, Events, describe, shell_code, signal_name};
use super::{RunError, RunOptions, exit};
use crate::fence::{Feed, Fencer, Target};
use crate::litefs::probe::Probe;
use crate::litefs::process::LiteFs;
use crate::litefs::state::LiteFsState;
use crate::litefs::stream::Unsticker;
use crate::node::Node;
use crate::proxy::Proxy;

/// How long LiteFS gets to mount and to answer on its HTTP API after it started.
const LITEFS_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long LiteFS gets to exit after SIGTERM once it has joined the cluster (it releases the
/// lease, unmounts, exits: well under a second).
const LITEFS_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// ... and before: LiteFS v0.5.14 only reads its signals once it is primary or connected to a
/// primary, so waiting long is useless (the signal stays queued in case it gets there).
const LITEFS_STOP_TIMEOUT_UNREADY: Duration = Duration::from_secs(3);
/// How long a process gets to be reaped after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Files still open on the shim when it is unmounted get this long (the app is gone by then).
const UNMOUNT_GRACE: Duration = Duration::from_secs(2);
/// How often the wait for LiteFS to join the cluster says so.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the supervisor looks around when nothing is signalled.
const TICK: Duration = Duration::from_millis(100);

/// A child the supervisor started, reaped by the supervisor.
struct App {
    pid: i32,
    exited: Option<ExitStatus>,
}

pub(super) struct Supervisor {
    opts: RunOptions,
    events: Events,
    state: LiteFsState,
    daemon: Option<Node>,
    litefs: Option<LiteFs>,
    /// Kills LiteFS if its lease runs out with no renewal granted (see [`crate::fence`]).
    fencer: Option<Fencer>,
    /// The fencer's exit status, if it ended (it must outlive LiteFS).
    fencer_exited: Option<ExitStatus>,
    /// LiteFS's FUSE connection was passed on to the fencer.
    fencer_knows_mount: bool,
    probe: Option<Probe>,
    /// Cuts LiteFS's stream from a primary that went silent (see [`crate::litefs::stream`]).
    unsticker: Option<Unsticker>,
    shim: Option<MountedShim>,
    app: Option<App>,
    /// A stop signal reached the app (passed on, or straight from the terminal).
    app_signalled: bool,
    /// The first SIGTERM/SIGINT.
    stop_signal: Option<i32>,
    /// How many SIGTERM/SIGINT came (a second one stops waiting for the stop handoff).
    stop_signals: u32,
    /// The stop signal held back from the app while this primary hands off (then passed on).
    held_signal: Option<i32>,
    /// The stop handoff was tried, or found not to apply: never twice.
    handoff_tried: bool,
    litefs_was_ready: bool,
    /// `shutdown` ran: `Drop` must not run it again (LiteFS may still show as running when
    /// SIGKILL did not take it away).
    shut_down: bool,
    /// The umask to start the app with: mounting the shim sets the process's to 0.
    umask: libc::mode_t,
    /// `--migrate`: the command, while it runs or until its end is handled.
    migration: Option<migrate_step::Migration>,
    /// The raft term in which this node's migrate command last succeeded.
    migrated_in: Option<u64>,
    /// `proxy:`: stopped right before the app (docs/proxy.md), so that no request is passed to
    /// an app that is stopping, whose reset would leave its outcome unknown.
    proxy: Option<Proxy>,
}

impl Supervisor {
    pub(super) fn new(
        opts: RunOptions,
        events: Events,
        state: LiteFsState,
        daemon: Node,
        proxy: Option<Proxy>,
        umask: libc::mode_t,
    ) -> Supervisor {
        Supervisor {
            proxy,
            umask,
            opts,
            events,
            state,
            daemon: Some(daemon),
            litefs: None,
            fencer: None,
            fencer_exited: None,
            fencer_knows_mount: false,
            probe: None,
            unsticker: None,
            shim: None,
            app: None,
            app_signalled: false,
            stop_signal: None,
            stop_signals: 0,
            held_signal: None,
            handoff_tried: false,
            litefs_was_ready: false,
            shut_down: false,
            migration: None,
            migrated_in: None,
        }
    }

    fn app_running(&self) -> bool {
        self.app.as_ref().is_some_and(|a| a.exited.is_none())
    }

    fn litefs_running(&self) -> bool {
        self.litefs.as_ref().is_some_and(|l| l.exited.is_none())
    }

    /// Waits up to `timeout` for events, handles them, reaps children.
    fn poll(&mut self, timeout: Duration) {
        for event in self.events.next_batch(timeout) {
            let Event::Signal {
                signal,
                from_kernel,
            } = event
            else {
                continue;
            };
            let stop = signal == libc::SIGTERM || signal == libc::SIGINT;
            if stop {
                self.stop_signals += 1;
                if let Some(d) = self.daemon.as_ref().filter(|_| self.stop_signals == 1) {
                    d.set_stopping();
                }
            }
            // The primary's app keeps serving while it hands off; it gets the signal after.
            let hold = stop && !from_kernel && self.stop_signals == 1 && self.will_hand_off();
            if self.app_running() && hold {
                self.held_signal = Some(signal);
            } else if self.app_running() {
                if !from_kernel {
                    let pid = self.app.as_ref().map_or(0, |a| a.pid);
                    children::signal(pid, signal);
                }
                self.app_signalled |= stop;
                tracing::info!("{} passed on to the app", signal_name(signal));
            }
            if stop && self.stop_signal.is_none() {
                self.stop_signal = Some(signal);
                tracing::info!("{} received: stopping", signal_name(signal));
            }
        }
        for (pid, status) in children::reap_all() {
            if let Some(app) = self.app.as_mut().filter(|a| a.pid == pid) {
                app.exited = Some(status);
                tracing::info!(pid, "the app exited with {}", describe(status));
            } else if let Some(m) = self.migration.as_mut().filter(|m| m.pid == pid) {
                m.exited = Some(status);
                tracing::info!(pid, "the migrate command exited with {}", describe(status));
            } else if let Some(l) = self.litefs.as_mut().filter(|l| l.pid == pid) {
                l.exited = Some(status);
                tracing::info!(pid, "litefs exited with {}", describe(status));
            } else if self.fencer.as_ref().is_some_and(|f| f.pid() == pid) {
                self.fencer_exited = Some(status);
                tracing::debug!(pid, "the fencer exited with {}", describe(status));
            } else {
                tracing::debug!(pid, "reaped {}", describe(status));
            }
        }
        if self.state.probe().is_some_and(|p| p.ready()) {
            self.litefs_was_ready = true;
        }
    }

    /// Polls until `done` or `timeout`; whether `done`.
    fn wait(&mut self, timeout: Duration, done: impl Fn(&Supervisor) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.poll(left.min(Duration::from_millis(50)));
        }
    }

    /// Why everything must stop now, as the exit status, logged once: a stop signal, LiteFS
    /// gone, the shim's mount gone, raft or the lease API stopped. (The app's own exit is looked at by the caller.)
    fn must_stop(&mut self) -> Option<i32> {
        if let Some(sig) = self.stop_signal {
            return Some(match self.app.as_ref().and_then(|a| a.exited) {
                Some(status) => shell_code(status),
                // Stopped before the app ran (or while it still runs: the caller decides).
                None => 128 + sig,
            });
        }
        if self.litefs.as_ref().is_some_and(|l| l.exited.is_some())
            && self.fencer.as_mut().is_some_and(Fencer::fenced)
        {
            tracing::error!(
                "LiteFS was fenced: its primary lease ran out with no renewal granted (this \
                 process was stalled?), so the fencer killed it before another node could become \
                 primary: stopping; restart litefs-py run (a supervisor restarts on status {})",
                exit::FENCED
            );
            return Some(exit::FENCED);
        }
        if let Some(status) = self.fencer_exited {
            tracing::error!(
                "the fencer exited with {} while LiteFS runs: stopping (LiteFS must not run unfenced)",
                describe(status)
            );
            return Some(exit::FENCED);
        }
        if let Some(status) = self.litefs.as_ref().and_then(|l| l.exited) {
            let tail = self.litefs.as_ref().map(LiteFs::tail_for_error);
            tracing::error!(
                "litefs exited with {}: stopping ({})",
                describe(status),
                tail.unwrap_or_default()
            );
            return Some(exit::LITEFS_EXITED);
        }
        if let Some(shim) = self.shim.as_mut()
            && shim.session_ended()
        {
            tracing::error!(
                mount = %self.opts.config.mount.dir.display(),
                "the shim's mount was unmounted from outside: stopping"
            );
            return Some(exit::SHIM_GONE);
        }
        if let Some(why) = self.daemon.as_ref().and_then(Node::failure) {
            tracing::error!("{why}: stopping (LiteFS cannot follow the cluster without it)");
            return Some(exit::RAFT_STOPPED);
        }
        None
    }

    pub(super) fn start_and_watch(&mut self, binary: &std::path::Path) -> Result<i32, RunError> {
        let config = self.opts.config.clone();
        let lower = config.mount.lower.clone();
        // Before LiteFS starts: no grant can be made that the fencer does not hear of.
        let feed = Feed::hook(&self.state).map_err(super::io("creating the fencer's pipe"))?;
        let litefs = LiteFs::spawn(
            binary,
            &self.opts.litefs_config,
            &lower,
            &self.opts.lease_token,
        )?;
        let target = Target {
            pid: litefs.pid,
            http: crate::litefs::local_http_addr(&config.litefs.http_addr),
            ttl: config.lease.ttl,
        };
        self.litefs = Some(litefs);
        self.fencer = Some(Fencer::start(feed, &target).map_err(super::io("starting the fencer"))?);
        let http = crate::litefs::local_http_addr(&config.litefs.http_addr);
        self.probe = Some(Probe::start(self.state.clone(), lower.clone(), http));
        self.unsticker = self
            .daemon
            .as_ref()
            .map(|d| Unsticker::start(target.pid, d.primaryship()));

        // LiteFS's FUSE mount and HTTP API come up in a moment, long before it has the lease.
        let up = |s: &Supervisor| {
            let probe = s.state.probe().unwrap_or_default();
            s.litefs.as_ref().is_some_and(LiteFs::mount_appeared) && probe.mounted && probe.serving
        };
        let started = Instant::now();
        while !up(self) {
            self.tell_fencer_the_mount();
            if let Some(code) = self.must_stop() {
                return Ok(code);
            }
            if started.elapsed() > LITEFS_START_TIMEOUT {
                let probe = self.state.probe().unwrap_or_default();
                let missing = if !probe.mounted
                    || !self.litefs.as_ref().is_some_and(LiteFs::mount_appeared)
                {
                    format!("no FUSE mount at mount.lower {}", lower.display())
                } else {
                    format!(
                        "its HTTP API at litefs.http-addr {} does not answer",
                        config.litefs.http_addr
                    )
                };
                let tail = self.litefs.as_ref().map(LiteFs::tail_for_error);
                return Err(RunError::NotUp {
                    timeout: LITEFS_START_TIMEOUT,
                    missing,
                    tail: tail.unwrap_or_default(),
                });
            }
            self.poll(Duration::from_millis(50));
        }
        self.tell_fencer_the_mount();
        tracing::info!(elapsed = ?started.elapsed(), "LiteFS is mounted and serving");

        let mut opts = MountOptions::new(&lower, &config.mount.dir);
        opts.data_path = config.mount.data_path.for_shim();
        opts.allow_other = self.opts.allow_other;
        let state = match &self.daemon {
            Some(d) => d.state().clone(),
            None => return Err(RunError::Invalid("raft is not running".into())),
        };
        self.shim = Some(litefs_py_fuse::mount(&opts, state)?);

        // The app starts once LiteFS is primary or has caught up with one, as LiteFS's own
        // `exec` does: before that a primary-to-be would refuse its writes, and a replica would
        // show it old or missing databases. Unbounded: it needs a quorum, which may take time.
        let mut said = Instant::now();
        while !self.state.probe().is_some_and(|p| p.ready()) {
            if let Some(code) = self.must_stop() {
                return Ok(code);
            }
            if said.elapsed() >= WAITING_LOG_EVERY {
                said = Instant::now();
                let role = self.shim_role();
                tracing::info!(
                    role,
                    "waiting for LiteFS to become primary or to reach the primary before starting the app"
                );
            }
            self.poll(TICK);
        }
        tracing::info!(role = self.shim_role(), "LiteFS is ready");

        // `--migrate`: the primary migrates, a replica waits for the schema (run::migrate).
        if let Some(code) = self.migrate_before_app()? {
            return Ok(code);
        }
        if let Err(code) = self.spawn_app() {
            return Ok(code);
        }
        loop {
            if let Some(code) = self.must_stop() {
                // A stop signal while the app runs: its status is known once it has stopped.
                return Ok(if self.stop_signal.is_some() {
                    self.hand_off_before_stop();
                    self.stop_app();
                    self.app
                        .as_ref()
                        .and_then(|a| a.exited)
                        .map_or(code, shell_code)
                } else {
                    code
                });
            }
            if let Some(status) = self.app.as_ref().and_then(|a| a.exited) {
                tracing::info!("the app exited with {}: stopping", describe(status));
                self.hand_off_after_app_exit();
                return Ok(shell_code(status));
            }
            // A replica promoted while its app runs migrates in its new term too (a rolling
            // update's new code, a marker for the replicas that start later).
            if let Err(code) = self.migrate_while_app_runs() {
                return Ok(code);
            }
            self.poll(TICK);
        }
    }

    /// Once LiteFS's mount is up: its FUSE connection, which a fence aborts.
    fn tell_fencer_the_mount(&mut self) {
        if self.fencer_knows_mount {
            return;
        }
        if let (Some(f), Some(dev)) = (
            &self.fencer,
            self.litefs.as_ref().and_then(LiteFs::mount_dev),
        ) {
            f.set_connection(&dev);
            self.fencer_knows_mount = true;
        }
    }

    fn shim_role(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.state().load().view().role().as_str().to_string())
            .unwrap_or_default()
    }

    /// LiteFS: SIGTERM while the lease API still answers (it releases the lease), then SIGKILL
    /// and a lazy unmount of its mount if it does not go.
    fn stop_litefs(&mut self) {
        let Some(pid) = self.litefs.as_ref().map(|l| l.pid) else {
            return;
        };
        if self.litefs_running() {
            let timeout = if self.litefs_was_ready {
                LITEFS_STOP_TIMEOUT
            } else {
                LITEFS_STOP_TIMEOUT_UNREADY
            };
            tracing::info!("stopping LiteFS (SIGTERM)");
            children::signal(pid, libc::SIGTERM);
            if !self.wait(timeout, |s| !s.litefs_running()) {
                tracing::warn!(
                    "LiteFS did not exit within {timeout:?} of SIGTERM (before it has joined a cluster it ignores it): SIGKILL"
                );
                children::signal(pid, libc::SIGKILL);
                if !self.wait(KILL_WAIT, |s| !s.litefs_running()) {
                    tracing::error!(pid, "LiteFS did not go away after SIGKILL");
                }
            }
        }
        if let Some(l) = &self.litefs {
            l.detach_leftover_mount();
        }
    }

    /// Whether stopping now makes this node hand off first: `run.handoff-on-stop`, not tried
    /// yet, this node's LiteFS is primary, and another data voter could take over (a one-node
    /// cluster just stops).
    fn will_hand_off(&self) -> bool {
        self.opts.handoff_on_stop
            && !self.handoff_tried
            && self.litefs_running()
            && self
                .daemon
                .as_ref()
                .is_some_and(|d| d.is_primary() && d.has_other_data_voters())
    }

    /// The app exited on its own, while LiteFS, the shim and raft are fine (the watch loop
    /// checked them first): on the primary, the replicas catch up with every write the app made
    /// before one takes over, instead of failing over without the stream's tail
    /// (docs/decisions.md, "A crashed app on the primary hands off"). The proxy stays open
    /// meanwhile: it answers `not-executed` for the missing app, on which the other nodes'
    /// proxies send the write to the next primary (closing it could cut a pooled connection
    /// under a request, whose outcome would then be unknown). A stop signal skips the wait.
    fn hand_off_after_app_exit(&mut self) {
        if !self.will_hand_off() {
            self.handoff_tried = true;
            return;
        }
        self.stop_migration();
        if let Some(d) = &self.daemon {
            d.set_stopping();
        }
        // No stop signal came yet (the watch loop stops for one before it looks at the app).
        self.hand_off("the app exited", 0);
    }

    /// After a stop signal, on the primary: the handoff while the app keeps serving.
    fn hand_off_before_stop(&mut self) {
        if self.stop_signal.is_none() || !self.will_hand_off() {
            self.handoff_tried = true;
            return;
        }
        self.hand_off("a stop signal", 1);
    }

    /// Hands the primary to the freshest healthy replica (the steps of `litefs-py handoff`),
    /// waiting up to `run.stop-handoff-timeout`, or until more than `signals_seen` stop
    /// signals came. Whatever the outcome, one line says it and the stop goes on.
    fn hand_off(&mut self, why: &str, signals_seen: u32) {
        self.handoff_tried = true;
        let Some(rx) = self.daemon.as_ref().map(Node::start_stop_handoff) else {
            return;
        };
        let timeout = self.opts.stop_handoff_timeout;
        let skip = if signals_seen == 0 {
            "a stop signal"
        } else {
            "a second signal"
        };
        tracing::info!(
            ?timeout,
            "{why}; this node is the primary: handing it off before stopping (run.handoff-on-stop; {skip} skips it)"
        );
        let deadline = Instant::now() + timeout;
        let outcome = loop {
            match rx.try_recv() {
                Ok(outcome) => break Some(outcome),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    break Some(Err("the handoff task ended without an outcome".to_string()));
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            if self.stop_signals > signals_seen {
                tracing::warn!(
                    "a stop signal: not waiting for the handoff; stopping (the other nodes fail over)"
                );
                return;
            }
            if Instant::now() >= deadline || !self.litefs_running() {
                break None;
            }
            self.poll(Duration::from_millis(20));
        };
        match outcome {
            Some(Ok(message)) => tracing::info!("handed off before stopping: {message}"),
            Some(Err(e)) => tracing::warn!(
                "the handoff before stopping failed: {e}; stopping anyway (the other nodes fail over)"
            ),
            None if !self.litefs_running() => tracing::warn!(
                "LiteFS exited during the handoff before stopping; stopping (the other nodes fail over)"
            ),
            None => tracing::warn!(
                "the handoff before stopping did not finish within {timeout:?} (run.stop-handoff-timeout); stopping anyway (the other nodes fail over)"
            ),
        }
    }

    /// Stops whatever runs, in order: the primary handed off (after a stop signal), the app,
    /// the shim, the probe, LiteFS, raft.
    pub(super) fn shutdown(&mut self) {
        if std::mem::replace(&mut self.shut_down, true) {
            return;
        }
        self.hand_off_before_stop();
        self.stop_app();
        self.stop_migration();
        if let Some(shim) = self.shim.take()
            && let Err(e) = shim.unmount_with_grace(UNMOUNT_GRACE)
        {
            tracing::warn!("unmounting the shim: {e}");
        }
        // Before LiteFS: a `stat` of its mount in flight could make its unmount fail (EBUSY).
        self.probe.take();
        self.unsticker.take();
        self.stop_litefs();
        // LiteFS is gone: the fencer has nothing left to guard (it exits when told).
        if let Some(f) = self.fencer.take() {
            f.stop();
        }
        if let Some(d) = self.daemon.take() {
            d.shutdown();
        }
        tracing::info!("stopped");
    }
}

impl Drop for Supervisor {
    /// A panic on the way must not leave children and mounts behind.
    fn drop(&mut self) {
        if !self.shut_down
            && (self.daemon.is_some() || self.litefs.is_some() && self.litefs_running())
        {
            self.shutdown();
        }
    }
}
