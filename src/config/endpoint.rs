//! Remote endpoints in the configuration: `{ type = "sftp", … }` and `{ type = "ftps", … }`
//! as the operator typed them (raw serde types, unknown fields refused) and as the runtime
//! uses them (host key pinned as a SHA-256 fingerprint, secret files resolved and checked for
//! owner-only permissions). Secrets themselves are never held here: only the paths of the
//! files they live in, so a `Debug` of the configuration is safe to log. The secret files
//! are read by `remote` at connect time.
//!
//! This module only reads files (to check them); it never writes one. Problems come back as
//! [`Issue`]s with the field relative to the endpoint table; `validate` puts the prefix and
//! the file and line on them.

use serde::Deserialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Seconds to wait for TCP connect plus handshake plus login, when not configured: long
/// enough for a slow partner across the internet, short enough to notice an outage.
pub const DEFAULT_CONNECT_TIMEOUT_SECONDS: u64 = 30;
/// Seconds any single operation (one request, one block of a transfer) may take.
pub const DEFAULT_IO_TIMEOUT_SECONDS: u64 = 120;
/// An hour: longer timeouts only hide a dead server from the retry logic.
const MAX_TIMEOUT_SECONDS: i64 = 3600;
/// Key and password files are small; anything bigger is the wrong file.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// How a file is written at the remote folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    /// Under a hidden temporary name, then renamed to the final name (never replacing).
    Rename,
    /// Straight under the final name, for servers that forbid rename. The file is visible
    /// while it is being written; see docs/remote.md.
    Direct,
}

/// An SFTP server (SSH), its host key pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The pinned host key as `SHA256:<base64>` (OpenSSH's fingerprint form), whether the
    /// operator wrote the public-key line or the fingerprint.
    pub host_key_fingerprint: String,
    pub auth: SftpAuth,
    /// Remote folder files are delivered into / listed in (absolute or login-relative).
    pub dir: String,
    pub upload: UploadMode,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
}

/// How sluss logs in over SSH. Only file paths: the secret stays in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SftpAuth {
    /// An OpenSSH private key file (unencrypted), e.g. from `sluss keygen client`.
    KeyFile(PathBuf),
    /// A file holding the password (one line).
    PasswordFile(PathBuf),
}

/// Explicit (`AUTH TLS` on the plain port) or implicit (TLS from the first byte) FTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FtpsMode {
    Explicit,
    Implicit,
}

/// How the server's certificate is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FtpsTrust {
    /// PEM file of CA certificates; the server's chain and name are verified against it.
    CaFile(PathBuf),
    /// SHA-256 of the server's own certificate (DER), lower-case hex: exactly that
    /// certificate is accepted, whatever its issuer, name or dates.
    Fingerprint(String),
}

/// Passive-mode variant for data connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassiveMode {
    /// `PASV` (falls back to `EPSV` once if the server does not know `PASV`).
    Pasv,
    /// `EPSV` (RFC 2428), for servers behind NAT or on IPv6.
    Epsv,
}

/// An FTPS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtpsEndpoint {
    pub host: String,
    pub port: u16,
    pub mode: FtpsMode,
    pub user: String,
    pub password_file: PathBuf,
    pub trust: FtpsTrust,
    pub passive: PassiveMode,
    pub dir: String,
    pub upload: UploadMode,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
}

/// One problem with an endpoint table; `field` is relative to the table (`host_key`).
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSftp {
    #[serde(rename = "type")]
    _type: String,
    host: String,
    port: Option<i64>,
    user: String,
    host_key: String,
    key_file: Option<String>,
    password_file: Option<String>,
    dir: Option<String>,
    upload: Option<RawUpload>,
    connect_timeout_seconds: Option<i64>,
    io_timeout_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFtps {
    #[serde(rename = "type")]
    _type: String,
    host: String,
    port: Option<i64>,
    mode: Option<RawFtpsMode>,
    user: String,
    password_file: String,
    ca_file: Option<String>,
    cert_fingerprint: Option<String>,
    passive: Option<RawPassive>,
    dir: Option<String>,
    upload: Option<RawUpload>,
    connect_timeout_seconds: Option<i64>,
    io_timeout_seconds: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawUpload {
    Rename,
    Direct,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawFtpsMode {
    Explicit,
    Implicit,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawPassive {
    Pasv,
    Epsv,
}

/// serde's message for a table, turned into one issue naming the field.
fn serde_issue(kind: &str, e: toml::de::Error) -> Issue {
    let message = e.message().trim().to_string();
    let between = |prefix: &str| -> Option<String> {
        let rest = &message[message.find(prefix)? + prefix.len()..];
        Some(rest[..rest.find('`')?].to_string())
    };
    if let Some(u) = between("unknown field `") {
        issue(
            &u,
            format!("unknown field `{u}` for an {kind} endpoint"),
            format!("remove `{u}` or correct its spelling; see docs/jobs.md for the {kind} fields"),
        )
    } else if let Some(m) = between("missing field `") {
        issue(
            &m,
            format!("an {kind} endpoint needs `{m}`"),
            format!("add `{m}`; see docs/jobs.md for the {kind} fields"),
        )
    } else {
        issue(
            "",
            message,
            format!("see docs/jobs.md for the {kind} fields and their types"),
        )
    }
}

fn port(v: Option<i64>, default: u16, out: &mut Vec<Issue>) -> u16 {
    match v {
        None => default,
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(p) => {
            out.push(issue(
                "port",
                format!("{p} is not a TCP port"),
                format!("use 1 to 65535, or leave it out for {default}"),
            ));
            default
        }
    }
}

fn seconds(field: &str, v: Option<i64>, default: u64, out: &mut Vec<Issue>) -> Duration {
    match v {
        None => Duration::from_secs(default),
        Some(s) if (1..=MAX_TIMEOUT_SECONDS).contains(&s) => Duration::from_secs(s as u64),
        Some(s) => {
            out.push(issue(
                field,
                format!("{s} is out of range"),
                format!("use a whole number of seconds from 1 to {MAX_TIMEOUT_SECONDS}"),
            ));
            Duration::from_secs(default)
        }
    }
}

fn non_empty(field: &str, v: &str, example: &str, out: &mut Vec<Issue>) -> String {
    let t = v.trim();
    if t.is_empty() {
        out.push(issue(field, "is empty", format!("give it, e.g. {example}")));
    }
    t.to_string()
}

fn host(v: &str, out: &mut Vec<Issue>) -> String {
    let h = non_empty("host", v, "\"sftp.example.se\"", out);
    if h.contains(['/', ' ', '@']) || h.contains("://") {
        out.push(issue(
            "host",
            format!("`{h}` is not a host name or address"),
            "write only the name or IP address, e.g. \"sftp.example.se\"; port, user and folder have their own fields",
        ));
    }
    h
}

/// The fields SFTP and FTPS endpoints share: remote folder and the two timeouts.
fn folder_and_timeouts(
    d: Option<&str>,
    connect: Option<i64>,
    io: Option<i64>,
    out: &mut Vec<Issue>,
) -> (String, Duration, Duration) {
    let folder = dir(d, out);
    let connect_timeout = seconds(
        "connect_timeout_seconds",
        connect,
        DEFAULT_CONNECT_TIMEOUT_SECONDS,
        out,
    );
    let io_timeout = seconds("io_timeout_seconds", io, DEFAULT_IO_TIMEOUT_SECONDS, out);
    (folder, connect_timeout, io_timeout)
}

fn dir(v: Option<&str>, out: &mut Vec<Issue>) -> String {
    let d = v.unwrap_or(".").trim();
    if d.is_empty() || d.contains('\0') || d.split('/').any(|c| c == "..") {
        out.push(issue(
            "dir",
            format!("`{d}` is not a usable remote folder"),
            "give the folder on the partner's server, e.g. \"/in\", without `..`",
        ));
    }
    let d = d.trim_end_matches('/');
    if d.is_empty() { "/".into() } else { d.into() }
}

fn upload(v: Option<RawUpload>) -> UploadMode {
    match v {
        None | Some(RawUpload::Rename) => UploadMode::Rename,
        Some(RawUpload::Direct) => UploadMode::Direct,
    }
}

/// A secret file (key or password): relative to the config directory, must exist, be a
/// regular file, and be owner-only (like seal keys). Returns the absolute path.
fn secret_file(
    field: &str,
    v: &str,
    what: &str,
    config_dir: &Path,
    resolve: &dyn Fn(&Path, &str) -> PathBuf,
    out: &mut Vec<Issue>,
) -> Option<PathBuf> {
    if v.trim().is_empty() {
        out.push(issue(
            field,
            "is empty",
            format!("give the {what}'s path, e.g. \"keys/acme.id_ed25519\""),
        ));
        return None;
    }
    let path = resolve(config_dir, v.trim());
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.push(issue(
                field,
                format!("{what} {} does not exist", path.display()),
                if what.contains("key") {
                    "make one with `sluss keygen client -o keys/<partner>.id_ed25519` (and give the partner its .pub line), or correct the path".to_string()
                } else {
                    format!("write the password into {} (one line, chmod 600), or correct the path", path.display())
                },
            ));
            None
        }
        Err(e) => {
            out.push(issue(
                field,
                format!("cannot read {what} {}: {e}", path.display()),
                "make it readable by the sluss user",
            ));
            None
        }
        Ok(m) if !m.is_file() || m.len() > MAX_SECRET_FILE_BYTES => {
            out.push(issue(
                field,
                format!("{} is not a {what}", path.display()),
                "point at the file itself",
            ));
            None
        }
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            out.push(issue(
                field,
                format!(
                    "{what} {} is readable or writable by group or others (mode {:04o})",
                    path.display(),
                    m.permissions().mode() & 0o777
                ),
                format!("chmod 600 {}", path.display()),
            ));
            None
        }
        Ok(_) => Some(path),
    }
}

/// The SHA-256 fingerprint (`SHA256:…`) a `host_key` value pins: an OpenSSH public-key line
/// (`ssh-ed25519 AAAA… [comment]`) or a fingerprint as `ssh-keygen -lf` prints it.
pub fn host_key_fingerprint(v: &str) -> Result<String, String> {
    let v = v.trim();
    if let Some(b64) = v.strip_prefix("SHA256:") {
        let ok = b64.len() == 43
            && b64
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/');
        return if ok {
            Ok(v.to_string())
        } else {
            Err(format!(
                "`{v}` is not a SHA256 fingerprint (43 base64 characters after SHA256:)"
            ))
        };
    }
    if v.starts_with("MD5:") || (v.len() == 47 && v.matches(':').count() == 15) {
        return Err("MD5 fingerprints are too weak to pin".into());
    }
    match russh::keys::PublicKey::from_openssh(v) {
        Ok(k) => Ok(k.fingerprint(russh::keys::HashAlg::Sha256).to_string()),
        Err(e) => Err(format!(
            "not an OpenSSH public-key line or SHA256 fingerprint ({e})"
        )),
    }
}

/// A certificate fingerprint: `SHA256:` followed by 64 hex digits, with or without colons
/// (as `openssl x509 -fingerprint -sha256` prints it). Returns lower-case hex.
pub fn cert_fingerprint(v: &str) -> Result<String, String> {
    let body = v.trim();
    let body = body
        .strip_prefix("SHA256:")
        .or_else(|| body.strip_prefix("sha256:"))
        .or_else(|| body.strip_prefix("SHA256 Fingerprint="))
        .unwrap_or(body);
    let hex: String = body.chars().filter(|c| *c != ':').collect();
    if hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{}` is not a SHA-256 certificate fingerprint (64 hex digits)",
            v.trim()
        ))
    }
}

/// `{ type = "sftp", … }` → the validated endpoint, or every problem found.
pub(super) fn sftp(
    t: &toml::Table,
    config_dir: &Path,
    resolve: &dyn Fn(&Path, &str) -> PathBuf,
) -> Result<SftpEndpoint, Vec<Issue>> {
    let r: RawSftp = t
        .clone()
        .try_into()
        .map_err(|e| vec![serde_issue("sftp", e)])?;
    let mut out = Vec::new();
    let host = host(&r.host, &mut out);
    let port = port(r.port, 22, &mut out);
    let user = non_empty("user", &r.user, "\"acme-sluss\"", &mut out);
    let fp = match host_key_fingerprint(&r.host_key) {
        Ok(f) => f,
        Err(why) => {
            out.push(issue(
                "host_key",
                why,
                "ask the partner for its host key and paste the line from its .pub file (or `ssh-keyscan HOST`, checked with the partner), or its SHA256:… fingerprint",
            ));
            String::new()
        }
    };
    let auth = match (&r.key_file, &r.password_file) {
        (Some(k), None) => secret_file(
            "key_file",
            k,
            "private key file",
            config_dir,
            resolve,
            &mut out,
        )
        .and_then(|p| match russh::keys::load_secret_key(&p, None) {
            Ok(_) => Some(SftpAuth::KeyFile(p)),
            Err(e) => {
                out.push(issue(
                    "key_file",
                    format!(
                        "{} is not a usable unencrypted private key: {e}",
                        p.display()
                    ),
                    "make one with `sluss keygen client -o keys/<partner>.id_ed25519`",
                ));
                None
            }
        }),
        (None, Some(pw)) => secret_file(
            "password_file",
            pw,
            "password file",
            config_dir,
            resolve,
            &mut out,
        )
        .map(SftpAuth::PasswordFile),
        (Some(_), Some(_)) => {
            out.push(issue(
                "password_file",
                "both key_file and password_file are given",
                "keep one: key_file (preferred) or password_file",
            ));
            None
        }
        (None, None) => {
            out.push(issue(
                "key_file",
                "no way to log in: neither key_file nor password_file is given",
                "add key_file = \"keys/<partner>.id_ed25519\" (from `sluss keygen client`) or password_file = \"keys/<partner>.sftp-password\"",
            ));
            None
        }
    };
    let (dir, connect_timeout, io_timeout) = folder_and_timeouts(
        r.dir.as_deref(),
        r.connect_timeout_seconds,
        r.io_timeout_seconds,
        &mut out,
    );
    match (out.is_empty(), auth) {
        (true, Some(auth)) => Ok(SftpEndpoint {
            host,
            port,
            user,
            host_key_fingerprint: fp,
            auth,
            dir,
            upload: upload(r.upload),
            connect_timeout,
            io_timeout,
        }),
        _ => Err(out),
    }
}

/// `{ type = "ftps", … }` → the validated endpoint, or every problem found.
pub(super) fn ftps(
    t: &toml::Table,
    config_dir: &Path,
    resolve: &dyn Fn(&Path, &str) -> PathBuf,
) -> Result<FtpsEndpoint, Vec<Issue>> {
    let r: RawFtps = t
        .clone()
        .try_into()
        .map_err(|e| vec![serde_issue("ftps", e)])?;
    let mut out = Vec::new();
    let mode = match r.mode {
        None | Some(RawFtpsMode::Explicit) => FtpsMode::Explicit,
        Some(RawFtpsMode::Implicit) => FtpsMode::Implicit,
    };
    let host = host(&r.host, &mut out);
    let port = port(
        r.port,
        if mode == FtpsMode::Implicit { 990 } else { 21 },
        &mut out,
    );
    let user = non_empty("user", &r.user, "\"acme\"", &mut out);
    let password_file = secret_file(
        "password_file",
        &r.password_file,
        "password file",
        config_dir,
        resolve,
        &mut out,
    );
    let trust = match (&r.ca_file, &r.cert_fingerprint) {
        (Some(ca), None) => {
            let p = resolve(config_dir, ca.trim());
            match std::fs::read(&p) {
                Ok(pem) if pem_has_certificate(&pem) => Some(FtpsTrust::CaFile(p)),
                Ok(_) => {
                    out.push(issue(
                        "ca_file",
                        format!("{} holds no PEM certificate", p.display()),
                        "put the partner's CA certificate there (-----BEGIN CERTIFICATE-----)",
                    ));
                    None
                }
                Err(e) => {
                    out.push(issue(
                        "ca_file",
                        format!("cannot read CA file {}: {e}", p.display()),
                        "put the partner's CA certificate (PEM) there, or correct the path",
                    ));
                    None
                }
            }
        }
        (None, Some(fp)) => match cert_fingerprint(fp) {
            Ok(h) => Some(FtpsTrust::Fingerprint(h)),
            Err(why) => {
                out.push(issue(
                    "cert_fingerprint",
                    why,
                    "ask the partner for `openssl x509 -noout -fingerprint -sha256` of its certificate",
                ));
                None
            }
        },
        (Some(_), Some(_)) => {
            out.push(issue(
                "cert_fingerprint",
                "both ca_file and cert_fingerprint are given",
                "keep one: ca_file (verifies chain and name) or cert_fingerprint (pins one certificate)",
            ));
            None
        }
        (None, None) => {
            out.push(issue(
                "ca_file",
                "no way to trust the server: neither ca_file nor cert_fingerprint is given",
                "add ca_file = \"keys/<partner>-ca.pem\" or cert_fingerprint = \"SHA256:…\"; sluss never accepts an unverified certificate",
            ));
            None
        }
    };
    let (dir, connect_timeout, io_timeout) = folder_and_timeouts(
        r.dir.as_deref(),
        r.connect_timeout_seconds,
        r.io_timeout_seconds,
        &mut out,
    );
    match (out.is_empty(), password_file, trust) {
        (true, Some(password_file), Some(trust)) => Ok(FtpsEndpoint {
            host,
            port,
            mode,
            user,
            password_file,
            trust,
            passive: match r.passive {
                None | Some(RawPassive::Pasv) => PassiveMode::Pasv,
                Some(RawPassive::Epsv) => PassiveMode::Epsv,
            },
            dir,
            upload: upload(r.upload),
            connect_timeout,
            io_timeout,
        }),
        _ => Err(out),
    }
}

fn pem_has_certificate(pem: &[u8]) -> bool {
    pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_pins_normalise_to_sha256() {
        // Made with `ssh-keygen -t ed25519`; `ssh-keygen -lf` printed the fingerprint.
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINH9M3jYfEQJo25cmUUpW+TTxrT5Njre0B7NXJbDT4uB comment";
        let fp = host_key_fingerprint(line).unwrap();
        assert_eq!(fp, "SHA256:KjoUuqR0MhYgIGdNz4Io9tV8N3xtuOZxq9cT3BTEMWo");
        assert_eq!(host_key_fingerprint(&fp).unwrap(), fp);
        assert!(host_key_fingerprint("SHA256:short").is_err());
        assert!(host_key_fingerprint("ssh-ed25519 AAAAnotbase64").is_err());
        assert!(host_key_fingerprint("MD5:aa:bb").is_err());
    }

    #[test]
    fn certificate_fingerprints_accept_openssl_output() {
        let hex = "AB".repeat(32);
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        let want = "ab".repeat(32);
        assert_eq!(cert_fingerprint(&format!("SHA256:{hex}")).unwrap(), want);
        assert_eq!(
            cert_fingerprint(&format!("SHA256 Fingerprint={}", colons.join(":"))).unwrap(),
            want
        );
        assert!(cert_fingerprint("SHA256:abcd").is_err());
    }
}
