//! Session frames: whatever an attacker does to a frame, it is rejected.
mod common;

use tether_core::frame::HEADER_LEN;
use tether_core::message::{GoodbyeReason, Message};
use tether_core::session::{Role, SessionError};

fn frames() -> (
    tether_core::session::Sealer,
    tether_core::session::Opener,
    tether_core::session::Sealer,
    tether_core::session::Opener,
) {
    let (c, s) = common::logged_in_pair(7);
    let (ctx, crx) = c.into_halves(Role::Client);
    let (stx, srx) = s.into_halves(Role::Server);
    (ctx, srx, stx, crx)
}

#[test]
fn frames_flow_both_ways_in_order() {
    let (mut ctx, mut srx, mut stx, mut crx) = frames();
    let mut buf = [0u8; 512];
    for id in 0..5u32 {
        let call = Message::Call {
            id,
            method: "echo",
            args: b"\x02hi",
        };
        let f = ctx.seal(&call, &mut buf, 512).unwrap().to_vec();
        assert_eq!(srx.open(&f[HEADER_LEN..]).unwrap(), call);
        let reply = Message::Reply {
            id,
            result: b"\x02hi",
        };
        let f = stx.seal(&reply, &mut buf, 512).unwrap().to_vec();
        assert_eq!(crx.open(&f[HEADER_LEN..]).unwrap(), reply);
    }
    assert_eq!(ctx.next_seq(), 5);
    assert_eq!(srx.next_seq(), 5);
}

#[test]
fn replayed_reordered_and_cross_direction_frames_are_rejected() {
    let (mut ctx, fresh, _stx, crx) = frames();
    let mut buf = [0u8; 512];
    let f0 = ctx
        .seal(&Message::Ping { nonce: 0 }, &mut buf, 512)
        .unwrap()[HEADER_LEN..]
        .to_vec();
    let f1 = ctx
        .seal(&Message::Ping { nonce: 1 }, &mut buf, 512)
        .unwrap()[HEADER_LEN..]
        .to_vec();
    // Reordered: frame 1 before frame 0.
    assert_eq!(
        fresh.clone().open(&f1),
        Err(SessionError::OutOfOrder {
            seq: 1,
            expected: 0
        })
    );
    // Replayed.
    let mut srx = fresh.clone();
    assert_eq!(srx.open(&f0), Ok(Message::Ping { nonce: 0 }));
    assert_eq!(
        srx.clone().open(&f0),
        Err(SessionError::Replayed {
            seq: 0,
            expected: 1
        })
    );
    // Sent back to its sender (cross-direction).
    assert_eq!(crx.clone().open(&f1), Err(SessionError::BadTag));
    // Truncated.
    assert_eq!(
        srx.clone().open(&f1[..f1.len() - 1]),
        Err(SessionError::BadTag)
    );
    assert_eq!(
        srx.clone().open(&f1[..10]),
        Err(SessionError::TooShort { len: 10 })
    );
    // The opener that refused nothing goes on.
    assert_eq!(srx.open(&f1), Ok(Message::Ping { nonce: 1 }));
}

#[test]
fn an_opener_opens_nothing_after_a_failure_or_a_goodbye() {
    let (mut ctx, mut srx, _stx, _crx) = frames();
    let mut buf = [0u8; 512];
    let f0 = ctx
        .seal(&Message::Ping { nonce: 0 }, &mut buf, 512)
        .unwrap()[HEADER_LEN..]
        .to_vec();
    let mut bad = f0.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(srx.open(&bad), Err(SessionError::BadTag));
    // The genuine frame that was due: refused all the same.
    assert_eq!(srx.open(&f0), Err(SessionError::Closed));
    assert_eq!(srx.next_seq(), 0);

    let (mut ctx, mut srx, _stx, _crx) = frames();
    let bye = Message::Goodbye {
        reason: GoodbyeReason::Normal,
    };
    let f = ctx.seal(&bye, &mut buf, 512).unwrap()[HEADER_LEN..].to_vec();
    // Nothing is sealed after a goodbye...
    assert_eq!(
        ctx.seal(&Message::Ping { nonce: 1 }, &mut buf, 512),
        Err(SessionError::Closed)
    );
    // ...and nothing opened after one.
    assert_eq!(srx.open(&f), Ok(bye));
    let mut other = frames().0;
    let late = other
        .seal(&Message::Ping { nonce: 1 }, &mut buf, 512)
        .unwrap()[HEADER_LEN..]
        .to_vec();
    assert_eq!(srx.open(&late), Err(SessionError::Closed));
}

#[test]
fn another_sessions_frames_are_rejected() {
    let (mut ctx, _, _, _) = frames();
    let (_, mut other_srx, _, _) = {
        let (c, s) = common::logged_in_pair(8);
        let (ctx, crx) = c.into_halves(Role::Client);
        let (stx, srx) = s.into_halves(Role::Server);
        (ctx, srx, stx, crx)
    };
    let mut buf = [0u8; 64];
    let f = ctx
        .seal(
            &Message::Goodbye {
                reason: GoodbyeReason::Normal,
            },
            &mut buf,
            512,
        )
        .unwrap();
    assert_eq!(other_srx.open(&f[HEADER_LEN..]), Err(SessionError::BadTag));
}

#[test]
fn seal_respects_the_peers_maximum_and_the_buffer() {
    let (mut ctx, _, _, _) = frames();
    let big = [7u8; 600];
    let mut buf = [0u8; 1024];
    let call = Message::Call {
        id: 1,
        method: "m",
        args: &big,
    };
    assert!(matches!(
        ctx.seal(&call, &mut buf, 512),
        Err(SessionError::Frame(
            tether_core::frame::FrameError::TooLong { max: 512, .. }
        ))
    ));
    let mut small = [0u8; 100];
    assert!(matches!(
        ctx.seal(&call, &mut small, 512),
        Err(SessionError::Frame(
            tether_core::frame::FrameError::BufferTooSmall { .. }
        ))
    ));
    assert_eq!(
        ctx.next_seq(),
        0,
        "a failed seal does not use a sequence number"
    );
}

#[test]
fn an_error_message_is_cut_to_the_longest_start_that_fits() {
    use tether_core::message::ErrorCode;
    use tether_core::session::error_message_that_fits;
    let (_, _, mut stx, _) = frames();
    let mut buf = [0u8; 2 + 70_000];
    // ASCII, two-byte and four-byte characters: cuts land inside them.
    let texts = [
        "m".repeat(70_000),
        "é".repeat(300),
        "no method \"𝄞𝄞𝄞𝄞\"".repeat(40),
    ];
    for text in &texts {
        for max in (25..700).chain([4096, 16_384, 65_535]) {
            for (id, code) in [
                (1, ErrorCode::UNKNOWN_METHOD),
                (u32::MAX, ErrorCode(60_000)),
            ] {
                let cut = error_message_that_fits(id, code, text, max);
                assert!(text.starts_with(cut));
                let error = |message| Message::Error { id, code, message };
                let sealed = stx.seal(&error(cut), &mut buf, max).map(|f| f.len());
                if cut.is_empty() && sealed.is_err() {
                    continue; // too small a max for any error at all
                }
                assert!(sealed.unwrap() - HEADER_LEN <= max, "{max}");
                // One more character would not fit.
                if cut.len() < text.len() {
                    let next = text[cut.len()..].chars().next().unwrap().len_utf8();
                    let longer = &text[..cut.len() + next];
                    assert!(stx.seal(&error(longer), &mut buf, max).is_err(), "{max}");
                }
            }
        }
    }
    // What fits is not touched.
    assert_eq!(
        error_message_that_fits(1, ErrorCode::FAILED, "short", 512),
        "short"
    );
}
