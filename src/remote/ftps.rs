//! FTPS client endpoint: suppaftp (tokio) over rustls with the ring provider.
//!
//! Rules that keep payment files intact and servers happy:
//! - **binary mode always**, set right after login: suppaftp starts in ASCII mode, which
//!   rewrites line endings and would break seals (data corruption);
//! - the server is verified against the partner's CA file, or its certificate is pinned by
//!   SHA-256 fingerprint; an unverified certificate is never accepted;
//! - data connections resume the control connection's TLS session (one rustls `ClientConfig`,
//!   with its session cache, serves both), which vsftpd's default `require_ssl_reuse=YES`
//!   demands;
//! - passive mode (`PASV`, or `EPSV` when configured, with one fallback to `EPSV` when the
//!   server does not know `PASV`).

use super::{BoxFut, RemoteEndpoint, RemoteEntry, RemoteError, RemoteSession};
use crate::config::{FtpsEndpoint, FtpsMode, FtpsTrust, PassiveMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Local buffer for copying between the spool file and the data connection.
const LOCAL_BUF: usize = 256 * 1024;

/// An FTPS server as configured for a partner.
pub struct FtpsRemote {
    pub spec: FtpsEndpoint,
}

/// `ftps://user@host:port/dir` (`ftps-implicit://…` for implicit TLS).
pub fn describe(f: &FtpsEndpoint) -> String {
    let scheme = match f.mode {
        FtpsMode::Explicit => "ftps",
        FtpsMode::Implicit => "ftps-implicit",
    };
    let dir = if f.dir.starts_with('/') {
        f.dir.clone()
    } else {
        format!("/~/{}", f.dir)
    };
    format!("{scheme}://{}@{}:{}{}", f.user, f.host, f.port, dir)
}

/// Install ring as the process-wide rustls provider. Two providers compiled in would make
/// `ClientConfig::builder()` panic; sluss builds its configs with an explicit provider
/// anyway, and this covers any code that does not.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Accepts exactly one certificate: the one whose SHA-256 (of the DER) is pinned. The TLS
/// handshake signatures are still verified, so the server must hold that certificate's key.
#[derive(Debug)]
struct PinnedCert {
    expected: String,
    presented: Arc<Mutex<Option<String>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    let d = sha2::Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = sha256_hex(end_entity.as_ref());
        let ok = fp == self.expected;
        if let Ok(mut p) = self.presented.lock() {
            *p = Some(fp);
        }
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Colon-separated upper-case hex, as `openssl x509 -fingerprint -sha256` prints it.
fn openssl_style(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect::<Vec<_>>()
        .join(":")
}

impl FtpsRemote {
    fn name(&self) -> String {
        describe(&self.spec)
    }

    /// The TLS client configuration: one per connection, shared by the control and all data
    /// connections, so its session cache lets data connections resume the control session.
    fn tls_config(
        &self,
        presented: Arc<Mutex<Option<String>>>,
    ) -> Result<Arc<rustls::ClientConfig>, RemoteError> {
        install_crypto_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert_err = |detail: String| RemoteError::Certificate {
            endpoint: self.name(),
            detail,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| cert_err(format!("TLS setup: {e}")))?;
        let config = match &self.spec.trust {
            FtpsTrust::CaFile(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                    cert_err(format!("cannot read CA file {}: {e}", path.display()))
                })?;
                for c in certs {
                    let c = c.map_err(|e| {
                        cert_err(format!("bad certificate in {}: {e}", path.display()))
                    })?;
                    roots.add(c).map_err(|e| {
                        cert_err(format!(
                            "unusable CA certificate in {}: {e}",
                            path.display()
                        ))
                    })?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            FtpsTrust::Fingerprint(hex) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCert {
                    expected: hex.clone(),
                    presented,
                    provider,
                }))
                .with_no_client_auth(),
        };
        // The default resumption store (in memory) is what makes data connections resume.
        Ok(Arc::new(config))
    }

    async fn connect_inner(&self) -> Result<Box<dyn RemoteSession>, RemoteError> {
        let s = &self.spec;
        let name = self.name();
        let presented = Arc::new(Mutex::new(None));
        let tls = self.tls_config(presented.clone())?;
        let connector = AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(tls));
        let connect_err = |detail: String| RemoteError::Connect {
            endpoint: name.clone(),
            detail,
        };
        let tls_err = |e: FtpError| -> RemoteError {
            let detail = e.to_string();
            if let Some(fp) = presented.lock().ok().and_then(|p| p.clone())
                && let FtpsTrust::Fingerprint(want) = &s.trust
                && &fp != want
            {
                return RemoteError::Certificate {
                    endpoint: name.clone(),
                    detail: format!(
                        "the server presented certificate SHA256:{}, but the configuration pins SHA256:{}: refusing to connect (if the partner really changed its certificate, confirm the new fingerprint with them and update cert_fingerprint)",
                        openssl_style(&fp),
                        openssl_style(want)
                    ),
                };
            }
            if detail.contains("certificate") || detail.contains("Certificate") {
                RemoteError::Certificate {
                    endpoint: name.clone(),
                    detail: format!(
                        "{detail} (the certificate does not verify against the configured CA file / name {}: check ca_file with the partner)",
                        s.host
                    ),
                }
            } else {
                connect_err(format!("TLS handshake failed: {detail}"))
            }
        };
        let unreachable = |e: &dyn std::fmt::Display| {
            connect_err(format!(
                "{e} (check host and port, and that the server is up and lets this machine in)"
            ))
        };
        let mut ftp = match s.mode {
            FtpsMode::Explicit => {
                let tcp = tokio::net::TcpStream::connect((s.host.as_str(), s.port))
                    .await
                    .map_err(|e| unreachable(&e))?;
                let _ = tcp.set_nodelay(true);
                let plain = AsyncRustlsFtpStream::connect_with_stream(tcp)
                    .await
                    .map_err(|e| connect_err(format!("no FTP greeting: {e}")))?;
                plain
                    .into_secure(connector, &s.host)
                    .await
                    .map_err(tls_err)?
            }
            FtpsMode::Implicit => {
                let mut ftp = AsyncRustlsFtpStream::connect_secure_implicit(
                    (s.host.as_str(), s.port),
                    connector,
                    &s.host,
                )
                .await
                .map_err(|e| match e {
                    FtpError::ConnectionError(io) => unreachable(&io),
                    other => tls_err(other),
                })?;
                // suppaftp sends PBSZ/PROT only after AUTH TLS; an implicit session needs
                // them too, or servers refuse data connections ("522 Data connections must
                // be encrypted").
                for cmd in ["PBSZ 0", "PROT P"] {
                    ftp.custom_command(cmd, &[suppaftp::Status::CommandOk])
                        .await
                        .map_err(|e| {
                            connect_err(format!("the server refused {cmd}: {}", reply_text(&e)))
                        })?;
                }
                ftp
            }
        };
        let password =
            super::sftp::read_password(&s.password_file).map_err(|d| RemoteError::Auth {
                endpoint: name.clone(),
                user: s.user.clone(),
                detail: d,
            })?;
        ftp.login(s.user.as_str(), password.as_str())
            .await
            .map_err(|e| RemoteError::Auth {
                endpoint: name.clone(),
                user: s.user.clone(),
                detail: format!(
                    "{} (check the user and the password in {} with the partner)",
                    reply_text(&e),
                    s.password_file.display()
                ),
            })?;
        // Binary, always, before anything else: ASCII mode rewrites line endings.
        ftp.transfer_type(FileType::Binary)
            .await
            .map_err(|e| connect_err(format!("the server refused binary mode (TYPE I): {e}")))?;
        ftp.set_mode(match s.passive {
            PassiveMode::Pasv => Mode::Passive,
            PassiveMode::Epsv => Mode::ExtendedPassive,
        });
        Ok(Box::new(FtpsConn {
            name,
            ftp,
            io_timeout: s.io_timeout,
            passive: s.passive,
            fell_back: false,
        }))
    }
}

/// The server's reply text of an FTP error, or the error itself.
fn reply_text(e: &FtpError) -> String {
    match e {
        FtpError::UnexpectedResponse(r) => format!(
            "{} {}",
            r.status.code(),
            String::from_utf8_lossy(&r.body).trim()
        ),
        other => other.to_string(),
    }
}

fn status_of(e: &FtpError) -> Option<u32> {
    match e {
        FtpError::UnexpectedResponse(r) => Some(r.status.code()),
        _ => None,
    }
}

impl RemoteEndpoint for FtpsRemote {
    fn describe(&self) -> String {
        self.name()
    }

    fn connect(&self) -> BoxFut<'_, Box<dyn RemoteSession>> {
        Box::pin(async move {
            let t = self.spec.connect_timeout;
            match tokio::time::timeout(t, self.connect_inner()).await {
                Ok(r) => r,
                Err(_) => Err(RemoteError::Timeout {
                    endpoint: self.name(),
                    seconds: t.as_secs(),
                    during: "connecting and logging in (is the server up and reachable from here?)"
                        .into(),
                }),
            }
        })
    }
}

struct FtpsConn {
    name: String,
    ftp: AsyncRustlsFtpStream,
    io_timeout: Duration,
    passive: PassiveMode,
    fell_back: bool,
}

impl FtpsConn {
    fn err(&self, op: &'static str, path: &str, e: FtpError) -> RemoteError {
        match status_of(&e) {
            Some(550) if op != "create" => RemoteError::NotFound {
                endpoint: self.name.clone(),
                path: path.to_string(),
            },
            _ => RemoteError::Op {
                endpoint: self.name.clone(),
                op,
                path: path.to_string(),
                detail: reply_text(&e),
            },
        }
    }

    fn timeout(&self, during: String) -> RemoteError {
        RemoteError::Timeout {
            endpoint: self.name.clone(),
            seconds: self.io_timeout.as_secs(),
            during,
        }
    }

    /// A server that does not know PASV answers 500/502 when a data connection is asked
    /// for; switch to EPSV once and say so.
    fn maybe_fall_back(&mut self, e: &FtpError) -> bool {
        if self.passive == PassiveMode::Pasv
            && !self.fell_back
            && matches!(status_of(e), Some(500 | 502))
        {
            tracing::warn!(
                endpoint = %self.name,
                "the server does not accept PASV; using EPSV (set passive = \"epsv\" to skip this)"
            );
            self.fell_back = true;
            self.ftp.set_mode(Mode::ExtendedPassive);
            return true;
        }
        false
    }

    async fn list_lines(&mut self, dir: &str) -> Result<Vec<String>, FtpError> {
        match self.ftp.list(Some(dir)).await {
            Err(e) if self.maybe_fall_back(&e) => self.ftp.list(Some(dir)).await,
            r => r,
        }
    }
}

impl RemoteSession for FtpsConn {
    fn list<'a>(&'a mut self, dir: &'a str) -> BoxFut<'a, Vec<RemoteEntry>> {
        Box::pin(async move {
            let lines = match tokio::time::timeout(self.io_timeout, self.list_lines(dir)).await {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => return Err(self.err("list", dir, e)),
                Err(_) => return Err(self.timeout(format!("listing {dir}"))),
            };
            let mut out: Vec<RemoteEntry> = lines
                .iter()
                .filter_map(|l| suppaftp::list::File::try_from(l.as_str()).ok())
                .filter(|f| f.name() != "." && f.name() != "..")
                .map(|f| RemoteEntry {
                    name: f.name().to_string(),
                    size: f.size() as u64,
                    mtime: f
                        .modified()
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs() as i64),
                    is_dir: f.is_directory(),
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn stat<'a>(&'a mut self, path: &'a str) -> BoxFut<'a, Option<RemoteEntry>> {
        Box::pin(async move {
            // SIZE (RFC 3659) in binary mode is the exact byte count; 550 means no such file.
            match tokio::time::timeout(self.io_timeout, self.ftp.size(path)).await {
                Ok(Ok(n)) => Ok(Some(RemoteEntry {
                    name: path.rsplit('/').next().unwrap_or(path).to_string(),
                    size: n as u64,
                    mtime: None,
                    is_dir: false,
                })),
                Ok(Err(e)) if status_of(&e) == Some(550) => Ok(None),
                Ok(Err(e)) => Err(self.err("stat", path, e)),
                Err(_) => Err(self.timeout(format!("asking the size of {path}"))),
            }
        })
    }

    fn get<'a>(&'a mut self, path: &'a str, to: &'a mut std::fs::File) -> BoxFut<'a, u64> {
        Box::pin(async move {
            let t = self.io_timeout;
            let opened = match tokio::time::timeout(t, self.ftp.retr_as_stream(path)).await {
                Ok(Err(e)) if self.maybe_fall_back(&e) => {
                    tokio::time::timeout(t, self.ftp.retr_as_stream(path)).await
                }
                r => r,
            };
            let mut stream = match opened {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(self.err("download", path, e)),
                Err(_) => return Err(self.timeout(format!("opening {path} for download"))),
            };
            let mut buf = vec![0u8; LOCAL_BUF];
            let mut n = 0u64;
            loop {
                let k = match tokio::time::timeout(t, stream.read(&mut buf)).await {
                    Ok(Ok(k)) => k,
                    Ok(Err(e)) => {
                        return Err(RemoteError::Op {
                            endpoint: self.name.clone(),
                            op: "download",
                            path: path.to_string(),
                            detail: format!("data connection failed at byte {n}: {e}"),
                        });
                    }
                    Err(_) => return Err(self.timeout(format!("reading {path} at byte {n}"))),
                };
                if k == 0 {
                    break;
                }
                to.write_all(&buf[..k])?;
                n += k as u64;
            }
            // The server's 226 is its word that the whole file was sent.
            match tokio::time::timeout(t, stream.finish()).await {
                Ok(Ok(_)) => Ok(n),
                Ok(Err(e)) => Err(self.err("download", path, e)),
                Err(_) => Err(self.timeout(format!("waiting for the end of {path}"))),
            }
        })
    }

    fn put<'a>(
        &'a mut self,
        from: &'a mut (dyn std::io::Read + Send),
        path: &'a str,
    ) -> BoxFut<'a, u64> {
        Box::pin(async move {
            let t = self.io_timeout;
            let opened = match tokio::time::timeout(t, self.ftp.put_with_stream(path)).await {
                Ok(Err(e)) if self.maybe_fall_back(&e) => {
                    tokio::time::timeout(t, self.ftp.put_with_stream(path)).await
                }
                r => r,
            };
            let mut stream = match opened {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(self.err("create", path, e)),
                Err(_) => return Err(self.timeout(format!("opening {path} for upload"))),
            };
            // Bytes go out exactly as read: put_with_stream never converts line endings.
            let mut buf = vec![0u8; LOCAL_BUF];
            let mut n = 0u64;
            loop {
                let k = from.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                match tokio::time::timeout(t, stream.write_all(&buf[..k])).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(RemoteError::Op {
                            endpoint: self.name.clone(),
                            op: "upload",
                            path: path.to_string(),
                            detail: format!("data connection failed at byte {n}: {e}"),
                        });
                    }
                    Err(_) => return Err(self.timeout(format!("writing {path} at byte {n}"))),
                }
                n += k as u64;
            }
            match tokio::time::timeout(t, stream.finish()).await {
                Ok(Ok(_)) => Ok(n),
                Ok(Err(e)) => Err(self.err("upload", path, e)),
                Err(_) => Err(self.timeout(format!("waiting for the server to confirm {path}"))),
            }
        })
    }

    fn rename<'a>(&'a mut self, from: &'a str, to: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            match tokio::time::timeout(self.io_timeout, self.ftp.rename(from, to)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(self.err("rename", from, e)),
                Err(_) => Err(self.timeout(format!("renaming {from} to {to}"))),
            }
        })
    }

    fn remove<'a>(&'a mut self, path: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            match tokio::time::timeout(self.io_timeout, self.ftp.rm(path)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(self.err("remove", path, e)),
                Err(_) => Err(self.timeout(format!("removing {path}"))),
            }
        })
    }

    fn close<'a>(&'a mut self) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let _ = tokio::time::timeout(self.io_timeout, self.ftp.quit()).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprints_print_like_openssl() {
        assert_eq!(super::openssl_style("ab01"), "AB:01");
        assert_eq!(
            super::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
