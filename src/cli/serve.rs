//! `sluss serve` (the daemon) and `sluss ingest` (hand files to the pipeline from the shell).
//!
//! Both load and validate the whole configuration first, generate the key files the shipped
//! example marks as generated-at-first-start, and open the pipeline. `serve` then recovers
//! what a previous run left unfinished and runs one delivery worker per destination until
//! SIGTERM or SIGINT.

use anyhow::{Context, bail};
use sluss::config::{self, Config, PendingKey};
use sluss::pipeline::{Incoming, Outcome, Pipeline};
use sluss::seal::SealKey;
use sluss::spool;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Files per ingest transaction from the command line: amortises fsyncs and the commit
/// without holding too many files open at once.
const INGEST_CHUNK: usize = 64;
/// How often the daemon enforces archive retention.
/// (Also how often it looks for files released by operators from another process; the
/// release command routes them itself, so this only catches one interrupted in between.)
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// How often a listener that could not bind is tried again.
const SFTP_BIND_RETRY: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Directory holding sluss.toml and jobs.d/.
    #[arg(long, default_value = ".")]
    pub config: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// Directory holding sluss.toml and jobs.d/.
    #[arg(long, default_value = ".")]
    pub config: PathBuf,
    /// The partner the files come from (its id in jobs.d/).
    #[arg(long)]
    pub partner: String,
    /// How the files arrived, recorded in the ledger.
    #[arg(long, default_value = "cli")]
    pub source: String,
    /// Files to hand over (they are copied; your files are left untouched).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Load the configuration, creating first-start keys if the example asks for them.
/// Prints every configuration problem and fails if there is any.
pub fn load_config(dir: &Path) -> anyhow::Result<Arc<Config>> {
    let loaded = match config::load(dir) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            bail!(
                "the configuration in {} has {} problem(s); nothing was started",
                dir.display(),
                errors.0.len()
            );
        }
    };
    if loaded.pending_keys.is_empty() {
        return Ok(Arc::new(loaded.config));
    }
    for k in &loaded.pending_keys {
        generate_key(k)?;
    }
    let again = config::load(dir).map_err(|errors| {
        eprintln!("{errors}");
        anyhow::anyhow!("the configuration is still invalid after generating keys")
    })?;
    Ok(Arc::new(again.config))
}

fn generate_key(k: &PendingKey) -> anyhow::Result<()> {
    use sluss::config::PendingKeyKind;
    use sluss::sftpd::keys::{self, HostKeyKind};
    let host = |kind: HostKeyKind| -> anyhow::Result<()> {
        let fp = keys::generate_host_key(&k.path, kind)
            .with_context(|| format!("generating SSH host key {}", k.path.display()))?;
        tracing::warn!(
            event = "key.generated",
            path = %k.path.display(),
            fingerprint = %fp,
            "generated SSH host key {} ({fp}); clients see this fingerprint at first connection",
            k.path.display()
        );
        Ok(())
    };
    match k.kind {
        PendingKeyKind::SealKey => {}
        PendingKeyKind::SshHostEd25519 => return host(HostKeyKind::Ed25519),
        PendingKeyKind::SshHostRsa => return host(HostKeyKind::Rsa),
        PendingKeyKind::SshClientKey => {
            let private = keys::client_key_path(&k.path, &k.partner);
            let fp = keys::generate_client_key(&private, &k.path, &format!("{}@sluss", k.partner))
                .with_context(|| {
                    format!("generating the SFTP client key of partner {}", k.partner)
                })?;
            tracing::warn!(
                event = "key.generated",
                partner = %k.partner,
                path = %private.display(),
                fingerprint = %fp,
                "generated SFTP client key {} ({fp}) for partner {} and authorized it in {}",
                private.display(),
                k.partner,
                k.path.display()
            );
            return Ok(());
        }
    }
    let key = SealKey::generate();
    spool::write_new_file(
        &k.path,
        sluss::seal::write_key_file_contents(&key).as_bytes(),
        spool::MODE_SECRET,
    )
    .with_context(|| format!("generating the seal key for partner {}", k.partner))?;
    tracing::warn!(
        event = "key.generated",
        partner = %k.partner,
        path = %k.path.display(),
        kvv = %key.kvv(),
        "generated seal key {} for partner {} (KVV {}); give the customer this key over a \
         secure channel so they can seal their files",
        k.path.display(),
        k.partner,
        key.kvv()
    );
    Ok(())
}

pub fn run_ingest(a: IngestArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&a.config)?;
    let pipeline = Pipeline::open(config).context("opening the pipeline")?;
    let mut any_refused = false;
    for chunk in a.files.chunks(INGEST_CHUNK) {
        let mut incoming = Vec::with_capacity(chunk.len());
        let mut names = Vec::with_capacity(chunk.len());
        let mut opened = Vec::new();
        for path in chunk {
            match std::fs::File::open(path) {
                Ok(f) => {
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| path.display().to_string());
                    names.push(path.display().to_string());
                    incoming.push(Incoming::from_reader(name, f));
                    opened.push(path);
                }
                Err(e) => {
                    any_refused = true;
                    println!("not taken {}: cannot open it: {e}", path.display());
                }
            }
        }
        if incoming.is_empty() {
            continue;
        }
        let results = pipeline.ingest(&a.partner, &a.source, incoming)?;
        for (name, r) in names.iter().zip(results) {
            match r {
                Ok(Outcome::Accepted {
                    id,
                    kind,
                    destinations,
                }) => println!(
                    "accepted {name}: id {id}, {kind} → {}",
                    destinations.join(", ")
                ),
                Ok(Outcome::Refused { id, code, reason }) => {
                    any_refused = true;
                    println!("refused {name}: id {id}, {code}: {reason}");
                }
                Err(e) => {
                    any_refused = true;
                    println!("not taken {name}: {e}");
                }
            }
        }
    }
    Ok(if any_refused {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Run the SFTP server until `stopped`. A listener that cannot bind (port taken) does not
/// take the daemon down: deliveries of bank returns go on, the failure is an alert, and the
/// bind is retried.
async fn serve_sftp(pipeline: Arc<Pipeline>, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    loop {
        match sluss::sftpd::Server::bind(pipeline.clone()).await {
            Ok(server) => {
                if let Err(e) = server
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await
                {
                    tracing::error!(event = "alert.sftp_failed", "the SFTP server stopped: {e}");
                }
                return;
            }
            Err(e) => {
                tracing::error!(
                    event = "alert.sftp_unavailable",
                    "SFTP server not started: {e}; customers cannot upload until it is; retrying in {}s",
                    SFTP_BIND_RETRY.as_secs()
                );
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(SFTP_BIND_RETRY) => {}
                }
            }
        }
    }
}

pub fn run_serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&a.config)?;
    let pipeline = Arc::new(Pipeline::open(config.clone()).context("opening the pipeline")?);
    tracing::info!(
        event = "daemon.starting",
        data_dir = %config.data_dir.display(),
        partners = config.partners.len(),
        "sluss {} starting: {} partner(s), data in {}",
        env!("CARGO_PKG_VERSION"),
        config.partners.len(),
        config.data_dir.display()
    );
    let orphans = pipeline.sweep_orphans().context("sweeping the spool")?;
    if orphans > 0 {
        tracing::warn!(
            event = "spool.orphans",
            count = orphans,
            "{orphans} spooled file(s) had no ledger record (a crash before they were \
             acknowledged; their senders still have them); moved to spool/orphans"
        );
    }
    let report = pipeline
        .recover()
        .context("recovering unfinished deliveries")?;
    if report.total() > 0 {
        tracing::warn!(
            event = "daemon.recovered",
            delivered = report.delivered,
            requeued = report.requeued,
            held = report.held,
            "recovered interrupted deliveries: {} found delivered, {} to redo, {} held for an operator",
            report.delivered,
            report.requeued,
            report.held
        );
    }
    let released = pipeline
        .route_released()
        .context("routing released files")?;
    if released > 0 {
        tracing::info!(
            event = "daemon.released",
            count = released,
            "{released} released file(s) queued for delivery"
        );
    }
    pipeline.log_head();

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for id in config.partners.keys() {
        let p = pipeline.clone();
        let stop = stop.clone();
        let id = id.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("deliver-{id}"))
                .spawn(move || p.run_worker(&id, &stop))?,
        );
    }
    {
        let p = pipeline.clone();
        let stop = stop.clone();
        workers.push(
            std::thread::Builder::new()
                .name("retention".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        sluss::pipeline::archive::enforce_retention(&p);
                        let until = std::time::Instant::now() + RETENTION_EVERY;
                        while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(250));
                        }
                    }
                })?,
        );
    }
    // Multi-threaded: SFTP sessions encrypt on both cores; ingests run on blocking threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (stop_sftp, stopped) = tokio::sync::oneshot::channel::<()>();
        let sftp = config
            .sftp
            .as_ref()
            .map(|_| tokio::spawn(serve_sftp(pipeline.clone(), stopped)));
        tracing::info!(
            event = "daemon.ready",
            "sluss is running; stop with SIGTERM or Ctrl-C"
        );
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        let _ = stop_sftp.send(());
        if let Some(t) = sftp {
            let _ = t.await;
        }
        anyhow::Ok(())
    });
    if let Err(e) = served {
        stop.store(true, Ordering::Relaxed);
        pipeline.ring();
        for w in workers {
            let _ = w.join();
        }
        return Err(e);
    }
    tracing::info!(
        event = "daemon.stopping",
        "stopping: finishing batches in progress"
    );
    stop.store(true, Ordering::Relaxed);
    pipeline.ring();
    for w in workers {
        let _ = w.join();
    }
    pipeline.log_head();
    tracing::info!(event = "daemon.stopped", "sluss stopped");
    Ok(ExitCode::SUCCESS)
}
