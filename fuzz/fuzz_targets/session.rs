//! `Opener::open` on arbitrary bodies, on authentic bodies carrying
//! arbitrary messages and sequence numbers, and on mutated genuine frames.
//!
//! The keys are those of docs/PROTOCOL.md's vectors (a real SCRAM exchange
//! run once), so genuine frames from the document are genuine here too.
//!
//! Input: records `[op] [len] payload(len)`, run against one server-side
//! opener (c2s), with a reference model of what it must answer:
//! - op % 4 == 0, authentic: body = seq || payload || tag, the tag computed
//!   here (not by tether-core); seq = next, next - 1, next + 1 or the first
//!   8 payload bytes (op / 4 % 4). The result must match the model exactly
//!   (TooShort, Replayed, OutOfOrder, Decode(..), or the decoded message),
//!   and the same body must fail as BadTag in the other direction;
//! - op % 4 == 1, raw: payload as the body: only a genuine frame with the
//!   expected seq may pass;
//! - op % 4 == 2, mutation of the last genuine body: a bit flip or a
//!   truncation must fail (BadTag / TooShort), and must not move `next`;
//! - op % 4 == 3, sealed: payload decoded as a Message and sealed by
//!   tether-core's Sealer; the body must equal the reference encoding, and
//!   opening it follows the model.
//!
//! Every open runs on a copy of the opener: a copy that fails (or opens a
//! `Goodbye`) must refuse everything after it with `SessionError::Closed`,
//! and the fuzzing goes on with the opener as it was; a sealer that sealed
//! a `Goodbye` must seal nothing more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::message::{self, Message};
use tether_core::session::{OVERHEAD, Opener, Role, SessionError, TAG_LEN};
use tether_fuzz::{K_C2S, SESSION, reference_body};

/// What opening `body` (seq || message || tag, authentic) must give.
fn model(next: u64, seq: u64, msg: &[u8]) -> Result<Message<'_>, SessionError> {
    let len = 8 + msg.len() + TAG_LEN;
    if len < OVERHEAD + 1 {
        return Err(SessionError::TooShort { len });
    }
    if seq < next {
        return Err(SessionError::Replayed {
            seq,
            expected: next,
        });
    }
    if seq > next {
        return Err(SessionError::OutOfOrder {
            seq,
            expected: next,
        });
    }
    let m = message::decode::<Message>(msg).map_err(SessionError::Decode)?;
    if seq == u64::MAX {
        return Err(SessionError::SequenceExhausted);
    }
    Ok(m)
}

/// Opens `body` on a copy of `rx` and checks the result against `want`. A
/// success moves `rx` on (unless it was a goodbye, after which the copy
/// must be closed); a failure must close the copy and leave `rx` as it was.
fn open_checked(rx: &mut Opener, body: &[u8], want: Result<Message<'_>, SessionError>) {
    let before = rx.next_seq();
    let mut probe = rx.clone();
    let got = probe.open(body);
    assert_eq!(got, want, "body {body:02x?}");
    match got {
        Ok(Message::Goodbye { .. }) => assert_closed(&mut probe, body),
        Ok(_) => {
            assert_eq!(probe.next_seq(), before + 1);
            *rx = probe;
        }
        Err(SessionError::SequenceExhausted) => {}
        Err(_) => {
            assert_eq!(probe.next_seq(), before, "a failed open moved the sequence");
            assert_closed(&mut probe, body);
        }
    }
}

/// An opener that failed, or opened a goodbye, opens nothing more.
fn assert_closed(rx: &mut Opener, body: &[u8]) {
    assert_eq!(rx.open(body), Err(SessionError::Closed));
}

fuzz_target!(|data: &[u8]| {
    let (client, server) = SESSION.clone();
    let (mut client_tx, client_rx) = client.into_halves(Role::Client);
    let (_server_tx, mut rx) = server.into_halves(Role::Server);
    let mut last_genuine: Option<Vec<u8>> = None;
    let mut out = vec![0u8; 2 + 65535];

    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (payload, after) = tail.split_at(n);
        rest = after;
        let next = rx.next_seq();
        match op % 4 {
            0 => {
                let (seq, msg) = match (op / 4) % 4 {
                    0 => (next, payload),
                    1 => (next.wrapping_sub(1), payload),
                    2 => (next.wrapping_add(1), payload),
                    _ if payload.len() >= 8 => {
                        let (s, m) = payload.split_at(8);
                        (u64::from_be_bytes(s.try_into().unwrap()), m)
                    }
                    _ => (next, payload),
                };
                let body = reference_body(&K_C2S, seq, msg);
                // The other direction's key never accepts it.
                let mut other = client_rx.clone();
                if body.len() > OVERHEAD {
                    assert_eq!(other.open(&body), Err(SessionError::BadTag));
                }
                open_checked(&mut rx, &body, model(next, seq, msg));
                last_genuine = Some(body);
            }
            1 => {
                let before = rx.next_seq();
                let mut probe = rx.clone();
                if let Ok(m) = probe.open(payload) {
                    // Only possible for a genuine frame with the right seq.
                    let seq = u64::from_be_bytes(payload[..8].try_into().unwrap());
                    assert_eq!(seq, before);
                    let msg = &payload[8..payload.len() - TAG_LEN];
                    assert_eq!(reference_body(&K_C2S, seq, msg), payload);
                    assert_eq!(message::decode::<Message>(msg), Ok(m));
                    if matches!(m, Message::Goodbye { .. }) {
                        assert_closed(&mut probe, payload);
                    } else {
                        rx = probe;
                    }
                } else {
                    assert_eq!(probe.next_seq(), before);
                    assert_closed(&mut probe, payload);
                }
            }
            2 => {
                let Some(genuine) = &last_genuine else {
                    continue;
                };
                let mut body = genuine.clone();
                let pick = payload
                    .iter()
                    .fold(0usize, |a, &b| a.wrapping_mul(31).wrapping_add(b as usize));
                if (op / 4) % 2 == 0 {
                    let i = pick % body.len();
                    body[i] ^= 1 << (pick % 8);
                    let want = if body.len() < OVERHEAD + 1 {
                        Err(SessionError::TooShort { len: body.len() })
                    } else {
                        Err(SessionError::BadTag)
                    };
                    open_checked(&mut rx, &body, want);
                } else {
                    body.truncate(pick % body.len());
                    let got = rx.clone().open(&body);
                    assert!(
                        matches!(
                            got,
                            Err(SessionError::BadTag | SessionError::TooShort { .. })
                        ),
                        "truncated frame: {got:?}"
                    );
                    assert_eq!(rx.next_seq(), next);
                }
            }
            _ => {
                let Ok(msg) = message::decode::<Message>(payload) else {
                    continue;
                };
                let seq = client_tx.next_seq();
                // A goodbye closes its sealer: seal with a copy, kept
                // unless it sealed a goodbye (it must refuse anything after).
                let goodbye = matches!(msg, Message::Goodbye { .. });
                let mut sealer = client_tx.clone();
                let frame = sealer.seal(&msg, &mut out, 65535).expect("seal");
                let body = frame[2..].to_vec();
                assert_eq!(
                    u16::from_be_bytes([frame[0], frame[1]]) as usize,
                    body.len()
                );
                // Canonical encoding: the sealed body is the reference one
                // whenever the payload was itself canonical.
                let mut enc = vec![0u8; payload.len() + 16];
                let canonical: &[u8] = message::encode(&msg, &mut enc).expect("encode");
                assert_eq!(body, reference_body(&K_C2S, seq, canonical));
                open_checked(&mut rx, &body, model(next, seq, canonical).map(|_| msg));
                last_genuine = Some(body);
                if goodbye {
                    let mut after = [0u8; 64];
                    let ping = Message::Ping { nonce: 0 };
                    assert_eq!(
                        sealer.seal(&ping, &mut after, 512),
                        Err(SessionError::Closed)
                    );
                } else {
                    client_tx = sealer;
                }
            }
        }
    }
});
