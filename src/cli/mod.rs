//! Command-line front ends. Each submodule owns the arguments and output of a group of
//! subcommands; all real work happens in the library. `anyhow` is allowed here (binary edge).
pub mod check;
pub mod inspect;
pub mod jobs;
pub mod ledger;
pub mod remote;
pub mod seal;
pub mod serve;
pub mod sftp;
