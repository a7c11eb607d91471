//! LB (Leverantörsbetalningar): payment orders to Bankgirot and the returns Bankgirot sends
//! back (spec §2, §2.1). Payment orders get the full structural check: sections, record
//! codes, lengths, counts and totals, check digits. Returns are only classified by their
//! report code and routed by their TK11 sender. Reads records; never changes them.

use super::{
    Kind, Line, Problems, RecordChecker, Routing, bankgiro, check_record_shape, latin1, quoted,
};

/// Positions 19–40 of TK11. Ö is 0xD6 in ISO-8859-1; some producers write a plain O.
const OPENING_TEXTS: [&[u8]; 2] = [b"LEVERANT\xD6RSBETALNINGAR", b"LEVERANTORSBETALNINGAR"];

/// Record codes of an LB payment order (spec §2 table; all seen in the fixtures except 54
/// and 65, which are PlusGiro records from the published layout).
const KNOWN_CODES: [&[u8]; 14] = [
    b"11", b"12", b"13", b"14", b"15", b"16", b"17", b"25", b"26", b"27", b"40", b"54", b"65",
    b"29",
];

/// Decide between a payment order and a return from the TK11 opening record, position 47.
pub(crate) fn for_opening(first: &Line, problems: &mut Problems) -> Box<dyn RecordChecker> {
    let code = first.at(47);
    let kind = match code {
        b' ' => return Box::new(LbOrder::default()),
        b'1' => Kind::LbPaymentSpec,
        b'2' => Kind::LbMonitoring,
        b'5' => Kind::LbCancellations,
        b'6' => Kind::LbRejected,
        b'7' => Kind::LbStopped,
        other => {
            problems.at(
                first.no,
                format!(
                    "TK11 position 47 is {}: neither blank (a payment order) nor a known return report code (1, 2, 5, 6, 7)",
                    quoted(&[other])
                ),
            );
            Kind::Unknown
        }
    };
    Box::new(LbReturn {
        kind,
        code: char::from(code).to_string(),
    })
}

/// Positions 3–12 of a TK14–17 hold either a bankgiro number or a Bankgirot payment number
/// (a 6-character number for account deposits and money orders, announced by TK26/27/40).
/// Bankgiro numbers have 7–8 significant digits, so a field starting `0000` cannot be one:
/// that is a payment number. Everything else must be a valid bankgiro number.
fn is_payment_number(field: &[u8]) -> bool {
    field.starts_with(b"0000")
}

#[derive(Default)]
struct LbOrder {
    section: Option<Section>,
}

struct Section {
    opened_at: u64,
    sender: Vec<u8>,
    count: u64,
    /// Net amount in öre: payments add, deductions and credit invoices subtract.
    total: i128,
}

impl LbOrder {
    fn opening(&mut self, line: &Line, routing: &mut Routing, problems: &mut Problems) {
        if let Some(open) = self.section.take() {
            problems.at(
                line.no,
                format!(
                    "TK11 opens a new section, but the section opened on line {} has no TK29 total record",
                    open.opened_at
                ),
            );
        }
        let sender = line.field(3, 12).to_vec();
        match bankgiro::canonical(&latin1(&sender)) {
            Some(bg) if sender.len() == bankgiro::FIELD_WIDTH => routing.add_bankgiro(bg),
            _ => problems.at(
                line.no,
                format!(
                    "TK11 sender bankgiro number {} (positions 3–12) is not a valid bankgiro number: 10 digits, zero-padded, valid check digit",
                    quoted(&sender)
                ),
            ),
        }
        let text = line.field(19, 40);
        if !OPENING_TEXTS.contains(&text) {
            problems.at(
                line.no,
                format!(
                    "TK11 positions 19–40 are {}, expected LEVERANTÖRSBETALNINGAR",
                    quoted(text)
                ),
            );
        }
        let date = line.field(41, 46);
        if !(date == b"GENAST" || date.iter().all(|b| *b == b' ') || is_date(date)) {
            problems.at(
                line.no,
                format!(
                    "TK11 payment date {} (positions 41–46) is not YYMMDD, GENAST or blank",
                    quoted(date)
                ),
            );
        }
        let currency = line.field(60, 62);
        if !(currency == b"SEK" || currency.iter().all(|b| *b == b' ')) {
            problems.at(
                line.no,
                format!(
                    "TK11 currency {} (positions 60–62) is not SEK or blank",
                    quoted(currency)
                ),
            );
        }
        self.section = Some(Section {
            opened_at: line.no,
            sender,
            count: 0,
            total: 0,
        });
    }

    fn payment(&mut self, line: &Line, sign: i128, problems: &mut Problems) {
        let code_bytes = line.field(1, 2);
        let code = || latin1(code_bytes);
        if code_bytes != b"54" {
            let payee = line.field(3, 12);
            let is_bankgiro = bankgiro::field_is_valid(payee);
            if !(is_payment_number(payee) || is_bankgiro) {
                let code = code();
                problems.at(
                    line.no,
                    format!(
                        "TK{code} payee {} (positions 3–12) is neither a valid bankgiro number nor a payment number (0000 + 6 characters)",
                        quoted(payee)
                    ),
                );
            }
        }
        let amount = line.field(38, 49);
        let value = parse_digits(amount, 12);
        if value.is_none() {
            let code = code();
            problems.at(
                line.no,
                format!(
                    "TK{code} amount {} (positions 38–49) is not 12 digits of öre",
                    quoted(amount)
                ),
            );
        }
        if let Some(s) = self.section.as_mut() {
            s.count += 1;
            s.total += sign * i128::from(value.unwrap_or(0));
        }
    }

    fn total(&mut self, line: &Line, problems: &mut Problems) {
        let Some(section) = self.section.take() else {
            return;
        };
        let sender = line.field(3, 12);
        if sender != section.sender.as_slice() {
            problems.at(
                line.no,
                format!(
                    "TK29 sender {} differs from the sender {} of its TK11 on line {}",
                    quoted(sender),
                    quoted(&section.sender),
                    section.opened_at
                ),
            );
        }
        match parse_digits(line.field(13, 20), 8) {
            Some(n) if n == section.count => {}
            Some(n) => problems.at(
                line.no,
                format!(
                    "TK29 says {n} payment records, the section from line {} has {}",
                    section.opened_at, section.count
                ),
            ),
            None => problems.at(
                line.no,
                format!(
                    "TK29 record count {} (positions 13–20) is not 8 digits",
                    quoted(line.field(13, 20))
                ),
            ),
        }
        let sign: i128 = match line.at(33) {
            b'-' => -1,
            b' ' => 1,
            other => {
                problems.at(
                    line.no,
                    format!(
                        "TK29 position 33 is {}, expected blank or '-'",
                        quoted(&[other])
                    ),
                );
                1
            }
        };
        match parse_digits(line.field(21, 32), 12) {
            Some(t) if sign * i128::from(t) == section.total => {}
            Some(t) => problems.at(
                line.no,
                format!(
                    "TK29 total {} öre does not match the section's records from line {}: {} öre (payments minus deductions and credit invoices)",
                    sign * i128::from(t),
                    section.opened_at,
                    section.total
                ),
            ),
            None => problems.at(
                line.no,
                format!(
                    "TK29 total amount {} (positions 21–32) is not 12 digits of öre",
                    quoted(line.field(21, 32))
                ),
            ),
        }
    }
}

impl RecordChecker for LbOrder {
    fn kind(&self) -> Kind {
        Kind::LbPaymentOrder
    }
    fn strict(&self) -> bool {
        true
    }
    fn record(&mut self, line: &Line, routing: &mut Routing, problems: &mut Problems) {
        if !check_record_shape(line, problems) {
            return;
        }
        let code = line.field(1, 2);
        if code == b"28" {
            problems.at(
                line.no,
                "TK28 is a section seal of the retired Nexus method; it is not supported: seal the whole file (TK00/TK99) instead",
            );
            return;
        }
        if !KNOWN_CODES.contains(&code) {
            problems.at(
                line.no,
                format!(
                    "unknown record code TK{} for an LB payment order (known: 11 12 13 14 15 16 17 25 26 27 40 54 65 29)",
                    latin1(code)
                ),
            );
            return;
        }
        if code == b"11" {
            self.opening(line, routing, problems);
            return;
        }
        if self.section.is_none() {
            problems.at(
                line.no,
                format!(
                    "record TK{} is outside a section: each section opens with TK11 and closes with TK29",
                    latin1(code)
                ),
            );
            return;
        }
        match code {
            b"14" | b"54" => self.payment(line, 1, problems),
            b"15" | b"16" | b"17" => self.payment(line, -1, problems),
            b"29" => self.total(line, problems),
            _ => {}
        }
    }
    fn finish(&mut self, last_line: u64, _: &mut Routing, problems: &mut Problems) {
        if let Some(open) = self.section.take() {
            problems.at(
                last_line,
                format!(
                    "the file ends inside the section opened on line {}: it has no TK29 total record",
                    open.opened_at
                ),
            );
        }
    }
}

/// An LB return: classified by report code, routed by every TK11 sender in it.
struct LbReturn {
    kind: Kind,
    code: String,
}

impl RecordChecker for LbReturn {
    fn kind(&self) -> Kind {
        self.kind
    }
    fn strict(&self) -> bool {
        false
    }
    fn record(&mut self, line: &Line, routing: &mut Routing, problems: &mut Problems) {
        if !line.starts_with(b"11") {
            return;
        }
        routing.report_code.get_or_insert_with(|| self.code.clone());
        let sender = line.field(3, 12);
        match bankgiro::canonical(&latin1(sender)) {
            Some(bg) if sender.len() == bankgiro::FIELD_WIDTH => routing.add_bankgiro(bg),
            _ => problems.at(
                line.no,
                format!(
                    "TK11 sender {} (positions 3–12) is not a valid bankgiro number, so this return cannot be routed by bankgiro number",
                    quoted(sender)
                ),
            ),
        }
    }
    fn finish(&mut self, _: u64, _: &mut Routing, _: &mut Problems) {}
}

/// Exactly `width` ASCII digits as a number.
pub(crate) fn parse_digits(field: &[u8], width: usize) -> Option<u64> {
    if field.len() != width || width > 19 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 19 digits fit a u64; no allocation, this runs for every amount.
    Some(
        field
            .iter()
            .fold(0u64, |n, &b| n * 10 + u64::from(b - b'0')),
    )
}

/// YYMMDD with a plausible month and day.
fn is_date(field: &[u8]) -> bool {
    let Some(_) = parse_digits(field, 6) else {
        return false;
    };
    let month = (field[2] - b'0') * 10 + (field[3] - b'0');
    let day = (field[4] - b'0') * 10 + (field[5] - b'0');
    (1..=12).contains(&month) && (1..=31).contains(&day)
}
