//! The recipes in `deploy/`, tested as far as this machine can: containers and Kubernetes do
//! not run here, but what they hand litefs-py does.
//!
//! - every config a recipe renders (the Kubernetes ConfigMap on each pod, the systemd example
//!   on a VM) passes `litefs-py config check`, with the identity each node derives;
//! - the stop hook's exact command (the StatefulSet's `preStop`, the unit's `ExecStop=`) runs
//!   against a 3-node `litefs-py run` cluster with the real LiteFS: on a replica it changes
//!   nothing, on the primary it moves the primary.
//!
//! The Dockerfile's install steps (`deploy/docker/install.sh`) run in scripts/test with
//! `CI=true`, against the built wheel.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{BIN, run_options, serial};
use litefs_py_testkit::cluster::RunCluster;
use litefs_py_testkit::{prereq, process};

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

/// The stop hooks of the StatefulSet and of the systemd unit: the same command.
fn stop_hook() -> Vec<String> {
    let docs = yaml_docs("kubernetes/statefulset.yaml");
    let container = &docs[0]["spec"]["template"]["spec"]["containers"][0];
    let command: Vec<String> = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let unit = std::fs::read_to_string(deploy("systemd/litefs-py.service")).unwrap();
    let exec_stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStop="))
        .unwrap();
    let unit_args: Vec<&str> = exec_stop.split_whitespace().skip(1).collect();
    assert_eq!(
        command[1..],
        unit_args[..],
        "the preStop and ExecStop= hooks differ"
    );
    command
}

/// Runs the hook on node `id`: its program is this build, its config the node's.
fn run_hook(hook: &[String], c: &RunCluster, id: u64) -> (bool, String) {
    assert_eq!(hook[0], "litefs-py");
    let mut cmd = Command::new(BIN);
    for arg in &hook[1..] {
        if arg == "/etc/litefs-py.yml" {
            cmd.arg(c.node(id).config_path());
        } else {
            cmd.arg(arg);
        }
    }
    let out = process::output_within(cmd, Duration::from_secs(90)).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_stop_hook_moves_the_primary_only_from_the_primary() {
    let hook = stop_hook();
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut c = RunCluster::start(run_options(), &litefs, 3).unwrap();
    let all = c.ids();
    let primary = c.wait_one_primary(&all, Duration::from_secs(60)).unwrap();
    let replica = all.iter().copied().find(|id| *id != primary).unwrap();

    let (ok, out) = run_hook(&hook, &c, replica);
    assert!(ok, "{out}");
    assert!(
        out.contains("not the primary: nothing to hand off"),
        "{out}"
    );
    assert_eq!(
        c.wait_one_primary(&all, Duration::from_secs(5)).unwrap(),
        primary,
        "the hook on a replica moved the primary"
    );

    let (ok, out) = run_hook(&hook, &c, primary);
    assert!(ok, "{out}");
    let after = c.wait_one_primary(&all, Duration::from_secs(30)).unwrap();
    assert_ne!(
        after, primary,
        "the hook on the primary did not move it:\n{out}"
    );
    c.shutdown().unwrap();
}
