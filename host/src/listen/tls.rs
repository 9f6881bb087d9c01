//! TLS termination with rustls. The certificate is served through a resolver whose key pair can be
//! swapped at any time: renewed files on disk are picked up by new handshakes while established
//! connections keep the session they negotiated.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{TlsConfig, TlsVersion};
use crate::fs_watch::FileWatch;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS setup failed: {0}")]
    Setup(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM chain and key and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block found".into()));
    }
    let key_err = |reason: String| TlsError::Key {
        path: key.to_owned(),
        reason,
    };
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| key_err(format!("does not match the certificate: {e}")))?;
    Ok(certified)
}

/// Serves whatever key pair was loaded last.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Reloads after a file change, by result (`tollgate_tls_certificate_reloads_total`).
    pub(crate) reloads: Arc<crate::fs_watch::Reloads>,
}

impl ReloadingCert {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let current = ArcSwap::from_pointee(load_certified_key(cert, key)?);
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current,
            reloads: Arc::default(),
        })
    }

    /// Re-reads the files; on any error the current pair stays in service.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let fresh = load_certified_key(&self.cert, &self.key)?;
        let changed = fresh.cert != self.current.load().cert;
        if changed {
            self.current.store(Arc::new(fresh));
        }
        Ok(changed)
    }

    /// Reloads whenever the files change, until the returned task is aborted.
    pub fn spawn_watcher(self: Arc<Self>) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let mut watch = FileWatch::new(&[self.cert.clone(), self.key.clone()])
            .map_err(std::io::Error::other)?;
        Ok(tokio::spawn(async move {
            while watch.changed().await.is_some() {
                match self.reload() {
                    Ok(true) => {
                        self.reloads.ok.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded")
                    }
                    Ok(false) => {}
                    // Typical mid-renewal state (cert written, key not yet): the next event retries.
                    Err(e) => {
                        self.reloads.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "TLS certificate reload failed; keeping the current one")
                    }
                }
            }
        }))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls server config for `tls`, with ALPN for the protocols we serve.
pub fn server_config(
    tls: &TlsConfig,
    http2: bool,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ReloadingCert>), TlsError> {
    let resolver = Arc::new(ReloadingCert::load(&tls.cert, &tls.key)?);
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok((Arc::new(config), resolver))
}
