//! The ledger: the SQLite record of every received file, its deliveries, every state change
//! (as a hash-chained, append-only history) and every operator decision. It is the
//! idempotency authority of the gateway: duplicate detection and the delivery state machine
//! live here, and a state change is legal only if the transition table in this module says so.
//!
//! It must never touch payment bytes (it stores digests and a spool path, not content), never
//! use other sluss modules (it is a leaf: kinds, routing and verdicts arrive as strings and
//! JSON from the caller), and never rewrite or delete history.
//!
//! See `docs/ledger.md` for the states, the transition tables, the duplicate rule and the
//! audit-chain encoding.

mod audit;
mod remote_files;
mod schema;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};

pub use audit::{AuditHead, AuditProblem, AuditReport, GENESIS_HASH};
pub use remote_files::{AfterState, NewRemoteFile, RemoteFileRecord};

/// The columns [`file_from_row`] reads, as a literal so queries are `concat!`ed at compile
/// time: the statement cache is looked up by SQL text, and formatting it per call is waste.
macro_rules! file_columns {
    () => {
        "id, partner, source, original_name, size, sha256, payload_sha256, kind, routing, \
         message_id, seal_verdict, seal_kvv, spool_path, state, reason, accepted_at, \
         received_at, updated_at"
    };
}

/// The columns [`delivery_from_row`] reads (see [`file_columns`]).
macro_rules! delivery_columns {
    () => {
        "id, file_id, destination, endpoint, final_name, temp_name, state, attempts, \
         next_attempt_at, last_error, created_at, updated_at"
    };
}

/// How long a statement waits for another process's write lock before giving up with
/// [`LedgerError::Locked`]. A few seconds rides out a CLI command or a checkpoint; longer
/// would stall ingest (and with it SFTP CLOSE answers) behind a forgotten sqlite3 shell.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Distinct operators whose approval releases a quarantined file (four eyes).
pub const RELEASE_APPROVALS_REQUIRED: usize = 2;

/// The ledger's file name inside the data directory.
pub const LEDGER_FILE_NAME: &str = "ledger.sqlite";

pub type FileId = i64;
pub type DeliveryId = i64;
pub type RunId = i64;

/// The state of a file, and (a subset of it) of a delivery. Spellings are stable: they are
/// stored in the database, shown to operators and used in scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Received,
    Quarantined,
    Queued,
    Delivering,
    Delivered,
    InDoubt,
    Held,
    Failed,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Received,
        State::Quarantined,
        State::Queued,
        State::Delivering,
        State::Delivered,
        State::InDoubt,
        State::Held,
        State::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Received => "received",
            State::Quarantined => "quarantined",
            State::Queued => "queued",
            State::Delivering => "delivering",
            State::Delivered => "delivered",
            State::InDoubt => "in-doubt",
            State::Held => "held",
            State::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether a delivery can be in this state (`received` and `quarantined` are file-only).
    pub fn is_delivery_state(self) -> bool {
        !matches!(self, State::Received | State::Quarantined)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for State {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<State, LedgerError> {
        State::parse(s).ok_or_else(|| LedgerError::InvalidInput {
            field: "state",
            detail: format!(
                "'{s}' is not a state; use one of received, quarantined, queued, delivering, \
                 delivered, in-doubt, held, failed"
            ),
        })
    }
}

/// Who may make a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The pipeline (or an operator).
    Any,
    /// Only a named operator (the call must carry `operator`).
    Operator,
    /// Only the four-eyes release ([`Ledger::release_quarantined`]).
    FourEyes,
}

/// Transitions of a file that has no deliveries. Once a file has deliveries its state is
/// derived from them ([`derive_file_state`]) and only delivery transitions apply.
pub const FILE_TRANSITIONS: &[(State, State, Actor)] = &[
    (State::Received, State::Queued, Actor::Any),
    (State::Received, State::Quarantined, Actor::Any),
    (State::Received, State::Failed, Actor::Any),
    (State::Queued, State::Held, Actor::Any),
    (State::Queued, State::Quarantined, Actor::Any),
    (State::Queued, State::Failed, Actor::Any),
    (State::Held, State::Queued, Actor::Operator),
    (State::Held, State::Quarantined, Actor::Any),
    (State::Held, State::Failed, Actor::Operator),
    (State::Quarantined, State::Queued, Actor::FourEyes),
    (State::Quarantined, State::Held, Actor::Operator),
    (State::Failed, State::Queued, Actor::Operator),
];

/// Transitions of a delivery. `delivered` is final: nothing leaves it.
pub const DELIVERY_TRANSITIONS: &[(State, State, Actor)] = &[
    (State::Queued, State::Delivering, Actor::Any),
    (State::Queued, State::Held, Actor::Any),
    (State::Delivering, State::Delivered, Actor::Any),
    (State::Delivering, State::InDoubt, Actor::Any),
    // Only when the attempt failed before any byte could be at the destination.
    (State::Delivering, State::Queued, Actor::Any),
    (State::Delivering, State::Held, Actor::Any),
    (State::Delivering, State::Failed, Actor::Any),
    // The remote check found the final name with the right size.
    (State::InDoubt, State::Delivered, Actor::Any),
    // The remote check could not decide.
    (State::InDoubt, State::Held, Actor::Any),
    // Re-sending an in-doubt file is a human decision: "the bank did not get it".
    (State::InDoubt, State::Queued, Actor::Operator),
    (State::Held, State::Queued, Actor::Operator),
    (State::Held, State::Failed, Actor::Operator),
    (State::Failed, State::Queued, Actor::Operator),
];

fn lookup(table: &[(State, State, Actor)], from: State, to: State) -> Option<Actor> {
    table
        .iter()
        .find(|(f, t, _)| *f == from && *t == to)
        .map(|(_, _, a)| *a)
}

/// The state of a file with deliveries, from its deliveries' states. Attention first: any
/// in-doubt delivery makes the file in-doubt, then held; then work in progress (delivering,
/// queued); a file is delivered only when every delivery is, and failed when none is left
/// to do and at least one failed.
pub fn derive_file_state(deliveries: &[State]) -> Option<State> {
    const PRIORITY: [State; 6] = [
        State::InDoubt,
        State::Held,
        State::Delivering,
        State::Queued,
        State::Failed,
        State::Delivered,
    ];
    PRIORITY.into_iter().find(|p| deliveries.contains(p))
}

/// Why a later file matches an earlier, accepted one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DuplicateKind {
    /// Byte-identical file.
    SameBytes,
    /// The same payment records (payload digest), e.g. re-sealed with another date.
    SamePayload,
    /// The same message id (ISO 20022 `MsgId`), different content.
    SameMessageId,
}

impl DuplicateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DuplicateKind::SameBytes => "same-bytes",
            DuplicateKind::SamePayload => "same-payload",
            DuplicateKind::SameMessageId => "same-message-id",
        }
    }
}

impl fmt::Display for DuplicateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result of one release approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseOutcome {
    /// Approval recorded; another operator must approve too.
    NeedsSecondApproval,
    /// The file is queued.
    Released,
}

/// A file as it arrived, for [`Tx::record_received`].
#[derive(Clone, Debug)]
pub struct NewFile<'a> {
    pub partner: &'a str,
    /// How it arrived: `cli`, `sftp:<user>`, `pull:<job>`, ...
    pub source: &'a str,
    pub original_name: &'a str,
    pub size: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: &'a str,
    /// SHA-256 of the payment records (seal::payload_digest), hex.
    pub payload_sha256: &'a str,
    pub kind: &'a str,
    /// Routing keys as JSON text (stored as given, re-serialised compactly).
    pub routing_json: &'a str,
    pub message_id: Option<&'a str>,
    /// `valid`, `not-sealed`, `wrong-key`, ... (seal::SealFinding::code()).
    pub seal_verdict: &'a str,
    pub seal_kvv: Option<&'a str>,
    /// Where the bytes are in the spool; unique per record. For a file kept in the ledger,
    /// [`IN_LEDGER`] followed by a unique token.
    pub spool_path: &'a str,
    /// The file's bytes, for a small file kept in the ledger until delivered (stored in the
    /// same transaction as the record); `None` when they are in the spool at `spool_path`.
    pub body: Option<&'a [u8]>,
}

/// How `spool_path` begins for a file whose bytes are kept in the ledger (table `bodies`)
/// rather than in a spool file.
pub const IN_LEDGER: &str = "ledger:";

#[derive(Clone, Debug, serde::Serialize)]
pub struct FileRecord {
    pub id: FileId,
    pub partner: String,
    pub source: String,
    pub original_name: String,
    pub size: u64,
    pub sha256: String,
    pub payload_sha256: String,
    pub kind: String,
    pub routing: serde_json::Value,
    pub message_id: Option<String>,
    pub seal_verdict: String,
    pub seal_kvv: Option<String>,
    pub spool_path: String,
    pub state: State,
    /// Reason of the latest state change, if one was given.
    pub reason: Option<String>,
    /// When the file first reached `queued` (passed checks or was released); `None` = never.
    pub accepted_at: Option<String>,
    pub received_at: String,
    pub updated_at: String,
}

impl FileRecord {
    /// Whether the file's bytes are kept in the ledger (until delivered) rather than in a
    /// spool file.
    pub fn in_ledger(&self) -> bool {
        self.spool_path.starts_with(IN_LEDGER)
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub file_id: FileId,
    /// Destination partner id.
    pub destination: String,
    /// Human description of the endpoint (e.g. `sftp://bank.example/in`).
    pub endpoint: String,
    pub final_name: String,
    pub temp_name: String,
    pub state: State,
    /// Attempts started (transitions to `delivering`).
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One row of the audit history. Rows with `delivery_id` describe that delivery's states;
/// rows without describe the file's state.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HistoryRow {
    pub seq: i64,
    pub file_id: FileId,
    pub delivery_id: Option<DeliveryId>,
    pub at: String,
    pub from_state: Option<State>,
    pub to_state: State,
    pub event: String,
    pub reason: String,
    pub operator: Option<String>,
    pub hash: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Approval {
    pub file_id: FileId,
    pub action: String,
    pub operator: String,
    pub reason: String,
    pub at: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RunRecord {
    pub id: RunId,
    pub job: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub files: Option<u64>,
    pub bytes: Option<u64>,
    pub outcome: Option<String>,
    pub error: Option<String>,
}

/// Filter for [`Ledger::list`].
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub partner: Option<String>,
    pub state: Option<State>,
    /// `None`: every matching record.
    pub limit: Option<usize>,
}

/// Options for [`Ledger::open_with`].
#[derive(Clone, Debug)]
pub struct Options {
    pub busy_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "the ledger at {path} is damaged ({detail}): restore it from backup; do not delete it, \
         files' states are recorded there"
    )]
    Damaged { path: PathBuf, detail: String },
    #[error(
        "the ledger at {path} is locked by another process (waited {waited_ms} ms): stop the \
         other sluss process or close the sqlite3 shell holding a transaction, then try again"
    )]
    Locked { path: PathBuf, waited_ms: u64 },
    #[error(
        "cannot open or create the ledger at {path} ({detail}): check that the directory {} \
         exists and the sluss user can write it (SQLite also creates -wal and -shm files beside \
         the ledger)", dir.display()
    )]
    Unwritable {
        path: PathBuf,
        dir: PathBuf,
        detail: String,
    },
    #[error(
        "the ledger at {path} has schema version {found}, newer than this sluss supports \
         ({supported}): run a sluss at least as new as the one that last wrote it; never \
         downgrade a ledger"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "the ledger at {path} cannot use WAL mode (journal mode is '{mode}'): keep the data \
         directory on a local file system"
    )]
    NoWal { path: PathBuf, mode: String },
    #[error("file {id} is not in the ledger: check the id with `sluss ledger list`")]
    UnknownFile { id: FileId },
    #[error("delivery {id} is not in the ledger")]
    UnknownDelivery { id: DeliveryId },
    #[error(
        "file {id} cannot go from {from} to {to}: that transition is not allowed (see \
         docs/ledger.md, \"States\")"
    )]
    IllegalTransition { id: FileId, from: State, to: State },
    #[error(
        "delivery {id} cannot go from {from} to {to}: that transition is not allowed (see \
         docs/ledger.md, \"States\")"
    )]
    IllegalDeliveryTransition {
        id: DeliveryId,
        from: State,
        to: State,
    },
    #[error(
        "{what}: {from} → {to} is an operator decision; it needs an operator name and a reason"
    )]
    NeedsOperator {
        what: String,
        from: State,
        to: State,
    },
    #[error(
        "file {id} is quarantined: only a release approved by {RELEASE_APPROVALS_REQUIRED} \
         different operators can queue it (`sluss ledger release`)"
    )]
    NeedsRelease { id: FileId },
    #[error(
        "file {id} was never accepted (it did not pass ingest checks): release it with \
         {RELEASE_APPROVALS_REQUIRED} operators (`sluss ledger release`) or have the partner \
         send it again"
    )]
    NotAccepted { id: FileId },
    #[error(
        "operator '{operator}' already approved releasing file {id}; a second, different \
         operator must approve"
    )]
    SameOperatorTwice { id: FileId, operator: String },
    #[error(
        "file {id} has deliveries, so its state follows them: change the delivery (or use \
         hold/retry/resolve-delivered) instead"
    )]
    FollowsDeliveries { id: FileId },
    #[error(
        "file {id}: delivery {delivery} is being sent right now; wait until the attempt ends, \
         then try again"
    )]
    DeliveryInFlight { id: FileId, delivery: DeliveryId },
    #[error(
        "file {id} cannot get a delivery while it is {state}: only queued (accepted) files are \
         delivered"
    )]
    NotQueued { id: FileId, state: State },
    #[error("the spool file {spool_path} is already recorded as file {id}")]
    AlreadyRecorded { spool_path: String, id: FileId },
    #[error("file {file_id} already has delivery {id} to destination '{destination}'")]
    DeliveryExists {
        file_id: FileId,
        destination: String,
        id: DeliveryId,
    },
    #[error("invalid {field}: {detail}")]
    InvalidInput { field: &'static str, detail: String },
    #[error(
        "'{given}' is not an audit head: give it as SEQ:HASH (e.g. 42:ab12…, 64 hex digits), \
         as logged after each ledger change"
    )]
    BadHead { given: String },
    #[error("ledger database error: {0}")]
    Database(#[from] rusqlite::Error),
}

impl LedgerError {
    /// Turns a busy/locked database error into [`LedgerError::Locked`] for this ledger.
    fn with_path(self, path: &Path, busy_timeout: Duration) -> LedgerError {
        match self {
            LedgerError::Database(e) => schema::classify_open_error(e, path, busy_timeout),
            other => other,
        }
    }
}

/// The current time as stored in the ledger: RFC 3339, UTC, milliseconds
/// (`2026-03-01T09:30:00.123Z`). Fixed width, so text order is time order.
pub fn now_rfc3339() -> String {
    format_ts(jiff::Timestamp::now())
}

/// A timestamp in the ledger's stored form (`2026-03-01T09:30:00.123Z`): UTC, milliseconds,
/// so stored times compare correctly as text.
pub fn format_ts(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Normalises a caller's RFC 3339 time (any offset, any precision) to the stored form, so
/// text comparisons in SQL are time comparisons.
pub fn normalize_rfc3339(field: &'static str, text: &str) -> Result<String, LedgerError> {
    let ts: jiff::Timestamp = text.parse().map_err(|e| LedgerError::InvalidInput {
        field,
        detail: format!("'{text}' is not an RFC 3339 time ({e}); e.g. 2026-03-01T09:30:00Z"),
    })?;
    Ok(format_ts(ts))
}

/// The ledger. One per installation (`<data_dir>/ledger.sqlite`); `Send`, so the daemon can
/// share it behind a `Mutex`.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    busy_timeout: Duration,
    last_head: AuditHead,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("last_head", &self.last_head)
            .finish()
    }
}

impl Ledger {
    /// Opens (creating if absent) the ledger at `path` with default options.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Ledger::open_with(path, &Options::default())
    }

    /// Opens the ledger in `<data_dir>/ledger.sqlite`.
    pub fn open_in(data_dir: &Path) -> Result<Ledger, LedgerError> {
        Ledger::open(&data_dir.join(LEDGER_FILE_NAME))
    }

    pub fn open_with(path: &Path, options: &Options) -> Result<Ledger, LedgerError> {
        let conn = schema::open_connection(path, options.busy_timeout)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        let last_head =
            audit::read_head(&conn).map_err(|e| e.with_path(path, options.busy_timeout))?;
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
            busy_timeout: options.busy_timeout,
            last_head,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one write transaction (BEGIN IMMEDIATE): committed — one fsync — if `f`
    /// returns `Ok`, rolled back if it returns `Err` (or panics). Group many small changes here.
    ///
    /// BEGIN, COMMIT and ROLLBACK run as cached prepared statements rather than through
    /// `execute_batch`, which would parse the SQL text again on every call: the ingest and
    /// delivery paths open several transactions per file.
    pub fn with_tx<T>(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let result = (|| -> Result<(T, Option<AuditHead>), LedgerError> {
            self.conn.prepare_cached(SQL_BEGIN)?.execute([])?;
            // From here on, dropping `guard` without `commit` rolls back.
            let guard = TxGuard {
                conn: &self.conn,
                committed: false,
            };
            let mut t = Tx {
                tx: &self.conn,
                head: None,
            };
            let value = f(&mut t)?;
            let head = t.head.take();
            guard.commit()?;
            Ok((value, head))
        })();
        match result {
            Ok((value, head)) => {
                if let Some(h) = head {
                    self.last_head = h;
                }
                Ok(value)
            }
            Err(e) => Err(e.with_path(&self.path, self.busy_timeout)),
        }
    }

    /// Like [`with_tx`](Self::with_tx), also returning the audit head after the commit (the
    /// value to log).
    pub fn with_tx_head<T>(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, LedgerError>,
    ) -> Result<(T, AuditHead), LedgerError> {
        let value = self.with_tx(f)?;
        Ok((value, self.last_head.clone()))
    }

    /// The head after this process's last commit (or at open). Cheap; does not see changes
    /// made since by another process — use [`head`](Self::head) for that.
    pub fn last_head(&self) -> &AuditHead {
        &self.last_head
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        f(&self.conn).map_err(|e| e.with_path(&self.path, self.busy_timeout))
    }

    pub fn get(&self, id: FileId) -> Result<Option<FileRecord>, LedgerError> {
        self.read(|c| get_file(c, id))
    }

    pub fn find_by_spool_path(&self, spool_path: &str) -> Result<Option<FileRecord>, LedgerError> {
        self.read(|c| find_by_spool_path(c, spool_path))
    }

    /// The bytes of a file kept in the ledger; `None` once archived (or never kept here).
    pub fn body(&self, id: FileId) -> Result<Option<Vec<u8>>, LedgerError> {
        self.read(|c| {
            Ok(query_one(
                c,
                "SELECT bytes FROM bodies WHERE file_id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    /// Delivered files whose bytes are still kept in the ledger: a crash came between the
    /// delivery and the archiving (see `Pipeline::recover`).
    pub fn delivered_with_bodies(&self) -> Result<Vec<FileId>, LedgerError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT b.file_id FROM bodies b JOIN files f ON f.id = b.file_id \
                 WHERE f.state = 'delivered' ORDER BY b.file_id",
            )?;
            let ids = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<FileId>, _>>()?;
            Ok(ids)
        })
    }

    /// The partner whose accepted file carried ISO 20022 message id `message_id` (the sender
    /// of the pain.001 a pain.002 answers), if exactly one partner did.
    pub fn partner_of_message(&self, message_id: &str) -> Result<Option<String>, LedgerError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT DISTINCT partner FROM files WHERE message_id = ?1 \
                 AND accepted_at IS NOT NULL LIMIT 2",
            )?;
            let partners = stmt
                .query_map(params![message_id], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if partners.len() == 1 {
                partners.into_iter().next()
            } else {
                None
            })
        })
    }

    /// Files in state `queued` with no delivery yet: released by operators (or interrupted
    /// right after the release), waiting for the pipeline to route them.
    pub fn queued_without_deliveries(&self) -> Result<Vec<FileRecord>, LedgerError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(concat!(
                "SELECT ",
                file_columns!(),
                " FROM files f WHERE state = 'queued' AND NOT EXISTS \
                 (SELECT 1 FROM deliveries d WHERE d.file_id = f.id) ORDER BY id"
            ))?;
            let rows = stmt.query_map([], file_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Files, newest first.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<FileRecord>, LedgerError> {
        self.read(|c| {
            // No limit means every matching record (scripts depend on seeing them all).
            let limit = filter
                .limit
                .map_or(i64::MAX, |l| l.min(i64::MAX as usize) as i64);
            let mut stmt = c.prepare(concat!(
                "SELECT ",
                file_columns!(),
                " FROM files WHERE (?1 IS NULL OR partner = ?1) \
                 AND (?2 IS NULL OR state = ?2) ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(
                params![filter.partner, filter.state.map(State::as_str), limit],
                file_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The file's history and its deliveries' history, oldest first.
    pub fn history(&self, id: FileId) -> Result<Vec<HistoryRow>, LedgerError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT seq, file_id, delivery_id, at, from_state, to_state, event, reason, \
                 operator, hash FROM history WHERE file_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([id], |r| {
                Ok(HistoryRow {
                    seq: r.get(0)?,
                    file_id: r.get(1)?,
                    delivery_id: r.get(2)?,
                    at: r.get(3)?,
                    from_state: opt_state_col(r, 4)?,
                    to_state: state_col(r, 5)?,
                    event: r.get(6)?,
                    reason: r.get(7)?,
                    operator: r.get(8)?,
                    hash: r.get(9)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn approvals(&self, id: FileId) -> Result<Vec<Approval>, LedgerError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT file_id, action, operator, reason, at FROM approvals WHERE file_id = ?1 \
                 ORDER BY id",
            )?;
            let rows = stmt.query_map([id], |r| {
                Ok(Approval {
                    file_id: r.get(0)?,
                    action: r.get(1)?,
                    operator: r.get(2)?,
                    reason: r.get(3)?,
                    at: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn deliveries(&self, file_id: FileId) -> Result<Vec<DeliveryRecord>, LedgerError> {
        self.read(|c| deliveries_where(c, SQL_DELIVERIES_OF_FILE, params![file_id]))
    }

    pub fn get_delivery(&self, id: DeliveryId) -> Result<Option<DeliveryRecord>, LedgerError> {
        self.read(|c| get_delivery(c, id))
    }

    /// Deliveries a restarted daemon must look at: queued, delivering (interrupted: check the
    /// remote side before anything else) and in-doubt.
    pub fn unfinished_deliveries(&self) -> Result<Vec<DeliveryRecord>, LedgerError> {
        self.read(|c| deliveries_where(c, SQL_UNFINISHED_DELIVERIES, []))
    }

    /// Queued deliveries whose next attempt is due at `now` (RFC 3339), oldest due first.
    pub fn due_deliveries(
        &self,
        now: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, LedgerError> {
        let now = normalize_rfc3339("now", now)?;
        self.read(|c| {
            deliveries_where(
                c,
                SQL_DUE_DELIVERIES,
                params![now, i64::try_from(limit).unwrap_or(i64::MAX)],
            )
        })
    }

    /// [`due_deliveries`](Self::due_deliveries) to one destination partner: what its
    /// delivery worker takes, without reading (and skipping) other destinations' backlog.
    pub fn due_deliveries_to(
        &self,
        destination: &str,
        now: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, LedgerError> {
        let now = normalize_rfc3339("now", now)?;
        self.read(|c| {
            deliveries_where(
                c,
                SQL_DUE_DELIVERIES_TO,
                params![now, i64::try_from(limit).unwrap_or(i64::MAX), destination],
            )
        })
    }

    /// The newest row of the audit chain, as stored now.
    pub fn head(&self) -> Result<AuditHead, LedgerError> {
        self.read(audit::read_head)
    }

    /// Recomputes the audit chain; with `expected` (`SEQ:HASH`, a head logged earlier) also
    /// proves that row is still there, unchanged.
    pub fn verify_audit(&self, expected: Option<&str>) -> Result<AuditReport, LedgerError> {
        self.read(|c| audit::verify(c, expected))
    }

    /// Records one operator's approval to release a quarantined file; the second approval by
    /// a different operator queues it.
    pub fn release_quarantined(
        &mut self,
        id: FileId,
        operator: &str,
        reason: &str,
    ) -> Result<ReleaseOutcome, LedgerError> {
        self.with_tx(|tx| tx.release_quarantined(id, operator, reason))
    }

    pub fn hold(&mut self, id: FileId, operator: &str, reason: &str) -> Result<(), LedgerError> {
        self.with_tx(|tx| tx.hold(id, operator, reason))
    }

    pub fn retry(&mut self, id: FileId, operator: &str, reason: &str) -> Result<(), LedgerError> {
        self.with_tx(|tx| tx.retry(id, operator, reason))
    }

    pub fn resolve_delivered(
        &mut self,
        id: FileId,
        operator: &str,
        reason: &str,
    ) -> Result<(), LedgerError> {
        self.with_tx(|tx| tx.resolve_delivered(id, operator, reason))
    }

    /// Records the start of a scheduled job's run.
    pub fn record_run_start(&mut self, job: &str) -> Result<RunId, LedgerError> {
        let at = now_rfc3339();
        self.read(|c| {
            exec(
                c,
                "INSERT INTO runs (job, started_at) VALUES (?1, ?2)",
                params![job, at],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Records the end of a run: files and bytes moved, `outcome` (e.g. `ok`, `failed`,
    /// `partial`), and the error if any.
    pub fn record_run_end(
        &mut self,
        run: RunId,
        files: u64,
        bytes: u64,
        outcome: &str,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        let at = now_rfc3339();
        self.read(|c| {
            let n = exec(
                c,
                "UPDATE runs SET finished_at = ?2, files = ?3, bytes = ?4, outcome = ?5, \
                 error = ?6 WHERE id = ?1",
                params![run, at, to_i64(files), to_i64(bytes), outcome, error],
            )?;
            if n == 0 {
                return Err(LedgerError::InvalidInput {
                    field: "run",
                    detail: format!("run {run} is not in the ledger"),
                });
            }
            Ok(())
        })
    }

    /// The latest runs of `job`, newest first.
    pub fn runs(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>, LedgerError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, job, started_at, finished_at, files, bytes, outcome, error FROM runs \
                 WHERE job = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![job, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| {
                    Ok(RunRecord {
                        id: r.get(0)?,
                        job: r.get(1)?,
                        started_at: r.get(2)?,
                        finished_at: r.get(3)?,
                        files: r.get::<_, Option<i64>>(4)?.map(|v| v.max(0) as u64),
                        bytes: r.get::<_, Option<i64>>(5)?.map(|v| v.max(0) as u64),
                        outcome: r.get(6)?,
                        error: r.get(7)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

/// Statements run per file or per delivery are prepared once per connection and then taken
/// from rusqlite's statement cache ([`Connection::prepare_cached`]); the cache must hold all of
/// them, or they evict each other and are parsed again on every call.
const STATEMENT_CACHE_CAPACITY: usize = 64;

const SQL_BEGIN: &str = "BEGIN IMMEDIATE";
const SQL_COMMIT: &str = "COMMIT";
const SQL_ROLLBACK: &str = "ROLLBACK";

/// The open transaction of [`Ledger::with_tx`]: rolls back when dropped uncommitted — on an
/// `Err` from the closure, on a failed COMMIT, and while unwinding from a panic (so a
/// poisoned ledger lock never guards a half-done transaction).
struct TxGuard<'c> {
    conn: &'c Connection,
    committed: bool,
}

impl TxGuard<'_> {
    fn commit(mut self) -> Result<(), LedgerError> {
        self.conn.prepare_cached(SQL_COMMIT)?.execute([])?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TxGuard<'_> {
    fn drop(&mut self) {
        // SQLite may already have rolled back by itself (some errors end the transaction);
        // a ROLLBACK then would only fail.
        if !self.committed && !self.conn.is_autocommit() {
            let rolled_back = self
                .conn
                .prepare_cached(SQL_ROLLBACK)
                .and_then(|mut s| s.execute([]));
            if let Err(e) = rolled_back {
                tracing::error!("ledger: rolling back a failed transaction failed: {e}");
            }
        }
    }
}

/// One write transaction; see [`Ledger::with_tx`].
pub struct Tx<'a> {
    tx: &'a Connection,
    /// The chain head as of this transaction's last append (read lazily under the lock).
    head: Option<AuditHead>,
}

impl Tx<'_> {
    /// Records a newly received file in state `received`, with its history row.
    pub fn record_received(&mut self, f: &NewFile<'_>) -> Result<FileId, LedgerError> {
        let sha256 = checked_hex("sha256", f.sha256)?;
        let payload = checked_hex("payload_sha256", f.payload_sha256)?;
        let routing: serde_json::Value =
            serde_json::from_str(f.routing_json).map_err(|e| LedgerError::InvalidInput {
                field: "routing_json",
                detail: format!("not JSON ({e})"),
            })?;
        for (field, value) in [
            ("partner", f.partner),
            ("source", f.source),
            ("kind", f.kind),
            ("seal_verdict", f.seal_verdict),
            ("spool_path", f.spool_path),
        ] {
            if value.trim().is_empty() {
                return Err(LedgerError::InvalidInput {
                    field,
                    detail: "must not be empty".into(),
                });
            }
        }
        let existing: Option<FileId> = query_one(
            self.tx,
            "SELECT id FROM files WHERE spool_path = ?1",
            [f.spool_path],
            |r| r.get(0),
        )
        .optional()?;
        if let Some(id) = existing {
            return Err(LedgerError::AlreadyRecorded {
                spool_path: f.spool_path.to_string(),
                id,
            });
        }
        let now = now_rfc3339();
        exec(
            self.tx,
            "INSERT INTO files (partner, source, original_name, size, sha256, payload_sha256, \
             kind, routing, message_id, seal_verdict, seal_kvv, spool_path, state, reason, \
             received_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'received', NULL, ?13, ?13)",
            params![
                f.partner,
                f.source,
                f.original_name,
                to_i64(f.size),
                sha256,
                payload,
                f.kind,
                routing.to_string(),
                f.message_id,
                f.seal_verdict,
                f.seal_kvv,
                f.spool_path,
                now,
            ],
        )?;
        let id = self.tx.last_insert_rowid();
        if let Some(body) = f.body {
            if !f.spool_path.starts_with(IN_LEDGER) || body.len() as u64 != f.size {
                return Err(LedgerError::InvalidInput {
                    field: "body",
                    detail: format!(
                        "a body kept in the ledger needs a spool_path starting {IN_LEDGER:?} and \
                         exactly `size` bytes ({} given for {})",
                        body.len(),
                        f.size
                    ),
                });
            }
            exec(
                self.tx,
                "INSERT INTO bodies (file_id, bytes) VALUES (?1, ?2)",
                params![id, body],
            )?;
        }
        let reason = format!("{} via {} ({} bytes)", f.original_name, f.source, f.size);
        self.append(
            id,
            None,
            None,
            State::Received,
            "file.received",
            &reason,
            None,
            &now,
        )?;
        Ok(id)
    }

    pub fn get(&self, id: FileId) -> Result<Option<FileRecord>, LedgerError> {
        get_file(self.tx, id)
    }

    pub fn get_delivery(&self, id: DeliveryId) -> Result<Option<DeliveryRecord>, LedgerError> {
        get_delivery(self.tx, id)
    }

    pub fn deliveries(&self, file_id: FileId) -> Result<Vec<DeliveryRecord>, LedgerError> {
        deliveries_where(self.tx, SQL_DELIVERIES_OF_FILE, params![file_id])
    }

    /// The chain head including this transaction's appends so far.
    pub fn head(&mut self) -> Result<AuditHead, LedgerError> {
        if self.head.is_none() {
            self.head = Some(audit::read_head(self.tx)?);
        }
        Ok(self.head.clone().unwrap_or_else(AuditHead::genesis))
    }

    /// Forget the bytes of a file kept in the ledger (it was delivered and archived).
    /// Returns whether there were any.
    pub fn drop_body(&mut self, id: FileId) -> Result<bool, LedgerError> {
        Ok(exec(
            self.tx,
            "DELETE FROM bodies WHERE file_id = ?1",
            params![id],
        )? > 0)
    }

    /// The spool moved the file's bytes (e.g. incoming → archive).
    pub fn set_spool_path(&mut self, id: FileId, spool_path: &str) -> Result<(), LedgerError> {
        let n = exec(
            self.tx,
            "UPDATE files SET spool_path = ?2 WHERE id = ?1",
            params![id, spool_path],
        )?;
        if n == 0 {
            return Err(LedgerError::UnknownFile { id });
        }
        Ok(())
    }

    /// The oldest accepted file (one that ever reached `queued`) of `partner` received at or
    /// after `since` that has the same bytes, else the same payload, else the same message
    /// id. Files that never passed the checks (quarantined at ingest, failed) do not count:
    /// a customer who fixes a bad seal and re-sends must get through.
    pub fn find_duplicate(
        &self,
        partner: &str,
        sha256: &str,
        payload_sha256: &str,
        message_id: Option<&str>,
        since_rfc3339: &str,
    ) -> Result<Option<(FileId, DuplicateKind)>, LedgerError> {
        let since = normalize_rfc3339("since", since_rfc3339)?;
        let sha256 = sha256.to_ascii_lowercase();
        let payload = payload_sha256.to_ascii_lowercase();
        let probes: [(&str, Option<&str>, DuplicateKind); 3] = [
            (DUPLICATE_PROBES[0], Some(&sha256), DuplicateKind::SameBytes),
            (
                DUPLICATE_PROBES[1],
                Some(&payload),
                DuplicateKind::SamePayload,
            ),
            (
                DUPLICATE_PROBES[2],
                message_id,
                DuplicateKind::SameMessageId,
            ),
        ];
        for (sql, value, kind) in probes {
            let Some(value) = value.filter(|v| !v.is_empty()) else {
                continue;
            };
            let found: Option<FileId> =
                query_one(self.tx, sql, params![partner, value, since], |r| r.get(0)).optional()?;
            if let Some(id) = found {
                return Ok(Some((id, kind)));
            }
        }
        Ok(None)
    }

    /// Changes the state of a file that has no deliveries, checking [`FILE_TRANSITIONS`], and
    /// writes its history row. `reason` may be empty; `operator` is required where the table
    /// says so.
    pub fn transition(
        &mut self,
        id: FileId,
        to: State,
        event: &str,
        reason: &str,
        operator: Option<&str>,
    ) -> Result<(), LedgerError> {
        check_event(event)?;
        let operator = operator.map(checked_operator).transpose()?;
        let file = self.file(id)?;
        if self.delivery_count(id)? > 0 {
            return Err(LedgerError::FollowsDeliveries { id });
        }
        let from = file.state;
        match lookup(FILE_TRANSITIONS, from, to) {
            None => return Err(LedgerError::IllegalTransition { id, from, to }),
            Some(Actor::FourEyes) => return Err(LedgerError::NeedsRelease { id }),
            Some(Actor::Operator) if operator.is_none() => {
                return Err(LedgerError::NeedsOperator {
                    what: format!("file {id}"),
                    from,
                    to,
                });
            }
            Some(_) => {}
        }
        // A file that never passed the checks reaches `queued` only through the four-eyes
        // release: neither retry nor a detour through `held` may skip it.
        if to == State::Queued && from != State::Received && file.accepted_at.is_none() {
            return Err(LedgerError::NotAccepted { id });
        }
        self.set_file_state(id, from, to, event, reason, operator.as_deref(), None)
    }

    /// Adds a delivery of an accepted (`queued`) file to `destination`, in state `queued`,
    /// due now.
    pub fn add_delivery(
        &mut self,
        file_id: FileId,
        destination: &str,
        endpoint: &str,
        final_name: &str,
        temp_name: &str,
    ) -> Result<DeliveryId, LedgerError> {
        let file = self.file(file_id)?;
        // Several deliveries of one file are added together while it is queued; a file that
        // is already being delivered (or was) does not silently gain another destination.
        if file.state != State::Queued || file.accepted_at.is_none() {
            return Err(LedgerError::NotQueued {
                id: file_id,
                state: file.state,
            });
        }
        let existing: Option<DeliveryId> = query_one(
            self.tx,
            "SELECT id FROM deliveries WHERE file_id = ?1 AND destination = ?2",
            params![file_id, destination],
            |r| r.get(0),
        )
        .optional()?;
        if let Some(id) = existing {
            return Err(LedgerError::DeliveryExists {
                file_id,
                destination: destination.to_string(),
                id,
            });
        }
        let now = now_rfc3339();
        exec(
            self.tx,
            "INSERT INTO deliveries (file_id, destination, endpoint, final_name, temp_name, \
             state, attempts, next_attempt_at, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', 0, ?6, ?6, ?6)",
            params![file_id, destination, endpoint, final_name, temp_name, now],
        )?;
        let d = self.tx.last_insert_rowid();
        let reason = format!("to {destination} ({endpoint}) as {final_name}");
        self.append(
            file_id,
            Some(d),
            None,
            State::Queued,
            "delivery.created",
            &reason,
            None,
            &now,
        )?;
        self.refresh_file_state(file_id, d, &reason, None)?;
        Ok(d)
    }

    /// Changes a delivery's state, checking [`DELIVERY_TRANSITIONS`]; writes its history row;
    /// the file's state follows ([`derive_file_state`]) in the same transaction.
    pub fn delivery_transition(
        &mut self,
        d: DeliveryId,
        to: State,
        event: &str,
        reason: &str,
        operator: Option<&str>,
    ) -> Result<(), LedgerError> {
        check_event(event)?;
        let operator = operator.map(checked_operator).transpose()?;
        self.delivery_change(d, to, event, reason, operator.as_deref(), None)
    }

    /// After a failed attempt that certainly left nothing at the destination: back to
    /// `queued` (if it was `delivering`) with the next attempt at `next_attempt_at`. On an
    /// already queued delivery (the attempt failed before it was recorded as started, e.g.
    /// the temporary file could not be written) the attempt is counted, so a destination
    /// that never accepts anything is still dead-lettered. Returns attempts so far.
    pub fn delivery_schedule_retry(
        &mut self,
        d: DeliveryId,
        next_attempt_at: &str,
        error: &str,
    ) -> Result<u32, LedgerError> {
        let next = normalize_rfc3339("next_attempt_at", next_attempt_at)?;
        let delivery = self.delivery(d)?;
        match delivery.state {
            State::Delivering => {
                self.delivery_change(
                    d,
                    State::Queued,
                    "delivery.retry-scheduled",
                    error,
                    None,
                    Some(&next),
                )?;
            }
            State::Queued => {
                exec(
                    self.tx,
                    "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?2, \
                     last_error = ?3, updated_at = ?4 WHERE id = ?1",
                    params![d, next, error, now_rfc3339()],
                )?;
            }
            from => {
                return Err(LedgerError::IllegalDeliveryTransition {
                    id: d,
                    from,
                    to: State::Queued,
                });
            }
        }
        Ok(self.delivery(d)?.attempts)
    }

    /// See [`Ledger::release_quarantined`]. Works on a quarantined file, and on a held file
    /// that was never accepted (one that went quarantined → held).
    pub fn release_quarantined(
        &mut self,
        id: FileId,
        operator: &str,
        reason: &str,
    ) -> Result<ReleaseOutcome, LedgerError> {
        let operator = checked_operator(operator)?;
        let reason = checked_reason(reason)?;
        let file = self.file(id)?;
        let releasable = file.state == State::Quarantined
            || (file.state == State::Held
                && file.accepted_at.is_none()
                && self.delivery_count(id)? == 0);
        if !releasable {
            return Err(LedgerError::IllegalTransition {
                id,
                from: file.state,
                to: State::Queued,
            });
        }
        // Approvals count only for the current stay in this state.
        let episode: i64 = query_one(
            self.tx,
            "SELECT COALESCE(MAX(seq), 0) FROM history WHERE file_id = ?1 AND delivery_id IS NULL \
             AND to_state = ?2 AND (from_state IS NULL OR from_state <> to_state)",
            params![id, file.state.as_str()],
            |r| r.get(0),
        )?;
        let approvers: Vec<String> = {
            let mut stmt = self.tx.prepare(
                "SELECT operator FROM approvals WHERE file_id = ?1 AND action = 'release' \
                 AND episode_seq = ?2 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![id, episode], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let key = operator.to_lowercase();
        if approvers.iter().any(|a| a.to_lowercase() == key) {
            return Err(LedgerError::SameOperatorTwice {
                id,
                operator: operator.clone(),
            });
        }
        let now = now_rfc3339();
        exec(
            self.tx,
            "INSERT INTO approvals (file_id, action, episode_seq, operator, reason, at) \
             VALUES (?1, 'release', ?2, ?3, ?4, ?5)",
            params![id, episode, operator, reason, now],
        )?;
        self.append(
            id,
            None,
            Some(file.state),
            file.state,
            "operator.release-approval",
            &reason,
            Some(&operator),
            &now,
        )?;
        if approvers.len() + 1 < RELEASE_APPROVALS_REQUIRED {
            return Ok(ReleaseOutcome::NeedsSecondApproval);
        }
        let mut all = approvers;
        all.push(operator.clone());
        let why = format!("released by {}: {reason}", all.join(" and "));
        self.set_file_state(
            id,
            file.state,
            State::Queued,
            "operator.release",
            &why,
            Some(&operator),
            None,
        )?;
        Ok(ReleaseOutcome::Released)
    }

    /// Operator hold: a file without deliveries goes to `held`; otherwise its queued and
    /// in-doubt deliveries do. Refused while a delivery is being sent.
    pub fn hold(&mut self, id: FileId, operator: &str, reason: &str) -> Result<(), LedgerError> {
        let operator = checked_operator(operator)?;
        let reason = checked_reason(reason)?;
        let file = self.file(id)?;
        let deliveries = self.deliveries(id)?;
        if deliveries.is_empty() {
            return self.transition(id, State::Held, "operator.hold", &reason, Some(&operator));
        }
        if let Some(busy) = deliveries.iter().find(|d| d.state == State::Delivering) {
            return Err(LedgerError::DeliveryInFlight {
                id,
                delivery: busy.id,
            });
        }
        self.operator_on_deliveries(
            &file,
            &deliveries,
            &[State::Queued, State::InDoubt],
            State::Held,
            "operator.hold",
            &reason,
            &operator,
        )
    }

    /// Operator retry: held/failed file without deliveries → queued (only if it was accepted
    /// before); otherwise its held, failed and in-doubt deliveries → queued, due now. For an
    /// in-doubt delivery this is the operator's statement that the destination did not get it.
    pub fn retry(&mut self, id: FileId, operator: &str, reason: &str) -> Result<(), LedgerError> {
        let operator = checked_operator(operator)?;
        let reason = checked_reason(reason)?;
        let file = self.file(id)?;
        let deliveries = self.deliveries(id)?;
        if deliveries.is_empty() {
            return self.transition(
                id,
                State::Queued,
                "operator.retry",
                &reason,
                Some(&operator),
            );
        }
        self.operator_on_deliveries(
            &file,
            &deliveries,
            &[State::Held, State::Failed, State::InDoubt],
            State::Queued,
            "operator.retry",
            &reason,
            &operator,
        )
    }

    /// The operator confirmed the in-doubt deliveries arrived: they become delivered.
    pub fn resolve_delivered(
        &mut self,
        id: FileId,
        operator: &str,
        reason: &str,
    ) -> Result<(), LedgerError> {
        let operator = checked_operator(operator)?;
        let reason = checked_reason(reason)?;
        let file = self.file(id)?;
        let deliveries = self.deliveries(id)?;
        self.operator_on_deliveries(
            &file,
            &deliveries,
            &[State::InDoubt],
            State::Delivered,
            "operator.resolve-delivered",
            &reason,
            &operator,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn operator_on_deliveries(
        &mut self,
        file: &FileRecord,
        deliveries: &[DeliveryRecord],
        from: &[State],
        to: State,
        event: &str,
        reason: &str,
        operator: &str,
    ) -> Result<(), LedgerError> {
        let targets: Vec<DeliveryId> = deliveries
            .iter()
            .filter(|d| from.contains(&d.state))
            .map(|d| d.id)
            .collect();
        if targets.is_empty() {
            return Err(LedgerError::IllegalTransition {
                id: file.id,
                from: file.state,
                to,
            });
        }
        for d in targets {
            self.delivery_change(d, to, event, reason, Some(operator), None)?;
        }
        Ok(())
    }

    fn file(&self, id: FileId) -> Result<FileRecord, LedgerError> {
        get_file(self.tx, id)?.ok_or(LedgerError::UnknownFile { id })
    }

    fn delivery(&self, id: DeliveryId) -> Result<DeliveryRecord, LedgerError> {
        get_delivery(self.tx, id)?.ok_or(LedgerError::UnknownDelivery { id })
    }

    fn delivery_count(&self, file_id: FileId) -> Result<i64, LedgerError> {
        Ok(query_one(
            self.tx,
            "SELECT COUNT(*) FROM deliveries WHERE file_id = ?1",
            [file_id],
            |r| r.get(0),
        )?)
    }

    fn delivery_change(
        &mut self,
        d: DeliveryId,
        to: State,
        event: &str,
        reason: &str,
        operator: Option<&str>,
        next_attempt_at: Option<&str>,
    ) -> Result<(), LedgerError> {
        let delivery = self.delivery(d)?;
        let from = delivery.state;
        match lookup(DELIVERY_TRANSITIONS, from, to) {
            None | Some(Actor::FourEyes) => {
                return Err(LedgerError::IllegalDeliveryTransition { id: d, from, to });
            }
            Some(Actor::Operator) if operator.is_none() => {
                return Err(LedgerError::NeedsOperator {
                    what: format!("delivery {d}"),
                    from,
                    to,
                });
            }
            Some(_) => {}
        }
        let now = now_rfc3339();
        let attempts_inc = i64::from(to == State::Delivering);
        let next = match to {
            State::Queued => Some(next_attempt_at.unwrap_or(&now).to_string()),
            _ => None,
        };
        let error = match to {
            State::InDoubt | State::Held | State::Failed => Some(reason),
            State::Queued if next_attempt_at.is_some() => Some(reason),
            _ => None,
        };
        exec(
            self.tx,
            "UPDATE deliveries SET state = ?2, attempts = attempts + ?3, next_attempt_at = ?4, \
             last_error = COALESCE(?5, last_error), updated_at = ?6 WHERE id = ?1",
            params![d, to.as_str(), attempts_inc, next, error, now],
        )?;
        self.append(
            delivery.file_id,
            Some(d),
            Some(from),
            to,
            event,
            reason,
            operator,
            &now,
        )?;
        self.refresh_file_state(delivery.file_id, d, reason, operator)
    }

    /// Sets the file's state to the one derived from its deliveries, with a history row if it
    /// changed.
    fn refresh_file_state(
        &mut self,
        file_id: FileId,
        cause: DeliveryId,
        reason: &str,
        operator: Option<&str>,
    ) -> Result<(), LedgerError> {
        let states: Vec<State> = {
            let mut stmt = self
                .tx
                .prepare_cached("SELECT state FROM deliveries WHERE file_id = ?1")?;
            let rows = stmt.query_map([file_id], |r| state_col(r, 0))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let Some(derived) = derive_file_state(&states) else {
            return Ok(());
        };
        // Only the state: a whole record would also parse the routing JSON, on every
        // delivery transition.
        let current = query_one(
            self.tx,
            "SELECT state FROM files WHERE id = ?1",
            [file_id],
            |r| state_col(r, 0),
        )
        .optional()?
        .ok_or(LedgerError::UnknownFile { id: file_id })?;
        if derived == current {
            return Ok(());
        }
        let event = format!("file.{derived}");
        let why = format!("follows delivery {cause}: {reason}");
        self.set_file_state(file_id, current, derived, &event, &why, operator, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn set_file_state(
        &mut self,
        id: FileId,
        from: State,
        to: State,
        event: &str,
        reason: &str,
        operator: Option<&str>,
        at: Option<&str>,
    ) -> Result<(), LedgerError> {
        let now = at.map(str::to_string).unwrap_or_else(now_rfc3339);
        let accepted = (to == State::Queued).then_some(now.as_str());
        exec(
            self.tx,
            "UPDATE files SET state = ?2, reason = ?3, updated_at = ?4, \
             accepted_at = COALESCE(accepted_at, ?5) WHERE id = ?1",
            params![
                id,
                to.as_str(),
                (!reason.is_empty()).then_some(reason),
                now,
                accepted
            ],
        )?;
        self.append(id, None, Some(from), to, event, reason, operator, &now)
    }

    /// Appends one history row to the global chain.
    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        file_id: FileId,
        delivery_id: Option<DeliveryId>,
        from: Option<State>,
        to: State,
        event: &str,
        reason: &str,
        operator: Option<&str>,
        at: &str,
    ) -> Result<(), LedgerError> {
        let prev = self.head()?;
        let seq = prev.seq + 1;
        let row = audit::ChainRow {
            seq,
            file_id,
            delivery_id,
            at,
            from_state: from.map(State::as_str),
            to_state: to.as_str(),
            event,
            reason,
            operator,
        };
        let hash = audit::row_hash(&prev.hash, &row);
        exec(
            self.tx,
            "INSERT INTO history (seq, file_id, delivery_id, at, from_state, to_state, event, \
             reason, operator, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                seq,
                file_id,
                delivery_id,
                at,
                row.from_state,
                row.to_state,
                event,
                reason,
                operator,
                prev.hash,
                hash
            ],
        )?;
        self.head = Some(AuditHead { seq, hash });
        Ok(())
    }
}

const SQL_FILE_BY_ID: &str = concat!("SELECT ", file_columns!(), " FROM files WHERE id = ?1");
const SQL_FILE_BY_SPOOL_PATH: &str = concat!(
    "SELECT ",
    file_columns!(),
    " FROM files WHERE spool_path = ?1"
);
const SQL_DELIVERY_BY_ID: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    " FROM deliveries WHERE id = ?1"
);
const SQL_DELIVERIES_OF_FILE: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    " FROM deliveries WHERE file_id = ?1 ORDER BY id"
);
const SQL_UNFINISHED_DELIVERIES: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    " FROM deliveries WHERE state IN ('queued', 'delivering', 'in-doubt') ORDER BY id"
);
const SQL_DUE_DELIVERIES_TO: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    " FROM deliveries WHERE state = 'queued' AND next_attempt_at <= ?1 AND destination = ?3 \
     ORDER BY next_attempt_at, id LIMIT ?2"
);
const SQL_DUE_DELIVERIES: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    " FROM deliveries WHERE state = 'queued' AND next_attempt_at <= ?1 \
     ORDER BY next_attempt_at, id LIMIT ?2"
);

/// The duplicate probes of [`Tx::find_duplicate`], in the order they are tried: same bytes,
/// same payload, same message id. One fixed SQL text each, so each is prepared once and then
/// taken from the statement cache.
macro_rules! duplicate_probe {
    ($column:literal) => {
        concat!(
            "SELECT id FROM files WHERE partner = ?1 AND ",
            $column,
            " = ?2 AND accepted_at IS NOT NULL AND received_at >= ?3 ORDER BY id LIMIT 1"
        )
    };
}
pub(crate) const DUPLICATE_PROBES: [&str; 3] = [
    duplicate_probe!("sha256"),
    duplicate_probe!("payload_sha256"),
    duplicate_probe!("message_id"),
];

/// `Connection::execute` through the statement cache.
fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// `Connection::query_row` through the statement cache.
fn query_one<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

fn get_file(c: &Connection, id: FileId) -> Result<Option<FileRecord>, LedgerError> {
    Ok(query_one(c, SQL_FILE_BY_ID, [id], file_from_row).optional()?)
}

fn find_by_spool_path(c: &Connection, spool_path: &str) -> Result<Option<FileRecord>, LedgerError> {
    Ok(query_one(c, SQL_FILE_BY_SPOOL_PATH, [spool_path], file_from_row).optional()?)
}

fn get_delivery(c: &Connection, id: DeliveryId) -> Result<Option<DeliveryRecord>, LedgerError> {
    Ok(query_one(c, SQL_DELIVERY_BY_ID, [id], delivery_from_row).optional()?)
}

/// Runs `sql` (one of the `SQL_*DELIVERIES*` queries) and reads every row.
fn deliveries_where(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<DeliveryRecord>, LedgerError> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(params, delivery_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn conversion_error(col: usize, detail: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, detail.into())
}

fn state_col(r: &Row<'_>, col: usize) -> rusqlite::Result<State> {
    let text: String = r.get(col)?;
    State::parse(&text).ok_or_else(|| conversion_error(col, format!("unknown state '{text}'")))
}

fn opt_state_col(r: &Row<'_>, col: usize) -> rusqlite::Result<Option<State>> {
    let text: Option<String> = r.get(col)?;
    text.map(|t| {
        State::parse(&t).ok_or_else(|| conversion_error(col, format!("unknown state '{t}'")))
    })
    .transpose()
}

fn file_from_row(r: &Row<'_>) -> rusqlite::Result<FileRecord> {
    let routing: String = r.get(8)?;
    Ok(FileRecord {
        id: r.get(0)?,
        partner: r.get(1)?,
        source: r.get(2)?,
        original_name: r.get(3)?,
        size: r.get::<_, i64>(4)?.max(0) as u64,
        sha256: r.get(5)?,
        payload_sha256: r.get(6)?,
        kind: r.get(7)?,
        routing: serde_json::from_str(&routing)
            .map_err(|e| conversion_error(8, format!("routing is not JSON: {e}")))?,
        message_id: r.get(9)?,
        seal_verdict: r.get(10)?,
        seal_kvv: r.get(11)?,
        spool_path: r.get(12)?,
        state: state_col(r, 13)?,
        reason: r.get(14)?,
        accepted_at: r.get(15)?,
        received_at: r.get(16)?,
        updated_at: r.get(17)?,
    })
}

fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: r.get(0)?,
        file_id: r.get(1)?,
        destination: r.get(2)?,
        endpoint: r.get(3)?,
        final_name: r.get(4)?,
        temp_name: r.get(5)?,
        state: state_col(r, 6)?,
        attempts: u32::try_from(r.get::<_, i64>(7)?).unwrap_or(u32::MAX),
        next_attempt_at: r.get(8)?,
        last_error: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

/// Sizes and counts above i64::MAX cannot occur on real files; clamp rather than panic.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn checked_hex(field: &'static str, value: &str) -> Result<String, LedgerError> {
    if !audit::is_sha256_hex(value) {
        return Err(LedgerError::InvalidInput {
            field,
            detail: format!("'{value}' is not a SHA-256 in hex (64 hex digits)"),
        });
    }
    Ok(value.to_ascii_lowercase())
}

fn checked_operator(operator: &str) -> Result<String, LedgerError> {
    let op = operator.trim();
    if op.is_empty() {
        return Err(LedgerError::InvalidInput {
            field: "operator",
            detail: "an operator decision needs the operator's name".into(),
        });
    }
    Ok(op.to_string())
}

fn checked_reason(reason: &str) -> Result<String, LedgerError> {
    let r = reason.trim();
    if r.is_empty() {
        return Err(LedgerError::InvalidInput {
            field: "reason",
            detail: "an operator decision needs a reason (it goes into the audit history)".into(),
        });
    }
    Ok(r.to_string())
}

/// Event names are `area.what` in lowercase (`file.quarantined`, `delivery.delivered`,
/// `operator.release`): stable words for logs and scripts.
fn check_event(event: &str) -> Result<(), LedgerError> {
    let ok = event.contains('.')
        && !event.starts_with('.')
        && !event.ends_with('.')
        && event.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_'
        });
    if ok {
        Ok(())
    } else {
        Err(LedgerError::InvalidInput {
            field: "event",
            detail: format!(
                "'{event}' is not an event name like file.quarantined or delivery.delivered"
            ),
        })
    }
}
