//! Fuzz target: `formats::recognise_bytes` on arbitrary bytes must never panic, and must
//! keep its promises (at most MAX_PROBLEMS + 1 problems, a sealed file is a record file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluss::formats::{self, recognise_bytes};

fuzz_target!(|data: &[u8]| {
    let r = recognise_bytes(data);
    assert!(r.problems.len() <= formats::MAX_PROBLEMS + 1);
    // The streaming entry point agrees with the in-memory one, even with tiny reads.
    let small = std::io::BufReader::with_capacity(7, data);
    let s = formats::recognise(small).expect("reading a slice cannot fail");
    assert_eq!((s.kind, s.sealed, &s.routing), (r.kind, r.sealed, &r.routing));
    assert_eq!(s.records, r.records);
});
