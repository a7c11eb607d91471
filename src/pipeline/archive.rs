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
    let spooled = Path::new(&rec.spool_path);
    if spool::size_of(spooled)?.is_none() {
        return Ok(()); // already archived (e.g. recovery after a crash here)
    }
    let archive = p
        .config
        .partner(&rec.partner)
        .map(|pp| pp.archive.clone())
        .unwrap_or(Archive::Delete);
    match &archive {
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
            let dest = archive_path(p, rec);
            if let Err(e) = spool::commit_temp(&temp, &dest) {
                let _ = spool::discard(&temp);
                if !e.is_already_exists() {
                    return Err(e.into());
                }
            }
        }
    }
    spool::discard(spooled)?;
    tracing::info!(
        event = "file.archived",
        file_id = rec.id,
        partner = %rec.partner,
        "spooled copy of file {} {}",
        rec.id,
        if matches!(archive, Archive::Delete) { "deleted after delivery" } else { "archived encrypted" }
    );
    Ok(())
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
