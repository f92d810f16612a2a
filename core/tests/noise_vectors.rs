//! tether-core's Noise against the published Noise test vectors (the
//! cacophony and snow vector files, JSON). The files are not part of this
//! repository: name them in `TETHER_NOISE_VECTORS` (paths separated by
//! `:`) and run
//!
//! ```sh
//! TETHER_NOISE_VECTORS=cacophony.txt:snow.txt \
//!   cargo test -p tether-core --test noise_vectors -- --include-ignored
//! ```
//!
//! Every vector of `Noise_NN_25519_ChaChaPoly_SHA256` and
//! `Noise_NK_25519_ChaChaPoly_SHA256` runs with tether-core on both sides:
//! each handshake message must come out byte for byte as published, each
//! side must read the other's message back to the published payload, the
//! handshake hash (where given) must match, and then the transport messages
//! (alternating, initiator first) likewise.

use serde::Deserialize;
use tether_core::noise::{
    AwaitingResponse, Initiator, Pattern, ReadyToRespond, Responder, StaticKeypair, Transport,
};
use tether_core::rand_core::{TryCryptoRng, TryRng};

#[derive(Deserialize)]
struct File {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    protocol_name: String,
    init_prologue: String,
    init_ephemeral: Option<String>,
    init_remote_static: Option<String>,
    resp_prologue: String,
    resp_ephemeral: Option<String>,
    resp_static: Option<String>,
    handshake_hash: Option<String>,
    messages: Vec<Msg>,
}

#[derive(Deserialize)]
struct Msg {
    payload: String,
    ciphertext: String,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn key(s: &str) -> [u8; 32] {
    hex(s).try_into().expect("32-byte key")
}

/// An "RNG" that hands out the vector's ephemeral key.
struct Fixed([u8; 32]);

impl TryRng for Fixed {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        unreachable!("only fill_bytes is used")
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        unreachable!("only fill_bytes is used")
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        assert_eq!(dest.len(), 32, "one ephemeral key per handshake side");
        dest.copy_from_slice(&self.0);
        Ok(())
    }
}
impl TryCryptoRng for Fixed {}

/// Reads `ciphertext` with `f` and checks the payload.
fn read<T>(ciphertext: &[u8], want: &[u8], f: impl FnOnce(&mut [u8]) -> (T, Vec<u8>)) -> T {
    let mut buf = ciphertext.to_vec();
    let (state, payload) = f(&mut buf);
    assert_eq!(hex_str(&payload), hex_str(want), "payload read back");
    state
}

fn hex_str(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs one vector; returns whether it was one of ours.
fn run(v: &Vector) -> bool {
    let pattern = match v.protocol_name.as_str() {
        "Noise_NN_25519_ChaChaPoly_SHA256" => Pattern::Nn,
        "Noise_NK_25519_ChaChaPoly_SHA256" => Pattern::Nk,
        _ => return false,
    };
    let name = &v.protocol_name;
    let (init_prologue, resp_prologue) = (hex(&v.init_prologue), hex(&v.resp_prologue));
    let (initiator, responder) = match pattern {
        Pattern::Nn => (Initiator::nn(&init_prologue), Responder::nn(&resp_prologue)),
        Pattern::Nk => {
            let server = StaticKeypair::from_secret(key(v.resp_static.as_deref().unwrap()));
            let pinned = key(v.init_remote_static.as_deref().unwrap());
            assert_eq!(server.public(), &pinned, "{name}: X25519(private, 9)");
            (
                Initiator::nk(&init_prologue, &pinned),
                Responder::nk(&resp_prologue, &server),
            )
        }
    };
    let mut out = vec![0u8; 65535];

    // Message 1: initiator -> responder.
    let m = &v.messages[0];
    let (initiator, sent): (AwaitingResponse, Vec<u8>) = {
        let (s, msg) = initiator
            .write_message(
                &hex(&m.payload),
                &mut out,
                &mut Fixed(key(v.init_ephemeral.as_deref().unwrap())),
            )
            .unwrap();
        (s, msg.to_vec())
    };
    assert_eq!(hex_str(&sent), m.ciphertext, "{name}: message 1");
    let responder: ReadyToRespond = read(&sent, &hex(&m.payload), |buf| {
        let (s, p) = responder.read_message(buf).unwrap();
        (s, p.to_vec())
    });

    // Message 2: responder -> initiator.
    let m = &v.messages[1];
    let (mut responder, sent): (Transport, Vec<u8>) = {
        let (s, msg) = responder
            .write_message(
                &hex(&m.payload),
                &mut out,
                &mut Fixed(key(v.resp_ephemeral.as_deref().unwrap())),
            )
            .unwrap();
        (s, msg.to_vec())
    };
    assert_eq!(hex_str(&sent), m.ciphertext, "{name}: message 2");
    let mut initiator: Transport = read(&sent, &hex(&m.payload), |buf| {
        let (s, p) = initiator.read_message(buf).unwrap();
        (s, p.to_vec())
    });
    assert_eq!(initiator.handshake_hash(), responder.handshake_hash());
    if let Some(h) = &v.handshake_hash {
        assert_eq!(
            &hex_str(initiator.handshake_hash()),
            h,
            "{name}: handshake hash"
        );
    }

    // Transport messages, alternating, initiator first.
    for (i, m) in v.messages[2..].iter().enumerate() {
        let (from, to) = if i % 2 == 0 {
            (&mut initiator, &mut responder)
        } else {
            (&mut responder, &mut initiator)
        };
        let payload = hex(&m.payload);
        out[..payload.len()].copy_from_slice(&payload);
        let n = from
            .send
            .encrypt_with_ad(&[], &mut out, payload.len())
            .unwrap();
        assert_eq!(hex_str(&out[..n]), m.ciphertext, "{name}: transport {i}");
        let plain = to.recv.decrypt_with_ad(&[], &mut out[..n]).unwrap();
        assert_eq!(plain, &payload[..], "{name}: transport {i} read back");
    }
    true
}

#[test]
#[ignore = "needs the published vector files: TETHER_NOISE_VECTORS=a.txt:b.txt"]
fn published_vectors() {
    let paths = std::env::var("TETHER_NOISE_VECTORS")
        .expect("TETHER_NOISE_VECTORS: the cacophony / snow vector files, ':'-separated");
    let mut ran = 0;
    for path in paths.split(':') {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let file: File = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let here = file.vectors.iter().filter(|v| run(v)).count();
        println!("{path}: {here} NN/NK vectors passed");
        assert!(
            here > 0,
            "{path} has no NN or NK 25519/ChaChaPoly/SHA256 vector"
        );
        ran += here;
    }
    println!("{ran} vectors passed");
}
