//! Certificates for the TLS tests: a CA, a server certificate for
//! `localhost` and `127.0.0.1`, and client certificates with the names a
//! caller's certificate would carry (a DNS name, or a SPIFFE URI).
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA and what it signed, written as PEM files into a directory.
pub struct Pki {
    pub ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub dir: PathBuf,
}

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Self {
            ca_pem: issuer.pem(),
            issuer,
            dir: dir.to_owned(),
        };
        std::fs::write(pki.path(&format!("{name}-ca.pem")), &pki.ca_pem).unwrap();
        pki
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A certificate with these subject alternative names (`spiffe://…`
    /// names become URI SANs, the rest DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Issued {
        let mut params = CertificateParams::new(
            names
                .iter()
                .filter(|n| !n.contains("://"))
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        for uri in names.iter().filter(|n| n.contains("://")) {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Issues a server certificate for localhost into `cert` and `key`.
    pub fn write_server(&self, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let issued = self.issue(&["localhost", "127.0.0.1"]);
        let (cert, key) = (self.path(cert), self.path(key));
        std::fs::write(&cert, issued.cert_pem).unwrap();
        std::fs::write(&key, issued.key_pem).unwrap();
        (cert, key)
    }
}

/// A TLS channel to `addr` that trusts `ca_pem`, presenting `identity`
/// when given.
pub async fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(issued) = identity {
        tls = tls.identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// `GET url` over HTTPS (HTTP/1.1, trusting `ca_pem`, as `localhost`):
/// the status code and the body's length.
pub async fn https_get(url: &str, ca_pem: &str) -> (u16, usize) {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("https://").expect("an https URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&response[..text_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, response.len() - text_end - 4)
}
