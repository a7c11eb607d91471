//! Remote endpoints against the real servers partners run, started here on loopback:
//! OpenSSH `sshd` (key and password logins, pinned host key) and `vsftpd` (explicit and
//! implicit FTPS with its default `require_ssl_reuse=YES`, a test CA made with `openssl`).
//! Payment files with CRLF and Latin-1 bytes go out through the pipeline's delivery workers
//! and come back with `sluss remote get`, byte-identical both ways. Servers are stopped by PID
//! in `Drop`, also when a test fails.

use crate::pipeline::{Gateway, lb_order, sealed};
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The local account the servers let sluss log in as (sshd refuses root; vsftpd uses PAM).
const USER: &str = "slussremote";
/// The demo customer's bankgiro number.
const DEMO_BG: &str = "0009912346";

/// The test user's password, set once per test run.
fn password() -> &'static str {
    static PW: OnceLock<String> = OnceLock::new();
    PW.get_or_init(|| {
        let mut b = [0u8; 12];
        getrandom::fill(&mut b).unwrap();
        let pw: String = b.iter().map(|x| format!("{x:02x}")).collect();
        if Command::new("id")
            .arg(USER)
            .output()
            .unwrap()
            .status
            .success()
        {
            // Left over from an earlier run: keep it.
        } else {
            let st = Command::new("useradd")
                .args(["-m", "-s", "/bin/bash", USER])
                .status()
                .unwrap();
            assert!(st.success(), "useradd {USER}");
        }
        let mut c = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("{USER}:{pw}\n").as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success(), "chpasswd");
        fs::create_dir_all("/run/sshd").unwrap();
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();
        pw
    })
}

/// A folder in the test user's home, owned by it, removed at drop.
struct RemoteFolder {
    path: PathBuf,
}

impl RemoteFolder {
    fn new() -> RemoteFolder {
        password();
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).unwrap();
        let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let path = PathBuf::from(format!("/home/{USER}/t-{name}"));
        fs::create_dir_all(path.join("in")).unwrap();
        chown(&path);
        RemoteFolder { path }
    }
    fn inbox(&self) -> PathBuf {
        self.path.join("in")
    }
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.inbox())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for RemoteFolder {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn chown(p: &Path) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{USER}:{USER}"))
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, child: &mut Child, log: &Path) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "server exited ({st}): {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "server not listening on {port}: {}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// OpenSSH sshd in the foreground (`-D`) on a port of its own.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Sshd {
    fn start(authorized_key: &str) -> Sshd {
        password();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join("host_ed25519")));
        fs::create_dir_all(d.join("auth")).unwrap();
        fs::write(d.join("auth").join(USER), format!("{authorized_key}\n")).unwrap();
        let mut s = Sshd {
            dir,
            port: free_port(),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let cfg = d.join("sshd_config");
        fs::write(
            &cfg,
            format!(
                "ListenAddress 127.0.0.1\nPort {}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}/auth/%u\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n\
                 Subsystem sftp internal-sftp\nMaxStartups 100\n",
                self.port,
                d.join("host_ed25519").display(),
                d.join("sshd.pid").display(),
                d.display()
            ),
        )
        .unwrap();
        let log = d.join("sshd.log");
        let mut child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(&cfg)
            .arg("-E")
            .arg(&log)
            .spawn()
            .unwrap();
        wait_listening(self.port, &mut child, &log);
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop the listener and the per-session processes it forked (they outlive it).
    fn stop_with_sessions(&mut self) {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return;
        };
        let mut pids = Vec::new();
        let mut parents = vec![pid];
        while let Some(parent) = parents.pop() {
            for e in fs::read_dir("/proc").unwrap().flatten() {
                let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                // pid (comm) state ppid …; comm may hold spaces, so split after ')'.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(parent)
                    && let Ok(child) = e.file_name().to_string_lossy().parse::<u32>()
                {
                    pids.push(child);
                    parents.push(child);
                }
            }
        }
        self.stop();
        for p in pids {
            let _ = Command::new("kill")
                .args(["-KILL", &p.to_string()])
                .status();
        }
    }

    fn host_key_line(&self) -> String {
        fs::read_to_string(self.dir.path().join("host_ed25519.pub"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn host_fingerprint(&self) -> String {
        let out = run(Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.dir.path().join("host_ed25519.pub")));
        out.split_whitespace().nth(1).unwrap().to_string()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test CA and a server certificate for 127.0.0.1 signed by it.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ossl = |args: &[&str]| {
            run(Command::new("openssl").current_dir(d).args(args));
        };
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sluss test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        ossl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n",
        )
        .unwrap();
        ossl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        Pki { dir }
    }
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    /// `SHA256:AB:CD:…` as `openssl x509 -fingerprint -sha256` prints it.
    fn server_fingerprint(&self) -> String {
        let out = run(Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(self.dir.path().join("server.pem")));
        format!("SHA256:{}", out.trim().split('=').nth(1).unwrap())
    }
}

/// vsftpd in the foreground, TLS required for login and data, `require_ssl_reuse` left at
/// its default (YES).
struct Vsftpd {
    _dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Vsftpd {
    fn start(pki: &Pki, implicit: bool) -> Vsftpd {
        password();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        let pasv = free_port();
        let cfg = d.join("vsftpd.conf");
        fs::write(
            &cfg,
            format!(
                "listen=YES\nlisten_ipv6=NO\nbackground=NO\nlisten_address=127.0.0.1\nlisten_port={port}\n\
                 pasv_enable=YES\npasv_address=127.0.0.1\npasv_min_port={pasv}\npasv_max_port={}\n\
                 anonymous_enable=NO\nlocal_enable=YES\nwrite_enable=YES\nlocal_umask=022\n\
                 ssl_enable=YES\nforce_local_logins_ssl=YES\nforce_local_data_ssl=YES\n\
                 implicit_ssl={}\nrsa_cert_file={}\nrsa_private_key_file={}\n\
                 pam_service_name=vsftpd\nsecure_chroot_dir=/var/run/vsftpd/empty\n\
                 seccomp_sandbox=NO\nisolate=NO\nisolate_network=NO\n\
                 xferlog_enable=YES\nvsftpd_log_file={}\nlog_ftp_protocol=YES\n",
                pasv + 20,
                if implicit { "YES" } else { "NO" },
                pki.dir.path().join("server.pem").display(),
                pki.dir.path().join("server.key").display(),
                d.join("vsftpd.log").display(),
            ),
        )
        .unwrap();
        let log = d.join("vsftpd.log");
        fs::write(&log, "").unwrap();
        let mut child = Command::new("/usr/sbin/vsftpd")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(d.join("stderr")).unwrap()))
            .spawn()
            .unwrap();
        wait_listening(port, &mut child, &log);
        Vsftpd {
            _dir: dir,
            port,
            child: Some(child),
        }
    }
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Make the demo bank deliver to `endpoint` (an inline TOML table) with fast retries.
fn bank_endpoint(g: &Gateway, endpoint: &str, attempts: u32) {
    let bank = g.path().join("jobs.d/demo-bank.toml");
    fs::write(
        &bank,
        format!(
            "[partner]\nid = \"demo-bank\"\nname = \"Demo Bank (remote)\"\nrole = \"bank\"\n\n\
             [delivery]\nendpoint = {endpoint}\nattempts = {attempts}\n\n[archive]\nmode = \"delete\"\n"
        ),
    )
    .unwrap();
    let main_cfg = g.path().join("sluss.toml");
    let text = fs::read_to_string(&main_cfg)
        .unwrap()
        .replace("retry_initial_seconds = 30", "retry_initial_seconds = 1")
        .replace("retry_max_seconds = 3600", "retry_max_seconds = 1");
    fs::write(&main_cfg, text).unwrap();
}

fn secret(g: &Gateway, name: &str, text: &str) -> String {
    let p = g.path().join("keys").join(name);
    fs::write(&p, text).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    format!("keys/{name}")
}

/// `sluss keygen client` into the gateway's keys/; returns (config path, public line).
fn client_key(g: &Gateway) -> (String, String) {
    let out = run(util_sluss()
        .args(["keygen", "client", "-o"])
        .arg(g.path().join("keys/bank.id_ed25519"))
        .args(["--comment", "sluss-test"]));
    let line = fs::read_to_string(g.path().join("keys/bank.id_ed25519.pub"))
        .unwrap()
        .trim()
        .to_string();
    assert!(out.contains(&line), "{out}");
    assert!(out.contains("SHA256:"), "{out}");
    let mode = fs::metadata(g.path().join("keys/bank.id_ed25519"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    ("keys/bank.id_ed25519".into(), line)
}

fn util_sluss() -> Command {
    let mut c = crate::util::sluss();
    c.env("SLUSS_LOG", "warn");
    c
}

fn ingest_order(g: &Gateway, seed: u64) -> (i64, Vec<u8>) {
    let src = tempfile::tempdir().unwrap();
    let bytes = sealed(&lb_order(DEMO_BG, 2, seed), "261129");
    assert!(bytes.windows(2).any(|w| w == b"\r\n") && bytes.contains(&0xd6));
    let f = src.path().join(format!("order{seed}.txt"));
    fs::write(&f, &bytes).unwrap();
    let (code, out) = g.ingest("demo", &[&f]);
    assert_eq!(code, 0, "{out}");
    let i = out.find("id ").expect("an id") + 3;
    let id = out[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap();
    (id, bytes)
}

/// `sluss remote <args> --config G` → (exit code, stdout + stderr).
fn remote(g: &Gateway, args: &[&str]) -> (i32, String) {
    let out = g.cmd(&[&["remote"], args].concat()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn sftp_push_with_rename_arrives_byte_identical_and_comes_back() {
    let mut g = Gateway::new();
    let (key, line) = client_key(&g);
    let sshd = Sshd::start(&line);
    let folder = RemoteFolder::new();
    bank_endpoint(
        &g,
        &format!(
            "{{ type = \"sftp\", host = \"127.0.0.1\", port = {}, user = \"{USER}\", host_key = \"{}\", key_file = \"{key}\", dir = \"{}\" }}",
            sshd.port,
            sshd.host_key_line(),
            folder.inbox().display()
        ),
        3,
    );
    let (code, out) = remote(&g, &["test", "demo-bank"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("host key matches the pin") && out.contains("ok"),
        "{out}"
    );

    let (id, bytes) = ingest_order(&g, 1);
    g.start();
    assert!(
        g.wait_for(Duration::from_secs(30), || g.state_of(id) == "delivered"),
        "{}",
        g.diag()
    );
    g.stop();
    let names = folder.files();
    assert_eq!(names.len(), 1, "one file, no temporary left: {names:?}");
    assert!(!names[0].starts_with('.'), "{names:?}");
    assert_eq!(
        fs::read(folder.inbox().join(&names[0])).unwrap(),
        bytes,
        "put is byte-identical"
    );

    // And back: get is byte-identical too.
    let back = g.path().join("back.dat");
    let remote_path = format!("{}/{}", folder.inbox().display(), names[0]);
    let (code, out) = remote(
        &g,
        &[
            "get",
            "demo-bank",
            &remote_path,
            "-o",
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(fs::read(&back).unwrap(), bytes, "get is byte-identical");
    let (code, out) = remote(&g, &["ls", "demo-bank"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&names[0]), "{out}");
}

#[test]
fn sftp_changed_host_key_is_refused_with_both_fingerprints() {
    let g = Gateway::new();
    let (key, line) = client_key(&g);
    let sshd = Sshd::start(&line);
    let folder = RemoteFolder::new();
    // The pin is another server's key: what a man in the middle (or a reinstall) looks like.
    let other = tempfile::tempdir().unwrap();
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(other.path().join("k")));
    let pinned = run(Command::new("ssh-keygen")
        .arg("-lf")
        .arg(other.path().join("k.pub")));
    let pinned = pinned.split_whitespace().nth(1).unwrap().to_string();
    bank_endpoint(
        &g,
        &format!(
            "{{ type = \"sftp\", host = \"127.0.0.1\", port = {}, user = \"{USER}\", host_key = \"{pinned}\", key_file = \"{key}\", dir = \"{}\" }}",
            sshd.port,
            folder.inbox().display()
        ),
        3,
    );
    let (code, out) = remote(&g, &["test", "demo-bank"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(out.contains(&pinned), "expected fingerprint shown: {out}");
    assert!(
        out.contains(&sshd.host_fingerprint()),
        "presented fingerprint shown: {out}"
    );
    assert!(out.contains("refusing to connect"), "{out}");
}

#[test]
fn sftp_password_login_and_wrong_password() {
    let g = Gateway::new();
    let sshd = Sshd::start("# no keys");
    let folder = RemoteFolder::new();
    fs::write(folder.inbox().join("hello.txt"), b"hi\r\n\xe5\n").unwrap();
    chown(&folder.path);
    let endpoint = |pwfile: &str| {
        format!(
            "{{ type = \"sftp\", host = \"127.0.0.1\", port = {}, user = \"{USER}\", host_key = \"{}\", password_file = \"{pwfile}\", dir = \"{}\" }}",
            sshd.port,
            sshd.host_fingerprint(),
            folder.inbox().display()
        )
    };
    let good = secret(&g, "bank.pw", &format!("{}\n", password()));
    bank_endpoint(&g, &endpoint(&good), 3);
    let (code, out) = remote(&g, &["test", "demo-bank"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("hello.txt"),
        "the listing shows the file: {out}"
    );

    // Many files at once (get_many overlaps them on one session): every one byte-identical,
    // the empty one and one of several read requests included.
    let mut want = vec![("empty.dat".to_string(), Vec::new())];
    for i in 0..20 {
        let mut b = vec![0u8; 100 + i * 997];
        getrandom::fill(&mut b).unwrap();
        want.push((format!("f{i:02}.dat"), b));
    }
    let mut big = vec![0u8; 600 * 1024 + 7];
    getrandom::fill(&mut big).unwrap();
    want.push(("big.dat".into(), big));
    want.push(("hello.txt".into(), b"hi\r\n\xe5\n".to_vec()));
    for (n, b) in &want {
        fs::write(folder.inbox().join(n), b).unwrap();
    }
    chown(&folder.path);
    let back = g.path().join("back");
    let (code, out) = remote(
        &g,
        &[
            "get",
            "demo-bank",
            &folder.inbox().display().to_string(),
            "-r",
            "-o",
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    for (n, b) in &want {
        assert_eq!(&fs::read(back.join(n)).unwrap(), b, "{n}");
    }
    assert_eq!(fs::read_dir(&back).unwrap().count(), want.len());

    let bad = secret(&g, "bank-wrong.pw", "not-the-password\n");
    bank_endpoint(&g, &endpoint(&bad), 3);
    let (code, out) = remote(&g, &["test", "demo-bank"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("login refused for user"), "{out}");
    assert!(
        out.contains("bank-wrong.pw"),
        "names the password file: {out}"
    );
    assert!(
        !out.contains("not-the-password"),
        "never shows the secret: {out}"
    );
}

#[test]
fn server_down_retries_then_dead_letter_then_recovers() {
    let mut g = Gateway::new();
    let (key, line) = client_key(&g);
    let mut sshd = Sshd::start(&line);
    let folder = RemoteFolder::new();
    bank_endpoint(
        &g,
        &format!(
            "{{ type = \"sftp\", host = \"127.0.0.1\", port = {}, user = \"{USER}\", host_key = \"{}\", key_file = \"{key}\", dir = \"{}\", connect_timeout_seconds = 5 }}",
            sshd.port,
            sshd.host_fingerprint(),
            folder.inbox().display()
        ),
        2,
    );
    sshd.stop();
    let (id, bytes) = ingest_order(&g, 2);
    g.start();
    assert!(
        g.wait_for(Duration::from_secs(60), || g.state_of(id) == "held"),
        "{}",
        g.diag()
    );
    let log = fs::read_to_string(g.path().join("serve.log")).unwrap();
    assert!(log.contains("delivery.retry"), "{log}");
    assert!(log.contains("alert.dead-letter"), "{log}");
    assert!(
        log.contains("cannot connect to sftp://"),
        "the error names the endpoint: {log}"
    );
    assert!(folder.files().is_empty());

    // The server is back; an operator retries; it is delivered once.
    sshd.spawn();
    let out = g
        .cmd(&[
            "ledger",
            "retry",
            &id.to_string(),
            "--reason",
            "bank server back",
            "--operator",
            "carol",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        g.wait_for(Duration::from_secs(30), || g.state_of(id) == "delivered"),
        "{}",
        g.diag()
    );
    g.stop();
    let names = folder.files();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(fs::read(folder.inbox().join(&names[0])).unwrap(), bytes);
}

fn ftps_endpoint(
    v: &Vsftpd,
    pw: &str,
    trust: &str,
    implicit: bool,
    folder: &RemoteFolder,
) -> String {
    format!(
        "{{ type = \"ftps\", host = \"127.0.0.1\", port = {}, mode = \"{}\", user = \"{USER}\", password_file = \"{pw}\", {trust}, dir = \"{}\" }}",
        v.port,
        if implicit { "implicit" } else { "explicit" },
        folder.inbox().display()
    )
}

#[test]
fn ftps_explicit_push_with_session_reuse_is_byte_identical_both_ways() {
    let mut g = Gateway::new();
    let pki = Pki::new();
    let v = Vsftpd::start(&pki, false);
    let folder = RemoteFolder::new();
    let pw = secret(&g, "bank.ftp-password", &format!("{}\n", password()));
    let ca = pki.ca();
    bank_endpoint(
        &g,
        &ftps_endpoint(
            &v,
            &pw,
            &format!("ca_file = \"{}\"", ca.display()),
            false,
            &folder,
        ),
        3,
    );
    let (code, out) = remote(&g, &["test", "demo-bank"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("binary mode"), "{out}");

    // Several files: every upload opens a data connection that must resume the session.
    let mut sent = Vec::new();
    for seed in 10..16 {
        sent.push(ingest_order(&g, seed));
    }
    g.start();
    for (id, _) in &sent {
        assert!(
            g.wait_for(Duration::from_secs(30), || g.state_of(*id) == "delivered"),
            "{}",
            g.diag()
        );
    }
    g.stop();
    let names = folder.files();
    assert_eq!(names.len(), 6, "no temporary files left: {names:?}");
    let mut got: Vec<Vec<u8>> = names
        .iter()
        .map(|n| fs::read(folder.inbox().join(n)).unwrap())
        .collect();
    let mut want: Vec<Vec<u8>> = sent.iter().map(|(_, b)| b.clone()).collect();
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "put is byte-identical (binary mode, CRLF and Latin-1 kept)"
    );

    let back = g.path().join("back");
    let (code, out) = remote(
        &g,
        &[
            "get",
            "demo-bank",
            &folder.inbox().display().to_string(),
            "-r",
            "-o",
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    for n in &names {
        assert_eq!(
            fs::read(back.join(n)).unwrap(),
            fs::read(folder.inbox().join(n)).unwrap(),
            "get is byte-identical"
        );
    }
}

#[test]
fn ftps_implicit_with_pinned_certificate() {
    let g = Gateway::new();
    let pki = Pki::new();
    let v = Vsftpd::start(&pki, true);
    let folder = RemoteFolder::new();
    let payload = b"line one\r\nline two \xc5\xc4\xd6\n\r\n".to_vec();
    fs::write(folder.inbox().join("f.txt"), &payload).unwrap();
    chown(&folder.path);
    let pw = secret(&g, "bank.ftp-password", &format!("{}\n", password()));
    bank_endpoint(
        &g,
        &ftps_endpoint(
            &v,
            &pw,
            &format!("cert_fingerprint = \"{}\"", pki.server_fingerprint()),
            true,
            &folder,
        ),
        3,
    );
    let (code, out) = remote(&g, &["test", "demo-bank"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("f.txt"), "{out}");
    let back = g.path().join("f.back");
    let (code, out) = remote(
        &g,
        &[
            "get",
            "demo-bank",
            &format!("{}/f.txt", folder.inbox().display()),
            "-o",
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(fs::read(&back).unwrap(), payload);
}

#[test]
fn ftps_untrusted_certificate_and_wrong_pin_are_refused() {
    let g = Gateway::new();
    let pki = Pki::new();
    let other = Pki::new();
    let v = Vsftpd::start(&pki, false);
    let folder = RemoteFolder::new();
    let pw = secret(&g, "bank.ftp-password", &format!("{}\n", password()));
    // A CA that did not sign the server's certificate.
    bank_endpoint(
        &g,
        &ftps_endpoint(
            &v,
            &pw,
            &format!("ca_file = \"{}\"", other.ca().display()),
            false,
            &folder,
        ),
        3,
    );
    let (code, out) = remote(&g, &["test", "demo-bank"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("certificate is not trusted"), "{out}");
    // A pin of another certificate.
    bank_endpoint(
        &g,
        &ftps_endpoint(
            &v,
            &pw,
            &format!("cert_fingerprint = \"{}\"", other.server_fingerprint()),
            false,
            &folder,
        ),
        3,
    );
    let (code, out) = remote(&g, &["test", "demo-bank"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refusing to connect"), "{out}");
    assert!(
        out.contains(pki.server_fingerprint().trim_start_matches("SHA256:")),
        "presented: {out}"
    );
    // Wrong password, right certificate.
    let bad = secret(&g, "bank-wrong.pw", "wrong\n");
    bank_endpoint(
        &g,
        &ftps_endpoint(
            &v,
            &bad,
            &format!("ca_file = \"{}\"", pki.ca().display()),
            false,
            &folder,
        ),
        3,
    );
    let (code, out) = remote(&g, &["test", "demo-bank"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("login refused"), "{out}");
}

#[test]
fn remote_endpoint_config_errors_name_field_and_fix() {
    let g = Gateway::new();
    let loose = g.path().join("keys/loose.pw");
    fs::write(&loose, "pw\n").unwrap();
    fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
    bank_endpoint(
        &g,
        "{ type = \"sftp\", host = \"127.0.0.1\", user = \"u\", host_key = \"SHA256:nope\", password_file = \"keys/loose.pw\" }",
        3,
    );
    let out = g.cmd(&["check"]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("delivery.endpoint.host_key"), "{text}");
    assert!(
        text.contains("delivery.endpoint.password_file") && text.contains("chmod 600"),
        "{text}"
    );
    bank_endpoint(
        &g,
        "{ type = \"ftps\", host = \"127.0.0.1\", user = \"u\", password_file = \"keys/none.pw\", hots = 1 }",
        3,
    );
    let out = g.cmd(&["check"]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("delivery.endpoint.hots") && text.contains("unknown field"),
        "{text}"
    );
    bank_endpoint(
        &g,
        "{ type = \"ftps\", host = \"127.0.0.1\", user = \"u\", password_file = \"keys/none.pw\" }",
        3,
    );
    let out = g.cmd(&["check"]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("does not exist"), "{text}");
    assert!(
        text.contains("never accepts an unverified certificate"),
        "{text}"
    );
}

/// The pipeline's destination protocol straight against a server: temporary name, promote
/// that never replaces, truthful size and SHA-256, removal; then the same after the server
/// restarted under the open session (one failure, then a fresh session).
fn destination_protocol(
    spec: sluss::config::Endpoint,
    folder: &RemoteFolder,
    restart: impl FnOnce(),
) {
    use sluss::pipeline::deliver::Destination;
    let direct = sluss::remote::remote_dir(&spec).unwrap().1 == sluss::config::UploadMode::Direct;
    let dest = sluss::pipeline::remote_dest::RemoteDir::new(&spec).unwrap();
    let src = tempfile::tempdir().unwrap();
    let bytes = sealed(&lb_order(DEMO_BG, 3, 77), "261129");
    let f = src.path().join("x");
    fs::write(&f, &bytes).unwrap();
    let want_hash = sluss::spool::sha256_file(&f).unwrap();

    assert_eq!(dest.size_of("a.dat").unwrap(), None);
    assert_eq!(
        // A small file's copy kept in the ledger is sent from memory.
        dest.put_temp(
            ".a.dat.sluss-tmp",
            &sluss::pipeline::Contents::Memory(bytes.clone())
        )
        .unwrap(),
        sluss::pipeline::deliver::Put {
            size: bytes.len() as u64,
            sha256: want_hash.clone()
        }
    );
    dest.sync().unwrap();
    // A direct upload writes nothing before promotion.
    let staged_size = (!direct).then_some(bytes.len() as u64);
    assert_eq!(dest.size_of(".a.dat.sluss-tmp").unwrap(), staged_size);
    dest.promote(".a.dat.sluss-tmp", "a.dat").unwrap();
    assert_eq!(dest.size_of("a.dat").unwrap(), Some(bytes.len() as u64));
    assert_eq!(dest.size_of(".a.dat.sluss-tmp").unwrap(), None);
    assert_eq!(dest.sha256_of("a.dat").unwrap(), Some(want_hash.clone()));
    assert_eq!(dest.sha256_of("absent.dat").unwrap(), None);
    assert_eq!(fs::read(folder.inbox().join("a.dat")).unwrap(), bytes);

    // A second file promoted to the same final name is refused; the first stays intact.
    let g = src.path().join("y");
    fs::write(&g, b"other bytes\n").unwrap();
    dest.put_temp(".b.sluss-tmp", &sluss::pipeline::Contents::File(g.clone()))
        .unwrap();
    let e = dest
        .promote(".b.sluss-tmp", "a.dat")
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(fs::read(folder.inbox().join("a.dat")).unwrap(), bytes);
    dest.remove(".b.sluss-tmp").unwrap();
    dest.remove(".b.sluss-tmp").unwrap(); // absent: fine
    assert_eq!(folder.files(), vec!["a.dat".to_string()]);

    // A file of many requests each way (pipelined writes and reads, a short last chunk).
    let mut big = vec![0u8; 5 * 1024 * 1024 + 123];
    getrandom::fill(&mut big).unwrap();
    let bf = src.path().join("big");
    fs::write(&bf, &big).unwrap();
    let put = dest
        .put_temp(
            ".big.sluss-tmp",
            &sluss::pipeline::Contents::File(bf.clone()),
        )
        .unwrap();
    // The hash of what is sent, for the pipeline to compare with the ledger's.
    assert_eq!(put.sha256, sluss::spool::sha256_file(&bf).unwrap());
    assert_eq!(put.size, big.len() as u64);
    dest.promote(".big.sluss-tmp", "big.dat").unwrap();
    assert_eq!(dest.size_of("big.dat").unwrap(), Some(big.len() as u64));
    assert_eq!(
        dest.sha256_of("big.dat").unwrap(),
        Some(sluss::spool::sha256_file(&bf).unwrap())
    );
    assert_eq!(fs::read(folder.inbox().join("big.dat")).unwrap(), big);
    dest.remove("big.dat").unwrap();

    // The server goes away under the open session and comes back.
    restart();
    let first = dest.size_of("a.dat");
    let second = dest.size_of("a.dat").unwrap();
    assert!(first.is_err() || first.as_ref().unwrap() == &Some(bytes.len() as u64));
    assert_eq!(second, Some(bytes.len() as u64), "reconnected");
}

#[test]
fn sftp_destination_protocol_and_reconnect() {
    let g = Gateway::new();
    let (key, line) = client_key(&g);
    let mut sshd = Sshd::start(&line);
    let folder = RemoteFolder::new();
    let spec = sluss::config::Endpoint::Sftp(sluss::config::SftpEndpoint {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: USER.into(),
        host_key_fingerprint: sshd.host_fingerprint(),
        auth: sluss::config::SftpAuth::KeyFile(g.path().join(key)),
        dir: folder.inbox().display().to_string(),
        upload: sluss::config::UploadMode::Rename,
        connect_timeout: Duration::from_secs(10),
        io_timeout: Duration::from_secs(10),
    });
    destination_protocol(spec, &folder, || {
        sshd.stop_with_sessions();
        sshd.spawn();
    });
}

#[test]
fn ftps_destination_protocol_direct_upload() {
    let g = Gateway::new();
    let pki = Pki::new();
    let v = Vsftpd::start(&pki, false);
    let folder = RemoteFolder::new();
    let pw = secret(&g, "bank.ftp-password", &format!("{}\n", password()));
    for upload in [
        sluss::config::UploadMode::Rename,
        sluss::config::UploadMode::Direct,
    ] {
        let spec = sluss::config::Endpoint::Ftps(sluss::config::FtpsEndpoint {
            host: "127.0.0.1".into(),
            port: v.port,
            mode: sluss::config::FtpsMode::Explicit,
            user: USER.into(),
            password_file: g.path().join(&pw),
            trust: sluss::config::FtpsTrust::CaFile(pki.ca()),
            passive: sluss::config::PassiveMode::Epsv,
            dir: folder.inbox().display().to_string(),
            upload,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(10),
        });
        destination_protocol(spec.clone(), &folder, || {});
        fs::remove_file(folder.inbox().join("a.dat")).unwrap();
        // Many uploads on one session: each data connection must resume the TLS session
        // (TLS 1.3 tickets are single-use), or vsftpd answers 522.
        use sluss::pipeline::deliver::Destination;
        let dest = sluss::pipeline::remote_dest::RemoteDir::new(&spec).unwrap();
        let src = tempfile::NamedTempFile::new().unwrap();
        fs::write(src.path(), b"x\r\n").unwrap();
        for i in 0..25 {
            let c = sluss::pipeline::Contents::File(src.path().to_path_buf());
            dest.put_temp(&format!(".m{i}.tmp"), &c).unwrap();
            dest.promote(&format!(".m{i}.tmp"), &format!("m{i}"))
                .unwrap();
        }
        for i in 0..25 {
            assert_eq!(dest.size_of(&format!("m{i}")).unwrap(), Some(3));
            dest.remove(&format!("m{i}")).unwrap();
        }
    }
}

#[test]
fn a_server_that_never_answers_times_out_with_the_endpoint_named() {
    let g = Gateway::new();
    // Accepts connections and says nothing: a hung server (or a firewall that swallows).
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().take(2) {
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    let pw = secret(&g, "bank.pw", "x\n");
    let sftp = format!(
        "{{ type = \"sftp\", host = \"127.0.0.1\", port = {port}, user = \"u\", host_key = \"SHA256:KjoUuqR0MhYgIGdNz4Io9tV8N3xtuOZxq9cT3BTEMWo\", password_file = \"{pw}\", connect_timeout_seconds = 1 }}"
    );
    let ftps = format!(
        "{{ type = \"ftps\", host = \"127.0.0.1\", port = {port}, user = \"u\", password_file = \"{pw}\", cert_fingerprint = \"SHA256:{}\", connect_timeout_seconds = 1 }}",
        "ab".repeat(32)
    );
    for (endpoint, scheme) in [(sftp, "sftp://u@127.0.0.1"), (ftps, "ftps://u@127.0.0.1")] {
        bank_endpoint(&g, &endpoint, 3);
        let (code, out) = remote(&g, &["test", "demo-bank"]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("timed out after 1 s"), "{out}");
        assert!(out.contains(scheme), "{out}");
    }
    hold.join().unwrap();
}

#[test]
fn restart_recovery_looks_at_the_remote_folder() {
    // The crash leftovers of four deliveries, set up at an SFTP server, then the daemon starts.
    let mut g = Gateway::new();
    let (key, line) = client_key(&g);
    let sshd = Sshd::start(&line);
    let folder = RemoteFolder::new();
    bank_endpoint(
        &g,
        &format!(
            "{{ type = \"sftp\", host = \"127.0.0.1\", port = {}, user = \"{USER}\", host_key = \"{}\", key_file = \"{key}\", dir = \"{}\" }}",
            sshd.port,
            sshd.host_fingerprint(),
            folder.inbox().display()
        ),
        3,
    );
    let ids: Vec<i64> = (0..4).map(|i| ingest_order(&g, 300 + i).0).collect();
    let ledger = g.path().join("var/ledger.sqlite");
    let db = rusqlite::Connection::open(&ledger).unwrap();
    let rows: Vec<(i64, String, String, Vec<u8>)> = ids
        .iter()
        .map(|id| {
            db.query_row(
                // Small files: their bytes are kept in the ledger until delivered.
                "SELECT d.id, d.final_name, d.temp_name, b.bytes FROM deliveries d \
                 JOIN bodies b ON b.file_id = d.file_id WHERE d.file_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap()
        })
        .collect();
    let inbox = folder.inbox();
    // 0: only the temporary file (the rename never happened) → delivered again.
    fs::write(inbox.join(&rows[0].2), &rows[0].3).unwrap();
    // 1: the final name with the right bytes (crash before "delivered") → delivered.
    fs::write(inbox.join(&rows[1].1), &rows[1].3).unwrap();
    // 2: nothing (the bank may have fetched it) → held, never re-sent.
    // 3: the final name, right size, other bytes → held (the remote SHA-256 differs).
    let mut other = rows[3].3.clone();
    other[0] ^= 1;
    fs::write(inbox.join(&rows[3].1), &other).unwrap();
    chown(&folder.path);
    for (did, ..) in &rows {
        db.execute(
            "UPDATE deliveries SET state = 'delivering' WHERE id = ?1",
            [did],
        )
        .unwrap();
    }
    for id in &ids {
        db.execute("UPDATE files SET state = 'delivering' WHERE id = ?1", [id])
            .unwrap();
    }
    drop(db);
    g.start();
    assert!(
        g.wait_for(Duration::from_secs(30), || {
            g.state_of(ids[0]) == "delivered"
                && g.state_of(ids[1]) == "delivered"
                && g.state_of(ids[2]) == "held"
                && g.state_of(ids[3]) == "held"
        }),
        "{}",
        g.diag()
    );
    g.stop();
    let names = folder.files();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    assert!(
        !names.contains(&rows[2].1),
        "the absent file was not sent again"
    );
    assert_eq!(
        fs::read(inbox.join(&rows[3].1)).unwrap(),
        other,
        "never replaced"
    );
    let log = fs::read_to_string(g.path().join("serve.log")).unwrap();
    assert!(log.contains("other content"), "{log}");
}

/// Add a pull job `demo-bank/r` reading `dir` through `endpoint` (never scheduled in the
/// test: it runs with `sluss jobs run`).
fn pull_job(g: &Gateway, endpoint: &str, dir: &Path, extra: &str) {
    let job = g.path().join("jobs.d/demo-bank.toml");
    let mut text = fs::read_to_string(&job).unwrap();
    text.push_str(&format!(
        "\n[[pull]]\nname = \"r\"\nendpoint = {endpoint}\ndir = \"{}\"\npattern = \"*.txt\"\n\
         schedule = \"0 0 1 1 *\"\njitter_seconds = 0\nstable_seconds = 1\n{extra}\n",
        dir.display()
    ));
    fs::write(&job, text).unwrap();
}

/// A bank return for the demo customer, placed in the remote folder as `name`.
fn put_return(folder: &RemoteFolder, name: &str) -> Vec<u8> {
    let bytes = fs::read(crate::util::fixture(
        "bankgirot/returns/lb-stopped-code7.txt",
    ))
    .unwrap();
    fs::write(folder.inbox().join(name), &bytes).unwrap();
    chown(&folder.inbox());
    bytes
}

fn jobs_run(g: &Gateway) -> (i32, String) {
    let out = g.cmd(&["jobs", "run", "demo-bank/r"]).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Files delivered to the demo customer's download folder (rejection notes aside).
fn customer_files(g: &Gateway) -> Vec<Vec<u8>> {
    let dir = g.path().join("var/download/demo");
    let Ok(rd) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.map(|e| e.unwrap().path())
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("REJECTED-")
        })
        .map(|p| fs::read(p).unwrap())
        .collect()
}

#[test]
fn sftp_pull_then_delete_and_keep_reach_the_customer_once() {
    let mut g = Gateway::new();
    let (key, line) = client_key(&g);
    let sshd = Sshd::start(&line);
    let folder = RemoteFolder::new();
    let endpoint = format!(
        "{{ type = \"sftp\", host = \"127.0.0.1\", port = {}, user = \"{USER}\", host_key = \"{}\", key_file = \"{key}\" }}",
        sshd.port,
        sshd.host_key_line()
    );
    pull_job(&g, &endpoint, &folder.inbox(), "after = \"delete\"");
    let bytes = put_return(&folder, "stopped1.txt");
    std::thread::sleep(Duration::from_millis(1100)); // older than stable_seconds
    let (code, out) = jobs_run(&g);
    assert_eq!(code, 0, "{out}");
    assert!(
        folder.files().is_empty(),
        "deleted after acceptance: {:?}",
        folder.files()
    );
    g.start();
    assert!(
        g.wait_for(Duration::from_secs(30), || customer_files(&g).len() == 1),
        "{}",
        g.diag()
    );
    g.stop();
    assert_eq!(customer_files(&g), vec![bytes.clone()], "byte-identical");

    // keep: the file stays on the server and is taken once, however often the job runs.
    let job = g.path().join("jobs.d/demo-bank.toml");
    let text = fs::read_to_string(&job)
        .unwrap()
        .replace("after = \"delete\"", "after = \"keep\"");
    fs::write(&job, text).unwrap();
    let mut other = bytes.clone();
    // Another day's return (other bytes, so not a duplicate of the first).
    let pos = other.windows(6).position(|w| w == b"GENAST").unwrap_or(100);
    other[pos - 1] = b'9';
    fs::write(folder.inbox().join("stopped2.txt"), &other).unwrap();
    chown(&folder.inbox());
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..2 {
        let (code, out) = jobs_run(&g);
        assert_eq!(code, 0, "{out}");
    }
    assert_eq!(folder.files(), vec!["stopped2.txt".to_string()]);
    let rows = g.ledger_json();
    let pulled: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"].as_str().unwrap_or("").starts_with("pull:"))
        .collect();
    assert_eq!(pulled.len(), 2, "each file ingested once: {rows}");
}

#[test]
fn ftps_pull_then_move_never_takes_a_file_twice() {
    let g = Gateway::new();
    let pki = Pki::new();
    let v = Vsftpd::start(&pki, false);
    let folder = RemoteFolder::new();
    fs::create_dir_all(folder.path.join("done")).unwrap();
    chown(&folder.path);
    let pw = secret(&g, "bank.ftp-password", &format!("{}\n", password()));
    let endpoint = format!(
        "{{ type = \"ftps\", host = \"127.0.0.1\", port = {}, mode = \"explicit\", user = \"{USER}\", password_file = \"{pw}\", ca_file = \"{}\" }}",
        v.port,
        pki.ca().display()
    );
    pull_job(
        &g,
        &endpoint,
        &folder.inbox(),
        &format!(
            "after = \"move\"\nmove_to = \"{}\"",
            folder.path.join("done").display()
        ),
    );
    let bytes = put_return(&folder, "stopped1.txt");
    std::thread::sleep(Duration::from_millis(1100));
    let (code, out) = jobs_run(&g);
    assert_eq!(code, 0, "{out}");
    assert!(folder.files().is_empty(), "{:?}", folder.files());
    assert_eq!(
        fs::read(folder.path.join("done/stopped1.txt")).unwrap(),
        bytes,
        "moved, unchanged"
    );
    let (code, out) = jobs_run(&g);
    assert_eq!(code, 0, "{out}");
    let rows = g.ledger_json();
    assert_eq!(rows.as_array().unwrap().len(), 1, "taken once: {rows}");
    let row = &rows[0];
    assert_eq!(row["kind"], "lb-stopped");
    assert_eq!(row["sha256"].as_str().unwrap(), {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    });
}
