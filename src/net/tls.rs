//! TLS for the listeners (rustls with the ring provider, pure Rust but for ring's assembly).
//!
//! `[tls]` names one certificate chain and key that every TLS listener presents
//! (`listeners.native_tls`, `mqtt_tls`, `http_tls`), and optionally a CA bundle to verify
//! client certificates against (mutual TLS; `require_client_cert` refuses clients without
//! one). With `cert_cn_as_username`, a verified client certificate's subject CN logs the
//! client in as that user, without a password (a fleet of devices with their own
//! certificates). The files are re-read on SIGHUP; connections already open keep the session
//! they negotiated.
//!
//! A connection's streams are [`ReadHalf`] and [`WriteHalf`]: plain TCP halves (no locking)
//! or the two halves of a TLS stream.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A server-side TLS connection.
pub type ServerStream = TlsStream<TcpStream>;

/// `[tls]` in brook.toml.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain the TLS listeners present (the server's certificate first).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle client certificates are verified against (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// Refuse TLS clients that present no valid certificate. Needs client_ca_file.
    pub require_client_cert: bool,
    /// A verified client certificate's subject CN is the user name (no password asked).
    pub cert_cn_as_username: bool,
}

/// Why TLS cannot be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A setting is missing; the message names the keys and what to set.
    #[error("{0}")]
    Settings(&'static str),
    /// A certificate, key or CA file named by the setting `key` is unusable.
    #[error("{key} = {path:?}: {reason}")]
    Setting {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A client's certificate, key or CA file is unusable.
    #[error("{path:?}: {reason}")]
    File { path: PathBuf, reason: String },
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsConfig {
    /// Checks the section; `wanted` says whether any TLS listener is configured.
    pub fn validate(&self, wanted: bool) -> Result<(), TlsError> {
        if wanted && (self.cert_file.is_none() || self.key_file.is_none()) {
            return Err(TlsError::Settings(
                "a TLS listener is configured (listeners.*_tls): set tls.cert_file and tls.key_file",
            ));
        }
        if (self.require_client_cert || self.cert_cn_as_username) && self.client_ca_file.is_none() {
            return Err(TlsError::Settings(
                "tls.require_client_cert / tls.cert_cn_as_username: set tls.client_ca_file (the CA that signs client certificates)",
            ));
        }
        Ok(())
    }
}

/// A [`TlsError::Setting`] for the file `path` of setting `key`.
fn bad(key: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Setting {
        key,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_certs(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(key, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(key, path, e))?;
    if certs.is_empty() {
        return Err(bad(key, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The rustls provider every TLS user in Brook shares (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server side from the files; errors name the key and the file.
fn server_config(cfg: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) else {
        return Err(TlsError::Settings(
            "tls.cert_file and tls.key_file are required",
        ));
    };
    let chain = read_certs(cert, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("tls.key_file", key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca, "tls.client_ca_file")? {
                roots.add(c).map_err(|e| bad("tls.client_ca_file", ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            );
            let verifier = if cfg.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| bad("tls.client_ca_file", ca, e))?,
            )
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| bad("tls.cert_file", cert, e))
}

/// The TLS side of the listeners: the acceptor (replaced on reload) and the CN rule.
pub struct TlsServer {
    config: TlsConfig,
    acceptor: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Reads the certificate, key and CA files.
    pub fn open(config: &TlsConfig) -> Result<TlsServer, TlsError> {
        let server = server_config(config)?;
        Ok(TlsServer {
            config: config.clone(),
            acceptor: RwLock::new(TlsAcceptor::from(Arc::new(server))),
        })
    }

    /// Re-reads the files (SIGHUP); on an error the old ones stay in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let server = server_config(&self.config)?;
        match self.acceptor.write() {
            Ok(mut g) => *g = TlsAcceptor::from(Arc::new(server)),
            Err(p) => *p.into_inner() = TlsAcceptor::from(Arc::new(server)),
        }
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        match self.acceptor.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Runs the TLS handshake within `timeout`. Returns the stream and, with
    /// `cert_cn_as_username`, the verified client certificate's CN.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<(TlsStream<TcpStream>, Option<String>), HandshakeError> {
        let tls = tokio::time::timeout(timeout, self.acceptor().accept(stream))
            .await
            .map_err(|_| HandshakeError::TimedOut(timeout))?
            .map_err(|e| HandshakeError::Failed(e.to_string()))?;
        let cn = if self.config.cert_cn_as_username {
            tls.get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| subject_cn(c.as_ref()))
        } else {
            None
        };
        Ok((tls, cn))
    }
}

/// A client-side TLS configuration (ring) trusting the CAs in `ca_file` (PEM) and presenting
/// `cert_key` (certificate chain and key files, PEM) when given. Errors name the file.
pub fn client_config(
    ca_file: &Path,
    cert_key: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let file = |p: &Path, reason: &dyn std::fmt::Display| TlsError::File {
        path: p.to_path_buf(),
        reason: reason.to_string(),
    };
    let certs = |p: &Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
        CertificateDer::pem_file_iter(p)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| file(p, &e))
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_file)? {
        roots.add(c).map_err(|e| file(ca_file, &e))?;
    }
    if roots.is_empty() {
        return Err(file(ca_file, &"no certificate in it"));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    match cert_key {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                certs(cert)?,
                PrivateKeyDer::from_pem_file(key).map_err(|e| file(key, &e))?,
            )
            .map_err(|e| file(cert, &e)),
    }
}

/// Writes `buf` and flushes it. Over TLS a write can leave encrypted bytes in rustls's buffer
/// when the socket is full (the write still reports them taken); only a flush (or a later
/// write) sends them, so every writer that then waits for its peer must flush, or both sides
/// wait for each other. On plain TCP the flush costs nothing.
pub async fn write_flushed<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    w.write_all(buf).await?;
    w.flush().await
}

/// Why a TLS handshake did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish it in time (counted in `brook_auth_handshake_timeouts_total`).
    #[error("no TLS handshake within {0:?}")]
    TimedOut(Duration),
    /// A protocol error, an untrusted or expired certificate, plaintext on a TLS port...
    #[error("TLS handshake failed: {0}")]
    Failed(String),
}

// ---- a minimal DER walk to find the subject's commonName (OID 2.5.4.3) -------------------

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The subject CN of a DER X.509 certificate.
pub fn subject_cn(cert: &[u8]) -> Option<String> {
    let (_, certificate, _) = der(cert)?;
    let (_, mut tbs, _) = der(certificate)?;
    // TBSCertificate: [0] version (optional), serial, signature, issuer, validity, subject.
    let mut fields = Vec::new();
    while let Some((tag, body, rest)) = der(tbs) {
        fields.push((tag, body));
        tbs = rest;
    }
    let skip = usize::from(fields.first()?.0 == 0xa0);
    let (tag, mut subject) = *fields.get(skip + 4)?;
    if tag != 0x30 {
        return None;
    }
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut found = None;
    while let Some((_, set, rest)) = der(subject) {
        subject = rest;
        let (_, attr, _) = der(set)?;
        let (oid_tag, oid, value) = der(attr)?;
        if oid_tag == 0x06 && oid == CN {
            let (_, v, _) = der(value)?;
            found = Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    found
}

// ---- connection halves -------------------------------------------------------------------

/// A byte stream carried some other way (MQTT over WebSockets).
pub trait Carried: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Carried for T {}

/// The reading half of a connection: plain TCP, TLS, or carried.
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
    Carried(tokio::io::ReadHalf<Box<dyn Carried>>),
}

/// The writing half of a connection: plain TCP, TLS, or carried.
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
    Carried(tokio::io::WriteHalf<Box<dyn Carried>>),
}

/// A connection as it was accepted: plain, after its TLS handshake, or inside another
/// protocol (WebSockets).
pub enum Accepted {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Carried(Box<dyn Carried>),
}

impl Accepted {
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Accepted::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Accepted::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
            Accepted::Carried(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Carried(r), WriteHalf::Carried(w))
            }
        }
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Accepted::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Accepted::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Accepted::Carried(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Accepted::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Accepted::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Accepted::Carried(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Accepted::Plain(s) => Pin::new(s).poll_flush(cx),
            Accepted::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Accepted::Carried(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Accepted::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Accepted::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Accepted::Carried(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tls(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Carried(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tls(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Carried(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Carried(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Carried(w) => Pin::new(w).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteHalf::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteHalf::Carried(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Plain(w) => w.is_write_vectored(),
            WriteHalf::Tls(w) => w.is_write_vectored(),
            WriteHalf::Carried(w) => w.is_write_vectored(),
        }
    }
}
