//! `sluss ledger ...`. (stub: being written)
use std::process::ExitCode;
#[derive(clap::Args, Debug)]
pub struct LedgerArgs {}
pub fn run(_a: LedgerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
