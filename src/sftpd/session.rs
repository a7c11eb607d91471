//! One SFTP session (protocol version 3) over an SSH channel: our own request loop instead of
//! russh-sftp's, so that requests are pipelined. An upload starts in memory (a typical
//! payment file of a few KiB then never touches the file system before its receipt) and
//! becomes a spool file only when it grows past [`SMALL_MAX`] or when [`super::MEMORY_UPLOADS`]
//! are held already; a spool file is written by the upload's writer thread (which writes at
//! the offset and analyses sequential data), and WRITE is answered as soon as its data is
//! queued there. Replies are batched and flushed only when no complete request is waiting.
//! The receipt for an upload is the reply to CLOSE (or to the RENAME that gives a temporary
//! upload its final name): OK only after the pipeline made the file durable and recorded it.
//!
//! This module never touches the ledger or the spool directly except through
//! [`Pipeline::new_upload`](crate::pipeline::Pipeline::new_upload),
//! [`Pipeline::ingest`](crate::pipeline::Pipeline::ingest), [`UploadData::abandon`] and
//! [`crate::spool::discard`]; it never lets a client path reach the file system unchecked
//! (see [`super::vfs`]), and never holds an upload in memory without a [`MemSlot`].

use super::vfs::{self, Node, PathError};
use super::{AccountCtx, MemSlot, Shared, UploadData};
use crate::pipeline::live::{self, Analysed, Live};
use crate::pipeline::{Incoming, Outcome, SMALL_MAX, Upload};
use crate::seal::SealKey;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh_sftp::protocol::{
    ExtendedReply, File, FileAttributes, FileMode, Handle, Name, Packet, Status, StatusCode,
    Version,
};
use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot};

/// Largest request accepted. OpenSSH's own server uses 256 KiB; its client's largest
/// working `-B` (261120) plus headers fits.
pub const MAX_PACKET: u32 = 256 * 1024 + 1024;
/// Advertised in `limits@openssh.com`: what clients size READ and WRITE requests by.
pub const MAX_READ_WRITE: u64 = 261_120;
/// Handles one session may hold open (files and folder listings).
pub const MAX_HANDLES: usize = 64;
/// Writes queued per upload before WRITE replies wait for the disk: bounds memory per upload
/// (64 × 256 KiB = 16 MiB at most) while keeping the client's pipeline full.
const WRITE_QUEUE: usize = 64;
/// Buffers of the request loop: room for a burst of small requests and replies (bigger ones
/// bypass them); small, because every idle session holds them.
const READ_BUF: usize = 128 * 1024;
const WRITE_BUF: usize = 64 * 1024;

const SSH_FXP_WRITE: u8 = 6;
const SSH_FXP_READ: u8 = 5;
const SSH_FXP_DATA: u8 = 103;

/// Extensions advertised in VERSION, with their versions as OpenSSH spells them.
const EXTENSIONS: &[(&str, &str)] = &[
    ("posix-rename@openssh.com", "1"),
    ("fsync@openssh.com", "1"),
    ("limits@openssh.com", "1"),
    ("statvfs@openssh.com", "2"),
];

/// A reply that is a status (success or failure with the one line the client logs).
type Reply = Result<Packet, (StatusCode, String)>;

fn ok(id: u32) -> Packet {
    Packet::status(id, StatusCode::Ok, "Ok", "en")
}

fn fail(code: StatusCode, msg: impl Into<String>) -> (StatusCode, String) {
    // One line: ERP logs keep one line per event.
    let m: String = msg.into().replace(['\r', '\n'], " ");
    (code, m)
}

fn unix_secs(t: SystemTime) -> u32 {
    let s = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(s).unwrap_or(u32::MAX)
}

fn dir_attrs(writable: bool) -> FileAttributes {
    let mut a = FileAttributes {
        size: Some(0),
        permissions: Some(if writable { 0o755 } else { 0o555 }),
        ..Default::default()
    };
    a.set_type(FileMode::DIR);
    a
}

fn file_attrs(size: u64, mtime: u32, perms: u32) -> FileAttributes {
    let mut a = FileAttributes {
        size: Some(size),
        permissions: Some(perms),
        atime: Some(mtime),
        mtime: Some(mtime),
        ..Default::default()
    };
    a.set_type(FileMode::REG);
    a
}

/// A command for an upload's writer thread.
enum WriterCmd {
    Write(u64, Bytes),
    /// The upload will be discarded (session ended before CLOSE): stop analysing, skip the
    /// flush.
    Abandon,
    Sync(oneshot::Sender<std::io::Result<()>>),
}

/// What the writer hands back at CLOSE.
struct WriterDone {
    data: UploadData,
    error: Option<std::io::Error>,
    /// Hash and analysis made while the bytes arrived (large uploads written strictly in
    /// order; see `pipeline::live`); `None`: the pipeline reads the file back.
    analysed: Option<Box<Analysed>>,
    size: u64,
}

/// Which bytes of an upload were written strictly in order from offset 0.
#[derive(Clone, Copy)]
struct Sequence {
    /// False once a write landed anywhere but at `in_order` (or the upload was resumed).
    sequential: bool,
    /// Bytes [0, in_order) were written in order.
    in_order: u64,
}

impl Sequence {
    fn new(resumed_size: u64) -> Sequence {
        // A resumed upload's first part came from another handle: never "in order".
        Sequence {
            sequential: resumed_size == 0,
            in_order: 0,
        }
    }

    fn wrote(&mut self, off: u64, len: usize) {
        if self.sequential && off == self.in_order {
            self.in_order += len as u64;
        } else {
            self.sequential = false;
        }
    }
}

/// Where an upload's WRITEs go.
enum Writer {
    /// Up to [`SMALL_MAX`] bytes: copied into a buffer on the session's own task. No spool
    /// file is created, written, renamed or deleted for it (each of those costs more on the
    /// spool's disk than the whole transfer of a few KiB), and no thread hand-off per WRITE.
    /// `buf` is as long as the highest byte written; holes read as zeros, as in a sparse
    /// file.
    Memory {
        buf: Vec<u8>,
        /// Kept for the switch to `Thread`: an upload written strictly in order stays
        /// eligible for live analysis.
        seq: Sequence,
        slot: MemSlot,
    },
    /// Larger (or no memory slot free): a spool file written by a writer thread (see
    /// [`start_writer`]), so big writes and the analysis fed from them never hold up the
    /// session's task.
    Thread {
        tx: mpsc::Sender<WriterCmd>,
        worker: tokio::task::JoinHandle<WriterDone>,
    },
    /// While switching from `Memory` to `Thread`, and after a switch that failed (the bytes
    /// were dropped; the upload is marked failed).
    Switching,
}

impl Writer {
    /// The session ended before CLOSE: hand back the bytes without finishing their analysis.
    async fn abandon(self) -> Option<WriterDone> {
        if let Writer::Thread { tx, .. } = &self {
            let _ = tx.send(WriterCmd::Abandon).await;
        }
        self.finish().await
    }

    /// Stop writing and hand back the bytes (CLOSE).
    async fn finish(self) -> Option<WriterDone> {
        match self {
            Writer::Memory { buf, slot, .. } => {
                let size = buf.len() as u64;
                Some(WriterDone {
                    data: UploadData::Memory(buf, slot),
                    error: None,
                    analysed: None,
                    size,
                })
            }
            Writer::Thread { tx, worker } => {
                drop(tx);
                worker.await.ok()
            }
            Writer::Switching => None,
        }
    }
}

/// An upload being written in this session.
struct OpenUpload {
    name: String,
    writer: Writer,
    /// Highest byte written + 1 (what FSTAT answers).
    size: u64,
    /// Most bytes this upload may reach (file size limit, quota).
    limit: u64,
    limit_reason: &'static str,
    /// A WRITE was refused: the file is incomplete and must never be handed over.
    failed: Option<String>,
}

/// Bytes of an upload written between two background flushes (see [`Flusher`]).
const FLUSH_STEP: u64 = 32 * 1024 * 1024;

/// Writes a large upload's bytes to disk while it is still arriving. Without it the kernel
/// keeps them all in the page cache (its background writeback starts at a tenth of RAM) and
/// the flush before the receipt writes the whole file after the last byte: a third of a
/// second per GiB on these disks, during which the client only waits. A thread of its own,
/// so the writer never waits for the disk; a poke while a flush runs is merged into the next.
struct Flusher {
    tx: std::sync::mpsc::SyncSender<()>,
    worker: std::thread::JoinHandle<Option<std::io::Error>>,
}

impl Flusher {
    fn start(file: &std::fs::File) -> Option<Flusher> {
        let file = file.try_clone().ok()?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let worker = std::thread::Builder::new()
            .name("sftp-flush".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    if let Err(e) = file.sync_data() {
                        return Some(e);
                    }
                }
                None
            })
            .ok()?;
        Some(Flusher { tx, worker })
    }

    /// Flush what was written so far (unless a flush is already waiting to run).
    fn poke(&self) {
        let _ = self.tx.try_send(());
    }

    /// Wait for the flush in progress. Its error is the upload's write error: the kernel
    /// reports a failed writeback to one fsync only — this one — so a later fsync of the same
    /// file would succeed on bytes that never reached the disk.
    fn finish(self) -> Option<std::io::Error> {
        drop(self.tx);
        self.worker
            .join()
            .unwrap_or_else(|_| Some(std::io::Error::other("the flush thread failed")))
    }
}

/// The upload's writer: writes each chunk at its offset and, once a strictly sequential
/// upload passes [`live::LIVE_THRESHOLD`], feeds the chunks to the analysis that runs
/// while the bytes arrive. `keys`: the partner's seal keys.
fn start_writer(
    upload: Upload,
    seq: Sequence,
    keys: Vec<SealKey>,
) -> (mpsc::Sender<WriterCmd>, tokio::task::JoinHandle<WriterDone>) {
    let (tx, mut rx) = mpsc::channel::<WriterCmd>(WRITE_QUEUE);
    let worker = tokio::task::spawn_blocking(move || {
        let mut seq = seq;
        let mut live: Option<Live> = None;
        let mut error: Option<std::io::Error> = None;
        let mut abandoned = false;
        // Background flushing (see Flusher): the end of the written data, and where the last
        // flush was asked for.
        let mut high = 0u64;
        let mut flushed_at = 0u64;
        let mut flusher: Option<Flusher> = None;
        while let Some(cmd) = rx.blocking_recv() {
            match cmd {
                WriterCmd::Write(off, data) => {
                    if error.is_some() || abandoned {
                        continue;
                    }
                    if let Err(e) = upload.file.write_all_at(&data, off) {
                        error = Some(e);
                        if let Some(l) = live.as_mut() {
                            l.stop();
                        }
                        continue;
                    }
                    high = high.max(off + data.len() as u64);
                    if high >= flushed_at + FLUSH_STEP {
                        flushed_at = high;
                        if flusher.is_none() {
                            flusher = Flusher::start(&upload.file);
                            tracing::debug!(
                                event = "sftp.upload.flushing",
                                at = high,
                                started = flusher.is_some(),
                                "writing the upload to disk while it arrives"
                            );
                        }
                        if let Some(f) = &flusher {
                            f.poke();
                        }
                    }
                    if let Some(l) = live.as_mut() {
                        l.feed(off, &data);
                    } else if seq.sequential {
                        seq.wrote(off, data.len());
                        if seq.sequential && seq.in_order >= live::LIVE_THRESHOLD {
                            live = Live::start(&upload.path, seq.in_order, &keys);
                            // No analysis slot: read back at CLOSE; stop trying per write.
                            seq.sequential = live.is_some();
                        }
                    }
                }
                WriterCmd::Abandon => {
                    abandoned = true;
                    if let Some(l) = live.as_mut() {
                        l.stop();
                    }
                }
                WriterCmd::Sync(reply) => {
                    // No disk flush here: an upload is worth nothing until its CLOSE is
                    // answered (a crash before that discards it, fsynced or not), and the
                    // pipeline fsyncs it before that answer. A flush now would only cost a
                    // second journal commit per file. Report write errors so far, though.
                    let r = match &error {
                        Some(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        None => Ok(()),
                    };
                    let _ = reply.send(r);
                }
            }
        }
        if let Some(f) = flusher.take()
            && let Some(e) = f.finish()
            && error.is_none()
        {
            error = Some(e);
        }
        let size = upload.file.metadata().map(|m| m.len()).unwrap_or(0);
        let analysed = match live {
            Some(mut l) if abandoned => {
                // Nobody will use the result: end the passes now, flush nothing.
                l.stop();
                None
            }
            Some(l) => {
                // A large file's flush takes as long as the analysis' tail: overlap them (the
                // pipeline's own fsync before the receipt then finds little left to write).
                // A failed flush is a write error: Linux reports it to one fsync only, so the
                // pipeline's later fsync of this same file would succeed on bytes that never
                // reached the disk.
                if let Err(e) = upload.file.sync_data()
                    && error.is_none()
                {
                    error = Some(e);
                }
                if error.is_some() {
                    None
                } else {
                    l.finish(size)
                }
            }
            None => None,
        };
        WriterDone {
            data: UploadData::File(upload),
            error,
            analysed,
            size,
        }
    });
    (tx, worker)
}

enum Handle_ {
    Dir(Option<Vec<File>>),
    Read {
        file: std::fs::File,
        name: String,
        /// Size at open: files in /download are complete when they appear there.
        size: u64,
    },
    Upload(OpenUpload),
}

pub(crate) struct Session {
    shared: Arc<Shared>,
    account: Arc<AccountCtx>,
    handles: HashMap<String, Handle_>,
    next_handle: u64,
    started: u32,
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, account: Arc<AccountCtx>) -> Session {
        Session {
            shared,
            account,
            handles: HashMap::new(),
            next_handle: 0,
            started: unix_secs(SystemTime::now()),
        }
    }

    /// Serve requests until the client closes the channel (or the connection drops), then
    /// abandon whatever was not handed over.
    pub(crate) async fn run<R, W>(mut self, reader: R, writer: W)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut r = BufReader::with_capacity(READ_BUF, reader);
        let mut w = BufWriter::with_capacity(WRITE_BUF, writer);
        while let Ok(len) = r.read_u32().await {
            if len == 0 || len > MAX_PACKET {
                tracing::warn!(event = "sftp.protocol", user = %self.account.username, peer = %self.account.peer, len, "request of {len} bytes refused (limit {MAX_PACKET}); closing the session");
                break;
            }
            // Read into uninitialised capacity (no zero-fill of up to 256 KiB per request).
            let mut buf = BytesMut::with_capacity(len as usize);
            let mut body = (&mut r).take(u64::from(len));
            let mut complete = true;
            while buf.len() < len as usize {
                match body.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => {
                        complete = false;
                        break;
                    }
                    Ok(_) => {}
                }
            }
            if !complete {
                break;
            }
            let bytes = buf.freeze();
            let out = self.request(bytes).await;
            if w.write_all(&out).await.is_err() {
                break;
            }
            // Flush only when no whole request is waiting: replies to a pipelined burst go
            // out together.
            let pending = r.buffer();
            let whole = pending.len() >= 4
                && pending.len()
                    >= 4 + u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]])
                        as usize;
            if !whole && w.flush().await.is_err() {
                break;
            }
        }
        let _ = w.flush().await;
        self.cleanup().await;
    }

    /// Abandon uploads that were never closed (disconnect mid-upload).
    async fn cleanup(&mut self) {
        for (_, h) in self.handles.drain() {
            if let Handle_::Upload(u) = h {
                self.shared.forget_writing(&self.account, &u.name);
                if let Some(done) = u.writer.abandon().await {
                    done.data.abandon();
                }
                tracing::warn!(event = "sftp.upload.abandoned", user = %self.account.username, peer = %self.account.peer, name = %u.name, "upload of {} abandoned: the session ended before CLOSE; nothing was handed over", u.name);
            }
        }
    }

    /// Handle one request (its bytes after the length) and return the encoded reply.
    async fn request(&mut self, mut bytes: Bytes) -> Bytes {
        let kind = bytes.first().copied().unwrap_or(0);
        let id = if bytes.len() >= 5 {
            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]])
        } else {
            0
        };
        // Fast paths without copies for the bulk requests.
        let reply = if kind == SSH_FXP_WRITE {
            match parse_write(bytes.slice(5..)) {
                Some((handle, offset, data)) => self.write(id, &handle, offset, data).await,
                None => Err(fail(StatusCode::BadMessage, "malformed WRITE")),
            }
        } else if kind == SSH_FXP_READ {
            match parse_read(bytes.slice(5..)) {
                Some((handle, offset, len)) => return self.read(id, &handle, offset, len),
                None => Err(fail(StatusCode::BadMessage, "malformed READ")),
            }
        } else {
            match Packet::try_from(&mut bytes) {
                Ok(p) => self.dispatch(p).await,
                Err(_) => Err(fail(StatusCode::BadMessage, "malformed request")),
            }
        };
        let packet = match reply {
            Ok(p) => p,
            Err((code, msg)) => Packet::Status(Status {
                id,
                status_code: code,
                error_message: msg,
                language_tag: "en".into(),
            }),
        };
        Bytes::try_from(packet).unwrap_or_else(|_| Bytes::new())
    }

    async fn dispatch(&mut self, p: Packet) -> Reply {
        match p {
            Packet::Init(_) => {
                let mut v = Version::new();
                for (k, val) in EXTENSIONS {
                    v.extensions.insert((*k).into(), (*val).into());
                }
                Ok(Packet::Version(v))
            }
            Packet::Open(o) => self.open(o.id, &o.filename, o.pflags).await,
            Packet::Close(c) => self.close(c.id, &c.handle).await,
            Packet::Lstat(s) => self.stat(s.id, &s.path),
            Packet::Stat(s) => self.stat(s.id, &s.path),
            Packet::Fstat(s) => self.fstat(s.id, &s.handle),
            Packet::SetStat(s) => {
                // Clients set times right after uploading; accepted and ignored.
                self.stat(s.id, &s.path).map(|_| ok(s.id))
            }
            Packet::FSetStat(s) => {
                if self.handles.contains_key(&s.handle) {
                    Ok(ok(s.id))
                } else {
                    Err(fail(StatusCode::Failure, "no such handle"))
                }
            }
            Packet::OpenDir(o) => self.opendir(o.id, &o.path),
            Packet::ReadDir(r) => match self.handles.get_mut(&r.handle) {
                Some(Handle_::Dir(entries)) => match entries.take() {
                    Some(files) if !files.is_empty() => Ok(Packet::Name(Name { id: r.id, files })),
                    _ => Err(fail(StatusCode::Eof, "end of folder")),
                },
                _ => Err(fail(StatusCode::Failure, "not a folder handle")),
            },
            Packet::Remove(r) => self.remove(r.id, &r.filename).await,
            Packet::Rename(r) => self.rename(r.id, &r.oldpath, &r.newpath, false).await,
            Packet::RealPath(r) => match self.resolve("realpath", &r.path) {
                Ok(node) => {
                    let path = node.path();
                    Ok(Packet::Name(Name {
                        id: r.id,
                        files: vec![File {
                            filename: path.clone(),
                            longname: path,
                            attrs: FileAttributes::default(),
                        }],
                    }))
                }
                Err(e) => Err(e),
            },
            Packet::MkDir(m) => {
                Err(self.refuse("mkdir", &m.path, "only /upload and /download exist"))
            }
            Packet::RmDir(m) => {
                Err(self.refuse("rmdir", &m.path, "only /upload and /download exist"))
            }
            Packet::Symlink(s) => Err(self.refuse("symlink", &s.linkpath, "links are not offered")),
            Packet::ReadLink(s) => Err(self.refuse("readlink", &s.path, "links are not offered")),
            Packet::Extended(e) => self.extended(e.id, &e.request, &e.data).await,
            _ => Err(fail(StatusCode::OpUnsupported, "not a request")),
        }
    }

    /// Log and build a refusal.
    fn refuse(&self, op: &str, path: &str, why: &str) -> (StatusCode, String) {
        tracing::warn!(event = "sftp.refused", user = %self.account.username, peer = %self.account.peer, op, path = %path.escape_debug(), "refused {op} {:?} for {}: {why}", path, self.account.username);
        fail(StatusCode::PermissionDenied, format!("{op} refused: {why}"))
    }

    fn resolve(&self, op: &str, path: &str) -> Result<Node, (StatusCode, String)> {
        match vfs::resolve(path) {
            Ok(n) => Ok(n),
            Err(PathError::Escape(why)) => {
                Err(self.refuse(op, path, &format!("path outside your folders ({why})")))
            }
            Err(PathError::NotFound) => {
                tracing::info!(event = "sftp.not_found", user = %self.account.username, peer = %self.account.peer, op, path = %path.escape_debug(), "{op}: no such path");
                Err(fail(
                    StatusCode::NoSuchFile,
                    "no such file: only /upload and /download exist",
                ))
            }
        }
    }

    fn new_handle(&mut self, h: Handle_) -> Result<String, (StatusCode, String)> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(fail(
                StatusCode::Failure,
                format!("too many open handles (at most {MAX_HANDLES}); close some"),
            ));
        }
        self.next_handle += 1;
        let name = self.next_handle.to_string();
        self.handles.insert(name.clone(), h);
        Ok(name)
    }

    async fn open(&mut self, id: u32, path: &str, flags: russh_sftp::protocol::OpenFlags) -> Reply {
        use russh_sftp::protocol::OpenFlags as F;
        let node = self.resolve("open", path)?;
        if self.handles.len() >= MAX_HANDLES {
            return Err(fail(
                StatusCode::Failure,
                format!("too many open handles (at most {MAX_HANDLES}); close some"),
            ));
        }
        let writing = flags.intersects(F::WRITE | F::APPEND | F::CREATE | F::TRUNCATE);
        match node {
            Node::Upload(name) => {
                if !writing {
                    return Err(self.refuse("read", path, "files in /upload cannot be read back; receipts and returns are in /download"));
                }
                self.open_upload(id, name, flags).await
            }
            Node::Download(name) => {
                if writing {
                    return Err(self.refuse(
                        "write",
                        path,
                        "/download is read-only; upload into /upload",
                    ));
                }
                let file = self.open_download(&name)?;
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                let h = self.new_handle(Handle_::Read { file, name, size })?;
                Ok(Packet::Handle(Handle { id, handle: h }))
            }
            _ => Err(fail(StatusCode::Failure, "that is a folder")),
        }
    }

    /// Open a file of the download folder without following links: the opened file must be
    /// the regular file the folder lists (same device and inode as its lstat).
    fn open_download(&self, name: &str) -> Result<std::fs::File, (StatusCode, String)> {
        let path = self
            .shared
            .pipeline
            .layout
            .download(&self.account.partner)
            .join(name);
        let not_found = || {
            fail(
                StatusCode::NoSuchFile,
                format!("no such file: /download/{name}"),
            )
        };
        if name.starts_with('.') {
            return Err(not_found()); // in-flight deliveries are hidden
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|_| not_found())?;
        if !meta.file_type().is_file() {
            return Err(self.refuse("open", &format!("/download/{name}"), "not a regular file"));
        }
        let f = std::fs::File::open(&path).map_err(|_| not_found())?;
        let m2 = f.metadata().map_err(|_| not_found())?;
        if m2.dev() != meta.dev() || m2.ino() != meta.ino() {
            return Err(self.refuse(
                "open",
                &format!("/download/{name}"),
                "the file changed while opening",
            ));
        }
        Ok(f)
    }

    async fn open_upload(
        &mut self,
        id: u32,
        name: String,
        flags: russh_sftp::protocol::OpenFlags,
    ) -> Reply {
        use russh_sftp::protocol::OpenFlags as F;
        let settings = &self.shared.settings;
        // Resume a closed temporary upload (WinSCP, lftp) unless the client truncates it.
        let parked = self.shared.take_parked(&self.account, &name);
        let (writer, start_size) = match parked {
            Some(p) if !flags.contains(F::TRUNCATE) && !flags.contains(F::EXCLUDE) => {
                // A resumed upload continues where it is: in memory (spilling to a file if
                // it grows past SMALL_MAX) or in its spool file.
                let seq = Sequence::new(p.size);
                let writer = match p.data {
                    UploadData::Memory(buf, slot) => Writer::Memory { buf, seq, slot },
                    UploadData::File(upload) => self.thread_writer(upload, seq),
                };
                (writer, p.size)
            }
            Some(p) => {
                p.data.abandon();
                (self.new_writer()?, 0)
            }
            None => {
                if !self.shared.mark_writing(&self.account, &name) {
                    return Err(fail(
                        StatusCode::Failure,
                        format!("{name} is being uploaded in another session"),
                    ));
                }
                match self.new_writer() {
                    Ok(w) => (w, 0),
                    Err(e) => {
                        self.shared.forget_writing(&self.account, &name);
                        return Err(e);
                    }
                }
            }
        };
        self.shared.set_writing(&self.account, &name);
        let (mut limit, mut limit_reason) = (
            settings.max_file_size,
            "the file is larger than the server's maximum file size",
        );
        if let Some(q) = self.account.quota {
            let used = self.shared.used_bytes(&self.account);
            let left = q.saturating_sub(used) + start_size;
            if left < limit {
                limit = left;
                limit_reason = "your disk quota is used up (fetch and delete files in /download)";
            }
        }
        let open = OpenUpload {
            name: name.clone(),
            writer,
            size: start_size,
            limit,
            limit_reason,
            failed: None,
        };
        // Room for the handle was checked in `open`.
        let h = self.new_handle(Handle_::Upload(open))?;
        tracing::debug!(event = "sftp.upload.open", user = %self.account.username, name = %name);
        Ok(Packet::Handle(Handle { id, handle: h }))
    }

    /// The writer of a new upload: in memory while a [`MemSlot`] is free, else a spool file
    /// from the start. Such a file is written by its writer thread rather than on this task
    /// as the in-memory bytes are: slots run out only when hundreds of uploads are in
    /// flight, when keeping the session tasks free matters most, and one path for files
    /// (the thread) is one path tested; its hand-off costs microseconds per WRITE.
    fn new_writer(&self) -> Result<Writer, (StatusCode, String)> {
        match self.shared.memory_slot() {
            Some(slot) => Ok(Writer::Memory {
                buf: Vec::new(),
                seq: Sequence::new(0),
                slot,
            }),
            None => {
                tracing::debug!(event = "sftp.upload.memory_full", user = %self.account.username, "all memory slots taken; the upload goes to a spool file");
                let upload = self.new_upload()?;
                Ok(self.thread_writer(upload, Sequence::new(0)))
            }
        }
    }

    /// A writer thread for `upload`, with the partner's seal keys for live analysis.
    fn thread_writer(&self, upload: Upload, seq: Sequence) -> Writer {
        let keys = self
            .shared
            .pipeline
            .config
            .partner(&self.account.partner)
            .map(|p| p.seal.keys.clone())
            .unwrap_or_default();
        let (tx, worker) = start_writer(upload, seq, keys);
        Writer::Thread { tx, worker }
    }

    /// The spool file an in-memory upload becomes when it grows past [`SMALL_MAX`]: its
    /// bytes so far written at offset 0, then a writer thread takes over with the same
    /// [`Sequence`]. Errors are the WRITE's reply.
    fn spill(&self, name: &str, buf: &[u8], seq: Sequence) -> Result<Writer, (StatusCode, String)> {
        let upload = self.new_upload()?;
        if let Err(e) = upload.file.write_all_at(buf, 0) {
            tracing::error!(event = "sftp.upload.failed", user = %self.account.username, name = %name, "writing {name} failed: {e}");
            upload.abandon();
            return Err(fail(StatusCode::Failure, "write failed (disk problem)"));
        }
        Ok(self.thread_writer(upload, seq))
    }

    fn new_upload(&self) -> Result<Upload, (StatusCode, String)> {
        self.shared.pipeline.new_upload().map_err(|e| {
            tracing::error!(event = "sftp.upload.failed", user = %self.account.username, "cannot start an upload in the spool: {e}");
            fail(StatusCode::Failure, "the server cannot store files right now; try again later")
        })
    }

    async fn write(&mut self, id: u32, handle: &str, offset: u64, data: Bytes) -> Reply {
        let Some(h) = self.handles.get_mut(handle) else {
            return Err(fail(StatusCode::Failure, "no such handle"));
        };
        let Handle_::Upload(u) = h else {
            return Err(fail(StatusCode::PermissionDenied, "this file is read-only"));
        };
        let end = offset.saturating_add(data.len() as u64);
        if end > u.limit {
            let reason = u.limit_reason;
            tracing::warn!(event = "sftp.upload.limit", user = %self.account.username, name = %u.name, limit = u.limit, "upload of {} refused at {end} bytes: {reason}", u.name);
            let msg = format!("{reason} (limit {} bytes)", u.limit);
            u.failed = Some(msg.clone());
            return Err(fail(StatusCode::Failure, msg));
        }
        u.size = u.size.max(end);
        if end > SMALL_MAX && matches!(u.writer, Writer::Memory { .. }) {
            let Writer::Memory { buf, seq, slot } =
                std::mem::replace(&mut u.writer, Writer::Switching)
            else {
                unreachable!("matched Memory above");
            };
            let name = u.name.clone();
            let spilled = self.spill(&name, &buf, seq);
            // The bytes are in the file now (or the upload failed): free the memory.
            drop(buf);
            drop(slot);
            // `spill` borrowed all of `self`: find the upload again.
            let Some(Handle_::Upload(u)) = self.handles.get_mut(handle) else {
                return Err(fail(StatusCode::Failure, "no such handle"));
            };
            match spilled {
                Ok(w) => u.writer = w,
                Err((code, msg)) => {
                    // Never handed over: CLOSE reports this line.
                    u.failed = Some(msg.clone());
                    return Err((code, msg));
                }
            }
        }
        let Some(Handle_::Upload(u)) = self.handles.get_mut(handle) else {
            return Err(fail(StatusCode::Failure, "no such handle"));
        };
        match &mut u.writer {
            Writer::Memory { buf, seq, .. } => {
                // end <= SMALL_MAX here: the offsets fit in memory.
                let (start, stop) = (offset as usize, end as usize);
                if buf.len() < stop {
                    // Grow at most to SMALL_MAX, so a slot never holds more (Vec's own
                    // doubling could reach twice that).
                    if stop > buf.capacity() {
                        let want = (buf.capacity() * 2).max(stop).min(SMALL_MAX as usize);
                        buf.reserve_exact(want - buf.len());
                    }
                    buf.resize(stop, 0);
                }
                buf[start..stop].copy_from_slice(&data);
                seq.wrote(offset, data.len());
            }
            Writer::Thread { tx, .. } => {
                if tx.send(WriterCmd::Write(offset, data)).await.is_err() {
                    return Err(fail(StatusCode::Failure, "write failed"));
                }
            }
            Writer::Switching => return Err(fail(StatusCode::Failure, "write failed")),
        }
        Ok(ok(id))
    }

    fn read(&mut self, id: u32, handle: &str, offset: u64, len: u32) -> Bytes {
        let status = |code: StatusCode, msg: &str| {
            Bytes::try_from(Packet::status(id, code, msg, "en")).unwrap_or_default()
        };
        let Some(h) = self.handles.get(handle) else {
            return status(StatusCode::Failure, "no such handle");
        };
        let Handle_::Read { file, size, .. } = h else {
            return status(
                StatusCode::PermissionDenied,
                "files in /upload cannot be read back",
            );
        };
        // Never more than what is left: the buffer is zero-filled, and small files are the
        // common case.
        let left = usize::try_from(size.saturating_sub(offset)).unwrap_or(usize::MAX);
        let want = (len as usize).min(MAX_READ_WRITE as usize).min(left);
        if want == 0 {
            return status(StatusCode::Eof, "end of file");
        }
        // Build the DATA reply in place: length, type, id, data length, data.
        let mut buf = BytesMut::with_capacity(13 + want);
        buf.put_u32(0);
        buf.put_u8(SSH_FXP_DATA);
        buf.put_u32(id);
        buf.put_u32(0);
        buf.resize(13 + want, 0);
        let mut got = 0;
        while got < want {
            match file.read_at(&mut buf[13 + got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return status(StatusCode::Failure, "read failed"),
            }
        }
        if got == 0 {
            return status(StatusCode::Eof, "end of file");
        }
        buf.truncate(13 + got);
        let total = (9 + got) as u32;
        buf[0..4].copy_from_slice(&total.to_be_bytes());
        buf[9..13].copy_from_slice(&(got as u32).to_be_bytes());
        buf.freeze()
    }

    async fn close(&mut self, id: u32, handle: &str) -> Reply {
        let Some(h) = self.handles.remove(handle) else {
            return Err(fail(StatusCode::Failure, "no such handle"));
        };
        let u = match h {
            Handle_::Upload(u) => u,
            Handle_::Read { name, .. } => {
                tracing::info!(event = "sftp.download", user = %self.account.username, peer = %self.account.peer, name = %name, "{} fetched /download/{name}", self.account.username);
                return Ok(ok(id));
            }
            Handle_::Dir(_) => return Ok(ok(id)),
        };
        let done = u.writer.finish().await;
        if let Some(why) = u.failed {
            if let Some(d) = done {
                d.data.abandon();
            }
            let msg = format!("{} was NOT accepted: {why}", u.name);
            self.shared.refused(&self.account, &u.name, msg.clone());
            return Err(fail(StatusCode::Failure, msg));
        }
        let Some(done) = done else {
            self.shared.forget_writing(&self.account, &u.name);
            return Err(fail(
                StatusCode::Failure,
                "the upload failed on the server; send it again",
            ));
        };
        if let Some(e) = &done.error {
            tracing::error!(event = "sftp.upload.failed", user = %self.account.username, name = %u.name, "writing {} failed: {e}", u.name);
            self.shared.forget_writing(&self.account, &u.name);
            done.data.abandon();
            return Err(fail(
                StatusCode::Failure,
                "the server could not store the file (disk problem); it was NOT accepted; send it again later",
            ));
        }
        tracing::debug!(
            event = "sftp.upload.closed",
            user = %self.account.username,
            name = %u.name,
            size = done.size,
            in_memory = done.data.in_memory(),
            checked_while_arriving = done.analysed.as_ref().is_some_and(|a| a.passes.is_some()),
        );
        if vfs::is_temp_name(&self.shared.settings.temp_name_patterns, &u.name) {
            // Not final yet: kept until renamed to a final name (or the account's last
            // session ends).
            self.shared
                .park(&self.account, &u.name, done.data, done.analysed, done.size);
            return Ok(ok(id));
        }
        self.hand_over(id, u.name, done.data, done.analysed, done.size)
            .await
    }

    /// Give a finished upload to the pipeline; the reply is the customer's receipt.
    async fn hand_over(
        &mut self,
        id: u32,
        name: String,
        data: UploadData,
        analysed: Option<Box<Analysed>>,
        size: u64,
    ) -> Reply {
        let pipeline = self.shared.pipeline.clone();
        let partner = self.account.partner.clone();
        let n = name.clone();
        // On this thread (the runtime moves its other tasks elsewhere meanwhile), not handed
        // to a blocking-pool thread: the hand-off there and the wake-up back cost ~130 µs per
        // receipt, as much as a fifth of a small file's whole ingest (measured: 839 → 661 µs
        // from CLOSE to outcome). A panic in the pipeline still becomes a failure status.
        let result = tokio::task::block_in_place(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // The memory slot is held until the pipeline is done with the bytes.
                let (body, _slot) = data.into_body(analysed);
                pipeline.ingest(&partner, "sftp", vec![Incoming { name: n, body }])
            }))
        });
        let outcome = match result {
            Ok(Ok(mut v)) if v.len() == 1 => v.remove(0),
            Ok(Ok(_)) | Err(_) => {
                self.shared.forget_writing(&self.account, &name);
                tracing::error!(event = "sftp.ingest.failed", user = %self.account.username, name = %name, "the pipeline did not answer for {name}");
                return Err(fail(
                    StatusCode::Failure,
                    "not accepted: internal error; send the file again",
                ));
            }
            Ok(Err(e)) => {
                self.shared.forget_writing(&self.account, &name);
                tracing::error!(event = "sftp.ingest.failed", user = %self.account.username, name = %name, "{e}");
                return Err(fail(
                    StatusCode::Failure,
                    "not accepted: the server could not record the file; send it again later",
                ));
            }
        };
        match outcome {
            Ok(Outcome::Accepted { id: file_id, .. }) => {
                self.shared.accepted(&self.account, &name, size);
                tracing::info!(event = "sftp.upload.accepted", user = %self.account.username, peer = %self.account.peer, name = %name, file_id, size, "receipt sent for {name} (ledger id {file_id})");
                Ok(ok(id))
            }
            Ok(Outcome::Refused {
                id: file_id,
                code,
                reason,
            }) => {
                let msg = format!(
                    "refused {name}: {code}: {reason} (ledger id {file_id}; a note is in /download)"
                );
                self.shared.refused(&self.account, &name, msg.clone());
                Err(fail(StatusCode::Failure, msg))
            }
            Err(e) => {
                self.shared.forget_writing(&self.account, &name);
                Err(fail(StatusCode::Failure, format!("not accepted: {e}")))
            }
        }
    }

    fn node_attrs(&self, node: &Node) -> Result<FileAttributes, (StatusCode, String)> {
        match node {
            Node::Root => Ok(dir_attrs(false)).map(|mut a| {
                a.mtime = Some(self.started);
                a.atime = Some(self.started);
                a
            }),
            Node::UploadDir | Node::DownloadDir => Ok(dir_attrs(true)).map(|mut a| {
                a.mtime = Some(self.started);
                a.atime = Some(self.started);
                a
            }),
            Node::Upload(name) => {
                if let Some(size) = self.handles.values().find_map(|h| match h {
                    Handle_::Upload(u) if &u.name == name => Some(u.size),
                    _ => None,
                }) {
                    return Ok(file_attrs(size, unix_secs(SystemTime::now()), 0o600));
                }
                if let Some(reason) = self.shared.refusal(&self.account, name) {
                    return Err(fail(StatusCode::Failure, reason));
                }
                match self.shared.upload_entry(&self.account, name) {
                    Some((size, mtime)) => Ok(file_attrs(size, mtime, 0o600)),
                    None => Err(fail(
                        StatusCode::NoSuchFile,
                        format!("no such file: /upload/{name}"),
                    )),
                }
            }
            Node::Download(name) => {
                let path = self
                    .shared
                    .pipeline
                    .layout
                    .download(&self.account.partner)
                    .join(name);
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.file_type().is_file() && !name.starts_with('.') => Ok(file_attrs(
                        m.len(),
                        unix_secs(m.modified().unwrap_or(UNIX_EPOCH)),
                        0o440,
                    )),
                    _ => Err(fail(
                        StatusCode::NoSuchFile,
                        format!("no such file: /download/{name}"),
                    )),
                }
            }
        }
    }

    fn stat(&self, id: u32, path: &str) -> Reply {
        let node = self.resolve("stat", path)?;
        let attrs = self.node_attrs(&node)?;
        Ok(Packet::Attrs(russh_sftp::protocol::Attrs { id, attrs }))
    }

    fn fstat(&self, id: u32, handle: &str) -> Reply {
        let attrs = match self.handles.get(handle) {
            Some(Handle_::Upload(u)) => file_attrs(u.size, unix_secs(SystemTime::now()), 0o600),
            Some(Handle_::Read { file, .. }) => {
                let m = file
                    .metadata()
                    .map_err(|_| fail(StatusCode::Failure, "stat failed"))?;
                file_attrs(
                    m.len(),
                    unix_secs(m.modified().unwrap_or(UNIX_EPOCH)),
                    0o440,
                )
            }
            Some(Handle_::Dir(_)) => dir_attrs(true),
            None => return Err(fail(StatusCode::Failure, "no such handle")),
        };
        Ok(Packet::Attrs(russh_sftp::protocol::Attrs { id, attrs }))
    }

    fn opendir(&mut self, id: u32, path: &str) -> Reply {
        let node = self.resolve("opendir", path)?;
        let files = match node {
            Node::Root => vec![
                File::new("upload", self.node_attrs(&Node::UploadDir)?),
                File::new("download", self.node_attrs(&Node::DownloadDir)?),
            ],
            Node::UploadDir => {
                let mut v: Vec<File> = self
                    .shared
                    .upload_listing(&self.account)
                    .into_iter()
                    .map(|(n, size, mtime)| File::new(n, file_attrs(size, mtime, 0o600)))
                    .collect();
                for h in self.handles.values() {
                    if let Handle_::Upload(u) = h
                        && !v.iter().any(|f| f.filename == u.name)
                    {
                        v.push(File::new(
                            u.name.clone(),
                            file_attrs(u.size, unix_secs(SystemTime::now()), 0o600),
                        ));
                    }
                }
                v
            }
            Node::DownloadDir => {
                let dir = self.shared.pipeline.layout.download(&self.account.partner);
                let mut v = Vec::new();
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    for e in rd.flatten() {
                        let Ok(name) = e.file_name().into_string() else {
                            continue;
                        };
                        if name.starts_with('.') {
                            continue; // deliveries in flight
                        }
                        let Ok(m) = e.metadata() else { continue };
                        if !m.file_type().is_file() {
                            continue;
                        }
                        v.push(File::new(
                            name,
                            file_attrs(
                                m.len(),
                                unix_secs(m.modified().unwrap_or(UNIX_EPOCH)),
                                0o440,
                            ),
                        ));
                    }
                }
                v.sort_by(|a, b| a.filename.cmp(&b.filename));
                v
            }
            _ => return Err(fail(StatusCode::Failure, "not a folder")),
        };
        let h = self.new_handle(Handle_::Dir(Some(files)))?;
        Ok(Packet::Handle(Handle { id, handle: h }))
    }

    async fn remove(&mut self, id: u32, path: &str) -> Reply {
        match self.resolve("remove", path)? {
            Node::Download(name) => {
                let p = self
                    .shared
                    .pipeline
                    .layout
                    .download(&self.account.partner)
                    .join(&name);
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.file_type().is_file() && !name.starts_with('.') => {}
                    Ok(_) => return Err(self.refuse("remove", path, "not a regular file")),
                    Err(_) => {
                        return Err(fail(
                            StatusCode::NoSuchFile,
                            format!("no such file: /download/{name}"),
                        ));
                    }
                }
                match crate::spool::discard(&p) {
                    Ok(()) => {
                        tracing::info!(event = "sftp.download.removed", user = %self.account.username, name = %name, "customer removed /download/{name}");
                        Ok(ok(id))
                    }
                    Err(e) => {
                        tracing::error!(event = "sftp.remove.failed", user = %self.account.username, "{e}");
                        Err(fail(StatusCode::Failure, "could not remove the file"))
                    }
                }
            }
            Node::Upload(name) => {
                if let Some(p) = self.shared.take_parked(&self.account, &name) {
                    p.data.abandon();
                    return Ok(ok(id));
                }
                match self.shared.upload_entry(&self.account, &name) {
                    Some(_) => Err(self.refuse("remove", path, "the file was already handed over (accepted); it cannot be withdrawn over SFTP")),
                    None => Err(fail(StatusCode::NoSuchFile, format!("no such file: /upload/{name}"))),
                }
            }
            _ => Err(self.refuse("remove", path, "folders cannot be removed")),
        }
    }

    async fn rename(&mut self, id: u32, old: &str, new: &str, posix: bool) -> Reply {
        let from = self.resolve("rename", old)?;
        let to = self.resolve("rename", new)?;
        let (Node::Upload(a), Node::Upload(b)) = (&from, &to) else {
            return Err(self.refuse(
                "rename",
                old,
                "only uploads in /upload can be renamed, within /upload",
            ));
        };
        if a == b {
            return Ok(ok(id));
        }
        if self
            .handles
            .values()
            .any(|h| matches!(h, Handle_::Upload(u) if &u.name == a))
        {
            return Err(fail(
                StatusCode::Failure,
                format!("{a} is still open; close it first"),
            ));
        }
        if !posix && self.shared.upload_busy(&self.account, b) {
            return Err(fail(StatusCode::Failure, format!("{b} already exists")));
        }
        let Some(p) = self.shared.take_parked(&self.account, a) else {
            return match self.shared.upload_entry(&self.account, a) {
                Some(_) => {
                    Err(self.refuse("rename", old, "the file was already handed over (accepted)"))
                }
                None => Err(fail(
                    StatusCode::NoSuchFile,
                    format!("no such file: /upload/{a}"),
                )),
            };
        };
        if let Some(old_target) = self.shared.take_parked(&self.account, b) {
            old_target.data.abandon();
        }
        if vfs::is_temp_name(&self.shared.settings.temp_name_patterns, b) {
            self.shared
                .park(&self.account, b, p.data, p.analysed, p.size);
            return Ok(ok(id));
        }
        self.shared.set_writing(&self.account, b);
        self.hand_over(id, b.clone(), p.data, p.analysed, p.size)
            .await
    }

    async fn extended(&mut self, id: u32, request: &str, data: &[u8]) -> Reply {
        let mut d = Bytes::copy_from_slice(data);
        match request {
            "limits@openssh.com" => {
                let mut out = BytesMut::with_capacity(32);
                out.put_u64(u64::from(MAX_PACKET) - 1024);
                out.put_u64(MAX_READ_WRITE);
                out.put_u64(MAX_READ_WRITE);
                out.put_u64(MAX_HANDLES as u64);
                Ok(Packet::ExtendedReply(ExtendedReply {
                    id,
                    data: out.to_vec(),
                }))
            }
            "posix-rename@openssh.com" => {
                let (Some(a), Some(b)) = (get_string(&mut d), get_string(&mut d)) else {
                    return Err(fail(StatusCode::BadMessage, "malformed posix-rename"));
                };
                self.rename(id, &a, &b, true).await
            }
            "fsync@openssh.com" => {
                let Some(h) = get_string(&mut d) else {
                    return Err(fail(StatusCode::BadMessage, "malformed fsync"));
                };
                match self.handles.get(&h) {
                    Some(Handle_::Upload(u)) => match &u.writer {
                        // Nothing to flush: the pipeline makes the bytes durable before the
                        // receipt, and an upload is worth nothing until then (see the writer
                        // thread's Sync).
                        Writer::Memory { .. } => Ok(ok(id)),
                        Writer::Switching => Err(fail(StatusCode::Failure, "fsync failed")),
                        Writer::Thread { tx, .. } => {
                            let (otx, rx) = oneshot::channel();
                            if tx.send(WriterCmd::Sync(otx)).await.is_err() {
                                return Err(fail(StatusCode::Failure, "fsync failed"));
                            }
                            match rx.await {
                                Ok(Ok(())) => Ok(ok(id)),
                                _ => Err(fail(StatusCode::Failure, "fsync failed")),
                            }
                        }
                    },
                    Some(_) => Ok(ok(id)),
                    None => Err(fail(StatusCode::Failure, "no such handle")),
                }
            }
            "statvfs@openssh.com" => {
                let Some(path) = get_string(&mut d) else {
                    return Err(fail(StatusCode::BadMessage, "malformed statvfs"));
                };
                self.resolve("statvfs", &path)?;
                // Meaningful only as the account's quota: the server's disks are not the
                // customer's business.
                let Some(quota) = self.account.quota else {
                    return Err(fail(
                        StatusCode::OpUnsupported,
                        "no quota is set for this account",
                    ));
                };
                let used = self.shared.used_bytes(&self.account);
                let bs = 4096u64;
                let blocks = quota / bs;
                let free = quota.saturating_sub(used) / bs;
                let mut out = BytesMut::with_capacity(88);
                for v in [bs, bs, blocks, free, free, 0, 0, 0, 0, 0, 255] {
                    out.put_u64(v);
                }
                Ok(Packet::ExtendedReply(ExtendedReply {
                    id,
                    data: out.to_vec(),
                }))
            }
            other => {
                tracing::info!(event = "sftp.unsupported", user = %self.account.username, request = %other.escape_debug(), "extension {other:?} is not offered");
                Err(fail(
                    StatusCode::OpUnsupported,
                    format!("{other} is not supported"),
                ))
            }
        }
    }
}

fn get_string(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    if b.remaining() < n {
        return None;
    }
    String::from_utf8(b.split_to(n).to_vec()).ok()
}

/// WRITE after type and id: handle (string), offset (u64), data (string).
fn parse_write(mut b: Bytes) -> Option<(String, u64, Bytes)> {
    let handle = get_string(&mut b)?;
    if b.remaining() < 12 {
        return None;
    }
    let offset = b.get_u64();
    let n = b.get_u32() as usize;
    if b.remaining() < n {
        return None;
    }
    Some((handle, offset, b.split_to(n)))
}

/// READ after type and id: handle (string), offset (u64), length (u32).
fn parse_read(mut b: Bytes) -> Option<(String, u64, u32)> {
    let handle = get_string(&mut b)?;
    if b.remaining() < 12 {
        return None;
    }
    Some((handle, b.get_u64(), b.get_u32()))
}
