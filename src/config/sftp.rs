//! SFTP settings: the server's listener and limits (`[sftp]` in `sluss.toml`) and each
//! customer's account (`[sftp]` in its `jobs.d` file), raw and validated. Validation reads
//! authorized-keys files and checks password hashes; it never writes. Missing host keys and a
//! missing demo key pair come back as pending keys the daemon generates at first start.
//!
//! Problems are returned as [`Issue`]s (field, message, fix); the caller adds file and line.

use super::{PendingKey, PendingKeyKind};
use ipnet::IpNet;
use russh::keys::ssh_key::{Algorithm, PublicKey};
use serde::Deserialize;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shipped example's listener: loopback only, an unprivileged port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2222";
/// Host key files under the keys directory (OpenSSH's names, so operators recognise them).
pub const HOST_KEY_ED25519: &str = "ssh_host_ed25519_key";
pub const HOST_KEY_RSA: &str = "ssh_host_rsa_key";
/// Sessions at once, all accounts: a few hundred ERP jobs at the top of the hour.
const DEFAULT_MAX_SESSIONS: u32 = 256;
const MAX_MAX_SESSIONS: i64 = 100_000;
/// Sessions at once per account: an ERP with a few parallel jobs plus a person.
const DEFAULT_MAX_SESSIONS_PER_ACCOUNT: u32 = 16;
/// Ten minutes without a packet ends a session (OpenSSH clients send no keepalives by
/// default; a stuck ERP job must not hold a session slot forever).
const DEFAULT_IDLE_TIMEOUT_SECONDS: u32 = 600;
const MAX_IDLE_TIMEOUT_SECONDS: i64 = 86_400;
/// Salary runs are large: 4 GiB leaves room above the 1 GiB the issue asks for.
const DEFAULT_MAX_FILE_SIZE_MB: u32 = 4096;
const MAX_FILE_SIZE_MB: i64 = 1 << 20;
/// How long an accepted upload stays visible in `/upload` (clients stat it and set its
/// times right after uploading).
const DEFAULT_UPLOAD_GRACE_SECONDS: u32 = 300;
/// Failed logins from one address within the window that earn a ban.
const DEFAULT_BAN_FAILURES: u32 = 10;
const DEFAULT_BAN_WINDOW_SECONDS: u32 = 60;
/// First ban; doubles on every repeat up to `ban_max_seconds`.
const DEFAULT_BAN_SECONDS: u32 = 300;
const DEFAULT_BAN_MAX_SECONDS: u32 = 86_400;
const MAX_SECONDS: i64 = 30 * 86_400;
/// Client upload names that are not final yet: ERP jobs and WinSCP rename them afterwards.
pub const DEFAULT_TEMP_PATTERNS: &[&str] = &["*.tmp", "*.part", "*.filepart", ".*"];
/// Usernames: what OpenSSH clients send without quoting trouble.
const MAX_USERNAME_LEN: usize = 64;

/// `[sftp]` in `sluss.toml`. Absent: no SFTP server runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSftpServer {
    pub listen: Option<String>,
    pub host_key_files: Option<Vec<String>>,
    pub max_sessions: Option<i64>,
    pub max_sessions_per_account: Option<i64>,
    pub idle_timeout_seconds: Option<i64>,
    pub max_file_size_mb: Option<i64>,
    pub upload_grace_seconds: Option<i64>,
    pub temp_name_patterns: Option<Vec<String>>,
    pub ban_failures: Option<i64>,
    pub ban_window_seconds: Option<i64>,
    pub ban_seconds: Option<i64>,
    pub ban_max_seconds: Option<i64>,
    /// Networks never banned (the operators' own, monitoring).
    #[serde(default)]
    pub never_ban: Vec<String>,
}

/// `[sftp]` in a customer's `jobs.d` file: its account on sluss's SFTP server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSftpAccount {
    pub username: Option<String>,
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    pub authorized_keys_file: Option<String>,
    pub password_hash: Option<String>,
    #[serde(default)]
    pub allowed_networks: Vec<String>,
    pub max_sessions: Option<i64>,
    pub quota_mb: Option<i64>,
    /// Demo only: a missing authorized-keys file is generated with a fresh client key pair.
    #[serde(default)]
    pub generate_missing_keys: bool,
}

/// The validated server settings.
#[derive(Debug, Clone)]
pub struct SftpServer {
    /// Where to listen; port 0 picks a free port (logged and written to
    /// `<data_dir>/sftp.port`).
    pub listen: SocketAddr,
    /// Host key files (absolute), existing or pending.
    pub host_key_files: Vec<PathBuf>,
    pub max_sessions: u32,
    pub max_sessions_per_account: u32,
    pub idle_timeout: Duration,
    pub max_file_size: u64,
    pub upload_grace: Duration,
    /// Glob patterns (`*`, `?`) of names that are not final yet.
    pub temp_name_patterns: Vec<String>,
    pub ban: BanPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanPolicy {
    pub failures: u32,
    pub window: Duration,
    pub first: Duration,
    pub max: Duration,
    pub never_ban: Vec<IpNet>,
}

/// A customer's validated SFTP account.
#[derive(Debug, Clone)]
pub struct SftpAccount {
    pub username: String,
    pub authorized_keys: Vec<PublicKey>,
    /// The authorized-keys file, if one is configured (absolute).
    pub authorized_keys_file: Option<PathBuf>,
    /// Argon2id PHC string.
    pub password_hash: Option<String>,
    /// Empty: any address may log in.
    pub allowed_networks: Vec<IpNet>,
    pub max_sessions: Option<u32>,
    /// Bytes this account may hold on the server (uploads in flight + its download folder).
    pub quota: Option<u64>,
}

/// One problem; the caller knows the file and the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub field: String,
    pub message: String,
    pub fix: String,
}

fn issue(field: &str, message: impl Into<String>, fix: impl Into<String>) -> Issue {
    Issue {
        field: field.to_string(),
        message: message.into(),
        fix: fix.into(),
    }
}

fn int(
    issues: &mut Vec<Issue>,
    field: &str,
    v: Option<i64>,
    min: i64,
    max: i64,
    default: u32,
) -> u32 {
    match v {
        None => default,
        Some(v) if (min..=max).contains(&v) => u32::try_from(v).unwrap_or(default),
        Some(v) => {
            issues.push(issue(
                field,
                format!("{v} is out of range"),
                format!("use a whole number from {min} to {max}"),
            ));
            default
        }
    }
}

fn networks(issues: &mut Vec<Issue>, field: &str, list: &[String]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let s = s.trim();
        let parsed = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => out.push(n.trunc()),
            Err(_) => issues.push(issue(
                &format!("{field}[{i}]"),
                format!("`{s}` is not a network"),
                "write an address or a network in CIDR form, e.g. \"192.0.2.0/24\" or \"2001:db8::/32\"",
            )),
        }
    }
    out
}

/// Validate `[sftp]` of `sluss.toml`. `resolve` turns a configured path into an absolute one.
pub(super) fn server(
    r: &RawSftpServer,
    keys_dir: &Path,
    resolve: &dyn Fn(&str) -> PathBuf,
    pending: &mut Vec<PendingKey>,
) -> (SftpServer, Vec<Issue>) {
    let mut is = Vec::new();
    let listen_text = r.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = match listen_text.trim().parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            is.push(issue(
                "sftp.listen",
                format!("`{listen_text}` is not an address and port"),
                format!(
                    "write e.g. \"{DEFAULT_LISTEN}\" (or \"[::1]:2222\"; port 0 picks a free one)"
                ),
            ));
            SocketAddr::from(([127, 0, 0, 1], 2222))
        }
    };
    let host_key_files: Vec<PathBuf> = match &r.host_key_files {
        None => vec![keys_dir.join(HOST_KEY_ED25519), keys_dir.join(HOST_KEY_RSA)],
        Some(list) => list.iter().map(|s| resolve(s)).collect(),
    };
    if host_key_files.is_empty() {
        is.push(issue(
            "sftp.host_key_files",
            "no host key is configured",
            "leave the field out (ed25519 and RSA keys are generated in keys/) or list key files",
        ));
    }
    for (i, path) in host_key_files.iter().enumerate() {
        let field = format!("sftp.host_key_files[{i}]");
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let kind = if name.contains("rsa") {
                    PendingKeyKind::SshHostRsa
                } else {
                    PendingKeyKind::SshHostEd25519
                };
                pending.push(PendingKey {
                    partner: String::new(),
                    path: path.clone(),
                    kind,
                });
            }
            Err(e) => is.push(issue(
                &field,
                format!("cannot read host key {}: {e}", path.display()),
                "make the file readable by the daemon's user",
            )),
            Ok(m) if m.permissions().mode() & 0o077 != 0 => is.push(issue(
                &field,
                format!(
                    "host key {} is readable or writable by group or others (mode {:04o})",
                    path.display(),
                    m.permissions().mode() & 0o777
                ),
                format!("chmod 600 {}", path.display()),
            )),
            Ok(_) => match std::fs::read_to_string(path)
                .ok()
                .and_then(|t| russh::keys::PrivateKey::from_openssh(t).ok())
            {
                Some(k) if k.is_encrypted() => is.push(issue(
                    &field,
                    format!("host key {} is protected by a passphrase", path.display()),
                    "give the daemon an unencrypted host key (mode 0600), e.g. `ssh-keygen -t ed25519 -N '' -f FILE`",
                )),
                Some(k) if !matches!(k.algorithm(), Algorithm::Ed25519 | Algorithm::Rsa { .. } | Algorithm::Ecdsa { .. }) => is.push(issue(
                    &field,
                    format!("host key {} is a {} key", path.display(), k.algorithm()),
                    "use an ed25519, ECDSA or RSA host key",
                )),
                Some(_) => {}
                None => is.push(issue(
                    &field,
                    format!("{} is not an OpenSSH private key", path.display()),
                    "remove it to have one generated at start, or make one with `sluss keygen host`",
                )),
            },
        }
    }
    let patterns: Vec<String> = match &r.temp_name_patterns {
        None => DEFAULT_TEMP_PATTERNS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(list) => list.clone(),
    };
    for (i, pat) in patterns.iter().enumerate() {
        if pat.is_empty() || pat.contains('/') {
            is.push(issue(
                &format!("sftp.temp_name_patterns[{i}]"),
                format!("`{pat}` is not a file-name pattern"),
                "use * and ? in a name without /, e.g. \"*.tmp\"",
            ));
        }
    }
    let failures = int(
        &mut is,
        "sftp.ban_failures",
        r.ban_failures,
        1,
        10_000,
        DEFAULT_BAN_FAILURES,
    );
    let window = int(
        &mut is,
        "sftp.ban_window_seconds",
        r.ban_window_seconds,
        1,
        MAX_SECONDS,
        DEFAULT_BAN_WINDOW_SECONDS,
    );
    let first = int(
        &mut is,
        "sftp.ban_seconds",
        r.ban_seconds,
        1,
        MAX_SECONDS,
        DEFAULT_BAN_SECONDS,
    );
    let max = int(
        &mut is,
        "sftp.ban_max_seconds",
        r.ban_max_seconds,
        1,
        MAX_SECONDS,
        DEFAULT_BAN_MAX_SECONDS.max(first),
    );
    if max < first {
        is.push(issue(
            "sftp.ban_max_seconds",
            format!("ban_max_seconds ({max}) is below ban_seconds ({first})"),
            "make ban_max_seconds at least ban_seconds",
        ));
    }
    let never_ban = networks(&mut is, "sftp.never_ban", &r.never_ban);
    let s = SftpServer {
        listen,
        host_key_files,
        max_sessions: int(
            &mut is,
            "sftp.max_sessions",
            r.max_sessions,
            1,
            MAX_MAX_SESSIONS,
            DEFAULT_MAX_SESSIONS,
        ),
        max_sessions_per_account: int(
            &mut is,
            "sftp.max_sessions_per_account",
            r.max_sessions_per_account,
            1,
            MAX_MAX_SESSIONS,
            DEFAULT_MAX_SESSIONS_PER_ACCOUNT,
        ),
        idle_timeout: Duration::from_secs(
            int(
                &mut is,
                "sftp.idle_timeout_seconds",
                r.idle_timeout_seconds,
                1,
                MAX_IDLE_TIMEOUT_SECONDS,
                DEFAULT_IDLE_TIMEOUT_SECONDS,
            )
            .into(),
        ),
        max_file_size: u64::from(int(
            &mut is,
            "sftp.max_file_size_mb",
            r.max_file_size_mb,
            1,
            MAX_FILE_SIZE_MB,
            DEFAULT_MAX_FILE_SIZE_MB,
        )) << 20,
        upload_grace: Duration::from_secs(
            int(
                &mut is,
                "sftp.upload_grace_seconds",
                r.upload_grace_seconds,
                0,
                MAX_SECONDS,
                DEFAULT_UPLOAD_GRACE_SECONDS,
            )
            .into(),
        ),
        temp_name_patterns: patterns,
        ban: BanPolicy {
            failures,
            window: Duration::from_secs(window.into()),
            first: Duration::from_secs(first.into()),
            max: Duration::from_secs(max.into()),
            never_ban,
        },
    };
    (s, is)
}

/// Validate a customer's `[sftp]`. `partner_id` is the default username.
pub(super) fn account(
    r: &RawSftpAccount,
    partner_id: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
    pending: &mut Vec<PendingKey>,
) -> (SftpAccount, Vec<Issue>) {
    let mut is = Vec::new();
    let username = r.username.clone().unwrap_or_else(|| partner_id.to_string());
    let name_ok = !username.is_empty()
        && username.len() <= MAX_USERNAME_LEN
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !username.starts_with(['.', '-']);
    if !name_ok {
        is.push(issue(
            "sftp.username",
            format!("`{username}` is not a usable username"),
            "use 1 to 64 of a-z, A-Z, 0-9, `.`, `_` and `-`, not starting with `.` or `-`",
        ));
    }
    let mut keys = Vec::new();
    for (i, line) in r.authorized_keys.iter().enumerate() {
        let field = format!("sftp.authorized_keys[{i}]");
        match parse_key_line(line) {
            Ok(k) => keys.push(k),
            Err(why) => is.push(issue(
                &field,
                why,
                "paste the customer's public key line, e.g. \"ssh-ed25519 AAAA… comment\"",
            )),
        }
    }
    let mut keys_file = None;
    if let Some(f) = &r.authorized_keys_file {
        let path = resolve(f);
        keys_file = Some(path.clone());
        match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && r.generate_missing_keys => {
                pending.push(PendingKey {
                    partner: partner_id.to_string(),
                    path,
                    kind: PendingKeyKind::SshClientKey,
                });
            }
            Err(e) => is.push(issue(
                "sftp.authorized_keys_file",
                format!("cannot read {}: {e}", path.display()),
                "put the customer's public keys there, one per line, or correct the path",
            )),
            Ok(text) => {
                if let Ok(m) = std::fs::metadata(&path)
                    && m.permissions().mode() & 0o022 != 0
                {
                    is.push(issue(
                        "sftp.authorized_keys_file",
                        format!(
                            "{} is writable by group or others (mode {:04o}): anyone could add a key",
                            path.display(),
                            m.permissions().mode() & 0o777
                        ),
                        format!("chmod 644 {}", path.display()),
                    ));
                }
                for (n, line) in text.lines().enumerate() {
                    let t = line.trim();
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    match parse_key_line(t) {
                        Ok(k) => keys.push(k),
                        Err(why) => is.push(issue(
                            "sftp.authorized_keys_file",
                            format!("{} line {}: {why}", path.display(), n + 1),
                            "fix or remove that line; one OpenSSH public key per line",
                        )),
                    }
                }
            }
        }
    }
    let password_hash = r.password_hash.as_ref().map(|h| h.trim().to_string());
    if let Some(h) = &password_hash {
        let ok = argon2::PasswordHash::new(h)
            .map(|p| p.algorithm.as_str() == "argon2id")
            .unwrap_or(false);
        if !ok {
            is.push(issue(
                "sftp.password_hash",
                "is not an Argon2id hash",
                "paste the line `sluss passwd` prints ($argon2id$v=19$…); never the password itself",
            ));
        }
    }
    if keys.is_empty()
        && password_hash.is_none()
        && !pending
            .iter()
            .any(|p| p.partner == partner_id && p.kind == PendingKeyKind::SshClientKey)
        && is.is_empty()
    {
        is.push(issue(
            "sftp",
            "the account has no key and no password: nobody could log in",
            "add authorized_keys, authorized_keys_file or password_hash, or remove [sftp]",
        ));
    }
    let allowed_networks = networks(&mut is, "sftp.allowed_networks", &r.allowed_networks);
    let max_sessions = r.max_sessions.map(|v| {
        int(
            &mut is,
            "sftp.max_sessions",
            Some(v),
            1,
            MAX_MAX_SESSIONS,
            1,
        )
    });
    let quota = r.quota_mb.map(|v| {
        u64::from(int(
            &mut is,
            "sftp.quota_mb",
            Some(v),
            1,
            MAX_FILE_SIZE_MB,
            1,
        )) << 20
    });
    (
        SftpAccount {
            username,
            authorized_keys: keys,
            authorized_keys_file: keys_file,
            password_hash,
            allowed_networks,
            max_sessions,
            quota,
        },
        is,
    )
}

/// One OpenSSH public key line (options before the key type are not supported: say so).
pub fn parse_key_line(line: &str) -> Result<PublicKey, String> {
    let t = line.trim();
    let k = PublicKey::from_openssh(t).map_err(|e| {
        format!("not an OpenSSH public key ({e}); authorized_keys options are not supported")
    })?;
    match k.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } | Algorithm::Rsa { .. } => Ok(k),
        other => Err(format!(
            "{other} keys are not accepted; use ed25519, ECDSA or RSA"
        )),
    }
}
