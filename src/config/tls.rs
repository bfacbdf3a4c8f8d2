//! `cluster.tls`: mutual TLS for raft and admin traffic (`node.raft-addr`, `node.http-addr`),
//! with the cluster's own CA (docs/operations.md, "Security"; docs/decisions.md, "TLS between
//! nodes").
//!
//! Every node presents `cert-file` (signed by a CA in `ca-file`) as a server and as a client,
//! and accepts only peers whose certificate chains to `ca-file`. `ca-file` may hold several CAs
//! (old and new, while certificates are rolled). The files are read at start: a restart picks
//! up new ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    /// PEM: the CA certificate(s) a peer's certificate must chain to.
    pub ca_file: PathBuf,
    /// PEM: this node's certificate (then any intermediates), for the names peers use in
    /// `cluster.peers` / `node.raft-addr` and `node.http-addr`.
    pub cert_file: PathBuf,
    /// PEM: its private key (PKCS#8, SEC1 or PKCS#1), readable by its owner only.
    pub key_file: PathBuf,
}

/// The server and client halves, built once at start from the files.
#[derive(Debug, Clone)]
pub struct Tls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn err(key: &'static str, path: &Path, e: impl std::fmt::Display) -> ConfigError {
    invalid(key, format!("{}: {e}", path.display()))
}

impl TlsConfig {
    /// Reads the files and builds both configs; every error names the key and the file.
    pub fn load(&self) -> Result<Tls, ConfigError> {
        const CA: &str = "cluster.tls.ca-file";
        const CERT: &str = "cluster.tls.cert-file";
        const KEY: &str = "cluster.tls.key-file";
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.ca_file)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| err(CA, &self.ca_file, e))?;
        if cas.is_empty() {
            return Err(err(CA, &self.ca_file, "no PEM certificate in it"));
        }
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| err(CA, &self.ca_file, format!("not a usable CA: {e}")))?;
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert_file)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| err(CERT, &self.cert_file, e))?;
        if chain.is_empty() {
            return Err(err(CERT, &self.cert_file, "no PEM certificate in it"));
        }
        super::check_private(KEY, &self.key_file)?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file)
            .map_err(|e| err(KEY, &self.key_file, e))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| err(CA, &self.ca_file, e))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("cluster.tls", e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| err(KEY, &self.key_file, format!("does not fit the cert: {e}")))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("cluster.tls", e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| err(KEY, &self.key_file, format!("does not fit the cert: {e}")))?;
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// `reqwest::Client::builder()`, once rustls has its process-wide crypto provider (`ring`).
/// reqwest is built with rustls but without a provider of its own (`rustls-no-provider`): every
/// client, even a plain-HTTP one, must be made here, or building it panics.
pub fn client_builder() -> reqwest::ClientBuilder {
    // Err: already installed (by an earlier call, or by another library): fine either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
