//! The recipes in `deploy/`, tested as far as this machine can: containers and Kubernetes do
//! not run here, but what they hand litefs-py does.
//!
//! - every config a recipe renders (the Kubernetes ConfigMap on each pod, the systemd example
//!   on a VM) passes `litefs-py config check`, with the identity each node derives;
//! - the StatefulSet and the systemd unit stop `run` with a plain SIGTERM (no stop hook: the
//!   primary's `run` hands off itself, tested in tests/stop_handoff_litefs.rs) and give it time
//!   for that handoff, the app's grace and the rest of the stop.
//!
//! The Dockerfile's install steps (`deploy/docker/install.sh`) run in scripts/test with
//! `CI=true`, against the built wheel.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::BIN;
use litefs_py_testkit::process;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn yaml_docs(rel: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(deploy(rel)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// `litefs-py config check --config FILE` with exactly `env` (plus PATH): the effective config.
fn config_check(file: &Path, env: &[(&str, &str)]) -> serde_yaml::Value {
    let mut cmd = Command::new(BIN);
    cmd.args(["config", "check", "--config"])
        .arg(file)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = process::output_within(cmd, Duration::from_secs(30)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "config check of {} failed: {}{stdout}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn the_kubernetes_configmap_is_valid_on_every_pod() {
    let docs = yaml_docs("kubernetes/configmap.yaml");
    let text = docs[0]["data"]["litefs-py.yml"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("litefs-py.yml");
    std::fs::write(&file, text).unwrap();
    for ordinal in 0..3u64 {
        let pod = format!("app-{ordinal}");
        let c = config_check(
            &file,
            &[
                ("HOSTNAME", &pod),
                ("POD_NAMESPACE", "shop"),
                ("LITEFS_PY_SECRET", SECRET),
            ],
        );
        assert_eq!(c["node"]["id"].as_u64(), Some(ordinal + 1), "{c:?}");
        assert_eq!(c["node"]["hostname"].as_str(), Some(pod.as_str()));
        let fqdn = format!("{pod}.app.shop.svc.cluster.local");
        assert_eq!(
            c["node"]["raft-addr"].as_str(),
            Some(format!("{fqdn}:20301").as_str())
        );
        assert_eq!(
            c["litefs"]["advertise-url"].as_str(),
            Some(format!("http://{fqdn}:20202").as_str())
        );
        assert_eq!(c["cluster"]["bootstrap"].as_str(), Some("auto"));
    }
    // Outside a pod (no POD_NAMESPACE) the error names the variable.
    let mut cmd = Command::new(BIN);
    cmd.args(["config", "check", "--config"])
        .arg(&file)
        .env("HOSTNAME", "app-0")
        .env_remove("POD_NAMESPACE");
    let out = process::output_within(cmd, Duration::from_secs(30)).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("POD_NAMESPACE"),
        "{err}"
    );
}

#[test]
fn the_systemd_example_is_valid_on_every_vm() {
    let text = std::fs::read_to_string(deploy("systemd/litefs-py.yml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    // The secret file of the example lives in /etc; here, a copy with the same mode.
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let file = dir.path().join("litefs-py.yml");
    std::fs::write(
        &file,
        text.replace("/etc/litefs-py/secret", secret.to_str().unwrap()),
    )
    .unwrap();
    for id in 1..=3u64 {
        let host = format!("vm-{id}");
        let c = config_check(&file, &[("NODE_ID", &id.to_string()), ("HOSTNAME", &host)]);
        assert_eq!(c["node"]["id"].as_u64(), Some(id));
        assert_eq!(c["node"]["hostname"].as_str(), Some(host.as_str()));
        assert_eq!(
            c["node"]["raft-addr"].as_str(),
            Some(format!("10.0.0.{id}:20301").as_str())
        );
    }
}

/// The effective `run:` of the Kubernetes ConfigMap on pod `app-0`: (stop handoff, grace) in
/// seconds.
fn configmap_stop_budget() -> (u64, u64) {
    let docs = yaml_docs("kubernetes/configmap.yaml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("litefs-py.yml");
    std::fs::write(&file, docs[0]["data"]["litefs-py.yml"].as_str().unwrap()).unwrap();
    let c = config_check(
        &file,
        &[
            ("HOSTNAME", "app-0"),
            ("POD_NAMESPACE", "shop"),
            ("LITEFS_PY_SECRET", SECRET),
        ],
    );
    let secs = |key: &str| {
        let v = c["run"][key]
            .as_str()
            .unwrap_or_else(|| panic!("run.{key}: {c:?}"));
        // As config check prints them: `10s`, `1m`, `1m 30s`.
        v.split_whitespace()
            .map(|part| match part.strip_suffix('m') {
                Some(m) => m.parse::<u64>().unwrap() * 60,
                None => part.strip_suffix('s').unwrap().parse::<u64>().unwrap(),
            })
            .sum::<u64>()
    };
    assert_eq!(c["run"]["handoff-on-stop"].as_bool(), Some(true), "{c:?}");
    (secs("stop-handoff-timeout"), secs("grace"))
}

/// The recipes stop `run` with a plain SIGTERM, on which the primary's `run` hands off itself
/// (tests/stop_handoff_litefs.rs runs that on a 3-node cluster): no stop hook, and a stop
/// timeout with room for the handoff, the app's grace and LiteFS's and raft's stop.
#[test]
fn the_recipes_leave_the_stop_handoff_its_time() {
    let (handoff, grace) = configmap_stop_budget();
    let need = handoff + grace + 10;
    let docs = yaml_docs("kubernetes/statefulset.yaml");
    let pod = &docs[0]["spec"]["template"]["spec"];
    assert!(
        pod["containers"][0]["lifecycle"]["preStop"].is_null(),
        "a preStop hook: run hands off on SIGTERM itself"
    );
    let k8s = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(k8s >= need, "terminationGracePeriodSeconds {k8s} < {need}");

    let unit = std::fs::read_to_string(deploy("systemd/litefs-py.service")).unwrap();
    assert!(
        !unit.lines().any(|l| l.starts_with("ExecStop=")),
        "an ExecStop= hook: run hands off on SIGTERM itself"
    );
    let line = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
    };
    assert_eq!(line("KillMode="), "mixed", "SIGTERM must reach run alone");
    let systemd: u64 = line("TimeoutStopSec=").parse().unwrap();
    assert!(systemd >= need, "TimeoutStopSec={systemd} < {need}");
}
