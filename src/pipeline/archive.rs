//! Archive: what becomes of a file's held copy (spooled, or kept in the ledger for small
//! files) once it is delivered, and retention.
//!
//! Per sending partner: `delete` removes the held copy after delivery; `age` keeps it
//! encrypted to the partner's X25519 recipients (the server holds only public keys, so a
//! stolen server does not leak archived payments) for `retention_days`, then deletes it.
//! Quarantined and held files are never archived or deleted here: they wait for an operator.

use super::{Contents, Pipeline, PipelineError};
use crate::config::Archive;
use crate::ledger::{FileId, FileRecord};
use crate::spool;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// Errors while archiving or restoring.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("age recipient {0:?} is not valid: {1}")]
    Recipient(String, String),
    #[error("encrypting {path}: {source}")]
    Encrypt {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the ledger: {0}")]
    Ledger(String),
    #[error("no archived copy of file {0} at {1}")]
    Missing(FileId, PathBuf),
    #[error("cannot read identity file {0}: {1}")]
    Identity(PathBuf, String),
    #[error("cannot decrypt {0}: {1} (is this the identity for the partner's recipient?)")]
    Decrypt(PathBuf, String),
}

/// Where the archived copy of a file lives.
pub fn archive_path(p: &Pipeline, rec: &FileRecord) -> PathBuf {
    p.layout
        .archive(&rec.partner)
        .join(format!("{}.age", rec.id))
}

/// Apply the sender's archive policy to a delivered file's spooled copy.
pub fn archive_delivered(p: &Pipeline, rec: &FileRecord) -> Result<(), ArchiveError> {
    match archive_delivered_batch(p, std::slice::from_ref(rec)).pop() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// [`archive_delivered`] for several delivered files: each copy is archived (if the policy
/// says so) and removed — spooled copies unlinked with ONE fsync of their folder, copies kept
/// in the ledger dropped in ONE transaction — instead of one flush per file. Returns the files
/// that failed, with why; their copies are kept (or their removal may not be durable: then the
/// copy can reappear after a crash, and the restart recovery archives it again, which is
/// harmless — see `Pipeline::recover`).
pub fn archive_delivered_batch(p: &Pipeline, recs: &[FileRecord]) -> Vec<(FileId, ArchiveError)> {
    let mut failed = Vec::new();
    let mut unlinked: Vec<&FileRecord> = Vec::with_capacity(recs.len());
    let mut in_ledger: Vec<&FileRecord> = Vec::new();
    for rec in recs {
        match archive_copy(p, rec) {
            Ok(Removal::Unlinked) => unlinked.push(rec),
            Ok(Removal::DropBody) => in_ledger.push(rec),
            Ok(Removal::AlreadyGone) => {}
            Err(e) => failed.push((rec.id, e)),
        }
    }
    let mut done: Vec<&FileRecord> = Vec::with_capacity(recs.len());
    // Every spooled copy lives in spool/files: one fsync makes all the unlinks durable, and
    // its failure is every one of theirs.
    if !unlinked.is_empty() {
        match spool::fsync_dir(&p.layout.files()) {
            Ok(()) => done.extend(unlinked),
            Err(e) => {
                for rec in unlinked {
                    failed.push((rec.id, ArchiveError::Spool(e.duplicate())));
                }
            }
        }
    }
    if !in_ledger.is_empty() {
        let dropped = p.ledger().with_tx(|tx| {
            for rec in &in_ledger {
                tx.drop_body(rec.id)?;
            }
            Ok(())
        });
        match dropped {
            Ok(()) => done.extend(in_ledger),
            Err(e) => {
                for rec in in_ledger {
                    failed.push((rec.id, ArchiveError::Ledger(e.to_string())));
                }
            }
        }
    }
    for rec in done {
        let archive = policy(p, rec);
        tracing::info!(
            event = "file.archived",
            file_id = rec.id,
            partner = %rec.partner,
            "held copy of file {} {}",
            rec.id,
            if matches!(archive, Archive::Delete) { "deleted after delivery" } else { "archived encrypted" }
        );
    }
    failed
}

/// The archive policy of the file's sender (`delete` when the sender is no longer configured).
pub(crate) fn policy(p: &Pipeline, rec: &FileRecord) -> Archive {
    p.config
        .partner(&rec.partner)
        .map(|pp| pp.archive.clone())
        .unwrap_or(Archive::Delete)
}

/// What is left to do after [`archive_copy`] to remove a delivered file's held copy.
enum Removal {
    /// The spooled copy was unlinked; the removal is durable once spool/files is fsynced.
    Unlinked,
    /// The copy kept in the ledger is to be dropped (in the batch's transaction).
    DropBody,
    /// Nothing held any more (e.g. archived before a crash).
    AlreadyGone,
}

/// Archives one held copy (durably, for `age`) and, for a spooled copy, unlinks it WITHOUT
/// making the removal durable; the caller finishes the removal (see [`Removal`]).
fn archive_copy(p: &Pipeline, rec: &FileRecord) -> Result<Removal, ArchiveError> {
    let contents = match p.held_copy(rec) {
        Ok(Some(c)) => c,
        // Already archived (e.g. recovery after a crash).
        Ok(None) => return Ok(Removal::AlreadyGone),
        Err(PipelineError::Spool(e)) => return Err(e.into()),
        Err(e) => return Err(ArchiveError::Ledger(e.to_string())),
    };
    match &policy(p, rec) {
        Archive::Delete => {}
        Archive::Age { recipients, .. } => {
            let parsed = recipients
                .iter()
                .map(|r| {
                    age::x25519::Recipient::from_str(r)
                        .map_err(|e| ArchiveError::Recipient(r.clone(), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let dir = p.layout.archive(&rec.partner);
            let src = contents.open().map_err(|e| ArchiveError::Encrypt {
                path: PathBuf::from(contents.describe()),
                source: e,
            })?;
            let temp = spool::write_temp_with(&dir, spool::MODE_SECRET, |out| {
                let enc = age::Encryptor::with_recipients(
                    parsed.iter().map(|r| r as &dyn age::Recipient),
                )
                .map_err(io::Error::other)?;
                let mut w = enc.wrap_output(out)?;
                io::copy(&mut io::BufReader::new(src), &mut w)?;
                // Without finish() the age stream is silently truncated.
                w.finish()?;
                Ok(())
            })?;
            // commit_temp fsyncs the archive folder: the encrypted copy is durable before the
            // plain one's removal can be.
            let dest = archive_path(p, rec);
            if let Err(e) = spool::commit_temp(&temp, &dest) {
                let _ = spool::discard(&temp);
                if !e.is_already_exists() {
                    return Err(e.into());
                }
            }
        }
    }
    match contents {
        Contents::Memory(_) => Ok(Removal::DropBody),
        Contents::File(spooled) => Ok(match spool::remove_no_sync(&spooled)? {
            Some(_) => Removal::Unlinked,
            None => Removal::AlreadyGone,
        }),
    }
}

/// Delete archived copies older than each partner's retention. Returns how many went.
pub fn enforce_retention(p: &Pipeline) -> usize {
    let mut removed = 0;
    for partner in p.config.partners.values() {
        let Archive::Age { retention_days, .. } = &partner.archive else {
            continue;
        };
        let keep = Duration::from_secs(u64::from(*retention_days) * 86_400);
        let dir = p.layout.archive(&partner.id);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > keep);
            if old && spool::discard(&e.path()).is_ok() {
                removed += 1;
                tracing::info!(
                    event = "archive.expired",
                    partner = %partner.id,
                    "archived copy {} deleted after {retention_days} days",
                    e.path().display()
                );
            }
        }
    }
    removed
}

/// Decrypt the archived copy of `rec` with the identities in `identity_file` into `out`.
pub fn decrypt_to(
    p: &Pipeline,
    rec: &FileRecord,
    identity_file: &Path,
    out: &mut dyn io::Write,
) -> Result<u64, ArchiveError> {
    let path = archive_path(p, rec);
    let f = std::fs::File::open(&path).map_err(|_| ArchiveError::Missing(rec.id, path.clone()))?;
    let ids = age::IdentityFile::from_file(identity_file.to_string_lossy().into_owned())
        .map_err(|e| ArchiveError::Identity(identity_file.to_path_buf(), e.to_string()))?
        .into_identities()
        .map_err(|e| ArchiveError::Identity(identity_file.to_path_buf(), e.to_string()))?;
    let dec = age::Decryptor::new_buffered(io::BufReader::new(f))
        .map_err(|e| ArchiveError::Decrypt(path.clone(), e.to_string()))?;
    let mut r = dec
        .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| ArchiveError::Decrypt(path.clone(), e.to_string()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = r
            .read(&mut buf)
            .map_err(|e| ArchiveError::Decrypt(path.clone(), e.to_string()))?;
        if k == 0 {
            break;
        }
        out.write_all(&buf[..k])
            .map_err(|e| ArchiveError::Decrypt(path.clone(), e.to_string()))?;
        n += k as u64;
    }
    Ok(n)
}
