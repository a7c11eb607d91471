//! `sluss check`. (stub: being written)
use std::process::ExitCode;
#[derive(clap::Args, Debug)]
pub struct CheckArgs {}
pub fn run(_a: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
