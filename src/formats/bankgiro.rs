//! Bankgiro numbers: normalising the ways people write them (`991-2346`, `9912346`,
//! `0009912346`) to the 10-digit zero-padded form the records use, and the Luhn (mod 10)
//! check digit. Pure functions over text; never guesses a number that does not check out.

/// Width of a bankgiro number field in LB, BgMax and Autogiro records.
pub const FIELD_WIDTH: usize = 10;

/// Bankgiro numbers have 7 or 8 significant digits (spec §2); anything shorter is a
/// payment number or a typo, anything longer does not fit the record field.
const SIGNIFICANT_DIGITS: std::ops::RangeInclusive<usize> = 7..=8;

/// True if `digits` is all ASCII digits (at least two) and its last digit is the Luhn
/// (mod 10) check digit of the others.
pub fn check_digit_ok(digits: &str) -> bool {
    luhn_ok(digits.as_bytes())
}

/// [`check_digit_ok`] on bytes: runs once per payment record, so no UTF-8 check and a table
/// for the doubled digits.
fn luhn_ok(bytes: &[u8]) -> bool {
    const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
    if bytes.len() < 2 || !bytes.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut sum = 0u32;
    for (i, b) in bytes.iter().rev().enumerate() {
        let d = usize::from(b - b'0');
        sum += if i % 2 == 1 { DOUBLED[d] } else { d as u32 };
    }
    sum.is_multiple_of(10)
}

/// True if a 10-byte record field holds a valid bankgiro number (zero-padded digits, 7 or 8
/// significant, Luhn check digit). Allocation-free: it runs once per payment record.
pub fn field_is_valid(field: &[u8]) -> bool {
    if field.len() != FIELD_WIDTH || !field.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let first = field.iter().position(|&b| b != b'0').unwrap_or(FIELD_WIDTH);
    let significant = &field[first..];
    SIGNIFICANT_DIGITS.contains(&significant.len()) && luhn_ok(significant)
}

/// The 10-digit zero-padded form of a bankgiro number, if `text` is one with a valid check
/// digit. Accepts surrounding blanks, leading zeros, and the usual hyphen before the last
/// four digits (`991-2346`, `5050-1055`).
pub fn canonical(text: &str) -> Option<String> {
    let text = text.trim_matches(|c: char| c == ' ' || c == '\t');
    let digits: String = match text.split_once('-') {
        Some((head, tail)) => {
            if tail.len() != 4 || head.is_empty() {
                return None;
            }
            format!("{head}{tail}")
        }
        None => text.to_string(),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = digits.trim_start_matches('0');
    if !SIGNIFICANT_DIGITS.contains(&significant.len()) || !check_digit_ok(significant) {
        return None;
    }
    Some(format!("{significant:0>FIELD_WIDTH$}"))
}

#[cfg(test)]
mod field_tests {
    use super::*;

    #[test]
    fn field_check_agrees_with_canonical() {
        for f in [
            "0009912346",
            "0009912347",
            "0001234566",
            "0000000000",
            "12345678901",
            "000991234",
            "00099123a6",
            "0050501055",
            "0000912346",
            "1234567890",
        ] {
            let by_canonical = f.len() == FIELD_WIDTH && canonical(f).is_some();
            assert_eq!(field_is_valid(f.as_bytes()), by_canonical, "{f}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_example_number_in_every_spelling() {
        for s in ["991-2346", "9912346", "0009912346", " 0009912346 "] {
            assert_eq!(canonical(s).as_deref(), Some("0009912346"), "{s}");
        }
        assert_eq!(canonical("5050-1055").as_deref(), Some("0050501055"));
    }

    #[test]
    fn wrong_check_digit_or_shape_is_refused() {
        for s in [
            "991-2345",
            "9912345",
            "0000990010",
            "",
            "99-12346",
            "00XXXXXXXX",
            "123456789012",
        ] {
            assert_eq!(canonical(s), None, "{s}");
        }
        assert!(check_digit_ok("0001234566"));
        assert!(!check_digit_ok("0001234567"));
        assert!(!check_digit_ok("12a4"));
    }
}
