//! Remembered remote files: every file a pull job took from a partner's server, identified by
//! (job, remote path, size, mtime), with its SHA-256, its ledger file id, what ingest decided
//! and whether the after-action on the remote copy (delete / move / keep) was done.
//!
//! This is what makes "never ingested twice" hold when a remote delete or move fails, and when
//! the partner wants its files left in place: a pull skips every listed file that has a row
//! here. Rows are never deleted; only the after-action state changes.

use rusqlite::{OptionalExtension, Row, params};

use super::{FileId, Ledger, LedgerError, checked_hex, exec, now_rfc3339, query_one, to_i64};

/// Whether the after-action on the remote copy has been done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterState {
    /// Not attempted yet (the row is written before the remote is touched).
    Pending,
    Done,
    /// Attempted and failed; retried by later runs while the file is still listed.
    Failed,
}

impl AfterState {
    pub fn as_str(self) -> &'static str {
        match self {
            AfterState::Pending => "pending",
            AfterState::Done => "done",
            AfterState::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Option<AfterState> {
        match s {
            "pending" => Some(AfterState::Pending),
            "done" => Some(AfterState::Done),
            "failed" => Some(AfterState::Failed),
            _ => None,
        }
    }
}

/// A remote file to remember, see [`Ledger::remember_remote_file`].
#[derive(Clone, Debug)]
pub struct NewRemoteFile<'a> {
    pub partner: &'a str,
    /// `<partner>/<name>` of the pull job.
    pub job: &'a str,
    /// Remote path as listed.
    pub path: &'a str,
    pub size: u64,
    pub mtime: Option<i64>,
    pub sha256: &'a str,
    pub file_id: Option<FileId>,
    /// `accepted` or `refused`.
    pub outcome: &'a str,
    /// `delete`, `move` or `keep`.
    pub after: &'a str,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RemoteFileRecord {
    pub id: i64,
    pub partner: String,
    pub job: String,
    pub path: String,
    pub size: u64,
    pub mtime: Option<i64>,
    pub sha256: String,
    pub file_id: Option<FileId>,
    pub outcome: String,
    pub after: String,
    pub after_state: AfterState,
    pub after_error: Option<String>,
    pub taken_at: String,
    pub updated_at: String,
}

/// The columns [`from_row`] reads, as a literal for `concat!` (fixed SQL text, so the
/// statement cache finds it without formatting per call).
macro_rules! columns {
    () => {
        "id, partner, job, path, size, mtime, sha256, file_id, outcome, after, after_state, \
         after_error, taken_at, updated_at"
    };
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<RemoteFileRecord> {
    let state: String = r.get(10)?;
    Ok(RemoteFileRecord {
        id: r.get(0)?,
        partner: r.get(1)?,
        job: r.get(2)?,
        path: r.get(3)?,
        size: r.get::<_, i64>(4)?.max(0) as u64,
        mtime: r.get(5)?,
        sha256: r.get(6)?,
        file_id: r.get(7)?,
        outcome: r.get(8)?,
        after: r.get(9)?,
        after_state: AfterState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                10,
                rusqlite::types::Type::Text,
                format!("unknown after_state '{state}'").into(),
            )
        })?,
        after_error: r.get(11)?,
        taken_at: r.get(12)?,
        updated_at: r.get(13)?,
    })
}

impl Ledger {
    /// The remembered row for this version of a remote file (same job, path, size, mtime).
    pub fn remembered_remote_file(
        &self,
        job: &str,
        path: &str,
        size: u64,
        mtime: Option<i64>,
    ) -> Result<Option<RemoteFileRecord>, LedgerError> {
        self.read(|c| {
            Ok(query_one(
                c,
                concat!(
                    "SELECT ",
                    columns!(),
                    " FROM remote_files WHERE job = ?1 AND path = ?2 AND size = ?3 AND \
                     IFNULL(mtime, -1) = IFNULL(?4, -1)"
                ),
                params![job, path, to_i64(size), mtime],
                from_row,
            )
            .optional()?)
        })
    }

    /// Remember a taken remote file (after ingest committed, before the remote is touched).
    /// Remembering the same version twice returns the existing row's id: a re-run after a
    /// crash is harmless.
    pub fn remember_remote_file(&mut self, f: &NewRemoteFile<'_>) -> Result<i64, LedgerError> {
        let sha = checked_hex("sha256", f.sha256)?;
        if !matches!(f.outcome, "accepted" | "refused") {
            return Err(LedgerError::InvalidInput {
                field: "outcome",
                detail: format!("'{}' is not accepted or refused", f.outcome),
            });
        }
        if !matches!(f.after, "delete" | "move" | "keep") {
            return Err(LedgerError::InvalidInput {
                field: "after",
                detail: format!("'{}' is not delete, move or keep", f.after),
            });
        }
        let at = now_rfc3339();
        self.read(|c| {
            exec(
                c,
                "INSERT INTO remote_files (partner, job, path, size, mtime, sha256, file_id, \
                 outcome, after, after_state, taken_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', ?10, ?10) \
                 ON CONFLICT DO NOTHING",
                params![
                    f.partner,
                    f.job,
                    f.path,
                    to_i64(f.size),
                    f.mtime,
                    sha,
                    f.file_id,
                    f.outcome,
                    f.after,
                    at
                ],
            )?;
            Ok(query_one(
                c,
                "SELECT id FROM remote_files WHERE job = ?1 AND path = ?2 AND size = ?3 AND \
                 IFNULL(mtime, -1) = IFNULL(?4, -1)",
                params![f.job, f.path, to_i64(f.size), f.mtime],
                |r| r.get(0),
            )?)
        })
    }

    /// Record the result of the after-action on a remembered remote file.
    pub fn set_remote_after(
        &mut self,
        id: i64,
        state: AfterState,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        let at = now_rfc3339();
        self.read(|c| {
            let n = exec(
                c,
                "UPDATE remote_files SET after_state = ?2, after_error = ?3, updated_at = ?4 \
                 WHERE id = ?1",
                params![id, state.as_str(), error, at],
            )?;
            if n == 0 {
                return Err(LedgerError::InvalidInput {
                    field: "remote file",
                    detail: format!("remembered remote file {id} is not in the ledger"),
                });
            }
            Ok(())
        })
    }

    /// Remembered files of `job`, newest first.
    pub fn remote_files(
        &self,
        job: &str,
        limit: usize,
    ) -> Result<Vec<RemoteFileRecord>, LedgerError> {
        self.read(|c| {
            let mut stmt = c.prepare(concat!(
                "SELECT ",
                columns!(),
                " FROM remote_files WHERE job = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(
                params![job, i64::try_from(limit).unwrap_or(i64::MAX)],
                from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// A file already received from `partner` by `source` under `original_name` with these
    /// bytes: `(id, accepted)`. A pull that crashed between the ingest commit and remembering
    /// the remote file finds its earlier ingest here instead of taking the file again.
    pub fn find_received(
        &self,
        partner: &str,
        source: &str,
        original_name: &str,
        sha256: &str,
    ) -> Result<Option<(FileId, bool)>, LedgerError> {
        self.read(|c| {
            Ok(query_one(
                c,
                "SELECT id, accepted_at IS NOT NULL FROM files WHERE partner = ?1 AND \
                 source = ?2 AND original_name = ?3 AND sha256 = ?4 ORDER BY id LIMIT 1",
                params![partner, source, original_name, sha256],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new<'a>(path: &'a str, size: u64, mtime: Option<i64>) -> NewRemoteFile<'a> {
        NewRemoteFile {
            partner: "acme",
            job: "acme/returns",
            path,
            size,
            mtime,
            sha256: "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12",
            file_id: None,
            outcome: "accepted",
            after: "keep",
        }
    }

    #[test]
    fn a_version_is_remembered_once_and_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open_in(dir.path()).unwrap();
        let a = l.remember_remote_file(&new("x.txt", 10, Some(5))).unwrap();
        assert_eq!(
            l.remember_remote_file(&new("x.txt", 10, Some(5))).unwrap(),
            a
        );
        let b = l.remember_remote_file(&new("x.txt", 10, None)).unwrap();
        assert_ne!(a, b, "no mtime is a different identity");
        assert_eq!(
            l.remember_remote_file(&new("x.txt", 10, None)).unwrap(),
            b,
            "NULL mtimes are one identity, not distinct"
        );
        let r = l
            .remembered_remote_file("acme/returns", "x.txt", 10, Some(5))
            .unwrap()
            .unwrap();
        assert_eq!(r.after_state, AfterState::Pending);
        assert!(
            l.remembered_remote_file("acme/returns", "x.txt", 11, Some(5))
                .unwrap()
                .is_none(),
            "a changed size is a new version"
        );
        assert!(
            l.remembered_remote_file("acme/other", "x.txt", 10, Some(5))
                .unwrap()
                .is_none()
        );
        l.set_remote_after(a, AfterState::Failed, Some("permission denied"))
            .unwrap();
        let r = l
            .remembered_remote_file("acme/returns", "x.txt", 10, Some(5))
            .unwrap()
            .unwrap();
        assert_eq!(r.after_state, AfterState::Failed);
        assert_eq!(r.after_error.as_deref(), Some("permission denied"));
        assert_eq!(l.remote_files("acme/returns", 10).unwrap().len(), 2);
        assert!(l.set_remote_after(999, AfterState::Done, None).is_err());
        let mut bad = new("y", 1, None);
        bad.sha256 = "nothex";
        assert!(l.remember_remote_file(&bad).is_err());
    }
}
