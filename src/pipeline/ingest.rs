//! Ingest: from "bytes handed over" to "accepted and recorded" (or "refused and kept").
//!
//! A file is accepted only once its bytes are durable in the spool (file and directory
//! fsynced) and its ledger record, its state and its deliveries are committed in one
//! transaction. Several files handed over together share one directory fsync and one
//! commit (group commit); each still gets its own outcome.
//!
//! Checks, in order (the first that fails decides the reason): seal (per the partner's
//! policy — invariant 4), seal-unprotected characters, structure, payer registered to the
//! partner, duplicates, route. A refused file is kept (state `quarantined`) with its reason
//! and raises an alert; nothing is ever deleted here.

use super::route::{Route, route};
use super::{Pipeline, PipelineError};
use crate::config::{Partner, Role};
use crate::formats::{self, Kind, Recognition};
use crate::ledger::{DuplicateKind, FileId, IN_LEDGER, NewFile, State};
use crate::seal::{self, CharsetPolicy, SealVerdict};
use crate::spool;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// How many seal-unprotected character positions a refusal quotes.
const CHARSET_EXAMPLES: usize = 3;
/// How many structure problems a refusal quotes (the rest are in `sluss inspect`).
const STRUCTURE_EXAMPLES: usize = 3;

/// One file handed to the pipeline.
pub struct Incoming<'a> {
    /// The name the sender gave it (recorded; never used as a path).
    pub name: String,
    pub body: Body<'a>,
}

/// Where a handed-over file's bytes are.
pub enum Body<'a> {
    /// Bytes to copy into the spool (the CLI, pulls that stream).
    Reader(Box<dyn Read + 'a>),
    /// A file an inbound adapter already wrote into the spool with [`Pipeline::new_upload`]
    /// (e.g. an SFTP upload written at client-chosen offsets). The pipeline fsyncs it and,
    /// unless the adapter analysed it while it arrived ([`super::live`]), reads it back.
    Upload(Upload, Option<Box<super::live::Analysed>>),
    /// A whole file already in memory (an SFTP upload small enough to be buffered, at most
    /// [`SMALL_MAX`] bytes): analysed from memory, never written to `spool/incoming`.
    Bytes(Vec<u8>),
}

/// Files at most this big are received whole in memory and kept in the ledger itself until
/// delivered (one durable commit covers their bytes and their record).
pub const SMALL_MAX: u64 = 256 * 1024;

impl<'a> Incoming<'a> {
    /// A file to copy from a reader.
    pub fn from_reader(name: impl Into<String>, reader: impl Read + 'a) -> Incoming<'a> {
        Incoming {
            name: name.into(),
            body: Body::Reader(Box::new(reader)),
        }
    }
}

/// A file being written into the spool by an inbound adapter. Locked from creation, so
/// start-up sweeps leave it alone while its writer lives; dropping it without handing it to
/// [`Pipeline::ingest`] leaves a temporary file that [`Upload::abandon`] (or the next start's
/// sweep) removes.
pub struct Upload {
    pub path: PathBuf,
    /// Open for writing at any offset (`FileExt::write_at`).
    pub file: File,
    lock: File,
}

impl Upload {
    /// Remove an upload that will not be handed over (client disconnected, quota exceeded).
    pub fn abandon(self) {
        let _ = spool::discard(&self.path);
    }
}

/// What happened to one handed-over file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted {
        id: FileId,
        kind: String,
        destinations: Vec<String>,
    },
    Refused {
        id: FileId,
        /// Stable word for machines (`seal:wrong-key`, `duplicate`, `structure`, …).
        code: String,
        /// One line for the sender's log, with what to do.
        reason: String,
    },
}

/// A file could not be taken at all (not recorded, not acknowledged: the sender keeps it).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("disk full while spooling {name:?}: the file was not accepted; free space in {dir}")]
    DiskFull { name: String, dir: PathBuf },
    #[error("could not spool {name:?}: {source}")]
    Spool {
        name: String,
        #[source]
        source: spool::SpoolError,
    },
    #[error("could not read {name:?} from its sender: {source}; it was not accepted")]
    Read {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read {name:?} back from the spool: {source}")]
    Analyse {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Everything learnt about a spooled file before it is recorded.
struct Analysis {
    rec: Recognition,
    payload_sha256: String,
    seal_verdict: String,
    seal_kvv: Option<String>,
    /// The first check that failed, if any.
    refusal: Option<(String, String)>,
}

/// An analysed file waiting for the commit.
struct Pending {
    name: String,
    size: u64,
    sha256: String,
    held: Held,
    analysis: Analysis,
    destinations: Vec<String>,
}

/// Where a pending file's bytes wait for the commit.
enum Held {
    /// In `spool/files`, durable with the batch's fsyncs (see [`spool::sync_batch`]).
    Spooled {
        path: PathBuf,
        /// An upload's file, written but not yet fsynced: made durable with the batch.
        unsynced: Option<File>,
        /// Held until the ledger commit: start-up sweeps leave a locked file alone.
        _lock: File,
    },
    /// A small file: its bytes go into the ledger with its record, in the same commit.
    InLedger { spool_path: String, bytes: Vec<u8> },
}

impl Pending {
    fn spool_path(&self) -> String {
        match &self.held {
            Held::Spooled { path, .. } => path.to_string_lossy().into_owned(),
            Held::InLedger { spool_path, .. } => spool_path.clone(),
        }
    }

    /// Not recorded after all: remove the spooled copy (a copy in memory just goes).
    fn discard(&self) {
        if let Held::Spooled { path, .. } = &self.held {
            let _ = spool::discard(path);
        }
    }
}

impl Pipeline {
    /// Hand files over as partner `partner_id`, arriving by `source` (e.g. `cli`, `sftp`).
    /// Returns one result per file, in order. `Err` for the whole call only if the partner
    /// is unknown or the ledger cannot commit (then nothing of this batch was accepted).
    pub fn ingest(
        &self,
        partner_id: &str,
        source: &str,
        files: Vec<Incoming<'_>>,
    ) -> Result<Vec<Result<Outcome, IngestError>>, PipelineError> {
        let partner = self
            .config
            .partner(partner_id)
            .ok_or_else(|| PipelineError::UnknownPartner(partner_id.to_string()))?;

        // 1. Spool each file durably under a random name and analyse it.
        let mut slots: Vec<Result<Pending, IngestError>> = Vec::with_capacity(files.len());
        for inc in files {
            slots.push(self.spool_and_analyse(partner, inc));
        }
        // The renames into spool/files become durable with one directory fsync for the batch,
        // run beside the fsyncs of uploads' contents (spool::sync_batch), all before the
        // commit below references them. spool/incoming is not fsynced: if a crash brings an
        // old name back there, it is an unlocked temporary file the next start's sweep removes
        // (the file itself lives on under its durable name in spool/files). Each of those
        // fsyncs in a row cost ~0.4 ms per receipt.
        if slots.iter().any(|s| {
            matches!(
                s,
                Ok(Pending {
                    held: Held::Spooled { .. },
                    ..
                })
            )
        }) {
            let to_sync: Vec<(usize, &Path, &File)> = slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match s {
                    Ok(Pending {
                        held:
                            Held::Spooled {
                                path,
                                unsynced: Some(f),
                                ..
                            },
                        ..
                    }) => Some((i, path.as_path(), f)),
                    _ => None,
                })
                .collect();
            let pairs: Vec<(&Path, &File)> = to_sync.iter().map(|(_, p, f)| (*p, *f)).collect();
            let (dir, files) = spool::sync_batch(&self.layout.files(), &pairs);
            let failed: Vec<(usize, spool::SpoolError)> = to_sync
                .iter()
                .zip(files)
                .filter_map(|((i, _, _), r)| r.err().map(|e| (*i, e)))
                .collect();
            if let Err(e) = dir {
                for p in slots.iter().flatten() {
                    p.discard();
                }
                return Err(e.into());
            }
            for (i, e) in failed {
                if let Ok(p) = &slots[i] {
                    p.discard();
                    let name = p.name.clone();
                    slots[i] = Err(if e.is_disk_full() {
                        IngestError::DiskFull {
                            name,
                            dir: self.layout.files(),
                        }
                    } else {
                        IngestError::Spool { name, source: e }
                    });
                }
            }
        }

        // 2. One transaction records them all: duplicate check inside it, so two concurrent
        //    ingests of the same payments cannot both be accepted.
        let since = window_start(partner.duplicate_window);
        let now_date = jiff::Zoned::now();
        let mut ledger = self.ledger();
        let recorded = ledger.with_tx(|tx| {
            let mut out: Vec<Option<Outcome>> = Vec::with_capacity(slots.len());
            for slot in &slots {
                let Ok(p) = slot else {
                    out.push(None);
                    continue;
                };
                let a = &p.analysis;
                let routing_json =
                    serde_json::to_string(&a.rec.routing).unwrap_or_else(|_| "{}".into());
                let id = tx.record_received(&NewFile {
                    partner: &partner.id,
                    source,
                    original_name: &p.name,
                    size: p.size,
                    sha256: &p.sha256,
                    payload_sha256: &a.payload_sha256,
                    kind: a.rec.kind.as_str(),
                    routing_json: &routing_json,
                    message_id: a.rec.routing.message_id.as_deref(),
                    seal_verdict: &a.seal_verdict,
                    seal_kvv: a.seal_kvv.as_deref(),
                    spool_path: &p.spool_path(),
                    body: match &p.held {
                        Held::InLedger { bytes, .. } => Some(bytes),
                        Held::Spooled { .. } => None,
                    },
                })?;
                let mut refusal = a.refusal.clone();
                if refusal.is_none()
                    && a.rec.kind != Kind::Unknown
                    && let Some((orig, how)) = tx.find_duplicate(
                        &partner.id,
                        &p.sha256,
                        &a.payload_sha256,
                        a.rec.routing.message_id.as_deref(),
                        &since,
                    )?
                    && orig != id
                {
                    refusal = Some(("duplicate".into(), duplicate_reason(orig, how)));
                }
                match refusal {
                    Some((code, reason)) => {
                        tx.transition(
                            id,
                            State::Quarantined,
                            "file.quarantined",
                            &format!("{code}: {reason}"),
                            None,
                        )?;
                        out.push(Some(Outcome::Refused { id, code, reason }));
                    }
                    None => {
                        tx.transition(
                            id,
                            State::Queued,
                            "file.queued",
                            &format!(
                                "{} accepted; to {}",
                                a.rec.kind.as_str(),
                                p.destinations.join(", ")
                            ),
                            None,
                        )?;
                        for dest in &p.destinations {
                            let dp = self.config.partner(dest).ok_or_else(|| {
                                crate::ledger::LedgerError::InvalidInput {
                                    field: "destination",
                                    detail: format!("route names unknown partner {dest}"),
                                }
                            })?;
                            let final_name = super::deliver::final_name(
                                dp,
                                &partner.id,
                                a.rec.kind.as_str(),
                                id,
                                &p.name,
                                &now_date,
                            );
                            let temp_name = super::deliver::temp_name(id, &final_name);
                            tx.add_delivery(
                                id,
                                dest,
                                &super::deliver::describe_endpoint(self, dp),
                                &final_name,
                                &temp_name,
                            )?;
                        }
                        out.push(Some(Outcome::Accepted {
                            id,
                            kind: a.rec.kind.as_str().to_string(),
                            destinations: p.destinations.clone(),
                        }));
                    }
                }
            }
            Ok(out)
        });
        drop(ledger);
        let recorded = match recorded {
            Ok(r) => r,
            Err(e) => {
                // Nothing was acknowledged: remove the spooled copies so no orphan remains.
                for p in slots.iter().flatten() {
                    p.discard();
                }
                return Err(e.into());
            }
        };

        let mut results = Vec::with_capacity(slots.len());
        let mut queued_for: Vec<String> = Vec::new();
        for (slot, rec) in slots.into_iter().zip(recorded) {
            match (slot, rec) {
                (Err(e), _) => {
                    tracing::error!(
                        event = "ingest.failed",
                        partner = %partner.id,
                        source,
                        "{e}"
                    );
                    results.push(Err(e));
                }
                (Ok(p), Some(o)) => {
                    match &o {
                        Outcome::Accepted {
                            id,
                            kind,
                            destinations,
                        } => {
                            for d in destinations {
                                if !queued_for.contains(d) {
                                    queued_for.push(d.clone());
                                }
                            }
                            tracing::info!(
                                event = "file.accepted",
                                file_id = id,
                                partner = %partner.id,
                                source,
                                name = %p.name,
                                kind = %kind,
                                size = p.size,
                                sha256 = %p.sha256,
                                to = %destinations.join(","),
                                "accepted {} from {} as {}",
                                p.name,
                                partner.id,
                                kind
                            );
                        }
                        Outcome::Refused { id, code, reason } => {
                            if partner.role == Role::Customer {
                                self.write_rejection_note(partner, *id, &p, code, reason);
                            }
                            tracing::error!(
                                event = "alert.quarantined",
                                file_id = id,
                                partner = %partner.id,
                                source,
                                name = %p.name,
                                code = %code,
                                "quarantined {} from {}: {}",
                                p.name,
                                partner.id,
                                reason
                            );
                        }
                    }
                    results.push(Ok(o));
                }
                (Ok(_), None) => unreachable!("every spooled file has an outcome"),
            }
        }
        self.log_head();
        if !queued_for.is_empty() {
            self.ring_for(queued_for.iter().map(String::as_str));
        }
        Ok(results)
    }

    /// Log the audit chain's head: a copy outside the database (see `verify-audit --head`).
    pub fn log_head(&self) {
        // The head this process's last commit left: no query (this ran once per receipt,
        // taking the ledger lock a second time). Another process's later commits (an
        // operator's `sluss ledger` command) are logged by the next change made here.
        let h = self.ledger().last_head().clone();
        tracing::info!(event = "audit.head", head = %h, "ledger audit head {h}");
    }

    /// A human-readable note in the customer's download folder (its SFTP `/download`): the
    /// ERP gets the refusal where it fetches receipts, not only as an SFTP status line.
    fn write_rejection_note(
        &self,
        partner: &Partner,
        id: FileId,
        p: &Pending,
        code: &str,
        reason: &str,
    ) {
        let note_name = format!("REJECTED-{id}-{}.txt", super::safe_name(&p.name));
        let text = format!(
            "sluss refused a file from {partner_id} and did NOT send it to the bank.\r\n\
             \r\n\
             File name:  {name}\r\n\
             Ledger id:  {id}\r\n\
             Received:   {at}\r\n\
             Size:       {size} bytes\r\n\
             SHA-256:    {sha}\r\n\
             Reason:     {code}: {reason}\r\n\
             \r\n\
             The file is kept in quarantine. Correct the problem and send the file again, or\r\n\
             contact the gateway operators quoting ledger id {id}.\r\n",
            partner_id = partner.id,
            name = p.name,
            at = crate::ledger::now_rfc3339(),
            size = p.size,
            sha = p.sha256,
        );
        let dir = self.layout.download(&partner.id);
        let r = spool::ensure_dir(&dir).and_then(|()| {
            spool::write_new_file(
                &dir.join(&note_name),
                text.as_bytes(),
                spool::MODE_DELIVERED,
            )
        });
        if let Err(e) = r {
            tracing::warn!(event = "note.failed", file_id = id, partner = %partner.id, "could not write the rejection note: {e}");
        }
    }

    /// Start a file an inbound adapter writes into the spool itself (see [`Body::Upload`]).
    pub fn new_upload(&self) -> Result<Upload, PipelineError> {
        let (path, file, lock) = spool::create_locked(&self.layout.incoming(), spool::MODE_SECRET)?;
        Ok(Upload { path, file, lock })
    }

    fn spool_and_analyse(
        &self,
        partner: &Partner,
        inc: Incoming<'_>,
    ) -> Result<Pending, IngestError> {
        let name = inc.name;
        let incoming = self.layout.incoming();
        let to_ingest_error = |e: spool::SpoolError| {
            if e.is_disk_full() {
                IngestError::DiskFull {
                    name: name.clone(),
                    dir: incoming.clone(),
                }
            } else {
                IngestError::Spool {
                    name: name.clone(),
                    source: e,
                }
            }
        };
        let (written, lock, live, unsynced) = match inc.body {
            Body::Bytes(data) if data.len() as u64 <= SMALL_MAX => {
                return self.analyse_in_memory(partner, name, data);
            }
            Body::Bytes(data) => {
                let (w, lock) =
                    spool::write_temp_locked(&incoming, data.as_slice(), spool::MODE_SECRET)
                        .map_err(to_ingest_error)?;
                (w, lock, None, None)
            }
            Body::Reader(mut reader) => {
                // Small enough to keep in the ledger? Read one byte past the limit to know.
                let mut head = Vec::new();
                if let Err(e) = (&mut reader).take(SMALL_MAX + 1).read_to_end(&mut head) {
                    return Err(IngestError::Read { name, source: e });
                }
                if head.len() as u64 <= SMALL_MAX {
                    return self.analyse_in_memory(partner, name, head);
                }
                let all = std::io::Cursor::new(head).chain(reader);
                let (w, lock) = spool::write_temp_locked(&incoming, all, spool::MODE_SECRET)
                    .map_err(to_ingest_error)?;
                (w, lock, None, None)
            }
            Body::Upload(up, analysed) => {
                let Upload { path, file, lock } = up;
                let (mut sha256, mut passes) = match analysed {
                    Some(a) => {
                        let a = *a;
                        (Some(a.sha256), a.passes)
                    }
                    None => (None, None),
                };
                // A small upload nobody analysed yet: read it once through the handle already
                // open — hash and passes from memory — instead of opening it three more
                // times.
                if sha256.is_none() && passes.is_none() {
                    match spool::read_small(&path, &file, PARALLEL_READ_FROM) {
                        // Small enough for the ledger (the SFTP server had no memory slot
                        // for it): kept there like any small file. The temporary file's
                        // removal need not be durable: a crash brings back an unlocked
                        // temporary file the next start's sweep removes.
                        Ok(Some(data)) if data.len() as u64 <= SMALL_MAX => {
                            let _ = spool::remove_no_sync(&path);
                            return self.analyse_in_memory(partner, name, data);
                        }
                        Ok(Some(data)) => {
                            sha256 = Some(spool::sha256_hex(&data));
                            match passes_of_bytes(&data, &partner.seal.keys) {
                                Ok(p) => passes = Some(p),
                                Err(e) => {
                                    let _ = spool::discard(&path);
                                    return Err(IngestError::Analyse { name, source: e });
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let _ = spool::discard(&path);
                            return Err(to_ingest_error(e));
                        }
                    }
                }
                let w = spool::describe_upload(&path, &file, sha256);
                match w {
                    Ok(w) => (w, lock, passes, Some(file)),
                    Err(e) => {
                        let _ = spool::discard(&path);
                        return Err(to_ingest_error(e));
                    }
                }
            }
        };
        let passes = match live {
            Some(p) => Ok(p),
            None => read_passes(&written.path, &partner.seal.keys),
        };
        let reread = || File::open(&written.path);
        let analysis = match passes.and_then(|p| judge(p, reread, partner)) {
            Ok(a) => a,
            Err(e) => {
                let _ = spool::discard(&written.path);
                return Err(IngestError::Analyse { name, source: e });
            }
        };
        let (analysis, destinations) = self.route_checked(partner, analysis, Vec::new());
        // Move into the store under a random name; durable with the batch's directory fsync.
        let stored = self.layout.files().join(spool::random_token());
        if let Err(e) = spool::rename_no_sync(&written.path, &stored) {
            let _ = spool::discard(&written.path);
            return Err(IngestError::Spool { name, source: e });
        }
        Ok(Pending {
            name,
            size: written.size,
            sha256: written.sha256,
            held: Held::Spooled {
                path: stored,
                unsynced,
                _lock: lock,
            },
            analysis,
            destinations,
        })
    }

    /// A whole small file in memory: analysed there, and kept in the ledger by the commit
    /// (no spool file, no folder fsync: see [`SMALL_MAX`]).
    fn analyse_in_memory(
        &self,
        partner: &Partner,
        name: String,
        data: Vec<u8>,
    ) -> Result<Pending, IngestError> {
        let sha256 = spool::sha256_hex(&data);
        let analysis = match passes_of_bytes(&data, &partner.seal.keys)
            .and_then(|p| judge(p, || Ok(data.as_slice()), partner))
        {
            Ok(a) => a,
            Err(e) => return Err(IngestError::Analyse { name, source: e }),
        };
        let (analysis, destinations) = self.route_checked(partner, analysis, Vec::new());
        let bytes = data;
        Ok(Pending {
            name,
            size: bytes.len() as u64,
            sha256,
            held: Held::InLedger {
                spool_path: format!("{IN_LEDGER}{}", spool::random_token()),
                bytes,
            },
            analysis,
            destinations,
        })
    }

    /// Route a file that passed its checks; a file that cannot be routed is refused.
    fn route_checked(
        &self,
        partner: &Partner,
        mut analysis: Analysis,
        mut destinations: Vec<String>,
    ) -> (Analysis, Vec<String>) {
        if analysis.refusal.is_none() {
            let original_sender = analysis
                .rec
                .routing
                .original_message_id
                .as_deref()
                .and_then(|m| self.ledger().partner_of_message(m).ok().flatten());
            match route(
                &self.config,
                partner,
                &analysis.rec,
                original_sender.as_deref(),
            ) {
                Route::Deliver(d) => destinations = d,
                Route::Refuse { code, reason } => analysis.refusal = Some((code.into(), reason)),
            }
        }
        (analysis, destinations)
    }
}

/// The raw results of reading a file once: what ingest judges it by. Produced either by
/// reading the spooled file back ([`read_passes`]) or while an upload arrives
/// ([`super::live`]); both must give the same answer for the same bytes.
pub struct Passes {
    pub rec: Recognition,
    /// Seal verdict and seal-unprotected characters; `None` when the partner has no key.
    pub seal: Option<(SealVerdict, seal::UnprotectedScan)>,
    /// Digest of the payload without its seal records (duplicates re-sealed).
    pub payload: [u8; 32],
}

/// Files at most this big are read back on one thread: two threads would cost more than the
/// read.
const PARALLEL_READ_FROM: u64 = 1024 * 1024;

/// Seal verdict and unprotected characters (when the partner has keys) and the payload
/// digest, from one read: they share the line scan.
pub(crate) type SealPass = (Option<(SealVerdict, seal::UnprotectedScan)>, [u8; 32]);

/// The seal pass over `reader` — the one definition the read-back, the in-memory path and
/// the live analysis all use, so their verdicts cannot drift apart.
pub(crate) fn seal_pass<R: Read>(keys: &[seal::SealKey], reader: R) -> std::io::Result<SealPass> {
    if keys.is_empty() {
        Ok((None, seal::payload_digest(reader)?))
    } else {
        let (verdict, scan, digest) = seal::verify_scan_digest(keys, reader, CHARSET_EXAMPLES)?;
        Ok((Some((verdict, scan)), digest))
    }
}

/// Read a spooled file back for recognition and the seal pass. Large files: the two reads
/// run side by side, one core each, so the receipt waits for the slower of the two rather
/// than their sum.
pub(crate) fn read_passes(path: &Path, keys: &[seal::SealKey]) -> std::io::Result<Passes> {
    let sealing = || seal_pass(keys, File::open(path)?);
    let recognition = || formats::recognise(BufReader::new(File::open(path)?));
    let small = std::fs::metadata(path)?.len() <= PARALLEL_READ_FROM;
    let (rec, sealed) = if small {
        (recognition(), sealing())
    } else {
        std::thread::scope(|s| {
            let r = s.spawn(recognition);
            let sp = sealing();
            let r = r
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("recognising the file failed")));
            (r, sp)
        })
    };
    let (seal, payload) = sealed?;
    Ok(Passes {
        rec: rec?,
        seal,
        payload,
    })
}

/// The passes of [`read_passes`] over bytes already in memory (a small upload read once
/// through its open handle): the same functions on the same bytes, so the same results.
fn passes_of_bytes(data: &[u8], keys: &[seal::SealKey]) -> std::io::Result<Passes> {
    let rec = formats::recognise(data)?;
    let (seal, payload) = seal_pass(keys, data)?;
    Ok(Passes { rec, seal, payload })
}

/// Judge a file by its passes against the partner's policy: the first failed check decides.
/// `reread` gives the file's bytes again, for the one check the passes may not have made.
fn judge<R: Read>(
    passes: Passes,
    reread: impl FnOnce() -> std::io::Result<R>,
    partner: &Partner,
) -> std::io::Result<Analysis> {
    let Passes {
        rec,
        seal: sealed_result,
        payload,
    } = passes;
    let payload_sha256 = spool::hex_lower(&payload);
    let mut refusal: Option<(String, String)> = None;
    let mut seal_verdict = "not-sealed".to_string();
    let mut seal_kvv = None;

    let flat_payment_order = matches!(rec.kind, Kind::LbPaymentOrder | Kind::AutogiroOrder);
    let must_check_seal = rec.sealed || (partner.seal.required && flat_payment_order);
    let mut scan = None;
    if must_check_seal {
        match sealed_result {
            None => {
                seal_verdict = "no-key".into();
                refusal = Some((
                    "seal:no-key".into(),
                    format!(
                        "partner {} has no seal key loaded, so the seal cannot be checked; add \
                         the key file to [seal] key_files in {}",
                        partner.id,
                        partner.source_file.display()
                    ),
                ));
            }
            Some((verdict, s)) => {
                scan = Some(s);
                match verdict {
                    SealVerdict::Valid { kvv, .. } => {
                        seal_verdict = "valid".into();
                        seal_kvv = Some(kvv.as_str().to_string());
                    }
                    SealVerdict::Invalid(f) => {
                        seal_verdict = f.code().to_string();
                        refusal = Some((format!("seal:{}", f.code()), f.to_string()));
                    }
                }
            }
        }
    }

    if refusal.is_none() && rec.sealed && partner.seal.charset != CharsetPolicy::Allow {
        let scan = match scan {
            Some(s) => s,
            None => seal::unprotected_bytes(reread()?, CHARSET_EXAMPLES)?,
        };
        if scan.total > 0 {
            let where_ = scan
                .findings
                .iter()
                .map(|f| {
                    format!(
                        "line {} column {} (byte 0x{:02X}, {})",
                        f.line,
                        f.column,
                        f.byte,
                        f.class.as_str()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let msg = format!(
                "{} character(s) the seal cannot protect (e.g. {where_}): they can be swapped \
                 without breaking the seal; the sender must export plain ISO-8859-1 letters",
                scan.total
            );
            if partner.seal.charset == CharsetPolicy::Reject {
                refusal = Some(("charset".into(), msg));
            } else {
                tracing::warn!(event = "file.charset-warning", partner = %partner.id, "{msg}");
            }
        }
    }

    let strict_structure = rec.kind.is_payment_order() || rec.kind == Kind::Bgmax;
    if refusal.is_none() && !rec.problems.is_empty() {
        let list = rec
            .problems
            .iter()
            .take(STRUCTURE_EXAMPLES)
            .map(|p| match p.line {
                Some(l) => format!("line {l}: {}", p.message),
                None => p.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        if strict_structure {
            refusal = Some((
                "structure".into(),
                format!(
                    "{} structure problem(s): {list} (all of them: `sluss inspect FILE`)",
                    rec.problems.len()
                ),
            ));
        } else {
            tracing::warn!(event = "file.structure-warning", partner = %partner.id, "{list}");
        }
    }

    if refusal.is_none() && partner.role == Role::Customer {
        refusal = payer_check(partner, &rec);
    }

    Ok(Analysis {
        rec,
        payload_sha256,
        seal_verdict,
        seal_kvv,
        refusal,
    })
}

/// A customer may pay only from its own registered bankgiro numbers / accounts.
fn payer_check(partner: &Partner, rec: &Recognition) -> Option<(String, String)> {
    let (what, found, registered) = match rec.kind {
        Kind::LbPaymentOrder | Kind::AutogiroOrder => {
            ("bankgiro", &rec.routing.bankgiro, &partner.routing.bankgiro)
        }
        Kind::Pain001 => ("account", &rec.routing.account, &partner.routing.accounts),
        _ => return None,
    };
    if found.is_empty() {
        return Some((
            "payer-not-registered".into(),
            format!(
                "the file names no payer {what}; cannot check it belongs to {}",
                partner.id
            ),
        ));
    }
    let foreign: Vec<&str> = found
        .iter()
        .filter(|f| !registered.contains(f))
        .map(String::as_str)
        .collect();
    if foreign.is_empty() {
        None
    } else {
        Some((
            "payer-not-registered".into(),
            format!(
                "payer {what} {} is not registered to partner {}: a customer may only pay from \
                 its own {what}s (add it under [routing] in {} if it really is theirs)",
                foreign.join(", "),
                partner.id,
                partner.source_file.display()
            ),
        ))
    }
}

fn duplicate_reason(orig: FileId, how: DuplicateKind) -> String {
    let what = match how {
        DuplicateKind::SameBytes => "the same bytes as",
        DuplicateKind::SamePayload => "the same payment records as (re-sealed copy of)",
        DuplicateKind::SameMessageId => "the same message id as",
    };
    format!(
        "{what} file {orig}, already accepted; not sent again (if it really must be paid \
         twice, an operator can release it)"
    )
}

/// The earliest `received_at` that still counts for duplicate detection.
fn window_start(window: std::time::Duration) -> String {
    let now = jiff::Timestamp::now();
    let start = now
        .checked_sub(jiff::SignedDuration::from_secs(window.as_secs() as i64))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    crate::ledger::format_ts(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small upload is judged from one read through its handle; the passes must be
    /// exactly those of reading the file back, for good, tampered, unsealed and odd input.
    #[test]
    fn passes_from_memory_equal_passes_from_the_file() {
        let key = seal::SealKey::from_hex("1234567890ABCDEF1234567890ABCDEF").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bankgirot/lb");
        let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(fixtures)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        let mut sealed = Vec::new();
        let unsealed = std::fs::read(format!("{fixtures}/lb-unsealed.txt")).unwrap();
        seal::seal_stream(&key, "261129", &unsealed[..], &mut sealed).unwrap();
        let mut tampered = sealed.clone();
        let at = tampered.len() / 2;
        tampered[at] ^= 1;
        inputs.extend([sealed, tampered, b"".to_vec(), b"\r\n\xff\x00 odd".to_vec()]);
        for (i, data) in inputs.iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, data).unwrap();
            for keys in [vec![], vec![key.clone()]] {
                let a = passes_of_bytes(data, &keys).unwrap();
                let b = read_passes(&path, &keys).unwrap();
                assert_eq!(a.payload, b.payload, "input {i}");
                assert_eq!(
                    format!("{:?}", a.seal),
                    format!("{:?}", b.seal),
                    "input {i}"
                );
                assert_eq!(format!("{:?}", a.rec), format!("{:?}", b.rec), "input {i}");
            }
        }
    }
}
