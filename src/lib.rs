//! sluss: a file-transfer gateway for payment files.
//!
//! Layers (dependencies point down only):
//! - leaves: [`seal`] (Bankgirot HMAC seal), [`formats`] (what a payment file is),
//!   [`ledger`] (SQLite record of every file and step), [`spool`] (the only code that
//!   creates, renames and fsyncs files);
//! - [`config`]: raw operator files → validated runtime types;
//! - [`pipeline`]: ingest → route → deliver, the state machine that keeps the invariants;
//! - [`scheduler`]: when pull jobs run (cron in a time zone, retries, bounded concurrency);
//! - the binary (`src/main.rs`, `src/cli/`) parses the command line and calls the above.
#![forbid(unsafe_code)]

pub mod config;
pub mod formats;
pub mod ledger;
pub mod pipeline;
pub mod remote;
pub mod scheduler;
pub mod seal;
pub mod sftpd;
pub mod spool;
