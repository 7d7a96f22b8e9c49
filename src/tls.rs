//! TLS: turns `SPOOL_TLS_CERT` and `SPOOL_TLS_KEY` into a rustls acceptor that offers
//! HTTP/2 and HTTP/1.1 by ALPN, and runs one connection's handshake under a timeout.
//!
//! The files are read once, at start-up, and every problem with them stops the start
//! with a message naming the file: a server that came up without the TLS it was asked
//! for would serve cleartext to clients that expect otherwise. rustls runs on `ring`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// What the server needs to speak TLS on a connection.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl Tls {
    /// The TLS of `config`: `None` when neither file is set, an error when only one is
    /// or when either cannot be used.
    pub fn from_config(config: &TlsConfig) -> anyhow::Result<Option<Tls>> {
        let (cert, key) = match (&config.cert, &config.key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(cert), None) => bail!(
                "the TLS certificate {} is set (SPOOL_TLS_CERT) but no key (SPOOL_TLS_KEY): \
                 TLS needs both",
                cert.display()
            ),
            (None, Some(key)) => bail!(
                "the TLS key {} is set (SPOOL_TLS_KEY) but no certificate (SPOOL_TLS_CERT): \
                 TLS needs both",
                key.display()
            ),
        };
        let chain = read_chain(cert)?;
        let private_key = read_key(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .with_context(|| {
                format!(
                    "the TLS certificate {} and key {} cannot be used together",
                    cert.display(),
                    key.display()
                )
            })?;
        // Both protocols on the one port; a client that offers no ALPN gets HTTP/1.1
        // or, with prior knowledge, HTTP/2 (the connection sniffs the preface).
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            handshake_timeout: config.handshake_timeout,
        }))
    }

    /// The server side of the handshake on `tcp`. A client that does not complete it
    /// within the handshake timeout is dropped, so it cannot hold a connection slot.
    pub async fn handshake(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

/// The certificate chain in `path`, leaf first.
fn read_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the TLS certificate {}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!(
                "the TLS certificate {} is not valid PEM: {e}",
                path.display()
            )
        })?;
    if chain.is_empty() {
        bail!(
            "the TLS certificate {} holds no PEM CERTIFICATE block",
            path.display()
        );
    }
    Ok(chain)
}

/// The private key in `path` (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the TLS key {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "the TLS key {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        ),
        e => anyhow::anyhow!("the TLS key {} is not valid PEM: {e}", path.display()),
    })
}
