//! The lease API trusts only the LiteFS its `litefs-py run` started (issue 13, part 2), with the
//! real LiteFS (v0.5.14): LiteFS works with the per-run token it gets in its environment; a
//! local caller without it is refused, whatever the route; an acquire naming another advertise
//! URL is refused even with the token; no answer names a session; the generated litefs.yml is
//! mode 0600; the app gets neither the cluster secret nor the token.
//!
//! Needs root, /dev/fuse and a `litefs` binary (see tests/run_litefs.rs). Every process is ours
//! (the `RunNode` guard stops them and detaches any mount left); every wait is bounded.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use common::{run_options, serial};
use litefs_py_testkit::cluster::{Options, RunNode};
use litefs_py_testkit::wait::wait_for;
use litefs_py_testkit::{http, prereq};

/// Records the app's environment, then waits.
const APP: &str = r#"
env > "$1/env"
touch "$1/ready"
while :; do sleep 0.05; done
"#;

const SESSION: &str =
    r#"{"Behavior":"delete","LockDelay":"1000ms","Name":"x","NodeChecks":[],"TTL":"3s"}"#;

#[test]
fn only_the_runs_own_litefs_may_use_the_lease_api() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let opts = Options {
        test_faults: false,
        ..run_options()
    };
    let mut r = RunNode::single(&opts, &litefs, |c| c).unwrap();
    // Passed to `run` only: it must reach neither LiteFS nor the app.
    r.env.push((
        "LITEFS_PY_SECRET".into(),
        "a-secret-the-app-must-not-see".into(),
    ));
    r.start(APP).unwrap();
    // LiteFS, with the token, becomes primary and the app starts.
    wait_for(Duration::from_secs(40), "the app", || {
        assert!(r.exited().is_none(), "litefs-py run exited:\n{}", r.log());
        r.app_file("ready")
    });
    assert_eq!(r.role().as_deref(), Some("primary"), "{}", r.log());
    assert!(r.info().is_some_and(|i| i.is_primary));
    let lease = r.ports.lease.clone();

    // The token is in LiteFS's environment, and nowhere in the app's.
    let token = r
        .lease_token()
        .expect("LiteFS runs with $CONSUL_HTTP_TOKEN");
    assert_eq!(token.len(), 64);
    let pid = r.litefs_pid().unwrap();
    let litefs_env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&litefs_env).contains("LITEFS_PY_SECRET="),
        "LiteFS got the cluster secret"
    );
    let app_env = r.app_file("env").unwrap();
    assert!(!app_env.contains("LITEFS_PY_SECRET="), "{app_env}");
    assert!(!app_env.contains("CONSUL_HTTP_TOKEN="), "{app_env}");
    assert!(!app_env.contains(&token), "{app_env}");

    // The generated litefs.yml: owner only.
    let mode = std::fs::metadata(r.litefs_yml())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "litefs.yml mode {mode:o}");

    // Without the token (or with a wrong one): 403 on every route, saying what is missing.
    let any_id = "6f1d7e0c-0f6b-4e4b-9d1e-2a2d5c1f0b3a";
    let calls = [
        ("GET", "/litefs-py/lease".to_string(), None),
        ("GET", "/v1/kv/litefs/primary".to_string(), None),
        ("PUT", "/v1/session/create".to_string(), Some(SESSION)),
        (
            "PUT",
            format!("/v1/kv/litefs/primary?release={any_id}"),
            None,
        ),
        ("PUT", format!("/v1/session/destroy/{any_id}"), None),
    ];
    for (bearer, why) in [
        (None, "missing lease token"),
        (Some("0".repeat(64)), "wrong lease token"),
    ] {
        for (method, path, body) in &calls {
            let resp = http::request(method, &lease, path, bearer.as_deref(), *body).unwrap();
            assert_eq!(resp.status, 403, "{method} {path}: {resp:?}");
            assert!(resp.body.contains(why), "{method} {path}: {resp:?}");
        }
    }

    // With the token: the state names no session.
    let state = http::request("GET", &lease, "/litefs-py/lease", Some(&token), None).unwrap();
    assert_eq!(state.status, 200, "{state:?}");
    let v: serde_json::Value = serde_json::from_str(&state.body).unwrap();
    assert_eq!(v["held"], true, "{v}");
    assert!(v["sessions"].is_u64(), "{v}");
    let kv = http::request("GET", &lease, "/v1/kv/litefs/primary", Some(&token), None).unwrap();
    assert_eq!(kv.status, 200, "{kv:?}");
    assert!(!kv.body.contains("Session"), "{kv:?}");

    // Even with the token, an acquire for another advertise URL is refused.
    let created = http::request(
        "PUT",
        &lease,
        "/v1/session/create",
        Some(&token),
        Some(SESSION),
    )
    .unwrap();
    assert_eq!(created.status, 200, "{created:?}");
    let id: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    let id = id["ID"].as_str().unwrap().to_string();
    let other = r#"{"hostname":"intruder","advertise-url":"http://intruder.example:20202"}"#;
    let acquire = http::request(
        "PUT",
        &lease,
        &format!("/v1/kv/litefs/primary?acquire={id}"),
        Some(&token),
        Some(other),
    )
    .unwrap();
    assert_eq!(acquire.status, 403, "{acquire:?}");
    assert!(acquire.body.contains("intruder.example"), "{acquire:?}");
    let destroyed = http::request(
        "PUT",
        &lease,
        &format!("/v1/session/destroy/{id}"),
        Some(&token),
        None,
    )
    .unwrap();
    assert_eq!(destroyed.status, 200, "{destroyed:?}");

    // None of it moved the lease: the run's LiteFS is still primary, several renewals later.
    std::thread::sleep(Duration::from_secs(4));
    assert!(r.info().is_some_and(|i| i.is_primary), "{}", r.log());
    let kv = http::request(
        "GET",
        &lease,
        "/v1/kv/litefs/primary?raw",
        Some(&token),
        None,
    )
    .unwrap();
    assert!(!kv.body.contains("intruder"), "{kv:?}");
    assert!(
        r.log().contains("refused"),
        "the refusals are logged:\n{}",
        r.log()
    );

    r.sigterm();
    r.wait_exit(Duration::from_secs(30)).unwrap();
    r.assert_nothing_left();
}
