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
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;

/// SSH channel window: large enough that the window never throttles a transfer on a fast
/// link (bandwidth × delay of 1 Gbit/s × 100 ms is 12.5 MB).
const SSH_WINDOW: u32 = 16 * 1024 * 1024;
/// The largest packet russh's client accepts to announce.
const SSH_MAX_PACKET: u32 = 65535;
/// Outstanding READ / WRITE requests per transfer: OpenSSH's `sftp` uses 64. Reads start
/// with one request and double the window with every full reply, so a small file costs no
/// requests past its end and a large one reaches the full window within a few replies.
const SFTP_IN_FLIGHT: usize = 64;
/// Largest SFTP packet we accept: a full READ reply of `SFTP_CHUNK` plus headers.
const SFTP_MAX_PACKET: u32 = 256 * 1024;
/// Bytes per READ / WRITE request, lowered to what the server announces
/// (limits@openssh.com); OpenSSH's server takes 255 KiB.
const SFTP_CHUNK: u32 = 255 * 1024;
/// Files fetched at once by `get_many`: small files are bound by round trips (OPEN, READ,
/// READ, CLOSE), so overlapping a few hides them; more adds little and holds more handles.
const SFTP_FILES_IN_FLIGHT: usize = 8;

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
            request_timeout_secs: s.io_timeout.as_secs().max(1),
            ..Default::default()
        };
        let mut raw = RawSftpSession::new_with_config(channel.into_stream(), cfg);
        raw.set_timeout(s.io_timeout.as_secs().max(1));
        let version = raw
            .init()
            .await
            .map_err(|e| connect_err(format!("SFTP did not start: {e}")))?;
        let has = |ext: &str| version.extensions.get(ext).is_some_and(|v| v == "1");
        let mut read_chunk = SFTP_CHUNK;
        let mut write_chunk = SFTP_CHUNK;
        if has(russh_sftp::extensions::LIMITS)
            && let Ok(l) = raw.limits().await
        {
            let limits = russh_sftp::client::rawsession::Limits::from(l);
            if let Some(r) = limits.read_len {
                read_chunk = read_chunk.min(r.min(u64::from(u32::MAX)) as u32);
            }
            if let Some(w) = limits.write_len {
                write_chunk = write_chunk.min(w.min(u64::from(u32::MAX)) as u32);
            }
            raw.set_limits(limits);
        }
        Ok(Box::new(SftpConn {
            name,
            raw: Arc::new(raw),
            fsync: has(russh_sftp::extensions::FSYNC),
            read_chunk: read_chunk.max(1),
            write_chunk: write_chunk.max(1),
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
    raw: Arc<RawSftpSession>,
    /// The server offers fsync@openssh.com: uploads are fsynced before they count.
    fsync: bool,
    read_chunk: u32,
    write_chunk: u32,
    handle: client::Handle<Pinned>,
    io_timeout: Duration,
}

fn is_eof(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(st) if st.status_code == StatusCode::Eof)
}

/// Fill `buf` from `r` as far as it goes; fewer bytes only at the end of the file.
fn read_full(r: &mut (dyn std::io::Read + Send), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl SftpConn {
    fn err(&self, op: &'static str, path: &str, e: SftpError) -> RemoteError {
        match e {
            SftpError::Status(st) if st.status_code == StatusCode::NoSuchFile => {
                RemoteError::NotFound {
                    endpoint: self.name.clone(),
                    path: path.to_string(),
                }
            }
            SftpError::Status(st) if st.status_code == StatusCode::PermissionDenied => {
                RemoteError::Op {
                    endpoint: self.name.clone(),
                    op,
                    path: path.to_string(),
                    detail: format!(
                        "permission denied ({}); ask the partner to give the user access to this folder",
                        st.error_message
                    ),
                }
            }
            SftpError::Timeout => self.timeout(format!("{op} {path}")),
            other => RemoteError::Op {
                endpoint: self.name.clone(),
                op,
                path: path.to_string(),
                detail: other.to_string(),
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

    /// One request under the I/O timeout.
    async fn timed<T>(
        &self,
        op: &'static str,
        path: &str,
        f: impl std::future::Future<Output = Result<T, SftpError>>,
    ) -> Result<T, RemoteError> {
        match tokio::time::timeout(self.io_timeout, f).await {
            Ok(r) => r.map_err(|e| self.err(op, path, e)),
            Err(_) => Err(self.timeout(format!("{op} {path}"))),
        }
    }

    async fn close_handle(&self, h: &str, path: &str) -> Result<(), RemoteError> {
        self.timed("close", path, self.raw.close(h))
            .await
            .map(|_| ())
    }

    /// Open, download (pipelined), close.
    async fn get_one(&self, path: &str, to: &mut std::fs::File) -> Result<u64, RemoteError> {
        let h = self
            .timed(
                "open",
                path,
                self.raw
                    .open(path, OpenFlags::READ, FileAttributes::default()),
            )
            .await?
            .handle;
        let r = self.download(&h, path, to).await;
        let closed = self.close_handle(&h, path).await;
        let n = r?;
        closed?;
        Ok(n)
    }

    /// Pipelined download of an open handle into `to`, in order.
    async fn download(
        &self,
        h: &str,
        path: &str,
        to: &mut std::fs::File,
    ) -> Result<u64, RemoteError> {
        type Reply = (u64, u32, Result<Vec<u8>, SftpError>);
        let mut set: JoinSet<Reply> = JoinSet::new();
        let spawn = |set: &mut JoinSet<Reply>, off: u64, len: u32| {
            let raw = self.raw.clone();
            let h = h.to_string();
            set.spawn(async move { (off, len, raw.read(h, off, len).await.map(|d| d.data)) });
        };
        let mut chunk = self.read_chunk;
        let mut window = 1usize;
        let mut next = 0u64; // next offset to ask for
        let mut written = 0u64; // bytes written to `to`, contiguous from 0
        let mut eof: Option<u64> = None;
        let mut early: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        loop {
            while eof.is_none() && set.len() < window {
                spawn(&mut set, next, chunk);
                next += u64::from(chunk);
            }
            let Some(joined) = (match tokio::time::timeout(self.io_timeout, set.join_next()).await {
                Ok(j) => j,
                Err(_) => return Err(self.timeout(format!("reading {path} at byte {written}"))),
            }) else {
                break;
            };
            let (off, len, res) = joined.map_err(|e| RemoteError::Op {
                endpoint: self.name.clone(),
                op: "read",
                path: path.to_string(),
                detail: format!("read task failed: {e}"),
            })?;
            match res {
                Ok(data) if data.is_empty() => eof = Some(eof.map_or(off, |e| e.min(off))),
                Ok(data) => {
                    let n = data.len() as u32;
                    if n < len {
                        // A short reply: the end of the file, or the server's own limit.
                        // Ask for the rest of the range; if the limit it is, use it.
                        chunk = chunk.min(n.max(1));
                        if eof.is_none_or(|e| off + u64::from(n) < e) {
                            spawn(&mut set, off + u64::from(n), len - n);
                        }
                    } else {
                        window = (window * 2).min(SFTP_IN_FLIGHT);
                    }
                    early.insert(off, data);
                }
                Err(e) if is_eof(&e) => eof = Some(eof.map_or(off, |x| x.min(off))),
                Err(e) => return Err(self.err("read", path, e)),
            }
            while let Some(d) = early.remove(&written) {
                to.write_all(&d)?;
                written += d.len() as u64;
            }
        }
        if !early.is_empty() || eof.is_some_and(|e| e != written) {
            return Err(RemoteError::Op {
                endpoint: self.name.clone(),
                op: "read",
                path: path.to_string(),
                detail: format!(
                    "the server's replies left a gap after byte {written}; the file may be changing while it is read"
                ),
            });
        }
        Ok(written)
    }

    /// Pipelined upload from `from` into an open handle.
    async fn upload(
        &self,
        h: &str,
        path: &str,
        from: &mut (dyn std::io::Read + Send),
    ) -> Result<u64, RemoteError> {
        let mut set: JoinSet<Result<(), SftpError>> = JoinSet::new();
        let mut off = 0u64;
        loop {
            let mut buf = vec![0u8; self.write_chunk as usize];
            let n = read_full(from, &mut buf)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            let raw = self.raw.clone();
            let hh = h.to_string();
            let at = off;
            set.spawn(async move { raw.write(hh, at, buf).await.map(|_| ()) });
            off += n as u64;
            while set.len() >= SFTP_IN_FLIGHT {
                self.join_write(&mut set, path, off).await?;
            }
        }
        while !set.is_empty() {
            self.join_write(&mut set, path, off).await?;
        }
        Ok(off)
    }

    async fn join_write(
        &self,
        set: &mut JoinSet<Result<(), SftpError>>,
        path: &str,
        off: u64,
    ) -> Result<(), RemoteError> {
        match tokio::time::timeout(self.io_timeout, set.join_next()).await {
            Err(_) => Err(self.timeout(format!("writing {path} near byte {off}"))),
            Ok(None) => Ok(()),
            Ok(Some(Err(e))) => Err(RemoteError::Op {
                endpoint: self.name.clone(),
                op: "write",
                path: path.to_string(),
                detail: format!("write task failed: {e}"),
            }),
            Ok(Some(Ok(r))) => r.map_err(|e| self.err("write", path, e)),
        }
    }
}

/// Poll `futs` with at most `limit` running at once; results in the order given.
async fn run_limited<'f, T>(
    futs: Vec<std::pin::Pin<Box<impl std::future::Future<Output = T> + 'f>>>,
    limit: usize,
) -> Vec<T> {
    use std::task::Poll;
    let mut results: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    let mut queue = futs.into_iter().enumerate();
    let mut active = Vec::new();
    std::future::poll_fn(|cx| {
        loop {
            while active.len() < limit.max(1) {
                match queue.next() {
                    Some(x) => active.push(x),
                    None => break,
                }
            }
            let mut done_one = false;
            let mut i = 0;
            while i < active.len() {
                if let Poll::Ready(v) = active[i].1.as_mut().poll(cx) {
                    let (idx, _) = active.swap_remove(i);
                    results[idx] = Some(v);
                    done_one = true;
                } else {
                    i += 1;
                }
            }
            if active.is_empty() {
                return Poll::Ready(());
            }
            if !done_one {
                return Poll::Pending;
            }
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

fn entry_of(name: String, m: &FileAttributes) -> RemoteEntry {
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
            let h = self.timed("list", dir, self.raw.opendir(dir)).await?.handle;
            let mut out = Vec::new();
            let result = loop {
                match tokio::time::timeout(self.io_timeout, self.raw.readdir(h.as_str())).await {
                    Ok(Ok(name)) => out.extend(
                        name.files
                            .into_iter()
                            .filter(|f| f.filename != "." && f.filename != "..")
                            .map(|f| entry_of(f.filename, &f.attrs)),
                    ),
                    Ok(Err(e)) if is_eof(&e) => break Ok(()),
                    Ok(Err(e)) => break Err(self.err("list", dir, e)),
                    Err(_) => break Err(self.timeout(format!("listing {dir}"))),
                }
            };
            let _ = self.close_handle(&h, dir).await;
            result?;
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn stat<'a>(&'a mut self, path: &'a str) -> BoxFut<'a, Option<RemoteEntry>> {
        Box::pin(async move {
            match self.timed("stat", path, self.raw.stat(path)).await {
                Ok(a) => Ok(Some(entry_of(
                    path.rsplit('/').next().unwrap_or(path).to_string(),
                    &a.attrs,
                ))),
                Err(RemoteError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn get<'a>(&'a mut self, path: &'a str, to: &'a mut std::fs::File) -> BoxFut<'a, u64> {
        Box::pin(async move { self.get_one(path, to).await })
    }

    fn get_many<'a>(
        &'a mut self,
        items: &'a mut [(String, std::fs::File)],
    ) -> BoxFut<'a, Vec<Result<u64, RemoteError>>> {
        Box::pin(async move {
            let this = &*self;
            let futs: Vec<_> = items
                .iter_mut()
                .map(|(p, f)| Box::pin(this.get_one(p, f)))
                .collect();
            Ok(run_limited(futs, SFTP_FILES_IN_FLIGHT).await)
        })
    }

    fn put<'a>(
        &'a mut self,
        from: &'a mut (dyn std::io::Read + Send),
        path: &'a str,
    ) -> BoxFut<'a, u64> {
        Box::pin(async move {
            // EXCLUDE: never replace a file that is already there.
            let h = self
                .timed(
                    "create",
                    path,
                    self.raw.open(
                        path,
                        OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE,
                        FileAttributes::default(),
                    ),
                )
                .await?
                .handle;
            let r = self.upload(&h, path, from).await;
            // Every WRITE was acknowledged; fsync where the server offers it, then CLOSE,
            // whose status is the server's last word on the file.
            let synced = match (&r, self.fsync) {
                (Ok(_), true) => self
                    .timed("fsync", path, self.raw.fsync(h.as_str()))
                    .await
                    .map(|_| ()),
                _ => Ok(()),
            };
            let closed = self.close_handle(&h, path).await;
            let n = r?;
            synced?;
            closed?;
            Ok(n)
        })
    }

    fn rename<'a>(&'a mut self, from: &'a str, to: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            // SFTP v3 RENAME fails when `to` exists (OpenSSH links, then unlinks): it never
            // replaces a delivered file.
            self.timed("rename", from, self.raw.rename(from, to))
                .await
                .map(|_| ())
        })
    }

    fn remove<'a>(&'a mut self, path: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.timed("remove", path, self.raw.remove(path))
                .await
                .map(|_| ())
        })
    }

    fn close<'a>(&'a mut self) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let _ = self.raw.close_session();
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
