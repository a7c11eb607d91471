//! Autogiro (direct debit), recognition only (spec §4): the TK01 opening record tells an
//! order to Bankgirot from a return, and carries the customer number and payee bankgiro
//! number the file is routed by. No structural checks beyond the routing keys.

use super::{Kind, Line, Problems, RecordChecker, Routing, bankgiro, latin1, quoted};

pub(crate) struct Autogiro {
    kind: Kind,
    seen_opening: bool,
}

impl Autogiro {
    pub(crate) fn new(kind: Kind) -> Self {
        Autogiro {
            kind,
            seen_opening: false,
        }
    }
}

impl RecordChecker for Autogiro {
    fn kind(&self) -> Kind {
        self.kind
    }
    fn strict(&self) -> bool {
        false
    }
    fn record(&mut self, line: &Line, routing: &mut Routing, problems: &mut Problems) {
        if self.seen_opening {
            return;
        }
        self.seen_opening = true;
        // Order: customer number 63–68, bankgiro 69–78. Return (new layout): 65–70, 71–80.
        let (customer, bg) = match self.kind {
            Kind::AutogiroOrder => (line.field(63, 68), line.field(69, 78)),
            _ => (line.field(65, 70), line.field(71, 80)),
        };
        if customer.len() == 6 && customer.iter().all(u8::is_ascii_digit) {
            routing.customer_number = Some(latin1(customer));
        } else {
            problems.at(
                line.no,
                format!(
                    "TK01 customer number {} is not 6 digits, so this file cannot be routed by customer number",
                    quoted(customer)
                ),
            );
        }
        match bankgiro::canonical(&latin1(bg)) {
            Some(c) if bg.len() == bankgiro::FIELD_WIDTH => routing.add_bankgiro(c),
            _ => problems.at(
                line.no,
                format!(
                    "TK01 payee bankgiro number {} is not a valid bankgiro number",
                    quoted(bg)
                ),
            ),
        }
    }
    fn finish(&mut self, _: u64, _: &mut Routing, _: &mut Problems) {}
}
