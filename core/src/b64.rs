//! Standard base64 with padding (RFC 4648 section 4), as SCRAM and Django
//! use it: strict (padding required, no stray bits, no whitespace), and
//! constant-time in the data (no table lookups or branches on secret bytes),
//! since Django's hash field is a SaltedPassword. One small loop each way
//! instead of a generic crate: a device carries this code in its flash
//! (measured against `base64ct`, the well-kept constant-time crate, in
//! mcu/nucleo-f429zi/README.md).

/// The base64 character of a 6-bit value (branch-free).
fn encode_6bits(v: u32) -> u8 {
    let s = v as i32;
    let mut diff = 0x41; // 'A'..='Z' for 0..=25
    diff += ((25 - s) >> 8) & 6; // 'a'..='z' for 26..=51
    diff += ((51 - s) >> 8) & -75; // '0'..='9' for 52..=61
    diff += ((61 - s) >> 8) & -15; // '+' for 62
    diff += ((62 - s) >> 8) & 3; // '/' for 63
    (s + diff) as u8
}

/// The 6-bit value of a base64 character, or a negative number for any
/// other byte (branch-free).
fn decode_6bits(c: u8) -> i32 {
    let c = c as i32;
    // Each line adds `value + 1` when `c` is in the range, 0 otherwise.
    let in_range = |lo: i32, hi: i32| ((lo - 1 - c) & (c - hi - 1)) >> 8;
    let mut v = -1;
    v += in_range(0x41, 0x5a) & (c - 0x41 + 1);
    v += in_range(0x61, 0x7a) & (c - 0x61 + 26 + 1);
    v += in_range(0x30, 0x39) & (c - 0x30 + 52 + 1);
    v += in_range(0x2b, 0x2b) & (62 + 1);
    v += in_range(0x2f, 0x2f) & (63 + 1);
    v
}

/// Encodes `data` into the start of `out`; `None` when `out` is too small.
pub(crate) fn encode<'o>(data: &[u8], out: &'o mut [u8]) -> Option<&'o str> {
    let len = data.len().div_ceil(3) * 4;
    let out = out.get_mut(..len)?;
    for (chunk, text) in data.chunks(3).zip(out.chunks_exact_mut(4)) {
        let mut group = [0u8; 4];
        group[1..=chunk.len()].copy_from_slice(chunk);
        let bits = u32::from_be_bytes(group);
        for (i, c) in text.iter_mut().enumerate() {
            *c = if i > chunk.len() {
                b'='
            } else {
                encode_6bits((bits >> (18 - 6 * i)) & 63)
            };
        }
    }
    core::str::from_utf8(out).ok()
}

/// Decodes `text` into the start of `out` and returns the decoded length;
/// `None` when `text` is not canonical padded base64 or `out` is too small.
pub(crate) fn decode(text: &str, out: &mut [u8]) -> Option<usize> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let pad = text
        .iter()
        .rev()
        .take(2)
        .take_while(|&&c| c == b'=')
        .count();
    let len = text.len() / 4 * 3 - pad;
    let out = out.get_mut(..len)?;
    let (mut acc, mut bits, mut bad) = (0u32, 0u32, 0i32);
    // (Iterators, not indices: no bounds checks and no panic paths.)
    let mut dest = out.iter_mut();
    for &c in text.get(..text.len() - pad).unwrap_or_default() {
        let v = decode_6bits(c);
        bad |= v;
        acc = (acc << 6) | (v as u32 & 63);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            if let Some(o) = dest.next() {
                *o = (acc >> bits) as u8;
            }
        }
    }
    // Canonical: the bits after the last whole byte are zero.
    (bad >= 0 && acc & ((1 << bits) - 1) == 0).then_some(len)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn every_character() {
        for v in 0..64 {
            let c = encode_6bits(v);
            assert_eq!(c, STANDARD.encode([(v as u8) << 2]).as_bytes()[0]);
            assert_eq!(decode_6bits(c), v as i32);
        }
        for c in 0..=255u8 {
            if !c.is_ascii_alphanumeric() && c != b'+' && c != b'/' {
                assert!(decode_6bits(c) < 0, "{c}");
            }
        }
    }

    #[test]
    fn rejects_what_base64_rejects() {
        let mut out = [0u8; 16];
        for bad in [
            "A", "AA", "AAA", "A===", "AB==", "ABC=", "AA=A", "====", "AA==AA==", " AAA",
        ] {
            assert_eq!(decode(bad, &mut out), None, "{bad}");
        }
        assert_eq!(decode("", &mut out), Some(0));
        assert_eq!(decode("AAAA", &mut [0u8; 2]), None);
        assert_eq!(encode(b"abc", &mut [0u8; 3]), None);
    }

    proptest! {
        #[test]
        fn encodes_like_base64(data in proptest::collection::vec(any::<u8>(), 0..70)) {
            let mut out = [0u8; 96];
            let text = encode(&data, &mut out).unwrap();
            prop_assert_eq!(text, STANDARD.encode(&data));
            let mut back = [0u8; 70];
            let n = decode(text, &mut back).unwrap();
            prop_assert_eq!(&back[..n], &data[..]);
        }

        #[test]
        fn decodes_like_base64(text in "[A-Za-z0-9+/=_ -]{0,24}") {
            let mut out = [0u8; 24];
            let ours = decode(&text, &mut out).map(|n| out[..n].to_vec());
            prop_assert_eq!(ours, STANDARD.decode(&text).ok());
        }

        #[test]
        fn decodes_near_misses_like_base64(data in proptest::collection::vec(any::<u8>(), 0..20),
                                           at in any::<usize>(), c in any::<u8>()) {
            let mut text = STANDARD.encode(&data).into_bytes();
            if !text.is_empty() {
                let i = at % text.len();
                text[i] = c;
            }
            if let Ok(text) = std::str::from_utf8(&text) {
                let mut out = [0u8; 24];
                let ours = decode(text, &mut out).map(|n| out[..n].to_vec());
                prop_assert_eq!(ours, STANDARD.decode(text).ok());
            }
        }
    }
}
