//! [`ServerTls`]: TLS for [`serve`](super::serve) (`https://`, `wss://`) with rustls, from a
//! PEM certificate chain and key that can be reloaded while serving.
//!
//! The rustls configuration is built once, around a certificate resolver that hands every
//! handshake the pair in effect. A reload swaps that pair: handshakes after it present the
//! new certificate, and connections already open keep the session they negotiated.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::websocket::{ConfigError, Result};

const CERT_FILE: &str = "TLS certificate file";
const KEY_FILE: &str = "TLS key file";

/// The certificate chain a server presents and its private key, read from PEM files; give it
/// to [`Serve::tls`](super::Serve::tls) to serve `https://` and `wss://`. Feature `tls`.
///
/// - The certificate file holds the chain, the server's own certificate first, then the
///   intermediates (the order certificate authorities deliver `fullchain.pem` in).
/// - The key file holds its private key: PKCS#8 (`BEGIN PRIVATE KEY`), RSA (`BEGIN RSA
///   PRIVATE KEY`) or EC (`BEGIN EC PRIVATE KEY`), unencrypted. It may be the same file as
///   the certificates.
///
/// Loading checks that both files read, that the certificate file has at least one
/// certificate, that the key is one rustls can sign with, and that it belongs to the first
/// certificate. It does not check dates or names: clients do.
///
/// [`reload`](Self::reload) reads the files again (after a certificate renewal, on SIGHUP
/// say): new handshakes get the new pair, open connections are not touched, and a pair that
/// does not pass the checks is refused while the old one stays in use. Clones share the pair.
///
/// TLS 1.2 and 1.3 with rustls' safe defaults (ring), ALPN `http/1.1`, no client
/// certificates.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
    acceptor: TlsAcceptor,
}

struct Inner {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_path", &self.inner.cert_path)
            .field("key_path", &self.inner.key_path)
            .finish_non_exhaustive()
    }
}

/// The pair in effect: what every handshake presents.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

impl ServerTls {
    /// Reads the certificate chain from `cert_chain` and its private key from `key` (PEM
    /// files; see above for what they hold and what is checked).
    ///
    /// # Errors
    /// [`WebSocketError::Config`](crate::websocket::WebSocketError::Config) naming the file
    /// and what is wrong with it: unreadable, no certificate, no key, a key rustls cannot use,
    /// or a key that does not match the first certificate.
    pub fn from_pem_files(cert_chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        let cert_path = cert_chain.as_ref().to_owned();
        let key_path = key.as_ref().to_owned();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = load(&cert_path, &key_path, &provider)?;
        let current = Arc::new(Current(RwLock::new(pair)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new(CERT_FILE, cert_path.display(), e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // The server speaks HTTP/1.1 only; a client that offers h2 as well picks this.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            inner: Arc::new(Inner {
                cert_path,
                key_path,
                provider,
                current,
            }),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Reads both files again and, if they pass the checks of
    /// [`from_pem_files`](Self::from_pem_files), presents the new pair from the next
    /// handshake on. Open connections are not touched.
    ///
    /// # Errors
    /// As [`from_pem_files`](Self::from_pem_files); the pair in use then stays.
    pub fn reload(&self) -> Result<()> {
        let inner = &self.inner;
        let pair = load(&inner.cert_path, &inner.key_path, &inner.provider)?;
        *inner
            .current
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = pair;
        Ok(())
    }

    /// The certificate file this was loaded from.
    pub fn cert_path(&self) -> &Path {
        &self.inner.cert_path
    }

    /// The key file this was loaded from.
    pub fn key_path(&self) -> &Path {
        &self.inner.key_path
    }

    /// The TLS handshake of a new connection, within `timeout` (the handshake timeout of
    /// [`serve`](super::serve)); `None` when it fails or times out. A timeout counts in
    /// `svc_ws_handshake_timeouts_total`, as a request that does not arrive in time does.
    pub(super) async fn accept(
        &self,
        tcp: TcpStream,
        timeout: Duration,
        peer: SocketAddr,
    ) -> Option<TlsStream<TcpStream>> {
        match tokio::time::timeout(timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                metrics::counter!("svc_ws_handshake_timeouts_total").increment(1);
                tracing::debug!(%peer, "connection closed: TLS handshake not complete in time");
                None
            }
        }
    }
}

/// Reads and checks the pair.
fn load(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>> {
    let bad_cert = |expected: String| ConfigError::new(CERT_FILE, cert_path.display(), expected);
    let bad_key = |expected: String| ConfigError::new(KEY_FILE, key_path.display(), expected);
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("a readable file ({e})"));

    let pem = read(cert_path).map_err(bad_cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(format!("PEM certificates ({e})")))?;
    if chain.is_empty() {
        return Err(
            bad_cert("PEM with at least one CERTIFICATE section (none found)".to_owned()).into(),
        );
    }
    let pem = read(key_path).map_err(bad_key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        bad_key(format!(
            "a PEM private key: PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY ({})",
            match e {
                rustls_pki_types::pem::Error::NoItemsFound => "none found".to_owned(),
                e => e.to_string(),
            }
        ))
    })?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad_key(format!("an RSA, ECDSA or Ed25519 private key ({e})")))?;
    let pair = CertifiedKey::new(chain, key);
    match pair.keys_match() {
        // `Unknown`: the key cannot tell its public half; the handshake will tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(bad_key(format!(
                "the private key of the first certificate in {} (the chain must start with the \
                 server's own certificate)",
                cert_path.display()
            ))
            .into());
        }
        Err(e) => return Err(bad_cert(format!("a valid X.509 certificate first ({e})")).into()),
    }
    Ok(Arc::new(pair))
}
