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

criterion_group!(benches, framing, server_verify, session_tags);
criterion_main!(benches);
