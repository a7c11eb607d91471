//! `sluss seal`, `sluss verify`, `sluss keygen`. (stub: being written)
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct SealArgs {}
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {}
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {}

pub fn run_seal(_a: SealArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
pub fn run_verify(_a: VerifyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
pub fn run_keygen(_a: KeygenArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
