//! ISO 20022 XML (spec §6): pain.001, pain.002, camt.053, camt.054, recognised by the root
//! `Document` namespace and its first child, with the routing keys pulled out while
//! streaming: `GrpHdr/MsgId`, `OrgnlGrpInfAndSts/OrgnlMsgId`, the debtor account of each
//! `PmtInf` (pain.001) and the account of each statement / notification (camt).
//!
//! Memory stays bounded on any input: every XML event is read through a byte budget
//! ([`MAX_XML_EVENT`]), nesting is capped ([`MAX_XML_DEPTH`]) and kept text is capped
//! ([`MAX_XML_TEXT`]). Never changes the bytes, never resolves external entities.

use super::{Kind, Problems, Recognition, Routing, bankgiro};
use quick_xml::Reader;
use quick_xml::events::Event;
use std::io::{self, BufRead, Read};

/// Largest single XML event (tag, text run, comment). Payment XML has short texts (ids,
/// names, 140-character remittance lines); a megabyte leaves room for signature blocks.
pub const MAX_XML_EVENT: usize = 1 << 20;

/// Deepest nesting followed. ISO 20022 payment messages nest about 12 levels deep.
pub const MAX_XML_DEPTH: usize = 64;

/// Longest id kept (MsgId is at most 35 characters, IBAN 34, Othr/Id 34).
pub const MAX_XML_TEXT: usize = 256;

/// Longest element name kept on the path stack.
const MAX_NAME: usize = 64;

const NS_PREFIX: &str = "urn:iso:std:iso:20022:tech:xsd:";

/// (namespace message prefix, first child of Document, kind)
const MESSAGES: [(&str, &str, Kind); 4] = [
    ("pain.001.001.", "CstmrCdtTrfInitn", Kind::Pain001),
    ("pain.002.001.", "CstmrPmtStsRpt", Kind::Pain002),
    ("camt.053.001.", "BkToCstmrStmt", Kind::Camt053),
    ("camt.054.001.", "BkToCstmrDbtCdtNtfctn", Kind::Camt054),
];

/// A `BufRead` that refuses to hand out more than a budget of bytes (reset before every XML
/// event) and counts the lines it has passed.
struct Budgeted<R> {
    inner: R,
    left: usize,
    lines: u64,
    last: u8,
}

impl<R: BufRead> Budgeted<R> {
    fn reset(&mut self) {
        self.left = MAX_XML_EVENT;
    }
    /// Read the rest without budget, only counting lines.
    fn drain(&mut self) -> io::Result<()> {
        loop {
            let n = {
                let buf = self.inner.fill_buf()?;
                if buf.is_empty() {
                    return Ok(());
                }
                self.lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
                self.last = buf[buf.len() - 1];
                buf.len()
            };
            self.inner.consume(n);
        }
    }
    /// Lines in the file so far, counting an unterminated last line.
    fn line_count(&self) -> u64 {
        self.lines + u64::from(self.last != b'\n' && self.last != 0)
    }
}

impl<R: BufRead> Read for Budgeted<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let buf = self.fill_buf()?;
            let n = buf.len().min(out.len());
            out[..n].copy_from_slice(&buf[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Budgeted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.left == 0 {
            return Err(io::Error::other(EventTooLong));
        }
        let left = self.left;
        let buf = self.inner.fill_buf()?;
        Ok(&buf[..buf.len().min(left)])
    }
    fn consume(&mut self, n: usize) {
        // The bytes are already buffered: this fill_buf does no I/O.
        if let Ok(buf) = self.inner.fill_buf() {
            let seen = &buf[..n.min(buf.len())];
            self.lines += seen.iter().filter(|b| **b == b'\n').count() as u64;
            if let Some(&b) = seen.last() {
                self.last = b;
            }
        }
        self.left = self.left.saturating_sub(n);
        self.inner.consume(n);
    }
}

/// The budget of one XML event ran out (told apart from real I/O errors by type).
#[derive(Debug, thiserror::Error)]
#[error("an XML element, text or comment is longer than {MAX_XML_EVENT} bytes")]
struct EventTooLong;

/// What a captured text is for.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    MsgId,
    OrgnlMsgId,
    Iban,
    OthrId,
    Scheme,
}

/// Which text to capture at this path (names below the message element).
fn target_for(kind: Kind, path: &[String]) -> Option<Target> {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["GrpHdr", "MsgId"] => return Some(Target::MsgId),
        ["OrgnlGrpInfAndSts", "OrgnlMsgId"] if kind == Kind::Pain002 => {
            return Some(Target::OrgnlMsgId);
        }
        _ => {}
    }
    let account_path: &[&str] = match kind {
        Kind::Pain001 => &["PmtInf", "DbtrAcct", "Id"],
        Kind::Camt053 => &["Stmt", "Acct", "Id"],
        Kind::Camt054 => &["Ntfctn", "Acct", "Id"],
        _ => return None,
    };
    let rest = p.strip_prefix(account_path)?;
    match rest {
        ["IBAN"] => Some(Target::Iban),
        ["Othr", "Id"] => Some(Target::OthrId),
        ["Othr", "SchmeNm", "Prtry" | "Cd"] => Some(Target::Scheme),
        _ => None,
    }
}

struct State {
    kind: Option<Kind>,
    routing: Routing,
    problems: Problems,
    /// Local names from the message element down (Document and the message excluded).
    path: Vec<String>,
    depth: usize,
    capture: Option<(Target, String, bool)>,
    othr_id: Option<String>,
    othr_scheme: Option<String>,
}

pub(crate) fn recognise<R: BufRead>(reader: R) -> io::Result<Recognition> {
    let mut xml = Reader::from_reader(Budgeted {
        inner: reader,
        left: MAX_XML_EVENT,
        lines: 0,
        last: 0,
    });
    let mut st = State {
        kind: None,
        routing: Routing::default(),
        problems: Problems::default(),
        path: Vec::new(),
        depth: 0,
        capture: None,
        othr_id: None,
        othr_scheme: None,
    };
    let mut root_ns: Option<String> = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        xml.get_mut().reset();
        let line = xml.get_ref().lines + 1;
        let (event, empty) = match xml.read_event_into(&mut buf) {
            Ok(e) => {
                let empty = matches!(e, Event::Empty(_));
                (e, empty)
            }
            Err(e) => {
                if let quick_xml::Error::Io(io_err) = &e {
                    let ours = io_err
                        .get_ref()
                        .is_some_and(|inner| inner.is::<EventTooLong>());
                    if !ours {
                        return Err(io::Error::new(io_err.kind(), io_err.to_string()));
                    }
                    st.problems
                        .at(line, format!("stopped reading the XML: {io_err}"));
                } else if st.kind.is_some() || root_ns.is_some() {
                    st.problems
                        .at(line, format!("the XML is not well-formed: {e}"));
                }
                break;
            }
        };
        match event {
            Event::Start(e) | Event::Empty(e) => {
                let name: String = e.local_name().as_ref().chars().take(MAX_NAME).collect();
                if st.depth == 0 {
                    // The root element: Document, with the message namespace.
                    if name != "Document" {
                        break;
                    }
                    let xmlns = match e.name().prefix() {
                        Some(p) => format!("xmlns:{}", p.as_ref()),
                        None => "xmlns".to_string(),
                    };
                    root_ns = Some(
                        e.attributes()
                            .flatten()
                            .find(|a| a.key.as_ref() == xmlns)
                            .map(|a| a.value.into_owned())
                            .unwrap_or_default(),
                    );
                    if empty {
                        break;
                    }
                    st.depth = 1;
                    continue;
                }
                if st.depth == 1 && st.kind.is_none() {
                    let ns = root_ns.as_deref().unwrap_or("");
                    let kind = decide(ns, &name, &mut st.problems, line);
                    st.kind = Some(kind);
                    if kind == Kind::Unknown || empty {
                        break;
                    }
                    st.depth = 2;
                    continue;
                }
                if empty {
                    continue;
                }
                st.depth += 1;
                if st.depth > MAX_XML_DEPTH {
                    st.problems.at(
                        line,
                        format!(
                            "the XML nests deeper than {MAX_XML_DEPTH} levels; stopped reading"
                        ),
                    );
                    break;
                }
                st.path.push(name);
                if let Some(kind) = st.kind
                    && let Some(t) = target_for(kind, &st.path)
                {
                    st.capture = Some((t, String::new(), false));
                }
            }
            Event::Text(t) => append(&mut st.capture, &t.xml10_content()),
            Event::CData(t) => append(&mut st.capture, &t.xml10_content()),
            Event::GeneralRef(r) => {
                let text = if r.is_char_ref() {
                    r.resolve_char_ref().ok().flatten().map(String::from)
                } else {
                    match &*r {
                        "lt" => Some("<".into()),
                        "gt" => Some(">".into()),
                        "amp" => Some("&".into()),
                        "apos" => Some("'".into()),
                        "quot" => Some("\"".into()),
                        _ => None,
                    }
                };
                if let Some(text) = text {
                    append(&mut st.capture, &text);
                }
            }
            Event::End(_) => {
                if st.depth > 2 {
                    close_element(&mut st, line);
                    st.path.pop();
                }
                st.depth = st.depth.saturating_sub(1);
                // The message element closed: Document holds exactly one, nothing to add.
                if st.depth <= 1 {
                    break;
                }
            }
            Event::Eof => {
                if st.depth > 0 {
                    st.problems
                        .at(line, "the XML ends before its Document element is closed");
                }
                break;
            }
            _ => {}
        }
    }
    let budget = xml.get_mut();
    budget.drain()?;
    let records = budget.line_count();
    let kind = st.kind.unwrap_or(Kind::Unknown);
    if root_ns.is_some() && st.kind.is_none() {
        st.problems
            .file("the Document element has no message inside it");
    }
    Ok(Recognition {
        kind,
        sealed: false,
        routing: st.routing,
        problems: st.problems.finish(),
        records,
    })
}

fn append(capture: &mut Option<(Target, String, bool)>, text: &str) {
    if let Some((_, kept, too_long)) = capture {
        for c in text.chars() {
            if kept.chars().count() >= MAX_XML_TEXT {
                *too_long = true;
                break;
            }
            kept.push(c);
        }
    }
}

/// The element at the top of the path ends: store what was captured for it.
fn close_element(st: &mut State, line: u64) {
    if let Some((target, text, too_long)) = st.capture.take() {
        let text = text.trim().to_string();
        let name = st.path.last().cloned().unwrap_or_default();
        if too_long {
            st.problems.at(
                line,
                format!("{name} is longer than {MAX_XML_TEXT} characters; ignored"),
            );
        } else {
            match target {
                Target::MsgId => {
                    st.routing.message_id.get_or_insert(text);
                }
                Target::OrgnlMsgId => {
                    st.routing.original_message_id.get_or_insert(text);
                }
                Target::Iban => st.routing.add_account(normalise_account(&text)),
                Target::OthrId => st.othr_id = Some(text),
                Target::Scheme => st.othr_scheme = Some(text),
            }
        }
    }
    if st.path.last().map(String::as_str) == Some("Othr") {
        let id = st.othr_id.take();
        let scheme = st.othr_scheme.take();
        if let Some(id) = id {
            if scheme.as_deref() == Some("BGNR") {
                match bankgiro::canonical(&id) {
                    Some(bg) => st.routing.add_bankgiro(bg),
                    None => st.problems.at(
                        line,
                        format!(
                            "account id {id:?} with scheme BGNR is not a valid bankgiro number"
                        ),
                    ),
                }
            } else {
                st.routing.add_account(normalise_account(&id));
            }
        }
    }
}

fn normalise_account(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect()
}

/// The kind named by the Document namespace and its first child; they must agree.
fn decide(namespace: &str, child: &str, problems: &mut Problems, line: u64) -> Kind {
    let message = namespace.strip_prefix(NS_PREFIX);
    let by_ns = message.and_then(|m| MESSAGES.iter().find(|(p, _, _)| m.starts_with(p)));
    let by_child = MESSAGES.iter().find(|(_, c, _)| *c == child);
    match (by_ns, by_child) {
        (Some(a), Some(b)) if a.2 == b.2 => a.2,
        (Some((p, c, _)), _) => {
            problems.at(
                line,
                format!(
                    "the Document namespace {namespace:?} is {}, but its first element is {child}, not {c}",
                    p.trim_end_matches(".001.")
                ),
            );
            Kind::Unknown
        }
        (None, Some((p, c, _))) => {
            problems.at(
                line,
                format!(
                    "the first element {c} belongs to {}, but the Document namespace is {namespace:?}, not {NS_PREFIX}{p}…",
                    p.trim_end_matches(".001.")
                ),
            );
            Kind::Unknown
        }
        (None, None) => Kind::Unknown,
    }
}
