//! The Noise handshakes of protocol v2 (`tether_core::noise`), both ends in
//! one process: round trips, tampering, replay, wrong keys, limits. The
//! published vectors are in noise_vectors.rs; the independent peer (Python's
//! noiseprotocol) in tests/tests/interop.rs.

use proptest::prelude::*;
use tether_core::noise::{
    Initiator, MAX_MESSAGE_LEN, NoiseError, Pattern, Responder, StaticKeypair, TAG_LEN, Transport,
};
use tether_test_support::TestRng;

const PROLOGUE: &[u8] = b"tether/2 test";

fn server_key(seed: u64) -> StaticKeypair {
    StaticKeypair::generate(&mut TestRng(seed))
}

fn initiator(pattern: Pattern, pinned: &StaticKeypair) -> Initiator {
    match pattern {
        Pattern::Nn => Initiator::nn(PROLOGUE),
        Pattern::Nk => Initiator::nk(PROLOGUE, pinned.public()),
    }
}

fn responder(pattern: Pattern, key: &StaticKeypair) -> Responder {
    match pattern {
        Pattern::Nn => Responder::nn(PROLOGUE),
        Pattern::Nk => Responder::nk(PROLOGUE, key),
    }
}

/// The two handshake messages of one run, as they crossed the wire.
struct Recorded {
    msg1: Vec<u8>,
    msg2: Vec<u8>,
}

/// Runs a whole handshake; returns (initiator, responder, messages).
fn handshake(
    pattern: Pattern,
    seed: u64,
    p1: &[u8],
    p2: &[u8],
) -> (Transport, Transport, Recorded) {
    let key = server_key(1);
    let mut rng = TestRng(seed);
    let mut out = vec![0u8; MAX_MESSAGE_LEN];
    let (init, m1) = initiator(pattern, &key)
        .write_message(p1, &mut out, &mut rng)
        .unwrap();
    let msg1 = m1.to_vec();
    let mut buf = msg1.clone();
    let (resp, payload) = responder(pattern, &key).read_message(&mut buf).unwrap();
    assert_eq!(payload, p1);
    let (resp, m2) = resp.write_message(p2, &mut out, &mut rng).unwrap();
    let msg2 = m2.to_vec();
    let mut buf = msg2.clone();
    let (init, payload) = init.read_message(&mut buf).unwrap();
    assert_eq!(payload, p2);
    (init, resp, Recorded { msg1, msg2 })
}

/// Encrypts `plain` with `from`'s sending state.
fn seal(from: &mut Transport, plain: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; plain.len() + TAG_LEN];
    buf[..plain.len()].copy_from_slice(plain);
    let n = from
        .send
        .encrypt_with_ad(&[], &mut buf, plain.len())
        .unwrap();
    assert_eq!(n, buf.len());
    buf
}

fn open(to: &mut Transport, sealed: &[u8]) -> Result<Vec<u8>, NoiseError> {
    let mut buf = sealed.to_vec();
    to.recv.decrypt_with_ad(&[], &mut buf).map(|p| p.to_vec())
}

fn patterns() -> impl Strategy<Value = Pattern> {
    prop_oneof![Just(Pattern::Nn), Just(Pattern::Nk)]
}

proptest! {
    #[test]
    fn round_trip(
        pattern in patterns(),
        seed in any::<u64>(),
        p1 in proptest::collection::vec(any::<u8>(), 0..300),
        p2 in proptest::collection::vec(any::<u8>(), 0..300),
        frames in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200)), 0..8),
    ) {
        let (mut init, mut resp, rec) = handshake(pattern, seed, &p1, &p2);
        prop_assert_eq!(init.handshake_hash(), resp.handshake_hash());
        prop_assert_eq!(rec.msg1.len(), pattern.message_len(0, p1.len()));
        prop_assert_eq!(rec.msg2.len(), pattern.message_len(1, p2.len()));
        // NN's first payload is in the clear; every other one is not.
        if pattern == Pattern::Nn {
            prop_assert_eq!(&rec.msg1[32..], &p1[..]);
        } else if p1.len() >= 8 {
            prop_assert!(!rec.msg1.windows(p1.len()).any(|w| w == &p1[..]));
        }
        for (from_initiator, plain) in &frames {
            let (from, to) = if *from_initiator { (&mut init, &mut resp) } else { (&mut resp, &mut init) };
            let sealed = seal(from, plain);
            prop_assert_eq!(open(to, &sealed).unwrap(), plain.clone());
        }
        prop_assert_eq!(init.send.nonce(), resp.recv.nonce());
        prop_assert_eq!(resp.send.nonce(), init.recv.nonce());
    }

    /// A flipped bit anywhere in a handshake message fails the handshake:
    /// message 1 of NK at the responder, NN's message 1 (clear text, but
    /// hashed) and message 2 at the initiator.
    #[test]
    fn flipped_bit_in_handshake_fails(pattern in patterns(), which in 0..2usize, at in any::<prop::sample::Index>(), bit in 0..8u8) {
        let key = server_key(1);
        let mut rng = TestRng(7);
        let mut out = vec![0u8; 1024];
        let (init, m1) = initiator(pattern, &key).write_message(b"hello", &mut out, &mut rng).unwrap();
        let mut msg1 = m1.to_vec();
        if which == 0 {
            let i = at.index(msg1.len());
            msg1[i] ^= 1 << bit;
        }
        let read = responder(pattern, &key).read_message(&mut msg1);
        let resp = match (pattern, which, read) {
            (Pattern::Nk, 0, Err(e)) => {
                prop_assert_eq!(e, NoiseError::Decrypt);
                return Ok(());
            }
            (Pattern::Nk, 0, Ok(_)) => return Err(TestCaseError::fail("altered NK message 1 accepted")),
            (_, _, read) => read.unwrap().0,
        };
        let (_, m2) = resp.write_message(b"challenge", &mut out, &mut rng).unwrap();
        let mut msg2 = m2.to_vec();
        if which == 1 {
            let i = at.index(msg2.len());
            msg2[i] ^= 1 << bit;
        }
        prop_assert_eq!(init.read_message(&mut msg2).err(), Some(NoiseError::Decrypt));
    }

    /// A flipped bit anywhere in a transport message fails it, and leaves
    /// the receiver able to read the authentic message.
    #[test]
    fn flipped_bit_in_transport_fails(pattern in patterns(), plain in proptest::collection::vec(any::<u8>(), 0..100), at in any::<prop::sample::Index>(), bit in 0..8u8) {
        let (mut init, mut resp, _) = handshake(pattern, 3, b"", b"");
        let sealed = seal(&mut init, &plain);
        let mut bad = sealed.clone();
        let i = at.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert_eq!(open(&mut resp, &bad), Err(NoiseError::Decrypt));
        prop_assert_eq!(resp.recv.nonce(), 0);
        prop_assert_eq!(open(&mut resp, &sealed).unwrap(), plain);
    }
}

#[test]
fn replayed_or_reordered_transport_message_fails() {
    for pattern in [Pattern::Nn, Pattern::Nk] {
        let (mut init, mut resp, _) = handshake(pattern, 5, b"", b"");
        let first = seal(&mut init, b"call 1");
        let second = seal(&mut init, b"call 2");
        // Out of order: the second before the first.
        assert_eq!(open(&mut resp, &second), Err(NoiseError::Decrypt));
        assert_eq!(open(&mut resp, &first).unwrap(), b"call 1");
        // Replayed.
        assert_eq!(open(&mut resp, &first), Err(NoiseError::Decrypt));
        assert_eq!(open(&mut resp, &second).unwrap(), b"call 2");
        // A message sent back in the other direction (reflected).
        let reply = seal(&mut resp, b"reply");
        assert_eq!(open(&mut resp, &reply), Err(NoiseError::Decrypt));
        assert_eq!(open(&mut init, &reply).unwrap(), b"reply");
    }
}

/// Noise cannot stop a replayed message 1 (section 7.7: NK's first payload
/// is "vulnerable to replay"), but the replayed handshake yields new keys:
/// nothing recorded from the original session decrypts in it, and the
/// original initiator's message 2 check fails against the new response.
#[test]
fn replayed_handshake_gives_different_keys() {
    for pattern in [Pattern::Nn, Pattern::Nk] {
        let key = server_key(1);
        let (mut init, _, rec) = handshake(pattern, 11, b"hello", b"challenge");
        let recorded = seal(&mut init, b"proof");

        let mut msg1 = rec.msg1.clone();
        let (again, payload) = responder(pattern, &key).read_message(&mut msg1).unwrap();
        assert_eq!(payload, b"hello", "{pattern}: message 1 replays");
        let mut out = [0u8; 128];
        let (mut again, m2) = again
            .write_message(b"challenge", &mut out, &mut TestRng(99))
            .unwrap();
        assert_ne!(m2, &rec.msg2[..], "{pattern}: a fresh responder ephemeral");
        assert_eq!(open(&mut again, &recorded), Err(NoiseError::Decrypt));

        // A recorded message 2 replayed to a new initiator fails.
        let (fresh, _) = initiator(pattern, &key)
            .write_message(b"hello", &mut out, &mut TestRng(12))
            .unwrap();
        let mut msg2 = rec.msg2.clone();
        assert_eq!(
            fresh.read_message(&mut msg2).err(),
            Some(NoiseError::Decrypt)
        );
    }
}

#[test]
fn nk_with_a_wrong_pinned_key_fails_at_the_responder() {
    let (real, wrong) = (server_key(1), server_key(2));
    let mut out = [0u8; 128];
    let (_, m1) = Initiator::nk(PROLOGUE, wrong.public())
        .write_message(b"hello alice", &mut out, &mut TestRng(3))
        .unwrap();
    let mut msg1 = m1.to_vec();
    assert_eq!(
        Responder::nk(PROLOGUE, &real).read_message(&mut msg1).err(),
        Some(NoiseError::Decrypt)
    );
}

/// An impostor responder without the pinned key cannot produce a message 2
/// the initiator accepts, even if it learned message 1's payload.
#[test]
fn nk_impostor_responder_fails_at_the_initiator() {
    let (real, impostor) = (server_key(1), server_key(2));
    let mut out = [0u8; 128];
    let (init, m1) = Initiator::nk(PROLOGUE, real.public())
        .write_message(b"hello", &mut out, &mut TestRng(3))
        .unwrap();
    let mut msg1 = m1.to_vec();
    // The impostor runs NK with its own key over the same bytes: message 1
    // does not decrypt, so it cannot even build a matching state. Its best
    // is an NN-style answer, which the initiator refuses.
    assert!(
        Responder::nk(PROLOGUE, &impostor)
            .read_message(&mut msg1.clone())
            .is_err()
    );
    let (fake, _) = Responder::nn(PROLOGUE).read_message(&mut msg1).unwrap();
    let (_, m2) = fake.write_message(b"", &mut out, &mut TestRng(4)).unwrap();
    let mut msg2 = m2.to_vec();
    assert_eq!(
        init.read_message(&mut msg2).err(),
        Some(NoiseError::Decrypt)
    );
}

#[test]
fn prologue_mismatch_fails() {
    let key = server_key(1);
    let mut out = [0u8; 128];
    // NK: message 1 already fails.
    let (_, m1) = Initiator::nk(b"tether/2 a", key.public())
        .write_message(b"", &mut out, &mut TestRng(1))
        .unwrap();
    let mut msg1 = m1.to_vec();
    assert_eq!(
        Responder::nk(b"tether/2 b", &key)
            .read_message(&mut msg1)
            .err(),
        Some(NoiseError::Decrypt)
    );
    // NN: message 2 does.
    let (init, m1) = Initiator::nn(b"tether/2 a")
        .write_message(b"", &mut out, &mut TestRng(1))
        .unwrap();
    let mut msg1 = m1.to_vec();
    let (resp, _) = Responder::nn(b"tether/2 b")
        .read_message(&mut msg1)
        .unwrap();
    let (_, m2) = resp.write_message(b"", &mut out, &mut TestRng(2)).unwrap();
    let mut msg2 = m2.to_vec();
    assert_eq!(
        init.read_message(&mut msg2).err(),
        Some(NoiseError::Decrypt)
    );
}

/// Key rotation: a server holding a current and a previous key tries each;
/// a failed attempt leaves message 1 intact for the next.
#[test]
fn responder_tries_current_then_previous_key() {
    let (current, previous) = (server_key(10), server_key(11));
    let mut out = [0u8; 128];
    let (init, m1) = Initiator::nk(PROLOGUE, previous.public())
        .write_message(b"hello", &mut out, &mut TestRng(1))
        .unwrap();
    let mut msg1 = m1.to_vec();
    let original = msg1.clone();
    let mut accepted = None;
    for (i, key) in [&current, &previous].into_iter().enumerate() {
        match Responder::nk(PROLOGUE, key).read_message(&mut msg1) {
            Ok((resp, payload)) => {
                assert_eq!(payload, b"hello");
                accepted = Some((i, resp));
                break;
            }
            Err(e) => {
                assert_eq!(e, NoiseError::Decrypt);
                assert_eq!(msg1, original, "a failed read leaves the message as it was");
            }
        }
    }
    let (i, resp) = accepted.expect("the previous key decrypts");
    assert_eq!(i, 1);
    let (_, m2) = resp
        .write_message(b"ok", &mut out, &mut TestRng(2))
        .unwrap();
    let mut msg2 = m2.to_vec();
    assert_eq!(init.read_message(&mut msg2).unwrap().1, b"ok");
}

#[test]
fn short_long_and_small_buffers_are_refused() {
    let key = server_key(1);
    for (pattern, min1) in [(Pattern::Nn, 32), (Pattern::Nk, 48)] {
        let mut short = vec![0u8; min1 - 1];
        assert_eq!(
            responder(pattern, &key).read_message(&mut short).err(),
            Some(NoiseError::TooShort {
                len: min1 - 1,
                min: min1
            })
        );
        let mut long = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert_eq!(
            responder(pattern, &key).read_message(&mut long).err(),
            Some(NoiseError::TooLong {
                len: MAX_MESSAGE_LEN + 1,
                max: MAX_MESSAGE_LEN
            })
        );
        let mut out = [0u8; 40];
        assert_eq!(
            initiator(pattern, &key)
                .write_message(&[1; 20], &mut out, &mut TestRng(1))
                .err(),
            Some(NoiseError::BufferTooSmall {
                needed: min1 + 20,
                available: 40
            })
        );
        let mut out = vec![0u8; MAX_MESSAGE_LEN + 100];
        let too_big = vec![0u8; MAX_MESSAGE_LEN - min1 + 1];
        assert_eq!(
            initiator(pattern, &key)
                .write_message(&too_big, &mut out, &mut TestRng(1))
                .err(),
            Some(NoiseError::TooLong {
                len: MAX_MESSAGE_LEN + 1,
                max: MAX_MESSAGE_LEN
            })
        );
        // The largest payload fits exactly.
        let (_, m) = initiator(pattern, &key)
            .write_message(&too_big[1..], &mut out, &mut TestRng(1))
            .unwrap();
        assert_eq!(m.len(), MAX_MESSAGE_LEN);
    }
    // Message 2 is 48 bytes at least in both patterns.
    let mut out = [0u8; 32];
    let (init, m1) = Initiator::nn(PROLOGUE)
        .write_message(b"", &mut out, &mut TestRng(1))
        .unwrap();
    assert_eq!(m1.len(), 32);
    let mut short = [0u8; 47];
    assert_eq!(
        init.read_message(&mut short).err(),
        Some(NoiseError::TooShort { len: 47, min: 48 })
    );
}

#[test]
fn transport_errors() {
    let (mut init, mut resp, _) = handshake(Pattern::Nk, 1, b"", b"");
    // No room for the tag.
    let mut buf = [0u8; 20];
    assert_eq!(
        init.send.encrypt_with_ad(&[], &mut buf, 5),
        Err(NoiseError::BufferTooSmall {
            needed: 21,
            available: 20
        })
    );
    assert_eq!(init.send.nonce(), 0, "a failed encryption uses no nonce");
    // Shorter than a tag.
    assert_eq!(
        resp.recv.decrypt_with_ad(&[], &mut [0u8; 15]).err(),
        Some(NoiseError::Decrypt)
    );
    // 2^64 - 1 is reserved: the last usable nonce is 2^64 - 2.
    init.send.set_nonce(u64::MAX - 1);
    resp.recv.set_nonce(u64::MAX - 1);
    let sealed = seal(&mut init, b"last");
    assert_eq!(open(&mut resp, &sealed).unwrap(), b"last");
    let mut buf = [0u8; 32];
    assert_eq!(
        init.send.encrypt_with_ad(&[], &mut buf, 4),
        Err(NoiseError::NonceExhausted)
    );
    assert_eq!(
        resp.recv.decrypt_with_ad(&[], &mut buf).err(),
        Some(NoiseError::NonceExhausted)
    );
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let key = StaticKeypair::from_secret([0x42; 32]);
    let text = format!("{key:?}");
    assert!(!text.contains("66, 66"), "{text}");
    let (init, resp, _) = handshake(Pattern::Nk, 1, b"", b"");
    let text = format!("{init:?} {resp:?}");
    assert!(
        text.contains("<redacted>") && !text.contains("k: Some(["),
        "{text}"
    );
    assert_eq!(
        format!("{:?}", Initiator::nk(PROLOGUE, key.public())),
        "Initiator { pattern: Nk, .. }"
    );
}

#[test]
fn public_key_is_x25519_of_the_base_point() {
    // RFC 7748 section 6.1: Alice's key pair.
    let alice = StaticKeypair::from_secret(hex32(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    ));
    assert_eq!(
        alice.public(),
        &hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    );
}

fn hex32(s: &str) -> [u8; 32] {
    core::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
}

/// What a leaked server key exposes of a recorded NK session (PROTOCOL.md
/// v2.6): message 1's payload (encrypted to the static key alone), and
/// nothing after it: the keys from message 2 on need an ephemeral private
/// key, and the attacker's own continuation of the handshake yields others.
#[test]
fn leaked_server_key_exposes_only_message_1() {
    let server = server_key(1);
    let (mut device, _, rec) = handshake(Pattern::Nk, 21, b"hello alice", b"challenge");
    let recorded_frame = seal(&mut device, b"proof");

    // Later, with the server's private key: message 1 opens.
    let leaked = StaticKeypair::from_secret(*server.secret());
    let mut msg1 = rec.msg1.clone();
    let (attacker, payload) = Responder::nk(PROLOGUE, &leaked)
        .read_message(&mut msg1)
        .unwrap();
    assert_eq!(payload, b"hello alice");

    // Message 2 does not: reading it needs the device's ephemeral key; the
    // attacker can only answer message 1 himself, and his keys open nothing
    // that was recorded.
    let mut out = [0u8; 128];
    let (mut attacker, _) = attacker
        .write_message(b"", &mut out, &mut TestRng(77))
        .unwrap();
    assert_eq!(
        open(&mut attacker, &recorded_frame),
        Err(NoiseError::Decrypt)
    );
    let mut msg2 = rec.msg2.clone();
    let without_ephemeral = Initiator::nk(PROLOGUE, leaked.public())
        .write_message(b"hello alice", &mut out, &mut TestRng(78))
        .unwrap()
        .0;
    assert_eq!(
        without_ephemeral.read_message(&mut msg2).err(),
        Some(NoiseError::Decrypt)
    );
}
