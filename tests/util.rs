//! Shared test harness: paths to the built binary and to fixtures.
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::Command;

/// The `sluss` binary cargo built for this test run.
pub fn sluss() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluss"))
}

/// A fixture under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Bankgirot's official test key (spec §1.3).
pub const TEST_KEY_HEX: &str = "1234567890ABCDEF1234567890ABCDEF";
