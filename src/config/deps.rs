// TEMPORARY: replaced by crate::seal / crate::formats at merge
//! Minimal stand-ins for the parts of `crate::seal` and `crate::formats` that config uses,
//! so that config compiles and is tested while those modules are written elsewhere. The
//! signatures match the agreed interfaces exactly; the integrator replaces the one
//! `use self::deps::{...}` line in `config/mod.rs` and deletes this file.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Seal-unprotected characters in payment orders: what to do about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CharsetPolicy {
    Allow,
    Warn,
    Reject,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read seal key file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "seal key file {} is readable by group or others (mode {mode:04o}) (fix: chmod 600 {})",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("seal key file {} does not hold 32 hex digits", path.display())]
    Format { path: PathBuf },
}

/// A seal key (16 bytes). Stand-in: keeps the bytes, computes no KVV.
pub struct SealKey {
    bytes: [u8; 16],
}

impl SealKey {
    pub fn load(path: &Path) -> Result<SealKey, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let hex = text.trim();
        let format = || KeyError::Format {
            path: path.to_path_buf(),
        };
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format());
        }
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| format())?;
        }
        Ok(SealKey { bytes })
    }

    /// Stand-in: the real KVV comes from `crate::seal`.
    pub fn kvv(&self) -> String {
        "PENDING".to_string()
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(KVV PENDING)")
    }
}

pub mod bankgiro {
    /// `991-2346` / `9912346` / `0009912346` → `0009912346` if the Luhn check digit holds.
    pub fn canonical(text: &str) -> Option<String> {
        let digits: String = text.chars().filter(|c| *c != '-' && *c != ' ').collect();
        if !(7..=10).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let sum: u32 = digits
            .bytes()
            .rev()
            .enumerate()
            .map(|(i, b)| {
                let d = u32::from(b - b'0');
                if i % 2 == 1 {
                    let d2 = d * 2;
                    if d2 > 9 { d2 - 9 } else { d2 }
                } else {
                    d
                }
            })
            .sum();
        sum.is_multiple_of(10).then(|| format!("{digits:0>10}"))
    }
}
