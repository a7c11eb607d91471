//! Arbitrary bytes into the seal checks: `verify` (with Bankgirot's test key, plus a second
//! key for the rotation path), `unprotected_bytes`, `payload_digest`, and a seal round trip.
//! None may panic; every file `seal_stream` produces must verify, and the one-pass
//! `verify_with_scan` must agree with the separate functions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluss::seal::{self, SealKey, SealVerdict};

const TEST_KEY: &str = "1234567890ABCDEF1234567890ABCDEF";
const OTHER_KEY: &str = "00112233445566778899AABBCCDDEEFF";

fuzz_target!(|data: &[u8]| {
    let (Ok(key), Ok(other)) = (SealKey::from_hex(TEST_KEY), SealKey::from_hex(OTHER_KEY)) else {
        return;
    };
    let keys = [other, key.clone()];
    let verdict = seal::verify(&keys, data).expect("reading a slice cannot fail");
    if let SealVerdict::Invalid(f) = &verdict {
        // Every finding renders as one line with a stable code.
        assert!(!f.to_string().contains('\n'));
        assert!(!f.code().is_empty());
    }
    let scan = seal::unprotected_bytes(data, 8).expect("slice");
    assert!(scan.findings.len() as u64 <= scan.total);
    let (verdict2, scan2) = seal::verify_with_scan(&keys, data, 8).expect("slice");
    assert_eq!(verdict, verdict2);
    assert_eq!(scan, scan2);
    let _ = seal::payload_digest(data).expect("slice");

    let mut sealed = Vec::new();
    if seal::seal_stream(&key, "260101", data, &mut sealed).is_ok() {
        match seal::verify(&keys, &sealed[..]).expect("slice") {
            SealVerdict::Valid { .. } => {}
            SealVerdict::Invalid(f) => panic!("sealed output does not verify: {f}"),
        }
        assert_eq!(
            seal::payload_digest(&sealed[..]).expect("slice"),
            seal::payload_digest(data).expect("slice"),
        );
    }
});
