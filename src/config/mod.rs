//! Configuration: the operator's files (`sluss.toml` and one `jobs.d/<id>.toml` per partner)
//! turned into validated runtime types. Two layers, as in ripgrep's low/high args: [`raw`]
//! is what the operator typed (serde, unknown fields refused); [`Config`] has keys loaded
//! and permission-checked, paths resolved to absolute ones, and references between
//! partners resolved. [`load`] reports every problem it finds at once, each with file,
//! line, field and the fix, so an operator fixes a whole edit in one pass.
//!
//! This module only reads: it never creates or changes a file. Key files the shipped
//! example marks as generated at first start come back as [`PendingKey`]s; the daemon
//! creates them and loads again.

pub mod endpoint;
mod pull;
mod raw;
pub mod sftp;
mod validate;

pub use endpoint::{
    FtpsEndpoint, FtpsMode, FtpsTrust, PassiveMode, SftpAuth, SftpEndpoint, UploadMode,
};
pub use pull::{AfterAction, PullJob, Schedule, glob, glob_match};

// The one place where config meets its leaves (seal keys, bankgiro numbers).
use crate::{
    formats::bankgiro,
    seal::{CharsetPolicy, KeyError, SealKey},
};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the daemon-wide file inside the config directory.
pub const MAIN_FILE: &str = "sluss.toml";

/// The validated configuration of the whole daemon.
#[derive(Debug)]
pub struct Config {
    /// The config directory (absolute); relative paths in the files resolve against it.
    pub dir: PathBuf,
    /// Where the daemon keeps its spool and ledger (absolute).
    pub data_dir: PathBuf,
    /// Where generated keys live (absolute).
    pub keys_dir: PathBuf,
    /// Where the partner files are (absolute).
    pub jobs_dir: PathBuf,
    pub defaults: Defaults,
    pub log: LogConfig,
    /// Every partner, by id.
    pub partners: BTreeMap<String, Partner>,
    /// sluss's own SFTP server; `None` when `sluss.toml` has no `[sftp]`.
    pub sftp: Option<sftp::SftpServer>,
}

/// Daemon-wide defaults a partner may override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// The same payment file (bytes, payload or message id) seen again within this window
    /// is a duplicate.
    pub duplicate_window: Duration,
    /// Delivery attempts before a file is dead-lettered (held for an operator).
    pub delivery_attempts: u32,
    /// First retry delay; doubles per attempt up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// A customer or a bank.
#[derive(Debug)]
pub struct Partner {
    pub id: String,
    /// Human-readable name, for logs and the operator.
    pub name: String,
    pub role: Role,
    /// Swedish organisation number, normalised to `NNNNNN-NNNN`.
    pub org_number: Option<String>,
    pub routing: RoutingKeys,
    pub seal: SealPolicy,
    /// Customers: the bank partner their payment orders go to. Banks: `None`.
    pub bank: Option<String>,
    pub duplicate_window: Duration,
    pub delivery: Delivery,
    pub archive: Archive,
    /// Scheduled pulls from the partner's servers (`[[pull]]`).
    pub pulls: Vec<PullJob>,
    /// The customer's account on sluss's SFTP server, if it has one.
    pub sftp: Option<sftp::SftpAccount>,
    /// The `jobs.d` file this partner came from (absolute).
    pub source_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Customer,
    Bank,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Bank => "bank",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Keys that route bank files to this partner, all in canonical form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingKeys {
    /// Bankgiro numbers, 10 digits zero-padded, check digit verified.
    pub bankgiro: Vec<String>,
    /// Bankgirot customer number (6 digits).
    pub customer_number: Option<String>,
    /// IBANs (mod-97 checked) and domestic account numbers, upper case, no separators.
    pub accounts: Vec<String>,
}

#[derive(Debug)]
pub struct SealPolicy {
    /// Payment orders must carry a valid seal.
    pub required: bool,
    /// Loaded keys (only those whose file exists; pending ones are generated later).
    pub keys: Vec<SealKey>,
    /// Every configured key file (absolute), in the order written.
    pub key_files: Vec<PathBuf>,
    pub charset: CharsetPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub endpoint: Endpoint,
    /// File name of delivered files; always contains `{id}` so names never collide.
    pub name_template: String,
    /// Delivery attempts before the file is held.
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A folder on this machine (absolute).
    Local { path: PathBuf },
    /// A partner's SFTP server.
    Sftp(SftpEndpoint),
    /// A partner's FTPS server.
    Ftps(FtpsEndpoint),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archive {
    /// The spooled copy is removed after delivery.
    Delete,
    /// The spooled copy is kept, encrypted to these age X25519 recipients (`age1…`).
    Age {
        recipients: Vec<String>,
        retention_days: u32,
    },
}

/// A key file that does not exist yet and that the daemon generates at first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKey {
    pub partner: String,
    pub path: PathBuf,
    pub kind: PendingKeyKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingKeyKind {
    SealKey,
    /// An SSH host key of the SFTP server (`partner` is empty).
    SshHostEd25519,
    SshHostRsa,
    /// A customer's authorized-keys file (the path), generated together with a client key
    /// pair `<partner>.id_ed25519` beside it (demo only).
    SshClientKey,
}

impl PendingKeyKind {
    /// What the key is, for `sluss check` and logs.
    pub fn describe(self) -> &'static str {
        match self {
            PendingKeyKind::SealKey => "seal key",
            PendingKeyKind::SshHostEd25519 => "SSH host key (ed25519)",
            PendingKeyKind::SshHostRsa => "SSH host key (RSA 3072)",
            PendingKeyKind::SshClientKey => "SFTP client key pair and authorized keys",
        }
    }
}

/// The outcome of a successful [`load`].
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Keys that "will be generated at first start" (not errors).
    pub pending_keys: Vec<PendingKey>,
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted path of the field, e.g. `seal.key_files[0]`; empty for the file as a whole.
    pub field: String,
    pub message: String,
    /// What the operator should do about it.
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {} (fix: {})", self.message, self.fix)
    }
}

/// Every problem found in one [`load`]. Display: one problem per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Read and validate the configuration in `dir` (which holds `sluss.toml`). Reads only.
pub fn load(dir: &Path) -> Result<Loaded, ConfigErrors> {
    validate::load(dir)
}

impl Config {
    /// The partner whose SFTP account has `username`.
    pub fn partner_by_sftp_user(&self, username: &str) -> Option<&Partner> {
        self.partners
            .values()
            .find(|p| p.sftp.as_ref().is_some_and(|a| a.username == username))
    }

    pub fn partner(&self, id: &str) -> Option<&Partner> {
        self.partners.get(id)
    }

    /// The partner that claims bankgiro `bg` (any common notation: `991-2346`, `0009912346`).
    pub fn partner_by_bankgiro(&self, bg: &str) -> Option<&Partner> {
        let bg = bankgiro::canonical(bg)?;
        self.partners
            .values()
            .find(|p| p.routing.bankgiro.contains(&bg))
    }

    /// The partner that claims account or IBAN `acct` (spaces and case do not matter).
    pub fn partner_by_account(&self, acct: &str) -> Option<&Partner> {
        let acct = validate::normalise_account(acct);
        self.partners
            .values()
            .find(|p| p.routing.accounts.contains(&acct))
    }

    /// The partner with Bankgirot customer number `n`.
    pub fn partner_by_customer_number(&self, n: &str) -> Option<&Partner> {
        let n = n.trim();
        self.partners
            .values()
            .find(|p| p.routing.customer_number.as_deref() == Some(n))
    }
}
