//! SFTP client endpoint: russh (ring) for SSH, russh-sftp for the file protocol.
//!
//! The server's host key is **pinned**: the fingerprint the partner's configuration names is
//! the only one accepted, and a different key refuses the connection with both fingerprints
//! in the message. Never accept a key because it is "new". Logins use a private key file or
//! a password file (read at connect time, never logged). Transfers are pipelined: many READ
//! and WRITE requests in flight, with raised SSH window and packet sizes, because one request
//! at a time is bound by round trips rather than bandwidth.

use super::{BoxFut, RemoteEndpoint, RemoteEntry, RemoteError, RemoteSession};
use crate::config::{SftpAuth, SftpEndpoint};
use russh::client;
use russh::keys::{HashAlg, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{OpenFlags, StatusCode};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// SSH channel window: large enough that the window never throttles a transfer on a fast
/// link (bandwidth × delay of 1 Gbit/s × 100 ms is 12.5 MB).
const SSH_WINDOW: u32 = 16 * 1024 * 1024;
/// The largest packet russh's client accepts to announce.
const SSH_MAX_PACKET: u32 = 65535;
/// Outstanding READ / WRITE requests per transfer: OpenSSH's `sftp` uses 64.
const SFTP_IN_FLIGHT: usize = 64;
/// Largest SFTP packet; requests are sized to what the server announces (limits@openssh.com).
const SFTP_MAX_PACKET: u32 = 256 * 1024;
/// Bytes per WRITE: OpenSSH's server takes up to 256 KiB minus headers.
const SFTP_WRITE_CHUNK: u32 = 255 * 1024;
/// Local read buffer for uploads / write buffer for downloads.
const LOCAL_BUF: usize = 1024 * 1024;

/// An SFTP server as configured for a partner.
pub struct SftpRemote {
    pub spec: SftpEndpoint,
}

impl SftpRemote {
    fn name(&self) -> String {
        describe(&self.spec)
    }
}

/// `sftp://user@host:port/dir`.
pub fn describe(s: &SftpEndpoint) -> String {
    let dir = if s.dir.starts_with('/') {
        s.dir.clone()
    } else {
        format!("/~/{}", s.dir)
    };
    format!("sftp://{}@{}:{}{}", s.user, s.host, s.port, dir)
}

/// Checks the presented host key against the pin; remembers what was presented so a
/// refusal can name it.
struct Pinned {
    expected: String,
    presented: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let fp = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.fingerprint(HashAlg::Sha256),
            // A host certificate: the pin is on the key inside it.
            PublicKeyOrCertificate::Certificate(c) => c.public_key().fingerprint(HashAlg::Sha256),
        }
        .to_string();
        let ok = fp == self.expected;
        if let Ok(mut p) = self.presented.lock() {
            *p = Some(fp);
        }
        Ok(ok)
    }
}

impl RemoteEndpoint for SftpRemote {
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

impl SftpRemote {
    async fn connect_inner(&self) -> Result<Box<dyn RemoteSession>, RemoteError> {
        let s = &self.spec;
        let name = self.name();
        let connect_err = |detail: String| RemoteError::Connect {
            endpoint: name.clone(),
            detail,
        };
        let tcp = tokio::net::TcpStream::connect((s.host.as_str(), s.port))
            .await
            .map_err(|e| {
                connect_err(format!(
                    "{e} (check host and port, and that the server is up and lets this machine in)"
                ))
            })?;
        let _ = tcp.set_nodelay(true);
        let config = client::Config {
            window_size: SSH_WINDOW,
            maximum_packet_size: SSH_MAX_PACKET,
            nodelay: true,
            inactivity_timeout: None,
            ..Default::default()
        };
        let presented = Arc::new(Mutex::new(None));
        let handler = Pinned {
            expected: s.host_key_fingerprint.clone(),
            presented: presented.clone(),
        };
        let mut handle = match client::connect_stream(Arc::new(config), tcp, handler).await {
            Ok(h) => h,
            Err(e) => {
                let seen = presented.lock().ok().and_then(|p| p.clone());
                return Err(match seen {
                    Some(fp) if fp != s.host_key_fingerprint => RemoteError::HostKeyMismatch {
                        endpoint: name.clone(),
                        expected: s.host_key_fingerprint.clone(),
                        presented: fp,
                    },
                    _ => connect_err(format!("SSH handshake failed: {e}")),
                });
            }
        };
        let auth_err = |detail: String| RemoteError::Auth {
            endpoint: name.clone(),
            user: s.user.clone(),
            detail,
        };
        let result = match &s.auth {
            SftpAuth::KeyFile(path) => {
                let key = russh::keys::load_secret_key(path, None).map_err(|e| {
                    auth_err(format!(
                        "cannot load private key {}: {e} (make one with `sluss keygen client`)",
                        path.display()
                    ))
                })?;
                let hash = if key.algorithm().is_rsa() {
                    handle
                        .best_supported_rsa_hash()
                        .await
                        .ok()
                        .flatten()
                        .flatten()
                } else {
                    None
                };
                let key = russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), hash);
                handle
                    .authenticate_publickey(s.user.clone(), key)
                    .await
                    .map_err(|e| auth_err(format!("key authentication failed: {e}")))?
            }
            SftpAuth::PasswordFile(path) => {
                let pw = read_password(path).map_err(auth_err)?;
                handle
                    .authenticate_password(s.user.clone(), pw)
                    .await
                    .map_err(|e| auth_err(format!("password authentication failed: {e}")))?
            }
        };
        if !result.success() {
            let fix = match &s.auth {
                SftpAuth::KeyFile(p) => format!(
                    "the server did not accept the key in {}: give the partner the public key line (the .pub file next to it) and the user name",
                    p.display()
                ),
                SftpAuth::PasswordFile(p) => format!(
                    "the server did not accept the password in {}: check it and the user name with the partner",
                    p.display()
                ),
            };
            return Err(auth_err(fix));
        }
        let channel = handle
            .channel_open_session()
            .await
            .map_err(|e| connect_err(format!("cannot open an SSH channel: {e}")))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| connect_err(format!("the server refused the sftp subsystem: {e}")))?;
        let cfg = russh_sftp::client::Config {
            max_packet_len: SFTP_MAX_PACKET,
            max_concurrent_reads: SFTP_IN_FLIGHT,
            max_concurrent_writes: SFTP_IN_FLIGHT,
            max_write_packet_len: SFTP_WRITE_CHUNK,
            request_timeout_secs: s.io_timeout.as_secs().max(1),
        };
        let sftp = SftpSession::new_with_config(channel.into_stream(), cfg)
            .await
            .map_err(|e| connect_err(format!("SFTP did not start: {e}")))?;
        Ok(Box::new(SftpConn {
            name,
            sftp,
            handle,
            io_timeout: s.io_timeout,
        }))
    }
}

/// The first line of a password file, without its line ending.
pub(crate) fn read_password(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        return Err(format!("password file {} is empty", path.display()));
    }
    Ok(pw)
}

struct SftpConn {
    name: String,
    sftp: SftpSession,
    handle: client::Handle<Pinned>,
    io_timeout: Duration,
}

impl SftpConn {
    fn err(
        &self,
        op: &'static str,
        path: &str,
        e: russh_sftp::client::error::Error,
    ) -> RemoteError {
        use russh_sftp::client::error::Error as E;
        match e {
            E::Status(st) if st.status_code == StatusCode::NoSuchFile => RemoteError::NotFound {
                endpoint: self.name.clone(),
                path: path.to_string(),
            },
            E::Status(st) if st.status_code == StatusCode::PermissionDenied => RemoteError::Op {
                endpoint: self.name.clone(),
                op,
                path: path.to_string(),
                detail: format!(
                    "permission denied ({}); ask the partner to give user access to this folder",
                    st.error_message
                ),
            },
            E::Timeout => RemoteError::Timeout {
                endpoint: self.name.clone(),
                seconds: self.io_timeout.as_secs(),
                during: format!("{op} {path}"),
            },
            other => RemoteError::Op {
                endpoint: self.name.clone(),
                op,
                path: path.to_string(),
                detail: other.to_string(),
            },
        }
    }

    fn io_err(&self, op: &'static str, path: &str, e: std::io::Error) -> RemoteError {
        // russh-sftp reports request failures through io::Error on the File: recover the
        // status where it is there.
        let msg = e.to_string();
        if e.kind() == std::io::ErrorKind::TimedOut || msg == "Timeout" {
            return RemoteError::Timeout {
                endpoint: self.name.clone(),
                seconds: self.io_timeout.as_secs(),
                during: format!("{op} {path}"),
            };
        }
        RemoteError::Op {
            endpoint: self.name.clone(),
            op,
            path: path.to_string(),
            detail: msg,
        }
    }

    /// One operation under the I/O timeout.
    async fn timed<T>(
        &self,
        during: &str,
        f: impl std::future::Future<Output = Result<T, RemoteError>>,
    ) -> Result<T, RemoteError> {
        match tokio::time::timeout(self.io_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(RemoteError::Timeout {
                endpoint: self.name.clone(),
                seconds: self.io_timeout.as_secs(),
                during: during.to_string(),
            }),
        }
    }
}

fn entry_of(name: String, m: &russh_sftp::protocol::FileAttributes) -> RemoteEntry {
    RemoteEntry {
        name,
        size: m.size.unwrap_or(0),
        mtime: m.mtime.map(i64::from),
        is_dir: m.is_dir(),
    }
}

impl RemoteSession for SftpConn {
    fn list<'a>(&'a mut self, dir: &'a str) -> BoxFut<'a, Vec<RemoteEntry>> {
        Box::pin(async move {
            let rd = self
                .timed(&format!("listing {dir}"), async {
                    self.sftp
                        .read_dir(dir)
                        .await
                        .map_err(|e| self.err("list", dir, e))
                })
                .await?;
            let mut out: Vec<RemoteEntry> = rd
                .filter(|e| e.file_name() != "." && e.file_name() != "..")
                .map(|e| entry_of(e.file_name(), &e.metadata()))
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn stat<'a>(&'a mut self, path: &'a str) -> BoxFut<'a, Option<RemoteEntry>> {
        Box::pin(async move {
            let r = self
                .timed(&format!("stat {path}"), async {
                    self.sftp
                        .metadata(path)
                        .await
                        .map_err(|e| self.err("stat", path, e))
                })
                .await;
            match r {
                Ok(m) => Ok(Some(entry_of(
                    path.rsplit('/').next().unwrap_or(path).to_string(),
                    &m,
                ))),
                Err(RemoteError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn get<'a>(&'a mut self, path: &'a str, to: &'a mut std::fs::File) -> BoxFut<'a, u64> {
        Box::pin(async move {
            let mut f = self
                .timed(&format!("opening {path}"), async {
                    self.sftp
                        .open(path)
                        .await
                        .map_err(|e| self.err("open", path, e))
                })
                .await?;
            let mut buf = vec![0u8; LOCAL_BUF];
            let mut n = 0u64;
            loop {
                // The read fills from many outstanding requests; the timeout is per block.
                let k = match tokio::time::timeout(self.io_timeout, f.read(&mut buf)).await {
                    Ok(Ok(k)) => k,
                    Ok(Err(e)) => return Err(self.io_err("read", path, e)),
                    Err(_) => {
                        return Err(RemoteError::Timeout {
                            endpoint: self.name.clone(),
                            seconds: self.io_timeout.as_secs(),
                            during: format!("reading {path} at byte {n}"),
                        });
                    }
                };
                if k == 0 {
                    break;
                }
                to.write_all(&buf[..k])?;
                n += k as u64;
            }
            let _ = self
                .timed(&format!("closing {path}"), async {
                    f.shutdown()
                        .await
                        .map_err(|e| self.io_err("close", path, e))
                })
                .await;
            Ok(n)
        })
    }

    fn put<'a>(&'a mut self, from: &'a mut std::fs::File, path: &'a str) -> BoxFut<'a, u64> {
        Box::pin(async move {
            // EXCLUDE: never replace a file that is already there.
            let mut f = self
                .timed(&format!("creating {path}"), async {
                    self.sftp
                        .open_with_flags(
                            path,
                            OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE,
                        )
                        .await
                        .map_err(|e| self.err("create", path, e))
                })
                .await?;
            let mut buf = vec![0u8; LOCAL_BUF];
            let mut n = 0u64;
            loop {
                let k = from.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                match tokio::time::timeout(self.io_timeout, f.write_all(&buf[..k])).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(self.io_err("write", path, e)),
                    Err(_) => {
                        return Err(RemoteError::Timeout {
                            endpoint: self.name.clone(),
                            seconds: self.io_timeout.as_secs(),
                            during: format!("writing {path} at byte {n}"),
                        });
                    }
                }
                n += k as u64;
            }
            // flush waits for every WRITE's status and asks the server to fsync
            // (fsync@openssh.com) where it offers that; shutdown closes the handle, whose
            // status is the server's last word on the file.
            self.timed(&format!("finishing {path}"), async {
                f.flush().await.map_err(|e| self.io_err("write", path, e))?;
                f.shutdown()
                    .await
                    .map_err(|e| self.io_err("close", path, e))
            })
            .await?;
            Ok(n)
        })
    }

    fn rename<'a>(&'a mut self, from: &'a str, to: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            // SFTP v3 RENAME fails when `to` exists (OpenSSH links, then unlinks): it never
            // replaces a delivered file.
            self.timed(&format!("renaming {from} to {to}"), async {
                self.sftp
                    .rename(from, to)
                    .await
                    .map_err(|e| self.err("rename", from, e))
            })
            .await
        })
    }

    fn remove<'a>(&'a mut self, path: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.timed(&format!("removing {path}"), async {
                self.sftp
                    .remove_file(path)
                    .await
                    .map_err(|e| self.err("remove", path, e))
            })
            .await
        })
    }

    fn close<'a>(&'a mut self) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let _ = tokio::time::timeout(self.io_timeout, self.sftp.close()).await;
            let _ = tokio::time::timeout(
                self.io_timeout,
                self.handle
                    .disconnect(russh::Disconnect::ByApplication, "done", "en"),
            )
            .await;
            Ok(())
        })
    }
}

/// A new ed25519 client key for logging in to partners' SFTP servers.
pub struct ClientKey {
    /// The private key in OpenSSH format (unencrypted: the daemon reads it unattended).
    pub private_openssh: String,
    /// The public-key line to give the partner (`ssh-ed25519 AAAA… comment`).
    pub public_line: String,
    /// Its SHA-256 fingerprint (`SHA256:…`), to confirm with the partner.
    pub fingerprint: String,
}

/// Generate an ed25519 client key from the operating system's random source.
pub fn generate_client_key(comment: &str) -> Result<ClientKey, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness from the system: {e}"))?;
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    seed.fill(0);
    let mut key = russh::keys::PrivateKey::from(pair);
    key.set_comment(comment);
    let private_openssh = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| e.to_string())?
        .to_string();
    let public = key.public_key();
    Ok(ClientKey {
        private_openssh,
        public_line: public.to_openssh().map_err(|e| e.to_string())?,
        fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
    })
}
