//! Recognising payment files: what kind a file is (LB payment order or return, BgMax,
//! Autogiro, ISO 20022), whether it carries a Bankgirot seal, the routing keys inside it
//! (bankgiro numbers, customer number, accounts, message ids), and structural problems
//! (record lengths, sections, counts and totals, check digits).
//!
//! This module only reads. It must never change or copy payment bytes, never panic on any
//! input, and never allocate without bound: files are read as a stream of lines of which at
//! most [`MAX_KEPT_LINE`] bytes are kept, XML through a budgeted reader with capped depth
//! and text, and at most [`MAX_PROBLEMS`] problems are kept. Bytes are ISO-8859-1 and are
//! counted as bytes; nothing is ever decoded as UTF-8 on the record path.
//!
//! The classification rules and the structural checks are documented in `docs/formats.md`.

pub mod bankgiro;

mod autogiro;
mod bgmax;
mod iso20022;
mod lb;

use serde::Serialize;
use std::io::{self, BufRead, Read};

/// Longest part of a line that is kept for inspection. Records are 80 bytes; anything past
/// this is counted (for the length check) but not stored, so a file without line breaks
/// cannot make us hold it in memory.
pub const MAX_KEPT_LINE: usize = 256;

/// Problems kept per file; one more says how many were left out. A hundred is more than an
/// operator reads and enough to see the pattern of a systematically broken file.
pub const MAX_PROBLEMS: usize = 100;

/// Non-record lines (title, blank lines) tolerated before the first record when deciding
/// what a file is. Documentation examples carry a title and a few blank lines; a real file
/// has none. More than this and the file is not a record file at all.
const MAX_PREAMBLE_LINES: usize = 8;

/// Leading white space (and BOM) looked at before deciding "XML or records".
const MAX_LEADING_WHITESPACE: usize = 4096;

const UTF8_BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Every record of LB, BgMax, Autogiro and the seal is exactly this long (spec §2, §7).
pub const RECORD_LEN: u64 = 80;

/// What a file is. Serialised as [`Kind::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    LbPaymentOrder,
    LbPaymentSpec,
    LbMonitoring,
    LbCancellations,
    LbRejected,
    LbStopped,
    Bgmax,
    AutogiroOrder,
    AutogiroReturn,
    Pain001,
    Pain002,
    Camt053,
    Camt054,
    Unknown,
}

const ALL_KINDS: [Kind; 14] = [
    Kind::LbPaymentOrder,
    Kind::LbPaymentSpec,
    Kind::LbMonitoring,
    Kind::LbCancellations,
    Kind::LbRejected,
    Kind::LbStopped,
    Kind::Bgmax,
    Kind::AutogiroOrder,
    Kind::AutogiroReturn,
    Kind::Pain001,
    Kind::Pain002,
    Kind::Camt053,
    Kind::Camt054,
    Kind::Unknown,
];

impl Kind {
    /// The stable name used in config files, the ledger, logs and `sluss inspect`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::LbPaymentOrder => "lb-payment-order",
            Kind::LbPaymentSpec => "lb-payment-spec",
            Kind::LbMonitoring => "lb-monitoring",
            Kind::LbCancellations => "lb-cancellations",
            Kind::LbRejected => "lb-rejected",
            Kind::LbStopped => "lb-stopped",
            Kind::Bgmax => "bgmax",
            Kind::AutogiroOrder => "autogiro-order",
            Kind::AutogiroReturn => "autogiro-return",
            Kind::Pain001 => "pain.001",
            Kind::Pain002 => "pain.002",
            Kind::Camt053 => "camt.053",
            Kind::Camt054 => "camt.054",
            Kind::Unknown => "unknown",
        }
    }

    /// A payment order: sent by a customer to move money (customer → bank). These are the
    /// files that must be sealed and whose sender must belong to the customer.
    pub fn is_payment_order(&self) -> bool {
        matches!(
            self,
            Kind::LbPaymentOrder | Kind::AutogiroOrder | Kind::Pain001
        )
    }

    /// Every kind, in a stable order (for help texts and config validation).
    pub fn all() -> &'static [Kind] {
        &ALL_KINDS
    }

    /// The kind named by [`Kind::as_str`], if any.
    pub fn parse(text: &str) -> Option<Kind> {
        ALL_KINDS.iter().copied().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The keys that say whom a file belongs to. Empty fields are left out when serialised.
#[derive(Serialize, Default, Clone, Debug, PartialEq)]
pub struct Routing {
    /// Bankgiro numbers (senders of LB, receivers in BgMax, payees in Autogiro, `BGNR` ids in
    /// ISO 20022): 10 digits zero-padded, valid check digit, deduplicated, in file order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bankgiro: Vec<String>,
    /// Bankgirot customer number (6 digits), from Autogiro opening records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_number: Option<String>,
    /// LB returns: the report code at TK11 position 47 (`1`, `2`, `5`, `6`, `7`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_code: Option<String>,
    /// IBANs / account ids from ISO 20022, upper case, no spaces, deduplicated, in file order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub account: Vec<String>,
    /// ISO 20022 `GrpHdr/MsgId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// ISO 20022 pain.002 `OrgnlGrpInfAndSts/OrgnlMsgId`: the pain.001 this answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_message_id: Option<String>,
    /// BgMax TK01 position 45: `T` test (true), `P` production (false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<bool>,
}

impl Routing {
    pub(crate) fn add_bankgiro(&mut self, canonical: String) {
        if !self.bankgiro.contains(&canonical) && self.bankgiro.len() < MAX_ROUTING_KEYS {
            self.bankgiro.push(canonical);
        }
    }
    pub(crate) fn add_account(&mut self, account: String) {
        if !self.account.contains(&account) && self.account.len() < MAX_ROUTING_KEYS {
            self.account.push(account);
        }
    }
}

/// Distinct bankgiro numbers / accounts kept per file. A file for more senders than this is
/// not one customer's file; the cap keeps memory bounded and dedup cheap.
pub const MAX_ROUTING_KEYS: usize = 1000;

/// One structural finding, with the 1-based line it concerns (XML: none).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Problem {
    pub line: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(n) => write!(f, "line {n}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// What [`recognise`] found out about a file.
#[derive(Serialize, Clone, Debug)]
pub struct Recognition {
    pub kind: Kind,
    /// The first line is a TK00 `00yymmddHMAC` seal record (verification is `seal`'s job).
    pub sealed: bool,
    pub routing: Routing,
    pub problems: Vec<Problem>,
    /// Lines in the file (for XML: lines too).
    pub records: u64,
}

/// Collects problems up to [`MAX_PROBLEMS`] and counts the rest.
#[derive(Default)]
pub(crate) struct Problems {
    list: Vec<Problem>,
    dropped: u64,
}

impl Problems {
    pub(crate) fn at(&mut self, line: u64, message: impl Into<String>) {
        self.push(Some(line), message);
    }
    pub(crate) fn file(&mut self, message: impl Into<String>) {
        self.push(None, message);
    }
    fn push(&mut self, line: Option<u64>, message: impl Into<String>) {
        if self.list.len() < MAX_PROBLEMS {
            self.list.push(Problem {
                line,
                message: message.into(),
            });
        } else {
            self.dropped += 1;
        }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty() && self.dropped == 0
    }
    fn finish(mut self) -> Vec<Problem> {
        if self.dropped > 0 {
            self.list.push(Problem {
                line: None,
                message: format!("… and {} more problems", self.dropped),
            });
        }
        self.list
    }
}

/// One line of a record file: its number, its full length without the line break, and at
/// most [`MAX_KEPT_LINE`] of its bytes.
pub(crate) struct Line {
    pub no: u64,
    pub len: u64,
    pub bytes: Vec<u8>,
}

impl Line {
    /// Record code: the first two bytes, if both are ASCII digits.
    pub(crate) fn code(&self) -> Option<&[u8]> {
        match self.bytes.get(..2) {
            Some(c) if c.iter().all(u8::is_ascii_digit) => Some(c),
            _ => None,
        }
    }
    pub(crate) fn is_blank(&self) -> bool {
        self.len == 0
            || (self.len as usize <= MAX_KEPT_LINE
                && self.bytes.iter().all(|b| *b == b' ' || *b == b'\t'))
    }
    /// Positions `from..=to` (1-based, inclusive), clipped to what the line has.
    pub(crate) fn field(&self, from: usize, to: usize) -> &[u8] {
        let start = (from - 1).min(self.bytes.len());
        let end = to.min(self.bytes.len());
        &self.bytes[start..end]
    }
    /// Byte at a 1-based position, blank if the line is shorter.
    pub(crate) fn at(&self, pos: usize) -> u8 {
        self.bytes.get(pos - 1).copied().unwrap_or(b' ')
    }
    pub(crate) fn starts_with(&self, prefix: &[u8]) -> bool {
        self.bytes.starts_with(prefix)
    }
}

/// ISO-8859-1 bytes as text: each byte is the code point of the same number. Control
/// characters are escaped so that messages stay on one line.
pub(crate) fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Quoted, escaped text for messages: `"00XXXXXXXX"`.
pub(crate) fn quoted(bytes: &[u8]) -> String {
    format!("{:?}", latin1(bytes))
}

/// Reads lines with bounded memory. Strips `\n` and one `\r` before it.
struct Lines<R> {
    reader: R,
    next_no: u64,
    /// The current line, reused: one allocation for the whole file rather than one per
    /// record (a 1 GiB payment order has 13 million records).
    line: Line,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R) -> Self {
        Lines {
            reader,
            next_no: 1,
            line: Line {
                no: 0,
                len: 0,
                bytes: Vec::with_capacity(MAX_KEPT_LINE),
            },
        }
    }

    fn next_line(&mut self) -> io::Result<Option<&Line>> {
        let bytes = &mut self.line.bytes;
        bytes.clear();
        let mut len: u64 = 0;
        let mut last: Option<u8> = None;
        let mut saw_any = false;
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                if !saw_any {
                    return Ok(None);
                }
                break;
            }
            saw_any = true;
            let (chunk, found_newline) = match memchr::memchr(b'\n', buf) {
                Some(i) => (&buf[..i], true),
                None => (buf, false),
            };
            let room = MAX_KEPT_LINE.saturating_sub(bytes.len());
            bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            len += chunk.len() as u64;
            if let Some(&b) = chunk.last() {
                last = Some(b);
            }
            let used = chunk.len() + usize::from(found_newline);
            self.reader.consume(used);
            if found_newline {
                break;
            }
        }
        if last == Some(b'\r') {
            len -= 1;
            if bytes.len() as u64 > len {
                bytes.truncate(len as usize);
            }
        }
        self.line.no = self.next_no;
        self.line.len = len;
        self.next_no += 1;
        Ok(Some(&self.line))
    }
}

/// What the record-file checkers share: each kind has one, fed line by line.
pub(crate) trait RecordChecker {
    /// The kind this checker decided on (may differ from its start, e.g. an unknown code).
    fn kind(&self) -> Kind;
    /// Whether the full structural checks apply (LB payment orders, BgMax).
    fn strict(&self) -> bool;
    /// A non-empty line after the first record (the first record is fed too).
    fn record(&mut self, line: &Line, routing: &mut Routing, problems: &mut Problems);
    /// End of the records (before any TK99 seal record).
    fn finish(&mut self, last_line: u64, routing: &mut Routing, problems: &mut Problems);
}

/// The common record checks of strict kinds: 80 bytes, a two-digit code. Returns false if
/// the line is not a record at all (the caller then skips it).
pub(crate) fn check_record_shape(line: &Line, problems: &mut Problems) -> bool {
    if line.code().is_none() {
        problems.at(
            line.no,
            "not a record: a record is 80 characters starting with a two-digit code",
        );
        return false;
    }
    if line.len != RECORD_LEN {
        let mut msg = format!(
            "record TK{} is {} characters; every record must be exactly {RECORD_LEN} (blank-padded, line break not counted)",
            latin1(line.field(1, 2)),
            line.len
        );
        if looks_utf8(&line.bytes) {
            msg.push_str(
                "; the line looks UTF-8 encoded, but Bankgirot files are ISO-8859-1 (convert in the ERP before sealing)",
            );
        }
        problems.at(line.no, msg);
    }
    true
}

/// True if the bytes contain a UTF-8 multi-byte sequence (and are valid UTF-8): a sign that
/// an ERP wrote UTF-8 where ISO-8859-1 is required.
fn looks_utf8(bytes: &[u8]) -> bool {
    !bytes.is_ascii() && std::str::from_utf8(bytes).is_ok()
}

/// Recognise a file from a stream: one pass, bounded memory.
pub fn recognise<R: BufRead>(mut reader: R) -> io::Result<Recognition> {
    // Peek past leading white space (and a UTF-8 BOM) to decide XML vs records, then put
    // what was read back in front of the stream.
    let mut prefix = Vec::new();
    let mut is_xml = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        let mut used = 0;
        let mut decided = false;
        for &b in buf {
            if b == b'<' {
                is_xml = true;
                decided = true;
                break;
            }
            let bom = prefix.len() < UTF8_BOM.len()
                && prefix == UTF8_BOM[..prefix.len()]
                && b == UTF8_BOM[prefix.len()];
            if (b.is_ascii_whitespace() || bom) && prefix.len() < MAX_LEADING_WHITESPACE {
                prefix.push(b);
                used += 1;
            } else {
                decided = true;
                break;
            }
        }
        reader.consume(used);
        if decided {
            break;
        }
    }
    let stream = io::Cursor::new(prefix).chain(reader);
    if is_xml {
        iso20022::recognise(stream)
    } else {
        recognise_records(stream)
    }
}

/// Recognise a file held in memory. Never fails: reading a slice cannot.
pub fn recognise_bytes(data: &[u8]) -> Recognition {
    recognise(data).unwrap_or_else(|e| Recognition {
        kind: Kind::Unknown,
        sealed: false,
        routing: Routing::default(),
        problems: vec![Problem {
            line: None,
            message: format!("could not read the file: {e}"),
        }],
        records: 0,
    })
}

/// A TK00 delivery-seal opening record (spec §1.2): `00` + date + `HMAC`.
fn is_seal_opening(line: &Line) -> bool {
    line.starts_with(b"00") && line.field(9, 12) == b"HMAC"
}

/// Decide the checker from the first record (spec §2–4).
fn checker_for(first: &Line, problems: &mut Problems) -> Box<dyn RecordChecker> {
    if first.starts_with(b"11") {
        return lb::for_opening(first, problems);
    }
    if first.starts_with(b"01BGMAX") {
        return Box::new(bgmax::BgMax::default());
    }
    if first.starts_with(b"01AUTOGIRO") {
        return Box::new(autogiro::Autogiro::new(Kind::AutogiroReturn));
    }
    if first.starts_with(b"01")
        && first.field(3, 10).len() == 8
        && first.field(3, 10).iter().all(u8::is_ascii_digit)
        && first.field(11, 18) == b"AUTOGIRO"
    {
        return Box::new(autogiro::Autogiro::new(Kind::AutogiroOrder));
    }
    if first.len == RECORD_LEN {
        problems.at(
            first.no,
            format!(
                "record TK{} is not the opening of a known Bankgirot file (LB opens with TK11, BgMax with 01BGMAX, Autogiro with a TK01 carrying AUTOGIRO)",
                latin1(first.field(1, 2))
            ),
        );
    }
    Box::new(UnknownRecords)
}

/// Files that are not recognised: lines are counted, nothing is checked.
struct UnknownRecords;

impl RecordChecker for UnknownRecords {
    fn kind(&self) -> Kind {
        Kind::Unknown
    }
    fn strict(&self) -> bool {
        false
    }
    fn record(&mut self, _: &Line, _: &mut Routing, _: &mut Problems) {}
    fn finish(&mut self, _: u64, _: &mut Routing, _: &mut Problems) {}
}

fn recognise_records<R: BufRead>(reader: R) -> io::Result<Recognition> {
    let mut lines = Lines::new(reader);
    let mut problems = Problems::default();
    let mut routing = Routing::default();
    let mut sealed = false;
    let mut seal_opening_len = 0;
    // Lines before the first record: (line number, was it blank).
    let mut preamble: Vec<(u64, bool)> = Vec::new();
    let mut checker: Option<Box<dyn RecordChecker>> = None;
    let mut last_no = 0;
    // Blank lines seen since the last record: fine at the end of a file, a problem inside.
    let mut pending_blank: Vec<u64> = Vec::new();
    let mut pending_blank_more = 0u64;
    let mut seal_closing: Option<u64> = None;
    let mut after_tk99_reported = false;

    while let Some(line) = lines.next_line()? {
        last_no = line.no;
        if line.no == 1 && is_seal_opening(line) {
            sealed = true;
            seal_opening_len = line.len;
            continue;
        }
        let Some(chk) = checker.as_mut() else {
            // Still looking for the first record.
            if line.code().is_some() {
                let mut first_problems = Problems::default();
                let c = checker_for(line, &mut first_problems);
                if c.kind() != Kind::Unknown || !first_problems.is_empty() {
                    for (no, blank) in preamble.drain(..) {
                        if blank {
                            problems.at(no, "empty line before the first record");
                        } else {
                            problems.at(
                                no,
                                "not a record: a record is 80 characters starting with a two-digit code",
                            );
                        }
                    }
                }
                for p in first_problems.finish() {
                    problems.push(p.line, p.message);
                }
                let c = checker.insert(c);
                if c.kind() != Kind::Unknown
                    && sealed
                    && c.strict()
                    && seal_opening_len != RECORD_LEN
                {
                    problems.at(
                        1,
                        format!("TK00 seal record is {seal_opening_len} characters; it must be exactly {RECORD_LEN}"),
                    );
                }
                c.record(line, &mut routing, &mut problems);
            } else if preamble.len() < MAX_PREAMBLE_LINES {
                preamble.push((line.no, line.is_blank()));
            } else {
                // Not a record file: count the lines and nothing else.
                checker = Some(Box::new(UnknownRecords));
            }
            continue;
        };
        if line.is_blank() {
            if pending_blank.len() < MAX_PROBLEMS {
                pending_blank.push(line.no);
            } else {
                pending_blank_more += 1;
            }
            continue;
        }
        if let Some(tk99) = seal_closing {
            if !after_tk99_reported {
                problems.at(
                    line.no,
                    format!("data after the TK99 seal record on line {tk99}; a sealed file ends with TK99"),
                );
                after_tk99_reported = true;
            }
            continue;
        }
        if chk.strict() {
            for no in pending_blank.drain(..) {
                problems.at(
                    no,
                    "empty line between records; records follow each other without gaps",
                );
            }
            if pending_blank_more > 0 {
                problems.at(
                    line.no,
                    format!("{pending_blank_more} more empty lines before this record"),
                );
            }
        }
        pending_blank.clear();
        pending_blank_more = 0;
        if sealed && line.starts_with(b"99") {
            seal_closing = Some(line.no);
            chk.finish(line.no, &mut routing, &mut problems);
            if chk.strict() && line.len != RECORD_LEN {
                problems.at(
                    line.no,
                    format!(
                        "TK99 seal record is {} characters; it must be exactly {RECORD_LEN}",
                        line.len
                    ),
                );
            }
            continue;
        }
        chk.record(line, &mut routing, &mut problems);
    }

    let kind = match checker.as_mut() {
        Some(chk) => {
            if seal_closing.is_none() {
                chk.finish(last_no, &mut routing, &mut problems);
                if sealed && chk.kind() != Kind::Unknown {
                    problems.file(
                        "the file opens with a TK00 seal record but has no TK99 closing record; the seal cannot be checked",
                    );
                }
            }
            chk.kind()
        }
        None => Kind::Unknown,
    };
    Ok(Recognition {
        kind,
        sealed,
        routing,
        problems: problems.finish(),
        records: last_no,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for k in Kind::all() {
            assert_eq!(Kind::parse(k.as_str()), Some(*k));
            assert_eq!(
                serde_json::to_string(k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        assert_eq!(Kind::parse("lb"), None);
    }

    #[test]
    fn long_line_is_counted_not_kept() {
        let mut data = vec![b'1'; 10_000];
        data.extend_from_slice(b"\r\nx\n");
        let mut lines = Lines::new(&data[..]);
        let l = lines.next_line().unwrap().unwrap();
        assert_eq!((l.no, l.len, l.bytes.len()), (1, 10_000, MAX_KEPT_LINE));
        let l = lines.next_line().unwrap().unwrap();
        assert_eq!((l.no, l.len, l.bytes.as_slice()), (2, 1, &b"x"[..]));
        assert!(lines.next_line().unwrap().is_none());
    }

    #[test]
    fn problems_are_capped_with_a_count() {
        let mut p = Problems::default();
        for i in 0..150 {
            p.at(i, "x");
        }
        let v = p.finish();
        assert_eq!(v.len(), MAX_PROBLEMS + 1);
        assert_eq!(v[MAX_PROBLEMS].message, "… and 50 more problems");
    }
}
