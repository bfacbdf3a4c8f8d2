//! The `run:` section of litefs-py.yml: how `litefs-py run` supervises LiteFS and the app.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// The longest grace period accepted: a container runtime kills the whole container after its
/// own stop timeout (Docker: 10 s by default) anyway.
const MAX_GRACE: Duration = Duration::from_secs(3600);
/// The longest stop handoff accepted: a handoff's own steps are bounded well below this (the
/// HALT lock LiteFS drops after 30 s), and a container runtime's stop timeout is short.
const MAX_STOP_HANDOFF: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunConfig {
    /// How long the app gets to exit after SIGTERM/SIGINT was passed on to it, before SIGKILL.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace: Duration,
    /// Where `run` writes the litefs.yml it starts LiteFS with [default: litefs.yml inside
    /// `cluster.data-dir`, e.g. /var/lib/litefs-py/raft/litefs.yml].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub litefs_config: Option<PathBuf>,
    /// A shell command (`sh -c`) that brings the schema up to date, e.g. `python manage.py
    /// migrate --no-input`: the primary runs it before starting the app (and again whenever a
    /// node becomes primary in a new raft term); a replica starts its app once the result has
    /// replicated. `run --migrate` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate: Option<String>,
    /// How long a replica waits for the migrated schema before `run` gives up (exit 1).
    #[serde(default = "default_migrate_timeout", with = "humantime_serde")]
    pub migrate_timeout: Duration,
    /// On SIGTERM/SIGINT, a node whose LiteFS is primary first hands the primary to the
    /// freshest healthy replica (as `litefs-py handoff` does), then stops: a rolling restart
    /// pauses writes for about a second instead of a failover. `--no-handoff` turns it off.
    #[serde(default = "default_handoff_on_stop")]
    pub handoff_on_stop: bool,
    /// How long that handoff may take before the node stops anyway (then the others fail over).
    #[serde(default = "default_stop_handoff_timeout", with = "humantime_serde")]
    pub stop_handoff_timeout: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            grace: default_grace(),
            litefs_config: None,
            migrate: None,
            migrate_timeout: default_migrate_timeout(),
            handoff_on_stop: default_handoff_on_stop(),
            stop_handoff_timeout: default_stop_handoff_timeout(),
        }
    }
}

fn default_migrate_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

fn default_handoff_on_stop() -> bool {
    true
}

/// A handoff takes about a second when the cluster is healthy; one that has not finished in
/// 10 s is stuck on a replica that cannot keep up, and a failover is the better way out. With
/// `run.grace` (10 s) it fits in Kubernetes' default 30 s termination grace period.
fn default_stop_handoff_timeout() -> Duration {
    Duration::from_secs(10)
}

impl RunConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.grace > MAX_GRACE {
            return Err(invalid(
                "run.grace",
                format!("{:?} is longer than {MAX_GRACE:?}", self.grace),
            ));
        }
        if self.migrate.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err(invalid(
                "run.migrate",
                "is empty: give the command (e.g. \"python manage.py migrate --no-input\") or drop the key",
            ));
        }
        if self.migrate_timeout.is_zero() {
            return Err(invalid("run.migrate-timeout", "must be longer than 0s"));
        }
        if self.stop_handoff_timeout.is_zero() || self.stop_handoff_timeout > MAX_STOP_HANDOFF {
            return Err(invalid(
                "run.stop-handoff-timeout",
                format!(
                    "{:?} is not between 1ms and {MAX_STOP_HANDOFF:?} (to stop without a handoff, set run.handoff-on-stop: false)",
                    self.stop_handoff_timeout
                ),
            ));
        }
        if let Some(p) = &self.litefs_config
            && (p.as_os_str().is_empty() || p.ends_with(".."))
        {
            return Err(invalid(
                "run.litefs-config",
                format!("{} is not a file path", p.display()),
            ));
        }
        Ok(())
    }

    /// `run.litefs-config`, else `litefs.yml` inside `data_dir` (the raft dir): the node's own
    /// directory, so two nodes whose data dirs are siblings never write the same file.
    pub fn litefs_config_path(&self, data_dir: &Path) -> PathBuf {
        match &self.litefs_config {
            Some(p) => p.clone(),
            None => data_dir.join("litefs.yml"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_paths() {
        let r = RunConfig::default();
        assert_eq!(r.grace, Duration::from_secs(10));
        assert!(r.handoff_on_stop);
        assert_eq!(r.stop_handoff_timeout, Duration::from_secs(10));
        assert_eq!(
            r.litefs_config_path(Path::new("/var/lib/litefs-py/raft")),
            PathBuf::from("/var/lib/litefs-py/raft/litefs.yml")
        );
        // Sibling data dirs (n/raft1, n/raft2) get a file each.
        assert_ne!(
            r.litefs_config_path(Path::new("n/raft1")),
            r.litefs_config_path(Path::new("n/raft2"))
        );
        assert_eq!(
            r.litefs_config_path(Path::new("raft")),
            PathBuf::from("raft/litefs.yml")
        );
        let r = RunConfig {
            litefs_config: Some("/run/litefs.yml".into()),
            ..r
        };
        assert_eq!(
            r.litefs_config_path(Path::new("/x/raft")),
            PathBuf::from("/run/litefs.yml")
        );
        assert!(r.validate().is_ok());
        let bad = RunConfig {
            grace: Duration::from_secs(7200),
            ..RunConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .starts_with("run.grace:")
        );
        for bad in [Duration::ZERO, Duration::from_secs(121)] {
            let bad = RunConfig {
                stop_handoff_timeout: bad,
                ..RunConfig::default()
            };
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.starts_with("run.stop-handoff-timeout:"), "{e}");
        }
        let parsed: RunConfig =
            serde_yaml::from_str("handoff-on-stop: false\nstop-handoff-timeout: 5s\n").unwrap();
        assert!(!parsed.handoff_on_stop);
        assert_eq!(parsed.stop_handoff_timeout, Duration::from_secs(5));
    }
}
