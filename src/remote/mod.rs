//! Remote endpoints: the partners' servers (and local folders) sluss pulls files from and
//! pushes files to. One trait, three kinds: SFTP (russh client), FTPS (suppaftp + rustls),
//! and a local folder.
//!
//! This module moves bytes and names; it never decides anything about payments and never
//! touches the ledger. Downloaded bytes go into files the spool created (the caller passes
//! the open file); pushes read from spooled files.

pub mod ftps;
pub mod local;
pub mod sftp;

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so sessions can be used as trait objects across the three kinds.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, RemoteError>> + Send + 'a>>;

/// One entry of a remote folder listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    /// File name within the listed folder (no path).
    pub name: String,
    pub size: u64,
    /// Modification time, seconds since the Unix epoch, when the server tells it.
    pub mtime: Option<i64>,
    pub is_dir: bool,
}

/// What went wrong talking to a remote endpoint, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error(
        "{endpoint} presented host key {presented}, but the partner's configuration pins {expected}: refusing to connect (if the partner really changed its key, confirm the new fingerprint with them and update the pin)"
    )]
    HostKeyMismatch {
        endpoint: String,
        expected: String,
        presented: String,
    },
    #[error("{endpoint}: the server's certificate is not trusted: {detail}")]
    Certificate { endpoint: String, detail: String },
    #[error("{endpoint}: login refused for user {user}: {detail}")]
    Auth {
        endpoint: String,
        user: String,
        detail: String,
    },
    #[error("{endpoint}: timed out after {seconds} s while {during}")]
    Timeout {
        endpoint: String,
        seconds: u64,
        during: String,
    },
    #[error("{endpoint}: {path}: not found")]
    NotFound { endpoint: String, path: String },
    #[error("{endpoint}: {op} {path}: {detail}")]
    Op {
        endpoint: String,
        op: &'static str,
        path: String,
        detail: String,
    },
    #[error("local file: {0}")]
    Local(#[from] std::io::Error),
}

/// The remote folder a configured endpoint delivers into and lists, and how it uploads;
/// `None` for a local folder (whose path is the endpoint itself).
pub fn remote_dir(spec: &crate::config::Endpoint) -> Option<(&str, crate::config::UploadMode)> {
    match spec {
        crate::config::Endpoint::Local { .. } => None,
        crate::config::Endpoint::Sftp(s) => Some((&s.dir, s.upload)),
        crate::config::Endpoint::Ftps(f) => Some((&f.dir, f.upload)),
    }
}

/// `dir` joined with a file name, as a remote path.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() || dir == "." {
        name.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// A connected session with one endpoint. Paths are remote paths (`/out/file.txt`).
pub trait RemoteSession: Send {
    /// Files and folders in `dir`.
    fn list<'a>(&'a mut self, dir: &'a str) -> BoxFut<'a, Vec<RemoteEntry>>;
    /// Size and time of one file, `None` if it does not exist.
    fn stat<'a>(&'a mut self, path: &'a str) -> BoxFut<'a, Option<RemoteEntry>>;
    /// Download `path` into `to` (a file the spool created), returning the bytes written.
    /// Binary, byte-exact, always.
    fn get<'a>(&'a mut self, path: &'a str, to: &'a mut std::fs::File) -> BoxFut<'a, u64>;
    /// Download several files, each into its own local file; one result per item, in order.
    /// Endpoints that can overlap transfers on one session do (SFTP keeps several files in
    /// flight); the default fetches them one after another. The outer error is reserved for
    /// the session itself failing.
    fn get_many<'a>(
        &'a mut self,
        items: &'a mut [(String, std::fs::File)],
    ) -> BoxFut<'a, Vec<Result<u64, RemoteError>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(items.len());
            for (path, f) in items.iter_mut() {
                out.push(self.get(path, f).await);
            }
            Ok(out)
        })
    }
    /// Upload the contents of `from` as `path` (which should not exist), returning the bytes.
    fn put<'a>(
        &'a mut self,
        from: &'a mut (dyn std::io::Read + Send),
        path: &'a str,
    ) -> BoxFut<'a, u64>;
    /// Rename `from` to `to`.
    fn rename<'a>(&'a mut self, from: &'a str, to: &'a str) -> BoxFut<'a, ()>;
    /// Delete `path`.
    fn remove<'a>(&'a mut self, path: &'a str) -> BoxFut<'a, ()>;
    /// End the session politely.
    fn close<'a>(&'a mut self) -> BoxFut<'a, ()>;
}

/// An endpoint that can open sessions.
pub trait RemoteEndpoint: Send + Sync {
    /// For logs and the ledger: `sftp://user@host:port`, `ftps://…`, `local:/path`.
    fn describe(&self) -> String;
    fn connect(&self) -> BoxFut<'_, Box<dyn RemoteSession>>;
}

/// The endpoint object for a configured endpoint.
pub fn open(spec: &crate::config::Endpoint) -> Box<dyn RemoteEndpoint> {
    match spec {
        crate::config::Endpoint::Local { path } => {
            Box::new(local::LocalEndpoint { root: path.clone() })
        }
        crate::config::Endpoint::Sftp(s) => Box::new(sftp::SftpRemote { spec: s.clone() }),
        crate::config::Endpoint::Ftps(f) => Box::new(ftps::FtpsRemote { spec: f.clone() }),
    }
}
