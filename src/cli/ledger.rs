//! `sluss ledger …` and `sluss archive …`: the operator's view of files and deliveries, and
//! the recorded operator decisions (release with four eyes, retry, hold, resolve).

use anyhow::Context;
use sluss::ledger::{ListFilter, ReleaseOutcome, State};
use sluss::pipeline::{Pipeline, os_user};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub cmd: LedgerCmd,
}

#[derive(clap::Args, Debug)]
pub struct ConfigDir {
    /// Directory holding sluss.toml and jobs.d/.
    #[arg(long, default_value = ".")]
    pub config: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct Decision {
    #[command(flatten)]
    pub dir: ConfigDir,
    /// Ledger id of the file.
    pub id: i64,
    /// Why (recorded in the audit trail).
    #[arg(long)]
    pub reason: String,
    /// Who decides (default: the OS user).
    #[arg(long)]
    pub operator: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum LedgerCmd {
    /// List files, newest first.
    List {
        #[command(flatten)]
        dir: ConfigDir,
        #[arg(long)]
        partner: Option<String>,
        /// received, quarantined, queued, delivering, delivered, in-doubt, held, failed
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// A file's whole history, deliveries and verdicts.
    Show {
        #[command(flatten)]
        dir: ConfigDir,
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Write out the copy sluss holds of a file (quarantined, held, or not yet delivered):
    /// from spool/files, or from the ledger for small files. Byte-identical to what was
    /// received. After delivery the copy is gone (see `sluss archive decrypt`).
    Export {
        #[command(flatten)]
        dir: ConfigDir,
        id: i64,
        /// Write here (created, never overwritten) instead of standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Release a quarantined file toward its destination (needs two different operators).
    Release(Decision),
    /// Deliver a held, failed or in-doubt file again (after checking the recipient lacks it).
    Retry(Decision),
    /// Stop a file from being delivered until an operator retries it.
    Hold(Decision),
    /// Record that an in-doubt or held delivery did arrive (e.g. the bank confirmed it).
    Resolve(Decision),
    /// Check the tamper-evident audit chain; with --head, against a head kept elsewhere.
    VerifyAudit {
        #[command(flatten)]
        dir: ConfigDir,
        /// A head printed earlier (SEQ:HASH), e.g. from the log's audit.head lines.
        #[arg(long)]
        head: Option<String>,
    },
    /// Print the audit chain's current head (keep it outside this machine).
    Head {
        #[command(flatten)]
        dir: ConfigDir,
    },
}

#[derive(clap::Args, Debug)]
pub struct ArchiveArgs {
    #[command(subcommand)]
    pub cmd: ArchiveCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum ArchiveCmd {
    /// Restore the archived copy of a file with the partner's age identity.
    Decrypt {
        #[command(flatten)]
        dir: ConfigDir,
        /// age identity file (AGE-SECRET-KEY-1…), kept off the server.
        #[arg(long)]
        identity: PathBuf,
        /// Write here instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        id: i64,
    },
}

fn open(dir: &ConfigDir) -> anyhow::Result<Pipeline> {
    let config = super::serve::load_config(&dir.config)?;
    Pipeline::open(config).context("opening the ledger")
}

pub fn run(a: LedgerArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        LedgerCmd::List {
            dir,
            partner,
            state,
            limit,
            json,
        } => {
            let state = match state {
                Some(s) => Some(State::parse(&s).with_context(|| {
                    format!(
                        "unknown state {s:?}; states are received, quarantined, queued, \
                         delivering, delivered, in-doubt, held, failed"
                    )
                })?),
                None => None,
            };
            let p = open(&dir)?;
            let rows = p.ledger().list(&ListFilter {
                partner,
                state,
                limit,
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:>6}  {:<12} {:<18} {:<12} {:<24} NAME / REASON",
                    "ID", "PARTNER", "KIND", "STATE", "RECEIVED"
                );
                for r in rows {
                    println!(
                        "{:>6}  {:<12} {:<18} {:<12} {:<24} {}{}",
                        r.id,
                        r.partner,
                        r.kind,
                        r.state.as_str(),
                        r.received_at,
                        r.original_name,
                        r.reason.map(|x| format!(" — {x}")).unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LedgerCmd::Show { dir, id, json } => {
            let p = open(&dir)?;
            let l = p.ledger();
            let Some(f) = l.get(id)? else {
                eprintln!("no file with id {id} in the ledger");
                return Ok(ExitCode::from(1));
            };
            let deliveries = l.deliveries(id)?;
            let history = l.history(id)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "file": f, "deliveries": deliveries, "history": history
                    }))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!("file {}  {}", f.id, f.original_name);
            println!("  partner   {} (via {})", f.partner, f.source);
            println!("  kind      {}", f.kind);
            println!("  state     {}", f.state.as_str());
            if let Some(r) = &f.reason {
                println!("  reason    {r}");
            }
            println!("  size      {} bytes", f.size);
            println!("  sha256    {}", f.sha256);
            println!("  payload   {}", f.payload_sha256);
            println!(
                "  seal      {}{}",
                f.seal_verdict,
                f.seal_kvv
                    .as_deref()
                    .map(|k| format!(" (KVV {k})"))
                    .unwrap_or_default()
            );
            println!("  routing   {}", f.routing);
            if f.in_ledger() {
                let held = if l.body(f.id)?.is_some() {
                    format!(
                        "in the ledger (small file; `sluss ledger export {}` writes it out)",
                        f.id
                    )
                } else {
                    "no longer (delivered and archived)".to_string()
                };
                println!("  held      {held}");
            } else {
                println!("  spooled   {}", f.spool_path);
            }
            println!("  received  {}", f.received_at);
            for d in &deliveries {
                println!(
                    "  delivery {} → {} ({}) as {}: {} after {} attempt(s){}",
                    d.id,
                    d.destination,
                    d.endpoint,
                    d.final_name,
                    d.state.as_str(),
                    d.attempts,
                    d.last_error
                        .as_deref()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                );
            }
            println!("  history:");
            for h in &history {
                println!(
                    "    #{} {} {} {} → {}{}: {}",
                    h.seq,
                    h.at,
                    h.event,
                    h.from_state.map_or("-", |s| s.as_str()),
                    h.to_state,
                    h.operator
                        .as_deref()
                        .map(|o| format!(" by {o}"))
                        .unwrap_or_default(),
                    h.reason
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        LedgerCmd::Export { dir, id, output } => {
            let p = open(&dir)?;
            let rec = p
                .ledger()
                .get(id)?
                .with_context(|| format!("no file with id {id} in the ledger"))?;
            let contents = p.contents_of(&rec).map_err(|e| {
                anyhow::anyhow!(
                    "{e}; if it was archived encrypted, use `sluss archive decrypt {id} --identity FILE`"
                )
            })?;
            let mut src = contents
                .open()
                .with_context(|| format!("reading {}", contents.describe()))?;
            let mut out: Box<dyn std::io::Write> = match &output {
                Some(path) => Box::new(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(path)
                        .with_context(|| {
                            format!("creating {} (it must not exist yet)", path.display())
                        })?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            // Hash what is written: a damaged held copy must not pass for the received file.
            let mut hasher = sha2::Sha256::default();
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0u64;
            loop {
                let k = src.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                sha2::Digest::update(&mut hasher, &buf[..k]);
                out.write_all(&buf[..k])?;
                n += k as u64;
            }
            out.flush()?;
            drop(out);
            if let Some(path) = &output {
                std::fs::File::open(path)?.sync_all()?;
            }
            let sha = sluss::spool::hex_lower(&sha2::Digest::finalize(hasher));
            if n != rec.size || sha != rec.sha256 {
                anyhow::bail!(
                    "file {id}: the held copy has {n} bytes, sha256 {sha}, but the ledger \
                     records {} bytes, sha256 {}: it is damaged; do not use it",
                    rec.size,
                    rec.sha256
                );
            }
            eprintln!("exported file {id} ({n} bytes, sha256 {})", rec.sha256);
            Ok(ExitCode::SUCCESS)
        }
        LedgerCmd::Release(d) => decide(d, "release"),
        LedgerCmd::Retry(d) => decide(d, "retry"),
        LedgerCmd::Hold(d) => decide(d, "hold"),
        LedgerCmd::Resolve(d) => decide(d, "resolve"),
        LedgerCmd::VerifyAudit { dir, head } => {
            let p = open(&dir)?;
            let report = p.ledger().verify_audit(head.as_deref())?;
            if report.is_intact() {
                println!("{report}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{report}");
                Ok(ExitCode::from(1))
            }
        }
        LedgerCmd::Head { dir } => {
            let p = open(&dir)?;
            println!("{}", p.ledger().head()?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn decide(d: Decision, action: &str) -> anyhow::Result<ExitCode> {
    let operator = d.operator.clone().unwrap_or_else(os_user);
    if d.reason.trim().is_empty() {
        anyhow::bail!("--reason must say why (it is recorded in the audit trail)");
    }
    let p = open(&d.dir)?;
    let result = {
        let mut l = p.ledger();
        match action {
            "release" => l
                .release_quarantined(d.id, &operator, &d.reason)
                .map(|o| match o {
                    ReleaseOutcome::NeedsSecondApproval => format!(
                        "file {}: release approved by {operator}; a second, different operator \
                         must also approve (four eyes) before it is delivered",
                        d.id
                    ),
                    ReleaseOutcome::Released => format!(
                        "file {}: released by two operators; queued for delivery",
                        d.id
                    ),
                }),
            "retry" => l
                .retry(d.id, &operator, &d.reason)
                .map(|()| format!("file {}: queued for delivery again by {operator}", d.id)),
            "hold" => l
                .hold(d.id, &operator, &d.reason)
                .map(|()| format!("file {}: held by {operator}", d.id)),
            _ => l
                .resolve_delivered(d.id, &operator, &d.reason)
                .map(|()| format!("file {}: recorded as delivered by {operator}", d.id)),
        }
    };
    if action == "release" || action == "retry" {
        // Released files get their destinations now (the daemon also does this at start).
        p.route_released().context("routing the released file")?;
    }
    match result {
        Ok(msg) => {
            tracing::info!(event = "operator.decision", file_id = d.id, operator = %operator, action, "{msg}");
            p.log_head();
            println!("{msg}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("sluss: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

pub fn run_archive(a: ArchiveArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        ArchiveCmd::Decrypt {
            dir,
            identity,
            output,
            id,
        } => {
            let p = open(&dir)?;
            let rec = p
                .ledger()
                .get(id)?
                .with_context(|| format!("no file with id {id} in the ledger"))?;
            let n = match output {
                Some(path) => {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    let n = sluss::pipeline::archive::decrypt_to(&p, &rec, &identity, &mut f)?;
                    f.sync_all()?;
                    n
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    let n = sluss::pipeline::archive::decrypt_to(&p, &rec, &identity, &mut out)?;
                    out.flush()?;
                    n
                }
            };
            eprintln!("restored file {id} ({n} bytes)");
            Ok(ExitCode::SUCCESS)
        }
    }
}
