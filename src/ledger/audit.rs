//! The tamper-evident audit trail: one global SHA-256 hash chain over every history row, in
//! `seq` order. It owns the canonical encoding of a row and the verification; it never
//! "repairs" a chain — a broken chain is evidence and stays as found.

use std::fmt;

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use super::LedgerError;

/// `prev_hash` of the first row: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separator hashed first, so a ledger row hash can never be confused with another
/// SHA-256 use in sluss (file digests, payload digests). Bump `v1` only with a new encoding.
const DOMAIN: &[u8] = b"sluss-ledger-history-v1";

/// The newest row of the chain: what the daemon logs after every change, and what an operator
/// passes back as `--head` to prove nothing after it was truncated or rewritten.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditHead {
    /// 0 for an empty chain.
    pub seq: i64,
    /// Lowercase hex; [`GENESIS_HASH`] for an empty chain.
    pub hash: String,
}

impl AuditHead {
    pub fn genesis() -> AuditHead {
        AuditHead {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
        }
    }

    /// Parses `SEQ:HEXHASH` as printed by `Display`.
    pub fn parse(text: &str) -> Result<AuditHead, LedgerError> {
        let bad = || LedgerError::BadHead {
            given: text.to_string(),
        };
        let (seq, hash) = text.trim().split_once(':').ok_or_else(bad)?;
        let seq: i64 = seq.parse().map_err(|_| bad())?;
        if seq < 0 || !is_sha256_hex(hash) {
            return Err(bad());
        }
        Ok(AuditHead {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// The fields of a history row that the hash covers, in the order they are hashed.
pub(crate) struct ChainRow<'a> {
    pub seq: i64,
    pub file_id: i64,
    pub delivery_id: Option<i64>,
    pub at: &'a str,
    pub from_state: Option<&'a str>,
    pub to_state: &'a str,
    pub event: &'a str,
    pub reason: &'a str,
    pub operator: Option<&'a str>,
}

/// `hash = SHA-256(DOMAIN ‖ f(prev_hash) ‖ f(seq) ‖ f(file_id) ‖ f(delivery_id) ‖ f(at) ‖
/// f(from_state) ‖ f(to_state) ‖ f(event) ‖ f(reason) ‖ f(operator))`, where `f(None)` is the
/// byte 0x00 and `f(Some(s))` is 0x01, the byte length of `s` as 8 bytes big-endian, then the
/// UTF-8 bytes of `s`; integers are written in decimal. Length prefixes make the encoding
/// unambiguous: no two different rows encode to the same bytes.
pub(crate) fn row_hash(prev_hash: &str, row: &ChainRow<'_>) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    let mut field = |v: Option<&str>| match v {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
    };
    field(Some(prev_hash));
    field(Some(&row.seq.to_string()));
    field(Some(&row.file_id.to_string()));
    field(row.delivery_id.map(|d| d.to_string()).as_deref());
    field(Some(row.at));
    field(row.from_state);
    field(Some(row.to_state));
    field(Some(row.event));
    field(Some(row.reason));
    field(row.operator);
    hex(&h.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One finding of [`verify`]. `Display` says what it means and what to do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum AuditProblem {
    /// The row's stored hash is not the hash of its contents: the row was edited.
    EditedRow { seq: i64 },
    /// Rows are missing between two seqs: they were deleted.
    MissingRows { after: i64, next: i64 },
    /// The row does not point to the hash of the row before it: rows were deleted, reordered
    /// or re-chained.
    BrokenLink { seq: i64 },
    /// The expected head's seq is beyond the newest row: the newest rows were deleted.
    Truncated { expected_seq: i64, newest_seq: i64 },
    /// The row at the expected head's seq carries a different hash: the chain was rewritten.
    Rewritten {
        seq: i64,
        expected: String,
        found: String,
    },
}

impl fmt::Display for AuditProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditProblem::EditedRow { seq } => write!(
                f,
                "history row {seq} was edited: its hash does not match its contents"
            ),
            AuditProblem::MissingRows { after, next } => write!(
                f,
                "history rows {}..={} were deleted (row {after} is followed by row {next})",
                after + 1,
                next - 1
            ),
            AuditProblem::BrokenLink { seq } => write!(
                f,
                "history row {seq} does not link to the row before it: rows were deleted, reordered or re-chained"
            ),
            AuditProblem::Truncated {
                expected_seq,
                newest_seq,
            } => write!(
                f,
                "the newest history rows were deleted: the expected head is row {expected_seq}, \
                 but the newest row is {newest_seq}"
            ),
            AuditProblem::Rewritten {
                seq,
                expected,
                found,
            } => write!(
                f,
                "the history was rewritten: row {seq} should carry hash {expected} but carries {found}"
            ),
        }
    }
}

/// What [`verify`] found. `problems` empty means the chain is intact (and, if a head was
/// given, still contains that head).
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditReport {
    /// History rows read.
    pub rows: u64,
    /// The newest row as stored.
    pub head: AuditHead,
    /// The head the caller expected, if any.
    pub expected: Option<AuditHead>,
    pub problems: Vec<AuditProblem>,
}

impl AuditReport {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_intact() {
            write!(
                f,
                "audit chain intact: {} rows, head {}",
                self.rows, self.head
            )?;
            if let Some(e) = &self.expected {
                write!(f, " (contains expected head {e})")?;
            }
            return Ok(());
        }
        writeln!(
            f,
            "audit chain BROKEN ({} problems, {} rows, head {}): keep this ledger file as \
             evidence and compare with your backups and logged heads",
            self.problems.len(),
            self.rows,
            self.head
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// Reads the newest row of the chain.
pub(crate) fn read_head(conn: &Connection) -> Result<AuditHead, LedgerError> {
    use rusqlite::OptionalExtension;
    // `seq` is the rowid: this reads one row from the end of the table's b-tree, not a scan.
    // Cached: every write transaction that appends reads the head first.
    let head = conn
        .prepare_cached("SELECT seq, hash FROM history ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| {
            Ok(AuditHead {
                seq: r.get(0)?,
                hash: r.get(1)?,
            })
        })
        .optional()?;
    Ok(head.unwrap_or_else(AuditHead::genesis))
}

/// Recomputes the whole chain. Each row is checked against its own stored hash and its
/// predecessor's stored hash, so one edited row is reported once, not as a cascade.
pub(crate) fn verify(
    conn: &Connection,
    expected: Option<&str>,
) -> Result<AuditReport, LedgerError> {
    let expected = expected.map(AuditHead::parse).transpose()?;
    let mut problems = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT seq, file_id, delivery_id, at, from_state, to_state, event, reason, operator, \
         prev_hash, hash FROM history ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut prev = AuditHead::genesis();
    let mut count = 0u64;
    let mut expected_found: Option<String> = None;
    while let Some(r) = rows.next()? {
        count += 1;
        let seq: i64 = r.get(0)?;
        let from_state: Option<String> = r.get(4)?;
        let to_state: String = r.get(5)?;
        let event: String = r.get(6)?;
        let reason: String = r.get(7)?;
        let operator: Option<String> = r.get(8)?;
        let at: String = r.get(3)?;
        let prev_hash: String = r.get(9)?;
        let hash: String = r.get(10)?;
        if seq != prev.seq + 1 {
            problems.push(AuditProblem::MissingRows {
                after: prev.seq,
                next: seq,
            });
        } else if prev_hash != prev.hash {
            problems.push(AuditProblem::BrokenLink { seq });
        }
        let row = ChainRow {
            seq,
            file_id: r.get(1)?,
            delivery_id: r.get(2)?,
            at: &at,
            from_state: from_state.as_deref(),
            to_state: &to_state,
            event: &event,
            reason: &reason,
            operator: operator.as_deref(),
        };
        if row_hash(&prev_hash, &row) != hash {
            problems.push(AuditProblem::EditedRow { seq });
        }
        if let Some(e) = &expected
            && e.seq == seq
        {
            expected_found = Some(hash.clone());
        }
        prev = AuditHead { seq, hash };
    }
    if let Some(e) = &expected {
        if e.seq > prev.seq {
            problems.push(AuditProblem::Truncated {
                expected_seq: e.seq,
                newest_seq: prev.seq,
            });
        } else if e.seq == 0 {
            // The genesis head is contained in every chain.
        } else {
            match expected_found {
                Some(found) if found == e.hash => {}
                Some(found) => problems.push(AuditProblem::Rewritten {
                    seq: e.seq,
                    expected: e.hash.clone(),
                    found,
                }),
                // The row is gone from inside the chain; the gap is already reported, but
                // say plainly that the expected head itself was removed.
                None => problems.push(AuditProblem::Rewritten {
                    seq: e.seq,
                    expected: e.hash.clone(),
                    found: "no row".to_string(),
                }),
            }
        }
    }
    Ok(AuditReport {
        rows: count,
        head: prev,
        expected,
        problems,
    })
}
