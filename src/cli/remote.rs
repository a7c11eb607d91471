//! `sluss remote test|ls PARTNER`: the operator's first tool when a partner changes
//! something. `test` connects to the partner's endpoint exactly as the daemon would (host
//! key or certificate check, login, binary mode), lists the folder, and prints what it found
//! or the exact failure. `ls` lists a folder. The hidden `get` fetches files (benchmarks,
//! checks by hand). This file owns wording and exit codes only; the work is in
//! `sluss::remote`. It never prints a secret and never overwrites a local file.

use anyhow::{Context, bail};
use sluss::config::{self, Endpoint, Partner};
use sluss::remote::{self, RemoteEntry, RemoteSession};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct RemoteArgs {
    #[command(subcommand)]
    cmd: RemoteCmd,
}

#[derive(clap::Subcommand, Debug)]
enum RemoteCmd {
    /// Connect to the partner's delivery endpoint, check its host key or certificate, log
    /// in, list the folder; print what was found or exactly what failed (exit 1).
    Test {
        partner: String,
        #[arg(long, value_name = "DIR", default_value = ".")]
        config: PathBuf,
    },
    /// List a folder on the partner's endpoint (default: the configured folder).
    Ls {
        partner: String,
        dir: Option<String>,
        #[arg(long, value_name = "DIR", default_value = ".")]
        config: PathBuf,
    },
    /// Download PATH (with -r: every file in folder PATH) into FILE (with -r: a folder).
    #[command(hide = true)]
    Get {
        partner: String,
        path: String,
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        #[arg(short = 'r')]
        recursive: bool,
        #[arg(long, value_name = "DIR", default_value = ".")]
        config: PathBuf,
    },
}

pub fn run(a: RemoteArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    match a.cmd {
        RemoteCmd::Test { partner, config } => rt.block_on(test(&config, &partner)),
        RemoteCmd::Ls {
            partner,
            dir,
            config,
        } => rt.block_on(ls(&config, &partner, dir)),
        RemoteCmd::Get {
            partner,
            path,
            output,
            recursive,
            config,
        } => rt.block_on(get(&config, &partner, &path, &output, recursive)),
    }
}

/// The configuration (all of it must be valid, as for the daemon) and the partner's endpoint.
fn endpoint_of(dir: &Path, partner: &str) -> anyhow::Result<(Partner, Endpoint)> {
    let loaded = match config::load(dir) {
        Ok(l) => l,
        Err(e) => bail!("the configuration has problems; fix them first (`sluss check`):\n{e}"),
    };
    let mut cfg = loaded.config;
    let Some(p) = cfg.partners.remove(partner) else {
        let known: Vec<&str> = cfg.partners.keys().map(String::as_str).collect();
        bail!(
            "there is no partner `{partner}` in {}; partners: {}",
            cfg.jobs_dir.display(),
            known.join(", ")
        );
    };
    let e = p.delivery.endpoint.clone();
    Ok((p, e))
}

/// The folder to list: the configured one for remote endpoints, the root for local ones.
fn default_dir(e: &Endpoint) -> String {
    remote::remote_dir(e)
        .map(|(d, _)| d.to_string())
        .unwrap_or_else(|| "/".into())
}

fn print_entries(entries: &[RemoteEntry]) {
    for e in entries {
        let when = e
            .mtime
            .and_then(|t| jiff::Timestamp::from_second(t).ok())
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into());
        let name = if e.is_dir {
            format!("{}/", e.name)
        } else {
            e.name.clone()
        };
        println!("  {:>12}  {when}  {name}", e.size);
    }
}

async fn test(dir: &Path, partner: &str) -> anyhow::Result<ExitCode> {
    let (p, e) = endpoint_of(dir, partner)?;
    let ep = remote::open(&e);
    println!(
        "partner {} ({}): delivery endpoint {}",
        p.id,
        p.name,
        ep.describe()
    );
    match &e {
        Endpoint::Sftp(s) => println!("  host key pinned: {}", s.host_key_fingerprint),
        Endpoint::Ftps(f) => match &f.trust {
            config::FtpsTrust::CaFile(ca) => {
                println!("  certificate verified against {}", ca.display())
            }
            config::FtpsTrust::Fingerprint(h) => println!("  certificate pinned: SHA256:{h}"),
        },
        Endpoint::Local { .. } => {}
    }
    let t0 = Instant::now();
    let mut s = match ep.connect().await {
        Ok(s) => s,
        Err(err) => {
            println!("FAILED to connect: {err}");
            return Ok(ExitCode::from(1));
        }
    };
    println!(
        "connected and logged in ({:.2} s){}",
        t0.elapsed().as_secs_f64(),
        match &e {
            Endpoint::Sftp(_) => ": host key matches the pin",
            Endpoint::Ftps(_) => ": certificate trusted, binary mode set",
            Endpoint::Local { .. } => "",
        }
    );
    let folder = default_dir(&e);
    let code = match s.list(&folder).await {
        Ok(entries) => {
            println!("{folder}: {} entries", entries.len());
            print_entries(&entries);
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("FAILED to list {folder}: {err}");
            ExitCode::from(1)
        }
    };
    let _ = s.close().await;
    Ok(code)
}

async fn ls(dir: &Path, partner: &str, folder: Option<String>) -> anyhow::Result<ExitCode> {
    let (_, e) = endpoint_of(dir, partner)?;
    let ep = remote::open(&e);
    let mut s = ep.connect().await?;
    let folder = folder.unwrap_or_else(|| default_dir(&e));
    let entries = s.list(&folder).await?;
    print_entries(&entries);
    let _ = s.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Files fetched per `get_many` call by `get -r` (bounds the local files open at once).
const GET_BATCH: usize = 64;

fn create(out: &Path) -> anyhow::Result<std::fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist)", out.display()))
}

async fn get_one(s: &mut Box<dyn RemoteSession>, path: &str, out: &Path) -> anyhow::Result<u64> {
    let mut f = create(out)?;
    let n = s.get(path, &mut f).await?;
    f.sync_all()
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(n)
}

async fn get(
    dir: &Path,
    partner: &str,
    path: &str,
    out: &Path,
    recursive: bool,
) -> anyhow::Result<ExitCode> {
    let (_, e) = endpoint_of(dir, partner)?;
    let ep = remote::open(&e);
    let mut s = ep.connect().await?;
    let t0 = Instant::now();
    let (files, bytes) = if recursive {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create folder {}", out.display()))?;
        let mut bytes = 0;
        let mut files = 0;
        let names: Vec<String> = s
            .list(path)
            .await?
            .into_iter()
            .filter(|e| !e.is_dir)
            .map(|e| e.name)
            .collect();
        // Batches bound the open local files; within a batch the endpoint may overlap them.
        for batch in names.chunks(GET_BATCH) {
            let mut items = Vec::with_capacity(batch.len());
            for name in batch {
                items.push((remote::join(path, name), create(&out.join(name))?));
            }
            let results = s.get_many(&mut items).await?;
            for ((rp, f), r) in items.iter().zip(results) {
                bytes += r?;
                f.sync_all()
                    .with_context(|| format!("cannot write the copy of {rp}"))?;
                files += 1;
            }
        }
        (files, bytes)
    } else {
        (1, get_one(&mut s, path, out).await?)
    };
    let secs = t0.elapsed().as_secs_f64();
    let _ = s.close().await;
    eprintln!(
        "{files} files, {bytes} bytes in {secs:.3} s ({:.1} MB/s, {:.0} files/s)",
        bytes as f64 / secs / 1e6,
        files as f64 / secs
    );
    Ok(ExitCode::SUCCESS)
}
