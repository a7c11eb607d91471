//! Raw → validated. Reads `sluss.toml` and every `jobs.d/*.toml`, checks each file on its
//! own, then checks the partners against each other (one routing key claimed twice, a
//! reference to a partner that does not exist, two partners delivering into one folder).
//! Every problem is collected; nothing stops at the first. This code only reads files:
//! it never creates, changes or deletes one.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::raw::{self, SpannedDoc};
use super::{
    Archive, CharsetPolicy, Config, ConfigError, ConfigErrors, Defaults, Delivery, Endpoint,
    KeyError, Loaded, LogConfig, LogFormat, MAIN_FILE, Partner, PendingKey, PendingKeyKind, Role,
    RoutingKeys, SealKey, SealPolicy, bankgiro,
};

/// Defaults of `sluss.toml` when a field is left out.
const DEFAULT_DATA_DIR: &str = "var";
const DEFAULT_KEYS_DIR: &str = "keys";
const DEFAULT_JOBS_DIR: &str = "jobs.d";
const DEFAULT_DUPLICATE_WINDOW_DAYS: u32 = 30;
const DEFAULT_DELIVERY_ATTEMPTS: u32 = 10;
const DEFAULT_RETRY_INITIAL_SECONDS: u32 = 30;
const DEFAULT_RETRY_MAX_SECONDS: u32 = 3600;
const DEFAULT_RETENTION_DAYS: u32 = 90;
/// Default delivered-file name; `{id}` keeps names unique.
pub const DEFAULT_NAME_TEMPLATE: &str = "{partner}-{kind}-{date}-{id}.dat";

/// Ten years: longer than any payment can be scheduled ahead; more is a typo.
const MAX_DUPLICATE_WINDOW_DAYS: i64 = 3660;
/// Beyond this many attempts a delivery is failing for a reason retries will not fix.
const MAX_DELIVERY_ATTEMPTS: i64 = 1000;
/// A day: a longer pause between attempts hides an outage from the operator.
const MAX_RETRY_SECONDS: i64 = 86_400;
/// A century: anything longer is a typo (bookkeeping law asks for seven to ten years).
const MAX_RETENTION_DAYS: i64 = 36_600;
/// Partner ids name folders and files: `[a-z0-9][a-z0-9-]{0,31}`.
const MAX_ID_LEN: usize = 32;
/// Config files are small; a bigger one is not a config file (and is not read whole).
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Placeholders a `name_template` may use.
const NAME_PLACEHOLDERS: &[&str] = &["partner", "kind", "date", "time", "id", "original"];

const SEE_DOCS: &str = "see docs/jobs.md for the fields and their values";

/// The problems found so far.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<ConfigError>);

impl Problems {
    fn push(
        &mut self,
        file: &Path,
        line: Option<usize>,
        field: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(ConfigError {
            file: file.to_path_buf(),
            line,
            field: field.to_string(),
            message: message.into(),
            fix: fix.into(),
        });
    }
}

/// One file being checked: where problems are reported and how fields map to lines.
pub(super) struct FileCx<'a, 'd> {
    file: &'a Path,
    doc: &'a SpannedDoc<'d>,
}

impl FileCx<'_, '_> {
    pub(super) fn line(&self, field: &str) -> Option<usize> {
        self.doc.line_of(field)
    }

    pub(super) fn err(
        &self,
        p: &mut Problems,
        field: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        p.push(self.file, self.line(field), field, message, fix);
    }
}

/// Where something a partner claims was written, to point at both sides of a conflict.
#[derive(Clone)]
struct Claim {
    /// The partner making the claim; for `payments.bank`, the bank referred to.
    partner: String,
    file: PathBuf,
    line: Option<usize>,
    field: String,
}

/// What one partner file contributes to the cross-file checks.
struct Draft {
    partner: Partner,
    /// The file as shown to the operator.
    shown: PathBuf,
    bank_ref: Option<Claim>,
    delivery_field: String,
    delivery_line: Option<usize>,
    claims: Vec<(String, String, Claim)>, // (what, canonical value, where)
}

pub(super) fn load(dir: &Path) -> Result<Loaded, ConfigErrors> {
    let mut p = Problems::default();
    let abs_dir = match std::fs::canonicalize(dir) {
        Ok(d) if d.is_dir() => d,
        Ok(_) => {
            p.push(
                dir,
                None,
                "",
                "the config directory is not a directory",
                "pass --config DIR naming the directory that holds sluss.toml",
            );
            return Err(ConfigErrors(p.0));
        }
        Err(e) => {
            p.push(
                dir,
                None,
                "",
                format!("cannot open the config directory: {e}"),
                "pass --config DIR naming the directory that holds sluss.toml",
            );
            return Err(ConfigErrors(p.0));
        }
    };

    // sluss.toml: on any problem, carry on with defaults so the partners are checked too.
    let main_file = dir.join(MAIN_FILE);
    let main_text = read_text(&main_file, &mut p);
    let main_raw = main_text
        .as_deref()
        .and_then(|text| parse_file::<raw::RawMain>(&main_file, text, &mut p));
    let (data_dir, keys_dir, jobs_dir_raw, defaults, log) = match &main_raw {
        Some((doc, r)) => {
            let cx = FileCx {
                file: &main_file,
                doc,
            };
            main_settings(&cx, r, &abs_dir, &mut p)
        }
        None => (
            abs_dir.join(DEFAULT_DATA_DIR),
            abs_dir.join(DEFAULT_KEYS_DIR),
            DEFAULT_JOBS_DIR.to_string(),
            Defaults {
                duplicate_window: days(DEFAULT_DUPLICATE_WINDOW_DAYS),
                delivery_attempts: DEFAULT_DELIVERY_ATTEMPTS,
                retry_initial: Duration::from_secs(DEFAULT_RETRY_INITIAL_SECONDS.into()),
                retry_max: Duration::from_secs(DEFAULT_RETRY_MAX_SECONDS.into()),
            },
            LogConfig {
                format: LogFormat::Plain,
            },
        ),
    };
    let jobs_dir = resolve(&abs_dir, &jobs_dir_raw);
    let jobs_shown = dir.join(&jobs_dir_raw);
    let mut pending = Vec::new();
    let sftp = sftp_server(
        &main_file,
        main_raw.as_ref(),
        &abs_dir,
        &keys_dir,
        &mut pending,
        &mut p,
    );

    let env = Env {
        dir: &abs_dir,
        data_dir: &data_dir,
        keys_dir: &keys_dir,
        jobs_dir: &jobs_dir,
        defaults: &defaults,
    };

    // Every partner file, each checked on its own.
    let mut drafts = Vec::new();
    let mut broken = BTreeSet::new(); // ids (file stems) of files that did not parse
    for (stem, shown) in partner_files(&jobs_dir, &jobs_shown, &main_file, &mut p) {
        let Some(text) = read_text(&shown, &mut p) else {
            broken.insert(stem);
            continue;
        };
        let Some((doc, raw)) = parse_file::<raw::RawPartnerFile>(&shown, &text, &mut p) else {
            broken.insert(stem);
            continue;
        };
        let cx = FileCx {
            file: &shown,
            doc: &doc,
        };
        let source = jobs_dir.join(format!("{stem}.toml"));
        drafts.push(partner(&cx, &env, &stem, source, raw, &mut pending, &mut p));
    }

    cross_check(&drafts, &broken, &env, &mut p);
    sftp_usernames(&drafts, &mut p);

    if !p.0.is_empty() {
        return Err(ConfigErrors(p.0));
    }
    let partners = drafts
        .into_iter()
        .map(|d| (d.partner.id.clone(), d.partner))
        .collect();
    Ok(Loaded {
        config: Config {
            dir: abs_dir,
            data_dir,
            keys_dir,
            jobs_dir,
            defaults,
            log,
            partners,
            sftp,
        },
        pending_keys: pending,
    })
}

/// Daemon-wide settings the partner checks need.
pub(super) struct Env<'a> {
    dir: &'a Path,
    data_dir: &'a Path,
    keys_dir: &'a Path,
    jobs_dir: &'a Path,
    pub(super) defaults: &'a Defaults,
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 86_400)
}

fn read_text(file: &Path, p: &mut Problems) -> Option<String> {
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let fix = if file.file_name().is_some_and(|n| n == MAIN_FILE) {
                "create it (the shipped sluss.toml is a starting point), or pass --config DIR naming the directory that holds it"
            } else {
                "check the path"
            };
            p.push(file, None, "", "file not found", fix);
            return None;
        }
        Err(e) => {
            p.push(
                file,
                None,
                "",
                format!("cannot read: {e}"),
                "make it readable by the sluss user",
            );
            return None;
        }
    };
    if meta.len() > MAX_FILE_BYTES {
        p.push(
            file,
            None,
            "",
            format!("{} bytes is too big for a config file", meta.len()),
            format!("config files are under {MAX_FILE_BYTES} bytes; is this the right file?"),
        );
        return None;
    }
    match std::fs::read_to_string(file) {
        Ok(t) => Some(t),
        Err(e) => {
            p.push(
                file,
                None,
                "",
                format!("cannot read: {e}"),
                "make it a readable UTF-8 text file",
            );
            None
        }
    }
}

/// TOML syntax, then serde (types and unknown fields). One problem per file at most:
/// serde stops at the first, and later fields make no sense until it is fixed.
fn parse_file<'t, T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &'t str,
    p: &mut Problems,
) -> Option<(SpannedDoc<'t>, T)> {
    let doc = match SpannedDoc::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let line = e.span().map(|s| raw::line_at(text, s.start));
            p.push(
                file,
                line,
                "",
                format!("not valid TOML: {}", e.message().trim()),
                "correct the TOML syntax at that line",
            );
            return None;
        }
    };
    match toml::from_str::<T>(text) {
        Ok(v) => Some((doc, v)),
        Err(e) => {
            let message = e.message().trim().to_string();
            let (line, mut field) = match e.span() {
                Some(s) => (Some(doc.line_at(s.start)), doc.path_at(s.start)),
                None => (None, String::new()),
            };
            let unknown = backticked_after(&message, "unknown field `");
            let missing = backticked_after(&message, "missing field `");
            let fix = if let Some(u) = &unknown {
                if !field.ends_with(u.as_str()) {
                    field = join_field(&field, u);
                }
                format!("remove `{u}` or correct its spelling; {SEE_DOCS}")
            } else if let Some(m) = &missing {
                field = join_field(&field, m);
                format!("add `{m}`; {SEE_DOCS}")
            } else {
                SEE_DOCS.to_string()
            };
            p.push(file, line, &field, message, fix);
            None
        }
    }
}

fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

fn join_field(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

/// The `jobs.d/*.toml` files, sorted, as (stem, path to show). Editor leftovers and
/// other non-`.toml` files are skipped.
fn partner_files(
    jobs_dir: &Path,
    shown: &Path,
    main_file: &Path,
    p: &mut Problems,
) -> Vec<(String, PathBuf)> {
    let entries = match std::fs::read_dir(jobs_dir) {
        Ok(e) => e,
        Err(e) => {
            p.push(
                main_file,
                None,
                "jobs_dir",
                format!(
                    "cannot read the partner directory {}: {e}",
                    jobs_dir.display()
                ),
                "create it, or set jobs_dir to the directory holding the partner files",
            );
            return Vec::new();
        }
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        if let Some(stem) = name.strip_suffix(".toml") {
            files.push((stem.to_string(), shown.join(name)));
        }
    }
    files.sort();
    files
}

pub(super) fn int_in(
    cx: &FileCx<'_, '_>,
    p: &mut Problems,
    field: &str,
    value: Option<i64>,
    min: i64,
    max: i64,
    default: u32,
) -> u32 {
    match value {
        None => default,
        Some(v) if (min..=max).contains(&v) => u32::try_from(v).unwrap_or(default),
        Some(v) => {
            cx.err(
                p,
                field,
                format!("{v} is out of range"),
                format!("use a whole number from {min} to {max}"),
            );
            default
        }
    }
}

type MainSettings = (PathBuf, PathBuf, String, Defaults, LogConfig);

fn main_settings(
    cx: &FileCx<'_, '_>,
    r: &raw::RawMain,
    dir: &Path,
    p: &mut Problems,
) -> MainSettings {
    let mut dir_field = |field: &str, v: &Option<String>, default: &str| -> String {
        match v {
            Some(s) if s.trim().is_empty() => {
                cx.err(
                    p,
                    field,
                    "is empty",
                    format!("give a path, e.g. \"{default}\", or leave the field out"),
                );
                default.to_string()
            }
            Some(s) => s.clone(),
            None => default.to_string(),
        }
    };
    let data_dir = resolve(dir, &dir_field("data_dir", &r.data_dir, DEFAULT_DATA_DIR));
    let keys_dir = resolve(dir, &dir_field("keys_dir", &r.keys_dir, DEFAULT_KEYS_DIR));
    let jobs_dir = dir_field("jobs_dir", &r.jobs_dir, DEFAULT_JOBS_DIR);

    let d = &r.defaults;
    let window = int_in(
        cx,
        p,
        "defaults.duplicate_window_days",
        d.duplicate_window_days,
        1,
        MAX_DUPLICATE_WINDOW_DAYS,
        DEFAULT_DUPLICATE_WINDOW_DAYS,
    );
    let attempts = int_in(
        cx,
        p,
        "defaults.delivery_attempts",
        d.delivery_attempts,
        1,
        MAX_DELIVERY_ATTEMPTS,
        DEFAULT_DELIVERY_ATTEMPTS,
    );
    let initial = int_in(
        cx,
        p,
        "defaults.retry_initial_seconds",
        d.retry_initial_seconds,
        1,
        MAX_RETRY_SECONDS,
        DEFAULT_RETRY_INITIAL_SECONDS,
    );
    let max = int_in(
        cx,
        p,
        "defaults.retry_max_seconds",
        d.retry_max_seconds,
        1,
        MAX_RETRY_SECONDS,
        DEFAULT_RETRY_MAX_SECONDS,
    );
    if max < initial {
        cx.err(
            p,
            "defaults.retry_max_seconds",
            format!("retry_max_seconds ({max}) is below retry_initial_seconds ({initial})"),
            "make retry_max_seconds at least retry_initial_seconds",
        );
    }
    let format = match r.log.format {
        None | Some(raw::RawLogFormat::Plain) => LogFormat::Plain,
        Some(raw::RawLogFormat::Json) => LogFormat::Json,
    };
    (
        data_dir,
        keys_dir,
        jobs_dir,
        Defaults {
            duplicate_window: days(window),
            delivery_attempts: attempts,
            retry_initial: Duration::from_secs(initial.into()),
            retry_max: Duration::from_secs(max.into()),
        },
        LogConfig { format },
    )
}

/// `base.join(s)`, with `.` and `..` folded away lexically (the path may not exist yet).
fn resolve(base: &Path, s: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(s).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ID_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Upper case, without spaces or hyphens: the form accounts are compared in.
pub(super) fn normalise_account(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

/// IBAN check: country letters, two check digits, mod 97 of the rearranged number is 1.
fn iban_valid(iban: &str) -> bool {
    let b = iban.as_bytes();
    if !(15..=34).contains(&b.len())
        || !b.iter().all(u8::is_ascii_alphanumeric)
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
    {
        return false;
    }
    let mut rem: u32 = 0;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// Domestic (non-IBAN) account: clearing number and account number, digits only.
fn domestic_account_valid(acct: &str) -> bool {
    (6..=20).contains(&acct.len()) && acct.bytes().all(|c| c.is_ascii_digit())
}

fn check_name_template(t: &str) -> Result<(), String> {
    if t.contains(['/', '\\', '\0']) {
        return Err("contains a path separator; it names a file inside the delivery folder".into());
    }
    if t.starts_with('.') {
        return Err(
            "starts with `.`; such names are hidden and look like files still being written".into(),
        );
    }
    let mut rest = t;
    let mut has_id = false;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err("has a `}` without its `{`".into());
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err("has a `{` without its `}`".into());
        };
        let name = &after[..close];
        if !NAME_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "has an unknown placeholder `{{{name}}}`; known: {}",
                NAME_PLACEHOLDERS
                    .iter()
                    .map(|n| format!("{{{n}}}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        has_id |= name == "id";
        rest = &after[close + 1..];
    }
    if !has_id {
        return Err("does not contain `{id}`, so two files could get the same name".into());
    }
    Ok(())
}

fn partner(
    cx: &FileCx<'_, '_>,
    env: &Env<'_>,
    stem: &str,
    source_file: PathBuf,
    r: raw::RawPartnerFile,
    pending: &mut Vec<PendingKey>,
    p: &mut Problems,
) -> Draft {
    let rp = &r.partner;
    let id = rp.id.clone();
    if !valid_id(&id) {
        cx.err(
            p,
            "partner.id",
            format!("`{id}` is not a valid partner id"),
            "use 1 to 32 of a-z, 0-9 and `-`, starting with a letter or digit",
        );
    } else if id != stem {
        cx.err(
            p,
            "partner.id",
            format!("id `{id}` does not match the file name `{stem}.toml`"),
            format!("rename the file to {id}.toml or set id = \"{stem}\""),
        );
    }
    if rp.name.trim().is_empty() {
        cx.err(
            p,
            "partner.name",
            "is empty",
            "give the partner's name, e.g. \"Demo Kund AB\"",
        );
    }
    let org_number = rp.org_number.as_deref().and_then(|o| {
        let digits: String = o.chars().filter(|c| *c != '-').collect();
        let shaped = o.len() == 10 || (o.len() == 11 && o.as_bytes()[6] == b'-');
        if shaped && digits.len() == 10 && digits.bytes().all(|c| c.is_ascii_digit()) {
            Some(format!("{}-{}", &digits[..6], &digits[6..]))
        } else {
            cx.err(
                p,
                "partner.org_number",
                format!("`{o}` is not an organisation number"),
                "write it as NNNNNN-NNNN, e.g. \"556677-8899\", or leave the field out",
            );
            None
        }
    });
    let role = match rp.role {
        raw::RawRole::Customer => Role::Customer,
        raw::RawRole::Bank => Role::Bank,
    };

    let (routing, claims) = routing_keys(cx, role, &id, r.routing.as_ref(), p);
    let seal = seal_policy(cx, env, role, &id, r.seal.as_ref(), pending, p);
    let claim = |field: &str| Claim {
        partner: id.clone(),
        file: cx.file.to_path_buf(),
        line: cx.line(field),
        field: field.to_string(),
    };

    // Payments.
    let mut bank_ref = None;
    let mut duplicate_window = env.defaults.duplicate_window;
    match (&r.payments, role) {
        (Some(_), Role::Bank) => cx.err(
            p,
            "payments",
            "a bank partner sends no payment orders",
            "remove the [payments] table from this bank's file",
        ),
        (None, Role::Customer) => cx.err(
            p,
            "payments.bank",
            "a customer needs the bank its payment orders go to",
            "add [payments] with bank = \"<id of a bank partner>\"",
        ),
        (None, Role::Bank) => {}
        (Some(rp), Role::Customer) => {
            match &rp.bank {
                Some(b) => {
                    bank_ref = Some(Claim {
                        partner: b.clone(),
                        ..claim("payments.bank")
                    })
                }
                None => cx.err(
                    p,
                    "payments.bank",
                    "a customer needs the bank its payment orders go to",
                    "add bank = \"<id of a bank partner>\" to [payments]",
                ),
            }
            if let Some(v) = rp.duplicate_window_days {
                duplicate_window = days(int_in(
                    cx,
                    p,
                    "payments.duplicate_window_days",
                    Some(v),
                    1,
                    MAX_DUPLICATE_WINDOW_DAYS,
                    DEFAULT_DUPLICATE_WINDOW_DAYS,
                ));
            }
        }
    }

    // Delivery.
    let rd = r.delivery.as_ref();
    let mut delivery_field = "delivery.endpoint".to_string();
    let endpoint = match rd.and_then(|d| d.endpoint.as_ref()) {
        Some(t) => {
            delivery_field = match t.get("type").and_then(|v| v.as_str()) {
                Some("local") => "delivery.endpoint.path".to_string(),
                _ => "delivery.endpoint.dir".to_string(),
            };
            endpoint(cx, env, "delivery.endpoint", t, p)
        }
        None if role == Role::Customer => Some(Endpoint::Local {
            path: env.data_dir.join("download").join(&id),
        }),
        None => {
            cx.err(
                p,
                "delivery.endpoint",
                "a bank partner needs an endpoint: where payment orders are delivered",
                "add [delivery] with endpoint = { type = \"local\", path = \"var/bank-outbox\" }",
            );
            None
        }
    };
    let name_template = rd
        .and_then(|d| d.name_template.clone())
        .unwrap_or_else(|| DEFAULT_NAME_TEMPLATE.to_string());
    if let Err(why) = check_name_template(&name_template) {
        cx.err(
            p,
            "delivery.name_template",
            format!("`{name_template}` {why}"),
            format!("use e.g. \"{DEFAULT_NAME_TEMPLATE}\"; {{id}} is required"),
        );
    }
    let attempts = int_in(
        cx,
        p,
        "delivery.attempts",
        rd.and_then(|d| d.attempts),
        1,
        MAX_DELIVERY_ATTEMPTS,
        env.defaults.delivery_attempts,
    );

    let archive = archive_policy(cx, r.archive.as_ref(), p);
    let pulls = super::pull::validate(cx, env, &id, &r.pull, p);
    let sftp = r
        .sftp
        .as_ref()
        .map(|rs| sftp_account(cx, env, role, &id, rs, pending, p));

    let delivery_line = cx.line(&delivery_field);
    Draft {
        shown: cx.file.to_path_buf(),
        partner: Partner {
            id: id.clone(),
            name: rp.name.trim().to_string(),
            role,
            org_number,
            routing,
            seal,
            bank: bank_ref.as_ref().map(|c| c.partner.clone()),
            duplicate_window,
            delivery: Delivery {
                // An empty path only when the endpoint had a problem, which is reported:
                // this draft then never reaches a Config.
                endpoint: endpoint.unwrap_or(Endpoint::Local {
                    path: PathBuf::new(),
                }),
                name_template,
                attempts,
            },
            archive,
            pulls,
            sftp,
            source_file,
        },
        bank_ref,
        delivery_field,
        delivery_line,
        claims,
    }
}

/// `[routing]`: every key checked and put in canonical form, with where it was written.
fn routing_keys(
    cx: &FileCx<'_, '_>,
    role: Role,
    id: &str,
    section: Option<&raw::RawRouting>,
    p: &mut Problems,
) -> (RoutingKeys, Vec<(String, String, Claim)>) {
    let mut claims = Vec::new();
    let claim = |field: &str| Claim {
        partner: id.to_string(),
        file: cx.file.to_path_buf(),
        line: cx.line(field),
        field: field.to_string(),
    };
    let mut routing = RoutingKeys::default();
    if let Some(rr) = section {
        if role == Role::Bank {
            cx.err(
                p,
                "routing",
                "a bank partner has no routing keys: they route bank files to customers",
                "move these keys to the customer they belong to and remove [routing] here",
            );
        }
        for (i, bg) in rr.bankgiro.iter().enumerate() {
            let field = format!("routing.bankgiro[{i}]");
            match bankgiro::canonical(bg) {
                Some(c) if routing.bankgiro.contains(&c) => {
                    cx.err(p, &field, format!("bankgiro {c} is listed twice"), "list it once");
                }
                Some(c) => {
                    claims.push(("bankgiro".to_string(), c.clone(), claim(&field)));
                    routing.bankgiro.push(c);
                }
                None => cx.err(
                    p,
                    &field,
                    format!("`{bg}` is not a valid bankgiro number (wrong check digit or not 7-8 digits)"),
                    "copy the number again from the customer's agreement, e.g. \"991-2346\"",
                ),
            }
        }
        if let Some(n) = &rr.customer_number {
            let n = n.trim();
            if n.len() == 6 && n.bytes().all(|c| c.is_ascii_digit()) {
                claims.push((
                    "customer number".to_string(),
                    n.to_string(),
                    claim("routing.customer_number"),
                ));
                routing.customer_number = Some(n.to_string());
            } else {
                cx.err(
                    p,
                    "routing.customer_number",
                    format!("`{n}` is not a Bankgirot customer number"),
                    "write the 6 digits Bankgirot assigned, e.g. \"123456\", or leave the field out",
                );
            }
        }
        for (i, a) in rr.accounts.iter().enumerate() {
            let field = format!("routing.accounts[{i}]");
            let norm = normalise_account(a);
            let is_iban = norm.bytes().take(2).all(|c| c.is_ascii_alphabetic());
            let ok = if is_iban {
                iban_valid(&norm)
            } else {
                domestic_account_valid(&norm)
            };
            if !ok {
                let what = if is_iban {
                    "is not a valid IBAN (length or check digits wrong)"
                } else {
                    "is not an account number (clearing and account number, digits only)"
                };
                cx.err(
                    p,
                    &field,
                    format!("`{a}` {what}"),
                    "copy it again from the bank agreement, e.g. \"SE45 5000 0000 0583 9825 7466\"",
                );
            } else if routing.accounts.contains(&norm) {
                cx.err(
                    p,
                    &field,
                    format!("account {norm} is listed twice"),
                    "list it once",
                );
            } else {
                claims.push(("account".to_string(), norm.clone(), claim(&field)));
                routing.accounts.push(norm);
            }
        }
    }
    if role == Role::Customer
        && section.is_none_or(|rr| {
            rr.bankgiro.is_empty() && rr.customer_number.is_none() && rr.accounts.is_empty()
        })
    {
        cx.err(
            p,
            "routing",
            "a customer needs at least one routing key, or bank returns cannot reach it",
            "add [routing] with bankgiro = [\"…\"], customer_number or accounts",
        );
    }

    (routing, claims)
}

/// `[seal]`: keys loaded (or noted as pending) and permission-checked.
fn seal_policy(
    cx: &FileCx<'_, '_>,
    env: &Env<'_>,
    role: Role,
    id: &str,
    section: Option<&raw::RawSeal>,
    pending: &mut Vec<PendingKey>,
    p: &mut Problems,
) -> SealPolicy {
    let mut seal = SealPolicy {
        required: false,
        keys: Vec::new(),
        key_files: Vec::new(),
        charset: CharsetPolicy::Reject,
    };
    match (section, role) {
        (Some(_), Role::Bank) => cx.err(
            p,
            "seal",
            "a bank partner has no seal policy: seals are checked on customers' payment orders",
            "remove the [seal] table from this bank's file",
        ),
        (None, Role::Customer) => cx.err(
            p,
            "seal",
            "a customer must say whether its payment orders must be sealed",
            "add [seal] with required = true and key_files = [\"keys/<id>.seal\"] (or required = false)",
        ),
        (None, Role::Bank) => {}
        (Some(rs), Role::Customer) => {
            seal.required = rs.required;
            seal.charset = rs.charset.unwrap_or(CharsetPolicy::Reject);
            if rs.required && rs.key_files.is_empty() {
                cx.err(
                    p,
                    "seal.key_files",
                    "seals are required but no key file is given",
                    "add key_files = [\"keys/<id>.seal\"] with the customer's seal key, or set required = false",
                );
            }
            for (i, kf) in rs.key_files.iter().enumerate() {
                let field = format!("seal.key_files[{i}]");
                if kf.trim().is_empty() {
                    cx.err(p, &field, "is empty", "give the key file's path, e.g. \"keys/demo.seal\"");
                    continue;
                }
                let path = resolve(env.dir, kf);
                if seal.key_files.contains(&path) {
                    cx.err(p, &field, format!("{} is listed twice", path.display()), "list it once");
                    continue;
                }
                seal.key_files.push(path.clone());
                match load_key(&path) {
                    KeyState::Loaded(k) => seal.keys.push(k),
                    KeyState::Missing if rs.generate_missing_keys => pending.push(PendingKey {
                        partner: id.to_string(),
                        path,
                        kind: PendingKeyKind::SealKey,
                    }),
                    KeyState::Missing => cx.err(
                        p,
                        &field,
                        format!("seal key file {} does not exist", path.display()),
                        "put the customer's seal key there (owner-only, chmod 600), make one with `sluss keygen seal`, or correct the path",
                    ),
                    KeyState::TooOpen(mode) => cx.err(
                        p,
                        &field,
                        format!(
                            "seal key file {} is readable or writable by group or others (mode {mode:04o})",
                            path.display()
                        ),
                        format!("chmod 600 {}", path.display()),
                    ),
                    KeyState::Bad(e) => cx.err(
                        p,
                        &field,
                        e.to_string(),
                        "replace it with a valid seal key file; `sluss keygen seal` writes one",
                    ),
                }
            }
        }
    }

    seal
}

/// `[archive]`.
fn archive_policy(
    cx: &FileCx<'_, '_>,
    section: Option<&raw::RawArchive>,
    p: &mut Problems,
) -> Archive {
    match section {
        None => Archive::Delete,
        Some(ra) => match ra.mode {
            raw::RawArchiveMode::Delete => {
                if !ra.recipients.is_empty() {
                    cx.err(
                        p,
                        "archive.recipients",
                        "recipients are only used with mode = \"age\"",
                        "set mode = \"age\" to keep encrypted copies, or remove recipients",
                    );
                }
                if ra.retention_days.is_some() {
                    cx.err(
                        p,
                        "archive.retention_days",
                        "retention_days is only used with mode = \"age\" (mode \"delete\" keeps nothing)",
                        "set mode = \"age\" to keep encrypted copies, or remove retention_days",
                    );
                }
                Archive::Delete
            }
            raw::RawArchiveMode::Age => {
                if ra.recipients.is_empty() {
                    cx.err(
                        p,
                        "archive.recipients",
                        "mode = \"age\" needs at least one recipient",
                        "add recipients = [\"age1…\"] (the public key from `age-keygen`)",
                    );
                }
                for (i, rcp) in ra.recipients.iter().enumerate() {
                    if age::x25519::Recipient::from_str(rcp.trim()).is_err() {
                        cx.err(
                            p,
                            &format!("archive.recipients[{i}]"),
                            format!("`{rcp}` is not an age X25519 recipient"),
                            "copy the public key line from `age-keygen` output; it starts with age1",
                        );
                    }
                }
                Archive::Age {
                    recipients: ra.recipients.iter().map(|s| s.trim().to_string()).collect(),
                    retention_days: int_in(
                        cx,
                        p,
                        "archive.retention_days",
                        ra.retention_days,
                        1,
                        MAX_RETENTION_DAYS,
                        DEFAULT_RETENTION_DAYS,
                    ),
                }
            }
        },
    }
}

/// A pull job's `endpoint` table (`field` is e.g. `pull[0].endpoint`): the same rules as a
/// delivery endpoint, with problems reported under the pull's field.
pub(super) fn pull_endpoint(
    cx: &FileCx<'_, '_>,
    env: &Env<'_>,
    field: &str,
    t: &toml::Table,
    p: &mut Problems,
) -> Option<Endpoint> {
    endpoint(cx, env, field, t, p)
}

/// `[sftp]` of `sluss.toml` (see [`super::sftp`]).
fn sftp_server(
    main_file: &Path,
    main_raw: Option<&(SpannedDoc<'_>, raw::RawMain)>,
    dir: &Path,
    keys_dir: &Path,
    pending: &mut Vec<PendingKey>,
    p: &mut Problems,
) -> Option<super::sftp::SftpServer> {
    let (doc, r) = main_raw?;
    let rs = r.sftp.as_ref()?;
    let cx = FileCx {
        file: main_file,
        doc,
    };
    let (s, issues) = super::sftp::server(rs, keys_dir, &|f| resolve(dir, f), pending);
    for i in issues {
        cx.err(p, &i.field, i.message, i.fix);
    }
    Some(s)
}

/// A customer's `[sftp]` account (see [`super::sftp`]).
fn sftp_account(
    cx: &FileCx<'_, '_>,
    env: &Env<'_>,
    role: Role,
    id: &str,
    rs: &super::sftp::RawSftpAccount,
    pending: &mut Vec<PendingKey>,
    p: &mut Problems,
) -> super::sftp::SftpAccount {
    if role == Role::Bank {
        cx.err(
            p,
            "sftp",
            "a bank partner has no account on sluss's SFTP server",
            "remove the [sftp] table from this bank's file",
        );
    }
    let (a, issues) = super::sftp::account(rs, id, &|f| resolve(env.dir, f), pending);
    for i in issues {
        cx.err(p, &i.field, i.message, i.fix);
    }
    a
}

/// Two partners may not share an SFTP username.
fn sftp_usernames(drafts: &[Draft], p: &mut Problems) {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for d in drafts {
        let Some(a) = &d.partner.sftp else { continue };
        if let Some(first) = seen.insert(&a.username, &d.partner.id) {
            p.push(
                &d.shown,
                None,
                "sftp.username",
                format!(
                    "SFTP username `{}` is also used by partner {first}",
                    a.username
                ),
                "give each partner its own username",
            );
        }
    }
}

enum KeyState {
    Loaded(SealKey),
    Missing,
    TooOpen(u32),
    Bad(KeyError),
}

/// Check a key file's existence and mode here (to give the fix in config's words), then
/// let the seal module read it.
fn load_key(path: &Path) -> KeyState {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return KeyState::Missing,
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            return KeyState::TooOpen(m.permissions().mode() & 0o777);
        }
        _ => {}
    }
    match SealKey::load(path) {
        Ok(k) => KeyState::Loaded(k),
        Err(e) => KeyState::Bad(e),
    }
}

/// `endpoint = { type = "local" | "sftp" | "ftps", … }` at `field` (e.g. `delivery.endpoint`)
/// → the validated endpoint. Remote kinds are checked in [`super::endpoint`].
fn endpoint(
    cx: &FileCx<'_, '_>,
    env: &Env<'_>,
    field: &str,
    t: &toml::Table,
    p: &mut Problems,
) -> Option<Endpoint> {
    let type_field = format!("{field}.type");
    let kind = match t.get("type") {
        Some(toml::Value::String(s)) => s.as_str(),
        Some(_) => {
            cx.err(
                p,
                &type_field,
                "must be a string",
                "write type = \"local\", \"sftp\" or \"ftps\"",
            );
            return None;
        }
        None => {
            cx.err(
                p,
                &type_field,
                "the endpoint has no type",
                "add type = \"local\", \"sftp\" or \"ftps\"",
            );
            return None;
        }
    };
    let remote = match kind {
        "local" => None,
        "sftp" => Some(super::endpoint::sftp(t, env.dir, &resolve).map(Endpoint::Sftp)),
        "ftps" => Some(super::endpoint::ftps(t, env.dir, &resolve).map(Endpoint::Ftps)),
        other => {
            cx.err(
                p,
                &type_field,
                format!("unknown endpoint type \"{other}\""),
                "use type = \"local\", \"sftp\" or \"ftps\"",
            );
            return None;
        }
    };
    if let Some(r) = remote {
        return match r {
            Ok(e) => Some(e),
            Err(issues) => {
                for i in issues {
                    cx.err(p, &join_field(field, &i.field), i.message, i.fix);
                }
                None
            }
        };
    }
    let path_field = format!("{field}.path");
    let mut ok = true;
    for key in t.keys().filter(|k| *k != "type" && *k != "path") {
        cx.err(
            p,
            &format!("{field}.{key}"),
            format!("unknown field `{key}` for a local endpoint"),
            format!("remove `{key}`; a local endpoint has only type and path"),
        );
        ok = false;
    }
    let path = match t.get("path") {
        Some(toml::Value::String(s)) if !s.trim().is_empty() => resolve(env.dir, s),
        Some(_) => {
            cx.err(
                p,
                &path_field,
                "must be a non-empty string",
                "give the folder, e.g. \"var/bank-outbox\"",
            );
            return None;
        }
        None => {
            cx.err(
                p,
                &path_field,
                "a local endpoint needs a path",
                "add path = \"var/bank-outbox\" (relative to the config directory)",
            );
            return None;
        }
    };
    // Delivering into the daemon's own folders would mix payment files with config,
    // keys or the spool.
    for (what, dir) in [
        ("the config directory", env.dir),
        ("keys_dir", env.keys_dir),
        ("jobs_dir", env.jobs_dir),
        ("data_dir", env.data_dir),
    ] {
        let bad = path == dir
            || dir.starts_with(&path)
            || (what != "data_dir" && what != "the config directory" && path.starts_with(dir));
        if bad {
            cx.err(
                p,
                &path_field,
                format!("{} overlaps {what} ({})", path.display(), dir.display()),
                "deliver into a folder of its own, e.g. \"var/bank-outbox\"",
            );
            ok = false;
        }
    }
    ok.then_some(Endpoint::Local { path })
}

/// Where an endpoint delivers, for "two partners deliver into one folder": local folders
/// compare as paths, remote ones as `kind://host:port` plus the folder.
fn delivery_place(e: &Endpoint) -> Option<(String, PathBuf)> {
    match e {
        Endpoint::Local { path } if path.as_os_str().is_empty() => None,
        Endpoint::Local { path } => Some((String::new(), path.clone())),
        Endpoint::Sftp(s) => Some((
            format!("sftp://{}:{}", s.host, s.port),
            PathBuf::from(&s.dir),
        )),
        Endpoint::Ftps(f) => Some((
            format!("ftps://{}:{}", f.host, f.port),
            PathBuf::from(&f.dir),
        )),
    }
}

fn cross_check(drafts: &[Draft], broken: &BTreeSet<String>, env: &Env<'_>, p: &mut Problems) {
    let partners: Vec<(&Partner, &Path)> = drafts
        .iter()
        .map(|d| (&d.partner, d.shown.as_path()))
        .collect();
    super::pull::cross_check(&partners, env.data_dir, p);
    let by_id: BTreeMap<&str, &Draft> = drafts.iter().map(|d| (d.partner.id.as_str(), d)).collect();
    let at = |c: &Claim| match c.line {
        Some(l) => format!("{}:{l}", c.file.display()),
        None => c.file.display().to_string(),
    };

    // Two files with one id (possible only when one of them also misnames its file).
    let mut seen: BTreeMap<&str, &Draft> = BTreeMap::new();
    for d in drafts {
        if let Some(first) = seen.insert(&d.partner.id, d) {
            p.push(
                &d.shown,
                None,
                "partner.id",
                format!(
                    "partner id `{}` is also used by {}",
                    d.partner.id,
                    first.shown.display()
                ),
                "give each partner its own id, equal to its file name",
            );
        }
    }

    // Routing keys claimed twice.
    let mut owners: BTreeMap<(&str, &str), &Claim> = BTreeMap::new();
    for d in drafts {
        for (what, value, c) in &d.claims {
            match owners.get(&(what.as_str(), value.as_str())) {
                Some(first) if first.partner != c.partner => p.push(
                    &c.file,
                    c.line,
                    &c.field,
                    format!("{what} {value} is also claimed by partner `{}` ({})", first.partner, at(first)),
                    format!("each {what} routes to one partner only: remove it from one of the two files"),
                ),
                Some(_) => {}
                None => {
                    owners.insert((what, value), c);
                }
            }
        }
    }

    // References to banks.
    for d in drafts {
        let Some(c) = &d.bank_ref else { continue };
        match by_id.get(c.partner.as_str()) {
            Some(b) if b.partner.role == Role::Bank => {}
            Some(b) => p.push(
                &c.file,
                c.line,
                &c.field,
                format!("`{}` is a {}, not a bank", c.partner, b.partner.role),
                "name a partner whose role is \"bank\"",
            ),
            // Its file is broken and already reported; a second error would mislead.
            None if broken.contains(&c.partner) => {}
            None => {
                let banks: Vec<&str> = drafts
                    .iter()
                    .filter(|b| b.partner.role == Role::Bank)
                    .map(|b| b.partner.id.as_str())
                    .collect();
                p.push(
                    &c.file,
                    c.line,
                    &c.field,
                    format!(
                        "there is no partner `{}` in {}",
                        c.partner,
                        env.jobs_dir.display()
                    ),
                    if banks.is_empty() {
                        format!(
                            "add jobs.d/{}.toml for the bank, or correct the name",
                            c.partner
                        )
                    } else {
                        format!("correct the name; bank partners: {}", banks.join(", "))
                    },
                );
            }
        }
    }

    // Two partners delivering into one folder (or one inside the other).
    for (i, a) in drafts.iter().enumerate() {
        let Some((server_a, pa)) = delivery_place(&a.partner.delivery.endpoint) else {
            continue;
        };
        for b in &drafts[..i] {
            let Some((server_b, pb)) = delivery_place(&b.partner.delivery.endpoint) else {
                continue;
            };
            if server_a == server_b && (pa.starts_with(&pb) || pb.starts_with(&pa)) {
                let how = if pa == pb {
                    "the same folder as"
                } else {
                    "a folder overlapping that of"
                };
                p.push(
                    &a.shown,
                    a.delivery_line,
                    &a.delivery_field,
                    format!(
                        "{server_a}{} is {how} partner `{}` ({}); their files would mix",
                        pa.display(),
                        b.partner.id,
                        b.shown.display()
                    ),
                    "give each partner a delivery folder of its own",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn iban_check_digits() {
        assert!(iban_valid("SE4550000000058398257466"));
        assert!(iban_valid("GB82WEST12345698765432"));
        assert!(!iban_valid("SE4550000000058398257467"));
        assert!(!iban_valid("SE45"));
        assert!(!iban_valid("SE45500000000583982574ÅÄ"));
        assert_eq!(normalise_account("se45 5000-0000"), "SE4550000000");
    }

    #[test]
    fn name_templates() {
        assert!(check_name_template(DEFAULT_NAME_TEMPLATE).is_ok());
        assert!(check_name_template("{original}.{id}").is_ok());
        assert!(
            check_name_template("{partner}.dat")
                .unwrap_err()
                .contains("{id}")
        );
        assert!(check_name_template("x/{id}").is_err());
        assert!(check_name_template(".{id}").is_err());
        assert!(check_name_template("{id").is_err());
        assert!(check_name_template("{id}}").is_err());
        assert!(
            check_name_template("{ID}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
    }

    #[test]
    fn partner_ids() {
        assert!(valid_id("demo-bank"));
        assert!(valid_id("0a"));
        assert!(!valid_id("-demo"));
        assert!(!valid_id("Demo"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"a".repeat(MAX_ID_LEN + 1)));
    }

    #[test]
    fn resolve_folds_dots_and_keeps_absolute_paths() {
        let base = Path::new("/etc/sluss");
        assert_eq!(
            resolve(base, "./var/../var/x"),
            Path::new("/etc/sluss/var/x")
        );
        assert_eq!(resolve(base, "/srv/out"), Path::new("/srv/out"));
    }

    #[test]
    fn field_paths_map_to_lines_and_back() {
        let text = "[seal]\nrequired = true\nkey_files = [\n  \"a\",\n  \"b\",\n]\n\n[delivery]\nendpoint = { type = \"local\" }\n";
        let doc = SpannedDoc::parse(text).unwrap();
        assert_eq!(doc.line_of("seal.required"), Some(2));
        assert_eq!(doc.line_of("seal.key_files[1]"), Some(5));
        assert_eq!(
            doc.line_of("seal.charset"),
            Some(1),
            "missing field: its table"
        );
        assert_eq!(doc.line_of("delivery.endpoint.type"), Some(9));
        assert_eq!(doc.line_of("archive"), None);
        let at = |needle: &str| doc.path_at(text.find(needle).unwrap());
        assert_eq!(at("true"), "seal.required");
        assert_eq!(at("\"b\""), "seal.key_files[1]");
        assert_eq!(at("\"local\""), "delivery.endpoint.type");
    }

    proptest! {
        #[test]
        fn any_text_is_a_problem_or_a_value_never_a_panic(text in "\\PC{0,300}") {
            let mut p = Problems::default();
            let _ = parse_file::<raw::RawPartnerFile>(Path::new("x.toml"), &text, &mut p);
            let _ = parse_file::<raw::RawMain>(Path::new("sluss.toml"), &text, &mut p);
        }

        #[test]
        fn table_like_text_never_panics(text in "(\\[[a-z]{1,8}\\]\n|[a-z_]{1,10} = (1|\"x\"|\\[\"a\"\\]|\\{ a = 1 \\})\n){0,12}") {
            let mut p = Problems::default();
            let _ = parse_file::<raw::RawPartnerFile>(Path::new("x.toml"), &text, &mut p);
            if let Ok(doc) = SpannedDoc::parse(&text) {
                for i in 0..=text.len() {
                    let _ = doc.path_at(i);
                }
            }
        }
    }
}
