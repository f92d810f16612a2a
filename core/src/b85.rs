//! Base85 with RFC 1924's alphabet (Python's `base64.b85encode`): the keys
//! field of a `scram_sha256` row (docs/DJANGO.md section 4). Whole groups
//! only (4 bytes <-> 5 characters, big-endian), no padding. The keys are
//! secrets, so both directions are constant-time in the data: characters
//! are found by comparing against the whole alphabet, never by indexing a
//! table with a secret value.

const ALPHABET: &[u8; 85] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~";

/// All ones when `a == b`, else 0 (branch-free).
fn ct_mask(a: u32, b: u32) -> u32 {
    let x = a ^ b;
    // x == 0 -> (0 - 1) >> 31 == 1; otherwise the top bit of x | -x is set.
    let nonzero = (x | x.wrapping_neg()) >> 31;
    (nonzero ^ 1).wrapping_neg()
}

/// The digit of a character plus one, or 0 for a byte outside the alphabet.
fn digit_plus_one(c: u8) -> u32 {
    let mut v = 0;
    for (i, &a) in (1u32..).zip(ALPHABET.iter()) {
        v |= ct_mask(u32::from(c), u32::from(a)) & i;
    }
    v
}

/// The character of a digit (0..=84).
fn character(d: u32) -> u8 {
    let mut c = 0u32;
    for (i, &a) in (0u32..).zip(ALPHABET.iter()) {
        c |= ct_mask(d, i) & u32::from(a);
    }
    c as u8
}

/// Encodes `data` (a multiple of 4 bytes) into the start of `out`; `None`
/// when the length is not a multiple of 4 or `out` is too small.
pub(crate) fn encode<'o>(data: &[u8], out: &'o mut [u8]) -> Option<&'o str> {
    if !data.len().is_multiple_of(4) {
        return None;
    }
    let out = out.get_mut(..data.len() / 4 * 5)?;
    for (group, text) in data.chunks_exact(4).zip(out.chunks_exact_mut(5)) {
        let mut n = u32::from_be_bytes([group[0], group[1], group[2], group[3]]);
        for c in text.iter_mut().rev() {
            *c = character(n % 85);
            n /= 85;
        }
    }
    core::str::from_utf8(out).ok()
}

/// Decodes `text` (a multiple of 5 characters) into the start of `out` and
/// returns the decoded length; `None` for another length, a character
/// outside the alphabet, a group above 2^32 - 1, or `out` too small.
pub(crate) fn decode(text: &str, out: &mut [u8]) -> Option<usize> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(5) {
        return None;
    }
    let len = text.len() / 5 * 4;
    let out = out.get_mut(..len)?;
    // Errors are collected, and judged once at the end.
    let mut bad = 0u32;
    for (chars, bytes) in text.chunks_exact(5).zip(out.chunks_exact_mut(4)) {
        let mut n = 0u64;
        for &c in chars {
            let d = digit_plus_one(c);
            bad |= ct_mask(d, 0);
            n = n * 85 + u64::from(d.wrapping_sub(1) & 0x7f);
        }
        bad |= ((n >> 32) != 0) as u32;
        bytes.copy_from_slice(&(n as u32).to_be_bytes());
    }
    (bad == 0).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_character_round_trips() {
        for (d, &c) in (0u32..).zip(ALPHABET.iter()) {
            assert_eq!(character(d), c);
            assert_eq!(digit_plus_one(c), d + 1);
        }
        for c in (0..=255u8).filter(|c| !ALPHABET.contains(c)) {
            assert_eq!(digit_plus_one(c), 0, "{c}");
        }
    }

    #[test]
    fn matches_python() {
        // base64.b85encode(bytes(range(8))) and of b"\xff" * 4.
        let mut out = [0u8; 10];
        assert_eq!(
            encode(&[0, 1, 2, 3, 4, 5, 6, 7], &mut out),
            Some("009C61O)~M")
        );
        assert_eq!(encode(&[0xff; 4], &mut out), Some("|NsC0"));
        let mut raw = [0u8; 8];
        assert_eq!(decode("009C61O)~M", &mut raw), Some(8));
        assert_eq!(raw, [0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn bad_text_is_refused() {
        let mut raw = [0u8; 8];
        assert_eq!(decode("009C6", &mut raw[..3]), None); // out too small
        assert_eq!(decode("009C", &mut raw), None); // not whole groups
        assert_eq!(decode("009C\"", &mut raw), None); // '"' is not in it
        assert_eq!(decode("|NsC1", &mut raw), None); // 2^32
        assert_eq!(decode("~~~~~", &mut raw), None); // far above
        assert_eq!(decode("|NsC0", &mut raw), Some(4));
        assert_eq!(raw[..4], [0xff; 4]);
        let mut out = [0u8; 10];
        assert_eq!(encode(&[1, 2, 3], &mut out), None);
    }
}
