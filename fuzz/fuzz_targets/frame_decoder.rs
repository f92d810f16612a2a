//! Arbitrary bytes, in arbitrary chunkings, into `FrameDecoder`; every body
//! decoded as `Handshake` and as `Message`.
//!
//! Input: `[chunk seed] [max selector] stream...`.
//!
//! Checked besides "no panic":
//! - the decoder agrees with a 10-line reference reading of PROTOCOL.md
//!   section 1 (same bodies, same first error), however the stream is cut;
//! - it always makes progress (`used > 0` on non-empty input) and never
//!   returns a body of 0 or more than `max` bytes;
//! - pulled instead (`receive_buffer` / `commit` / `take_frame`, the way the
//!   connection machines read) it gives the same frames and error, never
//!   asking for more bytes than the current frame misses;
//! - a message that decodes re-encodes to bytes that decode to the same
//!   message (and to the same bytes again: encoding is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::frame::{FrameDecoder, FrameError};
use tether_core::message::{self, Handshake, Message};
use tether_fuzz::XorShift;

/// The frames of `stream`, by the letter of PROTOCOL.md: u16 BE length,
/// 0 is an error, above max is an error as soon as the header is read.
fn reference(stream: &[u8], max: usize) -> (Vec<&[u8]>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        match rest {
            [] => return (frames, None),
            [_] => return (frames, Some(FrameError::Truncated { missing: 1 })),
            [hi, lo, body @ ..] => {
                let len = u16::from_be_bytes([*hi, *lo]) as usize;
                if len == 0 {
                    return (frames, Some(FrameError::EmptyFrame));
                }
                if len > max {
                    return (frames, Some(FrameError::TooLong { len, max }));
                }
                if body.len() < len {
                    let missing = len - body.len();
                    return (frames, Some(FrameError::Truncated { missing }));
                }
                frames.push(&body[..len]);
                rest = &body[len..];
            }
        }
    }
}

/// A message that decodes re-encodes; the re-encoding decodes to the same
/// message and encodes to the same bytes again.
macro_rules! check_roundtrip {
    ($ty:ty, $body:expr) => {{
        let body: &[u8] = $body;
        if let Ok(msg) = message::decode::<$ty>(body) {
            let mut buf = vec![0u8; body.len() + 16];
            let encoded: &[u8] =
                message::encode(&msg, &mut buf).expect("a decoded message re-encodes");
            assert!(
                encoded.len() <= body.len(),
                "re-encoding is longer than the input"
            );
            let again = message::decode::<$ty>(encoded).expect("the re-encoding decodes");
            assert_eq!(again, msg, "decode(encode(m)) != m");
            let mut buf2 = vec![0u8; encoded.len() + 16];
            let twice: &[u8] = message::encode(&again, &mut buf2).expect("encode");
            assert_eq!(twice, encoded, "encoding is not stable");
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    let [seed, max_sel, stream @ ..] = data else {
        return;
    };
    let max = match max_sel % 4 {
        0 => 512,
        1 => 4096,
        2 => 65535,
        _ => 1 + (*max_sel as usize) * 3,
    };
    let (want_frames, want_err) = reference(stream, max);

    let mut buf = vec![0u8; max];
    let mut decoder = FrameDecoder::new(&mut buf, max);
    assert_eq!(decoder.max(), max);
    let mut rng = XorShift::new(*seed as u64);
    let mut rest = stream;
    let mut got_frames: Vec<Vec<u8>> = Vec::new();
    let mut got_err = None;
    'feed: while !rest.is_empty() {
        let limit = 1usize << (rng.next_u64() % 12);
        let n = (1 + (rng.next_u64() as usize) % limit).min(rest.len());
        let mut chunk = &rest[..n];
        rest = &rest[n..];
        while !chunk.is_empty() {
            match decoder.push(chunk) {
                Ok((used, body)) => {
                    assert!(
                        used > 0 && used <= chunk.len(),
                        "used {used} of {}",
                        chunk.len()
                    );
                    if let Some(body) = body {
                        assert!(!body.is_empty() && body.len() <= max);
                        got_frames.push(body.to_vec());
                    }
                    chunk = &chunk[used..];
                }
                Err(e) => {
                    got_err = Some(e);
                    break 'feed;
                }
            }
        }
    }
    if got_err.is_none() {
        if let Err(e) = decoder.finish() {
            got_err = Some(e);
        } else {
            assert!(decoder.is_idle());
        }
    }
    assert_eq!(got_frames.len(), want_frames.len(), "frame count");
    for (got, want) in got_frames.iter().zip(&want_frames) {
        assert_eq!(got.as_slice(), *want);
    }
    assert_eq!(got_err, want_err);

    // The same stream pulled (receive_buffer / commit / take_frame), in
    // reads of random sizes: the same frames and the same first error, and
    // the decoder never asks for more than the current frame misses.
    let mut buf = vec![0u8; max];
    let mut decoder = FrameDecoder::new(&mut buf[..], max);
    let mut rest = stream;
    let mut pulled: Vec<Vec<u8>> = Vec::new();
    let mut pull_err = None;
    while !rest.is_empty() {
        let dest = decoder.receive_buffer();
        assert!(!dest.is_empty() && dest.len() <= max.max(2));
        let k = (1 + (rng.next_u64() as usize) % dest.len()).min(rest.len());
        dest[..k].copy_from_slice(&rest[..k]);
        rest = &rest[k..];
        if let Err(e) = decoder.commit(k) {
            pull_err = Some(e);
            break;
        }
        if let Some(body) = decoder.take_frame() {
            pulled.push(body.to_vec());
        }
    }
    if pull_err.is_none() {
        pull_err = decoder.finish().err();
    }
    assert_eq!(pulled.len(), want_frames.len(), "pulled frame count");
    for (got, want) in pulled.iter().zip(&want_frames) {
        assert_eq!(got.as_slice(), *want);
    }
    assert_eq!(pull_err, want_err);

    for body in &want_frames {
        check_roundtrip!(Handshake, body);
        check_roundtrip!(Message, body);
    }
});
