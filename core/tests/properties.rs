//! Property tests: round trips, a decoder that never panics, and tags that
//! catch every single-bit change.
mod common;

use proptest::prelude::*;
use tether_core::frame::{FrameDecoder, HEADER_LEN, encode_message};
use tether_core::message::{
    self, Challenge, ErrorCode, GoodbyeReason, Handshake, Hello, Message, Proof, Refusal,
    RefusalCode, Welcome,
};
use tether_core::scram::{Mechanism, Mechanisms};
use tether_core::session::Role;

fn goodbye() -> impl Strategy<Value = GoodbyeReason> {
    prop_oneof![
        Just(GoodbyeReason::Normal),
        Just(GoodbyeReason::Shutdown),
        Just(GoodbyeReason::IdleTimeout),
        Just(GoodbyeReason::Kicked),
        Just(GoodbyeReason::ProtocolError),
        Just(GoodbyeReason::BadTag),
        Just(GoodbyeReason::Replaced),
    ]
}

fn refusal() -> impl Strategy<Value = RefusalCode> {
    prop_oneof![
        Just(RefusalCode::Unauthorized),
        Just(RefusalCode::Unsupported),
        Just(RefusalCode::Throttled),
        Just(RefusalCode::Unavailable),
        Just(RefusalCode::Version),
        Just(RefusalCode::Protocol),
        Just(RefusalCode::Busy),
    ]
}

/// Owned parts from which messages borrow.
#[derive(Debug, Clone)]
struct Parts {
    kind: u8,
    id: u32,
    text: String,
    bytes: Vec<u8>,
    n16: u16,
    n64: u64,
    goodbye: GoodbyeReason,
    refusal: RefusalCode,
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        0u8..12,
        any::<u32>(),
        ".{0,40}",
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<u16>(),
        any::<u64>(),
        goodbye(),
        refusal(),
    )
        .prop_map(
            |(kind, id, text, bytes, n16, n64, goodbye, refusal)| Parts {
                kind,
                id,
                text,
                bytes,
                n16,
                n64,
                goodbye,
                refusal,
            },
        )
}

fn session_message(p: &Parts) -> Message<'_> {
    match p.kind % 7 {
        0 => Message::Call {
            id: p.id,
            method: &p.text,
            args: &p.bytes,
        },
        1 => Message::Reply {
            id: p.id,
            result: &p.bytes,
        },
        2 => Message::Error {
            id: p.id,
            code: ErrorCode(p.n16),
            message: &p.text,
        },
        3 => Message::Notify {
            method: &p.text,
            args: &p.bytes,
        },
        4 => Message::Ping { nonce: p.id },
        5 => Message::Pong { nonce: p.id },
        _ => Message::Goodbye { reason: p.goodbye },
    }
}

fn handshake(p: &Parts) -> Handshake<'_> {
    match p.kind % 5 {
        0 => Handshake::Hello(Hello {
            version: p.n16 as u8,
            mechanisms: Mechanisms::from_bits(p.id as u8),
            max_frame: p.n16,
            client_first: &p.text,
        }),
        1 => Handshake::Challenge(Challenge {
            mechanism: if p.id.is_multiple_of(2) {
                Mechanism::ScramSha256
            } else {
                Mechanism::ScramSha1
            },
            server_first: &p.text,
        }),
        2 => Handshake::Proof(Proof {
            client_final: &p.text,
        }),
        3 => Handshake::Welcome(Welcome {
            server_final: &p.text,
            session_id: p.n64,
            max_frame: p.n16,
            heartbeat_secs: p.id as u16,
        }),
        _ => Handshake::Refused(Refusal {
            code: p.refusal,
            retry_after_secs: p.n16,
        }),
    }
}

proptest! {
    #[test]
    fn session_messages_round_trip(p in parts()) {
        let msg = session_message(&p);
        let mut buf = [0u8; 256];
        let bytes = message::encode(&msg, &mut buf).unwrap();
        prop_assert_eq!(message::decode::<Message>(bytes).unwrap(), msg);
    }

    #[test]
    fn handshake_messages_round_trip_through_frames(p in parts()) {
        let msg = handshake(&p);
        let mut wire = [0u8; 512];
        let frame = encode_message(&msg, &mut wire, 512).unwrap();
        let mut buf = [0u8; 512];
        let mut d = FrameDecoder::new(&mut buf, 512);
        let (used, body) = d.push(frame).unwrap();
        prop_assert_eq!(used, frame.len());
        prop_assert_eq!(message::decode::<Handshake>(body.unwrap()).unwrap(), msg);
    }

    /// Arbitrary bytes in arbitrary chunks: frames or typed errors, never a
    /// panic, and every byte is accounted for.
    #[test]
    fn decoder_never_panics(input in proptest::collection::vec(any::<u8>(), 0..2048), cuts in proptest::collection::vec(1usize..64, 0..64)) {
        let mut buf = [0u8; 512];
        let mut d = FrameDecoder::new(&mut buf, 512);
        let mut rest = &input[..];
        let mut cut = cuts.iter().cycle();
        'outer: while !rest.is_empty() {
            let n = (*cut.next().unwrap_or(&usize::MAX)).min(rest.len());
            let mut chunk = &rest[..n];
            rest = &rest[n..];
            while !chunk.is_empty() {
                match d.push(chunk) {
                    Ok((used, frame)) => {
                        prop_assert!(used > 0 && used <= chunk.len());
                        if let Some(body) = frame {
                            prop_assert!(!body.is_empty() && body.len() <= 512);
                            let _ = message::decode::<Handshake>(body);
                            let _ = message::decode::<Message>(body);
                        }
                        chunk = &chunk[used..];
                    }
                    Err(_) => break 'outer,
                }
            }
        }
        let _ = d.finish();
    }

    /// Any single-bit change anywhere in a session frame body is rejected.
    #[test]
    fn every_bit_flip_is_rejected(p in parts(), bit in any::<prop::sample::Index>()) {
        let (c, s) = common::logged_in_pair(11);
        let (mut tx, _) = c.into_halves(Role::Client);
        let (_, rx) = s.into_halves(Role::Server);
        let msg = session_message(&p);
        let mut wire = [0u8; 512];
        let body = tx.seal(&msg, &mut wire, 512).unwrap()[HEADER_LEN..].to_vec();
        let i = bit.index(body.len() * 8);
        let mut bad = body.clone();
        bad[i / 8] ^= 1 << (i % 8);
        prop_assert!(rx.clone().open(&bad).is_err());
        prop_assert_eq!(rx.clone().open(&body).unwrap(), msg);
    }
}
