//! The `sluss` binary: parses the command line, sets up logging, and hands each subcommand
//! to its front end in `cli/`. Errors are printed once, with their cause chain, on stderr.
#![forbid(unsafe_code)]

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "sluss",
    version,
    about = "File-transfer gateway for payment files"
)]
struct Cli {
    /// Log as JSON lines (for log shippers) instead of plain text. Logs always go to stderr.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Seal a payment file with the Bankgirot HMAC seal (the customer-side tool).
    Seal(cli::seal::SealArgs),
    /// Verify a sealed file: exit 0 valid, 1 invalid (reason on stderr).
    Verify(cli::seal::VerifyArgs),
    /// Make keys in the right formats, with owner-only permissions.
    Keygen(cli::seal::KeygenArgs),
    /// Show what a file is: kind, routing keys, seal, structure problems.
    Inspect(cli::inspect::InspectArgs),
    /// Validate the configuration as a whole; print every problem.
    Check(cli::check::CheckArgs),
    /// Run the daemon.
    Serve(cli::serve::ServeArgs),
    /// Hand files to the pipeline as a partner (copies them).
    Ingest(cli::serve::IngestArgs),
    /// The operator's view of files and deliveries.
    Ledger(cli::ledger::LedgerArgs),
    /// Archived (encrypted) copies of delivered files.
    Archive(cli::ledger::ArchiveArgs),
    /// Pull jobs: schedule, last run, next run, state; `jobs run PARTNER/NAME` runs one now.
    Jobs(cli::jobs::JobsArgs),
    /// Partners' remote endpoints: test the connection, list folders.
    Remote(cli::remote::RemoteArgs),
    /// Read a password on stdin, print its Argon2id hash (for `[sftp] password_hash`).
    Passwd(cli::sftp::PasswdArgs),
}

fn init_logging(json: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUSS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal; journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Whether `sluss.toml` in `dir` asks for JSON logs (problems are reported later, in full,
/// when the command loads the configuration for real).
fn config_wants_json(dir: &std::path::Path) -> bool {
    sluss::config::load(dir)
        .map(|l| l.config.log.format == sluss::config::LogFormat::Json)
        .unwrap_or(false)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon's log format may come from sluss.toml ([log] format = "json"); the flag wins.
    let json = cli.log_json
        || match &cli.command {
            Command::Serve(a) => config_wants_json(&a.config),
            _ => false,
        };
    init_logging(json);
    let result = match cli.command {
        Command::Seal(a) => cli::seal::run_seal(a),
        Command::Verify(a) => cli::seal::run_verify(a),
        Command::Keygen(a) => cli::seal::run_keygen(a),
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Check(a) => cli::check::run(a),
        Command::Serve(a) => cli::serve::run_serve(a),
        Command::Ingest(a) => cli::serve::run_ingest(a),
        Command::Ledger(a) => cli::ledger::run(a),
        Command::Archive(a) => cli::ledger::run_archive(a),
        Command::Jobs(a) => cli::jobs::run(a),
        Command::Remote(a) => cli::remote::run(a),
        Command::Passwd(a) => cli::sftp::run_passwd(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluss: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
