//! sluss's own SFTP server against the clients customers run: OpenSSH `sftp` and `scp`,
//! paramiko, rclone, lftp and PuTTY's psftp. Every allowed operation has a refused twin.
//! Each test starts its own `sluss serve` on a free port (listen = 127.0.0.1:0; the daemon
//! writes the bound port to var/sftp.port) with pre-generated host and client keys, and
//! pins the host key in the clients (never "accept any host key").

use crate::pipeline::lb_order;
use crate::util::{self, TEST_KEY_HEX};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DEMO_BG: &str = "0009912346";
/// The second account's password (its Argon2id hash is made with `sluss passwd`).
const ACME_PASSWORD: &str = "correct horse battery staple";

/// How long the tests wait for something that should happen within a second or two.
const PATIENCE: Duration = Duration::from_secs(60);

/// The test key's seal over `content`, dated like the pipeline tests' files.
fn sealed(content: &[u8]) -> Vec<u8> {
    crate::pipeline::sealed(content, "261129")
}

/// A sealed payment order of the demo customer, distinct per seed.
fn good_order(seed: u64) -> Vec<u8> {
    sealed(&lb_order(DEMO_BG, 3, seed))
}

/// The same with one payment amount changed after sealing.
fn tampered_order(seed: u64) -> Vec<u8> {
    let mut b = good_order(seed);
    let text = String::from_utf8_lossy(&b).into_owned();
    let i = text.find("\r\n14").unwrap() + 2 + 37;
    b[i] = if b[i] == b'9' { b'1' } else { b'9' };
    b
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A child process killed (by PID) when dropped.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Extra lines for sluss.toml's [sftp] table.
#[derive(Default)]
struct Opts {
    sftp_extra: &'static str,
    demo_extra: &'static str,
}

/// A gateway with its SFTP server running.
struct Gw {
    dir: tempfile::TempDir,
    port: u16,
    _serve: Guarded,
}

fn keygen(path: &Path, kind: &str) {
    let mut c = Command::new("ssh-keygen");
    c.args(["-q", "-N", "", "-t", kind, "-f"]).arg(path);
    if kind == "rsa" {
        c.args(["-b", "3072"]);
    }
    let o = run(&mut c);
    assert!(o.status.success(), "{}", text(&o));
}

impl Gw {
    fn start() -> Gw {
        Gw::start_with(Opts::default())
    }

    fn start_with(opts: Opts) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        fs::create_dir_all(p.join("jobs.d")).unwrap();
        fs::create_dir_all(p.join("keys")).unwrap();
        fs::set_permissions(p.join("keys"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::copy(
            root.join("jobs.d/demo-bank.toml"),
            p.join("jobs.d/demo-bank.toml"),
        )
        .unwrap();
        let demo = fs::read_to_string(root.join("jobs.d/demo.toml")).unwrap();
        fs::write(
            p.join("jobs.d/demo.toml"),
            format!("{demo}\n{}\n", opts.demo_extra),
        )
        .unwrap();
        let hash = {
            let mut c = util::sluss()
                .arg("passwd")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            writeln!(c.stdin.take().unwrap(), "{ACME_PASSWORD}").unwrap();
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success());
            String::from_utf8(o.stdout).unwrap().trim().to_string()
        };
        fs::write(
            p.join("jobs.d/acme.toml"),
            format!(
                "[partner]\nid = \"acme\"\nname = \"Acme AB\"\nrole = \"customer\"\n\
                 [routing]\nbankgiro = [\"5050-1055\"]\n\
                 [seal]\nrequired = false\n[payments]\nbank = \"demo-bank\"\n\
                 [sftp]\npassword_hash = \"{hash}\"\n"
            ),
        )
        .unwrap();
        fs::write(
            p.join("sluss.toml"),
            format!(
                "data_dir = \"var\"\n[sftp]\nlisten = \"127.0.0.1:0\"\nban_failures = 3\n\
                 ban_seconds = 2\nban_max_seconds = 4\n{}\n",
                opts.sftp_extra
            ),
        )
        .unwrap();
        let seal = p.join("keys/demo.seal");
        fs::write(&seal, format!("{TEST_KEY_HEX}\n")).unwrap();
        fs::set_permissions(&seal, fs::Permissions::from_mode(0o600)).unwrap();
        // Pre-generated keys: RSA generation in a debug build is slow.
        keygen(&p.join("keys/ssh_host_ed25519_key"), "ed25519");
        keygen(&p.join("keys/ssh_host_rsa_key"), "rsa");
        keygen(&p.join("keys/demo.id_ed25519"), "ed25519");
        fs::copy(
            p.join("keys/demo.id_ed25519.pub"),
            p.join("keys/demo.authorized_keys"),
        )
        .unwrap();
        keygen(&p.join("keys/stranger"), "ed25519");
        let host = fs::read_to_string(p.join("keys/ssh_host_ed25519_key.pub")).unwrap();
        let host_rsa = fs::read_to_string(p.join("keys/ssh_host_rsa_key.pub")).unwrap();

        let log = fs::File::create(p.join("serve.log")).unwrap();
        let child = util::sluss()
            .args(["serve", "--config"])
            .arg(p)
            .env("SLUSS_LOG", "info,sluss::sftpd::session=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let serve = Guarded(child);
        let port_file = p.join("var/sftp.port");
        let end = Instant::now() + PATIENCE;
        let port = loop {
            if let Ok(t) = fs::read_to_string(&port_file)
                && let Ok(port) = t.trim().parse::<u16>()
            {
                break port;
            }
            assert!(
                Instant::now() < end,
                "no port file; log:\n{}",
                fs::read_to_string(p.join("serve.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        fs::write(
            p.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host}[127.0.0.1]:{port} {host_rsa}"),
        )
        .unwrap();
        Gw {
            dir,
            port,
            _serve: serve,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn key(&self) -> PathBuf {
        self.path().join("keys/demo.id_ed25519")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path().join("serve.log")).unwrap_or_default()
    }

    fn ssh_opts(&self) -> Vec<String> {
        vec![
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!(
                "UserKnownHostsFile={}",
                self.path().join("known_hosts").display()
            ),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "ConnectTimeout=30".into(),
        ]
    }

    /// OpenSSH `sftp -b` with the demo key; (success, output).
    fn sftp(&self, batch: &str) -> (bool, String) {
        self.sftp_as("demo", &self.key(), batch)
    }

    fn sftp_as(&self, user: &str, key: &Path, batch: &str) -> (bool, String) {
        let bf = self.path().join("batch");
        fs::write(&bf, batch).unwrap();
        let o = run(Command::new("timeout")
            .arg("120")
            .arg("sftp")
            .args(self.ssh_opts())
            .arg("-i")
            .arg(key)
            .arg("-P")
            .arg(self.port.to_string())
            .arg("-b")
            .arg(&bf)
            .arg(format!("{user}@127.0.0.1"))
            .current_dir(self.path()));
        (o.status.success(), text(&o))
    }

    /// Run a paramiko script. The script gets `sftp` (connected as demo with its key, or
    /// as `USER` with `PASSWORD` when set) and prints results; exceptions are printed too.
    fn paramiko(&self, body: &str, env: &[(&str, &str)]) -> String {
        let script = format!(
            r#"
import os, sys, socket, paramiko
def connect(user=None, password=None, key=True):
    c = paramiko.SSHClient()
    c.load_host_keys(os.environ["KNOWN"])
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    kw = dict(hostname="127.0.0.1", port=int(os.environ["PORT"]), username=user or "demo",
              allow_agent=False, look_for_keys=False, timeout=30, banner_timeout=30, auth_timeout=30)
    if password is not None:
        kw["password"] = password
    elif key:
        kw["key_filename"] = os.environ["KEY"]
    c.connect(**kw)
    return c
def attempt(label, f):
    try:
        r = f()
        print(label, "OK", r if r is not None else "")
    except Exception as e:
        print(label, "ERR", type(e).__name__, e)
{body}
"#
        );
        let o = run(Command::new("timeout")
            .arg("120")
            .arg("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .env("KNOWN", self.path().join("known_hosts"))
            .env("PORT", self.port.to_string())
            .env("KEY", self.key())
            .envs(env.iter().copied())
            .current_dir(self.path()));
        text(&o)
    }

    fn ledger(&self) -> Vec<serde_json::Value> {
        let o = run(util::sluss()
            .args(["ledger", "list", "--json", "--config"])
            .arg(self.path())
            .env("SLUSS_LOG", "warn"));
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn outbox(&self) -> Vec<PathBuf> {
        fs::read_dir(self.path().join("var/bank-outbox"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn download_dir(&self, partner: &str) -> PathBuf {
        self.path().join("var/download").join(partner)
    }

    fn incoming_temps(&self) -> Vec<PathBuf> {
        fs::read_dir(self.path().join("var/spool/incoming"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Waits until `spool/incoming` is empty: no partial upload left behind.
    fn assert_no_partial_data(&self) {
        assert!(
            wait_for(|| self.incoming_temps().is_empty()),
            "partial data left: {:?}",
            self.incoming_temps()
        );
    }

    /// Waits until the log counts `n` abandoned uploads and no partial data is left.
    fn assert_abandoned(&self, n: usize) {
        assert!(
            wait_for(|| self.log().matches("sftp.upload.abandoned").count() == n),
            "expected {n} abandoned uploads: {}",
            self.log()
        );
        self.assert_no_partial_data();
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path().join(name);
        fs::write(&p, bytes).unwrap();
        p
    }
}

fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

#[test]
fn openssh_sftp_sealed_upload_is_delivered_and_tampered_one_is_refused_at_close() {
    let g = Gw::start();
    let good = good_order(1);
    g.write("pay1.txt", &good);
    let (ok, out) = g.sftp("put -f pay1.txt /upload/pay1.txt\n");
    assert!(ok, "{out}\n{}", g.log());
    // The receipt came after the ledger record: it is there now.
    let l = g.ledger();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["source"], "sftp");
    assert!(wait_for(|| g.outbox().len() == 1), "{}", g.log());
    assert_eq!(
        fs::read(&g.outbox()[0]).unwrap(),
        good,
        "delivered byte-identical"
    );

    // Refused twin: a tampered file fails at CLOSE, is quarantined, and a note appears.
    g.write("pay2.txt", &tampered_order(2));
    let (ok, out) = g.sftp("put pay2.txt /upload/pay2.txt\n");
    assert!(!ok, "a tampered file must not get a receipt: {out}");
    let l = g.ledger();
    let q: Vec<_> = l.iter().filter(|r| r["state"] == "quarantined").collect();
    assert_eq!(q.len(), 1, "{l:?}");
    let (ok, out) = g.sftp("ls -1 /download\n");
    assert!(ok, "{out}");
    assert!(
        out.contains("REJECTED-"),
        "rejection note in /download: {out}"
    );
    assert_eq!(g.outbox().len(), 1, "nothing more reached the bank");

    // paramiko shows the one-line reason the ERP logs.
    g.write("pay3.txt", &tampered_order(3));
    let out = g.paramiko(
        "s = connect().open_sftp()\nattempt('put', lambda: s.put('pay3.txt', '/upload/pay3.txt'))",
        &[],
    );
    assert!(out.contains("put ERR"), "{out}");
    assert!(
        out.contains("seal:content-changed") || out.contains("seal"),
        "{out}"
    );
}

#[test]
fn temp_name_upload_is_ingested_once_after_the_rename() {
    let g = Gw::start();
    g.write("pay.txt", &good_order(10));
    g.write("pay2.txt", &good_order(11));
    let out = g.paramiko(
        r#"
c = connect(); s = c.open_sftp()
attempt('put-tmp', lambda: s.put('pay.txt', '/upload/pay.txt.filepart', confirm=True).st_size)
print('LEDGER-AFTER-PUT', os.popen(os.environ['LEDGER']).read().count('"id"'))
attempt('listed', lambda: s.listdir('/upload'))
attempt('rename', lambda: s.rename('/upload/pay.txt.filepart', '/upload/pay.txt'))
attempt('stat-after', lambda: s.stat('/upload/pay.txt').st_size)
attempt('utime', lambda: s.utime('/upload/pay.txt', (1700000000, 1700000000)))
attempt('read-back', lambda: s.open('/upload/pay.txt', 'r').read())
attempt('put-dot', lambda: s.put('pay2.txt', '/upload/.pay2.txt', confirm=True).st_size)
attempt('posix-rename', lambda: s.posix_rename('/upload/.pay2.txt', '/upload/pay2.txt'))
attempt('rename-again', lambda: s.rename('/upload/pay.txt', '/upload/other.txt'))
"#,
        &[(
            "LEDGER",
            &format!(
                "{} ledger list --json --config {}",
                env!("CARGO_BIN_EXE_sluss"),
                g.path().display()
            ),
        )],
    );
    assert!(out.contains("put-tmp OK"), "{out}\n{}", g.log());
    assert!(
        out.contains("LEDGER-AFTER-PUT 0"),
        "nothing ingested before the rename: {out}"
    );
    assert!(out.contains("pay.txt.filepart"), "{out}");
    assert!(out.contains("rename OK"), "{out}\n{}", g.log());
    assert!(
        out.contains("stat-after OK"),
        "accepted file stays visible: {out}"
    );
    assert!(out.contains("utime OK"), "setting times is accepted: {out}");
    assert!(
        out.contains("read-back ERR"),
        "reading back is not offered: {out}"
    );
    assert!(out.contains("posix-rename OK"), "{out}");
    assert!(
        out.contains("rename-again ERR"),
        "an accepted file cannot be renamed: {out}"
    );
    let l = g.ledger();
    assert_eq!(l.len(), 2, "each ingested exactly once: {l:?}");
    let names: Vec<_> = l
        .iter()
        .map(|r| r["original_name"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(names.contains(&"pay.txt".to_string()), "{names:?} / {l:?}");
}

/// SHA-256 of `b`, lower-case hex, as the ledger records it.
fn sha(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The ledger record of the file received as `name`.
fn record_named(ledger: &[serde_json::Value], name: &str) -> serde_json::Value {
    ledger
        .iter()
        .find(|r| r["original_name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the ledger: {ledger:?}"))
        .clone()
}

/// Large uploads are analysed while they arrive (above the 4 MiB threshold of
/// `pipeline::live`); the outcome must be what reading the file back gives: a sealed file
/// accepted with its true SHA-256 and delivered byte-identical, a tampered one refused at
/// CLOSE, a temporary-name upload accepted at its rename, and an upload written out of order
/// (the analysis falls back to reading back) accepted too.
#[test]
fn an_upload_written_to_disk_while_it_arrives_keeps_its_bytes_and_verdict() {
    // Past 32 MiB the writer flushes in the background (sftpd::session::Flusher); the
    // receipt, the recorded hash and the delivered bytes must not change.
    let g = Gw::start();
    // Five sections (each one's total must fit its 12 digits): ~35 MiB.
    let body: Vec<u8> = (90..95)
        .flat_map(|seed| lb_order(DEMO_BG, 90_000, seed))
        .collect();
    let good = sealed(&body);
    assert!(good.len() > 34 << 20);
    g.write("huge.txt", &good);
    let (ok, out) = g.sftp("put -f huge.txt /upload/huge.txt\n");
    assert!(ok, "{out}\n{}", g.log());
    let r = record_named(&g.ledger(), "huge.txt");
    assert_ne!(r["state"], "quarantined", "{r}");
    assert_eq!(r["sha256"], sha(&good), "{r}");
    assert!(wait_for(|| g.outbox().len() == 1), "{}", g.log());
    assert_eq!(
        fs::read(&g.outbox()[0]).unwrap(),
        good,
        "delivered byte-identical"
    );
    let log = g.log();
    assert!(
        log.contains("sftp.upload.flushing") && log.contains("started=true"),
        "{log}"
    );
}

#[test]
fn large_uploads_analysed_as_they_arrive_get_the_same_verdicts() {
    let g = Gw::start();
    let big = |seed| sealed(&lb_order(DEMO_BG, 80_000, seed)); // ~6.4 MiB
    let good = big(70);
    assert!(good.len() > 6 << 20);
    g.write("big.txt", &good);
    let mut bad = big(71);
    let i = bad.len() / 2;
    let i = i + bad[i..].windows(2).position(|w| w == b"\r\n").unwrap() + 2 + 40;
    bad[i] = if bad[i] == b'9' { b'1' } else { b'9' };
    g.write("bad.txt", &bad);
    g.write("tmp.txt", &big(72));
    g.write("ooo.txt", &big(73));

    let (ok, out) = g.sftp("put -f big.txt /upload/big.txt\n");
    assert!(ok, "{out}\n{}", g.log());
    let (ok, out) = g.sftp("put -f bad.txt /upload/bad.txt\n");
    assert!(!ok, "a tampered large file must not get a receipt: {out}");
    let (ok, out) = g
        .sftp("put -f tmp.txt /upload/tmp.txt.part\nrename /upload/tmp.txt.part /upload/tmp.txt\n");
    assert!(ok, "{out}\n{}", g.log());
    // paramiko writing the second half first, then the first: out of order.
    let out = g.paramiko(
        r#"
data = open('ooo.txt', 'rb').read()
s = connect().open_sftp()
def put_backwards():
    f = s.open('/upload/ooo.txt', 'wb')
    half = len(data) // 2
    f.seek(half); f.write(data[half:])
    f.seek(0); f.write(data[:half])
    f.close()
attempt('ooo', put_backwards)
"#,
        &[],
    );
    assert!(out.contains("ooo OK"), "{out}\n{}", g.log());

    let l = g.ledger();
    let by_name = |n: &str| record_named(&l, n);
    let r = by_name("big.txt");
    assert_ne!(r["state"], "quarantined", "{r}");
    assert_eq!(r["sha256"], sha(&good), "{r}");
    let r = by_name("bad.txt");
    assert_eq!(r["state"], "quarantined", "{r}");
    assert_eq!(r["sha256"], sha(&bad), "{r}");
    assert_ne!(by_name("tmp.txt")["state"], "quarantined");
    let r = by_name("ooo.txt");
    assert_ne!(r["state"], "quarantined", "{r}");
    assert_eq!(
        r["sha256"],
        sha(&fs::read(g.path().join("ooo.txt")).unwrap())
    );
    assert!(wait_for(|| g.outbox().len() == 3), "{}", g.log());
    let delivered: Vec<Vec<u8>> = g.outbox().iter().map(|p| fs::read(p).unwrap()).collect();
    assert!(delivered.contains(&good), "delivered byte-identical");
    // The first three were checked as they arrived, the out-of-order one after CLOSE.
    let log = g.log();
    let live = log.matches("checked_while_arriving=true").count();
    let back = log.matches("checked_while_arriving=false").count();
    assert_eq!((live, back), (3, 1), "{log}");
}

/// A large upload resumed after its first part was closed under a temporary name (as
/// WinSCP and lftp do after a broken connection): the first part was analysed as it arrived,
/// the resume writes after it from another handle. The final file must be judged on all of
/// its bytes — accepted with the SHA-256 of the whole file — and a resumed upload whose
/// second part was tampered with must be refused.
#[test]
fn a_resumed_large_upload_is_judged_on_all_its_bytes() {
    let g = Gw::start();
    let good = sealed(&lb_order(DEMO_BG, 150_000, 80)); // ~12 MiB: both halves past 4 MiB
    let mut bad = sealed(&lb_order(DEMO_BG, 150_000, 81));
    let i = bad.len() * 3 / 4;
    let i = i + bad[i..].windows(2).position(|w| w == b"\r\n").unwrap() + 2 + 40;
    bad[i] = if bad[i] == b'9' { b'1' } else { b'9' };
    g.write("good.txt", &good);
    g.write("bad.txt", &bad);
    let out = g.paramiko(
        r#"
def resume(local, remote):
    data = open(local, 'rb').read()
    half = len(data) // 2
    s = connect().open_sftp()
    f = s.open(remote + '.part', 'wb'); f.write(data[:half]); f.close()
    f = s.open(remote + '.part', 'ab'); f.write(data[half:]); f.close()
    s.rename(remote + '.part', remote)
attempt('good', lambda: resume('good.txt', '/upload/good.txt'))
attempt('bad', lambda: resume('bad.txt', '/upload/bad.txt'))
"#,
        &[],
    );
    assert!(out.contains("good OK"), "{out}\n{}", g.log());
    assert!(out.contains("bad ERR"), "{out}\n{}", g.log());
    let l = g.ledger();
    let find = |n: &str| record_named(&l, n);
    let r = find("good.txt");
    assert_ne!(r["state"], "quarantined", "{r}");
    assert_eq!(r["sha256"], sha(&good), "{r}");
    assert_eq!(r["size"], good.len(), "{r}");
    let r = find("bad.txt");
    assert_eq!(r["state"], "quarantined", "{r}");
    assert_eq!(r["sha256"], sha(&bad), "{r}");
    assert!(wait_for(|| g.outbox().len() == 1), "{}", g.log());
    assert_eq!(fs::read(&g.outbox()[0]).unwrap(), good);
}

#[test]
fn escapes_other_accounts_and_disallowed_operations_are_refused() {
    let g = Gw::start();
    fs::create_dir_all(g.download_dir("acme")).unwrap();
    fs::write(g.download_dir("acme").join("acme-secret.txt"), b"acme only").unwrap();
    fs::create_dir_all(g.download_dir("demo")).unwrap();
    fs::write(g.download_dir("demo").join("receipt.txt"), b"for demo").unwrap();
    std::os::unix::fs::symlink(
        g.download_dir("acme").join("acme-secret.txt"),
        g.download_dir("demo").join("link.txt"),
    )
    .unwrap();
    let out = g.paramiko(
        r#"
s = connect().open_sftp()
attempt('root', lambda: sorted(s.listdir('/')))
attempt('download', lambda: sorted(s.listdir('/download')))
attempt('own', lambda: s.open('/download/receipt.txt').read())
attempt('dotdot', lambda: s.open('/download/../../acme/acme-secret.txt').read())
attempt('dotdot2', lambda: s.listdir('/..'))
attempt('abs', lambda: s.open('/etc/passwd').read())
attempt('other', lambda: s.open('/download/../download/../../download/acme/acme-secret.txt').read())
attempt('link', lambda: s.open('/download/link.txt').read())
attempt('symlink', lambda: s.symlink('/etc/passwd', '/upload/x'))
attempt('mkdir', lambda: s.mkdir('/upload/sub'))
attempt('rmdir', lambda: s.rmdir('/upload'))
attempt('write-download', lambda: s.open('/download/new.txt', 'w').write('x'))
attempt('backslash', lambda: s.open('/upload/..\\..\\x', 'w').write('x'))
attempt('realpath', lambda: s.normalize('/upload/../download'))
"#,
        &[],
    );
    assert!(out.contains("root OK ['download', 'upload']"), "{out}");
    assert!(
        out.contains("download OK ['receipt.txt']"),
        "links and other accounts are not listed: {out}"
    );
    assert!(out.contains("own OK b'for demo'"), "{out}");
    for refused in [
        "dotdot",
        "dotdot2",
        "abs",
        "other",
        "link",
        "symlink",
        "mkdir",
        "rmdir",
        "write-download",
        "backslash",
    ] {
        assert!(
            out.contains(&format!("{refused} ERR")),
            "{refused} must be refused: {out}"
        );
    }
    assert!(out.contains("realpath OK /download"), "{out}");
    assert!(!out.contains("acme only"), "{out}");
    assert!(g.log().contains("sftp.refused"), "refusals are logged");
    // Nothing was created anywhere.
    assert!(g.ledger().is_empty());
    assert!(!g.download_dir("demo").join("new.txt").exists());
}

#[test]
fn download_folder_lists_reads_and_deletes_with_openssh_sftp() {
    let g = Gw::start();
    fs::create_dir_all(g.download_dir("demo")).unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(g.download_dir("demo").join("return-1.dat"), &body).unwrap();
    let (ok, out) =
        g.sftp("ls -l /download\nget /download/return-1.dat got.dat\nrm /download/return-1.dat\n");
    assert!(ok, "{out}\n{}", g.log());
    assert_eq!(fs::read(g.path().join("got.dat")).unwrap(), body);
    assert!(
        !g.download_dir("demo").join("return-1.dat").exists(),
        "deleted after fetching"
    );
    // Refused twins: removing what is not there, and getting from /upload.
    let (ok, _) = g.sftp("rm /download/return-1.dat\n");
    assert!(!ok);
    let (ok, _) = g.sftp("get /upload/anything.txt x\n");
    assert!(!ok);
}

#[test]
fn scp_uploads_in_sftp_mode_and_legacy_scp_is_refused_without_hanging() {
    let g = Gw::start();
    let f = g.write("scp-pay.txt", &good_order(20));
    let dest = "demo@127.0.0.1:/upload/scp-pay.txt";
    let mut c = Command::new("timeout");
    c.arg("120")
        .arg("scp")
        .args(g.ssh_opts())
        .arg("-i")
        .arg(g.key())
        .arg("-P")
        .arg(g.port.to_string());
    let o = run(c.arg(&f).arg(dest));
    assert!(o.status.success(), "{}\n{}", text(&o), g.log());
    assert_eq!(g.ledger().len(), 1);

    let f2 = g.write("scp-pay2.txt", &good_order(21));
    let mut c = Command::new("timeout");
    c.arg("60")
        .arg("scp")
        .arg("-O")
        .args(g.ssh_opts())
        .arg("-i")
        .arg(g.key())
        .arg("-P")
        .arg(g.port.to_string());
    let o = run(c.arg(&f2).arg("demo@127.0.0.1:/upload/scp-pay2.txt"));
    assert!(
        !o.status.success(),
        "legacy scp must be refused: {}",
        text(&o)
    );
    assert_ne!(
        o.status.code(),
        Some(124),
        "legacy scp must not hang: {}",
        text(&o)
    );
    assert_eq!(g.ledger().len(), 1, "nothing ingested by legacy scp");
    // A shell is refused too, cleanly.
    let o = run(Command::new("timeout")
        .arg("60")
        .arg("ssh")
        .args(g.ssh_opts())
        .arg("-i")
        .arg(g.key())
        .arg("-p")
        .arg(g.port.to_string())
        .arg("demo@127.0.0.1")
        .arg("cat /etc/passwd"));
    assert!(!o.status.success());
    assert_ne!(o.status.code(), Some(124), "{}", text(&o));
    assert!(!text(&o).contains("root:"), "{}", text(&o));
}

#[test]
fn disconnect_mid_upload_ingests_nothing_and_cleans_up() {
    let g = Gw::start();
    let out = g.paramiko(
        r#"
c = connect(); s = c.open_sftp()
# Three uploads cut at once: written on the session's task (100 kB), by a writer thread
# (1 MB), and analysed as it arrives (6 MB, past the live-analysis threshold).
open_files = []  # kept referenced: paramiko closes a file object when it is collected
for name, n in (('small.txt', 100000), ('big.txt', 1000000), ('huge.txt', 6000000)):
    f = s.open('/upload/' + name, 'w')
    f.write(b'x' * n)
    f.flush()
    open_files.append(f)
c.get_transport().sock.close()
print('CUT')
"#,
        &[],
    );
    assert!(out.contains("CUT"), "{out}");
    g.assert_abandoned(3);
    assert!(g.ledger().is_empty(), "nothing ingested");
    // Nothing else affected: the next uploads work, a large one analysed as it arrives.
    g.write("after.txt", &good_order(30));
    g.write("after-big.txt", &sealed(&lb_order(DEMO_BG, 80_000, 31)));
    let (ok, out) =
        g.sftp("put after.txt /upload/after.txt\nput after-big.txt /upload/after-big.txt\n");
    assert!(ok, "{out}\n{}", g.log());
    assert_eq!(g.ledger().len(), 2);
    assert!(
        g.log().contains("checked_while_arriving=true"),
        "{}",
        g.log()
    );
}

#[test]
fn passwords_wrong_keys_and_unknown_users_look_alike_and_a_burst_bans_the_address() {
    let g = Gw::start();
    // Password login of the second account works, and it sees only its own folders.
    fs::create_dir_all(g.download_dir("acme")).unwrap();
    fs::write(g.download_dir("acme").join("mine.txt"), b"acme").unwrap();
    let out = g.paramiko(
        "attempt('acme', lambda: connect('acme', password=os.environ['PW']).open_sftp().listdir('/download'))",
        &[("PW", ACME_PASSWORD)],
    );
    assert!(out.contains("acme OK ['mine.txt']"), "{out}\n{}", g.log());

    // Wrong key, unknown user: the same answer.
    let stranger = g.path().join("keys/stranger");
    let (ok1, wrong_key) = g.sftp_as("demo", &stranger, "ls\n");
    let (ok2, unknown) = g.sftp_as("nobody", &g.key(), "ls\n");
    assert!(!ok1 && !ok2);
    let tail = |s: &str| s.lines().last().unwrap_or("").replace("nobody", "demo");
    assert_eq!(
        tail(&wrong_key),
        tail(&unknown),
        "{wrong_key}\n---\n{unknown}"
    );

    // A burst of wrong passwords bans the address (ban_failures = 3): even the right
    // password is refused then; the ban expires (ban_seconds = 2).
    let out = g.paramiko(
        r#"
for i in range(3):
    attempt('wrong%d' % i, lambda: connect('acme', password='nope'))
attempt('banned', lambda: connect('acme', password=os.environ['PW']))
"#,
        &[("PW", ACME_PASSWORD)],
    );
    assert!(
        out.contains("wrong0 ERR") && out.contains("wrong2 ERR"),
        "{out}"
    );
    assert!(
        out.contains("banned ERR"),
        "right password refused while banned: {out}"
    );
    assert!(g.log().contains("alert.sftp_ban"), "{}", g.log());
    let mut after = String::new();
    let expired = wait_for(|| {
        after = g.paramiko(
            "attempt('after', lambda: connect('acme', password=os.environ['PW']).open_sftp().listdir('/'))",
            &[("PW", ACME_PASSWORD)],
        );
        after.contains("after OK")
    });
    assert!(expired, "the ban expires: {after}\n{}", g.log());
}

#[test]
fn rclone_uploads_with_and_without_hash_check_and_downloads() {
    let g = Gw::start();
    fs::create_dir_all(g.download_dir("demo")).unwrap();
    fs::write(g.download_dir("demo").join("ret.dat"), b"bank return\r\n").unwrap();
    let rclone = |extra: &[&str], args: &[&str]| {
        let o = run(Command::new("timeout")
            .arg("120")
            .arg("rclone")
            .args([
                "--config",
                "/dev/null",
                "--sftp-host",
                "127.0.0.1",
                "--sftp-user",
                "demo",
                "--retries",
                "1",
                "--low-level-retries",
                "1",
            ])
            .arg("--sftp-port")
            .arg(g.port.to_string())
            .arg("--sftp-key-file")
            .arg(g.key())
            .arg("--sftp-known-hosts-file")
            .arg(g.path().join("known_hosts"))
            .args(extra)
            .args(args)
            .current_dir(g.path()));
        (o.status.success(), text(&o))
    };
    g.write("r1.txt", &good_order(40));
    g.write("r2.txt", &good_order(41));
    let (ok, out) = rclone(&[], &["copyto", "r1.txt", ":sftp:/upload/r1.txt"]);
    assert!(ok, "{out}\n{}", g.log());
    let (ok, out) = rclone(
        &["--sftp-disable-hashcheck"],
        &["copyto", "r2.txt", ":sftp:/upload/r2.txt"],
    );
    assert!(ok, "{out}\n{}", g.log());
    assert_eq!(g.ledger().len(), 2);
    let (ok, out) = rclone(&[], &["copyto", ":sftp:/download/ret.dat", "got.dat"]);
    assert!(ok, "{out}");
    assert_eq!(
        fs::read(g.path().join("got.dat")).unwrap(),
        b"bank return\r\n"
    );
    // Refused twin: a tampered file is reported as a failure.
    g.write("r3.txt", &tampered_order(42));
    let (ok, out) = rclone(
        &["--sftp-disable-hashcheck"],
        &["copyto", "r3.txt", ":sftp:/upload/r3.txt"],
    );
    assert!(!ok, "{out}");
    assert_eq!(
        g.ledger()
            .iter()
            .filter(|r| r["state"] == "quarantined")
            .count(),
        1
    );
}

#[test]
fn lftp_uploads_and_lists_over_sftp() {
    let g = Gw::start();
    g.write("l1.txt", &good_order(50));
    g.write("l2.txt", &tampered_order(51));
    let ssh = format!(
        "ssh -a -x -i {} -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o IdentitiesOnly=yes",
        g.key().display(),
        g.path().join("known_hosts").display()
    );
    let lftp = |cmds: &str| {
        let o = run(Command::new("timeout")
            .arg("120")
            .arg("lftp")
            .arg("-e")
            .arg(format!(
                "set sftp:connect-program \"{ssh}\"; set net:max-retries 1; set cmd:fail-exit yes; {cmds}; bye"
            ))
            .arg(format!("sftp://demo:@127.0.0.1:{}", g.port))
            .current_dir(g.path()));
        (o.status.success(), text(&o))
    };
    let (ok, out) = lftp("put l1.txt -o /upload/l1.txt; cls -1 /upload");
    assert!(ok, "{out}\n{}", g.log());
    assert!(out.contains("l1.txt"), "{out}");
    assert_eq!(g.ledger().len(), 1);
    let (ok, out) = lftp("put l2.txt -o /upload/l2.txt");
    assert!(!ok, "tampered upload must fail: {out}");
    let (ok, out) = lftp("cls -1 /download");
    assert!(ok, "{out}");
    assert!(out.contains("REJECTED-"), "{out}");
}

#[test]
fn putty_psftp_uploads_with_a_password() {
    let g = Gw::start();
    let o = run(Command::new("ssh-keygen")
        .arg("-l")
        .arg("-E")
        .arg("sha256")
        .arg("-f")
        .arg(g.path().join("keys/ssh_host_ed25519_key.pub")));
    let fp = text(&o).split_whitespace().nth(1).unwrap().to_string();
    g.write("p1.txt", &lb_order("0050501055", 2, 60));
    g.write(
        "script",
        b"put p1.txt /upload/p1.txt\nls /upload\nls /download\n",
    );
    let o = run(Command::new("timeout")
        .arg("120")
        .arg("psftp")
        .args([
            "-batch",
            "-pw",
            ACME_PASSWORD,
            "-hostkey",
            &fp,
            "-b",
            "script",
            "-P",
        ])
        .arg(g.port.to_string())
        .arg("acme@127.0.0.1")
        .current_dir(g.path()));
    assert!(o.status.success(), "{}\n{}", text(&o), g.log());
    let l = g.ledger();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["partner"], "acme");
    // Refused twin: a wrong host key is refused by psftp (and the password not sent).
    let o = run(Command::new("timeout")
        .arg("60")
        .arg("psftp")
        .args([
            "-batch",
            "-pw",
            ACME_PASSWORD,
            "-hostkey",
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "-b",
            "script",
            "-P",
        ])
        .arg(g.port.to_string())
        .arg("acme@127.0.0.1")
        .current_dir(g.path()));
    assert!(!o.status.success());
    assert_eq!(g.ledger().len(), 1);
}

#[test]
fn concurrent_clients_all_get_their_receipts() {
    let g = Gw::start();
    let clients = 8;
    let per = 3;
    let mut handles = Vec::new();
    for c in 0..clients {
        let mut batch = String::new();
        for k in 0..per {
            let name = format!("c{c}-{k}.txt");
            g.write(&name, &good_order(100 + (c * per + k) as u64));
            batch.push_str(&format!("put -f {name} /upload/{name}\n"));
        }
        let bf = g.path().join(format!("batch{c}"));
        fs::write(&bf, batch).unwrap();
        let mut cmd = Command::new("timeout");
        cmd.arg("120")
            .arg("sftp")
            .args(g.ssh_opts())
            .arg("-i")
            .arg(g.key())
            .arg("-P")
            .arg(g.port.to_string())
            .arg("-b")
            .arg(&bf)
            .arg("demo@127.0.0.1")
            .current_dir(g.path());
        handles.push(std::thread::spawn(move || run(&mut cmd)));
    }
    for h in handles {
        let o = h.join().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    let l = g.ledger();
    assert_eq!(l.len(), clients * per);
    assert!(l.iter().all(|r| r["state"] != "quarantined"), "{l:?}");
}

#[test]
fn quota_and_session_limits_refuse_with_the_reason() {
    let g = Gw::start_with(Opts {
        demo_extra: "quota_mb = 1\nmax_sessions = 1",
        ..Opts::default()
    });
    g.write("small.txt", &good_order(70));
    g.write("big.bin", &vec![b'A'; 2 << 20]);
    let out = g.paramiko(
        r#"
c = connect(); s = c.open_sftp()
attempt('big', lambda: s.put('big.bin', '/upload/big.txt'))
attempt('second-session', lambda: connect().open_sftp().listdir('/'))
attempt('small', lambda: s.put('small.txt', '/upload/small.txt').st_size)
"#,
        &[],
    );
    assert!(
        out.contains("big ERR") && out.contains("quota"),
        "{out}\n{}",
        g.log()
    );
    assert!(
        out.contains("second-session ERR"),
        "max_sessions = 1: {out}"
    );
    assert!(out.contains("small OK"), "{out}\n{}", g.log());
    let (ok, df) = g.sftp("df /upload\n");
    assert!(ok, "{df}");
    assert!(df.contains(" 1024 "), "statvfs shows the 1 MiB quota: {df}");
    assert!(g.log().contains("too many sessions"), "{}", g.log());
    g.assert_no_partial_data();
    assert_eq!(g.ledger().len(), 1);
}

#[test]
fn check_reports_sftp_mistakes_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    fs::create_dir_all(p.join("jobs.d")).unwrap();
    fs::copy(
        root.join("jobs.d/demo-bank.toml"),
        p.join("jobs.d/demo-bank.toml"),
    )
    .unwrap();
    let customer = |id: &str, sftp: &str| {
        format!(
            "[partner]\nid = \"{id}\"\nname = \"X\"\nrole = \"customer\"\n\
             [seal]\nrequired = false\n[payments]\nbank = \"demo-bank\"\n[sftp]\n{sftp}\n"
        )
    };
    fs::write(
        p.join("jobs.d/one.toml"),
        customer(
            "one",
            "username = \"shared\"\npassword_hash = \"hunter2\"\nauthorized_keys = [\"ssh-dss AAAA nope\"]\nallowed_networks = [\"10.0.0.0/33\"]",
        ),
    )
    .unwrap();
    fs::write(
        p.join("jobs.d/two.toml"),
        customer(
            "two",
            "username = \"shared\"\nauthorized_keys_file = \"missing.keys\"",
        ),
    )
    .unwrap();
    fs::write(
        p.join("sluss.toml"),
        "[sftp]\nlisten = \"localhost:twenty-two\"\nban_seconds = 100\nban_max_seconds = 10\n",
    )
    .unwrap();
    let o = run(util::sluss().arg("check").arg("--config").arg(p));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for needle in [
        "sluss.toml:2: sftp.listen",
        "sftp.ban_max_seconds",
        "one.toml:11: sftp.password_hash: is not an Argon2id hash",
        "sftp.authorized_keys[0]",
        "sftp.allowed_networks[0]",
        "two.toml:11: sftp.authorized_keys_file",
        "SFTP username `shared` is also used by partner one",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // The host keys are not a mistake: they will be generated.
    assert!(!out.contains("ssh_host_ed25519_key"), "{out}");
}

/// SMALL_MAX of the pipeline: uploads up to this size are held in memory by the server.
const SMALL_MAX: usize = 256 * 1024;

/// For each `sftp.upload.closed` event of the upload named `name`: was it held in memory?
fn closed_in_memory(log: &str, name: &str) -> Vec<bool> {
    log.lines()
        .filter(|l| l.contains("sftp.upload.closed") && l.contains(&format!("name={name} ")))
        .map(|l| l.contains("in_memory=true"))
        .collect()
}

/// `b` with a payment amount changed after sealing, in the last payment record (so past
/// `after`).
fn tampered_after(mut b: Vec<u8>, after: usize) -> Vec<u8> {
    let text = String::from_utf8_lossy(&b).into_owned();
    let i = text.rfind("\r\n14").unwrap() + 2 + 37;
    assert!(
        i > after,
        "the last payment record starts at {i}, before {after}"
    );
    b[i] = if b[i] == b'9' { b'1' } else { b'9' };
    b
}

/// An upload that grows past SMALL_MAX while it arrives leaves memory for a spool file
/// without losing a byte: sequentially (OpenSSH), in two steps whose first stays in memory
/// (with FSTAT answering the size so far), with holes filled later, and with its tail
/// written first. Each is accepted with the SHA-256 of the whole file; a file tampered
/// after the first 256 KiB is refused.
#[test]
fn uploads_crossing_small_max_are_judged_on_all_their_bytes() {
    let g = Gw::start();
    let order = |seed| sealed(&lb_order(DEMO_BG, 4_000, seed));
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("seq.txt", order(200)),
        ("split.txt", order(201)),
        ("holes.txt", order(202)),
        ("tailfirst.txt", order(203)),
        ("bad.txt", tampered_after(order(204), SMALL_MAX + 1000)),
    ];
    for (name, body) in &files {
        assert!(
            body.len() > SMALL_MAX + 8192 && body.len() < 4 << 20,
            "{name}: {} bytes",
            body.len()
        );
        g.write(name, body);
    }
    let (ok, out) = g.sftp("put -f seq.txt /upload/seq.txt\n");
    assert!(ok, "{out}\n{}", g.log());
    let out = g.paramiko(
        r#"
s = connect().open_sftp()
def data(n): return open(n, 'rb').read()
def split():
    d = data('split.txt')
    f = s.open('/upload/split.txt', 'wb')
    f.write(d[:200000]); f.flush()
    print('FSTAT', f.stat().st_size)
    f.write(d[200000:]); f.close()
def holes():
    d = data('holes.txt')
    f = s.open('/upload/holes.txt', 'wb')
    f.seek(100000); f.write(d[100000:200000])
    f.seek(0); f.write(d[:100000])
    f.seek(200000); f.write(d[200000:]); f.close()
def tailfirst():
    d = data('tailfirst.txt')
    f = s.open('/upload/tailfirst.txt', 'wb')
    f.seek(150000); f.write(d[150000:])
    f.seek(0); f.write(d[:150000]); f.close()
attempt('split', split)
attempt('holes', holes)
attempt('tailfirst', tailfirst)
attempt('bad', lambda: s.put('bad.txt', '/upload/bad.txt'))
"#,
        &[],
    );
    for label in [
        "split OK",
        "holes OK",
        "tailfirst OK",
        "bad ERR",
        "FSTAT 200000",
    ] {
        assert!(out.contains(label), "{label}: {out}\n{}", g.log());
    }
    let l = g.ledger();
    for (name, body) in &files {
        let r = record_named(&l, name);
        assert_eq!(r["sha256"], sha(body), "{name}: {r}");
        assert_eq!(r["size"], body.len(), "{name}: {r}");
        if *name == "bad.txt" {
            assert_eq!(r["state"], "quarantined", "{r}");
        } else {
            assert_ne!(r["state"], "quarantined", "{name}: {r}");
        }
        assert_eq!(
            closed_in_memory(&g.log(), name),
            vec![false],
            "{name} ended as a spool file"
        );
    }
    assert!(wait_for(|| g.outbox().len() == 4), "{}", g.log());
    let delivered: Vec<Vec<u8>> = g.outbox().iter().map(|p| fs::read(p).unwrap()).collect();
    for (name, body) in &files[..4] {
        assert!(delivered.contains(body), "{name} delivered byte-identical");
    }
    g.assert_no_partial_data();
}

/// A small upload closed under a temporary name stays in memory (nothing in spool/incoming)
/// and is resumed — by appending, or by writing at an offset after re-opening — then renamed:
/// judged on all its bytes, so a tampered tail is refused. One resumed past SMALL_MAX goes
/// on as a spool file.
#[test]
fn a_resumed_small_temp_upload_is_judged_on_all_its_bytes() {
    let g = Gw::start();
    let small = |seed| sealed(&lb_order(DEMO_BG, 40, seed));
    let good = small(210);
    let good2 = small(211);
    let bad = tampered_after(small(212), small(212).len() / 2);
    let grows = sealed(&lb_order(DEMO_BG, 4_000, 213));
    assert!(good.len() < SMALL_MAX && grows.len() > SMALL_MAX + 8192);
    g.write("good.txt", &good);
    g.write("good2.txt", &good2);
    g.write("bad.txt", &bad);
    g.write("grows.txt", &grows);
    let incoming = g.path().join("var/spool/incoming");
    let out = g.paramiko(
        r#"
INC = os.environ['INCOMING']
def resume(local, remote, how, first=None):
    data = open(local, 'rb').read()
    first = first or len(data) // 2
    s = connect().open_sftp()
    f = s.open(remote + '.part', 'wb'); f.write(data[:first]); f.close()
    print('PARKED', remote, len(os.listdir(INC)))
    if how == 'append':
        f = s.open(remote + '.part', 'ab'); f.write(data[first:]); f.close()
    else:
        f = s.open(remote + '.part', 'r+'); f.seek(first); f.write(data[first:]); f.close()
    s.rename(remote + '.part', remote)
attempt('good', lambda: resume('good.txt', '/upload/good.txt', 'append'))
attempt('good2', lambda: resume('good2.txt', '/upload/good2.txt', 'offset'))
attempt('bad', lambda: resume('bad.txt', '/upload/bad.txt', 'append'))
attempt('grows', lambda: resume('grows.txt', '/upload/grows.txt', 'append', 200000))
"#,
        &[("INCOMING", incoming.to_str().unwrap())],
    );
    for label in ["good OK", "good2 OK", "bad ERR", "grows OK"] {
        assert!(out.contains(label), "{label}: {out}\n{}", g.log());
    }
    for name in ["good", "good2", "bad", "grows"] {
        assert!(
            out.contains(&format!("PARKED /upload/{name}.txt 0")),
            "a parked small upload is not a file: {out}"
        );
    }
    let l = g.ledger();
    for (name, body) in [
        ("good.txt", &good),
        ("good2.txt", &good2),
        ("grows.txt", &grows),
    ] {
        let r = record_named(&l, name);
        assert_ne!(r["state"], "quarantined", "{name}: {r}");
        assert_eq!(r["sha256"], sha(body), "{name}: {r}");
        assert_eq!(r["size"], body.len(), "{name}: {r}");
    }
    let r = record_named(&l, "bad.txt");
    assert_eq!(r["state"], "quarantined", "{r}");
    assert_eq!(r["sha256"], sha(&bad), "{r}");
    assert_eq!(l.len(), 4, "{l:?}");
    let log = g.log();
    assert_eq!(closed_in_memory(&log, "good.txt.part"), vec![true, true]);
    assert_eq!(closed_in_memory(&log, "grows.txt.part"), vec![true, false]);
    assert!(wait_for(|| g.outbox().len() == 3), "{}", g.log());
}

/// Small uploads across several sessions never create a file in spool/incoming (checked
/// while each is open; an upload past SMALL_MAX does, showing the check sees files), and a
/// disconnect in the middle of small uploads records nothing.
#[test]
fn small_uploads_never_touch_spool_incoming_and_a_cut_records_nothing() {
    let g = Gw::start();
    for sess in 0..3 {
        for k in 0..5 {
            g.write(&format!("s{sess}-{k}.txt"), &good_order(300 + sess * 5 + k));
        }
    }
    g.write("cut.txt", &good_order(320));
    let incoming = g.path().join("var/spool/incoming");
    let out = g.paramiko(
        r#"
INC = os.environ['INCOMING']
for sess in range(3):
    c = connect(); s = c.open_sftp()
    for k in range(5):
        name = 's%d-%d.txt' % (sess, k)
        f = s.open('/upload/' + name, 'wb'); f.write(open(name, 'rb').read()); f.flush()
        print('OPEN', name, len(os.listdir(INC)))
        f.close()
    c.close()
c = connect(); s = c.open_sftp()
big = s.open('/upload/big.bin', 'wb'); big.write(b'x' * 300000); big.flush()
print('BIG', len(os.listdir(INC)))
cut = s.open('/upload/cut.txt', 'wb'); cut.write(open('cut.txt', 'rb').read()[:1000]); cut.flush()
print('CUT-OPEN', len(os.listdir(INC)))
c.get_transport().sock.close()
print('CUT')
"#,
        &[("INCOMING", incoming.to_str().unwrap())],
    );
    assert!(out.contains("CUT\n"), "{out}\n{}", g.log());
    assert_eq!(out.matches("OPEN s").count(), 15, "{out}\n{}", g.log());
    for line in out.lines().filter(|l| l.starts_with("OPEN ")) {
        assert!(
            line.ends_with(" 0"),
            "an open small upload is a file: {line}"
        );
    }
    assert!(
        out.contains("BIG 1") && out.contains("CUT-OPEN 1"),
        "only the upload past SMALL_MAX is a file: {out}"
    );
    g.assert_abandoned(2);
    let l = g.ledger();
    assert_eq!(l.len(), 15, "{l:?}");
    assert!(l.iter().all(|r| r["state"] != "quarantined"), "{l:?}");
    assert!(
        l.iter()
            .all(|r| r["original_name"] != "cut.txt" && r["original_name"] != "big.bin"),
        "{l:?}"
    );
    let log = g.log();
    for sess in 0..3 {
        for k in 0..5 {
            let name = format!("s{sess}-{k}.txt");
            assert_eq!(closed_in_memory(&log, &name), vec![true], "{name}");
        }
    }
}

/// At most 256 uploads are held in memory across the server: the next one is a spool file
/// from its OPEN. Slots come back when uploads end (here: by a disconnect), so the next
/// small upload is in memory again.
#[test]
fn memory_uploads_are_bounded_and_their_slots_come_back() {
    let g = Gw::start();
    let incoming = g.path().join("var/spool/incoming");
    let env = [("INCOMING", incoming.to_str().unwrap())];
    let out = g.paramiko(
        r#"
INC = os.environ['INCOMING']
held = []  # kept referenced: paramiko closes a file object when it is collected
c1 = connect()
for ch in range(4):  # 4 SFTP channels of 64 handles: 256 uploads
    s = c1.open_sftp()
    for k in range(64):
        f = s.open('/upload/m%d-%d.txt' % (ch, k), 'wb'); f.write(b'0123456789'); f.flush()
        held.append(f)
print('HELD', len(held), len(os.listdir(INC)))
c2 = connect(); s2 = c2.open_sftp()
f = s2.open('/upload/over.txt', 'wb'); f.write(b'0123456789'); f.flush(); held.append(f)
print('OVER', len(os.listdir(INC)))
c1.get_transport().sock.close(); c2.get_transport().sock.close()
print('CUT')
"#,
        &env,
    );
    assert!(out.contains("HELD 256 0"), "{out}\n{}", g.log());
    assert!(
        out.contains("OVER 1"),
        "the 257th upload is a spool file: {out}"
    );
    g.assert_abandoned(257);
    let out = g.paramiko(
        r#"
INC = os.environ['INCOMING']
c = connect(); s = c.open_sftp()
f = s.open('/upload/again.txt', 'wb'); f.write(b'0123456789'); f.flush()
print('AGAIN', len(os.listdir(INC)))
c.get_transport().sock.close()  # before paramiko would CLOSE the file on exit
"#,
        &env,
    );
    assert!(
        out.contains("AGAIN 0"),
        "slots came back: {out}\n{}",
        g.log()
    );
    assert!(g.ledger().is_empty());
}
