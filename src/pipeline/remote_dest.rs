//! A partner's SFTP or FTPS server as a delivery [`Destination`]: the pipeline's
//! exactly-once protocol (temporary name, promote without replacing, confirm the size) over a
//! remote session.
//!
//! Delivery workers are plain threads; each remote destination owns a small tokio runtime
//! (created on first use) and one session, kept open across a batch and reopened after an
//! error. A session that sat idle is probed before use, so a server that dropped it is
//! reconnected instead of failing a delivery. Promotion is never retried blindly: if the
//! answer to a rename is lost, the next attempt finds the final name present and the file is
//! left for the ledger's in-doubt handling, never sent twice.
//!
//! `upload = "direct"` (servers that forbid rename): `put_temp` only stages the spooled path
//! and `promote` writes straight to the final name, refusing if it exists. The file is
//! visible while it is being written, and after a crash an absent or short file is held for
//! an operator, as with every in-doubt delivery.

use super::Contents;
use super::deliver::{DeliverError, Destination, Put};
use crate::config::{Endpoint, UploadMode};
use crate::remote::{self, RemoteEndpoint, RemoteError, RemoteSession};
use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A session idle longer than this is probed (one STAT of the folder) before it is used:
/// servers commonly drop idle sessions after a minute or more.
const IDLE_PROBE_AFTER: Duration = Duration::from_secs(15);

/// A remote folder on a partner's server.
pub struct RemoteDir {
    endpoint: Box<dyn RemoteEndpoint>,
    dir: String,
    upload: UploadMode,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    rt: Option<tokio::runtime::Runtime>,
    session: Option<Box<dyn RemoteSession>>,
    last_used: Option<Instant>,
    /// Direct uploads: temporary name → spooled file, written at promotion.
    staged: HashMap<String, Contents>,
}

/// Run `f` to completion on `rt`, also when called from inside another runtime (a thread
/// of its own then drives it, since a runtime cannot block inside another).
fn block<F>(rt: &tokio::runtime::Runtime, f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(f))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    } else {
        rt.block_on(f)
    }
}

fn other(e: impl std::fmt::Display) -> DeliverError {
    DeliverError::Other(e.to_string())
}

impl RemoteDir {
    /// The destination for a remote endpoint; `None` for a local folder.
    pub fn new(spec: &Endpoint) -> Option<RemoteDir> {
        let (dir, upload) = remote::remote_dir(spec)?;
        Some(RemoteDir {
            endpoint: remote::open(spec),
            dir: dir.to_string(),
            upload,
            state: Mutex::new(State::default()),
        })
    }

    fn path(&self, name: &str) -> String {
        remote::join(&self.dir, name)
    }

    /// Run one remote operation with a live session: connect if there is none, probe one
    /// that sat idle, and drop the session after a failure so the next call reconnects.
    fn with_session<T: Send>(
        &self,
        op: impl for<'s> FnOnce(&'s mut Box<dyn RemoteSession>) -> remote::BoxFut<'s, T> + Send,
    ) -> Result<T, RemoteError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        if st.rt.is_none() {
            st.rt = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
            );
        }
        let rt = st.rt.as_ref().expect("runtime was just created");
        let stale = st.last_used.is_none_or(|t| t.elapsed() > IDLE_PROBE_AFTER);
        if let (Some(s), true) = (st.session.as_mut(), stale) {
            let dir = self.dir.clone();
            if block(rt, async move { s.stat(&dir).await }).is_err() {
                st.session = None;
            }
        }
        if st.session.is_none() {
            let s = block(rt, self.endpoint.connect())?;
            st.session = Some(s);
        }
        let s = st.session.as_mut().expect("session was just opened");
        let r = block(rt, op(s));
        match &r {
            Ok(_) | Err(RemoteError::NotFound { .. }) => st.last_used = Some(Instant::now()),
            Err(_) => {
                st.session = None;
                st.last_used = None;
            }
        }
        r
    }

    fn stat_size(&self, path: &str) -> Result<Option<u64>, RemoteError> {
        let p = path.to_string();
        self.with_session(move |s| Box::pin(async move { Ok(s.stat(&p).await?.map(|e| e.size)) }))
    }

    /// Upload `src` as `path`, which must not exist.
    fn upload(&self, src: &Contents, path: &str) -> Result<u64, DeliverError> {
        // Owned: the remote operation may outlive this borrow of `src`.
        let mut f: Box<dyn Read + Send> = match src {
            Contents::File(p) => Box::new(std::fs::File::open(p).map_err(|e| {
                DeliverError::Other(format!("cannot open spooled copy {}: {e}", p.display()))
            })?),
            Contents::Memory(b) => Box::new(std::io::Cursor::new(b.clone())),
        };
        let p = path.to_string();
        self.with_session(move |s| Box::pin(async move { s.put(&mut *f, &p).await }))
            .map_err(other)
    }

    /// Step 1 for one file; the size as the server reports it (staged: the held copy's).
    fn put_temp_size(&self, temp_name: &str, src: &Contents) -> Result<u64, DeliverError> {
        match self.upload {
            UploadMode::Direct => {
                let size = src.size().map_err(|e| {
                    DeliverError::Other(format!("cannot read {}: {e}", src.describe()))
                })?;
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                st.staged.insert(temp_name.to_string(), src.clone());
                Ok(size)
            }
            UploadMode::Rename => {
                let path = self.path(temp_name);
                self.remove(temp_name)?;
                self.upload(src, &path)?;
                // The server's size, not the bytes we sent: the pipeline compares it.
                self.stat_size(&path).map_err(other)?.ok_or_else(|| {
                    DeliverError::Other(format!(
                        "{}: {path} is missing right after it was written; is something on the server taking files away?",
                        self.endpoint.describe()
                    ))
                })
            }
        }
    }

    fn refuse_existing(&self, path: &str) -> Result<(), DeliverError> {
        if let Some(sz) = self.stat_size(path).map_err(other)? {
            return Err(DeliverError::Other(format!(
                "{}: {path} already exists ({sz} bytes); refusing to replace it. An operator must check what it is",
                self.endpoint.describe()
            )));
        }
        Ok(())
    }
}

impl Destination for RemoteDir {
    fn describe(&self) -> String {
        self.endpoint.describe()
    }

    fn put_temp(&self, temp_name: &str, src: &Contents) -> Result<Put, DeliverError> {
        // A server cannot be asked for a hash, and a direct upload lands under the final
        // name: the held copy is hashed before it goes (for a spooled file, one more local
        // read), and the pipeline compares that with the ledger.
        let sha256 = match src {
            Contents::Memory(b) => crate::spool::sha256_hex(b),
            Contents::File(p) => crate::spool::sha256_file(p)?,
        };
        let size = self.put_temp_size(temp_name, src)?;
        Ok(Put { size, sha256 })
    }

    fn sync(&self) -> Result<(), DeliverError> {
        // Each upload is closed (and fsync'ed where the server offers it) before it counts;
        // nothing further can be asked of a remote server.
        Ok(())
    }

    fn promote(&self, temp_name: &str, final_name: &str) -> Result<(), DeliverError> {
        let to = self.path(final_name);
        self.refuse_existing(&to)?;
        match self.upload {
            UploadMode::Direct => {
                let src = {
                    let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.staged.remove(temp_name)
                };
                let Some(src) = src else {
                    return Err(DeliverError::Other(format!(
                        "{}: nothing staged for {final_name}; it will be retried",
                        self.endpoint.describe()
                    )));
                };
                self.upload(&src, &to).map(|_| ())
            }
            UploadMode::Rename => {
                let from = self.path(temp_name);
                self.with_session(move |s| Box::pin(async move { s.rename(&from, &to).await }))
                    .map_err(other)
            }
        }
    }

    fn size_of(&self, name: &str) -> Result<Option<u64>, DeliverError> {
        self.stat_size(&self.path(name)).map_err(other)
    }

    fn sha256_of(&self, name: &str) -> Result<Option<String>, DeliverError> {
        let path = self.path(name);
        if self.stat_size(&path).map_err(other)?.is_none() {
            return Ok(None);
        }
        // Stream the remote file through a pipe into the hash: nothing is written to disk.
        let (mut reader, writer) = std::io::pipe().map_err(other)?;
        let hasher = std::thread::spawn(move || -> std::io::Result<String> {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let k = reader.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
            }
            Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
        });
        let mut w = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
        let got = self.with_session(move |s| {
            Box::pin(async move {
                let r = s.get(&path, &mut w).await;
                drop(w);
                r
            })
        });
        let hash = hasher
            .join()
            .map_err(|_| DeliverError::Other("hashing thread failed".into()))?;
        got.map_err(other)?;
        Ok(Some(hash.map_err(other)?))
    }

    fn remove(&self, name: &str) -> Result<(), DeliverError> {
        if self.upload == UploadMode::Direct {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.staged.remove(name).is_some() {
                return Ok(());
            }
        }
        let p = self.path(name);
        match self.with_session(move |s| Box::pin(async move { s.remove(&p).await })) {
            Ok(()) | Err(RemoteError::NotFound { .. }) => Ok(()),
            Err(e) => Err(other(e)),
        }
    }
}

impl Drop for RemoteDir {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let Some(rt) = st.rt.take() else { return };
        if let Some(mut s) = st.session.take() {
            let _ = block(&rt, async move { s.close().await });
        }
        // A runtime cannot be dropped inside another one's context: let a thread do it.
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::spawn(move || drop(rt));
        }
    }
}
