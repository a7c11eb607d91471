//! `sluss serve`, `sluss ingest`. (stub: being written)
use std::process::ExitCode;
#[derive(clap::Args, Debug)]
pub struct ServeArgs {}
#[derive(clap::Args, Debug)]
pub struct IngestArgs {}
pub fn run_serve(_a: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
pub fn run_ingest(_a: IngestArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
