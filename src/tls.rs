//! TLS for both listeners: the server's certificate, optionally a client CA
//! (mutual TLS), reloaded when the files change so that rotated
//! certificates (cert-manager renews them before they expire) are used by
//! new connections without a restart and without dropping open ones.
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// ALPN of the gRPC listener: HTTP/2 only.
pub const GRPC_ALPN: &[&[u8]] = &[b"h2"];
/// ALPN of the HTTP listener.
pub const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Where the PEM files are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The current TLS configuration of one listener, replaced on reload.
pub struct Tls {
    files: TlsFiles,
    alpn: &'static [&'static [u8]],
    current: RwLock<Arc<ServerConfig>>,
    stamps: RwLock<Vec<Option<SystemTime>>>,
}

impl Tls {
    /// Reads the files; fails if any is missing or invalid.
    pub fn load(files: TlsFiles, alpn: &'static [&'static [u8]]) -> anyhow::Result<Arc<Self>> {
        let config = build(&files, alpn)?;
        let stamps = stamps(&files);
        Ok(Arc::new(Self {
            files,
            alpn,
            current: RwLock::new(Arc::new(config)),
            stamps: RwLock::new(stamps),
        }))
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// Reloads the files if any changed since the last load; a change that
    /// does not load (a half-written file) keeps the previous
    /// configuration and is retried at the next check.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.files);
        if *self.stamps.read().unwrap_or_else(|e| e.into_inner()) == now {
            return false;
        }
        match build(&self.files, self.alpn) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                *self.stamps.write().unwrap_or_else(|e| e.into_inner()) = now;
                tracing::info!(cert = %self.files.cert.display(), "reloaded the TLS certificate");
                true
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "the changed TLS files do not load; keeping the previous ones"
                );
                false
            }
        }
    }

    /// Checks the files every `interval`, for ever.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.reload_if_changed();
        }
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
    .collect()
}

fn build(files: &TlsFiles, alpn: &[&[u8]]) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the TLS key {}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates(path)? {
                roots
                    .add(certificate)
                    .with_context(|| format!("adding a client CA from {}", path.display()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the TLS certificate does not match its key")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certificates.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certificates)
}

/// The names a client certificate was issued to: its DNS and URI subject
/// alternative names (`spiffe://…` identities are URIs).
pub fn peer_names(certificate: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, parsed)) = X509Certificate::from_der(certificate.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(names)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}
