//! Pull jobs end to end through the real binary, with a local-folder endpoint standing in
//! for a partner's server: take + delete/move/keep, refusals and rejection notes, the remote
//! after-action failing without a second ingest, files still being written, done-markers,
//! the server being down (retries → dead letter → recovery, by hand and in the daemon), the
//! crash window between ingest commit and remembering, byte-identical CRLF/Latin-1 files, and
//! configuration errors.

use crate::pipeline::Gateway;
use crate::util;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A bank return for the demo customer: CRLF line ends and Latin-1 bytes.
const STOPPED: &str = "bankgirot/returns/lb-stopped-code7.txt";
/// Incoming payments for the demo customer: CRLF and Latin-1 too.
const BGMAX: &str = "bankgirot/bgmax/BgMaxfil1.txt";
/// A payment specification for a bankgiro nobody registered: refused (unroutable).
const UNROUTABLE: &str = "bankgirot/returns/lb-payment-spec-code1.txt";

/// A gateway whose bank (demo-bank) has pull job `t` from the local folder `bank-server/`.
/// The schedule is far away: runs happen by `sluss jobs run` unless a test says otherwise.
fn gateway(extra: &str) -> Gateway {
    gateway_with("0 0 1 1 *", extra)
}

fn gateway_with(schedule: &str, extra: &str) -> Gateway {
    let g = Gateway::new();
    let job = g.path().join("jobs.d/demo-bank.toml");
    let mut text = fs::read_to_string(&job).unwrap();
    text.push_str(&format!(
        "\n[[pull]]\nname = \"t\"\nendpoint = {{ type = \"local\", path = \"bank-server\" }}\n\
         schedule = \"{schedule}\"\njitter_seconds = 0\n{extra}\n"
    ));
    fs::write(&job, text).unwrap();
    g
}

fn server(g: &Gateway) -> PathBuf {
    g.path().join("bank-server")
}

/// Put a fixture on the "server" under `name`.
fn put(g: &Gateway, fixture: &str, name: &str) -> Vec<u8> {
    fs::create_dir_all(server(g)).unwrap();
    let bytes = fs::read(util::fixture(fixture)).unwrap();
    fs::write(server(g).join(name), &bytes).unwrap();
    bytes
}

/// `sluss jobs run demo-bank/t`: (exit code, stdout + stderr).
fn run(g: &Gateway) -> (i32, String) {
    let out = g.cmd(&["jobs", "run", "demo-bank/t"]).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `sluss jobs --json`, the entry of demo-bank/t.
fn job_view(g: &Gateway) -> serde_json::Value {
    let out = g.cmd(&["jobs", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "demo-bank/t")
        .cloned()
        .expect("job listed")
}

/// Ledger records that came from the pull job.
fn pulled(g: &Gateway) -> Vec<serde_json::Value> {
    g.ledger_json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] == "pull:t")
        .cloned()
        .collect()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn sha_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn pull_then_delete_and_the_customer_gets_identical_bytes() {
    let mut g = gateway("stable_seconds = 0\nafter = \"delete\"");
    let a = put(&g, STOPPED, "stopped.txt");
    let b = put(&g, BGMAX, "bgmax.txt");
    assert!(a.windows(2).any(|w| w == b"\r\n") && a.iter().any(|c| *c >= 0x80));
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("accepted").count(), 2, "{out}");
    assert!(names_in(&server(&g)).is_empty(), "deleted remotely: {out}");
    let recs = pulled(&g);
    assert_eq!(recs.len(), 2);
    let mut shas: Vec<String> = recs
        .iter()
        .map(|r| r["sha256"].as_str().unwrap().to_string())
        .collect();
    shas.sort();
    let mut want = vec![sha_hex(&a), sha_hex(&b)];
    want.sort();
    assert_eq!(shas, want, "spooled bytes are the server's bytes");

    // A second run finds nothing and takes nothing.
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: 0 file(s)"), "{out}");

    // The daemon delivers both to the customer, byte-identical (CRLF and Latin-1 intact).
    g.start();
    let download = g.path().join("var/download/demo");
    assert!(
        g.wait_for(Duration::from_secs(30), || names_in(&download).len() == 2),
        "{}",
        g.diag()
    );
    g.stop();
    let mut got: Vec<Vec<u8>> = names_in(&download)
        .iter()
        .map(|n| fs::read(download.join(n)).unwrap())
        .collect();
    got.sort();
    let mut want = vec![a, b];
    want.sort();
    assert!(got == want, "the customer gets the bank's bytes unchanged");
}

#[test]
fn pull_then_move_and_a_name_clash_never_replaces() {
    let g = gateway("stable_seconds = 0\nafter = \"move\"\nmove_to = \"processed\"");
    let a = put(&g, STOPPED, "stopped.txt");
    fs::create_dir_all(server(&g).join("processed")).unwrap();
    fs::write(server(&g).join("processed/stopped.txt"), b"older file").unwrap();
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    assert_eq!(names_in(&server(&g)), ["processed"], "{out}");
    let moved = names_in(&server(&g).join("processed"));
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert_eq!(
        fs::read(server(&g).join("processed/stopped.txt")).unwrap(),
        b"older file",
        "the partner's existing file is left alone"
    );
    let ours = moved.iter().find(|n| *n != "stopped.txt").unwrap();
    assert!(ours.starts_with("stopped.txt."), "{ours}");
    assert_eq!(
        fs::read(server(&g).join("processed").join(ours)).unwrap(),
        a
    );
    assert_eq!(pulled(&g).len(), 1);
}

#[test]
fn pull_then_keep_takes_each_file_once_but_a_new_version_again() {
    let g = gateway("stable_seconds = 0\nafter = \"keep\"");
    put(&g, STOPPED, "stopped.txt");
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    assert_eq!(names_in(&server(&g)), ["stopped.txt"], "kept on the server");
    for _ in 0..2 {
        let (code, out) = run(&g);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("ok: 0 file(s)"),
            "remembered, not taken again: {out}"
        );
    }
    assert_eq!(pulled(&g).len(), 1);
    // A new version under the same name (other size) is a new file.
    put(&g, BGMAX, "stopped.txt");
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: 1 file(s)"), "{out}");
    assert_eq!(pulled(&g).len(), 2);
}

#[test]
fn a_refused_file_is_kept_remembered_and_the_partner_gets_a_note() {
    let g = gateway("stable_seconds = 0\nafter = \"delete\"\nrejection_notes = \"rejected\"");
    put(&g, UNROUTABLE, "spec.txt");
    fs::create_dir_all(server(&g).join("rejected")).unwrap();
    let (code, out) = run(&g);
    assert_eq!(
        code, 0,
        "refusal is the pipeline's verdict, not a failed run: {out}"
    );
    assert!(
        out.contains("refused spec.txt") && out.contains("unroutable"),
        "{out}"
    );
    let recs = pulled(&g);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["state"], "quarantined");
    let id = recs[0]["id"].as_i64().unwrap();
    // Default after_refused = keep: left on the server, not taken again.
    assert!(server(&g).join("spec.txt").exists());
    let notes = names_in(&server(&g).join("rejected"));
    assert_eq!(notes, [format!("REJECTED-{id}-spec.txt.txt")]);
    let note = fs::read_to_string(server(&g).join("rejected").join(&notes[0])).unwrap();
    assert!(
        note.contains("unroutable") && note.contains(&id.to_string()),
        "{note}"
    );
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    assert_eq!(pulled(&g).len(), 1, "not taken twice: {out}");
}

#[test]
fn a_failed_remote_move_never_causes_a_second_ingest() {
    // The move target does not exist: the move fails after the file was accepted.
    let g = gateway("stable_seconds = 0\nafter = \"move\"\nmove_to = \"processed\"");
    put(&g, STOPPED, "stopped.txt");
    let (code, out) = run(&g);
    assert_eq!(code, 1, "partial: {out}");
    assert!(
        out.contains("partial: 1 file(s)") && out.contains("move failed"),
        "{out}"
    );
    assert!(server(&g).join("stopped.txt").exists());
    let (code, out) = run(&g);
    assert_eq!(code, 1, "{out}");
    assert_eq!(pulled(&g).len(), 1, "still one ingest: {out}");
    // Once the folder exists, the next run finishes the move, still without an ingest.
    fs::create_dir_all(server(&g).join("processed")).unwrap();
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    assert_eq!(names_in(&server(&g)), ["processed"]);
    assert_eq!(names_in(&server(&g).join("processed")), ["stopped.txt"]);
    assert_eq!(pulled(&g).len(), 1);
}

#[test]
fn a_file_still_being_written_is_not_taken_until_it_holds_still() {
    let g = gateway("stable_seconds = 1\nafter = \"delete\"");
    fs::create_dir_all(server(&g)).unwrap();
    let full = fs::read(util::fixture(BGMAX)).unwrap();
    let path = server(&g).join("growing.txt");
    fs::write(&path, &full[..1]).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        let full = full.clone();
        let path = path.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
            // One byte at a time, keeping the last back until told to finish.
            for i in 1..full.len() - 1 {
                if done.load(Ordering::Relaxed) {
                    f.write_all(&full[i..]).unwrap();
                    return;
                }
                f.write_all(&full[i..i + 1]).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            f.write_all(&full[full.len() - 1..]).unwrap();
        })
    };
    let (code, out) = run(&g);
    done.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("still changing") && out.contains("growing.txt"),
        "{out}"
    );
    assert!(pulled(&g).is_empty(), "{out}");
    assert_eq!(fs::read(&path).unwrap(), full);

    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    let recs = pulled(&g);
    assert_eq!(recs.len(), 1, "{out}");
    assert_eq!(
        recs[0]["sha256"],
        sha_hex(&full),
        "the whole file, not a prefix"
    );
}

#[test]
fn a_done_marker_gates_the_file_and_goes_with_it() {
    let g = gateway("stable_seconds = 600\ndone_marker = \".done\"\nafter = \"delete\"");
    put(&g, STOPPED, "stopped.txt");
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: 0 file(s)"), "no marker yet: {out}");
    fs::write(server(&g).join("stopped.txt.done"), b"").unwrap();
    // With a marker there is no stability wait (600 s would show as a hung test).
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: 1 file(s)"), "{out}");
    assert!(names_in(&server(&g)).is_empty(), "file and marker removed");
}

#[test]
fn a_crash_between_commit_and_remembering_does_not_ingest_twice() {
    let g = gateway("stable_seconds = 0\nafter = \"keep\"");
    put(&g, STOPPED, "stopped.txt");
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    // Forget the remembered row, as if the process died right after the ingest commit.
    let db = g.path().join("var/ledger.sqlite");
    let st = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("DELETE FROM remote_files;")
        .status()
        .unwrap();
    assert!(st.success());
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    assert_eq!(pulled(&g).len(), 1, "recognised as already received: {out}");
    // And it is remembered again: the next run does not even download it.
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: 0 file(s)"), "{out}");
}

#[test]
fn server_down_retries_then_dead_letters_then_recovers() {
    let g = gateway("stable_seconds = 0\nafter = \"delete\"\nattempts = 2");
    assert_eq!(job_view(&g)["state"], "new");
    // The "server" (folder) does not exist.
    let (code, out) = run(&g);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("failed") && out.contains("does not exist"),
        "{out}"
    );
    let v = job_view(&g);
    assert_eq!(v["state"], "retrying", "{v}");
    assert_eq!(v["failures"], 1);
    let (code, out) = run(&g);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("dead-letter"), "{out}");
    assert!(
        out.contains("alert.dead-letter"),
        "alerted in the log: {out}"
    );
    let v = job_view(&g);
    assert_eq!(v["state"], "dead-lettered", "{v}");
    assert_eq!(v["runs"][0]["outcome"], "dead-letter");
    assert!(v["next"].is_string(), "still scheduled: {v}");

    put(&g, STOPPED, "stopped.txt");
    let (code, out) = run(&g);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: 1 file(s)"), "{out}");
    let v = job_view(&g);
    assert_eq!(v["state"], "ok", "{v}");
    assert_eq!(v["runs"][0]["files"], 1);
    assert_eq!(
        v["runs"][0]["bytes"],
        fs::read(util::fixture(STOPPED)).unwrap().len()
    );
}

#[test]
fn the_daemon_runs_jobs_on_schedule_dead_letters_and_recovers() {
    // Every second; a failed run is retried after 1 s; two failures dead-letter the job.
    let mut g = gateway_with(
        "* * * * * *",
        "stable_seconds = 0\nafter = \"delete\"\nattempts = 2\nretry_initial_seconds = 1\nretry_max_seconds = 1",
    );
    g.start();
    assert!(
        g.wait_for(Duration::from_secs(60), || job_view(&g)["state"]
            == "dead-lettered"),
        "{}",
        g.diag()
    );
    put(&g, STOPPED, "stopped.txt");
    assert!(
        g.wait_for(Duration::from_secs(60), || names_in(&server(&g)).is_empty()),
        "{}",
        g.diag()
    );
    assert!(
        g.wait_for(Duration::from_secs(30), || job_view(&g)["state"] == "ok"),
        "{}",
        g.diag()
    );
    g.stop();
    assert_eq!(pulled(&g).len(), 1);
    let log = fs::read_to_string(g.path().join("serve.log")).unwrap();
    assert!(log.contains("alert.dead-letter"), "{log}");
    assert!(log.contains("pull.recovered"), "{log}");
    // Runs never overlap: every recorded run finished before the next started.
    let v = {
        let out = g
            .cmd(&["jobs", "--json", "--runs", "1000"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["runs"].clone()
    };
    let runs = v.as_array().unwrap();
    assert!(runs.len() >= 3, "{v}");
    for w in runs.windows(2) {
        // newest first: the older run ended no later than the newer one started
        let newer_start = w[0]["started_at"].as_str().unwrap();
        let older_end = w[1]["finished_at"].as_str().unwrap();
        assert!(older_end <= newer_start, "{v}");
    }
}

#[test]
fn pull_configuration_errors_name_file_field_and_fix() {
    let g = gateway(
        "after = \"move\"\ntimezone = \"Europe/Stockolm\"\n\n[[pull]]\nname = \"t\"\n\
         endpoint = { type = \"local\", path = \"x\", host = \"h\" }\nschedule = \"61 * * * *\"\n\
         after = \"keep\"\nmove_to = \"y\"\npattern = \"a/b\"",
    );
    let out = g.cmd(&["check"]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "pull[0].after: \"move\" needs the folder",
        "pull[0].timezone: unknown time zone `Europe/Stockolm`",
        "pull[1].name: another [[pull]] in this file is also named `t`",
        "pull[1].endpoint.host: unknown field `host`",
        "pull[1].schedule: `61 * * * *` is not a cron schedule",
        "pull[1].move_to: `move_to` is only used when `after` = \"move\"",
        "pull[1].pattern:",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(text.contains("demo-bank.toml:"), "{text}");
    // Pulling from a folder sluss writes itself would take its own output back in.
    for (path, what) in [
        (
            "var/bank-outbox",
            "the delivery folder of partner `demo-bank`",
        ),
        ("var/download/demo", "data_dir"),
        ("var/spool/files", "data_dir"),
    ] {
        let g = Gateway::new();
        let job = g.path().join("jobs.d/demo-bank.toml");
        let mut text = fs::read_to_string(&job).unwrap();
        text.push_str(&format!(
            "\n[[pull]]\nname = \"t\"\nendpoint = {{ type = \"local\", path = \"{path}\" }}\n\
             schedule = \"* * * * *\"\nafter = \"keep\"\n"
        ));
        fs::write(&job, text).unwrap();
        let out = g.cmd(&["check"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path}: {text}");
        assert!(
            text.contains("pull[0].endpoint.path") && text.contains(what),
            "{path}: {text}"
        );
    }
    // A folder of its own inside data_dir is fine.
    let g = Gateway::new();
    let job = g.path().join("jobs.d/demo-bank.toml");
    let mut text = fs::read_to_string(&job).unwrap();
    text.push_str(
        "\n[[pull]]\nname = \"t\"\nendpoint = { type = \"local\", path = \"var/bank-inbox\" }\n\
         schedule = \"* * * * *\"\nafter = \"keep\"\n",
    );
    fs::write(&job, text).unwrap();
    let out = g.cmd(&["check"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A typo in a pull table is an error too.
    let g = gateway("after = \"keep\"\nstabel_seconds = 3");
    let out = g.cmd(&["check"]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("stabel_seconds"), "{text}");
}

#[test]
fn a_slow_partner_does_not_hold_up_another() {
    // demo-bank's job sits in a ten-minute stability wait; demo's job must still run.
    let mut g = gateway_with("* * * * * *", "stable_seconds = 600\nafter = \"delete\"");
    put(&g, STOPPED, "waiting.txt");
    let demo = g.path().join("jobs.d/demo.toml");
    let mut text = fs::read_to_string(&demo).unwrap();
    text.push_str(
        "\n[[pull]]\nname = \"erp\"\nendpoint = { type = \"local\", path = \"erp-server\" }\n\
         schedule = \"* * * * * *\"\njitter_seconds = 0\nstable_seconds = 0\n\
         after = \"delete\"\nafter_refused = \"delete\"\n",
    );
    fs::write(&demo, text).unwrap();
    let erp = g.path().join("erp-server");
    fs::create_dir_all(&erp).unwrap();
    g.start();
    // Let demo-bank's run start its wait first.
    assert!(
        g.wait_for(Duration::from_secs(30), || fs::read_to_string(
            g.path().join("serve.log")
        )
        .unwrap_or_default()
        .contains("pull demo-bank/t started")),
        "{}",
        g.diag()
    );
    fs::write(
        erp.join("order.txt"),
        fs::read(util::fixture(STOPPED)).unwrap(),
    )
    .unwrap();
    assert!(
        g.wait_for(Duration::from_secs(60), || names_in(&erp).is_empty()),
        "{}",
        g.diag()
    );
    // The slow job is still waiting (its file untouched); kill rather than wait for it.
    assert!(server(&g).join("waiting.txt").exists());
    g.kill9();
    let taken: Vec<_> = g
        .ledger_json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] == "pull:erp")
        .cloned()
        .collect();
    assert_eq!(taken.len(), 1);
}
