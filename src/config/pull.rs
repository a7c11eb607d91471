//! `[[pull]]` jobs in a partner file: what the operator typed ([`RawPull`]) and the validated
//! job ([`PullJob`]) with its schedule parsed (croner, seconds optional) and its time zone
//! resolved (jiff's bundled tz database). Every problem is reported with file, field and fix.
//!
//! Like the rest of `config`, this only reads: it never touches a remote server or a file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::validate::{Env, FileCx, Problems, int_in, pull_endpoint};
use super::{Endpoint, Partner};

/// The time zone schedules are read in when `timezone` is left out: the banks' own.
pub const DEFAULT_TIMEZONE: &str = "Europe/Stockholm";
/// A file whose size and mtime did not change across two listings this far apart is complete.
/// Two seconds covers a partner's ERP writing a file in pieces without slowing every run much.
const DEFAULT_STABLE_SECONDS: u32 = 2;
/// Random delay added to each scheduled run, so many jobs on one tick do not hit servers at once.
const DEFAULT_JITTER_SECONDS: u32 = 3;
/// Failed runs in a row before the job is dead-lettered (alert; cron pace only).
const DEFAULT_ATTEMPTS: u32 = 5;
/// Per remote operation (connect, login, list, each transfer): a hung server must not hold a
/// job forever. A minute lets a multi-megabyte file through a slow line.
const DEFAULT_TIMEOUT_SECONDS: u32 = 60;
/// Ten minutes: a longer wait between listings delays every run by as much.
const MAX_STABLE_SECONDS: i64 = 600;
/// An hour of jitter is already a different schedule.
const MAX_JITTER_SECONDS: i64 = 3600;
const MAX_ATTEMPTS: i64 = 1000;
const MAX_RETRY_SECONDS: i64 = 86_400;
const MAX_TIMEOUT_SECONDS: i64 = 3600;
/// Job names are part of ids, log lines and lock-file names: `[a-z0-9][a-z0-9-]{0,31}`.
const MAX_NAME_LEN: usize = 32;

/// One `[[pull]]` table as typed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPull {
    pub name: String,
    /// Kept as a table, like `delivery.endpoint`: its keys depend on `type`.
    pub endpoint: toml::Table,
    pub dir: Option<String>,
    pub pattern: Option<String>,
    pub schedule: String,
    pub timezone: Option<String>,
    pub stable_seconds: Option<i64>,
    pub done_marker: Option<String>,
    /// No default on purpose: what happens to files on the partner's server is said out loud.
    pub after: RawAfter,
    pub move_to: Option<String>,
    pub after_refused: Option<RawAfter>,
    pub refused_move_to: Option<String>,
    pub rejection_notes: Option<String>,
    pub catch_up: Option<bool>,
    pub jitter_seconds: Option<i64>,
    pub attempts: Option<i64>,
    pub retry_initial_seconds: Option<i64>,
    pub retry_max_seconds: Option<i64>,
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawAfter {
    Delete,
    Move,
    Keep,
}

/// A validated pull job.
#[derive(Debug, Clone)]
pub struct PullJob {
    /// `<partner>/<name>`: the job's id in the ledger, logs and `sluss jobs`.
    pub id: String,
    pub name: String,
    pub endpoint: Endpoint,
    /// Remote folder to list (relative paths start where the session starts).
    pub dir: String,
    /// File-name glob: `*` any run of characters, `?` one character (see [`glob_match`]).
    pub pattern: String,
    pub schedule: Schedule,
    /// Size and mtime must be unchanged across two listings this far apart (zero: one listing).
    pub stable: Duration,
    /// Take `FILE` only when `FILE<done_marker>` is listed too (then no stability wait).
    pub done_marker: Option<String>,
    /// What happens to the remote copy once the file is accepted here.
    pub after: AfterAction,
    /// … and once it was taken but refused (quarantined here).
    pub after_refused: AfterAction,
    /// Remote folder to put `REJECTED-<id>-<name>.txt` notes into.
    pub rejection_notes: Option<String>,
    /// A scheduled run missed while the daemon was down runs once at start.
    pub catch_up: bool,
    /// Up to this much random delay before each scheduled run.
    pub jitter: Duration,
    /// Failed runs in a row before the job is dead-lettered.
    pub attempts: u32,
    /// First retry delay after a failed run; doubles per failure up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Limit for each remote operation.
    pub timeout: Duration,
}

/// What to do with a remote file after it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterAction {
    Delete,
    /// Rename it into this remote folder.
    Move(String),
    /// Leave it; the ledger remembers it so it is never taken again.
    Keep,
}

impl AfterAction {
    /// The word stored in the ledger.
    pub fn as_str(&self) -> &'static str {
        match self {
            AfterAction::Delete => "delete",
            AfterAction::Move(_) => "move",
            AfterAction::Keep => "keep",
        }
    }
}

/// A cron schedule read in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As the operator wrote it.
    pub text: String,
    pub cron: croner::Cron,
    pub timezone: jiff::tz::TimeZone,
    /// IANA name, e.g. `Europe/Stockholm`.
    pub timezone_name: String,
}

impl Schedule {
    /// Parse `text` (croner syntax, seconds optional) in IANA zone `tz`.
    pub fn parse(text: &str, tz: &str) -> Result<Schedule, String> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(text)
            .map_err(|e| e.to_string())?;
        let timezone =
            jiff::tz::TimeZone::get(tz).map_err(|_| format!("unknown time zone `{tz}`"))?;
        Ok(Schedule {
            text: text.to_string(),
            cron,
            timezone,
            timezone_name: tz.to_string(),
        })
    }

    /// The first scheduled instant strictly after `after`; `None` if the pattern never
    /// matches again (e.g. 30 February).
    pub fn next_after(&self, after: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let z = after.to_zoned(self.timezone.clone());
        self.cron
            .find_next_occurrence(&z, false)
            .ok()
            .map(|n| n.timestamp())
    }
}

/// Shell-style match of a whole file name: `*` matches any run of characters (also none),
/// `?` exactly one; everything else matches itself. A name starting with `.` (a hidden or
/// temporary file) matches only a pattern that starts with `.` too.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    glob(pattern, name)
}

/// Plain glob: `*` any run of characters, `?` exactly one, everything else itself; no rule
/// about hidden names (the SFTP server's temporary-name patterns use it as it is).
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point (the last `*`): linear in practice, and
    // never exponential on hostile names.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A remote folder: non-empty, no `..`, no control characters.
fn remote_dir(cx: &FileCx<'_, '_>, p: &mut Problems, field: &str, value: &str) -> Option<String> {
    let v = value.trim();
    if v.is_empty() {
        cx.err(
            p,
            field,
            "is empty",
            "give a remote folder, e.g. \".\" or \"out\"",
        );
        return None;
    }
    if v.split('/').any(|c| c == "..") || v.chars().any(char::is_control) {
        cx.err(
            p,
            field,
            format!("`{v}` contains `..` or control characters"),
            "name the folder without `..`, e.g. \"out/processed\"",
        );
        return None;
    }
    Some(v.trim_end_matches('/').to_string()).map(|s| if s.is_empty() { "/".into() } else { s })
}

/// Validate every `[[pull]]` of partner `partner_id`.
pub(super) fn validate(
    cx: &FileCx<'_, '_>,
    env: &Env<'_>,
    partner_id: &str,
    raw: &[RawPull],
    p: &mut Problems,
) -> Vec<PullJob> {
    let mut jobs = Vec::new();
    let mut names = BTreeSet::new();
    for (i, r) in raw.iter().enumerate() {
        let f = |k: &str| format!("pull[{i}].{k}");
        let before = p.0.len();

        if !valid_name(&r.name) {
            cx.err(
                p,
                &f("name"),
                format!("`{}` is not a valid job name", r.name),
                "use 1 to 32 of a-z, 0-9 and `-`, starting with a letter or digit",
            );
        } else if !names.insert(r.name.clone()) {
            cx.err(
                p,
                &f("name"),
                format!("another [[pull]] in this file is also named `{}`", r.name),
                "give each pull job of a partner its own name",
            );
        }

        let endpoint = pull_endpoint(cx, env, &f("endpoint"), &r.endpoint, p);
        let dir = remote_dir(cx, p, &f("dir"), r.dir.as_deref().unwrap_or("."));

        let pattern = r.pattern.clone().unwrap_or_else(|| "*".into());
        if pattern.is_empty() || pattern.contains('/') || pattern.chars().any(char::is_control) {
            cx.err(
                p,
                &f("pattern"),
                format!("`{pattern}` is not a file-name pattern"),
                "give a file name with * and ?, e.g. \"*.txt\" (no folders: use dir for that)",
            );
        }

        let tz = r.timezone.as_deref().unwrap_or(DEFAULT_TIMEZONE);
        let schedule = match jiff::tz::TimeZone::get(tz) {
            Err(_) => {
                cx.err(
                    p,
                    &f("timezone"),
                    format!("unknown time zone `{tz}`"),
                    format!("use an IANA time zone name such as \"{DEFAULT_TIMEZONE}\" or \"UTC\""),
                );
                None
            }
            Ok(_) => match Schedule::parse(&r.schedule, tz) {
                Err(e) => {
                    cx.err(
                        p,
                        &f("schedule"),
                        format!("`{}` is not a cron schedule: {e}", r.schedule),
                        "write 5 fields (min hour day month weekday) or 6 with seconds first, e.g. \"0 */15 * * * *\"",
                    );
                    None
                }
                Ok(s) if s.next_after(jiff::Timestamp::now()).is_none() => {
                    cx.err(
                        p,
                        &f("schedule"),
                        format!("`{}` never runs (no matching time ahead)", r.schedule),
                        "check the day and month fields, e.g. 30 February never comes",
                    );
                    None
                }
                Ok(s) => Some(s),
            },
        };

        let stable = int_in(
            cx,
            p,
            &f("stable_seconds"),
            r.stable_seconds,
            0,
            MAX_STABLE_SECONDS,
            DEFAULT_STABLE_SECONDS,
        );
        let done_marker = match r.done_marker.as_deref().map(str::trim) {
            None => None,
            Some(m) if m.is_empty() || m.contains('/') || m.chars().any(char::is_control) => {
                cx.err(
                    p,
                    &f("done_marker"),
                    format!("`{m}` is not a file-name suffix"),
                    "give the suffix the partner appends, e.g. \".done\", or leave the field out",
                );
                None
            }
            Some(m) => Some(m.to_string()),
        };

        let after = after_action(
            cx,
            p,
            &f("after"),
            &f("move_to"),
            r.after,
            r.move_to.as_deref(),
        );
        let after_refused = after_action(
            cx,
            p,
            &f("after_refused"),
            &f("refused_move_to"),
            r.after_refused.unwrap_or(RawAfter::Keep),
            r.refused_move_to.as_deref(),
        );
        let rejection_notes = r
            .rejection_notes
            .as_deref()
            .and_then(|d| remote_dir(cx, p, &f("rejection_notes"), d));
        if let Some(d) = &dir {
            for (action, field) in [(&after, "move_to"), (&after_refused, "refused_move_to")] {
                if let Some(AfterAction::Move(to)) = action
                    && to == d
                {
                    cx.err(
                        p,
                        &f(field),
                        format!("`{to}` is the folder being pulled from"),
                        "move files to a different folder, e.g. \"processed\"",
                    );
                }
            }
            if rejection_notes.as_ref() == Some(d) {
                cx.err(
                    p,
                    &f("rejection_notes"),
                    format!("`{d}` is the folder being pulled from"),
                    "put notes in a folder of their own, e.g. \"rejected\"",
                );
            }
        }

        let jitter = int_in(
            cx,
            p,
            &f("jitter_seconds"),
            r.jitter_seconds,
            0,
            MAX_JITTER_SECONDS,
            DEFAULT_JITTER_SECONDS,
        );
        let attempts = int_in(
            cx,
            p,
            &f("attempts"),
            r.attempts,
            1,
            MAX_ATTEMPTS,
            DEFAULT_ATTEMPTS,
        );
        let d = env.defaults;
        let initial = int_in(
            cx,
            p,
            &f("retry_initial_seconds"),
            r.retry_initial_seconds,
            1,
            MAX_RETRY_SECONDS,
            u32::try_from(d.retry_initial.as_secs()).unwrap_or(u32::MAX),
        );
        let max = int_in(
            cx,
            p,
            &f("retry_max_seconds"),
            r.retry_max_seconds,
            1,
            MAX_RETRY_SECONDS,
            u32::try_from(d.retry_max.as_secs()).unwrap_or(u32::MAX),
        );
        if max < initial {
            cx.err(
                p,
                &f("retry_max_seconds"),
                format!("retry_max_seconds ({max}) is below retry_initial_seconds ({initial})"),
                "make retry_max_seconds at least retry_initial_seconds",
            );
        }
        let timeout = int_in(
            cx,
            p,
            &f("timeout_seconds"),
            r.timeout_seconds,
            1,
            MAX_TIMEOUT_SECONDS,
            DEFAULT_TIMEOUT_SECONDS,
        );

        if p.0.len() != before {
            continue; // reported; this job never reaches a Config
        }
        let (Some(endpoint), Some(dir), Some(schedule), Some(after), Some(after_refused)) =
            (endpoint, dir, schedule, after, after_refused)
        else {
            continue;
        };
        let secs = |n: u32| Duration::from_secs(u64::from(n));
        jobs.push(PullJob {
            id: format!("{partner_id}/{}", r.name),
            name: r.name.clone(),
            endpoint,
            dir,
            pattern,
            schedule,
            stable: secs(stable),
            done_marker,
            after,
            after_refused,
            rejection_notes,
            catch_up: r.catch_up.unwrap_or(true),
            jitter: secs(jitter),
            attempts,
            retry_initial: secs(initial),
            retry_max: secs(max),
            timeout: secs(timeout),
        });
    }
    jobs
}

/// Pulls against the rest of the configuration: a local pull folder must not be (or overlap)
/// a folder sluss itself delivers into, or its own data (spool, downloads, archive): sluss
/// would take its own output back in, or take files out from under the pipeline.
pub(super) fn cross_check(partners: &[(&Partner, &Path)], data_dir: &Path, p: &mut Problems) {
    let mut own: Vec<(String, PathBuf)> = vec![("data_dir".into(), data_dir.to_path_buf())];
    for (o, _) in partners {
        #[allow(irrefutable_let_patterns)] // more endpoint kinds are coming
        if let Endpoint::Local { path } = &o.delivery.endpoint
            && !path.as_os_str().is_empty()
        {
            own.push((
                format!("the delivery folder of partner `{}`", o.id),
                path.clone(),
            ));
        }
    }
    for (partner, file) in partners {
        for (i, job) in partner.pulls.iter().enumerate() {
            #[allow(irrefutable_let_patterns)]
            let Endpoint::Local { path } = &job.endpoint else {
                continue;
            };
            for (what, dir) in &own {
                // A folder of its own inside data_dir (e.g. var/bank-inbox) is fine.
                let bad = if what == "data_dir" {
                    path == dir
                        || dir.starts_with(path)
                        || ["spool", "download", "archive", "locks"]
                            .iter()
                            .any(|sub| path.starts_with(dir.join(sub)))
                } else {
                    path.starts_with(dir) || dir.starts_with(path)
                };
                if bad {
                    p.0.push(super::ConfigError {
                        file: file.to_path_buf(),
                        line: None,
                        field: format!("pull[{i}].endpoint.path"),
                        message: format!(
                            "{} overlaps {what} ({}): sluss would take its own files",
                            path.display(),
                            dir.display()
                        ),
                        fix: "pull from a folder of its own that only the partner writes, e.g. \"var/bank-inbox\"".into(),
                    });
                    break;
                }
            }
        }
    }
}

fn after_action(
    cx: &FileCx<'_, '_>,
    p: &mut Problems,
    field: &str,
    to_field: &str,
    after: RawAfter,
    to: Option<&str>,
) -> Option<AfterAction> {
    match (after, to) {
        (RawAfter::Move, None) => {
            cx.err(
                p,
                field,
                "\"move\" needs the folder to move files to",
                format!("add {} = \"processed\" (a remote folder)", last(to_field)),
            );
            None
        }
        (RawAfter::Move, Some(t)) => remote_dir(cx, p, to_field, t).map(AfterAction::Move),
        (other, Some(_)) => {
            cx.err(
                p,
                to_field,
                format!(
                    "`{}` is only used when `{}` = \"move\"",
                    last(to_field),
                    last(field)
                ),
                format!(
                    "set `{}` = \"move\", or remove `{}`",
                    last(field),
                    last(to_field)
                ),
            );
            Some(match other {
                RawAfter::Delete => AfterAction::Delete,
                _ => AfterAction::Keep,
            })
        }
        (RawAfter::Delete, None) => Some(AfterAction::Delete),
        (RawAfter::Keep, None) => Some(AfterAction::Keep),
    }
}

fn last(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.txt", "a.txt"));
        assert!(
            !glob_match("*.txt", ".txt"),
            "hidden files need a dot pattern"
        );
        assert!(glob_match(".*", ".hidden"));
        assert!(!glob_match("*.txt", "a.txt.part"));
        assert!(glob_match("LB??.*", "LB01.dat"));
        assert!(!glob_match("LB??.*", "LB1.dat"));
        assert!(glob_match("*", "anything at all"));
        assert!(glob_match("a*b*c", "aXXbYYbZc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("åäö*", "åäö-fil"));
        assert!(!glob_match("", "x"));
        // Hostile input: many stars against a long non-matching name finishes quickly.
        let name = "a".repeat(5000);
        assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &name));
    }

    #[test]
    fn schedules_parse_with_and_without_seconds() {
        assert!(Schedule::parse("*/30 * * * * *", "Europe/Stockholm").is_ok());
        assert!(Schedule::parse("30 2 * * *", "UTC").is_ok());
        assert!(Schedule::parse("61 * * * *", "UTC").is_err());
        assert!(
            Schedule::parse("* * * * *", "Europe/Stockolm")
                .unwrap_err()
                .contains("unknown time zone")
        );
    }
}
