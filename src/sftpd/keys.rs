//! SSH keys of the SFTP server: host keys (generated at first start, mode 0600, fingerprints
//! logged) and the demo customer's client key pair. Writes only through [`crate::spool`];
//! never logs a private key, only SHA-256 fingerprints.

use crate::spool;
use russh::keys::ssh_key::rand_core::{TryCryptoRng, TryRng};
use russh::keys::ssh_key::{self, Algorithm, HashAlg, LineEnding, PrivateKey};
use std::convert::Infallible;
use std::path::{Path, PathBuf};

/// RSA host key size: 3072 bits is NIST's level for keys used beyond 2030.
pub const RSA_HOST_KEY_BITS: usize = 3072;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate the key: {0}")]
    Generate(ssh_key::Error),
    #[error(transparent)]
    Write(#[from] spool::SpoolError),
    #[error(
        "cannot read host key {path}: {detail} (fix: remove it to have one generated, or make one with `sluss keygen host`)"
    )]
    Read { path: PathBuf, detail: String },
}

/// Which host key to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyKind {
    Ed25519,
    Rsa,
}

/// The operating system's random source as the RNG ssh-key wants. A failing OS random
/// source is not recoverable (a key from anything else would be weak), so it stops here.
struct OsRng;

impl TryRng for OsRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.fill(dst);
        Ok(())
    }
}

impl TryCryptoRng for OsRng {}

impl OsRng {
    fn fill(&mut self, dst: &mut [u8]) {
        #[allow(clippy::expect_used)]
        getrandom::fill(dst).expect("the operating system's random source failed");
    }
}

/// Make a new private key of `kind`.
pub fn new_key(kind: HostKeyKind) -> Result<PrivateKey, KeyError> {
    match kind {
        HostKeyKind::Ed25519 => PrivateKey::random(&mut OsRng, Algorithm::Ed25519),
        HostKeyKind::Rsa => {
            let kp = ssh_key::private::RsaKeypair::random(&mut OsRng, RSA_HOST_KEY_BITS)
                .map_err(KeyError::Generate)?;
            PrivateKey::new(ssh_key::private::KeypairData::from(kp), "")
        }
    }
    .map_err(KeyError::Generate)
}

/// SHA-256 fingerprint as OpenSSH prints it (`SHA256:…`).
pub fn fingerprint(key: &ssh_key::PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn openssh_text(key: &PrivateKey) -> Result<String, KeyError> {
    key.to_openssh(LineEnding::LF)
        .map(|z| z.to_string())
        .map_err(KeyError::Generate)
}

/// Generate a host key at `path` (which must not exist; mode 0600). Returns its fingerprint.
pub fn generate_host_key(path: &Path, kind: HostKeyKind) -> Result<String, KeyError> {
    let key = new_key(kind)?;
    spool::write_new_file(path, openssh_text(&key)?.as_bytes(), spool::MODE_SECRET)?;
    Ok(fingerprint(key.public_key()))
}

/// Generate a client key pair for a customer: the private key at `private_path` (OpenSSH
/// format, 0600) and its public line into a new `authorized_keys` file. Returns the
/// fingerprint.
pub fn generate_client_key(
    private_path: &Path,
    authorized_keys: &Path,
    comment: &str,
) -> Result<String, KeyError> {
    let mut key = new_key(HostKeyKind::Ed25519)?;
    key.set_comment(comment);
    spool::write_new_file(
        private_path,
        openssh_text(&key)?.as_bytes(),
        spool::MODE_SECRET,
    )?;
    let line = key.public_key().to_openssh().map_err(KeyError::Generate)?;
    spool::write_new_file(
        authorized_keys,
        format!("{line}\n").as_bytes(),
        spool::MODE_SECRET,
    )?;
    Ok(fingerprint(key.public_key()))
}

/// Where the generated client private key of an authorized-keys file goes:
/// `keys/demo.authorized_keys` → `keys/demo.id_ed25519`.
pub fn client_key_path(authorized_keys: &Path, partner: &str) -> PathBuf {
    authorized_keys.with_file_name(format!("{partner}.id_ed25519"))
}

/// Load host keys (already checked by config validation; re-checked here for the reading).
pub fn load_host_keys(paths: &[PathBuf]) -> Result<Vec<PrivateKey>, KeyError> {
    let mut out = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let key = PrivateKey::from_openssh(text).map_err(|e| KeyError::Read {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        out.push(key);
    }
    Ok(out)
}
