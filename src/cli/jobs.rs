//! `sluss jobs` (every pull job: schedule, last run, next scheduled time, state) and
//! `sluss jobs run PARTNER/NAME` (run one now, in this process; recorded like a scheduled run).

use anyhow::Context;
use sluss::pipeline::Pipeline;
use sluss::pipeline::pull::{self, JobState, RunOutcome};
use sluss::scheduler;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Runs shown per job with `--runs`.
const DEFAULT_RUNS_SHOWN: usize = 1;

#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    /// Directory holding sluss.toml and jobs.d/.
    #[arg(long, default_value = ".", global = true)]
    pub config: PathBuf,
    /// One JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// How many recent runs to show per job.
    #[arg(long, default_value_t = DEFAULT_RUNS_SHOWN)]
    pub runs: usize,
    #[command(subcommand)]
    pub cmd: Option<JobsCmd>,
}

#[derive(clap::Subcommand, Debug)]
pub enum JobsCmd {
    /// Run one pull job now (exit 0: ok, 1: partial, failed or dead-lettered).
    Run {
        /// The job as PARTNER/NAME (see `sluss jobs`).
        job: String,
    },
}

pub fn run(a: JobsArgs) -> anyhow::Result<ExitCode> {
    let config = super::serve::load_config(&a.config)?;
    let pipeline = Arc::new(Pipeline::open(config).context("opening the ledger")?);
    match a.cmd {
        None => list(&pipeline, a.json, a.runs.max(1)),
        Some(JobsCmd::Run { job }) => run_one(&pipeline, &job, a.json),
    }
}

fn list(p: &Pipeline, json: bool, shown: usize) -> anyhow::Result<ExitCode> {
    let now = jiff::Timestamp::now();
    let mut out = Vec::new();
    for (_, job) in p.pull_jobs() {
        let window = (job.attempts as usize + 1).max(shown);
        let runs = p.ledger().runs(&job.id, window)?;
        let state = pull::job_state(&runs, job.attempts);
        let next = scheduler::next_run(job, &runs, now);
        out.push(serde_json::json!({
            "job": job.id,
            "schedule": job.schedule.text,
            "timezone": job.schedule.timezone_name,
            "endpoint": sluss::remote::open(&job.endpoint).describe(),
            "dir": job.dir,
            "pattern": job.pattern,
            "after": job.after.as_str(),
            "state": state.as_str(),
            "failures": match state { JobState::Retrying(n) | JobState::DeadLettered(n) => n, _ => 0 },
            "attempts": job.attempts,
            "next": next.map(sluss::ledger::format_ts),
            "next_local": next.map(|t| t.to_zoned(job.schedule.timezone.clone()).strftime("%Y-%m-%d %H:%M:%S %Z").to_string()),
            "runs": runs.iter().take(shown).collect::<Vec<_>>(),
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if out.is_empty() {
        println!("no pull jobs configured (add [[pull]] to a partner file; see docs/pull.md)");
        return Ok(ExitCode::SUCCESS);
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "{:<28} {:<16} {:<20} {:<27} LAST RUN",
        "JOB", "SCHEDULE", "STATE", "NEXT"
    );
    for j in &out {
        let state = match j["failures"].as_u64() {
            Some(n) if n > 0 => format!("{} ({n}/{})", s(&j["state"]), j["attempts"]),
            _ => s(&j["state"]),
        };
        let last = match j["runs"].get(0) {
            None => "never".to_string(),
            Some(r) => format!(
                "{} {}: {} file(s), {} bytes{}",
                s(&r["started_at"]),
                r["outcome"].as_str().unwrap_or("running or interrupted"),
                r["files"].as_u64().unwrap_or(0),
                r["bytes"].as_u64().unwrap_or(0),
                r["error"]
                    .as_str()
                    .map(|e| format!(" — {e}"))
                    .unwrap_or_default()
            ),
        };
        println!(
            "{:<28} {:<16} {:<20} {:<27} {last}",
            s(&j["job"]),
            s(&j["schedule"]),
            state,
            s(&j["next_local"]),
        );
        for r in j["runs"].as_array().into_iter().flatten().skip(1) {
            println!(
                "{:<94} {} {}: {} file(s), {} bytes",
                "",
                s(&r["started_at"]),
                r["outcome"].as_str().unwrap_or("running or interrupted"),
                r["files"].as_u64().unwrap_or(0),
                r["bytes"].as_u64().unwrap_or(0),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_one(p: &Arc<Pipeline>, job: &str, json: bool) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(pull::run_pull(p, job))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: run {} {}: {} file(s), {} bytes",
            report.job,
            report.run,
            report.outcome.as_str(),
            report.files,
            report.bytes
        );
        for t in &report.taken {
            println!(
                "  {} {}: file {}{}{}",
                if t.accepted { "accepted" } else { "refused" },
                t.path,
                t.file_id,
                t.code
                    .as_ref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default(),
                t.after_error
                    .as_ref()
                    .map(|e| format!("; after-action failed: {e}"))
                    .unwrap_or_default()
            );
        }
        for u in &report.unstable {
            println!("  still changing, left for the next run: {u}");
        }
        for e in &report.errors {
            println!("  problem: {e}");
        }
    }
    Ok(if report.outcome == RunOutcome::Ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
