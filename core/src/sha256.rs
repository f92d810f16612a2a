//! SHA-256, HMAC-SHA-256 and PBKDF2-HMAC-SHA256: one non-generic copy of
//! each over `sha2`'s compression function.
//!
//! The `hmac`/`digest` generics are instantiated and inlined separately at
//! every call site (PBKDF2, the SCRAM keys, the session tags), which costs a
//! device kilobytes of flash; these few functions are shared instead. Only
//! the message padding and the HMAC construction (RFC 2104) live here; the
//! compression is `sha2::compress256`. Nothing branches on the data's
//! content, only on lengths. Checked against `sha2`, `hmac` and `pbkdf2` in
//! the tests.

/// SHA-256's initial hash value (FIPS 180-4 section 5.3.3).
const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Bytes in a SHA-256 block.
const BLOCK: usize = 64;

/// A SHA-256 computation.
#[derive(Clone)]
pub(crate) struct Sha256 {
    state: [u32; 8],
    block: [u8; BLOCK],
    /// Bytes hashed so far.
    len: u64,
}

impl Sha256 {
    pub(crate) const fn new() -> Self {
        Self {
            state: H0,
            block: [0; BLOCK],
            len: 0,
        }
    }

    #[inline(never)]
    pub(crate) fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let at = (self.len % BLOCK as u64) as usize;
            let free = self.block.get_mut(at..).unwrap_or_default();
            let n = free.len().min(data.len());
            // (Checked splits, no indexing: no panic path is flashed.)
            let (head, rest) = data.split_at_checked(n).unwrap_or_default();
            if let Some(dest) = free.get_mut(..n) {
                dest.copy_from_slice(head);
            }
            self.len = self.len.wrapping_add(n as u64);
            data = rest;
            if at + n == BLOCK {
                self.compress();
            }
        }
    }

    fn compress(&mut self) {
        sha2::block_api::compress256(&mut self.state, core::slice::from_ref(&self.block));
    }

    /// Pads, and returns the digest.
    #[inline(never)]
    pub(crate) fn finish(mut self) -> [u8; 32] {
        // `update` compresses a full block at once: `at` < 64.
        let at = (self.len % BLOCK as u64) as usize;
        self.block[at] = 0x80;
        self.block[at + 1..].fill(0);
        if at >= BLOCK - 8 {
            self.compress();
            self.block.fill(0);
        }
        self.block[BLOCK - 8..].copy_from_slice(&self.len.wrapping_mul(8).to_be_bytes());
        self.compress();
        digest(&self.state)
    }
}

/// The digest of a final state.
fn digest(state: &[u32; 8]) -> [u8; 32] {
    core::array::from_fn(|i| (state[i / 4] >> (24 - 8 * (i % 4))) as u8)
}

/// SHA-256 of the concatenated `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finish()
}

/// An HMAC-SHA-256 computation (RFC 2104). Cloning it after [`Self::new`]
/// reuses the keyed state: two compressions per short message.
#[derive(Clone)]
pub(crate) struct HmacSha256 {
    inner: Sha256,
    /// The outer hash's state after its key block (nothing buffered).
    outer: [u32; 8],
}

impl HmacSha256 {
    /// Keys a MAC (keys longer than a block are hashed first).
    #[inline(never)]
    pub(crate) fn new(key: &[u8]) -> Self {
        let mut k = [0u8; BLOCK];
        if key.len() > BLOCK {
            if let Some(digest) = k.first_chunk_mut::<32>() {
                *digest = sha256(&[key]);
            }
        } else if let Some(dest) = k.get_mut(..key.len()) {
            dest.copy_from_slice(key);
        }
        let keyed = |pad: u8| {
            let mut block = k;
            for b in &mut block {
                *b ^= pad;
            }
            let mut h = Sha256::new();
            h.update(&block);
            h
        };
        Self {
            inner: keyed(0x36),
            outer: keyed(0x5c).state,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    #[inline(never)]
    pub(crate) fn finish(self) -> [u8; 32] {
        let mut outer = Sha256 {
            state: self.outer,
            block: [0; BLOCK],
            len: BLOCK as u64,
        };
        outer.update(&self.inner.finish());
        outer.finish()
    }
}

/// HMAC-SHA-256 of the concatenated `parts` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = HmacSha256::new(key);
    for p in parts {
        h.update(p);
    }
    h.finish()
}

/// PBKDF2-HMAC-SHA256 (RFC 8018) with a 32-byte output (one block), run
/// in steps: a device can derive its keys a few iterations at a time and do
/// other work in between.
#[derive(Clone)]
pub(crate) struct Pbkdf2Sha256 {
    prf: HmacSha256,
    u: [u8; 32],
    out: [u8; 32],
    /// Iterations still to run.
    left: u32,
}

impl Pbkdf2Sha256 {
    /// Runs the first iteration.
    pub(crate) fn new(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let prf = HmacSha256::new(password);
        let mut h = prf.clone();
        h.update(salt);
        h.update(&1u32.to_be_bytes());
        let u = h.finish();
        Self {
            prf,
            u,
            out: u,
            left: iterations.saturating_sub(1),
        }
    }

    /// Runs at most `n` more iterations; true when none is left.
    #[inline(never)]
    pub(crate) fn run(&mut self, n: u32) -> bool {
        let n = n.min(self.left);
        for _ in 0..n {
            let mut h = self.prf.clone();
            h.update(&self.u);
            self.u = h.finish();
            for (o, x) in self.out.iter_mut().zip(self.u) {
                *o ^= x;
            }
        }
        self.left -= n;
        self.left == 0
    }

    /// Iterations still to run.
    pub(crate) fn left(&self) -> u32 {
        self.left
    }

    /// The output, once [`run`](Self::run) returned true.
    pub(crate) fn output(&self) -> [u8; 32] {
        self.out
    }
}

/// PBKDF2-HMAC-SHA256 (RFC 8018) with a 32-byte output: one block, in one
/// run. (Its own loop rather than [`Pbkdf2Sha256`]'s: a device that only
/// ever derives inside the login flashes this one alone, 300 bytes less.)
pub(crate) fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let prf = HmacSha256::new(password);
    let mut h = prf.clone();
    h.update(salt);
    h.update(&1u32.to_be_bytes());
    let mut u = h.finish();
    let mut out = u;
    for _ in 1..iterations {
        let mut h = prf.clone();
        h.update(&u);
        u = h.finish();
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{KeyInit, Mac};
    use proptest::prelude::*;
    use sha2::Digest;

    fn hex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (o, c) in out.iter_mut().zip(s.as_bytes().chunks(2)) {
            *o = u8::from_str_radix(core::str::from_utf8(c).unwrap(), 16).unwrap();
        }
        out
    }

    #[test]
    fn known_answers() {
        // FIPS 180-4 examples.
        assert_eq!(
            sha256(&[b"abc"]),
            hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            sha256(&[b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"]),
            hex("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        );
        // RFC 4231 test cases 2 and 6 (short key; key longer than a block).
        assert_eq!(
            hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        assert_eq!(
            hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            ),
            hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
        // RFC 7914 section 11 (PBKDF2-HMAC-SHA256, first 32 bytes).
        assert_eq!(
            pbkdf2_sha256(b"passwd", b"salt", 1),
            hex("55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc")
        );
    }

    proptest! {
        #[test]
        fn matches_rustcrypto(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            key in proptest::collection::vec(any::<u8>(), 0..150),
            split in 0usize..300,
            iterations in 1u32..5,
        ) {
            let split = split.min(data.len());
            let (a, b) = data.split_at(split);
            prop_assert_eq!(sha256(&[a, b]), <[u8; 32]>::from(sha2::Sha256::digest(&data)));
            let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
            mac.update(&data);
            let want: [u8; 32] = mac.finalize().into_bytes().into();
            prop_assert_eq!(hmac_sha256(&key, &[a, b]), want);
            let mut want = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<sha2::Sha256>(&key, &data, iterations, &mut want);
            prop_assert_eq!(pbkdf2_sha256(&key, &data, iterations), want);
        }
    }
}
