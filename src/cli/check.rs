//! `sluss check`: load the whole configuration and print the verdict. Exit 0 when it is
//! valid (with a note for every key that will be generated at first start), 1 with every
//! problem listed, 2 when the config directory itself cannot be read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use sluss::config::{self, Loaded};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Directory holding sluss.toml and jobs.d/.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub config: PathBuf,
}

pub fn run(a: CheckArgs) -> anyhow::Result<ExitCode> {
    // A missing directory is a usage problem, not a config problem: exit 2.
    if let Err(e) = std::fs::read_dir(&a.config) {
        bail!(
            "cannot read config directory {}: {e} (fix: pass --config DIR naming the directory that holds sluss.toml)",
            a.config.display()
        );
    }
    match config::load(&a.config) {
        Ok(loaded) => {
            print_ok(&loaded);
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            let n = errors.0.len();
            println!(
                "{n} problem{} found; nothing was changed",
                if n == 1 { "" } else { "s" }
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn print_ok(loaded: &Loaded) {
    let c = &loaded.config;
    let list: Vec<String> = c
        .partners
        .values()
        .map(|p| format!("{}: {}", p.id, p.role))
        .collect();
    println!(
        "ok: {} partner{} ({})",
        c.partners.len(),
        if c.partners.len() == 1 { "" } else { "s" },
        list.join(", ")
    );
    for p in c.partners.values() {
        for k in &p.seal.keys {
            println!("seal key for {}: KVV {}", p.id, k.kvv());
        }
    }
    for k in &loaded.pending_keys {
        println!(
            "note: {} will be generated at first start ({}{}{})",
            shown(&c.dir, &k.path).display(),
            k.kind.describe(),
            if k.partner.is_empty() { "" } else { " for " },
            k.partner
        );
    }
}

/// A path inside the config directory is shown relative to it, as the operator wrote it.
fn shown<'a>(dir: &Path, path: &'a Path) -> &'a Path {
    path.strip_prefix(dir).unwrap_or(path)
}
