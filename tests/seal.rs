//! `sluss seal`, `sluss verify` and `sluss keygen seal` against the real binary, with
//! Bankgirot's sample files.
use crate::util::{self, TEST_KEY_HEX};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

const TEST_KVV: &str = "FF365893D899291C3BF505FB3175E880";
const OTHER_KEY_HEX: &str = "00112233445566778899AABBCCDDEEFF";

/// Write a key file with the given mode (bypassing the umask with an explicit chmod).
fn key_file(dir: &Path, name: &str, hex: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .unwrap();
    writeln!(f, "{hex}").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    util::sluss().args(args).output().unwrap()
}

fn verify(keys: &[&Path], file: &Path) -> Output {
    let mut cmd = util::sluss();
    cmd.arg("verify");
    for k in keys {
        cmd.arg("--key-file").arg(k);
    }
    cmd.arg(file).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn sealed_sample_verifies_with_test_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "test.key", TEST_KEY_HEX, 0o600);
    let o = verify(
        &[&key],
        &util::fixture("bankgirot/lb/lb-sealed-testkey-lf.txt"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        format!("valid: sealed 170502 with key {TEST_KVV}")
    );
    assert!(!stderr(&o).contains("WARNING"), "{}", stderr(&o));
}

#[test]
fn key_used_as_text_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "test.key", TEST_KEY_HEX, 0o600);
    let o = verify(
        &[&key],
        &util::fixture("bankgirot/lb/lb-sealed-key-as-text-INVALID.txt"),
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("key-used-as-text"), "{e}");
    assert!(e.contains("text instead of its hex value"), "{e}");
    assert!(!e.contains(TEST_KEY_HEX), "key leaked: {e}");
}

#[test]
fn loose_key_file_is_refused_with_chmod_hint() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "loose.key", TEST_KEY_HEX, 0o644);
    let o = verify(
        &[&key],
        &util::fixture("bankgirot/lb/lb-sealed-testkey-lf.txt"),
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains(&format!("chmod 600 {}", key.display())), "{e}");
    assert!(e.contains("0644"), "{e}");
    assert!(!e.contains(TEST_KEY_HEX), "key leaked: {e}");
}

#[test]
fn bad_key_file_content_is_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "my-secret-password-not-hex";
    let key = key_file(dir.path(), "bad.key", secret, 0o600);
    let o = verify(
        &[&key],
        &util::fixture("bankgirot/lb/lb-sealed-testkey-lf.txt"),
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("32 hex characters") && e.contains("bad.key"),
        "{e}"
    );
    assert!(!e.contains(secret), "{e}");
}

/// Seal through the CLI, verify through the CLI, and check the file's bytes and line
/// endings survive byte-exact between the seal records.
fn round_trip(dir: &Path, name: &str, body: &[u8], eol: &[u8]) {
    let key = key_file(dir, &format!("{name}.key"), TEST_KEY_HEX, 0o600);
    let input = dir.join(name);
    fs::write(&input, body).unwrap();
    let sealed = dir.join(format!("{name}.sealed"));
    let o = run(&[
        "seal".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--date".as_ref(),
        "260315".as_ref(),
        "-o".as_ref(),
        sealed.as_os_str(),
        input.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = fs::read(&sealed).unwrap();
    let mut want = b"00260315HMAC".to_vec();
    want.resize(80, b' ');
    want.extend_from_slice(eol);
    want.extend_from_slice(body);
    assert!(out.starts_with(&want), "{name}: TK00 or body changed");
    // A body without a final line break gets one before TK99 (it normalises away).
    if !body.ends_with(eol) {
        want.extend_from_slice(eol);
        assert!(out.starts_with(&want), "{name}: line break before TK99");
    }
    let tail = &out[want.len()..];
    assert_eq!(
        tail.len(),
        80 + eol.len(),
        "{name}: one TK99 line after the body"
    );
    assert!(tail.starts_with(format!("99260315{TEST_KVV}").as_bytes()));
    assert!(tail.ends_with(eol));
    let o = verify(&[&key], &sealed);
    assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
    assert!(stdout(&o).contains("sealed 260315"));
    // The output file is never overwritten.
    let again = run(&[
        "seal".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "-o".as_ref(),
        sealed.as_os_str(),
        input.as_os_str(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(fs::read(&sealed).unwrap(), out);
}

#[test]
fn seal_verify_round_trip_keeps_crlf_and_lf() {
    let dir = tempfile::tempdir().unwrap();
    let crlf = fs::read(util::fixture("bankgirot/lb/lb-official-example.txt")).unwrap();
    assert!(crlf.windows(2).any(|w| w == b"\r\n"));
    round_trip(dir.path(), "crlf.txt", &crlf, b"\r\n");
    let lf = fs::read(util::fixture("bankgirot/lb/lb-unsealed.txt")).unwrap();
    assert!(!lf.contains(&b'\r'));
    round_trip(dir.path(), "lf.txt", &lf, b"\n");
}

#[test]
fn sealing_the_unsealed_sample_reproduces_the_published_seal() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "test.key", TEST_KEY_HEX, 0o600);
    let o = run(&[
        "seal".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--date".as_ref(),
        "170502".as_ref(),
        util::fixture("bankgirot/lb/lb-unsealed.txt").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        o.stdout,
        fs::read(util::fixture("bankgirot/lb/lb-sealed-testkey-lf.txt")).unwrap()
    );
}

#[test]
fn sealing_a_sealed_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "test.key", TEST_KEY_HEX, 0o600);
    let o = run(&[
        "seal".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        util::fixture("bankgirot/lb/lb-sealed-testkey-lf.txt").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already sealed"), "{}", stderr(&o));
}

fn sealed_copy_with(dir: &Path, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = fs::read(util::fixture("bankgirot/lb/lb-sealed-testkey-lf.txt")).unwrap();
    edit(&mut bytes);
    let p = dir.join("edited.txt");
    fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn one_changed_digit_is_content_changed() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "test.key", TEST_KEY_HEX, 0o600);
    let file = sealed_copy_with(dir.path(), |b| {
        // The amount of the first payment: 000000098000 -> 000000098001.
        let pos = b.windows(12).position(|w| w == b"000000098000").unwrap();
        b[pos + 11] = b'1';
    });
    let o = verify(&[&key], &file);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("content-changed") && e.contains("changed after sealing"),
        "{e}"
    );
}

#[test]
fn another_key_is_wrong_key_with_both_kvvs_and_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let other = key_file(dir.path(), "other.key", OTHER_KEY_HEX, 0o600);
    let other_kvv = sluss::seal::SealKey::from_hex(OTHER_KEY_HEX).unwrap().kvv();
    let o = verify(
        &[&other],
        &util::fixture("bankgirot/lb/lb-sealed-testkey-lf.txt"),
    );
    assert_eq!(o.status.code(), Some(1));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("wrong-key"), "{all}");
    assert!(
        all.contains(TEST_KVV) && all.contains(other_kvv.as_str()),
        "{all}"
    );
    for secret in [OTHER_KEY_HEX, TEST_KEY_HEX] {
        assert!(!all.to_uppercase().contains(secret), "key leaked: {all}");
    }
    // With both keys (rotation) the file verifies.
    let test = key_file(dir.path(), "test.key", TEST_KEY_HEX, 0o600);
    let o = verify(
        &[&other, &test],
        &util::fixture("bankgirot/lb/lb-sealed-testkey-lf.txt"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn data_after_tk99_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "test.key", TEST_KEY_HEX, 0o600);
    let file = sealed_copy_with(dir.path(), |b| {
        b.extend_from_slice(b"14000888888556897456986              000000098000170505\n");
    });
    let o = verify(&[&key], &file);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("data-after-tk99") && e.contains("line 7") && e.contains("(line 6)"),
        "{e}"
    );
}

#[test]
fn unprotected_bytes_warn_without_changing_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "test.key", TEST_KEY_HEX, 0o600);
    let input = dir.path().join("twin.txt");
    fs::write(&input, b"11REF [ABC] \tX\r\n").unwrap();
    let sealed = dir.path().join("twin.sealed");
    let o = run(&[
        "seal".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--date".as_ref(),
        "260101".as_ref(),
        "-o".as_ref(),
        sealed.as_os_str(),
        input.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = verify(&[&key], &sealed);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("WARNING") && e.contains("3 byte(s)"), "{e}");
    assert!(
        e.contains("line 2 column 7 byte 0x5B (swedish-twin)"),
        "{e}"
    );
    assert!(e.contains("byte 0x09 (opaque-byte)"), "{e}");
}

#[test]
fn keygen_writes_0600_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.key");
    let o = run(&[
        "keygen".as_ref(),
        "seal".as_ref(),
        "-o".as_ref(),
        path.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let content = fs::read_to_string(&path).unwrap();
    let key = sluss::seal::SealKey::from_hex(&content).unwrap();
    assert_eq!(content, format!("{}\n", key.to_hex()));
    assert!(stdout(&o).contains(key.kvv().as_str()));
    assert!(!stdout(&o).contains(&key.to_hex()) && !stderr(&o).contains(&key.to_hex()));
    let again = run(&[
        "keygen".as_ref(),
        "seal".as_ref(),
        "-o".as_ref(),
        path.as_os_str(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), content);
    // The key it wrote is accepted by verify's permission check and seals a file.
    let o = verify(
        &[&path],
        &util::fixture("bankgirot/lb/lb-sealed-testkey-lf.txt"),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("wrong-key"));
}

#[test]
fn keygen_without_output_prints_key_and_kvv_apart() {
    let o = run(&["keygen".as_ref(), "seal".as_ref()]);
    assert_eq!(o.status.code(), Some(0));
    let key = sluss::seal::SealKey::from_hex(&stdout(&o)).unwrap();
    assert_eq!(stderr(&o).trim(), format!("KVV {}", key.kvv()));
}
