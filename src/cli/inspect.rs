//! `sluss inspect`. (stub: being written)
use std::process::ExitCode;
#[derive(clap::Args, Debug)]
pub struct InspectArgs {}
pub fn run(_a: InspectArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
