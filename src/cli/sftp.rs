//! `sluss passwd`: read a password on standard input and print its Argon2id hash, the line
//! an operator pastes into a partner's `[sftp] password_hash`. The password itself is never
//! printed or stored.

use anyhow::{Context, bail};
use std::io::BufRead;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct PasswdArgs {}

pub fn run_passwd(_a: PasswdArgs) -> anyhow::Result<ExitCode> {
    use argon2::PasswordHasher;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let pw = line.trim_end_matches(['\r', '\n']);
    if pw.is_empty() {
        bail!(
            "no password on standard input (fix: `printf '%s\\n' 'the password' | sluss passwd`)"
        );
    }
    let hash = argon2::Argon2::default()
        .hash_password(pw.as_bytes())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}
