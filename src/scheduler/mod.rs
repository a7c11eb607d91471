//! The scheduler: decides *when* each `[[pull]]` job runs and runs it, in the daemon.
//!
//! - Schedule computation is pure ([`next_after`], [`next_run`], [`missed_run`]) and tested
//!   with fixed instants, across daylight-saving changes (croner reads the cron pattern in the
//!   job's time zone; a 02:30 job runs at 03:00 on spring-forward day and once on fall-back
//!   day).
//! - One task per job, running the job's runs one after another: a job never overlaps itself
//!   (the run itself also holds the job's lock file, against `sluss jobs run` beside us).
//! - A failed run is retried with exponential backoff and jitter, but never later than the
//!   next cron time; after `attempts` failed runs in a row the job is dead-lettered (alerted
//!   by the run) and runs at its cron pace only, so it recovers by itself when the partner's
//!   server is back.
//! - Concurrency is bounded: one run at a time per partner, [`MAX_CONCURRENT_PULLS`] overall,
//!   so one dead or slow partner never delays the others beyond that bound.
//!
//! It never moves a byte itself: runs are [`crate::pipeline::pull::run_pull`].

use crate::config::{PullJob, Schedule};
use crate::ledger::RunRecord;
use crate::pipeline::Pipeline;
use crate::pipeline::pull::{PullError, backoff, failure_streak, run_pull};
use jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// Runs in flight across all partners. Pulls are network-bound; eight keeps a two-core machine
/// responsive while many partners are polled on the same tick.
pub const MAX_CONCURRENT_PULLS: usize = 8;
/// The longest single sleep: the plan is re-checked at least this often, so a wall-clock step
/// (NTP, a suspended VM) delays a run by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// At shutdown, how long runs in progress may take to finish before they are abandoned (an
/// abandoned run is safe: its files are taken again or recognised as taken next time).
const STOP_WAIT: Duration = Duration::from_secs(30);

/// The first scheduled instant strictly after `after`, reading the pattern in the schedule's
/// time zone; `None` if it never matches again.
pub fn next_after(schedule: &Schedule, after: Timestamp) -> Option<Timestamp> {
    schedule.next_after(after)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}

fn parse_ts(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// When `job` should run next (before jitter), given its runs (newest first) and `now`:
/// the next cron time, or sooner when the last runs failed and a backoff retry is due.
pub fn next_run(job: &PullJob, runs: &[RunRecord], now: Timestamp) -> Option<Timestamp> {
    let cron = next_after(&job.schedule, now);
    let failures = failure_streak(runs);
    if failures == 0 || failures >= job.attempts {
        return cron;
    }
    let ended = runs
        .iter()
        .find(|r| r.outcome.is_some())
        .and_then(|r| r.finished_at.as_deref().and_then(parse_ts))
        .unwrap_or(now);
    let retry = add(ended, backoff(failures, job.retry_initial, job.retry_max)).max(now);
    Some(match cron {
        Some(c) if c < retry => c,
        _ => retry,
    })
}

/// True when a scheduled time passed since the job's last run started (the daemon was down
/// or busy) and the job asks to catch up. A job that never ran has missed nothing.
pub fn missed_run(job: &PullJob, runs: &[RunRecord], now: Timestamp) -> bool {
    job.catch_up
        && runs
            .first()
            .and_then(|r| parse_ts(&r.started_at))
            .and_then(|s| next_after(&job.schedule, s))
            .is_some_and(|t| t < now)
}

/// A random delay in `[0, max]`, so jobs sharing a tick do not hit servers at one instant.
pub fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return Duration::ZERO;
    }
    let ms = u64::from_le_bytes(b) % (max.as_millis() as u64 + 1);
    Duration::from_millis(ms)
}

/// The running scheduler (a thread with its own async runtime). [`Scheduler::stop`] ends it.
pub struct Scheduler {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scheduler {
    /// Start one task per pull job of the pipeline's configuration.
    pub fn start(pipeline: Arc<Pipeline>) -> std::io::Result<Scheduler> {
        let (stop, stop_rx) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pull")
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || rt.block_on(run_all(pipeline, stop_rx)))?;
        Ok(Scheduler {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop scheduling; wait (bounded) for runs in progress to finish.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn run_all(pipeline: Arc<Pipeline>, mut stop: watch::Receiver<bool>) {
    let global = Arc::new(Semaphore::new(MAX_CONCURRENT_PULLS));
    let mut per_partner: BTreeMap<String, Arc<Semaphore>> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let jobs: Vec<(String, PullJob)> = pipeline
        .pull_jobs()
        .into_iter()
        .map(|(p, j)| (p.id.clone(), j.clone()))
        .collect();
    for (partner, job) in jobs {
        let mine = per_partner
            .entry(partner)
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone();
        tasks.spawn(job_loop(
            pipeline.clone(),
            job,
            mine,
            global.clone(),
            stop.clone(),
        ));
    }
    tracing::info!(
        event = "scheduler.started",
        jobs = tasks.len(),
        "scheduler started: {} pull job(s)",
        tasks.len()
    );
    let _ = stop.wait_for(|s| *s).await;
    if tokio::time::timeout(STOP_WAIT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            event = "scheduler.abandoned",
            "pull runs still in progress after {} s were abandoned; their files are \
             recognised next run",
            STOP_WAIT.as_secs()
        );
    }
}

/// Sleep until `at` (wall clock) or stop; true if `at` was reached.
async fn sleep_until(at: Timestamp, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *stop.borrow() {
            return false;
        }
        let now = Timestamp::now();
        if now >= at {
            return true;
        }
        let left = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(left.min(MAX_SLEEP)) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn job_loop(
    pipeline: Arc<Pipeline>,
    job: PullJob,
    partner: Arc<Semaphore>,
    global: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let window = job.attempts as usize + 1;
    let mut first = true;
    loop {
        let runs = match pipeline.ledger().runs(&job.id, window) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(event = "scheduler.ledger", job = %job.id, "cannot read the runs of {}: {e}", job.id);
                Vec::new()
            }
        };
        let now = Timestamp::now();
        let at = if first && missed_run(&job, &runs, now) {
            tracing::info!(event = "pull.catch-up", job = %job.id,
                "pull {} missed a scheduled run while sluss was down: running it now", job.id);
            Some(now)
        } else {
            next_run(&job, &runs, now).map(|t| add(t, jitter(job.jitter)))
        };
        first = false;
        let Some(at) = at else {
            tracing::warn!(event = "pull.never", job = %job.id,
                "pull {} has no scheduled time ahead ({}); it will not run again", job.id, job.schedule.text);
            let _ = stop.wait_for(|s| *s).await;
            return;
        };
        if !sleep_until(at, &mut stop).await {
            return;
        }
        // Partner first: a job waiting for its partner's turn holds no global slot.
        let Ok(_p) = partner.acquire().await else {
            return;
        };
        let Ok(_g) = global.acquire().await else {
            return;
        };
        if *stop.borrow() {
            return;
        }
        match run_pull(&pipeline, &job.id).await {
            Ok(_) => {}
            Err(PullError::Busy { .. }) => {
                tracing::info!(event = "pull.busy", job = %job.id,
                    "pull {} is already running elsewhere (`sluss jobs run`?); skipped this time", job.id);
            }
            Err(e) => {
                tracing::error!(event = "pull.error", job = %job.id, "pull {}: {e}", job.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Zoned;

    fn sched(text: &str) -> Schedule {
        Schedule::parse(text, "Europe/Stockholm").unwrap()
    }

    /// Stockholm wall-clock time → instant.
    fn sthlm(s: &str) -> Timestamp {
        format!("{s}[Europe/Stockholm]")
            .parse::<Zoned>()
            .unwrap()
            .timestamp()
    }

    fn local(t: Timestamp) -> String {
        t.to_zoned(jiff::tz::TimeZone::get("Europe/Stockholm").unwrap())
            .strftime("%Y-%m-%d %H:%M:%S %:z")
            .to_string()
    }

    fn series(s: &Schedule, from: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut t = from;
        for _ in 0..n {
            t = next_after(s, t).expect("a next time");
            out.push(t);
        }
        out
    }

    fn strictly_increasing(v: &[Timestamp]) -> bool {
        v.windows(2).all(|w| w[0] < w[1])
    }

    #[test]
    fn a_0230_job_runs_at_0300_on_spring_forward_day() {
        // 2026-03-29 is the last Sunday of March: 02:00 CET becomes 03:00 CEST.
        let s = sched("30 2 * * *");
        let got: Vec<String> = series(&s, sthlm("2026-03-27T12:00"), 4)
            .into_iter()
            .map(local)
            .collect();
        assert_eq!(
            got,
            [
                "2026-03-28 02:30:00 +01:00",
                "2026-03-29 03:00:00 +02:00",
                "2026-03-30 02:30:00 +02:00",
                "2026-03-31 02:30:00 +02:00",
            ]
        );
    }

    #[test]
    fn a_0230_job_runs_once_on_fall_back_day() {
        // 2026-10-25 is the last Sunday of October: 03:00 CEST becomes 02:00 CET, so 02:30
        // happens twice on the wall clock. The job runs once.
        let s = sched("30 2 * * *");
        let got = series(&s, sthlm("2026-10-23T12:00"), 4);
        assert!(strictly_increasing(&got));
        let on_day = got
            .iter()
            .filter(|t| local(**t).starts_with("2026-10-25"))
            .count();
        assert_eq!(
            on_day,
            1,
            "{:?}",
            got.iter().map(|t| local(*t)).collect::<Vec<_>>()
        );
        assert_eq!(local(got[0]), "2026-10-24 02:30:00 +02:00");
        assert_eq!(local(got[2]), "2026-10-26 02:30:00 +01:00");
    }

    #[test]
    fn frequent_schedules_stay_strictly_increasing_across_both_changes() {
        for text in [
            "*/15 * * * *",
            "0 * * * *",
            "*/30 * * * * *",
            "0 30 2 * * *",
        ] {
            let s = sched(text);
            for start in ["2026-03-28T22:00", "2026-10-24T22:00"] {
                let got = series(&s, sthlm(start), 200);
                assert!(strictly_increasing(&got), "{text} from {start}");
                // No run lands in the hour that does not exist on spring-forward day.
                assert!(
                    got.iter().all(|t| !local(*t).starts_with("2026-03-29 02:")),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn the_next_time_is_strictly_after_even_within_the_matching_second() {
        let s = sched("*/30 * * * * *");
        let tick = sthlm("2026-06-01T10:00:00");
        assert_eq!(next_after(&s, tick), Some(sthlm("2026-06-01T10:00:30")));
        let just_after = tick.checked_add(SignedDuration::from_millis(500)).unwrap();
        assert_eq!(
            next_after(&s, just_after),
            Some(sthlm("2026-06-01T10:00:30"))
        );
    }

    fn job(schedule: &str, attempts: u32) -> PullJob {
        PullJob {
            id: "p/j".into(),
            name: "j".into(),
            endpoint: crate::config::Endpoint::Local {
                path: "/nonexistent".into(),
            },
            dir: ".".into(),
            pattern: "*".into(),
            schedule: sched(schedule),
            stable: Duration::ZERO,
            done_marker: None,
            after: crate::config::AfterAction::Keep,
            after_refused: crate::config::AfterAction::Keep,
            rejection_notes: None,
            catch_up: true,
            jitter: Duration::ZERO,
            attempts,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(600),
            timeout: Duration::from_secs(5),
        }
    }

    fn run(started: Timestamp, outcome: &str) -> RunRecord {
        RunRecord {
            id: 1,
            job: "p/j".into(),
            started_at: crate::ledger::format_ts(started),
            finished_at: Some(crate::ledger::format_ts(started)),
            files: Some(0),
            bytes: Some(0),
            outcome: Some(outcome.into()),
            error: None,
        }
    }

    #[test]
    fn failed_runs_retry_with_backoff_but_never_after_the_cron_time() {
        let j = job("0 * * * *", 3);
        let t0 = sthlm("2026-06-01T10:05:00");
        // One failure: retry 60 s after it ended.
        let runs = [run(t0, "failed")];
        assert_eq!(next_run(&j, &runs, t0), Some(sthlm("2026-06-01T10:06:00")));
        // Two failures: 120 s.
        let runs = [run(t0, "failed"), run(t0, "failed")];
        assert_eq!(next_run(&j, &runs, t0), Some(sthlm("2026-06-01T10:07:00")));
        // A retry due after the next cron time waits for the cron time instead.
        let late = sthlm("2026-06-01T10:59:30");
        let runs = [run(late, "failed"), run(late, "failed")];
        assert_eq!(
            next_run(&j, &runs, late),
            Some(sthlm("2026-06-01T11:00:00"))
        );
        // Dead-lettered: the cron pace only.
        let runs = [run(t0, "dead-letter"), run(t0, "failed"), run(t0, "failed")];
        assert_eq!(next_run(&j, &runs, t0), Some(sthlm("2026-06-01T11:00:00")));
        // Healthy: the cron time.
        assert_eq!(
            next_run(&j, &[run(t0, "ok")], t0),
            Some(sthlm("2026-06-01T11:00:00"))
        );
    }

    #[test]
    fn a_run_missed_while_down_is_caught_up_once() {
        let mut j = job("30 2 * * *", 3);
        let last = sthlm("2026-06-01T02:30:00");
        let runs = [run(last, "ok")];
        assert!(!missed_run(&j, &runs, sthlm("2026-06-02T02:00:00")));
        assert!(missed_run(&j, &runs, sthlm("2026-06-02T09:00:00")));
        assert!(
            !missed_run(&j, &[], sthlm("2026-06-02T09:00:00")),
            "never ran"
        );
        j.catch_up = false;
        assert!(!missed_run(&j, &runs, sthlm("2026-06-02T09:00:00")));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let max = Duration::from_millis(1500);
        for _ in 0..200 {
            assert!(jitter(max) <= max);
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
