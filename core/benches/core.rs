//! Criterion benches for the hot paths: framing, the server's SCRAM verify
//! from a stored Django row (what a login costs the server), session tags.
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tether_core::frame::{FrameDecoder, HEADER_LEN, encode_message};
use tether_core::message::{self, Handshake, Message, Proof};
use tether_core::scram::{ClientConfig, ClientCredentials, ClientLogin, ServerLogin};
use tether_core::session::Role;

#[path = "../tests/common/mod.rs"]
mod common;

fn framing(c: &mut Criterion) {
    let proof = Handshake::Proof(Proof {
        client_final: "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    });
    let mut wire = [0u8; 512];
    c.bench_function("frame/encode_handshake", |b| {
        b.iter(|| {
            encode_message(black_box(&proof), &mut wire, 512)
                .unwrap()
                .len()
        })
    });
    let n = encode_message(&proof, &mut wire, 512).unwrap().len();
    let mut buf = [0u8; 512];
    c.bench_function("frame/decode_handshake", |b| {
        b.iter(|| {
            let mut d = FrameDecoder::new(&mut buf, 512);
            let (_, body) = d.push(black_box(&wire[..n])).unwrap();
            matches!(
                message::decode::<Handshake>(body.unwrap()).unwrap(),
                Handshake::Proof(_)
            )
        })
    });
}

/// What the server does per login once it has the row: parse the Django
/// hash, parse client-first, build the challenge, verify the proof.
fn server_verify(c: &mut Criterion) {
    let row = common::django_row("pw", "W8ZxHXvUYrZMB2ce3tJeqs", 1_000_000);
    let mut rng = common::TestRng(5);
    let creds = tether_core::django::credentials(&row).unwrap();
    let client = ClientLogin::<256>::new(
        "alice",
        ClientCredentials::Password("pw"),
        ClientConfig::default(),
        &mut rng,
    )
    .unwrap();
    let client_first = client.client_first().to_owned();
    let server = ServerLogin::<512>::new(&client_first)
        .unwrap()
        .challenge_with_nonce(&creds, "serverNONCE")
        .unwrap();
    let client = client
        .handle_challenge(creds.mechanism, server.server_first())
        .unwrap();
    let client_final = client.client_final().to_owned();
    c.bench_function("scram/server_login_from_django_row", |b| {
        b.iter(|| {
            let creds = tether_core::django::credentials(black_box(&row)).unwrap();
            let s = ServerLogin::<512>::new(black_box(&client_first)).unwrap();
            let s = s.challenge_with_nonce(&creds, "serverNONCE").unwrap();
            s.verify(black_box(&client_final))
                .unwrap()
                .server_final()
                .len()
        })
    });
}

fn session_tags(c: &mut Criterion) {
    let (ck, sk) = common::logged_in_pair(3);
    let (mut tx, _) = ck.into_halves(Role::Client);
    let (_, rx) = sk.into_halves(Role::Server);
    let args = [0x2au8; 64];
    let call = Message::Call {
        id: 1,
        method: "echo",
        args: &args,
    };
    let mut wire = [0u8; 512];
    let first = tx.clone().seal(&call, &mut wire, 512).unwrap()[HEADER_LEN..].to_vec();
    c.bench_function("session/seal_64b_call", |b| {
        b.iter(|| tx.seal(black_box(&call), &mut wire, 512).unwrap().len())
    });
    c.bench_function("session/open_64b_call", |b| {
        b.iter(|| {
            // The first frame, opened each time by a fresh opener.
            let mut rx = rx.clone();
            rx.open(black_box(&first)).unwrap() == call
        })
    });
}

/// Protocol v2's costs (issue 15): one X25519 (the Montgomery ladder, what
/// `es` and `ee` cost each side), a key generation by the ladder
/// `X25519(k, 9)` (firmware) and from the precomputed basepoint table
/// (feature `precomputed-tables`, servers), then whole Noise handshakes as
/// each side runs them, and a sealed frame.
fn noise(c: &mut Criterion) {
    use curve25519_dalek::MontgomeryPoint;
    use tether_core::noise::{Initiator, Responder, StaticKeypair};
    use x25519_dalek::{X25519_BASEPOINT_BYTES, x25519};

    let k = [0x42u8; 32];
    let peer = x25519([7u8; 32], X25519_BASEPOINT_BYTES);
    c.bench_function("x25519/dh_ladder", |b| {
        b.iter(|| x25519(black_box(k), black_box(peer)))
    });
    c.bench_function("x25519/keygen_ladder", |b| {
        b.iter(|| x25519(black_box(k), X25519_BASEPOINT_BYTES))
    });
    c.bench_function("x25519/keygen_table", |b| {
        b.iter(|| MontgomeryPoint::mul_base_clamped(black_box(k)).to_bytes())
    });
    assert_eq!(
        MontgomeryPoint::mul_base_clamped(k).to_bytes(),
        x25519(k, X25519_BASEPOINT_BYTES)
    );

    let mut rng = common::TestRng(9);
    let server = StaticKeypair::generate(&mut rng);
    let pinned = *server.public();
    let payload = [0x2au8; 100];
    for nk in [true, false] {
        let name = if nk { "nk" } else { "nn" };
        let initiator = || {
            if nk {
                Initiator::nk(b"prologue", &pinned)
            } else {
                Initiator::nn(b"prologue")
            }
        };
        let responder = || {
            if nk {
                Responder::nk(b"prologue", &server)
            } else {
                Responder::nn(b"prologue")
            }
        };
        let first: &[u8] = if nk { &payload } else { &[] };
        // One message 1, read by a fresh responder in each iteration.
        let mut m1 = [0u8; 256];
        let n1 = initiator()
            .write_message(first, &mut m1, &mut rng)
            .unwrap()
            .1
            .len();
        c.bench_function(
            &format!("noise/{name}_responder (server: read 1, write 2)"),
            |b| {
                let mut out = [0u8; 256];
                b.iter(|| {
                    let mut buf = [0u8; 256];
                    buf[..n1].copy_from_slice(&m1[..n1]);
                    let (ready, _) = responder().read_message(&mut buf[..n1]).unwrap();
                    let (t, m) = ready.write_message(&payload, &mut out, &mut rng).unwrap();
                    (t.handshake_hash()[0], m.len())
                })
            },
        );
        c.bench_function(&format!("noise/{name}_initiator_write_1 (device)"), |b| {
            let mut out = [0u8; 256];
            b.iter(|| {
                initiator()
                    .write_message(black_box(first), &mut out, &mut rng)
                    .unwrap()
                    .1
                    .len()
            })
        });
    }

    // A 100-byte frame sealed and opened with the transport keys.
    let mut m1 = [0u8; 256];
    let (waiting, m) = Initiator::nn(b"p")
        .write_message(&[], &mut m1, &mut rng)
        .unwrap();
    let n1 = m.len();
    let (ready, _) = Responder::nn(b"p").read_message(&mut m1[..n1]).unwrap();
    let mut m2 = [0u8; 256];
    let (mut server_t, m) = ready.write_message(&[], &mut m2, &mut rng).unwrap();
    let n2 = m.len();
    let (mut device_t, _) = waiting.read_message(&mut m2[..n2]).unwrap();
    c.bench_function("noise/seal_open_100b", |b| {
        let mut frame = [0u8; 128];
        b.iter(|| {
            frame[..100].copy_from_slice(&payload);
            let n = device_t.send.encrypt_with_ad(&[], &mut frame, 100).unwrap();
            server_t
                .recv
                .decrypt_with_ad(&[], &mut frame[..n])
                .unwrap()
                .len()
        })
    });
}

criterion_group!(benches, framing, server_verify, session_tags, noise);
criterion_main!(benches);
