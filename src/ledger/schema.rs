//! The ledger's SQLite schema and how a file is opened: connection pragmas, the integrity check
//! at open, and the versioned migrations. It never changes a row's meaning once written: a new
//! need is a new migration appended to [`MIGRATIONS`], never an edit of an old one.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::LedgerError;

/// Schema migrations, applied in order, one transaction each; `PRAGMA user_version` is the
/// number applied. Append only: an installed ledger has run the old ones already.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: files, history (hash chain), deliveries, approvals, runs.
    r#"
CREATE TABLE files (
    id              INTEGER PRIMARY KEY,
    partner         TEXT NOT NULL,
    source          TEXT NOT NULL,
    original_name   TEXT NOT NULL,
    size            INTEGER NOT NULL CHECK (size >= 0),
    sha256          TEXT NOT NULL CHECK (length(sha256) = 64),
    payload_sha256  TEXT NOT NULL CHECK (length(payload_sha256) = 64),
    kind            TEXT NOT NULL,
    routing         TEXT NOT NULL CHECK (json_valid(routing)),
    message_id      TEXT,
    seal_verdict    TEXT NOT NULL,
    seal_kvv        TEXT,
    -- One record per spooled file: a recovery scan cannot record the same spool file twice.
    spool_path      TEXT NOT NULL UNIQUE,
    state           TEXT NOT NULL CHECK (state IN ('received','quarantined','queued',
                        'delivering','delivered','in-doubt','held','failed')),
    reason          TEXT,
    -- First time the file reached `queued`: only accepted files count as duplicate originals.
    accepted_at     TEXT,
    received_at     TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX files_partner_sha     ON files (partner, sha256);
CREATE INDEX files_partner_payload ON files (partner, payload_sha256);
CREATE INDEX files_partner_msgid   ON files (partner, message_id) WHERE message_id IS NOT NULL;
CREATE INDEX files_state           ON files (state);

CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    file_id         INTEGER NOT NULL REFERENCES files (id),
    destination     TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    final_name      TEXT NOT NULL,
    temp_name       TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued','delivering','delivered',
                        'in-doubt','held','failed')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at TEXT,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    -- A file goes to a destination once: the delivery-level idempotency net.
    UNIQUE (file_id, destination)
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);

-- Append-only, hash-chained. `seq` is assigned by the ledger (previous + 1), not by SQLite,
-- so the chain is dense by construction and a gap always means a deleted row.
CREATE TABLE history (
    seq         INTEGER PRIMARY KEY,
    file_id     INTEGER NOT NULL REFERENCES files (id),
    delivery_id INTEGER REFERENCES deliveries (id),
    at          TEXT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    event       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    operator    TEXT,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX history_file ON history (file_id, seq);
-- Guards against slips in a sqlite3 shell; a deliberate attacker can drop them, which is
-- what the hash chain is for.
CREATE TRIGGER history_no_update BEFORE UPDATE ON history
BEGIN SELECT RAISE(ABORT, 'ledger history is append-only'); END;
CREATE TRIGGER history_no_delete BEFORE DELETE ON history
BEGIN SELECT RAISE(ABORT, 'ledger history is append-only'); END;

CREATE TABLE approvals (
    id          INTEGER PRIMARY KEY,
    file_id     INTEGER NOT NULL REFERENCES files (id),
    action      TEXT NOT NULL,
    -- seq of the history row that put the file in the state being acted on: approvals given
    -- for an earlier quarantine do not count for a later one.
    episode_seq INTEGER NOT NULL,
    operator    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          TEXT NOT NULL
);
CREATE INDEX approvals_file ON approvals (file_id, action, episode_seq);
CREATE TRIGGER approvals_no_update BEFORE UPDATE ON approvals
BEGIN SELECT RAISE(ABORT, 'ledger approvals are append-only'); END;
CREATE TRIGGER approvals_no_delete BEFORE DELETE ON approvals
BEGIN SELECT RAISE(ABORT, 'ledger approvals are append-only'); END;

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    job         TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    files       INTEGER,
    bytes       INTEGER,
    outcome     TEXT,
    error       TEXT
);
CREATE INDEX runs_job ON runs (job, started_at);
"#,
    // 2: remote files a pull job took, so none is ever ingested twice (see remote_files.rs).
    r#"
CREATE TABLE remote_files (
    id          INTEGER PRIMARY KEY,
    partner     TEXT NOT NULL,
    -- `<partner>/<name>` of the pull job.
    job         TEXT NOT NULL,
    -- Remote path as listed (`dir/name`).
    path        TEXT NOT NULL,
    size        INTEGER NOT NULL CHECK (size >= 0),
    -- Seconds since the epoch as the server reported it; NULL when it reports none.
    mtime       INTEGER,
    sha256      TEXT NOT NULL CHECK (length(sha256) = 64),
    file_id     INTEGER REFERENCES files (id),
    -- What ingest decided: 'accepted' (queued) or 'refused' (quarantined here).
    outcome     TEXT NOT NULL CHECK (outcome IN ('accepted','refused')),
    -- The after-action planned for the remote copy, and whether it was done.
    after       TEXT NOT NULL CHECK (after IN ('delete','move','keep')),
    after_state TEXT NOT NULL CHECK (after_state IN ('pending','done','failed')),
    after_error TEXT,
    taken_at    TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
-- One row per remote file version: the same (path, size, mtime) is never taken twice.
CREATE UNIQUE INDEX remote_files_identity ON remote_files (job, path, size, IFNULL(mtime, -1));
CREATE INDEX remote_files_file ON remote_files (file_id);
"#,
    // 3: small files' bytes, kept in the ledger from their receipt until delivered (see
    //    `pipeline::ingest::SMALL_MAX`): one commit makes a small file's bytes and its record
    //    durable together. The row goes when the file is archived after delivery.
    r#"
CREATE TABLE bodies (
    file_id     INTEGER PRIMARY KEY REFERENCES files (id),
    bytes       BLOB NOT NULL
);
"#,
];

/// Opens the connection, checks the file is an intact SQLite database, sets the pragmas and
/// brings the schema up to date. Every failure is mapped to the error an operator can act on.
pub(crate) fn open_connection(
    path: &Path,
    busy_timeout: Duration,
) -> Result<Connection, LedgerError> {
    let unwritable = |detail: String| LedgerError::Unwritable {
        path: path.to_path_buf(),
        dir: path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf(),
        detail,
    };
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(unwritable("the directory does not exist".into()));
    }
    if path.is_dir() {
        return Err(unwritable(
            "that path is a directory; give the ledger file's path".into(),
        ));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| unwritable(e.to_string()))?;
    let classify = |e: rusqlite::Error| classify_open_error(e, path, busy_timeout);
    conn.busy_timeout(busy_timeout).map_err(classify)?;

    // Integrity first, before anything writes: a damaged ledger must not be "repaired" by us.
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(classify)?;
    if verdict != "ok" {
        return Err(LedgerError::Damaged {
            path: path.to_path_buf(),
            detail: format!("quick_check: {verdict}"),
        });
    }

    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(classify)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LedgerError::NoWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    // FULL: every commit is fsynced, so "committed" means "survives power loss" (invariant 1).
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .map_err(classify)?;
    // Keep each cached statement's query plan. Without this, SQLite re-parses and re-plans a
    // statement whenever a newly bound value might suit another plan (it checks the partial
    // index on `files.message_id`), which made every ingest re-prepare its duplicate probes:
    // a sixth of the ingest transaction's CPU. The plans are chosen from the schema alone
    // (sluss never runs ANALYZE), so they would not change anyway.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(classify)?;

    migrate(conn, path, busy_timeout)
}

/// Applies the missing migrations. The version is read under the write lock (BEGIN IMMEDIATE)
/// so two processes opening a fresh ledger at once cannot both migrate; this is also where a
/// ledger locked by another process is noticed, after the busy timeout.
fn migrate(
    mut conn: Connection,
    path: &Path,
    busy_timeout: Duration,
) -> Result<Connection, LedgerError> {
    let classify = |e: rusqlite::Error| classify_open_error(e, path, busy_timeout);
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(classify)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(classify)?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(LedgerError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported,
            });
        }
        if version == supported {
            tx.commit().map_err(classify)?;
            return Ok(conn);
        }
        let sql = MIGRATIONS[version as usize];
        tx.execute_batch(sql).map_err(classify)?;
        // user_version cannot take a bound parameter; the value is our own integer.
        tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))
            .map_err(classify)?;
        tx.commit().map_err(classify)?;
    }
}

/// Maps an SQLite error met while opening to the operator's next step.
pub(crate) fn classify_open_error(
    e: rusqlite::Error,
    path: &Path,
    busy_timeout: Duration,
) -> LedgerError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => LedgerError::Damaged {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => LedgerError::Locked {
            path: path.to_path_buf(),
            waited_ms: busy_timeout.as_millis() as u64,
        },
        Some(ErrorCode::CannotOpen)
        | Some(ErrorCode::ReadOnly)
        | Some(ErrorCode::PermissionDenied) => LedgerError::Unwritable {
            path: path.to_path_buf(),
            dir: path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            detail: e.to_string(),
        },
        _ => LedgerError::Database(e),
    }
}
