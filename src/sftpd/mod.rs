//! sluss's own SFTP server, where customers' ERP systems drop payment files (`/upload`) and
//! fetch what the bank sent back (`/download`). A thin protocol adapter over the pipeline:
//! it authenticates accounts from the partner files, keeps each account inside its two
//! virtual folders ([`vfs`]), receives uploads — in memory up to
//! [`SMALL_MAX`](crate::pipeline::SMALL_MAX), beyond that in spool files the pipeline hands
//! out — and hands finished ones to [`Pipeline::ingest`], whose outcome is the reply to CLOSE.
//!
//! It must never touch the ledger, never write outside the spool and the customer's own
//! download folder, never hold more than `MEMORY_UPLOADS` uploads in memory at once, never
//! tell an outsider which usernames exist, and never offer anything but SFTP (no exec,
//! shell, forwarding or agent).
//!
//! Bind first, then run (as mini-redis): [`Server::bind`] loads host keys and binds the
//! listener, so a caller knows the address (port 0 picks a free one) before serving;
//! [`Server::run`] serves until the shutdown future completes.

pub mod guard;
pub mod keys;
mod session;
pub mod vfs;

use crate::config::sftp::SftpServer;
use crate::pipeline::live::Analysed;
use crate::pipeline::{Body, Pipeline, Upload};
use guard::{Guard, Verdict};
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};
use russh::server::{Auth, Msg, PublicKeyOffer, Session as SshSession, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Preferred, SshId};
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;

/// Every rejected login takes this long from the request (russh waits out the rest), so a
/// wrong password, a wrong key and an unknown user cannot be told apart by timing. Above
/// the slowest Argon2id verification on a loaded machine.
pub const AUTH_REJECTION_TIME: Duration = Duration::from_millis(700);
/// SSH channel window: several MiB keep a 64-request SFTP pipeline moving on fast links
/// (russh's 2 MiB default halved throughput in other projects' measurements).
const WINDOW_SIZE: u32 = 16 * 1024 * 1024;
/// Largest SSH channel packet (russh warns above one TCP segment's worth).
const MAX_SSH_PACKET: u32 = 65535;
/// Channel messages buffered per channel before russh pushes back on the connection.
const CHANNEL_BUFFER: usize = 1024;
/// Session channels one connection may open (OpenSSH's sftp uses one).
const MAX_CHANNELS_PER_CONNECTION: usize = 4;
/// Authentication attempts per connection before it is dropped.
const MAX_AUTH_ATTEMPTS: usize = 6;
/// How long in-flight sessions may finish after shutdown was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Argon2id hash of a random password, verified for unknown users and accounts without a
/// password so that those take as long as a real verification.
fn dummy_hash() -> String {
    use argon2::PasswordHasher;
    let mut pw = [0u8; 16];
    let _ = getrandom::fill(&mut pw);
    argon2::Argon2::default()
        .hash_password(&pw)
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// Uploads held in memory at once across the whole server, open or parked (each at most
/// [`SMALL_MAX`](crate::pipeline::SMALL_MAX) = 256 KiB: 64 MiB at worst). Far more than the
/// small files customers send at the same moment, yet a bound a small VM can always afford
/// whatever `max_sessions` allows (each session may hold 64 handles); past it uploads simply
/// start as spool files, as every upload did before.
pub(crate) const MEMORY_UPLOADS: usize = 256;

/// Name of the file in the data directory that holds the bound port (for scripts and tests
/// when the configured port is 0).
pub const PORT_FILE: &str = "sftp.port";

#[derive(Debug, thiserror::Error)]
pub enum SftpdError {
    #[error("sluss.toml has no [sftp] section: the SFTP server is not configured")]
    NotConfigured,
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(
        "cannot listen on {addr}: {source} (fix: free the port or change sftp.listen in sluss.toml)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the SFTP listener failed: {0}")]
    Accept(std::io::Error),
}

/// Who is logged in on a connection.
pub(crate) struct AccountCtx {
    pub partner: String,
    pub username: String,
    pub peer: SocketAddr,
    pub quota: Option<u64>,
}

/// One of the [`MEMORY_UPLOADS`] places for an upload held in memory; freed when dropped
/// (with the buffer it travels with), whichever way the upload ends.
pub(crate) struct MemSlot(Arc<AtomicUsize>);

impl Drop for MemSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An upload's bytes once its writer is done: what CLOSE parks or hands over.
pub(crate) enum UploadData {
    /// A small upload received whole in memory (at most
    /// [`SMALL_MAX`](crate::pipeline::SMALL_MAX) bytes); nothing of it is on disk.
    Memory(Vec<u8>, MemSlot),
    /// A spool file written at the client's offsets.
    File(Upload),
}

impl UploadData {
    /// The upload will not be handed over: drop the buffer (and its slot) or remove the
    /// spool file.
    pub(crate) fn abandon(self) {
        match self {
            UploadData::Memory(..) => {}
            UploadData::File(u) => u.abandon(),
        }
    }

    /// True for an upload held in memory.
    pub(crate) fn in_memory(&self) -> bool {
        matches!(self, UploadData::Memory(..))
    }

    /// What the pipeline takes: the bytes themselves, or the spool file with what was
    /// learnt while it arrived (`analysed`; never made for in-memory uploads, which the
    /// pipeline analyses from memory). The slot comes back to be held until the pipeline is
    /// done with the bytes, so the memory bound counts them until then.
    pub(crate) fn into_body(
        self,
        analysed: Option<Box<Analysed>>,
    ) -> (Body<'static>, Option<MemSlot>) {
        match self {
            UploadData::Memory(buf, slot) => (Body::Bytes(buf), Some(slot)),
            UploadData::File(u) => (Body::Upload(u, analysed), None),
        }
    }
}

/// An upload closed under a temporary name, waiting for its RENAME.
pub(crate) struct Parked {
    pub data: UploadData,
    /// What the writer learnt while the bytes arrived (dropped if the upload is resumed).
    pub analysed: Option<Box<Analysed>>,
    pub size: u64,
    mtime: u32,
}

pub(crate) enum UpEntry {
    Writing,
    Parked(Parked),
    /// Handed over; visible (stat, setstat) until `until`.
    Accepted {
        size: u64,
        mtime: u32,
        until: Instant,
    },
    /// Refused; a stat answers with the reason until `until` (clients that ignore CLOSE
    /// failures, like paramiko, check the upload with a stat).
    Refused {
        reason: String,
        until: Instant,
    },
}

#[derive(Default)]
struct AccountState {
    sessions: u32,
    uploads: HashMap<String, UpEntry>,
    /// When expired entries were last dropped (see [`PRUNE_EVERY`]).
    pruned: Option<Instant>,
}

/// How often an account's expired upload entries are dropped. Not on every request: an
/// account that uploads thousands of files within its grace period would otherwise walk all
/// of them for each one. An entry may outlive its grace by this much.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// State shared by all connections.
pub(crate) struct Shared {
    pub pipeline: Arc<Pipeline>,
    pub settings: SftpServer,
    guard: Guard,
    connections: AtomicUsize,
    /// Uploads held in memory now (see [`MemSlot`]); shared with the slots, not with `Shared`
    /// itself, so a parked upload's slot does not keep the server state alive.
    memory_uploads: Arc<AtomicUsize>,
    accounts: Mutex<HashMap<String, AccountState>>,
    dummy_hash: String,
}

fn now_secs() -> u32 {
    let s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(s).unwrap_or(u32::MAX)
}

impl Shared {
    /// A place for one more upload in memory; `None` when [`MEMORY_UPLOADS`] are held.
    pub(crate) fn memory_slot(&self) -> Option<MemSlot> {
        self.memory_uploads
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MEMORY_UPLOADS).then_some(n + 1)
            })
            .ok()
            .map(|_| MemSlot(self.memory_uploads.clone()))
    }

    fn with_account<T>(&self, acc: &AccountCtx, f: impl FnOnce(&mut AccountState) -> T) -> T {
        let mut map = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let st = map.entry(acc.partner.clone()).or_default();
        let now = Instant::now();
        if st
            .pruned
            .is_none_or(|t| now.duration_since(t) >= PRUNE_EVERY)
        {
            st.pruned = Some(now);
            st.uploads.retain(|_, e| match e {
                UpEntry::Accepted { until, .. } | UpEntry::Refused { until, .. } => *until > now,
                _ => true,
            });
        }
        f(st)
    }

    pub(crate) fn take_parked(&self, acc: &AccountCtx, name: &str) -> Option<Parked> {
        self.with_account(acc, |st| match st.uploads.remove(name) {
            Some(UpEntry::Parked(p)) => Some(p),
            Some(other) => {
                st.uploads.insert(name.to_string(), other);
                None
            }
            None => None,
        })
    }

    /// Claim `name` for a new upload; false if another one is writing it.
    pub(crate) fn mark_writing(&self, acc: &AccountCtx, name: &str) -> bool {
        self.with_account(acc, |st| {
            if matches!(st.uploads.get(name), Some(UpEntry::Writing)) {
                return false;
            }
            st.uploads.insert(name.to_string(), UpEntry::Writing);
            true
        })
    }

    pub(crate) fn set_writing(&self, acc: &AccountCtx, name: &str) {
        self.with_account(acc, |st| {
            st.uploads.insert(name.to_string(), UpEntry::Writing)
        });
    }

    pub(crate) fn forget_writing(&self, acc: &AccountCtx, name: &str) {
        self.with_account(acc, |st| {
            if matches!(st.uploads.get(name), Some(UpEntry::Writing)) {
                st.uploads.remove(name);
            }
        });
    }

    pub(crate) fn park(
        &self,
        acc: &AccountCtx,
        name: &str,
        data: UploadData,
        analysed: Option<Box<Analysed>>,
        size: u64,
    ) {
        let old = self.with_account(acc, |st| {
            st.uploads.insert(
                name.to_string(),
                UpEntry::Parked(Parked {
                    data,
                    analysed,
                    size,
                    mtime: now_secs(),
                }),
            )
        });
        if let Some(UpEntry::Parked(p)) = old {
            p.data.abandon();
        }
    }

    pub(crate) fn accepted(&self, acc: &AccountCtx, name: &str, size: u64) {
        let grace = self.settings.upload_grace;
        self.with_account(acc, |st| {
            st.uploads.insert(
                name.to_string(),
                UpEntry::Accepted {
                    size,
                    mtime: now_secs(),
                    until: Instant::now() + grace,
                },
            )
        });
    }

    pub(crate) fn refused(&self, acc: &AccountCtx, name: &str, reason: String) {
        let grace = self.settings.upload_grace;
        self.with_account(acc, |st| {
            st.uploads.insert(
                name.to_string(),
                UpEntry::Refused {
                    reason,
                    until: Instant::now() + grace,
                },
            )
        });
    }

    /// Why the last upload under `name` was refused, while that is still shown.
    pub(crate) fn refusal(&self, acc: &AccountCtx, name: &str) -> Option<String> {
        self.with_account(acc, |st| match st.uploads.get(name)? {
            UpEntry::Refused { reason, .. } => Some(reason.clone()),
            _ => None,
        })
    }

    /// Size and time of an upload visible in `/upload` (parked, accepted, or being written
    /// in another session).
    pub(crate) fn upload_entry(&self, acc: &AccountCtx, name: &str) -> Option<(u64, u32)> {
        self.with_account(acc, |st| match st.uploads.get(name)? {
            UpEntry::Writing => Some((0, now_secs())),
            UpEntry::Parked(p) => Some((p.size, p.mtime)),
            UpEntry::Accepted { size, mtime, .. } => Some((*size, *mtime)),
            UpEntry::Refused { .. } => None,
        })
    }

    /// Is `name` taken by an upload not yet handed over?
    pub(crate) fn upload_busy(&self, acc: &AccountCtx, name: &str) -> bool {
        self.with_account(acc, |st| {
            matches!(
                st.uploads.get(name),
                Some(UpEntry::Writing | UpEntry::Parked(_))
            )
        })
    }

    pub(crate) fn upload_listing(&self, acc: &AccountCtx) -> Vec<(String, u64, u32)> {
        self.with_account(acc, |st| {
            let mut v: Vec<(String, u64, u32)> = st
                .uploads
                .iter()
                .filter_map(|(n, e)| match e {
                    UpEntry::Writing | UpEntry::Refused { .. } => None,
                    UpEntry::Parked(p) => Some((n.clone(), p.size, p.mtime)),
                    UpEntry::Accepted { size, mtime, .. } => Some((n.clone(), *size, *mtime)),
                })
                .collect();
            v.sort();
            v
        })
    }

    /// Bytes the account holds here: parked uploads and its download folder.
    pub(crate) fn used_bytes(&self, acc: &AccountCtx) -> u64 {
        let parked: u64 = self.with_account(acc, |st| {
            st.uploads
                .values()
                .map(|e| match e {
                    UpEntry::Parked(p) => p.size,
                    _ => 0,
                })
                .sum()
        });
        let dir = self.pipeline.layout.download(&acc.partner);
        let mut total = parked;
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    total = total.saturating_add(m.len());
                }
            }
        }
        total
    }
}

/// A logged-in session of an account: counted against the account's limit; when the last
/// one ends, temporary uploads never renamed are removed.
struct AccountSlot {
    shared: Arc<Shared>,
    ctx: Arc<AccountCtx>,
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        let orphans: Vec<Parked> = self.shared.with_account(&self.ctx, |st| {
            st.sessions = st.sessions.saturating_sub(1);
            if st.sessions > 0 {
                return Vec::new();
            }
            let names: Vec<String> = st
                .uploads
                .iter()
                .filter(|(_, e)| matches!(e, UpEntry::Parked(_)))
                .map(|(n, _)| n.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|n| match st.uploads.remove(&n) {
                    Some(UpEntry::Parked(p)) => Some(p),
                    _ => None,
                })
                .collect()
        });
        for p in orphans {
            tracing::info!(event = "sftp.upload.abandoned", user = %self.ctx.username, "a temporary upload ({} bytes) was never renamed to a final name; removed", p.size);
            p.data.abandon();
        }
    }
}

/// A TCP connection, counted against the overall limit.
struct ConnSlot(Arc<Shared>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bound server.
pub struct Server {
    shared: Arc<Shared>,
    config: Arc<russh::server::Config>,
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    /// Load host keys (logging their fingerprints) and bind the configured listener. The
    /// bound address is also written to `<data_dir>/sftp.port` (the port number alone).
    pub async fn bind(pipeline: Arc<Pipeline>) -> Result<Server, SftpdError> {
        let settings = pipeline
            .config
            .sftp
            .clone()
            .ok_or(SftpdError::NotConfigured)?;
        let host_keys = keys::load_host_keys(&settings.host_key_files)?;
        for (k, path) in host_keys.iter().zip(&settings.host_key_files) {
            tracing::info!(event = "sftp.host_key", algorithm = %k.algorithm(), fingerprint = %keys::fingerprint(k.public_key()), path = %path.display(), "SSH host key {} {}", k.algorithm(), keys::fingerprint(k.public_key()));
        }
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| SftpdError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| SftpdError::Bind {
            addr: settings.listen,
            source,
        })?;
        let port_file = pipeline.layout.data_dir.join(PORT_FILE);
        let _ = crate::spool::discard(&port_file);
        if let Err(e) = crate::spool::write_new_file(
            &port_file,
            format!("{}\n", addr.port()).as_bytes(),
            crate::spool::MODE_DELIVERED,
        ) {
            tracing::warn!("could not write {}: {e}", port_file.display());
        }
        let config = russh::server::Config {
            server_id: SshId::Standard(Cow::Borrowed(concat!(
                "SSH-2.0-sluss_",
                env!("CARGO_PKG_VERSION")
            ))),
            methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..]),
            auth_rejection_time: AUTH_REJECTION_TIME,
            // The first "none" probe reveals nothing: answer it at once.
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: host_keys,
            window_size: WINDOW_SIZE,
            maximum_packet_size: MAX_SSH_PACKET,
            channel_buffer_size: CHANNEL_BUFFER,
            max_auth_attempts: MAX_AUTH_ATTEMPTS,
            inactivity_timeout: Some(settings.idle_timeout),
            nodelay: true,
            preferred: modern_algorithms(),
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            pipeline,
            guard: Guard::new(settings.ban.clone()),
            settings,
            connections: AtomicUsize::new(0),
            memory_uploads: Arc::new(AtomicUsize::new(0)),
            accounts: Mutex::new(HashMap::new()),
            dummy_hash: tokio::task::spawn_blocking(dummy_hash)
                .await
                .unwrap_or_default(),
        });
        tracing::info!(event = "sftp.listening", addr = %addr, "SFTP server listening on {addr}");
        Ok(Server {
            shared,
            config: Arc::new(config),
            listener,
            addr,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until `shutdown` completes; then stop accepting, give sessions
    /// [`SHUTDOWN_GRACE`] to finish, and end the rest.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), SftpdError> {
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                r = self.listener.accept() => {
                    let (sock, peer) = match r {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: pause, do not spin.
                            tracing::error!(event = "sftp.accept_failed", "accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    if let Some(left) = self.shared.guard.banned(peer.ip()) {
                        tracing::warn!(event = "sftp.banned_connection", peer = %peer, "connection from banned address {} refused ({}s of ban left)", peer.ip(), left.as_secs());
                        drop(sock);
                        continue;
                    }
                    let n = self.shared.connections.fetch_add(1, Ordering::Relaxed);
                    let slot = ConnSlot(self.shared.clone());
                    if n >= self.shared.settings.max_sessions as usize {
                        tracing::warn!(event = "sftp.too_many_sessions", peer = %peer, "connection from {peer} refused: {} sessions already (sftp.max_sessions)", n);
                        drop(slot);
                        drop(sock);
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    let handler = Conn {
                        shared: self.shared.clone(),
                        peer,
                        _slot: slot,
                        account: None,
                        channels: HashMap::new(),
                    };
                    let config = self.config.clone();
                    tasks.spawn(async move {
                        match russh::server::run_stream(config, sock, handler).await {
                            Ok(session) => {
                                if let Err(e) = session.await {
                                    tracing::debug!(event = "sftp.connection_error", peer = %peer, "connection ended: {e}");
                                }
                            }
                            Err(e) => tracing::debug!(event = "sftp.handshake_failed", peer = %peer, "SSH handshake failed: {e}"),
                        }
                    });
                }
            }
        }
        tracing::info!(
            event = "sftp.stopping",
            sessions = tasks.len(),
            "SFTP server stops accepting"
        );
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        Ok(())
    }
}

/// Modern algorithms only: no SHA-1 signatures or MACs, no CBC, no DH group1/group14-sha1.
fn modern_algorithms() -> Preferred {
    use russh::{cipher, kex, mac};
    Preferred {
        kex: Cow::Owned(vec![
            kex::MLKEM768X25519_SHA256,
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::ECDH_SHA2_NISTP256,
            kex::ECDH_SHA2_NISTP384,
            kex::ECDH_SHA2_NISTP521,
            kex::DH_GEX_SHA256,
            kex::DH_G16_SHA512,
            kex::DH_G14_SHA256,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]),
        key: Cow::Owned(vec![
            Algorithm::Ed25519,
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
        ]),
        cipher: Cow::Owned(vec![
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
            cipher::AES_192_CTR,
            cipher::AES_128_CTR,
        ]),
        mac: Cow::Owned(vec![
            mac::HMAC_SHA256_ETM,
            mac::HMAC_SHA512_ETM,
            mac::HMAC_SHA256,
            mac::HMAC_SHA512,
        ]),
        ..Preferred::DEFAULT
    }
}

/// One SSH connection.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    _slot: ConnSlot,
    account: Option<Arc<AccountSlot>>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

/// Why a login is refused before any credential is looked at (logged, never told).
enum Precheck<'a> {
    Ok(&'a crate::config::Partner),
    Refused(&'static str),
}

impl Conn {
    fn precheck(&self, user: &str) -> Precheck<'_> {
        let Some(p) = self.shared.pipeline.config.partner_by_sftp_user(user) else {
            return Precheck::Refused("unknown user");
        };
        let Some(acct) = &p.sftp else {
            return Precheck::Refused("unknown user");
        };
        if !acct.allowed_networks.is_empty()
            && !acct
                .allowed_networks
                .iter()
                .any(|n| n.contains(&self.peer.ip()))
        {
            return Precheck::Refused("source address not in the account's allowed networks");
        }
        Precheck::Ok(p)
    }

    fn key_allowed(p: &crate::config::Partner, key: &PublicKey, alg: &Algorithm) -> bool {
        if matches!(alg, Algorithm::Rsa { hash: None }) {
            return false; // SHA-1 signatures
        }
        p.sftp.as_ref().is_some_and(|a| {
            a.authorized_keys
                .iter()
                .any(|k| k.key_data() == key.key_data())
        })
    }

    fn log_refusal(&self, user: &str, method: &str, why: &str) {
        tracing::warn!(event = "sftp.auth_failed", peer = %self.peer, user = %user.escape_debug(), method, reason = why, "login refused for {:?} from {} ({method}): {why}", user, self.peer.ip());
    }

    fn count_failure(&self) {
        if let Verdict::Banned(len) = self.shared.guard.failed(self.peer.ip()) {
            tracing::warn!(event = "alert.sftp_ban", peer = %self.peer, seconds = len.as_secs(), "address {} banned for {}s after repeated failed logins", self.peer.ip(), len.as_secs());
        }
    }

    /// Take a session slot of the account; None when it has too many.
    fn login(&mut self, partner: &str, user: &str) -> bool {
        let config = self.shared.pipeline.config.clone();
        let Some(p) = config.partner(partner) else {
            return false;
        };
        let limit = p
            .sftp
            .as_ref()
            .and_then(|a| a.max_sessions)
            .unwrap_or(self.shared.settings.max_sessions_per_account);
        let ctx = Arc::new(AccountCtx {
            partner: p.id.clone(),
            username: user.to_string(),
            peer: self.peer,
            quota: p.sftp.as_ref().and_then(|a| a.quota),
        });
        let ok = self.shared.with_account(&ctx, |st| {
            if st.sessions >= limit {
                return false;
            }
            st.sessions += 1;
            true
        });
        if !ok {
            self.log_refusal(user, "session-limit", "too many sessions for this account");
            return false;
        }
        self.account = Some(Arc::new(AccountSlot {
            shared: self.shared.clone(),
            ctx,
        }));
        true
    }

    fn refuse_channel_request(
        &self,
        what: &str,
        channel: ChannelId,
        session: &mut SshSession,
    ) -> Result<(), russh::Error> {
        let user = self
            .account
            .as_ref()
            .map(|a| a.ctx.username.as_str())
            .unwrap_or("");
        tracing::warn!(event = "sftp.refused", peer = %self.peer, user, op = what, "refused {what}: only SFTP is offered");
        session.channel_failure(channel)?;
        let msg = format!(
            "sluss: {what} is not offered here; only SFTP (use sftp, or scp without -O)\r\n"
        );
        session.extended_data(channel, 1, msg.into_bytes())?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.shared.guard.banned(self.peer.ip()).is_some() {
            return Ok(Auth::reject());
        }
        Ok(match self.precheck(user) {
            Precheck::Ok(p) if Self::key_allowed(p, offer.public_key, offer.algorithm) => {
                Auth::Accept
            }
            _ => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.shared.guard.banned(self.peer.ip()).is_some() {
            self.log_refusal(user, "publickey", "address banned");
            return Ok(Auth::reject());
        }
        let p = match self.precheck(user) {
            Precheck::Ok(p) => p,
            Precheck::Refused(why) => {
                self.log_refusal(user, "publickey", why);
                self.count_failure();
                return Ok(Auth::reject());
            }
        };
        if !Self::key_allowed(p, key.public_key, key.algorithm) {
            self.log_refusal(user, "publickey", "key not authorized");
            self.count_failure();
            return Ok(Auth::reject());
        }
        let p_id = p.id.clone();
        if self.login(&p_id, user) {
            tracing::info!(event = "sftp.login", peer = %self.peer, user, method = "publickey", fingerprint = %key.public_key.fingerprint(HashAlg::Sha256), "{user} logged in from {} with key {}", self.peer.ip(), key.public_key.fingerprint(HashAlg::Sha256));
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if self.shared.guard.banned(self.peer.ip()).is_some() {
            self.log_refusal(user, "password", "address banned");
            return Ok(Auth::reject());
        }
        let (hash, why, partner) = match self.precheck(user) {
            Precheck::Ok(p) => match p.sftp.as_ref().and_then(|a| a.password_hash.clone()) {
                Some(h) => (h, "wrong password", Some(p.id.clone())),
                None => (
                    self.shared.dummy_hash.clone(),
                    "the account has no password",
                    None,
                ),
            },
            Precheck::Refused(why) => (self.shared.dummy_hash.clone(), why, None),
        };
        // Always one Argon2id verification, whoever asks: equal work, equal time.
        let pw = password.as_bytes().to_vec();
        let verified = tokio::task::spawn_blocking(move || {
            use argon2::PasswordVerifier;
            argon2::PasswordHash::new(&hash)
                .map(|h| argon2::Argon2::default().verify_password(&pw, &h).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let partner = partner.filter(|_| verified);
        let Some(pid) = partner else {
            self.log_refusal(user, "password", why);
            self.count_failure();
            return Ok(Auth::reject());
        };
        if self.login(&pid, user) {
            tracing::info!(event = "sftp.login", peer = %self.peer, user, method = "password", "{user} logged in from {} with a password", self.peer.ip());
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        if self.account.is_none() || self.channels.len() >= MAX_CHANNELS_PER_CONNECTION {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _oa: &str,
        _op: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        tracing::warn!(event = "sftp.refused", peer = %self.peer, op = "port-forwarding", "refused port forwarding to {host}:{port}");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let (Some(slot), true) = (self.account.clone(), name == "sftp") else {
            return self.refuse_channel_request(&format!("subsystem {name:?}"), channel, session);
        };
        let Some(ch) = self.channels.remove(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let (mut rh, wh) = ch.split();
            let ctx = slot.ctx.clone();
            session::Session::new(shared, ctx)
                .run(rh.make_reader(), wh.make_writer())
                .await;
            // OpenSSH's scp and sftp want an exit status before EOF and CLOSE.
            let _ = wh.exit_status(0).await;
            let _ = wh.eof().await;
            let _ = wh.close().await;
            drop(slot);
        });
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let cmd = String::from_utf8_lossy(data);
        let first = cmd.split_whitespace().next().unwrap_or("").to_string();
        self.refuse_channel_request(&format!("exec ({first})"), channel, session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.refuse_channel_request("shell", channel, session)
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _c: u32,
        _r: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        tracing::warn!(event = "sftp.refused", peer = %self.peer, op = "x11", "refused X11 forwarding");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut SshSession,
    ) -> Result<bool, Self::Error> {
        tracing::warn!(event = "sftp.refused", peer = %self.peer, op = "agent-forwarding", "refused agent forwarding");
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut SshSession,
    ) -> Result<bool, Self::Error> {
        tracing::warn!(event = "sftp.refused", peer = %self.peer, op = "remote-forwarding", "refused remote forwarding of {address}:{port}");
        Ok(false)
    }
}
