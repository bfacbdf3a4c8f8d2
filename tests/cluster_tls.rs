//! Raft and admin traffic over mutual TLS (`cluster.tls`, issue 13 part 3): a three-node cluster
//! of `litefs-py mount` nodes elects and fails over with every RPC over TLS; the CLI talks to its
//! node over TLS with the node's certificate; a client with a certificate of another CA, or
//! none, or plain HTTP, is refused before any request. The certificates are made here (rcgen).
//!
//! Needs root and /dev/fuse (the nodes mount the shim). Every process is ours (the cluster
//! guard stops them and detaches every mount); every wait is bounded.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{mount_options, serial};
use litefs_py::config::{TlsConfig, client_builder, write_private};
use litefs_py_testkit::cluster::{MountCluster, Options, SECRET};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA: its PEM certificate and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A node certificate for 127.0.0.1 (server and client use), signed by `ca`, written as
/// `<dir>/<name>.pem` and `<name>.key` (mode 0600); returns their paths.
fn node_cert(ca: &Ca, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    write_private(&key_path, key.serialize_pem().as_bytes()).unwrap();
    (cert_path, key_path)
}

/// `GET https://addr/raft/hello` with the cluster secret, as a client presenting `cert` and
/// trusting `ca_file`: the status, or the error.
fn hello(addr: &str, tls: Option<&TlsConfig>, scheme: &str) -> Result<u16, String> {
    let mut builder = client_builder().no_proxy();
    if let Some(tls) = tls {
        let loaded = tls.load().map_err(|e| e.to_string())?;
        builder = builder.tls_backend_preconfigured(rustls::ClientConfig::clone(&loaded.client));
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        client
            .get(format!("{scheme}://{addr}/raft/hello"))
            .bearer_auth(SECRET)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("{e:?}"))
    })
}

#[test]
fn a_tls_cluster_elects_fails_over_and_refuses_other_cas() {
    let _serial = serial();
    let certs = tempfile::tempdir().unwrap();
    let cluster_ca = ca("litefs-py test CA");
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, &cluster_ca.pem).unwrap();
    let ids = [1, 2, 3];
    let opts = Options {
        test_faults: false,
        ..mount_options()
    };
    let mut c = MountCluster::of_mounts(opts, &ids).unwrap();
    for id in ids {
        let (cert, key) = node_cert(&cluster_ca, certs.path(), &format!("node-{id}"));
        for (k, v) in [
            ("cluster.tls.ca-file", &ca_file),
            ("cluster.tls.cert-file", &cert),
            ("cluster.tls.key-file", &key),
        ] {
            c.set_config(id, k, v.to_str().unwrap()).unwrap();
        }
    }
    c.start_all().unwrap();
    let first = c.wait_agreement(&ids, Duration::from_secs(30)).unwrap();

    // The CLI reaches its node over TLS, with the node's own certificate.
    let cfg = c.config_path(1);
    let out = c
        .cli(&["status", "--config", cfg.to_str().unwrap()])
        .unwrap();
    assert!(
        out.status.success(),
        "status over TLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Clients at a node's raft port: only a certificate of the cluster CA gets an answer.
    let raft = c.ports(1).raft.clone();
    let (cert, key) = node_cert(&cluster_ca, certs.path(), "client");
    let ours = TlsConfig {
        ca_file: ca_file.clone(),
        cert_file: cert,
        key_file: key,
    };
    assert_eq!(hello(&raft, Some(&ours), "https"), Ok(200));
    let foreign_ca = ca("some other CA");
    let (cert, key) = node_cert(&foreign_ca, certs.path(), "intruder");
    let foreign = TlsConfig {
        ca_file: ca_file.clone(),
        cert_file: cert,
        key_file: key,
    };
    let refused = hello(&raft, Some(&foreign), "https");
    assert!(
        refused.is_err(),
        "a foreign CA's certificate got {refused:?}"
    );
    let plain = hello(&raft, None, "http");
    assert!(plain.is_err(), "plain HTTP got {plain:?}");
    // The node says why, naming the caller.
    let log = c.log(1);
    assert!(log.contains("TLS handshake with 127.0.0.1:"), "{log}");

    // Fail over: kill -9 of the primary; the other two elect one of them, over TLS.
    c.kill9(first).unwrap();
    let rest: Vec<u64> = ids.into_iter().filter(|id| *id != first).collect();
    let second = c.wait_agreement(&rest, Duration::from_secs(30)).unwrap();
    assert_ne!(second, first);
    c.shutdown().unwrap();
}
