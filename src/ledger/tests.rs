//! Unit tests against real SQLite files in temporary directories.

use super::*;

use rusqlite::Connection;
use tempfile::TempDir;

fn fresh() -> (TempDir, PathBuf, Ledger) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LEDGER_FILE_NAME);
    let ledger = Ledger::open(&path).expect("open fresh ledger");
    (dir, path, ledger)
}

fn hex64(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

struct Spec {
    partner: &'static str,
    spool: String,
    sha: String,
    payload: String,
    msgid: Option<&'static str>,
    seal: &'static str,
}

fn spec(spool: &str, sha: char, payload: char) -> Spec {
    Spec {
        partner: "acme",
        spool: spool.to_string(),
        sha: hex64(sha),
        payload: hex64(payload),
        msgid: None,
        seal: "valid",
    }
}

fn record(tx: &mut Tx<'_>, s: &Spec) -> Result<FileId, LedgerError> {
    tx.record_received(&NewFile {
        partner: s.partner,
        source: "cli",
        original_name: "lb.txt",
        size: 1234,
        sha256: &s.sha,
        payload_sha256: &s.payload,
        kind: "lb-payment-order",
        routing_json: r#"{"bankgiro":"0009912346"}"#,
        message_id: s.msgid,
        seal_verdict: s.seal,
        seal_kvv: Some("A1B2C3"),
        spool_path: &s.spool,
        body: None,
    })
}

/// Records a file and accepts it (received → queued).
fn accepted(ledger: &mut Ledger, s: &Spec) -> FileId {
    ledger
        .with_tx(|tx| {
            let id = record(tx, s)?;
            tx.transition(id, State::Queued, "file.queued", "checks passed", None)?;
            Ok(id)
        })
        .expect("accept file")
}

fn quarantined(ledger: &mut Ledger, s: &Spec, why: &str) -> FileId {
    ledger
        .with_tx(|tx| {
            let id = record(tx, s)?;
            tx.transition(id, State::Quarantined, "file.quarantined", why, None)?;
            Ok(id)
        })
        .expect("quarantine file")
}

fn raw(path: &Path) -> Connection {
    Connection::open(path).expect("raw connection")
}

// ---- opening, pragmas, migrations -------------------------------------------------------

#[test]
fn fresh_file_is_migrated_and_reopens_with_its_data() {
    let (_dir, path, mut ledger) = fresh();
    let id = accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    drop(ledger);
    let version: i64 = raw(&path)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::MIGRATIONS.len() as i64);

    let ledger = Ledger::open(&path).expect("reopen");
    let f = ledger.get(id).unwrap().expect("file survives reopen");
    assert_eq!(f.state, State::Queued);
    assert_eq!(f.routing["bankgiro"], "0009912346");
    assert_eq!(f.size, 1234);
    assert!(f.accepted_at.is_some());
    assert_eq!(ledger.last_head(), &ledger.head().unwrap());
    assert_eq!(ledger.last_head().seq, 2);
}

#[test]
fn wal_synchronous_full_foreign_keys_and_busy_timeout_are_set() {
    let (_dir, _path, ledger) = fresh();
    let c = &ledger.conn;
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
    let fk: i64 = c
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap();
    let busy: i64 = c
        .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "synchronous must be FULL (2)");
    assert_eq!(fk, 1);
    assert_eq!(busy, DEFAULT_BUSY_TIMEOUT.as_millis() as i64);
}

#[test]
fn a_ledger_newer_than_the_binary_is_refused() {
    let (_dir, path, ledger) = fresh();
    drop(ledger);
    raw(&path)
        .execute_batch("PRAGMA user_version = 999")
        .unwrap();
    let err = Ledger::open(&path).unwrap_err();
    assert!(
        matches!(err, LedgerError::TooNew { found: 999, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("never downgrade"), "{err}");
}

#[test]
fn a_garbage_file_is_reported_damaged_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LEDGER_FILE_NAME);
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = Ledger::open(&path).unwrap_err();
    assert!(matches!(err, LedgerError::Damaged { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("is damaged"), "{msg}");
    assert!(
        msg.contains("restore it from backup; do not delete it"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "the damaged file must be left as found"
    );
}

#[test]
fn a_ledger_locked_by_another_process_gives_a_locked_error() {
    let (_dir, path, mut ledger) = fresh();
    let other = raw(&path);
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let short = Options {
        busy_timeout: Duration::from_millis(100),
    };
    let err = Ledger::open_with(&path, &short).unwrap_err();
    assert!(
        matches!(err, LedgerError::Locked { waited_ms: 100, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("is locked by another process"),
        "{err}"
    );

    // An already open ledger meets the lock at its next write.
    ledger.busy_timeout = Duration::from_millis(100);
    ledger.conn.busy_timeout(ledger.busy_timeout).unwrap();
    let err = ledger
        .with_tx(|tx| record(tx, &spec("in/1", 'a', 'b')))
        .unwrap_err();
    assert!(matches!(err, LedgerError::Locked { .. }), "{err:?}");

    other.execute_batch("COMMIT").unwrap();
    Ledger::open_with(&path, &short).expect("opens once the lock is gone");
}

#[test]
fn a_missing_directory_gives_an_unwritable_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join(LEDGER_FILE_NAME);
    let err = Ledger::open(&path).unwrap_err();
    assert!(matches!(err, LedgerError::Unwritable { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");

    // A directory path where the file should be.
    let err = Ledger::open(dir.path()).unwrap_err();
    assert!(matches!(err, LedgerError::Unwritable { .. }), "{err:?}");
}

// ---- states and history -------------------------------------------------------------------

#[test]
fn illegal_file_transitions_are_refused_and_leave_no_trace() {
    let (_dir, _path, mut ledger) = fresh();
    let id = ledger
        .with_tx(|tx| record(tx, &spec("in/1", 'a', 'b')))
        .unwrap();
    let head = ledger.head().unwrap();
    for to in [
        State::Delivered,
        State::Delivering,
        State::InDoubt,
        State::Held,
        State::Received,
    ] {
        let err = ledger
            .with_tx(|tx| tx.transition(id, to, "file.x", "", None))
            .unwrap_err();
        assert!(
            matches!(err, LedgerError::IllegalTransition { id: i, from: State::Received, to: t } if i == id && t == to),
            "{to}: {err:?}"
        );
    }
    assert_eq!(ledger.head().unwrap(), head);
    assert_eq!(ledger.history(id).unwrap().len(), 1);
    assert_eq!(ledger.get(id).unwrap().unwrap().state, State::Received);
}

#[test]
fn quarantine_can_only_be_left_for_queued_by_four_eyes() {
    let (_dir, _path, mut ledger) = fresh();
    let id = quarantined(&mut ledger, &spec("in/1", 'a', 'b'), "wrong-key");
    let err = ledger
        .with_tx(|tx| tx.transition(id, State::Queued, "file.queued", "", Some("alice")))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NeedsRelease { .. }), "{err:?}");

    // Not through a detour via held either.
    ledger.hold(id, "alice", "looking at it").unwrap();
    assert_eq!(ledger.get(id).unwrap().unwrap().state, State::Held);
    let err = ledger.retry(id, "alice", "looks fine").unwrap_err();
    assert!(matches!(err, LedgerError::NotAccepted { .. }), "{err:?}");
    assert_eq!(
        ledger.release_quarantined(id, "alice", "ok").unwrap(),
        ReleaseOutcome::NeedsSecondApproval
    );
    assert_eq!(
        ledger.release_quarantined(id, "bob", "ok").unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(ledger.get(id).unwrap().unwrap().state, State::Queued);
}

#[test]
fn operator_only_transitions_need_an_operator() {
    let (_dir, _path, mut ledger) = fresh();
    let id = accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    ledger
        .with_tx(|tx| tx.transition(id, State::Held, "file.held", "no route", None))
        .unwrap();
    let err = ledger
        .with_tx(|tx| tx.transition(id, State::Queued, "file.queued", "", None))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NeedsOperator { .. }), "{err:?}");
    let err = ledger.retry(id, "  ", "x").unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::InvalidInput {
                field: "operator",
                ..
            }
        ),
        "{err:?}"
    );
    let err = ledger.retry(id, "alice", "").unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::InvalidInput {
                field: "reason",
                ..
            }
        ),
        "{err:?}"
    );
    ledger.retry(id, "alice", "route added").unwrap();
    let f = ledger.get(id).unwrap().unwrap();
    assert_eq!(f.state, State::Queued);
    let last = ledger.history(id).unwrap().pop().unwrap();
    assert_eq!(last.event, "operator.retry");
    assert_eq!(last.operator.as_deref(), Some("alice"));
    assert_eq!(last.reason, "route added");
}

#[test]
fn a_file_that_failed_before_acceptance_cannot_be_retried() {
    let (_dir, _path, mut ledger) = fresh();
    let id = ledger
        .with_tx(|tx| {
            let id = record(tx, &spec("in/1", 'a', 'b'))?;
            tx.transition(id, State::Failed, "file.failed", "unreadable", None)?;
            Ok(id)
        })
        .unwrap();
    let err = ledger.retry(id, "alice", "try again").unwrap_err();
    assert!(matches!(err, LedgerError::NotAccepted { .. }), "{err:?}");
}

#[test]
fn every_change_writes_one_history_row_and_the_file_follows_its_delivery() {
    let (_dir, _path, mut ledger) = fresh();
    let id = accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    let d = ledger
        .with_tx(|tx| tx.add_delivery(id, "bank", "sftp://bank/in", "LB.txt", ".LB.txt.part"))
        .unwrap();
    ledger
        .with_tx(|tx| {
            tx.delivery_transition(
                d,
                State::Delivering,
                "delivery.delivering",
                "attempt 1",
                None,
            )
        })
        .unwrap();
    assert_eq!(ledger.get(id).unwrap().unwrap().state, State::Delivering);
    ledger
        .with_tx(|tx| {
            tx.delivery_transition(d, State::Delivered, "delivery.delivered", "renamed", None)
        })
        .unwrap();
    let f = ledger.get(id).unwrap().unwrap();
    assert_eq!(f.state, State::Delivered);

    let h = ledger.history(id).unwrap();
    let summary: Vec<(Option<DeliveryId>, Option<State>, State, &str)> = h
        .iter()
        .map(|r| (r.delivery_id, r.from_state, r.to_state, r.event.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (None, None, State::Received, "file.received"),
            (None, Some(State::Received), State::Queued, "file.queued"),
            (Some(d), None, State::Queued, "delivery.created"),
            (
                Some(d),
                Some(State::Queued),
                State::Delivering,
                "delivery.delivering"
            ),
            (
                None,
                Some(State::Queued),
                State::Delivering,
                "file.delivering"
            ),
            (
                Some(d),
                Some(State::Delivering),
                State::Delivered,
                "delivery.delivered"
            ),
            (
                None,
                Some(State::Delivering),
                State::Delivered,
                "file.delivered"
            ),
        ]
    );
    let seqs: Vec<i64> = h.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    let del = ledger.get_delivery(d).unwrap().unwrap();
    assert_eq!(del.attempts, 1);
    assert_eq!(del.next_attempt_at, None);

    // Delivered is final.
    let err = ledger
        .with_tx(|tx| {
            tx.delivery_transition(d, State::Queued, "delivery.queued", "", Some("alice"))
        })
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::IllegalDeliveryTransition { .. }),
        "{err:?}"
    );
    // And a file with deliveries is changed only through them.
    let err = ledger
        .with_tx(|tx| tx.transition(id, State::Held, "file.held", "", Some("alice")))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::FollowsDeliveries { .. }),
        "{err:?}"
    );
}

#[test]
fn deliveries_are_unique_per_destination_and_only_for_queued_files() {
    let (_dir, _path, mut ledger) = fresh();
    let id = accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    ledger
        .with_tx(|tx| tx.add_delivery(id, "bank", "e", "F", "T"))
        .unwrap();
    let err = ledger
        .with_tx(|tx| tx.add_delivery(id, "bank", "e", "F", "T"))
        .unwrap_err();
    assert!(matches!(err, LedgerError::DeliveryExists { .. }), "{err:?}");
    let q = quarantined(&mut ledger, &spec("in/2", 'c', 'd'), "bad seal");
    let err = ledger
        .with_tx(|tx| tx.add_delivery(q, "bank", "e", "F", "T"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::NotQueued {
                state: State::Quarantined,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn in_doubt_is_resent_only_on_an_operators_word() {
    let (_dir, _path, mut ledger) = fresh();
    let id = accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    let d = ledger
        .with_tx(|tx| {
            let d = tx.add_delivery(id, "bank", "e", "F", "T")?;
            tx.delivery_transition(d, State::Delivering, "delivery.delivering", "", None)?;
            tx.delivery_transition(
                d,
                State::InDoubt,
                "delivery.in-doubt",
                "connection lost after write",
                None,
            )?;
            Ok(d)
        })
        .unwrap();
    assert_eq!(ledger.get(id).unwrap().unwrap().state, State::InDoubt);
    assert_eq!(ledger.unfinished_deliveries().unwrap().len(), 1);
    let err = ledger
        .with_tx(|tx| tx.delivery_transition(d, State::Queued, "delivery.queued", "", None))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NeedsOperator { .. }), "{err:?}");
    let err = ledger
        .with_tx(|tx| tx.delivery_schedule_retry(d, "2030-01-01T00:00:00Z", "x"))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::IllegalDeliveryTransition { .. }),
        "{err:?}"
    );

    ledger
        .retry(id, "alice", "bank confirmed it has no such file")
        .unwrap();
    let del = ledger.get_delivery(d).unwrap().unwrap();
    assert_eq!(del.state, State::Queued);
    assert_eq!(ledger.get(id).unwrap().unwrap().state, State::Queued);
    let rows = ledger.history(id).unwrap();
    let retry_row = rows.iter().find(|r| r.event == "operator.retry").unwrap();
    assert_eq!(retry_row.operator.as_deref(), Some("alice"));
    assert_eq!(retry_row.delivery_id, Some(d));
}

#[test]
fn resolve_delivered_closes_an_in_doubt_delivery() {
    let (_dir, _path, mut ledger) = fresh();
    let id = accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    ledger
        .with_tx(|tx| {
            let d = tx.add_delivery(id, "bank", "e", "F", "T")?;
            tx.delivery_transition(d, State::Delivering, "delivery.delivering", "", None)?;
            tx.delivery_transition(d, State::InDoubt, "delivery.in-doubt", "timeout", None)
        })
        .unwrap();
    let err = ledger.hold(id, "", "x").unwrap_err();
    assert!(matches!(err, LedgerError::InvalidInput { .. }), "{err:?}");
    ledger
        .resolve_delivered(id, "bob", "bank shows it in their inbox")
        .unwrap();
    assert_eq!(ledger.get(id).unwrap().unwrap().state, State::Delivered);
    assert!(ledger.unfinished_deliveries().unwrap().is_empty());
    let err = ledger.resolve_delivered(id, "bob", "again").unwrap_err();
    assert!(
        matches!(err, LedgerError::IllegalTransition { .. }),
        "{err:?}"
    );
}

#[test]
fn hold_is_refused_while_a_delivery_is_in_flight() {
    let (_dir, _path, mut ledger) = fresh();
    let id = accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    let d = ledger
        .with_tx(|tx| {
            let d = tx.add_delivery(id, "bank", "e", "F", "T")?;
            tx.delivery_transition(d, State::Delivering, "delivery.delivering", "", None)?;
            Ok(d)
        })
        .unwrap();
    let err = ledger.hold(id, "alice", "stop").unwrap_err();
    assert!(
        matches!(err, LedgerError::DeliveryInFlight { delivery, .. } if delivery == d),
        "{err:?}"
    );
    ledger
        .with_tx(|tx| tx.delivery_schedule_retry(d, "2030-01-01T00:00:00+01:00", "connect refused"))
        .unwrap();
    ledger.hold(id, "alice", "stop").unwrap();
    assert_eq!(ledger.get_delivery(d).unwrap().unwrap().state, State::Held);
    assert_eq!(ledger.get(id).unwrap().unwrap().state, State::Held);
}

/// A destination's worker sees only its own due deliveries, however large another
/// destination's backlog is (a shared LIMIT would hide them behind it).
#[test]
fn due_deliveries_to_one_destination_are_not_hidden_by_another_backlog() {
    let (_dir, _path, mut ledger) = fresh();
    let mut big = Vec::new();
    for i in 0..5 {
        let mut s = spec(&format!("in/{i}"), 'a', 'b');
        s.sha = format!("{:064x}", i);
        let id = accepted(&mut ledger, &s);
        big.push(
            ledger
                .with_tx(|tx| tx.add_delivery(id, "busy-bank", "e", "F", "T"))
                .unwrap(),
        );
    }
    let mut s = spec("in/late", 'c', 'd');
    s.sha = format!("{:064x}", 99);
    let late = accepted(&mut ledger, &s);
    let mine = ledger
        .with_tx(|tx| tx.add_delivery(late, "quiet-bank", "e", "F", "T"))
        .unwrap();
    let soon = "2999-01-01T00:00:00Z";
    // Oldest first across all destinations: the quiet bank's one is not in the first 3.
    assert!(
        ledger
            .due_deliveries(soon, 3)
            .unwrap()
            .iter()
            .all(|d| d.destination == "busy-bank")
    );
    let quiet = ledger.due_deliveries_to("quiet-bank", soon, 3).unwrap();
    assert_eq!(quiet.iter().map(|d| d.id).collect::<Vec<_>>(), vec![mine]);
    let busy = ledger.due_deliveries_to("busy-bank", soon, 3).unwrap();
    assert_eq!(
        busy.iter().map(|d| d.id).collect::<Vec<_>>(),
        big[..3].to_vec()
    );
    assert!(
        ledger
            .due_deliveries_to("quiet-bank", "2000-01-01T00:00:00Z", 3)
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    assert!(
        ledger
            .due_deliveries_to("quiet-bank", "yesterday", 3)
            .is_err()
    );
}

#[test]
fn retries_are_scheduled_and_become_due() {
    let (_dir, _path, mut ledger) = fresh();
    let id = accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    let d = ledger
        .with_tx(|tx| tx.add_delivery(id, "bank", "e", "F", "T"))
        .unwrap();
    let soon = "2999-01-01T00:00:00Z";
    assert_eq!(ledger.due_deliveries(soon, 10).unwrap().len(), 1);
    let attempts = ledger
        .with_tx(|tx| {
            tx.delivery_transition(d, State::Delivering, "delivery.delivering", "", None)?;
            tx.delivery_schedule_retry(d, "2500-06-01T12:00:00+02:00", "connection refused")
        })
        .unwrap();
    assert_eq!(attempts, 1);
    let del = ledger.get_delivery(d).unwrap().unwrap();
    assert_eq!(del.state, State::Queued);
    assert_eq!(
        del.next_attempt_at.as_deref(),
        Some("2500-06-01T10:00:00.000Z")
    );
    assert_eq!(del.last_error.as_deref(), Some("connection refused"));
    assert!(
        ledger
            .due_deliveries("2500-06-01T09:59:59Z", 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ledger.due_deliveries("2500-06-01T10:00:00Z", 10).unwrap()[0].id,
        d
    );
    let err = ledger.due_deliveries("yesterday", 10).unwrap_err();
    assert!(
        matches!(err, LedgerError::InvalidInput { field: "now", .. }),
        "{err:?}"
    );
}

#[test]
fn file_state_is_derived_from_all_its_deliveries() {
    use State::*;
    assert_eq!(derive_file_state(&[]), None);
    assert_eq!(derive_file_state(&[Delivered, Delivered]), Some(Delivered));
    assert_eq!(derive_file_state(&[Delivered, Queued]), Some(Queued));
    assert_eq!(derive_file_state(&[Delivering, Queued]), Some(Delivering));
    assert_eq!(derive_file_state(&[Delivered, Failed]), Some(Failed));
    assert_eq!(derive_file_state(&[Failed, Queued]), Some(Queued));
    assert_eq!(derive_file_state(&[Held, Delivering]), Some(Held));
    assert_eq!(derive_file_state(&[Held, InDoubt]), Some(InDoubt));
}

#[test]
fn spool_path_is_recorded_once() {
    let (_dir, _path, mut ledger) = fresh();
    let id = ledger
        .with_tx(|tx| record(tx, &spec("in/1", 'a', 'b')))
        .unwrap();
    let err = ledger
        .with_tx(|tx| record(tx, &spec("in/1", 'c', 'd')))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::AlreadyRecorded { id: i, .. } if i == id),
        "{err:?}"
    );
    assert_eq!(ledger.find_by_spool_path("in/1").unwrap().unwrap().id, id);
}

#[test]
fn bad_input_is_refused_with_the_field_named() {
    let (_dir, _path, mut ledger) = fresh();
    let mut s = spec("in/1", 'a', 'b');
    s.sha = "abc".into();
    let err = ledger.with_tx(|tx| record(tx, &s)).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::InvalidInput {
                field: "sha256",
                ..
            }
        ),
        "{err:?}"
    );
    let id = ledger
        .with_tx(|tx| record(tx, &spec("in/2", 'a', 'b')))
        .unwrap();
    let err = ledger
        .with_tx(|tx| tx.transition(id, State::Queued, "Queued!", "", None))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::InvalidInput { field: "event", .. }),
        "{err:?}"
    );
}

#[test]
fn an_error_inside_with_tx_rolls_everything_back() {
    let (_dir, _path, mut ledger) = fresh();
    let head = ledger.head().unwrap();
    let err = ledger
        .with_tx(|tx| {
            let id = record(tx, &spec("in/1", 'a', 'b'))?;
            tx.transition(id, State::Queued, "file.queued", "", None)?;
            tx.transition(id, State::Delivered, "file.delivered", "", None)
        })
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::IllegalTransition { .. }),
        "{err:?}"
    );
    assert!(ledger.list(&ListFilter::default()).unwrap().is_empty());
    assert_eq!(ledger.head().unwrap(), head);
    assert_eq!(ledger.last_head(), &head);
}

/// BEGIN/COMMIT/ROLLBACK and the per-file statements come from the statement cache: a
/// transaction that failed (after statements ran and were returned to the cache) must leave
/// nothing behind, and the very same cached statements must work in the next transaction.
#[test]
fn cached_statements_roll_back_and_are_reused_after_a_failed_transaction() {
    let (_dir, path, mut ledger) = fresh();
    let first = accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    let head = ledger.head().unwrap();
    for round in 0..3 {
        // Same statements as `accepted`, then a typed failure after they ran.
        let err = ledger
            .with_tx(|tx| {
                let mut s = spec(&format!("in/fail{round}"), 'c', 'd');
                s.sha = format!("{:064x}", 100 + round);
                let id = record(tx, &s)?;
                tx.transition(id, State::Queued, "file.queued", "", None)?;
                tx.add_delivery(id, "bank", "local:/x", "f.dat", ".f.dat.sluss-tmp")?;
                // An SQLite-level failure too: the spool path is already recorded.
                record(tx, &spec("in/1", 'e', 'f'))
            })
            .unwrap_err();
        assert!(
            matches!(err, LedgerError::AlreadyRecorded { id, .. } if id == first),
            "{err:?}"
        );
        assert_eq!(ledger.head().unwrap(), head, "round {round}");
        assert_eq!(ledger.last_head(), &head);
        assert_eq!(ledger.list(&ListFilter::default()).unwrap().len(), 1);
        // Not left inside a transaction: another connection can write.
        raw(&path)
            .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .expect("the ledger's write lock was released");
    }
    // The cached statements still work, and the chain continues where it was.
    let second = accepted(&mut ledger, &spec("in/2", 'c', 'd'));
    assert_eq!(second, first + 1);
    assert_eq!(ledger.head().unwrap().seq, head.seq + 2);
    assert!(
        ledger
            .verify_audit(Some(&head.to_string()))
            .unwrap()
            .is_intact()
    );
}

/// A panic inside the closure (a bug in a caller) rolls the transaction back while
/// unwinding, so the next caller of a recovered (poisoned) lock finds a clean ledger.
#[test]
fn a_panic_inside_with_tx_rolls_back() {
    let (_dir, _path, mut ledger) = fresh();
    let head = ledger.head().unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = ledger.with_tx(|tx| -> Result<(), LedgerError> {
            record(tx, &spec("in/1", 'a', 'b'))?;
            panic!("a caller's bug");
        });
    }));
    assert!(caught.is_err());
    assert!(ledger.list(&ListFilter::default()).unwrap().is_empty());
    assert_eq!(ledger.head().unwrap(), head);
    let id = accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    assert_eq!(ledger.get(id).unwrap().unwrap().state, State::Queued);
    assert!(ledger.verify_audit(None).unwrap().is_intact());
}

/// A transaction that SQLite cannot start (another process holds the write lock) is
/// reported as locked and leaves no half-open transaction: the next one works.
#[test]
fn a_refused_begin_leaves_the_connection_usable() {
    let (_dir, path, mut ledger) = fresh();
    ledger.busy_timeout = Duration::from_millis(50);
    ledger.conn.busy_timeout(ledger.busy_timeout).unwrap();
    let other = raw(&path);
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = ledger
        .with_tx(|tx| record(tx, &spec("in/1", 'a', 'b')))
        .unwrap_err();
    assert!(matches!(err, LedgerError::Locked { .. }), "{err:?}");
    other.execute_batch("ROLLBACK").unwrap();
    accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    assert_eq!(ledger.head().unwrap().seq, 2);
}

#[test]
fn batches_commit_together_and_report_the_new_head() {
    let (_dir, _path, mut ledger) = fresh();
    let (ids, head) = ledger
        .with_tx_head(|tx| {
            let mut ids = Vec::new();
            for i in 0..20 {
                let mut s = spec(&format!("in/{i}"), 'a', 'b');
                s.sha = format!("{:064x}", i);
                let id = record(tx, &s)?;
                tx.transition(id, State::Queued, "file.queued", "", None)?;
                ids.push(id);
            }
            Ok(ids)
        })
        .unwrap();
    assert_eq!(ids.len(), 20);
    assert_eq!(head, ledger.head().unwrap());
    assert_eq!(head.seq, 40);
    let listed = ledger
        .list(&ListFilter {
            partner: Some("acme".into()),
            state: Some(State::Queued),
            limit: Some(5),
        })
        .unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[0].id, *ids.last().unwrap(), "newest first");
    assert!(
        ledger
            .list(&ListFilter {
                partner: Some("other".into()),
                ..ListFilter::default()
            })
            .unwrap()
            .is_empty()
    );
}

// ---- audit chain -------------------------------------------------------------------------

/// Five files through a few states: 12 history rows.
fn busy_ledger() -> (TempDir, PathBuf, Ledger) {
    let (dir, path, mut ledger) = fresh();
    for i in 0..4 {
        let mut s = spec(&format!("in/{i}"), 'a', 'b');
        s.sha = format!("{:064x}", i);
        accepted(&mut ledger, &s);
    }
    quarantined(&mut ledger, &spec("in/q", 'c', 'd'), "wrong-key");
    ledger
        .release_quarantined(5, "alice", "customer confirmed the key")
        .unwrap();
    ledger.release_quarantined(5, "bob", "agreed").unwrap();
    assert_eq!(ledger.head().unwrap().seq, 13);
    (dir, path, ledger)
}

#[test]
fn a_clean_chain_verifies_and_contains_every_logged_head() {
    let (_dir, _path, mut ledger) = fresh();
    let empty = ledger.verify_audit(None).unwrap();
    assert!(empty.is_intact());
    assert_eq!(empty.head, AuditHead::genesis());
    accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    let early = ledger.last_head().to_string();
    accepted(&mut ledger, &spec("in/2", 'c', 'd'));
    let report = ledger.verify_audit(None).unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.rows, 4);
    assert_eq!(report.head, ledger.head().unwrap());
    assert!(ledger.verify_audit(Some(&early)).unwrap().is_intact());
    assert!(
        ledger
            .verify_audit(Some(&ledger.head().unwrap().to_string()))
            .unwrap()
            .is_intact()
    );
    let err = ledger.verify_audit(Some("42")).unwrap_err();
    assert!(matches!(err, LedgerError::BadHead { .. }), "{err:?}");
}

#[test]
fn an_edited_row_is_found_at_its_seq() {
    let (_dir, path, ledger) = busy_ledger();
    raw(&path)
        .execute_batch(
            "DROP TRIGGER history_no_update; UPDATE history SET reason = 'nothing to see' WHERE seq = 7",
        )
        .unwrap();
    let report = ledger.verify_audit(None).unwrap();
    assert_eq!(report.problems, vec![AuditProblem::EditedRow { seq: 7 }]);
    assert!(
        report.to_string().contains("history row 7 was edited"),
        "{report}"
    );
}

#[test]
fn the_history_table_refuses_casual_edits() {
    let (_dir, path, _ledger) = busy_ledger();
    let err = raw(&path)
        .execute_batch("UPDATE history SET reason = 'x' WHERE seq = 1")
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = raw(&path)
        .execute_batch("DELETE FROM approvals")
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

#[test]
fn a_deleted_middle_row_is_found() {
    let (_dir, path, ledger) = busy_ledger();
    raw(&path)
        .execute_batch("DROP TRIGGER history_no_delete; DELETE FROM history WHERE seq = 5")
        .unwrap();
    let report = ledger.verify_audit(None).unwrap();
    assert_eq!(
        report.problems,
        vec![AuditProblem::MissingRows { after: 4, next: 6 }]
    );
}

#[test]
fn a_renumbered_chain_after_deletion_breaks_the_link() {
    let (_dir, path, ledger) = busy_ledger();
    raw(&path)
        .execute_batch(
            "DROP TRIGGER history_no_delete; DROP TRIGGER history_no_update; \
             DELETE FROM history WHERE seq = 5; UPDATE history SET seq = seq - 1 WHERE seq > 5",
        )
        .unwrap();
    let report = ledger.verify_audit(None).unwrap();
    assert!(!report.is_intact());
    assert!(
        report
            .problems
            .contains(&AuditProblem::BrokenLink { seq: 5 }),
        "{report}"
    );
}

#[test]
fn truncating_the_newest_rows_is_caught_only_with_the_old_head() {
    let (_dir, path, mut ledger) = busy_ledger();
    let old_head = ledger.head().unwrap().to_string();
    raw(&path)
        .execute_batch("DROP TRIGGER history_no_delete; DELETE FROM history WHERE seq > 10")
        .unwrap();
    assert!(
        ledger.verify_audit(None).unwrap().is_intact(),
        "a clean prefix is a valid chain"
    );
    let report = ledger.verify_audit(Some(&old_head)).unwrap();
    assert_eq!(
        report.problems,
        vec![AuditProblem::Truncated {
            expected_seq: 13,
            newest_seq: 10
        }]
    );

    // New activity on top of the truncated chain reuses the seqs: now it reads as rewritten.
    accepted(&mut ledger, &spec("in/new", 'e', 'f'));
    accepted(&mut ledger, &spec("in/new2", '1', '2'));
    assert!(ledger.verify_audit(None).unwrap().is_intact());
    let report = ledger.verify_audit(Some(&old_head)).unwrap();
    assert!(
        matches!(
            report.problems.as_slice(),
            [AuditProblem::Rewritten { seq: 13, .. }]
        ),
        "{report}"
    );
}

/// seq, file_id, delivery_id, at, from_state, to_state, event, reason, operator
type RawHistoryRow = (
    i64,
    i64,
    Option<i64>,
    String,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
);

#[test]
fn a_consistently_rewritten_chain_is_caught_by_the_old_head() {
    let (_dir, path, ledger) = busy_ledger();
    let old_head = ledger.head().unwrap().to_string();
    // The attacker edits row 3 and recomputes every hash after it with the published scheme.
    let c = raw(&path);
    c.execute_batch(
        "DROP TRIGGER history_no_update; UPDATE history SET reason = 'rewritten' WHERE seq = 3",
    )
    .unwrap();
    let rows: Vec<RawHistoryRow> = {
        let mut stmt = c
            .prepare(
                "SELECT seq, file_id, delivery_id, at, from_state, to_state, event, reason, operator \
                 FROM history ORDER BY seq",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    let mut prev = GENESIS_HASH.to_string();
    for (seq, file_id, delivery_id, at, from, to, event, reason, operator) in &rows {
        let hash = audit::row_hash(
            &prev,
            &audit::ChainRow {
                seq: *seq,
                file_id: *file_id,
                delivery_id: *delivery_id,
                at,
                from_state: from.as_deref(),
                to_state: to,
                event,
                reason,
                operator: operator.as_deref(),
            },
        );
        c.execute(
            "UPDATE history SET prev_hash = ?2, hash = ?3 WHERE seq = ?1",
            params![seq, prev, hash],
        )
        .unwrap();
        prev = hash;
    }
    assert!(
        ledger.verify_audit(None).unwrap().is_intact(),
        "the rewrite is self-consistent"
    );
    let report = ledger.verify_audit(Some(&old_head)).unwrap();
    assert!(
        matches!(
            report.problems.as_slice(),
            [AuditProblem::Rewritten { seq: 13, .. }]
        ),
        "{report}"
    );
    assert!(report.to_string().contains("rewritten"), "{report}");
}

#[test]
fn head_displays_and_parses_as_seq_colon_hash() {
    let h = AuditHead {
        seq: 42,
        hash: hex64('a'),
    };
    assert_eq!(h.to_string(), format!("42:{}", hex64('a')));
    assert_eq!(AuditHead::parse(&h.to_string().to_uppercase()).unwrap(), h);
    assert!(AuditHead::parse("42:abc").is_err());
    assert!(AuditHead::parse(&format!("-1:{}", hex64('a'))).is_err());
}

// ---- four eyes ---------------------------------------------------------------------------

#[test]
fn release_needs_two_different_operators() {
    let (_dir, _path, mut ledger) = fresh();
    let id = quarantined(&mut ledger, &spec("in/1", 'a', 'b'), "content-changed");
    assert_eq!(
        ledger
            .release_quarantined(id, "alice", "customer re-keyed")
            .unwrap(),
        ReleaseOutcome::NeedsSecondApproval
    );
    assert_eq!(ledger.get(id).unwrap().unwrap().state, State::Quarantined);
    for same in ["alice", " Alice "] {
        let err = ledger
            .release_quarantined(id, same, "me again")
            .unwrap_err();
        assert!(
            matches!(err, LedgerError::SameOperatorTwice { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("a second, different operator must approve"),
            "{err}"
        );
    }
    assert_eq!(ledger.get(id).unwrap().unwrap().state, State::Quarantined);
    assert_eq!(
        ledger
            .release_quarantined(id, "bob", "checked with customer")
            .unwrap(),
        ReleaseOutcome::Released
    );
    let f = ledger.get(id).unwrap().unwrap();
    assert_eq!(f.state, State::Queued);
    assert!(f.accepted_at.is_some());
    let approvals = ledger.approvals(id).unwrap();
    let who: Vec<&str> = approvals.iter().map(|a| a.operator.as_str()).collect();
    assert_eq!(who, ["alice", "bob"]);
    let last = ledger.history(id).unwrap().pop().unwrap();
    assert_eq!(last.event, "operator.release");
    assert_eq!(last.to_state, State::Queued);
    assert_eq!(last.operator.as_deref(), Some("bob"));
    assert!(last.reason.contains("alice and bob"), "{}", last.reason);

    // A later quarantine starts a new count: old approvals do not carry over.
    ledger
        .with_tx(|tx| {
            tx.transition(
                id,
                State::Quarantined,
                "file.quarantined",
                "recalled",
                Some("carol"),
            )
        })
        .unwrap();
    assert_eq!(
        ledger.release_quarantined(id, "alice", "again").unwrap(),
        ReleaseOutcome::NeedsSecondApproval
    );
    let err = ledger.release_quarantined(id, "received", "").unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::InvalidInput {
                field: "reason",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn release_is_refused_for_files_not_in_quarantine() {
    let (_dir, _path, mut ledger) = fresh();
    let id = accepted(&mut ledger, &spec("in/1", 'a', 'b'));
    let err = ledger.release_quarantined(id, "alice", "x").unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::IllegalTransition {
                from: State::Queued,
                ..
            }
        ),
        "{err:?}"
    );
    let err = ledger.release_quarantined(999, "alice", "x").unwrap_err();
    assert!(
        matches!(err, LedgerError::UnknownFile { id: 999 }),
        "{err:?}"
    );
}

// ---- duplicates --------------------------------------------------------------------------

#[test]
fn duplicates_by_bytes_payload_and_message_id_within_the_window() {
    let (_dir, _path, mut ledger) = fresh();
    let before = now_rfc3339();
    let mut original = spec("in/1", 'a', 'b');
    original.msgid = Some("MSG-1");
    let first = accepted(&mut ledger, &original);
    let after = "2999-01-01T00:00:00Z";

    let dup = |ledger: &mut Ledger,
               partner: &str,
               sha: char,
               payload: char,
               msg: Option<&str>,
               since: &str| {
        let (sha, payload) = (hex64(sha), hex64(payload));
        ledger
            .with_tx(|tx| tx.find_duplicate(partner, &sha, &payload, msg, since))
            .unwrap()
    };
    assert_eq!(
        dup(&mut ledger, "acme", 'a', 'x', None, &before),
        Some((first, DuplicateKind::SameBytes))
    );
    assert_eq!(
        dup(&mut ledger, "acme", 'A', 'x', None, &before),
        Some((first, DuplicateKind::SameBytes))
    );
    assert_eq!(
        dup(&mut ledger, "acme", 'z', 'b', None, &before),
        Some((first, DuplicateKind::SamePayload))
    );
    assert_eq!(
        dup(&mut ledger, "acme", 'z', 'y', Some("MSG-1"), &before),
        Some((first, DuplicateKind::SameMessageId))
    );
    assert_eq!(
        dup(&mut ledger, "acme", 'z', 'y', Some("MSG-2"), &before),
        None
    );
    // Outside the window.
    assert_eq!(
        dup(&mut ledger, "acme", 'a', 'b', Some("MSG-1"), after),
        None
    );
    // Another partner's identical file is not a duplicate of this one.
    assert_eq!(
        dup(&mut ledger, "other", 'a', 'b', Some("MSG-1"), &before),
        None
    );
    let err = ledger
        .with_tx(|tx| tx.find_duplicate("acme", &hex64('a'), &hex64('b'), None, "last week"))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::InvalidInput { field: "since", .. }),
        "{err:?}"
    );
}

/// The probes run on every ingest. SQLite re-prepares a statement from its SQL text each time
/// a bound value could change the query plan (here: the partial index on `message_id`) unless
/// the query planner is told to keep its plans (`SQLITE_DBCONFIG_ENABLE_QPSG`). Re-parsing
/// cost a sixth of the ingest transaction's CPU; this keeps it from coming back.
#[test]
fn duplicate_probes_are_prepared_once_whatever_values_they_are_given() {
    let (_dir, _path, mut ledger) = fresh();
    let mut original = spec("in/1", 'a', 'b');
    original.msgid = Some("MSG-1");
    accepted(&mut ledger, &original);
    for (i, (sha, payload)) in [('c', 'd'), ('e', 'f'), ('a', 'b'), ('1', '2')]
        .into_iter()
        .enumerate()
    {
        let msg = format!("MSG-{i}");
        ledger
            .with_tx(|tx| {
                tx.find_duplicate(
                    "acme",
                    &hex64(sha),
                    &hex64(payload),
                    Some(&msg),
                    "2000-01-01T00:00:00Z",
                )
            })
            .unwrap();
    }
    for sql in super::DUPLICATE_PROBES {
        let stmt = ledger.conn.prepare_cached(sql).unwrap();
        assert_eq!(
            stmt.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "re-prepared on new values: {sql}"
        );
    }
}

#[test]
fn a_file_quarantined_for_a_bad_seal_is_not_an_original() {
    let (_dir, _path, mut ledger) = fresh();
    let since = "2000-01-01T00:00:00Z";
    let mut bad = spec("in/bad", 'a', 'b');
    bad.seal = "wrong-key";
    bad.msgid = Some("MSG-1");
    quarantined(&mut ledger, &bad, "wrong-key");
    let found = ledger
        .with_tx(|tx| tx.find_duplicate("acme", &hex64('c'), &hex64('b'), Some("MSG-1"), since))
        .unwrap();
    assert_eq!(found, None, "the corrected re-send must get through");

    // Once the corrected file is accepted, a third copy is a duplicate of it.
    let mut fixed = spec("in/fixed", 'c', 'b');
    fixed.msgid = Some("MSG-1");
    let fixed_id = accepted(&mut ledger, &fixed);
    let found = ledger
        .with_tx(|tx| tx.find_duplicate("acme", &hex64('d'), &hex64('b'), None, since))
        .unwrap();
    assert_eq!(found, Some((fixed_id, DuplicateKind::SamePayload)));
}

// ---- runs, states ------------------------------------------------------------------------

#[test]
fn runs_are_recorded() {
    let (_dir, _path, mut ledger) = fresh();
    let run = ledger.record_run_start("pull:acme").unwrap();
    ledger.record_run_end(run, 3, 4096, "ok", None).unwrap();
    let runs = ledger.runs("pull:acme", 10).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].files, Some(3));
    assert_eq!(runs[0].bytes, Some(4096));
    assert_eq!(runs[0].outcome.as_deref(), Some("ok"));
    assert!(runs[0].finished_at.is_some());
    assert!(ledger.record_run_end(run + 1, 0, 0, "ok", None).is_err());
}

#[test]
fn state_spellings_are_stable() {
    let spelled: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        spelled,
        [
            "received",
            "quarantined",
            "queued",
            "delivering",
            "delivered",
            "in-doubt",
            "held",
            "failed"
        ]
    );
    for s in State::ALL {
        assert_eq!(State::parse(s.as_str()), Some(s));
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
    }
    assert!("In-Doubt".parse::<State>().is_err());
}

#[test]
fn timestamps_are_utc_with_milliseconds() {
    let now = now_rfc3339();
    assert_eq!(now.len(), "2026-03-01T09:30:00.123Z".len(), "{now}");
    assert!(now.ends_with('Z'));
    assert_eq!(
        normalize_rfc3339("t", "2026-03-01T10:30:00+01:00").unwrap(),
        "2026-03-01T09:30:00.000Z"
    );
}

#[test]
fn the_ledger_can_move_to_another_thread() {
    fn is_send<T: Send>(_: &T) {}
    let (_dir, path, ledger) = fresh();
    is_send(&ledger);
    let handle = std::thread::spawn(move || ledger.head().map(|h| h.seq));
    assert_eq!(handle.join().unwrap().unwrap(), 0);
    drop(path);
}

#[test]
fn a_ledger_with_a_corrupted_page_is_reported_damaged() {
    let (_dir, path, mut ledger) = fresh();
    for i in 0..50 {
        let mut s = spec(&format!("in/{i}"), 'a', 'b');
        s.sha = format!("{:064x}", i);
        accepted(&mut ledger, &s);
    }
    drop(ledger); // the last connection checkpoints the WAL into the main file
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.len() > 3 * 4096,
        "ledger too small to corrupt a middle page"
    );
    for b in &mut bytes[2 * 4096..3 * 4096] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = Ledger::open(&path).unwrap_err();
    assert!(matches!(err, LedgerError::Damaged { .. }), "{err:?}");
}

/// A small file's bytes go in with its record, in the same transaction: a rolled-back record
/// leaves no body, a body must match the recorded size and be marked as kept in the ledger,
/// and dropping it (after archiving) is what `delivered_with_bodies` stops reporting.
#[test]
fn a_small_files_body_is_committed_with_its_record_and_dropped_after_delivery() {
    let (_d, path, mut ledger) = fresh();
    let bytes = vec![7u8; 1234];
    let s = spec("ledger:aa", 'a', 'b');
    let new = |body: Option<&'static [u8]>, spool: &'static str| NewFile {
        partner: "acme",
        source: "sftp",
        original_name: "lb.txt",
        size: 1234,
        sha256: &s.sha,
        payload_sha256: &s.payload,
        kind: "lb-payment-order",
        routing_json: "{}",
        message_id: None,
        seal_verdict: "valid",
        seal_kvv: None,
        spool_path: spool,
        body,
    };
    let leaked: &'static [u8] = Box::leak(bytes.clone().into_boxed_slice());
    // Rolled back: neither record nor body.
    let r: Result<(), LedgerError> = ledger.with_tx(|tx| {
        tx.record_received(&new(Some(leaked), "ledger:rolled-back"))?;
        Err(LedgerError::InvalidInput {
            field: "test",
            detail: "roll back".into(),
        })
    });
    assert!(r.is_err());
    assert!(
        ledger
            .find_by_spool_path("ledger:rolled-back")
            .unwrap()
            .is_none()
    );
    // A body needs the ledger marker and exactly `size` bytes.
    for (body, spool) in [(leaked, "/spool/files/x"), (&leaked[..10], "ledger:short")] {
        let e = ledger
            .with_tx(|tx| tx.record_received(&new(Some(body), spool)))
            .unwrap_err();
        assert!(
            matches!(e, LedgerError::InvalidInput { field: "body", .. }),
            "{e}"
        );
    }
    let id = ledger
        .with_tx(|tx| tx.record_received(&new(Some(leaked), "ledger:kept")))
        .unwrap();
    let rec = ledger.get(id).unwrap().unwrap();
    assert!(rec.in_ledger());
    assert_eq!(ledger.body(id).unwrap().as_deref(), Some(&bytes[..]));
    assert!(ledger.delivered_with_bodies().unwrap().is_empty());
    // Delivered (the state deliveries give a file; set directly, as only the query is tested).
    raw(&path)
        .execute("UPDATE files SET state = 'delivered' WHERE id = ?1", [id])
        .unwrap();
    assert_eq!(ledger.delivered_with_bodies().unwrap(), vec![id]);
    assert!(ledger.with_tx(|tx| tx.drop_body(id)).unwrap());
    assert!(!ledger.with_tx(|tx| tx.drop_body(id)).unwrap());
    assert_eq!(ledger.body(id).unwrap(), None);
    assert!(ledger.delivered_with_bodies().unwrap().is_empty());
}
