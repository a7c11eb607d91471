//! The pipeline end to end, through the real binary and a real SQLite ledger: acceptance,
//! every kind of refusal, duplicates, four eyes, the audit trail, restart recovery, and the
//! crash test (SIGKILL at random moments with a bank that takes files away at once).

use crate::util::{self, TEST_KEY_HEX};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The demo customer's bankgiro number (Bankgirot's own example).
const DEMO_BG: &str = "0009912346";
/// Another valid bankgiro number, registered to nobody in the test config.
const OTHER_BG: &str = "0001234566";

/// A gateway installation in a temp dir: config, keys, data.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    serve: Option<Child>,
}

impl Gateway {
    /// The shipped example config with the official test key as demo's seal key.
    pub fn new() -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        fs::copy(root.join("sluss.toml"), dir.path().join("sluss.toml")).unwrap();
        fs::create_dir_all(dir.path().join("jobs.d")).unwrap();
        for e in fs::read_dir(root.join("jobs.d")).unwrap() {
            let e = e.unwrap();
            if e.path().extension().is_some_and(|x| x == "toml") {
                fs::copy(e.path(), dir.path().join("jobs.d").join(e.file_name())).unwrap();
            }
        }
        fs::create_dir_all(dir.path().join("keys")).unwrap();
        let key = dir.path().join("keys/demo.seal");
        fs::write(&key, format!("{TEST_KEY_HEX}\n")).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        Gateway { dir, serve: None }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn outbox(&self) -> PathBuf {
        self.path().join("var/bank-outbox")
    }

    /// `sluss <args> --config DIR` (the config flag appended after the subcommand path).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = util::sluss();
        c.args(args).arg("--config").arg(self.path());
        c.env("SLUSS_LOG", "warn");
        c
    }

    /// Ingest files as demo; returns (exit code, stdout).
    pub fn ingest(&self, partner: &str, files: &[&Path]) -> (i32, String) {
        let mut c = self.cmd(&["ingest", "--partner", partner]);
        for f in files {
            c.arg(f);
        }
        let out = c.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    pub fn start(&mut self) {
        let child = self
            .cmd(&["serve"])
            .env("SLUSS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.path().join("serve.log"))
                    .unwrap(),
            ))
            .spawn()
            .unwrap();
        self.serve = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send a signal (`kill -NAME`) to the running daemon.
    pub fn signal(&self, name: &str) {
        let pid = self.serve.as_ref().expect("daemon started").id();
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} {pid}");
    }

    /// True while the daemon process has not exited.
    pub fn running(&mut self) -> bool {
        self.serve
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path().join("serve.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.serve.take() {
            unsafe_free_sigterm(c.id());
            let _ = c.wait();
        }
    }

    pub fn ledger_json(&self) -> serde_json::Value {
        let out = self.cmd(&["ledger", "list", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn state_of(&self, id: i64) -> String {
        let v = self.ledger_json();
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"].as_i64() == Some(id))
            .map(|r| r["state"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// What to look at when a test fails: the daemon's log and the ledger.
    pub fn diag(&self) -> String {
        format!(
            "serve.log:\n{}\nledger:\n{}",
            fs::read_to_string(self.path().join("serve.log")).unwrap_or_default(),
            serde_json::to_string_pretty(&self.ledger_json()).unwrap_or_default()
        )
    }

    /// Wait until `cond` holds or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        cond()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// SIGTERM by PID through the `kill` program (the crate forbids unsafe code).
fn unsafe_free_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// An LB payment order: one section from `sender`, `n` payments, distinct by `seed`. CRLF.
pub fn lb_order(sender: &str, n: usize, seed: u64) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    let mut rec = |line: Vec<u8>| {
        assert_eq!(line.len(), 80, "{}", String::from_utf8_lossy(&line));
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
    };
    let mut tk11 = format!("11{sender}261129").into_bytes();
    tk11.extend_from_slice(b"LEVERANT\xd6RSBETALNINGAR");
    tk11.extend_from_slice(b"GENAST");
    tk11.extend_from_slice(&[b' '; 13]);
    tk11.extend_from_slice(b"SEK");
    tk11.extend_from_slice(&[b' '; 18]);
    rec(tk11);
    let mut total: u64 = 0;
    for i in 0..n {
        let amount = 100 + (seed * 7919 + i as u64 * 104_729) % 9_999_900;
        total += amount;
        let reference = format!("{:<25}", format!("REF{seed}X{i}"));
        rec(format!(
            "14{OTHER_BG}{reference}{amount:012}GENAST     {:<20}",
            format!("VERIF {seed}-{i}")
        )
        .into_bytes());
    }
    rec(format!("29{sender}{n:08}{total:012} {:47}", "").into_bytes());
    out
}

/// Seal `content` with the test key (the library's seal, as the customer's tool would).
pub fn sealed(content: &[u8], date: &str) -> Vec<u8> {
    let key = sluss::seal::SealKey::from_hex(TEST_KEY_HEX).unwrap();
    let mut out = Vec::new();
    sluss::seal::seal_stream(&key, date, content, &mut out).unwrap();
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

fn id_of(line_out: &str) -> i64 {
    let i = line_out.find("id ").expect("an id") + 3;
    line_out[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn sealed_order_is_delivered_byte_identical() {
    let mut g = Gateway::new();
    let src = tempfile::tempdir().unwrap();
    let bytes = sealed(&lb_order(DEMO_BG, 3, 1), "261129");
    let f = write(src.path(), "pay1.txt", &bytes);
    let (code, out) = g.ingest("demo", &[&f]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("accepted") && out.contains("lb-payment-order"),
        "{out}"
    );
    let id = id_of(&out);
    assert_eq!(
        fs::read(&f).unwrap(),
        bytes,
        "the caller's file is untouched"
    );
    g.start();
    assert!(
        g.wait_for(Duration::from_secs(30), || g.state_of(id) == "delivered"),
        "state {}",
        g.state_of(id)
    );
    let delivered: Vec<_> = fs::read_dir(g.outbox())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(fs::read(&delivered[0]).unwrap(), bytes, "byte-identical");
    assert!(
        !delivered[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with('.'),
        "no temporary name is left"
    );
    g.stop();
}

#[test]
fn refused_files_are_quarantined_with_distinct_reasons() {
    let g = Gateway::new();
    let src = tempfile::tempdir().unwrap();
    let good = sealed(&lb_order(DEMO_BG, 2, 2), "261129");

    let mut tampered = good.clone();
    let pos = tampered.windows(6).position(|w| w == b"GENAST").unwrap() - 2;
    tampered[pos] = if tampered[pos] == b'1' { b'2' } else { b'1' };

    let other_key = sluss::seal::SealKey::from_hex("00112233445566778899AABBCCDDEEFF").unwrap();
    let mut wrong_key = Vec::new();
    sluss::seal::seal_stream(
        &other_key,
        "261129",
        &lb_order(DEMO_BG, 2, 3)[..],
        &mut wrong_key,
    )
    .unwrap();

    let unsealed = lb_order(DEMO_BG, 2, 4);
    let mut broken = lb_order(DEMO_BG, 2, 5);
    // Drop the closing TK29 record: the section is never closed.
    let cut = broken.len() - 82;
    broken.truncate(cut);
    let broken = sealed(&broken, "261129");
    let other_payer = sealed(&lb_order(OTHER_BG, 2, 6), "261129");

    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("tampered.txt", tampered, "seal:content-changed"),
        ("wrongkey.txt", wrong_key, "seal:wrong-key"),
        ("unsealed.txt", unsealed, "seal:not-sealed"),
        ("broken.txt", broken, "structure"),
        ("otherpayer.txt", other_payer, "payer-not-registered"),
    ];
    let mut seen_codes = BTreeSet::new();
    for (name, bytes, code) in cases {
        let f = write(src.path(), name, &bytes);
        let (exit, out) = g.ingest("demo", &[&f]);
        assert_eq!(exit, 1, "{name}: {out}");
        assert!(out.contains("refused"), "{name}: {out}");
        assert!(out.contains(code), "{name}: expected {code} in {out}");
        let id = id_of(&out);
        assert_eq!(g.state_of(id), "quarantined", "{name}");
        seen_codes.insert(code);
    }
    assert_eq!(seen_codes.len(), 5);
    // Each refusal left a note where the customer fetches its receipts.
    let notes: Vec<String> = fs::read_dir(g.path().join("var/download/demo"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(notes.len(), 5, "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("seal:content-changed") && n.contains("NOT send"))
    );
    // Nothing refused reaches the bank, even with the daemon running.
    assert!(!g.outbox().exists() || fs::read_dir(g.outbox()).unwrap().count() == 0);
    // Every row carries its reason.
    for r in g.ledger_json().as_array().unwrap() {
        assert!(!r["reason"].as_str().unwrap_or("").is_empty(), "{r}");
    }
}

#[test]
fn duplicates_same_bytes_and_resealed_payload_are_refused() {
    let g = Gateway::new();
    let src = tempfile::tempdir().unwrap();
    let order = lb_order(DEMO_BG, 4, 7);
    let first = write(src.path(), "a.txt", &sealed(&order, "261129"));
    let same = write(src.path(), "b.txt", &sealed(&order, "261129"));
    let resealed = write(src.path(), "c.txt", &sealed(&order, "261130"));
    let (code, out) = g.ingest("demo", &[&first]);
    assert_eq!(code, 0, "{out}");
    let original = id_of(&out);
    for f in [&same, &resealed] {
        let (code, out) = g.ingest("demo", &[f]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("duplicate"), "{out}");
        assert!(
            out.contains(&format!("file {original}")),
            "names the original: {out}"
        );
    }
    // Both copies in one batch: the second is the duplicate of the first.
    let order2 = lb_order(DEMO_BG, 4, 8);
    let x = write(src.path(), "x.txt", &sealed(&order2, "261129"));
    let y = write(src.path(), "y.txt", &sealed(&order2, "261201"));
    let (code, out) = g.ingest("demo", &[&x, &y]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("accepted")).count(),
        1,
        "{out}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("refused") && l.contains("duplicate"))
            .count(),
        1,
        "{out}"
    );
}

#[test]
fn release_needs_two_operators_and_audit_detects_edits() {
    let mut g = Gateway::new();
    let src = tempfile::tempdir().unwrap();
    let mut tampered = sealed(&lb_order(DEMO_BG, 1, 9), "261129");
    let n = tampered.len();
    tampered[n - 100] = b'7';
    let f = write(src.path(), "t.txt", &tampered);
    let (_, out) = g.ingest("demo", &[&f]);
    let id = id_of(&out);
    let rel = |op: &str| {
        g.cmd(&["ledger", "release", &id.to_string()])
            .args(["--reason", "customer confirmed by phone", "--operator", op])
            .output()
            .unwrap()
    };
    let first = rel("alice");
    assert!(first.status.success());
    assert!(String::from_utf8_lossy(&first.stdout).contains("second"));
    let again = rel("alice");
    assert!(
        !again.status.success(),
        "same operator twice must be refused"
    );
    assert_eq!(g.state_of(id), "quarantined");
    let second = rel("bob");
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(g.state_of(id), "queued");
    g.start();
    assert!(
        g.wait_for(Duration::from_secs(30), || g.state_of(id) == "delivered"),
        "{}",
        g.diag()
    );
    g.stop();
    let show = g
        .cmd(&["ledger", "show", &id.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("alice") && text.contains("bob"), "{text}");

    let head = String::from_utf8_lossy(&g.cmd(&["ledger", "head"]).output().unwrap().stdout)
        .trim()
        .to_string();
    let ok = g
        .cmd(&["ledger", "verify-audit", "--head", &head])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // An edited history row is detected.
    let db = rusqlite::Connection::open(g.path().join("var/ledger.sqlite")).unwrap();
    // The ledger's triggers refuse casual edits; an attacker drops them first.
    db.execute_batch(
        "DROP TRIGGER history_no_update; \
         UPDATE history SET reason = 'nothing to see' WHERE seq = (SELECT MIN(seq) FROM history);",
    )
    .unwrap();
    drop(db);
    let bad = g.cmd(&["ledger", "verify-audit"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn restart_recovery_resolves_interrupted_deliveries() {
    // Simulate the three crash leftovers directly in the ledger and destination, then start.
    let mut g = Gateway::new();
    let src = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let f = write(
            src.path(),
            &format!("r{i}.txt"),
            &sealed(&lb_order(DEMO_BG, 1, 100 + i), "261129"),
        );
        let (code, out) = g.ingest("demo", &[&f]);
        assert_eq!(code, 0, "{out}");
        ids.push(id_of(&out));
    }
    let db = rusqlite::Connection::open(g.path().join("var/ledger.sqlite")).unwrap();
    let names: Vec<(i64, String, String, Vec<u8>)> = ids
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
    drop(db);
    let outbox = g.outbox();
    fs::create_dir_all(&outbox).unwrap();
    // 0: temp file present (promote never happened) → redone.
    fs::write(outbox.join(&names[0].2), &names[0].3).unwrap();
    // 1: final present, right bytes (crash before "delivered" was recorded) → delivered.
    fs::write(outbox.join(&names[1].1), &names[1].3).unwrap();
    // 2: nothing there (the bank took it) → held for an operator.
    // Mark all three "delivering" the way the ledger's API would (through the binary we
    // cannot pause mid-delivery, so the rows are set with SQL; recovery reads only state).
    let db = rusqlite::Connection::open(g.path().join("var/ledger.sqlite")).unwrap();
    for (did, ..) in &names {
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
        }),
        "{}",
        g.diag()
    );
    g.stop();
    let files: Vec<String> = fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| !f.starts_with('.')), "{files:?}");
    // The delivered files' copies kept in the ledger are gone; the held one keeps its copy
    // for the operator, byte-identical.
    let db = rusqlite::Connection::open(g.path().join("var/ledger.sqlite")).unwrap();
    let held: Vec<i64> = db
        .prepare("SELECT file_id FROM bodies ORDER BY file_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(held, vec![ids[2]], "{}", g.diag());
    let out = g.path().join("held-copy");
    let o = g
        .cmd(&["ledger", "export", &ids[2].to_string()])
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::read(&out).unwrap(), names[2].3);
}

/// Files the "bank" took from the outbox: name → bytes. The bank moves each file away as
/// soon as it appears (ignoring hidden temporary names), as real banks' agents do.
fn run_bank(outbox: PathBuf, taken: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        fs::create_dir_all(&taken).unwrap();
        let mut n = 0u64;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            if let Ok(rd) = fs::read_dir(&outbox) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue;
                    }
                    n += 1;
                    let _ = fs::rename(e.path(), taken.join(format!("{n:06}-{name}")));
                }
            }
            if stopping {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// A small deterministic random source (the test must not depend on a crate for this).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn crash_test_kill9_never_loses_or_doubles_a_file() {
    let mut g = Gateway::new();
    let src = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let taken = g.path().join("taken");
    let bank = run_bank(g.outbox(), taken.clone(), stop.clone());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    // sha256 of each file handed over → its bytes.
    let mut sent: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut accepted_ids: BTreeSet<i64> = BTreeSet::new();
    let mut file_no = 0u64;
    const ROUNDS: usize = 25;
    for round in 0..ROUNDS {
        g.start();
        // Feed batches while the daemon runs; kill it at a random moment.
        let kill_after = Duration::from_millis(100 + rng.below(900));
        let t0 = Instant::now();
        while t0.elapsed() < kill_after {
            let batch = 1 + rng.below(6) as usize;
            let mut paths = Vec::new();
            for _ in 0..batch {
                file_no += 1;
                let bytes = sealed(
                    &lb_order(DEMO_BG, 1 + (file_no % 3) as usize, 10_000 + file_no),
                    "261129",
                );
                let p = write(src.path(), &format!("f{file_no}.txt"), &bytes);
                sent.insert(sha256_hex(&bytes), bytes);
                paths.push(p);
            }
            // Sometimes kill the ingest itself mid-way.
            let mut c = g.cmd(&["ingest", "--partner", "demo"]);
            c.args(&paths).stdout(Stdio::piped()).stderr(Stdio::null());
            let child = c.spawn().unwrap();
            if rng.below(5) == 0 {
                std::thread::sleep(Duration::from_millis(rng.below(40)));
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
            } else {
                let out = child.wait_with_output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert_eq!(out.status.code(), Some(0), "round {round}: {text}");
                for line in text.lines().filter(|l| l.starts_with("accepted")) {
                    accepted_ids.insert(id_of(line));
                }
            }
        }
        g.kill9();
    }
    // Final run: let everything settle.
    g.start();
    let settled = g.wait_for(Duration::from_secs(60), || {
        g.ledger_json().as_array().unwrap().iter().all(|r| {
            matches!(
                r["state"].as_str(),
                Some("delivered" | "held" | "quarantined")
            )
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    bank.join().unwrap();
    g.stop();
    assert!(settled, "not settled: {}", g.ledger_json());

    // Every file the bank took: one of ours, byte-identical, and taken once.
    let mut taken_hashes: BTreeMap<String, usize> = BTreeMap::new();
    for e in fs::read_dir(&taken).unwrap() {
        let bytes = fs::read(e.unwrap().path()).unwrap();
        let h = sha256_hex(&bytes);
        assert!(sent.contains_key(&h), "the bank got bytes nobody sent");
        *taken_hashes.entry(h).or_default() += 1;
    }
    for (h, n) in &taken_hashes {
        assert_eq!(*n, 1, "file {h} delivered {n} times");
    }
    // Every accepted file is delivered (the bank has it) or held for an operator.
    let rows = g.ledger_json();
    let mut held = 0;
    let mut delivered = 0;
    for r in rows.as_array().unwrap() {
        let id = r["id"].as_i64().unwrap();
        let state = r["state"].as_str().unwrap();
        let h = r["sha256"].as_str().unwrap();
        match state {
            "delivered" => {
                delivered += 1;
                assert_eq!(
                    taken_hashes.get(h),
                    Some(&1),
                    "file {id} delivered but the bank lacks it"
                );
            }
            "held" => held += 1,
            other => panic!("file {id} ended {other}: {r}"),
        }
    }
    for id in &accepted_ids {
        assert!(
            rows.as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"].as_i64() == Some(*id)),
            "accepted file {id} vanished from the ledger"
        );
    }
    // Files the bank has that the ledger calls held are the in-doubt cases: allowed, never doubled.
    eprintln!(
        "crash test: {} handed over, {} accepted by completed ingests, {delivered} delivered, {held} held in doubt, {} taken by the bank",
        sent.len(),
        accepted_ids.len(),
        taken_hashes.len()
    );
    assert!(delivered > 0);
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn disk_full_on_the_spool_refuses_cleanly() {
    // A 2 MiB tmpfs as the data directory (root in CI; skip with a message otherwise).
    let g = Gateway::new();
    let var = g.path().join("var");
    fs::create_dir_all(&var).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&var)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        panic!("cannot mount a tmpfs for the disk-full test (the test suite runs as root)");
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(var.clone());
    let src = tempfile::tempdir().unwrap();
    let small = write(
        src.path(),
        "small.txt",
        &sealed(&lb_order(DEMO_BG, 2, 500), "261129"),
    );
    let (code, out) = g.ingest("demo", &[&small]);
    assert_eq!(code, 0, "{out}");
    // ~3 MiB of payments cannot fit.
    let big = write(
        src.path(),
        "big.txt",
        &sealed(&lb_order(DEMO_BG, 36_000, 501), "261129"),
    );
    let (code, out) = g.ingest("demo", &[&big]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("disk full"), "{out}");
    // Nothing partial is left, the ledger is intact, and the next small file still works.
    let leftovers: Vec<_> = fs::read_dir(var.join("spool/incoming")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let ok = g.cmd(&["ledger", "verify-audit"]).output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let small2 = write(
        src.path(),
        "small2.txt",
        &sealed(&lb_order(DEMO_BG, 2, 502), "261129"),
    );
    let (code, out) = g.ingest("demo", &[&small2]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn damaged_or_locked_ledger_gives_a_clear_error() {
    let g = Gateway::new();
    let var = g.path().join("var");
    fs::create_dir_all(&var).unwrap();
    fs::write(var.join("ledger.sqlite"), vec![0x5au8; 8192]).unwrap();
    let out = g.cmd(&["ledger", "list"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged"), "{err}");
    assert!(
        fs::metadata(var.join("ledger.sqlite")).unwrap().len() == 8192,
        "not deleted or rewritten"
    );

    let g2 = Gateway::new();
    let (code, out) = g2.ingest(
        "demo",
        &[&util::fixture("bankgirot/lb/lb-sealed-testkey-lf.txt")],
    );
    assert!(code == 0 || code == 1, "{out}");
    let db = rusqlite::Connection::open(g2.path().join("var/ledger.sqlite")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let out = g2
        .cmd(&["ingest", "--partner", "demo"])
        .arg(util::fixture("bankgirot/lb/lb-official-example.txt"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("locked") || err.contains("busy"), "{err}");
    db.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn bank_returns_reach_the_right_customer_or_quarantine() {
    let mut g = Gateway::new();
    let stopped = util::fixture("bankgirot/returns/lb-stopped-code7.txt");
    let bgmax = util::fixture("bankgirot/bgmax/BgMaxfil1.txt");
    let (code, out) = g.ingest("demo-bank", &[&stopped, &bgmax]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("→ demo").count(), 2, "{out}");
    // A payment specification for a bankgiro number nobody registered: kept, not guessed.
    let (code, out) = g.ingest(
        "demo-bank",
        &[&util::fixture(
            "bankgirot/returns/lb-payment-spec-code1.txt",
        )],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("unroutable") && out.contains("0001234566"),
        "{out}"
    );
    // A customer may not send a bank's file.
    let (code, out) = g.ingest("demo", &[&bgmax]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("kind-not-allowed"), "{out}");

    g.start();
    let download = g.path().join("var/download/demo");
    // The customer's folder also holds the rejection note for the bgmax it tried to send.
    let delivered = || -> Vec<PathBuf> {
        fs::read_dir(&download)
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| {
                        !p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with("REJECTED-")
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        g.wait_for(Duration::from_secs(30), || delivered().len() == 2),
        "{}",
        g.diag()
    );
    g.stop();
    let mut got: Vec<Vec<u8>> = delivered().iter().map(|p| fs::read(p).unwrap()).collect();
    let mut want = vec![fs::read(&stopped).unwrap(), fs::read(&bgmax).unwrap()];
    got.sort();
    want.sort();
    assert!(got == want, "the customer gets the bank's bytes unchanged");
}

#[test]
fn archive_keeps_an_age_encrypted_copy_that_decrypts() {
    use age::secrecy::ExposeSecret;
    let mut g = Gateway::new();
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let id_file = g.path().join("archive-identity.txt");
    fs::write(
        &id_file,
        format!("{}\n", identity.to_string().expose_secret()),
    )
    .unwrap();
    let job = g.path().join("jobs.d/demo.toml");
    let text = fs::read_to_string(&job).unwrap();
    let start = text
        .find("[archive]")
        .expect("demo.toml has an [archive] table");
    let rest = &text[start + 9..];
    let end = rest.find("\n[").map_or(text.len(), |i| start + 9 + i);
    let text = format!(
        "{}[archive]\nmode = \"age\"\nrecipients = [\"{recipient}\"]\nretention_days = 30\n{}",
        &text[..start],
        &text[end..]
    );
    fs::write(&job, text).unwrap();
    let check = g.cmd(&["check"]).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let src = tempfile::tempdir().unwrap();
    let bytes = sealed(&lb_order(DEMO_BG, 2, 700), "261129");
    let f = write(src.path(), "arch.txt", &bytes);
    let (code, out) = g.ingest("demo", &[&f]);
    assert_eq!(code, 0, "{out}");
    let id = id_of(&out);
    g.start();
    let archived = g.path().join(format!("var/archive/demo/{id}.age"));
    assert!(
        g.wait_for(Duration::from_secs(30), || archived.exists()),
        "{}",
        g.diag()
    );
    g.stop();
    let stored = fs::read(&archived).unwrap();
    assert!(
        !stored
            .windows(20)
            .any(|w| bytes.windows(20).next() == Some(w)),
        "the archive is not plaintext"
    );
    // The plain spooled copy is gone once archived.
    let rec = g.ledger_json();
    let row = rec
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"].as_i64() == Some(id))
        .unwrap();
    assert!(!Path::new(row["spool_path"].as_str().unwrap()).exists());
    let restored = g.path().join("restored.txt");
    let out = g
        .cmd(&["archive", "decrypt"])
        .arg("--identity")
        .arg(&id_file)
        .arg("-o")
        .arg(&restored)
        .arg(id.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(&restored).unwrap(), bytes);
    // The wrong identity is refused clearly.
    let other = g.path().join("other.txt");
    fs::write(
        &other,
        format!(
            "{}\n",
            age::x25519::Identity::generate()
                .to_string()
                .expose_secret()
        ),
    )
    .unwrap();
    let out = g
        .cmd(&["archive", "decrypt"])
        .arg("--identity")
        .arg(&other)
        .arg(id.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot decrypt"));
}

#[test]
fn unwritable_destination_is_retried_then_dead_lettered() {
    let mut g = Gateway::new();
    // Two attempts, one second apart.
    let main_cfg = g.path().join("sluss.toml");
    let text = fs::read_to_string(&main_cfg)
        .unwrap()
        .replace("delivery_attempts = 10", "delivery_attempts = 2")
        .replace("retry_initial_seconds = 30", "retry_initial_seconds = 1")
        .replace("retry_max_seconds = 3600", "retry_max_seconds = 1");
    fs::write(&main_cfg, text).unwrap();
    // The bank's folder is a plain file: nothing can be written there.
    fs::create_dir_all(g.path().join("var")).unwrap();
    fs::write(g.outbox(), b"not a folder").unwrap();
    let src = tempfile::tempdir().unwrap();
    let f = write(
        src.path(),
        "dl.txt",
        &sealed(&lb_order(DEMO_BG, 1, 800), "261129"),
    );
    let (code, out) = g.ingest("demo", &[&f]);
    assert_eq!(code, 0, "{out}");
    let id = id_of(&out);
    g.start();
    assert!(
        g.wait_for(Duration::from_secs(40), || g.state_of(id) == "held"),
        "{}",
        g.diag()
    );
    let log = fs::read_to_string(g.path().join("serve.log")).unwrap();
    assert!(log.contains("alert.dead-letter"), "{log}");
    // Fix the destination; an operator retries; it is delivered once.
    fs::remove_file(g.outbox()).unwrap();
    let out = g
        .cmd(&[
            "ledger",
            "retry",
            &id.to_string(),
            "--reason",
            "outbox fixed",
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
    assert_eq!(fs::read_dir(g.outbox()).unwrap().count(), 1);
}

#[test]
fn characters_the_seal_cannot_protect_are_refused_by_policy() {
    let g = Gateway::new();
    let src = tempfile::tempdir().unwrap();
    // '[' is Ä to the seal: a file carrying it could have been altered without breaking it.
    let order = lb_order(DEMO_BG, 2, 900);
    let text = order.clone();
    let pos = text.windows(5).position(|w| w == b"VERIF").unwrap();
    let mut changed = order;
    changed[pos] = b'[';
    let f = write(src.path(), "twin.txt", &sealed(&changed, "261129"));
    let (code, out) = g.ingest("demo", &[&f]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("charset") && out.contains("swedish-twin"),
        "{out}"
    );
    // The same file from a partner whose policy is "warn" would pass: flip demo's policy.
    let job = g.path().join("jobs.d/demo.toml");
    let t = fs::read_to_string(&job)
        .unwrap()
        .replace("charset = \"reject\"", "charset = \"warn\"");
    fs::write(&job, t).unwrap();
    let f2 = write(src.path(), "twin2.txt", &sealed(&changed, "261130"));
    let (code, out) = g.ingest("demo", &[&f2]);
    assert_eq!(code, 0, "{out}");
}

/// SIGHUP never stops the daemon: it checks the edited configuration as a whole and says
/// whether it is valid (and that a restart applies it) or lists the problems with file and
/// field; the daemon keeps working on the configuration it started with.
#[test]
fn sighup_checks_the_configuration_and_keeps_the_daemon_running() {
    let mut g = Gateway::new();
    // A free port: tests run in parallel and the shipped example listens on 2222.
    let toml = fs::read_to_string(g.path().join("sluss.toml"))
        .unwrap()
        .replace("127.0.0.1:2222", "127.0.0.1:0");
    fs::write(g.path().join("sluss.toml"), toml).unwrap();
    g.start();
    let wait = |g: &Gateway, what: &str| {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < end && !g.log().contains(what) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(g.log().contains(what), "no {what} in:\n{}", g.log());
    };
    wait(&g, "daemon.ready");

    g.signal("HUP");
    wait(&g, "config.reload");
    assert!(g.running(), "SIGHUP must not stop the daemon:\n{}", g.log());
    assert!(g.log().contains("restart it"), "{}", g.log());

    // A bad edit: refused with the file and field named, the daemon keeps working.
    let job = g.path().join("jobs.d/demo.toml");
    let text = fs::read_to_string(&job).unwrap();
    fs::write(&job, format!("{text}\nbogus_field = 1\n")).unwrap();
    g.signal("HUP");
    wait(&g, "config.reload-refused");
    let log = g.log();
    assert!(
        log.contains("demo.toml") && log.contains("bogus_field"),
        "{log}"
    );
    assert!(g.running(), "a bad edit must not stop the daemon:\n{log}");
    fs::write(&job, text).unwrap();

    // Still working: a payment file handed over now is delivered.
    let f = g.path().join("pay.txt");
    fs::write(&f, sealed(&lb_order(DEMO_BG, 2, 900), "261129")).unwrap();
    let (code, out) = g.ingest("demo", &[&f]);
    assert_eq!(code, 0, "{out}");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < end
        && fs::read_dir(g.outbox()).map(|d| d.count()).unwrap_or(0) == 0
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(fs::read_dir(g.outbox()).unwrap().count(), 1, "{}", g.log());
    g.stop();
}
