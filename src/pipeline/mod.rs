//! The pipeline: ingest → route → deliver, the state machine that keeps sluss's promises.
//!
//! - [`ingest`]: a file handed over by any inbound adapter (CLI, SFTP server, pull job) is
//!   spooled durably, recognised, seal-checked, structure-checked, payer-checked,
//!   duplicate-checked, routed and recorded — and only then acknowledged.
//! - [`route`]: pure rules from (partner, recognised file) to destinations.
//! - [`deliver`]: per-destination workers that move queued files to their destination under a
//!   temporary name, promote them, confirm, record; and the restart recovery that resolves
//!   deliveries a crash left in doubt by looking at the destination.
//! - [`pull`]: one run of a scheduled pull job (fetch, ingest, remember, after-action).
//! - [`archive`]: what happens to the spooled copy after delivery (delete or age-encrypt), and
//!   retention.
//!
//! The pipeline writes files only through [`crate::spool`] and records every transition in
//! the [`crate::ledger`]. Inbound adapters never touch either directly.
//!
//! Where a recorded file's bytes wait until delivered ([`Contents`]): a file of at most
//! [`SMALL_MAX`] bytes is kept in the ledger itself, stored by the same commit that records
//! it — its receipt then waits for one disk flush, not three (file, spool folder, ledger).
//! Larger files are spooled in `spool/files`. Either way, the copy goes once the file is
//! delivered and archived.

pub mod archive;
pub mod deliver;
pub mod ingest;
pub mod live;
pub mod pull;
pub mod remote_dest;
pub mod route;

use crate::config::Config;
use crate::ledger::{Ledger, LedgerError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub use ingest::{Body, Incoming, IngestError, Outcome, SMALL_MAX, Upload};

/// A file's bytes as the pipeline holds them: a spool file, or a small file's bytes in memory
/// (kept in the ledger until delivered).
#[derive(Clone)]
pub enum Contents {
    File(PathBuf),
    Memory(Vec<u8>),
}

impl Contents {
    /// Read the bytes from the start.
    pub fn open(&self) -> std::io::Result<Box<dyn std::io::Read + Send + '_>> {
        Ok(match self {
            Contents::File(p) => Box::new(std::fs::File::open(p)?),
            Contents::Memory(b) => Box::new(b.as_slice()),
        })
    }

    pub fn size(&self) -> std::io::Result<u64> {
        Ok(match self {
            Contents::File(p) => std::fs::metadata(p)?.len(),
            Contents::Memory(b) => b.len() as u64,
        })
    }

    /// For messages: the spool path, or where the ledger keeps it.
    pub fn describe(&self) -> String {
        match self {
            Contents::File(p) => p.display().to_string(),
            Contents::Memory(_) => "the copy kept in the ledger".into(),
        }
    }
}

/// Where the pipeline keeps things under the data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub data_dir: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        Layout {
            data_dir: data_dir.to_path_buf(),
        }
    }
    /// The SQLite ledger.
    pub fn ledger(&self) -> PathBuf {
        self.data_dir.join("ledger.sqlite")
    }
    /// Temporary files of ingests in progress.
    pub fn incoming(&self) -> PathBuf {
        self.data_dir.join("spool/incoming")
    }
    /// Every received file (accepted or quarantined) under a random stored name; the ledger
    /// records which is which. A quarantined file stays here until an operator acts.
    pub fn files(&self) -> PathBuf {
        self.data_dir.join("spool/files")
    }
    /// Files found in `files` with no ledger record after a crash (never acknowledged).
    pub fn orphans(&self) -> PathBuf {
        self.data_dir.join("spool/orphans")
    }
    /// Encrypted archive copies, per partner.
    pub fn archive(&self, partner: &str) -> PathBuf {
        self.data_dir.join("archive").join(partner)
    }
    /// A customer's download folder (its SFTP `/download`): default delivery endpoint.
    pub fn download(&self, partner: &str) -> PathBuf {
        self.data_dir.join("download").join(partner)
    }
}

/// Errors of the pipeline as a whole (per-file outcomes are in [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error("unknown partner {0:?}: it has no file in jobs.d/ (see `sluss check`)")]
    UnknownPartner(String),
    #[error("{0}")]
    Other(String),
}

/// The running pipeline: validated config, the ledger, and a bell that wakes delivery workers
/// when an in-process ingest queued something (out-of-process ingests are found by polling).
pub struct Pipeline {
    pub config: Arc<Config>,
    pub layout: Layout,
    ledger: Mutex<Ledger>,
    bell: (Mutex<Bell>, Condvar),
}

impl Pipeline {
    /// Open the ledger under the configured data directory and prepare the spool folders.
    pub fn open(config: Arc<Config>) -> Result<Pipeline, PipelineError> {
        let layout = Layout::new(&config.data_dir);
        crate::spool::ensure_dir(&layout.data_dir)?;
        crate::spool::ensure_dir(&layout.incoming())?;
        crate::spool::ensure_dir(&layout.files())?;
        let ledger = Ledger::open(&layout.ledger())?;
        Ok(Pipeline {
            config,
            layout,
            ledger: Mutex::new(ledger),
            bell: (Mutex::new(Bell::default()), Condvar::new()),
        })
    }

    /// Exclusive use of the ledger. A poisoned lock means a thread panicked mid-call; the
    /// SQLite transaction it held was rolled back, so the ledger itself is consistent.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake delivery workers: something was queued.
    pub fn ring(&self) {
        let mut b = self.bell.0.lock().unwrap_or_else(|p| p.into_inner());
        b.all = b.all.wrapping_add(1);
        self.bell.1.notify_all();
        for (_, cv) in b.per.values() {
            cv.notify_all();
        }
    }

    /// Ring for the workers of these destinations only: an upload for the bank need not
    /// wake every other destination's worker to look at the ledger (one query per receipt
    /// each, on the receipts' two cores).
    pub fn ring_for<'a>(&self, destinations: impl IntoIterator<Item = &'a str>) {
        let mut b = self.bell.0.lock().unwrap_or_else(|p| p.into_inner());
        for d in destinations {
            let (n, cv) = b.per.entry(d.to_string()).or_default();
            *n = n.wrapping_add(1);
            // Only this destination's worker: a shared condition variable woke every worker
            // on every receipt (about two needless thread wake-ups per uploaded file).
            cv.notify_all();
        }
    }

    /// Wait until rung (for anyone) or `timeout` passes.
    pub fn wait_for_work(&self, timeout: Duration) {
        let b = self.bell.0.lock().unwrap_or_else(|p| p.into_inner());
        let start = b.all;
        let _ = self
            .bell
            .1
            .wait_timeout_while(b, timeout, |b| b.all == start);
    }

    /// Wait until rung for everyone or for `destination`, or `timeout` passes.
    pub fn wait_for_work_for(&self, destination: &str, timeout: Duration) {
        let mut b = self.bell.0.lock().unwrap_or_else(|p| p.into_inner());
        let cv = std::sync::Arc::clone(&b.per.entry(destination.to_string()).or_default().1);
        let mine = |b: &Bell| (b.all, b.per.get(destination).map_or(0, |(n, _)| *n));
        let start = mine(&b);
        let _ = cv.wait_timeout_while(b, timeout, |b| mine(b) == start);
    }
}

/// What the delivery workers wait on: a counter for work anyone may have (its condition
/// variable is the pair's), and per destination partner a counter with a condition variable
/// of its own, used with the same mutex.
#[derive(Default)]
struct Bell {
    all: u64,
    per: std::collections::HashMap<String, (u64, std::sync::Arc<Condvar>)>,
}

/// A sender's file name reduced to something safe inside a name sluss makes: only
/// `[A-Za-z0-9._-]`, at most 64 characters, no leading dot (never hidden, never `..`).
pub fn safe_name(original: &str) -> String {
    let kept: String = original
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    kept.trim_start_matches('.').to_string()
}

/// The OS user running this process: the default `--operator` for recorded decisions.
pub fn os_user() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

impl Pipeline {
    /// The held copy of a recorded file (its spool file or its copy kept in the ledger), or
    /// `None` once it is gone: archived, or (for a spool file) missing.
    pub fn held_copy(
        &self,
        rec: &crate::ledger::FileRecord,
    ) -> Result<Option<Contents>, PipelineError> {
        if rec.in_ledger() {
            return Ok(self.ledger().body(rec.id)?.map(Contents::Memory));
        }
        let path = PathBuf::from(&rec.spool_path);
        Ok(crate::spool::size_of(&path)?.map(|_| Contents::File(path)))
    }

    /// The held copy of a recorded file, which must still be there (to deliver, route or
    /// export it).
    pub fn contents_of(&self, rec: &crate::ledger::FileRecord) -> Result<Contents, PipelineError> {
        self.held_copy(rec)?.ok_or_else(|| {
            PipelineError::Other(if rec.in_ledger() {
                format!(
                    "file {} is no longer held: its copy kept in the ledger was removed when it \
                     was archived",
                    rec.id
                )
            } else {
                format!(
                    "file {} is no longer held: its spooled copy {} is missing",
                    rec.id, rec.spool_path
                )
            })
        })
    }

    /// After a crash: spooled files with no ledger record were never acknowledged (their
    /// senders still hold them), and temporary files are partial. Move the former aside to
    /// `spool/orphans` for inspection and remove the latter. Returns how many were orphans.
    pub fn sweep_orphans(&self) -> Result<usize, PipelineError> {
        for t in crate::spool::stale_temps(&self.layout.incoming()) {
            // A locked temp belongs to a live `sluss ingest` beside us: not ours to touch.
            if !crate::spool::is_locked(&t) {
                crate::spool::discard(&t)?;
            }
        }
        let Ok(rd) = std::fs::read_dir(self.layout.files()) else {
            return Ok(0);
        };
        let mut moved = 0;
        for e in rd.flatten() {
            let path = e.path();
            if crate::spool::is_locked(&path) {
                continue; // spooled by a live ingest that has not committed yet
            }
            if self
                .ledger()
                .find_by_spool_path(&path.to_string_lossy())?
                .is_some()
            {
                continue;
            }
            crate::spool::ensure_dir(&self.layout.orphans())?;
            let name = e.file_name();
            crate::spool::move_file(&path, &self.layout.orphans().join(&name))?;
            moved += 1;
        }
        Ok(moved)
    }
}
