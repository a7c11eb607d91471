//! BgMax (Bankgiro Inbetalningar): incoming payments, bank → customer (spec §3). Routing by
//! the receiving bankgiro numbers of the TK05 section openings; the test mark of TK01; the
//! structure: TK01 first, sections TK05 … TK15, TK70 last with counts that match.

use super::{
    Kind, Line, Problems, RecordChecker, Routing, bankgiro, check_record_shape, latin1, lb, quoted,
};

#[derive(Default)]
pub(crate) struct BgMax {
    seen_opening: bool,
    /// Line of the open TK05, if a section is open.
    section: Option<u64>,
    payments: u64,
    deductions: u64,
    references: u64,
    deposits: u64,
    /// Line of the TK70, once seen.
    end: Option<u64>,
}

/// Record codes of BgMax (spec §3).
const KNOWN_CODES: [&[u8]; 13] = [
    b"01", b"05", b"15", b"20", b"21", b"22", b"23", b"25", b"26", b"27", b"28", b"29", b"70",
];

impl BgMax {
    fn opening(&mut self, line: &Line, routing: &mut Routing, problems: &mut Problems) {
        if self.seen_opening {
            problems.at(
                line.no,
                "a second TK01 opening record; a BgMax file has one",
            );
            return;
        }
        self.seen_opening = true;
        match line.at(45) {
            b'T' => routing.test = Some(true),
            b'P' => routing.test = Some(false),
            other => problems.at(
                line.no,
                format!(
                    "TK01 position 45 is {}, expected P (production) or T (test)",
                    quoted(&[other])
                ),
            ),
        }
    }

    fn check_count(
        &self,
        line: &Line,
        from: usize,
        what: &str,
        have: u64,
        problems: &mut Problems,
    ) {
        match lb::parse_digits(line.field(from, from + 7), 8) {
            Some(n) if n == have => {}
            Some(n) => problems.at(
                line.no,
                format!("TK70 says {n} {what}, the file has {have}"),
            ),
            None => problems.at(
                line.no,
                format!(
                    "TK70 count of {what} {} (positions {from}–{}) is not 8 digits",
                    quoted(line.field(from, from + 7)),
                    from + 7
                ),
            ),
        }
    }
}

impl RecordChecker for BgMax {
    fn kind(&self) -> Kind {
        Kind::Bgmax
    }
    fn strict(&self) -> bool {
        true
    }
    fn record(&mut self, line: &Line, routing: &mut Routing, problems: &mut Problems) {
        if !check_record_shape(line, problems) {
            return;
        }
        let code = line.field(1, 2);
        if !KNOWN_CODES.contains(&code) {
            problems.at(
                line.no,
                format!(
                    "unknown record code TK{} for BgMax (known: 01 05 15 20 21 22 23 25 26 27 28 29 70)",
                    latin1(code)
                ),
            );
            return;
        }
        if let Some(end) = self.end {
            problems.at(
                line.no,
                format!("record after the TK70 end record on line {end}"),
            );
            return;
        }
        if !self.seen_opening && code != b"01" {
            problems.at(line.no, "the file does not open with a TK01 record");
            self.seen_opening = true;
        }
        match code {
            b"01" => self.opening(line, routing, problems),
            b"05" => {
                if let Some(open) = self.section {
                    problems.at(
                        line.no,
                        format!("TK05 opens a section, but the section opened on line {open} has no TK15 deposit record"),
                    );
                }
                self.section = Some(line.no);
                let receiver = line.field(3, 12);
                match bankgiro::canonical(&latin1(receiver)) {
                    Some(bg) if receiver.len() == bankgiro::FIELD_WIDTH => routing.add_bankgiro(bg),
                    _ => problems.at(
                        line.no,
                        format!(
                            "TK05 receiving bankgiro number {} (positions 3–12) is not a valid bankgiro number",
                            quoted(receiver)
                        ),
                    ),
                }
            }
            b"70" => {
                if let Some(open) = self.section.take() {
                    problems.at(
                        line.no,
                        format!("TK70 ends the file, but the section opened on line {open} has no TK15 deposit record"),
                    );
                }
                self.end = Some(line.no);
                self.check_count(line, 3, "payment records (TK20)", self.payments, problems);
                self.check_count(
                    line,
                    11,
                    "deduction records (TK21)",
                    self.deductions,
                    problems,
                );
                self.check_count(
                    line,
                    19,
                    "extra reference records (TK22/23)",
                    self.references,
                    problems,
                );
                self.check_count(line, 27, "deposit records (TK15)", self.deposits, problems);
            }
            _ => {
                if self.section.is_none() {
                    problems.at(
                        line.no,
                        format!(
                            "record TK{} is outside a section: sections open with TK05 and close with TK15",
                            latin1(code)
                        ),
                    );
                }
                match code {
                    b"20" => self.payments += 1,
                    b"21" => self.deductions += 1,
                    b"22" | b"23" => self.references += 1,
                    b"15" => {
                        self.deposits += 1;
                        self.section = None;
                    }
                    _ => {}
                }
            }
        }
    }
    fn finish(&mut self, last_line: u64, _: &mut Routing, problems: &mut Problems) {
        if self.end.is_none() {
            if let Some(open) = self.section {
                problems.at(
                    last_line,
                    format!("the file ends inside the section opened on line {open}: no TK15 deposit record"),
                );
            }
            problems.at(last_line, "the file has no TK70 end record");
        }
    }
}
