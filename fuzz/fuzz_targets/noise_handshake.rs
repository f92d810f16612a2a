//! Protocol v2's Noise handshake messages (tether-core's `noise` module) on
//! arbitrary input, in the states of docs/PROTOCOL.md's v2 draft vectors.
//!
//! Input: `[mode] message...`. Modes:
//! 0. an NN responder reads the message as message 1, then answers;
//! 1. an NK responder (the vectors' server key) reads it as message 1;
//! 2. an NN initiator that sent the vectors' message 1 reads it as
//!    message 2;
//! 3. likewise for NK;
//! 4. after the vectors' NK handshake, the device opens it as a sealed
//!    frame body (seq || ciphertext || tag, nonce = seq).
//!
//! Beyond "no panic": a failed read leaves the message as it was (it is
//! decrypted in place); NN's message 1 is accepted exactly when it is 32 to
//! 65535 bytes, its payload the bytes after the key; everywhere else only the
//! genuine bytes of the vectors are accepted (anything else would be a
//! forgery), with their genuine payloads.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tether_core::noise::{Initiator, MAX_MESSAGE_LEN, NoiseError, Responder, StaticKeypair};
use tether_core::rand_core::{TryCryptoRng, TryRng};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The v2 draft vectors (docs/PROTOCOL.md v2.8), without frame headers.
struct Vectors {
    nk_msg1: Vec<u8>,
    nk_msg2: Vec<u8>,
    nk_welcome: Vec<u8>,
    nn_msg2: Vec<u8>,
    hello: Vec<u8>,
    challenge_nk: Vec<u8>,
}

static V: LazyLock<Vectors> = LazyLock::new(|| {
    Vectors {
    nk_msg1: unhex("0201358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254dd1dd0ea0faa292d0dc71d4189680d1e33bd07feeed77782a1a88983c8e48bba87a023923e080a9954a853d908a5460cd7ea37c3a74eb93097c55a8ae1b1f02962c347")[2..].to_vec(),
    nk_msg2: unhex("79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a041374329f4b7658aac983201250fd873475cfaba874f747cbe6f2e58fa991b6617d058a99bd74a4bdd08963a120d99d722a591f4e6b76499494b44b01b343e0c7a6f6900b030245d1cd65d2ff784fdb04e8ab45a2b239f03656a29d356c648aa7778e275431be0810"),
    nk_welcome: unhex("000000000000000012a47aea09af5105ab38666f17cfc4d370db436d7c118e0e615489e3c1d7ad3acfb19ff816eb461b60a218aa82ca8250a92904b768d19821dde35759e99510671af498a6"),
    nn_msg2: unhex("79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a49da8080bf903935250896ba2bfc6bd6"),
    hello: unhex("00020380042d703d7465746865722d6e6f6973652c2c6e3d757365722c723d724f70724e476677456265525767624e456b714f"),
    challenge_nk: unhex("010056723d724f70724e476677456265525767624e456b714f25687659447057556132526154434166757846496c6a29684e6c46246b302c733d5732325a614a30534e5937736f457355456a623667513d3d2c693d34303936"),
}
});

const fn seq32(start: u8) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = start + i as u8;
        i += 1;
    }
    out
}

static SERVER_KEY: LazyLock<StaticKeypair> =
    LazyLock::new(|| StaticKeypair::from_secret(seq32(0x00)));

/// Hands out a fixed ephemeral key.
struct Fixed([u8; 32]);

impl TryRng for Fixed {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(0)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(0)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        dest.copy_from_slice(&self.0[..dest.len()]);
        Ok(())
    }
}
impl TryCryptoRng for Fixed {}

fn prologue(pattern: u8) -> [u8; 10] {
    let mut p = *b"tether/2\x02\x00";
    p[9] = pattern;
    p
}

fn initiator(nk: bool) -> tether_core::noise::AwaitingResponse {
    let start = if nk {
        Initiator::nk(&prologue(1), SERVER_KEY.public())
    } else {
        Initiator::nn(&prologue(0))
    };
    let payload = if nk { &V.hello[..] } else { &[] };
    let mut out = [0u8; 256];
    let (state, msg) = start
        .write_message(payload, &mut out, &mut Fixed(seq32(0x20)))
        .unwrap();
    if nk {
        assert_eq!(msg, &V.nk_msg1[..]);
    }
    state
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let mut msg = input.to_vec();
    match mode % 5 {
        0 => match Responder::nn(&prologue(0)).read_message(&mut msg) {
            Ok((resp, payload)) => {
                assert!((32..=MAX_MESSAGE_LEN).contains(&input.len()));
                assert_eq!(payload, &input[32..]);
                let mut out = vec![0u8; 48 + 16];
                let (_, m2) = resp
                    .write_message(b"x", &mut out, &mut Fixed(seq32(0x40)))
                    .unwrap();
                assert_eq!(m2.len(), 32 + 1 + 16);
            }
            Err(e) => {
                assert!(input.len() < 32 || input.len() > MAX_MESSAGE_LEN, "{e:?}");
                assert_eq!(msg, input);
            }
        },
        1 => match Responder::nk(&prologue(1), &SERVER_KEY).read_message(&mut msg) {
            Ok((_, payload)) => {
                assert_eq!(input, &V.nk_msg1[..], "a forged NK message 1 was accepted");
                assert_eq!(payload, &V.hello[..]);
            }
            Err(_) => assert_eq!(msg, input),
        },
        2 | 3 => {
            let nk = mode % 5 == 3;
            let genuine = if nk { &V.nk_msg2 } else { &V.nn_msg2 };
            match initiator(nk).read_message(&mut msg) {
                Ok((_, payload)) => {
                    assert_eq!(input, &genuine[..], "a forged message 2 was accepted");
                    let want: &[u8] = if nk { &V.challenge_nk } else { &[] };
                    assert_eq!(payload, want);
                }
                Err(e) => {
                    assert!(matches!(
                        e,
                        NoiseError::Decrypt
                            | NoiseError::TooShort { .. }
                            | NoiseError::TooLong { .. }
                    ));
                    assert_eq!(msg, input);
                }
            }
        }
        _ => {
            let mut m2 = V.nk_msg2.clone();
            let (mut t, _) = initiator(true).read_message(&mut m2).unwrap();
            if msg.len() < 8 {
                return;
            }
            let seq = u64::from_be_bytes(msg[..8].try_into().unwrap());
            t.recv.set_nonce(seq);
            match t.recv.decrypt_with_ad(&[], &mut msg[8..]) {
                Ok(plain) => {
                    assert_eq!(input, &V.nk_welcome[..], "a forged frame was accepted");
                    assert_eq!(plain[0], 3, "the Welcome");
                    assert_eq!(t.recv.nonce(), 1);
                }
                Err(e) => {
                    assert!(matches!(
                        e,
                        NoiseError::Decrypt | NoiseError::NonceExhausted
                    ));
                    assert_eq!(msg, input);
                    assert_eq!(t.recv.nonce(), seq, "a failure uses no nonce");
                }
            }
        }
    }
});
