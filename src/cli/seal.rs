//! `sluss seal`, `sluss verify`, `sluss keygen`: the command-line faces of the seal module.
//! This file owns argument parsing, exit codes and wording; every check happens in
//! `sluss::seal`. It must never print a key except where the operator asked for one
//! (`keygen seal` without `-o`), and never overwrite an existing key or output file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use sluss::seal::{self, SealKey, SealVerdict};

/// How many unprotected-byte positions the verify warning lists.
const WARN_POSITIONS: usize = 5;
/// Output buffer for `sluss seal`: large writes, few syscalls.
const WRITE_BUFFER: usize = 256 * 1024;

#[derive(clap::Args, Debug)]
pub struct SealArgs {
    /// Seal key file (32 hex characters, mode 0600).
    #[arg(long, value_name = "F")]
    key_file: PathBuf,
    /// Sealing date, YYMMDD (default: today in Europe/Stockholm).
    #[arg(long, value_name = "YYMMDD")]
    date: Option<String>,
    /// Write the sealed file here (must not exist) instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: Option<PathBuf>,
    /// The file to seal; its bytes and line endings are kept unchanged.
    file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Seal key file; give it several times to accept any of several keys (rotation).
    #[arg(long, value_name = "F", required = true)]
    key_file: Vec<PathBuf>,
    /// The sealed file.
    file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    #[command(subcommand)]
    kind: KeygenKind,
}

#[derive(clap::Subcommand, Debug)]
enum KeygenKind {
    /// A random 128-bit Bankgirot seal key.
    Seal {
        /// Write the key to this file (mode 0600; refuses to overwrite). Without it the hex
        /// key goes to standard output and its KVV to standard error.
        #[arg(short = 'o', long = "output", value_name = "F")]
        output: Option<PathBuf>,
    },
    /// An ed25519 key for logging in to partners' SFTP servers: writes the private key
    /// (OpenSSH format, mode 0600) and FILE.pub, and prints the public line and fingerprint
    /// to give the partner.
    Client {
        /// The private key file to write, e.g. keys/acme.id_ed25519 (refuses to overwrite).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Comment in the public key line (default: sluss@HOSTNAME).
        #[arg(long)]
        comment: Option<String>,
    },
}

pub fn run_seal(a: SealArgs) -> anyhow::Result<ExitCode> {
    let key = SealKey::load(&a.key_file)?;
    let date = match a.date {
        Some(d) => d,
        None => today_stockholm()?,
    };
    let input = File::open(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
    match &a.output {
        None => {
            let stdout = io::stdout().lock();
            seal::seal_stream(
                &key,
                &date,
                input,
                BufWriter::with_capacity(WRITE_BUFFER, stdout),
            )
            .with_context(|| format!("cannot seal {}", a.file.display()))?;
        }
        Some(out) => {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .with_context(|| {
                    format!(
                        "cannot create {} (it must not exist already; remove it or choose another -o)",
                        out.display()
                    )
                })?;
            let mut w = BufWriter::with_capacity(WRITE_BUFFER, file);
            let result = seal::seal_stream(&key, &date, input, &mut w)
                .map_err(anyhow::Error::from)
                .and_then(|()| {
                    let f = w.into_inner().map_err(|e| e.into_error())?;
                    f.sync_all()?;
                    Ok(())
                });
            if let Err(e) = result {
                // Never leave a half-written "sealed" file behind.
                let _ = std::fs::remove_file(out);
                return Err(e.context(format!("cannot seal {}", a.file.display())));
            }
            eprintln!(
                "sealed {} -> {} (date {date}, key KVV {})",
                a.file.display(),
                out.display(),
                key.kvv()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn today_stockholm() -> anyhow::Result<String> {
    let tz = jiff::tz::TimeZone::get("Europe/Stockholm").context(
        "cannot load the Europe/Stockholm time zone to date the seal; pass --date YYMMDD",
    )?;
    let now = jiff::Timestamp::now().to_zoned(tz);
    Ok(now.strftime("%y%m%d").to_string())
}

pub fn run_verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let keys = a
        .key_file
        .iter()
        .map(|p| SealKey::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let file = File::open(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
    let (verdict, scan) = seal::verify_with_scan(&keys, file, WARN_POSITIONS)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    if scan.total > 0 {
        let shown: Vec<String> = scan.findings.iter().map(|u| u.to_string()).collect();
        eprintln!(
            "WARNING: {}: {} byte(s) the seal cannot protect (they can be swapped without breaking it): {}{}",
            a.file.display(),
            scan.total,
            shown.join("; "),
            if scan.total > scan.findings.len() as u64 {
                "; ..."
            } else {
                ""
            }
        );
    }
    match verdict {
        SealVerdict::Valid { kvv, date } => {
            println!("valid: sealed {date} with key {kvv}");
            Ok(ExitCode::SUCCESS)
        }
        SealVerdict::Invalid(f) => {
            eprintln!("invalid ({}): {}: {f}", f.code(), a.file.display());
            Ok(ExitCode::from(1))
        }
    }
}

pub fn run_keygen(a: KeygenArgs) -> anyhow::Result<ExitCode> {
    match a.kind {
        KeygenKind::Seal { output } => keygen_seal(output.as_deref()),
        KeygenKind::Client { output, comment } => keygen_client(&output, comment),
    }
}

fn keygen_client(output: &Path, comment: Option<String>) -> anyhow::Result<ExitCode> {
    let mut pub_path = output.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    for p in [output, pub_path.as_path()] {
        if p.symlink_metadata().is_ok() {
            bail!(
                "{} already exists; refusing to overwrite a key file (move it away first if you mean to replace it)",
                p.display()
            );
        }
    }
    let comment = comment.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("sluss@{}", host.trim())
    });
    let key = sluss::remote::sftp::generate_client_key(&comment)
        .map_err(|e| anyhow::anyhow!("cannot generate a client key: {e}"))?;
    let write = |path: &Path, mode: u32, text: &str| -> anyhow::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write(output, 0o600, &key.private_openssh)?;
    write(&pub_path, 0o644, &format!("{}\n", key.public_line))?;
    println!(
        "wrote client key {} and {}",
        output.display(),
        pub_path.display()
    );
    println!("give the partner this public key (for the user sluss logs in as):");
    println!("{}", key.public_line);
    println!("fingerprint {}", key.fingerprint);
    Ok(ExitCode::SUCCESS)
}

fn keygen_seal(output: Option<&Path>) -> anyhow::Result<ExitCode> {
    let key = SealKey::generate();
    match output {
        None => {
            print!("{}", seal::write_key_file_contents(&key));
            eprintln!("KVV {}", key.kvv());
        }
        Some(path) => {
            if path.symlink_metadata().is_ok() {
                bail!(
                    "{} already exists; refusing to overwrite a key file (move it away first if you mean to replace it)",
                    path.display()
                );
            }
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create key file {}", path.display()))?;
            f.write_all(seal::write_key_file_contents(&key).as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("cannot write key file {}", path.display()))?;
            println!("wrote seal key {} (KVV {})", path.display(), key.kvv());
        }
    }
    Ok(ExitCode::SUCCESS)
}
