//! `./size`'s core-only variant: the baseline plus tether-core's client
//! connection machine driven directly, as tether-firmware drives it, on
//! bytes from the network (so that nothing is optimised away). This minus
//! the baseline is tether-core's part of client + core.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use board::Trng;
use settings::{PASSWORD, USERNAME};
use tether_core::connection::{ClientConfig, ClientHandshake, Event, Instant};
use tether_core::message::ErrorCode;
use tether_core::scram::ClientCredentials;

// The example's board bring-up (its `main` runs `device_main`) and settings.
#[path = "../board.rs"]
mod board;
#[allow(dead_code)] // the protocol settings
#[path = "../settings.rs"]
mod settings;
#[path = "shared/plain_tcp.rs"]
mod plain_tcp;

use plain_tcp::device_main;

/// tether-core's client on the bytes received.
fn received(rng: &mut Trng, buf: &[u8; 64], n: usize) {
    exercise(rng, &buf[..n]);
}

/// Copies as much of `input` as the machine asks for.
fn feed(buf: &mut [u8], input: &[u8]) -> usize {
    let n = buf.len().min(input.len());
    buf[..n].copy_from_slice(&input[..n]);
    n
}

fn exercise(rng: &mut Trng, input: &[u8]) -> Option<()> {
    let (mut rx, mut tx) = ([0u8; 512], [0u8; 512]);
    let now = Instant::from_millis(u64::from(input.len() as u32));
    let mut login = ClientHandshake::<4>::new(
        &mut rx,
        USERNAME,
        ClientCredentials::Password(PASSWORD.unwrap_or_default()),
        &ClientConfig::default(),
        rng,
    )
    .ok()?;
    // The hello, the server's challenge, the proof, its welcome.
    let established = loop {
        core::hint::black_box(login.poll_transmit(now, &mut tx));
        let n = feed(login.receive_buffer(), input);
        login.commit(n);
        login.handle_timeout(now);
        if let Some(done) = login.poll(now).ok()? {
            break done;
        }
    };
    let mut conn = established.connection;
    let n = feed(conn.receive_buffer(), input);
    conn.commit(n);
    conn.handle_timeout(now);
    if let Some(Event::Call(call)) = conn.poll_event(now).ok()? {
        // Answered in place, as tether-firmware's handlers answer.
        let len = feed(call.answer_buffer(&mut tx), b"unknown method");
        let token = call.into_token();
        let code = Some(ErrorCode::UNKNOWN_METHOD);
        let _ = conn.answer_in_place(token, now, &mut tx, code, len);
    }
    core::hint::black_box(conn.poll_transmit(now, &mut tx));
    core::hint::black_box((conn.poll_timeout(), &established.keys));
    Some(())
}
