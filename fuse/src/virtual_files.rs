//! The files the shim answers itself: `.primary`, `.role`, `.health`.
//!
//! The cluster side publishes a [`ClusterView`]; the shim renders it once per publish into an
//! immutable snapshot behind an `ArcSwap`. Opening a virtual file clones the current snapshot's
//! bytes into the file handle (one atomic increment), so a read never blocks, never touches the
//! network, and a reader that reads in small pieces still sees one complete rendering.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::metrics::FuseMetrics;

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
}

impl Snapshot {
    fn render(view: ClusterView) -> Self {
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
        }
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
            VirtualFile::Primary => self.primary.is_some(),
            VirtualFile::Role | VirtualFile::Health => true,
        }
    }

    /// The file's contents as of now, or `None` if it does not exist.
    pub fn contents(&self, file: VirtualFile, now: Instant) -> Option<Arc<[u8]>> {
        match file {
            VirtualFile::Primary => self.primary.clone(),
            VirtualFile::Role => Some(self.role.clone()),
            // Ages are relative to "now", so this one is rendered at open time.
            VirtualFile::Health => Some(self.render_health(now).into()),
        }
    }

    fn render_health(&self, now: Instant) -> Vec<u8> {
        let v = &self.view;
        let age =
            |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_millis() as u64);
        let health = Health {
            role: v.role(),
            node_id: v.node_id,
            hostname: &v.hostname,
            primary: v.primary_hostname(),
            term: v.term,
            leader_id: v.leader_id,
            quorum_ok: v.quorum_ok,
            ms_since_quorum_ack: age(v.last_quorum_ack),
            ms_since_leader_contact: age(v.last_leader_contact),
            lag_ms: v.lag_ms,
            litefs: v.litefs,
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
}

impl StateHandle {
    pub fn new(view: ClusterView) -> Self {
        StateHandle {
            inner: Arc::new(ArcSwap::from_pointee(Snapshot::render(view))),
            metrics: Arc::new(FuseMetrics::new()),
        }
    }

    /// The FUSE request counters of the shim mounted with this handle (zero until mounted;
    /// they keep counting across a remount with the same handle).
    pub fn fuse_metrics(&self) -> Arc<FuseMetrics> {
        self.metrics.clone()
    }

    /// Replaces the state; readers see either the old or the new rendering, never a mix.
    pub fn publish(&self, view: ClusterView) {
        self.inner.store(Arc::new(Snapshot::render(view)));
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.inner.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
