//! Pull jobs: one run of a `[[pull]]` job — connect to the partner's endpoint, list the
//! folder, take each complete new file through exactly the same ingest as an upload, remember
//! it in the ledger, then delete, move or keep the remote copy.
//!
//! Order is what keeps invariant 1 ("nothing is lost") and "never ingested twice":
//! fetch into the spool → ingest (the ledger commit) → remember (job, path, size, mtime,
//! SHA-256, ledger id) → after-action on the remote. The remote copy is touched only after
//! the commit; if the after-action fails, the remembered row keeps the file from being taken
//! again. A crash between the commit and remembering is caught next run: the file is fetched
//! again, its bytes are found already received from this job under this name, and it is
//! remembered instead of being ingested a second time.
//!
//! This module never writes a file except through the spool and the pipeline, never decides
//! when a job runs (that is the scheduler's), and never overlaps a job with itself: each run
//! holds an exclusive lock on the job's lock file, across processes too.

use super::{Body, Incoming, IngestError, Outcome, Pipeline, PipelineError};
use crate::config::{AfterAction, Partner, PullJob, glob_match};
use crate::ledger::{AfterState, FileId, NewRemoteFile, RunId, RunRecord};
use crate::remote::{self, RemoteEntry, RemoteError, RemoteSession};
use crate::spool;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The failure streak is counted over at most this many recent runs: it is only compared
/// with `attempts` (at most 1000) and reported in logs.
const STREAK_WINDOW: usize = 1000;

/// How a run ended, as stored in the ledger's `runs.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// Every listed new file that was complete was taken (possibly none).
    Ok,
    /// Some files were taken, but something failed (a download, an after-action, a note).
    Partial,
    /// Nothing could be done (server unreachable, folder unreadable, ledger or disk trouble).
    Failed,
    /// Failed, and this makes `attempts` failed runs in a row (or more): alerted.
    DeadLetter,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Partial => "partial",
            RunOutcome::Failed => "failed",
            RunOutcome::DeadLetter => "dead-letter",
        }
    }
    /// Counts towards the failure streak.
    pub fn is_failure(text: &str) -> bool {
        matches!(text, "failed" | "dead-letter")
    }
}

/// Where a job stands, derived from its recorded runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "failures")]
pub enum JobState {
    /// Never ran.
    New,
    /// The last finished run succeeded (fully or partly).
    Ok,
    /// The last runs failed, fewer than `attempts` in a row: retried with backoff.
    Retrying(u32),
    /// `attempts` or more failed runs in a row: alerted; tried again at the cron pace only.
    DeadLettered(u32),
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::New => "new",
            JobState::Ok => "ok",
            JobState::Retrying(_) => "retrying",
            JobState::DeadLettered(_) => "dead-lettered",
        }
    }
}

/// Failed runs in a row, newest first (`runs` as from [`crate::ledger::Ledger::runs`]).
/// Runs that never finished (a crash) are ignored.
pub fn failure_streak(runs: &[RunRecord]) -> u32 {
    runs.iter()
        .filter_map(|r| r.outcome.as_deref())
        .take_while(|o| RunOutcome::is_failure(o))
        .count() as u32
}

/// The job's state from its runs, newest first.
pub fn job_state(runs: &[RunRecord], attempts: u32) -> JobState {
    if !runs.iter().any(|r| r.outcome.is_some()) {
        return JobState::New;
    }
    match failure_streak(runs) {
        0 => JobState::Ok,
        n if n >= attempts => JobState::DeadLettered(n),
        n => JobState::Retrying(n),
    }
}

/// One file a run took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Taken {
    pub path: String,
    pub size: u64,
    pub file_id: FileId,
    pub accepted: bool,
    /// Refusal code when refused.
    pub code: Option<String>,
    /// The after-action's error, if it failed (the file is still never taken again).
    pub after_error: Option<String>,
}

/// What one run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PullReport {
    pub job: String,
    pub run: RunId,
    pub outcome: RunOutcome,
    /// Files taken (accepted or refused) and their bytes.
    pub files: u64,
    pub bytes: u64,
    pub taken: Vec<Taken>,
    /// Listed files left for a later run because they were still changing.
    pub unstable: Vec<String>,
    /// Problems, one line each (the first is stored as the run's error).
    pub errors: Vec<String>,
    /// Failed runs in a row, this one included.
    pub failures: u32,
}

/// A run could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("there is no pull job `{0}`: give it as PARTNER/NAME; `sluss jobs` lists the jobs")]
    UnknownJob(String),
    #[error(
        "pull job {job} is running right now (in the daemon or another `sluss jobs run`); \
         wait for that run to end, then try again"
    )]
    Busy { job: String },
    #[error("cannot lock pull job {job} ({path}): {source}")]
    Lock {
        job: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl Pipeline {
    /// The pull job `PARTNER/NAME` and its partner.
    pub fn pull_job(&self, id: &str) -> Option<(&Partner, &PullJob)> {
        let (partner, name) = id.split_once('/')?;
        let p = self.config.partner(partner)?;
        let j = p.pulls.iter().find(|j| j.name == name)?;
        Some((p, j))
    }

    /// Every pull job, in config order.
    pub fn pull_jobs(&self) -> Vec<(&Partner, &PullJob)> {
        self.config
            .partners
            .values()
            .flat_map(|p| p.pulls.iter().map(move |j| (p, j)))
            .collect()
    }

    /// The job's lock file: held for the whole run, so a job never overlaps itself, even
    /// between the daemon and an operator's `sluss jobs run`.
    fn lock_job(&self, job: &PullJob, partner: &str) -> Result<File, PullError> {
        let dir = self.layout.data_dir.join("locks");
        let path = dir.join(format!("pull.{partner}.{}.lock", job.name));
        let lock_err = |source| PullError::Lock {
            job: job.id.clone(),
            path: path.clone(),
            source,
        };
        spool::ensure_dir(&dir).map_err(|e| lock_err(e.source))?;
        // An empty file that only carries the flock: no payment bytes, nothing to fsync.
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(spool::MODE_SECRET)
            .open(&path)
            .map_err(lock_err)?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => Err(PullError::Busy {
                job: job.id.clone(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(lock_err(e)),
        }
    }
}

/// Run pull job `job_id` (`PARTNER/NAME`) once, now: the run is recorded in the ledger
/// (start, end, files, bytes, outcome) whatever happens once it has started.
pub async fn run_pull(pipeline: &Arc<Pipeline>, job_id: &str) -> Result<PullReport, PullError> {
    let (partner, job) = pipeline
        .pull_job(job_id)
        .ok_or_else(|| PullError::UnknownJob(job_id.to_string()))?;
    let _lock = pipeline.lock_job(job, &partner.id)?;
    let prior = {
        let l = pipeline.ledger();
        failure_streak(
            &l.runs(&job.id, STREAK_WINDOW)
                .map_err(PipelineError::from)?,
        )
    };
    let run = pipeline
        .ledger()
        .record_run_start(&job.id)
        .map_err(PipelineError::from)?;
    tracing::info!(event = "pull.started", job = %job.id, run, "pull {} started", job.id);

    let mut r = Runner {
        pipeline,
        partner,
        job,
        source: format!("pull:{}", job.name),
        taken: Vec::new(),
        unstable: Vec::new(),
        errors: Vec::new(),
        file_errors: 0,
        after_errors: 0,
    };
    let fatal = r.run().await.err();

    let files = r.taken.len() as u64;
    let bytes = r.taken.iter().map(|t| t.size).sum();
    let mut errors = r.errors;
    let mut outcome = if let Some(e) = &fatal {
        errors.insert(0, e.clone());
        RunOutcome::Failed
    } else if r.file_errors > 0 && r.taken.is_empty() {
        RunOutcome::Failed
    } else if r.file_errors > 0 || r.after_errors > 0 {
        RunOutcome::Partial
    } else {
        RunOutcome::Ok
    };
    let failures = if outcome == RunOutcome::Failed {
        prior + 1
    } else {
        0
    };
    if outcome == RunOutcome::Failed && failures >= job.attempts {
        outcome = RunOutcome::DeadLetter;
    }
    let first_error = errors.first().cloned();
    pipeline
        .ledger()
        .record_run_end(run, files, bytes, outcome.as_str(), first_error.as_deref())
        .map_err(PipelineError::from)?;

    let err_text = first_error.as_deref().unwrap_or("");
    match outcome {
        RunOutcome::Ok => {
            if prior > 0 {
                tracing::info!(event = "pull.recovered", job = %job.id, run, after_failures = prior,
                    "pull {} works again after {prior} failed run(s)", job.id);
            }
            tracing::info!(event = "pull.finished", job = %job.id, run, files, bytes,
                outcome = outcome.as_str(), "pull {}: {files} file(s), {bytes} bytes", job.id);
        }
        RunOutcome::Partial => tracing::warn!(event = "pull.partial", job = %job.id, run, files,
            bytes, "pull {}: {files} file(s) taken, with problems: {}", job.id, errors.join("; ")),
        RunOutcome::Failed => tracing::warn!(event = "pull.failed", job = %job.id, run,
            failures, attempts = job.attempts,
            "pull {} failed ({failures} of {} before dead-letter): {err_text}", job.id, job.attempts),
        RunOutcome::DeadLetter => tracing::error!(event = "alert.dead-letter", job = %job.id, run,
            failures,
            "pull {} dead-lettered after {failures} failed runs in a row: {err_text}; it keeps \
             trying at its schedule only; fix the cause, then `sluss jobs run {}`",
            job.id, job.id),
    }
    Ok(PullReport {
        job: job.id.clone(),
        run,
        outcome,
        files,
        bytes,
        taken: r.taken,
        unstable: r.unstable,
        errors,
        failures,
    })
}

/// One run's working state.
struct Runner<'a> {
    pipeline: &'a Arc<Pipeline>,
    partner: &'a Partner,
    job: &'a PullJob,
    /// `pull:<name>`, recorded as each file's source.
    source: String,
    taken: Vec<Taken>,
    unstable: Vec<String>,
    errors: Vec<String>,
    /// Files that could not be taken (download or spool failed).
    file_errors: usize,
    /// After-actions (delete, move, marker, note) that failed, this run's or retried ones.
    after_errors: usize,
}

/// `dir/name` as a remote path.
fn join(dir: &str, name: &str) -> String {
    match dir {
        "." | "" => name.to_string(),
        d if d.ends_with('/') => format!("{d}{name}"),
        d => format!("{d}/{name}"),
    }
}

impl Runner<'_> {
    /// Run `fut` with the job's timeout; `during` says what was going on, for the message.
    async fn timed<T>(
        &self,
        during: &str,
        fut: impl Future<Output = Result<T, RemoteError>>,
    ) -> Result<T, RemoteError> {
        with_timeout(self.job, during, fut).await
    }

    /// The run proper. `Err` only for what stops the whole run.
    async fn run(&mut self) -> Result<(), String> {
        let endpoint = remote::open(&self.job.endpoint);
        let mut s = self
            .timed("connecting", endpoint.connect())
            .await
            .map_err(|e| e.to_string())?;
        let result = self.with_session(s.as_mut()).await;
        // Closing is a courtesy; its failure changes nothing that was done.
        let _ = self.timed("closing", s.close()).await;
        result
    }

    async fn with_session(&mut self, s: &mut dyn RemoteSession) -> Result<(), String> {
        let job = self.job;
        let first = self.list(s).await?;
        let marker = job.done_marker.as_deref();
        let mut candidates: Vec<RemoteEntry> = Vec::new();
        for e in &first {
            if e.is_dir || !glob_match(&job.pattern, &e.name) {
                continue;
            }
            if let Some(m) = marker {
                if e.name.ends_with(m) {
                    continue; // a marker, not a file
                }
                let want = format!("{}{m}", e.name);
                if !first.iter().any(|x| !x.is_dir && x.name == want) {
                    continue; // not finished yet by the partner's own signal
                }
            }
            let path = join(&job.dir, &e.name);
            let known = self
                .pipeline
                .ledger()
                .remembered_remote_file(&job.id, &path, e.size, e.mtime)
                .map_err(|e| e.to_string())?;
            match known {
                Some(k) => {
                    // Taken before. If its after-action has not happened, try it again.
                    if k.after_state != AfterState::Done {
                        let action = if k.outcome == "accepted" {
                            &job.after
                        } else {
                            &job.after_refused
                        };
                        if *action != AfterAction::Keep {
                            let err = self
                                .after_action(s, &path, &e.name, action, k.file_id.unwrap_or(0))
                                .await
                                .err();
                            self.record_after(k.id, err.as_deref());
                        }
                    }
                }
                None => candidates.push(e.clone()),
            }
        }

        // Without a marker, a file is complete when size and mtime hold still.
        if marker.is_none() && !job.stable.is_zero() && !candidates.is_empty() {
            tokio::time::sleep(job.stable).await;
            let second = self.list(s).await?;
            candidates.retain(|c| {
                let same = second.iter().any(|x| {
                    x.name == c.name && !x.is_dir && x.size == c.size && x.mtime == c.mtime
                });
                if !same {
                    self.unstable.push(c.name.clone());
                }
                same
            });
        }

        for e in candidates {
            self.take(s, &e).await?;
        }
        Ok(())
    }

    async fn list(&self, s: &mut dyn RemoteSession) -> Result<Vec<RemoteEntry>, String> {
        self.timed(&format!("listing {}", self.job.dir), s.list(&self.job.dir))
            .await
            .map_err(|e| e.to_string())
    }

    /// Fetch, ingest, remember, after-action. `Err` only when the run must stop (the ledger
    /// or the spool is broken); a single file's trouble is recorded and the run goes on.
    async fn take(&mut self, s: &mut dyn RemoteSession, e: &RemoteEntry) -> Result<(), String> {
        let job = self.job;
        let path = join(&job.dir, &e.name);
        let mut upload = self.pipeline.new_upload().map_err(|e| e.to_string())?;
        let got = self
            .timed(
                &format!("downloading {path}"),
                s.get(&path, &mut upload.file),
            )
            .await;
        let n = match got {
            Ok(n) => n,
            Err(err) => {
                upload.abandon();
                self.file_errors += 1;
                self.errors.push(format!("{path}: {err}"));
                return Ok(());
            }
        };
        if n != e.size {
            // It changed between listing and reading: not complete after all.
            upload.abandon();
            self.unstable.push(e.name.clone());
            return Ok(());
        }
        let sha = match spool::sha256_file(&upload.path) {
            Ok(h) => h,
            Err(err) => {
                upload.abandon();
                return Err(err.to_string());
            }
        };

        // Taken before, but the run crashed before remembering it? Then do not ingest again.
        let earlier = self
            .pipeline
            .ledger()
            .find_received(&self.partner.id, &self.source, &e.name, &sha)
            .map_err(|e| e.to_string())?;
        let (file_id, accepted, code) = match earlier {
            Some((id, accepted)) => {
                upload.abandon();
                tracing::info!(event = "pull.already-taken", job = %job.id, file_id = id,
                    "{path} was already received as file {id}; remembering it, not ingesting again");
                (id, accepted, None)
            }
            None => {
                let p = self.pipeline.clone();
                let partner = self.partner.id.clone();
                let source = self.source.clone();
                let name = e.name.clone();
                let results = tokio::task::spawn_blocking(move || {
                    p.ingest(
                        &partner,
                        &source,
                        vec![Incoming {
                            name,
                            body: Body::Upload(
                                upload,
                                Some(Box::new(crate::pipeline::live::Analysed {
                                    sha256: sha,
                                    passes: None,
                                })),
                            ),
                        }],
                    )
                })
                .await
                .map_err(|e| format!("ingest task failed: {e}"))?
                .map_err(|e| e.to_string())?;
                match results.into_iter().next() {
                    Some(Ok(Outcome::Accepted { id, .. })) => (id, true, None),
                    Some(Ok(Outcome::Refused { id, code, reason })) => {
                        self.rejection_note(s, &e.name, id, &code, &reason).await;
                        (id, false, Some(code))
                    }
                    Some(Err(err)) => return self.not_taken(&path, err),
                    None => return Err("ingest returned no outcome".into()),
                }
            }
        };

        // Committed: remember before touching the remote copy.
        let action = if accepted {
            &job.after
        } else {
            &job.after_refused
        };
        let sha = self
            .pipeline
            .ledger()
            .get(file_id)
            .map_err(|e| e.to_string())?
            .map(|f| f.sha256)
            .ok_or_else(|| format!("file {file_id} vanished from the ledger"))?;
        let rid = self
            .pipeline
            .ledger()
            .remember_remote_file(&NewRemoteFile {
                partner: &self.partner.id,
                job: &job.id,
                path: &path,
                size: e.size,
                mtime: e.mtime,
                sha256: &sha,
                file_id: Some(file_id),
                outcome: if accepted { "accepted" } else { "refused" },
                after: action.as_str(),
            })
            .map_err(|e| e.to_string())?;
        let after_error = self
            .after_action(s, &path, &e.name, action, file_id)
            .await
            .err();
        self.record_after(rid, after_error.as_deref());
        tracing::info!(event = "pull.taken", job = %job.id, file_id, path = %path,
            size = e.size, accepted, after = action.as_str(),
            "{path}: taken as file {file_id} ({}), remote copy: {}",
            if accepted { "accepted" } else { "refused, quarantined" },
            match &after_error { None => action.as_str().to_string(), Some(x) => format!("{} FAILED: {x}", action.as_str()) });
        self.taken.push(Taken {
            path,
            size: e.size,
            file_id,
            accepted,
            code,
            after_error,
        });
        Ok(())
    }

    /// A file the pipeline could not take at all: it stays on the remote for the next run.
    fn not_taken(&mut self, path: &str, err: IngestError) -> Result<(), String> {
        self.file_errors += 1;
        let text = format!("{path}: not taken: {err}");
        // A full disk will refuse the rest too: stop the run.
        if matches!(err, IngestError::DiskFull { .. }) {
            return Err(text);
        }
        self.errors.push(text);
        Ok(())
    }

    fn record_after(&mut self, rid: i64, err: Option<&str>) {
        let state = if err.is_some() {
            AfterState::Failed
        } else {
            AfterState::Done
        };
        if let Err(e) = self.pipeline.ledger().set_remote_after(rid, state, err) {
            self.errors
                .push(format!("recording the after-action failed: {e}"));
        }
        if let Some(e) = err {
            self.after_errors += 1;
            self.errors.push(e.to_string());
        }
    }

    /// Delete, move or keep the remote copy (and its done-marker when the file goes away).
    async fn after_action(
        &self,
        s: &mut dyn RemoteSession,
        path: &str,
        name: &str,
        action: &AfterAction,
        file_id: FileId,
    ) -> Result<(), String> {
        let what = |op: &str, e: RemoteError| {
            format!(
                "{path}: {op} failed ({e}); the file stays remembered and is not taken again, \
                 and the {op} is retried next run; check that the folder exists and that sluss \
                 may change it on the partner's server"
            )
        };
        match action {
            AfterAction::Keep => return Ok(()),
            AfterAction::Delete => {
                self.timed(&format!("deleting {path}"), s.remove(path))
                    .await
                    .map_err(|e| what("delete", e))?;
            }
            AfterAction::Move(to) => {
                let mut target = join(to, name);
                let exists = self
                    .timed(&format!("checking {target}"), s.stat(&target))
                    .await
                    .map_err(|e| what("move", e))?;
                if exists.is_some() {
                    // Never replace the partner's files: keep both, ours with its ledger id.
                    target = format!("{target}.{file_id}");
                }
                self.timed(&format!("moving {path}"), s.rename(path, &target))
                    .await
                    .map_err(|e| what("move", e))?;
            }
        }
        if let Some(m) = &self.job.done_marker {
            let mp = format!("{path}{m}");
            match self.timed(&format!("deleting {mp}"), s.remove(&mp)).await {
                Ok(()) | Err(RemoteError::NotFound { .. }) => {}
                Err(e) => return Err(what("removing the done-marker", e)),
            }
        }
        Ok(())
    }

    /// Tell the partner why a file was refused: a note in its `rejection_notes` folder.
    async fn rejection_note(
        &mut self,
        s: &mut dyn RemoteSession,
        name: &str,
        id: FileId,
        code: &str,
        reason: &str,
    ) {
        let Some(dir) = &self.job.rejection_notes else {
            return;
        };
        let safe: String = name
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
        let note = join(
            dir,
            &format!("REJECTED-{id}-{}.txt", safe.trim_start_matches('.')),
        );
        let text = format!(
            "sluss refused a file it fetched from {partner} and did NOT pass it on.\r\n\
             \r\n\
             File name:  {name}\r\n\
             Ledger id:  {id}\r\n\
             Fetched:    {at}\r\n\
             Reason:     {code}: {reason}\r\n\
             \r\n\
             The file is kept in quarantine at the gateway and will not be fetched again.\r\n\
             Correct the problem and send a corrected file, or contact the gateway operators\r\n\
             quoting ledger id {id}.\r\n",
            partner = self.partner.id,
            at = crate::ledger::now_rfc3339(),
        );
        let r = async {
            let (w, _lock) = spool::write_temp_locked(
                &self.pipeline.layout.incoming(),
                text.as_bytes(),
                spool::MODE_SECRET,
            )
            .map_err(|e| e.to_string())?;
            let sent = async {
                let mut f = File::open(&w.path).map_err(|e| e.to_string())?;
                self.timed(&format!("writing {note}"), s.put(&mut f, &note))
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            let _ = spool::discard(&w.path);
            sent.map(|_| ())
        }
        .await;
        if let Err(e) = r {
            self.after_errors += 1;
            self.errors
                .push(format!("rejection note {note} for file {id}: {e}"));
        }
    }
}

/// `fut` limited to the job's `timeout`; a hung server becomes [`RemoteError::Timeout`].
async fn with_timeout<T>(
    job: &PullJob,
    during: &str,
    fut: impl Future<Output = Result<T, RemoteError>>,
) -> Result<T, RemoteError> {
    match tokio::time::timeout(job.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(RemoteError::Timeout {
            endpoint: remote::open(&job.endpoint).describe(),
            seconds: job.timeout.as_secs(),
            during: during.to_string(),
        }),
    }
}

/// Exponential backoff: `initial` doubled per failure after the first, capped at `max`.
pub fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(30);
    initial.saturating_mul(1u32 << shift).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcome: Option<&str>) -> RunRecord {
        RunRecord {
            id: 0,
            job: "a/b".into(),
            started_at: String::new(),
            finished_at: None,
            files: None,
            bytes: None,
            outcome: outcome.map(str::to_string),
            error: None,
        }
    }

    #[test]
    fn states_follow_the_failure_streak() {
        assert_eq!(job_state(&[], 3), JobState::New);
        assert_eq!(job_state(&[run(None)], 3), JobState::New);
        assert_eq!(job_state(&[run(Some("ok"))], 3), JobState::Ok);
        let newest_first = [
            run(Some("failed")),
            run(None), // crashed run: ignored
            run(Some("failed")),
            run(Some("ok")),
            run(Some("failed")),
        ];
        assert_eq!(failure_streak(&newest_first), 2);
        assert_eq!(job_state(&newest_first, 3), JobState::Retrying(2));
        assert_eq!(job_state(&newest_first, 2), JobState::DeadLettered(2));
        assert_eq!(
            job_state(&[run(Some("dead-letter")), run(Some("failed"))], 2),
            JobState::DeadLettered(2)
        );
        assert_eq!(
            job_state(&[run(Some("partial")), run(Some("failed"))], 2),
            JobState::Ok
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(30), s(3600)), s(30));
        assert_eq!(backoff(2, s(30), s(3600)), s(60));
        assert_eq!(backoff(4, s(30), s(3600)), s(240));
        assert_eq!(backoff(100, s(30), s(3600)), s(3600));
        assert_eq!(backoff(0, s(30), s(3600)), s(30));
    }

    #[test]
    fn a_hung_operation_times_out_with_what_it_was_doing() {
        let job = crate::config::PullJob {
            id: "p/j".into(),
            name: "j".into(),
            endpoint: crate::config::Endpoint::Local {
                path: "/srv/partner".into(),
            },
            dir: ".".into(),
            pattern: "*".into(),
            schedule: crate::config::Schedule::parse("* * * * *", "UTC").unwrap(),
            stable: Duration::ZERO,
            done_marker: None,
            after: AfterAction::Keep,
            after_refused: AfterAction::Keep,
            rejection_notes: None,
            catch_up: false,
            jitter: Duration::ZERO,
            attempts: 1,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(1),
            // Short, so the test is quick; the future below never completes either way.
            timeout: Duration::from_millis(20),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r: Result<(), RemoteError> = rt.block_on(with_timeout(
            &job,
            "listing out",
            std::future::pending::<Result<(), RemoteError>>(),
        ));
        let e = r.unwrap_err();
        assert!(matches!(e, RemoteError::Timeout { .. }), "{e}");
        assert!(
            e.to_string().contains("local:/srv/partner") && e.to_string().contains("listing out"),
            "{e}"
        );
        let ok: Result<u8, RemoteError> = rt.block_on(with_timeout(&job, "x", async { Ok(7) }));
        assert_eq!(ok.unwrap(), 7);
    }

    #[test]
    fn remote_paths_join() {
        assert_eq!(join(".", "a.txt"), "a.txt");
        assert_eq!(join("out", "a.txt"), "out/a.txt");
        assert_eq!(join("/", "a.txt"), "/a.txt");
    }
}
