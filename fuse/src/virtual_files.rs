//! The files the shim answers itself: `.primary`, `.role`, `.health`.
//!
//! The cluster side publishes a [`ClusterView`]; the shim renders it once per publish into an
//! immutable snapshot behind an `ArcSwap`. Opening a virtual file clones the current snapshot's
//! bytes into the file handle (one atomic increment), so a read never blocks, never touches the
//! network, and a reader that reads in small pieces still sees one complete rendering.

use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;

use crate::metrics::FuseMetrics;
use crate::state_page::{self, StatePage};

/// Inode numbers of the virtual files: at the top of the id space, far from lower inodes.
pub const PRIMARY_INO: u64 = u64::MAX - 1;
pub const ROLE_INO: u64 = u64::MAX - 2;
pub const HEALTH_INO: u64 = u64::MAX - 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualFile {
    Primary,
    Role,
    Health,
}

impl VirtualFile {
    pub const ALL: [VirtualFile; 3] =
        [VirtualFile::Primary, VirtualFile::Role, VirtualFile::Health];

    pub fn name(self) -> &'static str {
        match self {
            VirtualFile::Primary => ".primary",
            VirtualFile::Role => ".role",
            VirtualFile::Health => ".health",
        }
    }

    pub fn ino(self) -> u64 {
        match self {
            VirtualFile::Primary => PRIMARY_INO,
            VirtualFile::Role => ROLE_INO,
            VirtualFile::Health => HEALTH_INO,
        }
    }

    pub fn from_name(name: &[u8]) -> Option<VirtualFile> {
        match name {
            b".primary" => Some(VirtualFile::Primary),
            b".role" => Some(VirtualFile::Role),
            b".health" => Some(VirtualFile::Health),
            _ => None,
        }
    }

    /// Whether a lower file of this name is the normal case: LiteFS answers `.primary` in its
    /// mount itself, and the shim replaces it on purpose (it follows raft). Anything else (a
    /// `.role` or `.health` in LiteFS, any of them in a plain directory) is worth a warning:
    /// the app may have meant that file.
    pub fn shadow_is_expected(self, lower_is_litefs: bool) -> bool {
        lower_is_litefs && self == VirtualFile::Primary
    }

    pub fn from_ino(ino: u64) -> Option<VirtualFile> {
        match ino {
            PRIMARY_INO => Some(VirtualFile::Primary),
            ROLE_INO => Some(VirtualFile::Role),
            HEALTH_INO => Some(VirtualFile::Health),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    Electing,
    Witness,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Electing => "electing",
            Role::Witness => "witness",
        }
    }
}

/// Who holds the primary lease, as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Primary {
    /// This node: raft leader with a fresh quorum acknowledgement (and, under `run`, its LiteFS
    /// holds the lease).
    ThisNode,
    /// Another node, by the hostname `.primary` shows.
    Other { hostname: String },
    /// Nobody, as far as this node can tell (an election, a partition, or a new leader waiting
    /// out the previous lease).
    Unknown,
}

/// What LiteFS underneath is doing, when litefs-py manages it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LiteFsStatus {
    pub mounted: bool,
    pub serving: bool,
    /// Its `/info` said `isPrimary` at the last probe (false when it did not answer).
    pub primary: bool,
}

impl LiteFsStatus {
    /// LiteFS answered and is not primary: it refuses writes itself (a read-only replica).
    fn refuses_writes(&self) -> bool {
        self.serving && !self.primary
    }
}

/// Everything the virtual files say. Published by the cluster side, rendered by the shim.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    pub node_id: u64,
    pub hostname: String,
    pub witness: bool,
    pub primary: Primary,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub quorum_ok: bool,
    pub last_quorum_ack: Option<Instant>,
    pub last_leader_contact: Option<Instant>,
    pub lag_ms: Option<i64>,
    pub litefs: Option<LiteFsStatus>,
    /// How long the `primary` answer holds (docs/architecture.md, "Virtual files"): until the
    /// lease bound after the last quorum ack, or the end of LiteFS's hold, whichever comes
    /// first. `None`: no time bound (a sole voter, or a mount without a cluster). Past it,
    /// readers see `electing` even if nothing published since: a stalled daemon cannot leave
    /// `primary` up behind it.
    pub primary_until: Option<Instant>,
}

impl ClusterView {
    /// The embedded default: a one-node cluster in which this node is primary.
    pub fn single_node(hostname: impl Into<String>) -> Self {
        ClusterView {
            node_id: 1,
            hostname: hostname.into(),
            witness: false,
            primary: Primary::ThisNode,
            term: 1,
            leader_id: Some(1),
            quorum_ok: true,
            last_quorum_ack: None,
            last_leader_contact: None,
            lag_ms: Some(0),
            litefs: None,
            primary_until: None,
        }
    }

    pub fn role(&self) -> Role {
        if self.witness {
            return Role::Witness;
        }
        match &self.primary {
            Primary::ThisNode => Role::Primary,
            // A primary without a name cannot be shown in `.primary`: as good as unknown.
            Primary::Other { hostname } if hostname.is_empty() => Role::Electing,
            Primary::Other { .. } => Role::Replica,
            Primary::Unknown => Role::Electing,
        }
    }

    fn primary_hostname(&self) -> Option<&str> {
        match &self.primary {
            Primary::ThisNode => Some(&self.hostname),
            Primary::Other { hostname } if !hostname.is_empty() => Some(hostname),
            Primary::Other { .. } | Primary::Unknown => None,
        }
    }
}

#[derive(Serialize)]
struct Health<'a> {
    role: Role,
    node_id: u64,
    hostname: &'a str,
    primary: Option<&'a str>,
    term: u64,
    leader_id: Option<u64>,
    quorum_ok: bool,
    ms_since_quorum_ack: Option<u64>,
    ms_since_leader_contact: Option<u64>,
    lag_ms: Option<i64>,
    litefs: Option<LiteFsStatus>,
    /// On the primary: how long its `primary` answer still holds without a new publish (ms);
    /// `null` when it has no time bound or this node is not primary.
    primary_valid_ms: Option<u64>,
    /// The read-only shared page that mirrors `.role` (see `state_page`), if there is one.
    state_page: Option<&'a str>,
    version: &'static str,
}

/// The `.health` mirror in the shared page (`state_page`): what [`Health`] says that does
/// not depend on the instant of reading, and the stamps its ages are measured from.
#[derive(Serialize)]
struct PageHealth<'a> {
    node_id: u64,
    hostname: &'a str,
    primary: Option<&'a str>,
    term: u64,
    leader_id: Option<u64>,
    quorum_ok: bool,
    quorum_ack_boot_ns: Option<u64>,
    leader_contact_boot_ns: Option<u64>,
    lag_ms: Option<i64>,
    litefs: Option<LiteFsStatus>,
    state_page: Option<&'a str>,
    version: &'static str,
}

/// One published state, pre-rendered.
#[derive(Debug)]
pub struct Snapshot {
    view: ClusterView,
    /// `None`: the file does not exist (this node holds the primary lease).
    primary: Option<Arc<[u8]>>,
    role: Arc<[u8]>,
    published: SystemTime,
    /// `view.primary_until` on CLOCK_BOOTTIME (ns), for a primary view with a time bound.
    primary_until_boot: Option<u64>,
    /// For a view that is not primary: when this node's last `primary` answer ended
    /// (CLOCK_BOOTTIME ns), carried over from the snapshots before it. The write gate uses it.
    primary_ended_boot: Option<u64>,
    state_page: Option<Arc<str>>,
}

/// How long after this node's `primary` answer ended the write gate still refuses write locks:
/// its LiteFS believes it is primary for up to `lease.ttl` + 1 s (lock delay) after its last
/// renewal, which this node granted while its answer held. `lease.ttl` is at most 60 s (the
/// config check refuses more), so 62 s covers every allowed setting.
pub const GATE_WINDOW_NS: u64 = 62_000_000_000;

/// CLOCK_BOOTTIME now, in nanoseconds.
///
/// Deadlines that outlive the moment they were computed (the `primary` validity, read by the
/// shim's FUSE workers and, through the shared page, by other processes) are kept on this clock:
/// unlike CLOCK_MONOTONIC it keeps counting while the machine is suspended, as the other nodes'
/// clocks do, so a node resumed after a suspend longer than its lease sees it expired.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_BOOTTIME exists on every Linux the shim runs on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// `until` (CLOCK_MONOTONIC, as `Instant` is) moved onto CLOCK_BOOTTIME: the time left now,
/// added to BOOTTIME now. A deadline already past is "now".
fn to_boottime(until: Instant) -> u64 {
    let left = until.saturating_duration_since(Instant::now());
    boottime_ns().saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
}

impl Snapshot {
    fn render(view: ClusterView, state_page: Option<Arc<str>>) -> Self {
        let primary_until_boot = match view.role() {
            Role::Primary => view.primary_until.map(to_boottime),
            _ => None,
        };
        let primary = match &view.primary {
            Primary::ThisNode => None,
            Primary::Other { hostname } if !hostname.is_empty() => {
                Some(format!("{hostname}\n").into_bytes().into())
            }
            // LiteFS hides the file here, which makes a cut-off replica look like a primary
            // (superfly/litefs#139); the shim shows it, empty.
            Primary::Other { .. } | Primary::Unknown => Some(Arc::from(&b""[..])),
        };
        let role = format!("{}\n", view.role().as_str()).into_bytes().into();
        Snapshot {
            view,
            primary,
            role,
            published: SystemTime::now(),
            primary_until_boot,
            primary_ended_boot: None,
            state_page,
        }
    }

    /// Whether a write lock may pass the shim's write gate now (`fs_io`, "write_gate"): while
    /// this snapshot's `primary` holds, or once the last one ended more than [`GATE_WINDOW_NS`]
    /// ago (or never), when LiteFS has surely demoted and refuses a replica's writes itself.
    pub fn write_allowed(&self) -> bool {
        let now = boottime_ns();
        let ended = match self.view.role() {
            Role::Primary => match self.primary_until_boot {
                Some(until) if now >= until => Some(until),
                _ => return true,
            },
            _ => self.primary_ended_boot,
        };
        // Once LiteFS itself answers that it is not primary (it demoted, or the fencer's kill
        // was followed by a restart), it refuses writes itself, and SQLite's readers need the
        // write lock to recover a `-shm` LiteFS rewrote: the gate opens early. The probe is
        // newer than the snapshot's primary answer only if it says so after it ended; one taken
        // before a freeze still says primary, which keeps the gate shut.
        if ended.is_some() && self.view.litefs.is_some_and(|l| l.refuses_writes()) {
            return true;
        }
        ended.is_none_or(|t| now.saturating_sub(t) >= GATE_WINDOW_NS)
    }

    /// Whether this snapshot's `primary` answer has run out (it then reads as `electing`).
    pub fn expired(&self) -> bool {
        self.primary_until_boot
            .is_some_and(|until| boottime_ns() >= until)
    }

    /// The role as of now: the published one, or `electing` once a `primary` has run out.
    pub fn role(&self) -> Role {
        if self.expired() {
            Role::Electing
        } else {
            self.view.role()
        }
    }

    /// The `primary` deadline on CLOCK_BOOTTIME (ns), if this snapshot says primary with one.
    pub fn primary_until_boot(&self) -> Option<u64> {
        self.primary_until_boot
    }

    /// When this state was published (the virtual files' mtime).
    pub fn published(&self) -> SystemTime {
        self.published
    }

    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    pub fn exists(&self, file: VirtualFile) -> bool {
        match file {
            VirtualFile::Primary => self.primary.is_some() || self.expired(),
            VirtualFile::Role | VirtualFile::Health => true,
        }
    }

    /// The file's contents as of now, or `None` if it does not exist.
    pub fn contents(&self, file: VirtualFile, now: Instant) -> Option<Arc<[u8]>> {
        if self.expired() {
            // The primary answer ran out and nothing published since: no primary known.
            return match file {
                VirtualFile::Primary => Some(Arc::from(&b""[..])),
                VirtualFile::Role => Some(Arc::from(&b"electing\n"[..])),
                VirtualFile::Health => Some(self.render_health(now).into()),
            };
        }
        match file {
            VirtualFile::Primary => self.primary.clone(),
            VirtualFile::Role => Some(self.role.clone()),
            // Ages are relative to "now", so this one is rendered at open time.
            VirtualFile::Health => Some(self.render_health(now).into()),
        }
    }

    /// The `.health` mirror for the shared page (see [`PageHealth`]).
    fn render_page_health(&self) -> Vec<u8> {
        let v = &self.view;
        let (now, now_boot) = (Instant::now(), boottime_ns());
        let stamp = |t: Option<Instant>| {
            t.map(|t| {
                let ago = u64::try_from(now.saturating_duration_since(t).as_nanos());
                now_boot.saturating_sub(ago.unwrap_or(u64::MAX))
            })
        };
        let health = PageHealth {
            node_id: v.node_id,
            hostname: &v.hostname,
            primary: v.primary_hostname(),
            term: v.term,
            leader_id: v.leader_id,
            quorum_ok: v.quorum_ok,
            quorum_ack_boot_ns: stamp(v.last_quorum_ack),
            leader_contact_boot_ns: stamp(v.last_leader_contact),
            lag_ms: v.lag_ms,
            litefs: v.litefs,
            state_page: self.state_page.as_deref(),
            version: env!("CARGO_PKG_VERSION"),
        };
        serde_json::to_vec(&health).expect("health serialises")
    }

    fn render_health(&self, now: Instant) -> Vec<u8> {
        let v = &self.view;
        let age =
            |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_millis() as u64);
        let expired = self.expired();
        let primary_valid_ms = match self.primary_until_boot {
            Some(until) if !expired => Some(until.saturating_sub(boottime_ns()) / 1_000_000),
            _ => None,
        };
        let health = Health {
            role: self.role(),
            node_id: v.node_id,
            hostname: &v.hostname,
            primary: if expired { None } else { v.primary_hostname() },
            term: v.term,
            leader_id: v.leader_id,
            quorum_ok: v.quorum_ok,
            ms_since_quorum_ack: age(v.last_quorum_ack),
            ms_since_leader_contact: age(v.last_leader_contact),
            lag_ms: v.lag_ms,
            litefs: v.litefs,
            primary_valid_ms,
            state_page: self.state_page.as_deref(),
            version: env!("CARGO_PKG_VERSION"),
        };
        let mut out = serde_json::to_vec(&health).expect("health serialises");
        out.push(b'\n');
        out
    }
}

/// The publish/read point shared by the cluster side (writer) and the filesystem (readers).
///
/// It also carries the counters of the FUSE requests the shim serves the other way, from the
/// filesystem to the daemon, which holds this handle and not the mount.
#[derive(Debug, Clone)]
pub struct StateHandle {
    inner: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<FuseMetrics>,
    /// The shared page mirroring `.role` (`state_page`), once a mount attached one.
    page: Arc<ArcSwapOption<StatePage>>,
}

impl StateHandle {
    pub fn new(view: ClusterView) -> Self {
        StateHandle {
            inner: Arc::new(ArcSwap::from_pointee(Snapshot::render(view, None))),
            metrics: Arc::new(FuseMetrics::new()),
            page: Arc::new(ArcSwapOption::empty()),
        }
    }

    /// Creates the shared state page for a shim over `lower` and writes the current state
    /// into it. Without one (no `/dev/shm`, say) everything works, through the mount.
    pub(crate) fn attach_page(&self, lower: &Path) -> Option<Arc<StatePage>> {
        let path = state_page::path_for(lower);
        match StatePage::create(&path) {
            Ok(page) => {
                let page = Arc::new(page);
                self.page.store(Some(page.clone()));
                self.publish(self.load().view().clone());
                Some(page)
            }
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "no shared state page: litefs.is_primary() will read .role through the mount"
                );
                None
            }
        }
    }

    /// Marks `page` closed and removes it, if it is still this handle's (the mount that
    /// attached it is going away; a newer mount's page is left alone).
    pub(crate) fn detach_page(&self, page: &Arc<StatePage>) {
        let current = self.page.load_full();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, page)) {
            self.page.store(None);
            page.close();
        }
    }

    /// The FUSE request counters of the shim mounted with this handle (zero until mounted;
    /// they keep counting across a remount with the same handle).
    pub fn fuse_metrics(&self) -> Arc<FuseMetrics> {
        self.metrics.clone()
    }

    /// Replaces the state; readers see either the old or the new rendering, never a mix.
    pub fn publish(&self, view: ClusterView) {
        let page = self.page.load_full();
        let path = page
            .as_ref()
            .map(|p| Arc::from(p.path().to_string_lossy().as_ref()));
        let mut snapshot = Snapshot::render(view, path);
        if snapshot.view.role() != Role::Primary {
            // When the last `primary` ended: the previous snapshot's end, or, if it was still
            // primary, its deadline or now, whichever came first.
            let prev = self.inner.load();
            snapshot.primary_ended_boot = if prev.view.role() == Role::Primary {
                let now = boottime_ns();
                Some(prev.primary_until_boot.map_or(now, |u| u.min(now)))
            } else {
                prev.primary_ended_boot
            };
        }
        // The page follows the snapshot (written after it, so a reader of the page never
        // sees a state the mount does not show yet).
        let role = snapshot.view.role();
        let until = snapshot.primary_until_boot;
        let health = page.as_ref().map(|_| snapshot.render_page_health());
        self.inner.store(Arc::new(snapshot));
        if let (Some(page), Some(health)) = (page, health) {
            page.write(role, until, false, &health);
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.inner.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_litefs_own_primary_is_shadowed_silently() {
        assert!(VirtualFile::Primary.shadow_is_expected(true));
        assert!(!VirtualFile::Primary.shadow_is_expected(false));
        assert!(!VirtualFile::Role.shadow_is_expected(true));
        assert!(!VirtualFile::Health.shadow_is_expected(true));
    }

    fn read(s: &Snapshot, f: VirtualFile) -> Option<String> {
        s.contents(f, Instant::now())
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn single_node_is_primary() {
        let h = StateHandle::new(ClusterView::single_node("node-a"));
        let s = h.load();
        assert_eq!(read(&s, VirtualFile::Primary), None);
        assert!(!s.exists(VirtualFile::Primary));
        assert_eq!(read(&s, VirtualFile::Role).unwrap(), "primary\n");
        let health: serde_json::Value =
            serde_json::from_str(&read(&s, VirtualFile::Health).unwrap()).unwrap();
        assert_eq!(health["role"], "primary");
        assert_eq!(health["primary"], "node-a");
        assert_eq!(health["quorum_ok"], true);
    }

    #[test]
    fn replica_and_electing() {
        let mut v = ClusterView::single_node("node-b");
        v.primary = Primary::Other {
            hostname: "node-a".into(),
        };
        let h = StateHandle::new(v.clone());
        assert_eq!(read(&h.load(), VirtualFile::Primary).unwrap(), "node-a\n");
        assert_eq!(read(&h.load(), VirtualFile::Role).unwrap(), "replica\n");

        v.primary = Primary::Unknown;
        v.last_leader_contact = Some(Instant::now() - std::time::Duration::from_millis(1500));
        h.publish(v.clone());
        assert_eq!(read(&h.load(), VirtualFile::Primary).unwrap(), "");
        assert_eq!(read(&h.load(), VirtualFile::Role).unwrap(), "electing\n");
        let health: serde_json::Value =
            serde_json::from_str(&read(&h.load(), VirtualFile::Health).unwrap()).unwrap();
        assert!(health["primary"].is_null());
        assert!(health["ms_since_leader_contact"].as_u64().unwrap() >= 1500);

        v.primary = Primary::Other {
            hostname: String::new(),
        };
        h.publish(v.clone());
        assert_eq!(read(&h.load(), VirtualFile::Primary).unwrap(), "");
        assert_eq!(read(&h.load(), VirtualFile::Role).unwrap(), "electing\n");

        v.witness = true;
        h.publish(v);
        assert_eq!(read(&h.load(), VirtualFile::Role).unwrap(), "witness\n");
    }

    #[test]
    fn names_and_inodes_round_trip() {
        for f in VirtualFile::ALL {
            assert_eq!(VirtualFile::from_name(f.name().as_bytes()), Some(f));
            assert_eq!(VirtualFile::from_ino(f.ino()), Some(f));
        }
        assert_eq!(VirtualFile::from_name(b".lag"), None);
    }
}
