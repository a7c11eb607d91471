//! `formats` and `sluss inspect`: every fixture family lands in the right kind with the right
//! routing keys; every kind is recognised (ISO 20022 and Autogiro from files built here);
//! broken files come out with problems that name the line; nothing panics on any bytes.
use crate::util;
use proptest::prelude::*;
use serde_json::Value;
use sluss::formats::{self, Kind, Recognition, bankgiro, recognise_bytes};
use std::path::Path;

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(util::fixture(rel)).unwrap()
}

fn lib(rel: &str) -> Recognition {
    let r = formats::recognise(std::io::BufReader::new(
        std::fs::File::open(util::fixture(rel)).unwrap(),
    ))
    .unwrap();
    // The streaming and the in-memory entry points agree.
    let b = recognise_bytes(&read(rel));
    assert_eq!(
        (r.kind, r.sealed, &r.routing),
        (b.kind, b.sealed, &b.routing)
    );
    r
}

fn messages(r: &Recognition) -> Vec<String> {
    r.problems
        .iter()
        .map(|p| match p.line {
            Some(n) => format!("line {n}: {}", p.message),
            None => p.message.clone(),
        })
        .collect()
}

fn has(r: &Recognition, line: u64, needle: &str) -> bool {
    r.problems
        .iter()
        .any(|p| p.line == Some(line) && p.message.contains(needle))
}

/// Run `sluss inspect --json FILE`: (exit code, the one JSON object on stdout).
fn inspect_json(path: &Path) -> (i32, Value) {
    let out = util::sluss()
        .args(["inspect", "--json"])
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout}"));
    (out.status.code().unwrap(), v)
}

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
    f
}

/// 80-byte record from a prefix, blank-padded.
fn rec(prefix: &[u8]) -> Vec<u8> {
    let mut r = prefix.to_vec();
    assert!(r.len() <= 80, "record longer than 80: {}", r.len());
    r.resize(80, b' ');
    r
}

fn file_of(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(r);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The official LB example's records (80 bytes each, without line breaks).
fn official_lb_records() -> Vec<Vec<u8>> {
    read("bankgirot/lb/lb-official-example.txt")
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
        .filter(|l| !l.is_empty())
        .collect()
}

// ---- bankgiro numbers -------------------------------------------------------------------

#[test]
fn bankgiro_numbers_normalise_and_check() {
    for s in ["991-2346", "9912346", "0009912346"] {
        assert_eq!(bankgiro::canonical(s).as_deref(), Some("0009912346"));
    }
    assert_eq!(bankgiro::canonical("991-2347"), None);
    assert!(bankgiro::check_digit_ok("0009912346"));
    assert!(!bankgiro::check_digit_ok("0009912347"));
}

// ---- LB payment orders ------------------------------------------------------------------

#[test]
fn lb_payment_orders_are_recognised_with_their_sender() {
    for (rel, sealed) in [
        ("bankgirot/lb/lb-official-example.txt", false),
        ("bankgirot/lb/lb-unsealed.txt", false),
        ("bankgirot/lb/lb-sealed-testkey-lf.txt", true),
        ("bankgirot/lb/lb-sealed-key-as-text-INVALID.txt", true),
    ] {
        let r = lib(rel);
        assert_eq!(r.kind, Kind::LbPaymentOrder, "{rel}");
        assert!(r.kind.is_payment_order());
        assert_eq!(r.sealed, sealed, "{rel}");
        assert!(r.problems.is_empty(), "{rel}: {:?}", messages(&r));
        assert_eq!(r.routing.report_code, None);
    }
    assert_eq!(
        lib("bankgirot/lb/lb-official-example.txt").routing.bankgiro,
        ["0009912346"]
    );
    assert_eq!(
        lib("bankgirot/lb/lb-sealed-testkey-lf.txt")
            .routing
            .bankgiro,
        ["0001234566"]
    );
    assert_eq!(lib("bankgirot/lb/lb-official-example.txt").records, 28);
}

#[test]
fn lb_documentation_examples_are_refused_with_clear_messages() {
    let r = lib("bankgirot/lb/lb-doc-example1-unpadded.txt");
    assert_eq!(r.kind, Kind::LbPaymentOrder);
    let all = messages(&r);
    assert!(has(&r, 1, "empty line before the first record"), "{all:#?}");
    assert!(
        has(
            &r,
            3,
            "not a record: a record is 80 characters starting with a two-digit code"
        ),
        "{all:#?}"
    );
    assert!(has(&r, 5, "record TK11 is 40 characters"), "{all:#?}");
    assert!(has(&r, 5, "\"00XXXXXXXX\""), "{all:#?}");
    assert!(has(&r, 7, "record TK14 is 87 characters"), "{all:#?}");

    let r = lib("bankgirot/lb/lb-doc-salary-unpadded.txt");
    assert!(has(&r, 3, "not a record"), "{:#?}", messages(&r));
    assert!(
        has(&r, 5, "is not a valid bankgiro number"),
        "{:#?}",
        messages(&r)
    );

    // The binary says the same, exits 1, and names the lines.
    let out = util::sluss()
        .arg("inspect")
        .arg(util::fixture("bankgirot/lb/lb-doc-example1-unpadded.txt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kind:     lb-payment-order"), "{text}");
    assert!(
        text.contains(
            "line 3: not a record: a record is 80 characters starting with a two-digit code"
        ),
        "{text}"
    );
}

#[test]
fn lb_section_totals_counts_and_senders_are_checked() {
    let base = official_lb_records();
    assert!(recognise_bytes(&file_of(&base)).problems.is_empty());

    // One öre more on line 3: the TK29 total no longer agrees.
    let mut v = base.clone();
    v[2][48] = b'1';
    let r = recognise_bytes(&file_of(&v));
    assert!(
        has(&r, 28, "TK29 total 4041700 öre does not match"),
        "{:#?}",
        messages(&r)
    );

    // A credit invoice (TK16) turned into a payment (TK14) changes the total too.
    let mut v = base.clone();
    v[8][..2].copy_from_slice(b"14");
    assert!(has(&recognise_bytes(&file_of(&v)), 28, "does not match"));

    // Count, sender, sign.
    let mut v = base.clone();
    v[27][19] = b'9';
    v[27][3..12].copy_from_slice(b"001234566");
    let r = recognise_bytes(&file_of(&v));
    assert!(
        has(&r, 28, "TK29 says 19 payment records"),
        "{:#?}",
        messages(&r)
    );
    assert!(
        has(&r, 28, "differs from the sender"),
        "{:#?}",
        messages(&r)
    );

    // A missing TK29, a record before TK11, and a second section.
    let r = recognise_bytes(&file_of(&base[..27]));
    assert!(has(&r, 27, "has no TK29"), "{:#?}", messages(&r));
    let mut v = vec![base[2].clone()];
    v.extend(base.iter().cloned());
    let r = recognise_bytes(&file_of(&v));
    assert!(
        r.kind == Kind::Unknown,
        "a file opening with TK14 is not an LB order"
    );
    let mut two = base.clone();
    two.extend(base.iter().cloned());
    let r = recognise_bytes(&file_of(&two));
    assert!(r.problems.is_empty(), "{:#?}", messages(&r));
    assert_eq!(r.routing.bankgiro, ["0009912346"], "deduplicated");
}

#[test]
fn lb_record_codes_check_digits_and_lengths_are_checked() {
    let base = official_lb_records();
    let mut v = base.clone();
    v.insert(1, rec(b"33SOMETHING"));
    v.insert(2, rec(b"28SECTION SEAL"));
    v[0][11] = b'7'; // sender 0009912347: wrong check digit
    v[4][11] = b'7'; // payee 0001234567 (TK14 on line 5, a bankgiro number)
    let r = recognise_bytes(&file_of(&v));
    let all = messages(&r);
    assert!(has(&r, 2, "unknown record code TK33"), "{all:#?}");
    assert!(has(&r, 3, "TK28 is a section seal"), "{all:#?}");
    assert!(has(&r, 1, "\"0009912347\""), "{all:#?}");
    assert!(has(&r, 5, "payee \"0001234567\""), "{all:#?}");
    // Payment numbers (0000 + 6 characters, announced by TK40/26/27) are not bankgiro numbers.
    assert!(!all.iter().any(|m| m.contains("0000990010")), "{all:#?}");

    // The sender bankgiro is still routed from the valid section only.
    assert!(r.routing.bankgiro.is_empty());

    // UTF-8 instead of ISO-8859-1 makes TK11 one byte too long, and says why.
    let mut v = base.clone();
    let utf8: Vec<u8> = String::from_utf8_lossy(&v[0][..80])
        .replace('\u{FFFD}', "Ö")
        .into_bytes();
    v[0] = utf8[..81].to_vec();
    let r = recognise_bytes(&file_of(&v));
    assert!(has(&r, 1, "81 characters"), "{:#?}", messages(&r));
    assert!(has(&r, 1, "UTF-8"), "{:#?}", messages(&r));

    // An empty line in the middle is a problem, trailing empty lines are not.
    let mut f = file_of(&base);
    f.extend_from_slice(b"\r\n\r\n\n");
    assert!(recognise_bytes(&f).problems.is_empty());
    let mut v = base.clone();
    v.insert(5, Vec::new());
    assert!(has(
        &recognise_bytes(&file_of(&v)),
        6,
        "empty line between records"
    ));
}

#[test]
fn sealed_files_are_classified_on_the_records_inside() {
    let sealed = read("bankgirot/lb/lb-sealed-testkey-lf.txt");
    let r = recognise_bytes(&sealed);
    assert!(r.sealed && r.problems.is_empty());

    let mut extra = sealed.clone();
    extra.extend_from_slice(b"14000888888556897456986\n");
    assert!(has(&recognise_bytes(&extra), 7, "data after the TK99"));

    let cut = &sealed[..sealed.len() - 81];
    let r = recognise_bytes(cut);
    assert!(r.sealed);
    assert!(
        messages(&r).iter().any(|m| m.contains("no TK99")),
        "{:#?}",
        messages(&r)
    );
}

#[test]
fn problems_are_capped() {
    let mut v = official_lb_records();
    for _ in 0..300 {
        v.insert(1, b"14short".to_vec());
    }
    let r = recognise_bytes(&file_of(&v));
    assert_eq!(r.problems.len(), formats::MAX_PROBLEMS + 1);
    assert!(r.problems.last().unwrap().message.starts_with("… and "));
}

// ---- LB returns -------------------------------------------------------------------------

#[test]
fn lb_returns_land_in_their_kind_with_their_report_code() {
    for (rel, kind, code) in [
        ("lb-payment-spec-code1.txt", Kind::LbPaymentSpec, "1"),
        ("lb-payment-spec-salary-code1.txt", Kind::LbPaymentSpec, "1"),
        ("lb-monitoring-code2.txt", Kind::LbMonitoring, "2"),
        ("lb-rejected-code6.txt", Kind::LbRejected, "6"),
        ("lb-stopped-code7.txt", Kind::LbStopped, "7"),
    ] {
        let r = lib(&format!("bankgirot/returns/{rel}"));
        assert_eq!(r.kind, kind, "{rel}");
        assert!(!r.kind.is_payment_order());
        assert_eq!(r.routing.report_code.as_deref(), Some(code), "{rel}");
        assert!(!r.sealed);
    }
    assert_eq!(
        lib("bankgirot/returns/lb-payment-spec-code1.txt")
            .routing
            .bankgiro,
        ["0001234566"]
    );
    assert_eq!(
        lib("bankgirot/returns/lb-stopped-code7.txt")
            .routing
            .bankgiro,
        ["0009912346"]
    );
    // Placeholder senders cannot route: said so, not silently dropped.
    let r = lib("bankgirot/returns/lb-rejected-code6.txt");
    assert!(has(&r, 1, "cannot be routed"), "{:#?}", messages(&r));
}

#[test]
fn lb_cancellations_and_odd_report_codes() {
    let mut tk11 = rec(b"110009912346071215LEVERANTORSBETALNINGAR");
    tk11[46] = b'5';
    let r = recognise_bytes(&file_of(&[tk11.clone(), rec(b"29000991234600000000")]));
    assert_eq!(r.kind, Kind::LbCancellations);
    assert_eq!(r.routing.report_code.as_deref(), Some("5"));
    tk11[46] = b'9';
    let r = recognise_bytes(&file_of(&[tk11]));
    assert_eq!(r.kind, Kind::Unknown);
    assert!(has(&r, 1, "position 47"), "{:#?}", messages(&r));
}

// ---- BgMax ------------------------------------------------------------------------------

#[test]
fn bgmax_files_route_by_receiving_bankgiro() {
    for rel in [
        "BgMaxfil1.txt",
        "BgMaxfil2.txt",
        "BgMaxfil3.txt",
        "bginbetalningar_exempelfil_1.txt",
    ] {
        let r = lib(&format!("bankgirot/bgmax/{rel}"));
        assert_eq!(r.kind, Kind::Bgmax, "{rel}");
        assert_eq!(r.routing.bankgiro, ["0009912346"], "{rel}");
        assert_eq!(r.routing.test, Some(false), "{rel}");
    }
    assert!(lib("bankgirot/bgmax/BgMaxfil1.txt").problems.is_empty());
    assert!(lib("bankgirot/bgmax/BgMaxfil2.txt").problems.is_empty());
    // Two of Bankgirot's own examples have unpadded or over-long lines: reported exactly.
    let r = lib("bankgirot/bgmax/bginbetalningar_exempelfil_1.txt");
    assert_eq!(
        messages(&r),
        [
            "line 6: record TK22 is 88 characters; every record must be exactly 80 (blank-padded, line break not counted)",
            "line 50: record TK70 is 34 characters; every record must be exactly 80 (blank-padded, line break not counted)",
        ]
    );
    assert_eq!(lib("bankgirot/bgmax/BgMaxfil3.txt").problems.len(), 1);
}

#[test]
fn bgmax_counts_and_test_mark_are_checked() {
    let data = read("bankgirot/bgmax/BgMaxfil1.txt");
    let mut lines: Vec<Vec<u8>> = data
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
        .filter(|l| !l.is_empty())
        .collect();
    lines[0][44] = b'T';
    let tk70 = lines.len() - 1;
    lines[tk70][9] = b'6'; // claims 6 payments, the file has 5
    let r = recognise_bytes(&file_of(&lines));
    assert_eq!(r.routing.test, Some(true));
    assert!(
        has(&r, 28, "TK70 says 6 payment records (TK20), the file has 5"),
        "{:#?}",
        messages(&r)
    );
    lines.pop();
    assert!(has(&recognise_bytes(&file_of(&lines)), 27, "no TK70"));
}

// ---- Autogiro ---------------------------------------------------------------------------

#[test]
fn autogiro_order_and_return_carry_customer_number_and_bankgiro() {
    let mut tk01 = rec(b"0120260105AUTOGIRO");
    tk01[62..68].copy_from_slice(b"471100");
    tk01[68..78].copy_from_slice(b"0009912346");
    let order = file_of(&[tk01, rec(b"82GENAST    0000000001000000000012345")]);
    let r = recognise_bytes(&order);
    assert_eq!(r.kind, Kind::AutogiroOrder);
    assert!(r.kind.is_payment_order());
    assert_eq!(r.routing.customer_number.as_deref(), Some("471100"));
    assert_eq!(r.routing.bankgiro, ["0009912346"]);

    let mut tk01 = rec(b"01AUTOGIRO              20260105123456");
    tk01[44..53].copy_from_slice(b"AG-MEDAVI");
    tk01[64..70].copy_from_slice(b"471100");
    tk01[70..80].copy_from_slice(b"0009912346");
    let r = recognise_bytes(&file_of(&[tk01]));
    assert_eq!(r.kind, Kind::AutogiroReturn);
    assert_eq!(r.routing.customer_number.as_deref(), Some("471100"));
    assert_eq!(r.routing.bankgiro, ["0009912346"]);
    assert!(r.problems.is_empty());
}

// ---- ISO 20022 --------------------------------------------------------------------------

fn pain001() -> String {
    r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03">
  <CstmrCdtTrfInitn>
    <GrpHdr><MsgId>MSG-2026-0001</MsgId><CreDtTm>2026-01-05T10:00:00</CreDtTm><NbOfTxs>2</NbOfTxs></GrpHdr>
    <PmtInf>
      <PmtInfId>P1</PmtInfId>
      <DbtrAcct><Id><IBAN>se45 5000 0000 0583 9825 7466</IBAN></Id></DbtrAcct>
      <CdtTrfTxInf><CdtrAcct><Id><IBAN>SE0000000000000000000001</IBAN></Id></CdtrAcct></CdtTrfTxInf>
    </PmtInf>
    <PmtInf>
      <DbtrAcct><Id><Othr><Id>991-2346</Id><SchmeNm><Prtry>BGNR</Prtry></SchmeNm></Othr></Id></DbtrAcct>
    </PmtInf>
  </CstmrCdtTrfInitn>
</Document>
"#
    .to_string()
}

#[test]
fn pain001_gives_message_id_and_debtor_accounts() {
    let r = recognise_bytes(pain001().as_bytes());
    assert_eq!(r.kind, Kind::Pain001);
    assert!(r.kind.is_payment_order());
    assert_eq!(r.routing.message_id.as_deref(), Some("MSG-2026-0001"));
    // Debtor accounts only (not the creditor's), normalised.
    assert_eq!(r.routing.account, ["SE4550000000058398257466"]);
    assert_eq!(r.routing.bankgiro, ["0009912346"]);
    assert!(r.problems.is_empty(), "{:#?}", messages(&r));
    assert_eq!(r.records, 14);

    // Prefixed namespace, version 09.
    let prefixed = pain001()
        .replace("pain.001.001.03\"", "pain.001.001.09\"")
        .replace("<Document xmlns=", "<p:Document xmlns:p=")
        .replace("</Document>", "</p:Document>");
    assert_eq!(recognise_bytes(prefixed.as_bytes()).kind, Kind::Pain001);
    // A UTF-8 byte-order mark and leading blank lines.
    let bom = format!("\u{FEFF}\n\n{}", pain001());
    let r = recognise_bytes(bom.as_bytes());
    assert_eq!(r.kind, Kind::Pain001, "{:#?}", messages(&r));
    assert_eq!(r.records, 16);
}

#[test]
fn pain002_answers_its_original_message() {
    let xml = r#"<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.002.001.10"><CstmrPmtStsRpt>
<GrpHdr><MsgId>STS-1</MsgId></GrpHdr>
<OrgnlGrpInfAndSts><OrgnlMsgId>MSG-2026-0001</OrgnlMsgId><OrgnlMsgNmId>pain.001.001.09</OrgnlMsgNmId><GrpSts>ACCP</GrpSts></OrgnlGrpInfAndSts>
</CstmrPmtStsRpt></Document>"#;
    let r = recognise_bytes(xml.as_bytes());
    assert_eq!(r.kind, Kind::Pain002);
    assert_eq!(r.routing.message_id.as_deref(), Some("STS-1"));
    assert_eq!(
        r.routing.original_message_id.as_deref(),
        Some("MSG-2026-0001")
    );
}

#[test]
fn camt053_and_camt054_give_the_account() {
    let xml = r#"<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"><BkToCstmrStmt>
<GrpHdr><MsgId>STMT&amp;1</MsgId></GrpHdr>
<Stmt><Id>1</Id><Acct><Id><IBAN>SE4550000000058398257466</IBAN></Id></Acct></Stmt>
</BkToCstmrStmt></Document>"#;
    let r = recognise_bytes(xml.as_bytes());
    assert_eq!(r.kind, Kind::Camt053);
    assert_eq!(r.routing.message_id.as_deref(), Some("STMT&1"));
    assert_eq!(r.routing.account, ["SE4550000000058398257466"]);

    let xml = r#"<?xml version="1.0"?><Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.054.001.08"><BkToCstmrDbtCdtNtfctn>
<GrpHdr><MsgId>N1</MsgId></GrpHdr>
<Ntfctn><Acct><Id><Othr><Id>5050-1055</Id><SchmeNm><Prtry>BGNR</Prtry></SchmeNm></Othr></Id></Acct></Ntfctn>
<Ntfctn><Acct><Id><Othr><Id>12345678</Id><SchmeNm><Cd>BBAN</Cd></SchmeNm></Othr></Id></Acct></Ntfctn>
<Ntfctn><Acct><Id><Othr><Id>5050-1056</Id><SchmeNm><Prtry>BGNR</Prtry></SchmeNm></Othr></Id></Acct></Ntfctn>
</BkToCstmrDbtCdtNtfctn></Document>"#;
    let r = recognise_bytes(xml.as_bytes());
    assert_eq!(r.kind, Kind::Camt054);
    assert_eq!(r.routing.bankgiro, ["0050501055"]);
    assert_eq!(r.routing.account, ["12345678"]);
    assert!(
        messages(&r).iter().any(|m| m.contains("\"5050-1056\"")),
        "{:#?}",
        messages(&r)
    );
}

#[test]
fn xml_that_is_not_a_known_message_is_unknown() {
    let r = recognise_bytes(b"<html><body>hi</body></html>");
    assert_eq!(r.kind, Kind::Unknown);
    assert!(r.problems.is_empty());
    // Namespace and first child disagree.
    let xml = pain001().replace("pain.001.001.03", "camt.053.001.02");
    let r = recognise_bytes(xml.as_bytes());
    assert_eq!(r.kind, Kind::Unknown);
    assert!(
        messages(&r)[0].contains("CstmrCdtTrfInitn"),
        "{:#?}",
        messages(&r)
    );
    // Broken XML after the kind is known: kind kept, problem reported.
    let cut = &pain001()[..300];
    let r = recognise_bytes(cut.as_bytes());
    assert_eq!(r.kind, Kind::Pain001);
    assert!(!r.problems.is_empty());
}

#[test]
fn hostile_xml_stays_bounded() {
    // Nesting far deeper than any message.
    let mut deep = String::from(
        r#"<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"><CstmrCdtTrfInitn>"#,
    );
    deep.push_str(&"<a>".repeat(100_000));
    let r = recognise_bytes(deep.as_bytes());
    assert_eq!(r.kind, Kind::Pain001);
    assert!(messages(&r).iter().any(|m| m.contains("nests deeper")));
    // A text run over the event budget.
    let mut long = pain001().replace("MSG-2026-0001", &"x".repeat(3 << 20));
    long.push('\n');
    let r = recognise_bytes(long.as_bytes());
    assert!(
        messages(&r).iter().any(|m| m.contains("longer than")),
        "{:#?}",
        messages(&r)
    );
    assert_eq!(r.routing.message_id, None);
}

// ---- unknown, odd and arbitrary input ---------------------------------------------------

#[test]
fn other_files_are_unknown_without_crashing() {
    for data in [
        &b""[..],
        b"\n\n\n",
        b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n",
        b"name;amount\nAnna;100\n",
        b"\xFF\xFE\x00<\x00?",
    ] {
        let r = recognise_bytes(data);
        assert_eq!(r.kind, Kind::Unknown, "{data:?}");
        assert!(!r.sealed);
    }
    // A ten-megabyte line without a break.
    let r = recognise_bytes(&vec![b'7'; 10 << 20]);
    assert_eq!(r.kind, Kind::Unknown);
    assert_eq!(r.records, 1);
    // ...or one that starts like an LB order.
    let mut big = b"110009912346071215LEVERANTORSBETALNINGAR".to_vec();
    big.resize(10 << 20, b' ');
    let r = recognise_bytes(&big);
    assert_eq!(r.kind, Kind::LbPaymentOrder);
    assert!(has(&r, 1, "10485760 characters"), "{:#?}", messages(&r));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let r = recognise_bytes(&data);
        prop_assert!(r.problems.len() <= formats::MAX_PROBLEMS + 1);
    }

    #[test]
    fn damaged_payment_files_never_panic(
        pick in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
    ) {
        let mut data = match pick {
            0 => read("bankgirot/lb/lb-official-example.txt"),
            1 => read("bankgirot/bgmax/BgMaxfil2.txt"),
            2 => read("bankgirot/lb/lb-sealed-testkey-lf.txt"),
            _ => pain001().into_bytes(),
        };
        for (at, byte) in edits {
            let i = at.index(data.len());
            data[i] = byte;
        }
        let r = recognise_bytes(&data);
        prop_assert!(r.problems.len() <= formats::MAX_PROBLEMS + 1);
        // Tiny reads (CR and LF in different buffers, tags split) change nothing.
        let s = formats::recognise(std::io::BufReader::with_capacity(3, &data[..])).unwrap();
        prop_assert_eq!((s.kind, s.sealed, &s.routing, s.records), (r.kind, r.sealed, &r.routing, r.records));
        prop_assert_eq!(s.problems, r.problems);
    }
}

// ---- sluss inspect ----------------------------------------------------------------------

#[test]
fn inspect_json_is_one_object_with_the_promised_fields() {
    let (code, v) = inspect_json(&util::fixture("bankgirot/lb/lb-sealed-testkey-lf.txt"));
    assert_eq!(code, 0);
    assert_eq!(v["kind"], "lb-payment-order");
    assert_eq!(v["sealed"], true);
    assert_eq!(v["routing"]["bankgiro"][0], "0001234566");
    assert_eq!(v["problems"], Value::Array(vec![]));
    // Empty routing fields are left out.
    assert!(v["routing"].get("message_id").is_none());

    let (code, v) = inspect_json(&util::fixture("bankgirot/returns/lb-rejected-code6.txt"));
    assert_eq!(code, 1);
    assert_eq!(v["kind"], "lb-rejected");
    assert_eq!(v["routing"]["report_code"], "6");
    assert_eq!(v["problems"][0]["line"], 1);
    assert!(v["problems"][0]["message"].is_string());

    let f = temp_file(pain001().as_bytes());
    let (code, v) = inspect_json(f.path());
    assert_eq!(code, 0);
    assert_eq!(v["kind"], "pain.001");
    assert_eq!(v["routing"]["message_id"], "MSG-2026-0001");
    assert_eq!(v["routing"]["account"][0], "SE4550000000058398257466");
}

#[test]
fn inspect_human_output_and_io_errors() {
    let out = util::sluss()
        .arg("inspect")
        .arg(util::fixture("bankgirot/bgmax/BgMaxfil1.txt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kind:     bgmax"), "{text}");
    assert!(text.contains("bankgiro: 0009912346"), "{text}");
    assert!(text.contains("problems: none"), "{text}");

    let out = util::sluss()
        .args(["inspect", "--json", "/nonexistent/sluss-file.txt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sluss-file.txt"));
}
