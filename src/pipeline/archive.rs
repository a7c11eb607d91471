//! Archive: what becomes of the spooled copy once a file is delivered, and retention.
//!
//! Per sending partner: `delete` removes the spooled copy after delivery; `age` keeps it
//! encrypted to the partner's X25519 recipients (the server holds only public keys, so a
//! stolen server does not leak archived payments) for `retention_days`, then deletes it.
//! Quarantined and held files are never archived or deleted here: they wait for an operator.

use super::Pipeline;
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
/// says so) and unlinked, then ONE fsync per spool folder makes all the removals durable,
/// instead of one per file. Returns the files that failed, with why; their spooled copies
/// are kept (or their removal may not be durable: then the copy can reappear after a crash,
/// and the restart recovery archives it again, which is harmless — see
/// `Pipeline::recover`).
pub fn archive_delivered_batch(p: &Pipeline, recs: &[FileRecord]) -> Vec<(FileId, ArchiveError)> {
    let mut failed = Vec::new();
    // (record, folder whose fsync makes its removal durable)
    let mut removed: Vec<(&FileRecord, PathBuf)> = Vec::with_capacity(recs.len());
    for rec in recs {
        match archive_and_unlink(p, rec) {
            Ok(Some(dir)) => removed.push((rec, dir)),
            Ok(None) => {}
            Err(e) => failed.push((rec.id, e)),
        }
    }
    // One fsync per folder (all spooled copies live in spool/files today); its failure is
    // every removal's failure there.
    let mut synced: Vec<(PathBuf, Option<(io::ErrorKind, String)>)> = Vec::new();
    for (rec, dir) in removed {
        let outcome = match synced.iter().find(|(d, _)| *d == dir) {
            Some((_, outcome)) => outcome.clone(),
            None => {
                let outcome = spool::fsync_dir(&dir)
                    .err()
                    .map(|e| (e.source.kind(), e.source.to_string()));
                synced.push((dir.clone(), outcome.clone()));
                outcome
            }
        };
        if let Some((kind, why)) = outcome {
            failed.push((
                rec.id,
                ArchiveError::Spool(spool::SpoolError {
                    op: "fsync directory",
                    path: dir,
                    source: io::Error::new(kind, why),
                }),
            ));
            continue;
        }
        let archive = policy(p, rec);
        tracing::info!(
            event = "file.archived",
            file_id = rec.id,
            partner = %rec.partner,
            "spooled copy of file {} {}",
            rec.id,
            if matches!(archive, Archive::Delete) { "deleted after delivery" } else { "archived encrypted" }
        );
    }
    failed
}

fn policy(p: &Pipeline, rec: &FileRecord) -> Archive {
    p.config
        .partner(&rec.partner)
        .map(|pp| pp.archive.clone())
        .unwrap_or(Archive::Delete)
}

/// Archives one spooled copy (durably, for `age`) and unlinks it WITHOUT making the removal
/// durable. Returns the folder the caller must fsync, or `None` when the copy was already
/// gone (e.g. archived before a crash).
fn archive_and_unlink(p: &Pipeline, rec: &FileRecord) -> Result<Option<PathBuf>, ArchiveError> {
    let spooled = Path::new(&rec.spool_path);
    if spool::size_of(spooled)?.is_none() {
        return Ok(None); // already archived (e.g. recovery after a crash here)
    }
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
            let src = std::fs::File::open(spooled).map_err(|e| ArchiveError::Encrypt {
                path: spooled.to_path_buf(),
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
    Ok(spool::remove_no_sync(spooled)?.map(Path::to_path_buf))
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
