//! Protocol v2 in tether-core's connection machines: `ClientHandshakeV2`,
//! `ServerHandshake::new_v2` and the sealed established connection, in
//! memory, on fuzzer-chosen bytes.
//!
//! The server holds a current and a previous static key and the account
//! `user` (the RFC 7677 row: SCRAM-SHA-256, password "pencil"); the device
//! logs in as `user` with its cached keys. Every random source is a
//! counter, so the genuine login below is the same in every run (which is
//! what lets the fuzzer reach the sealed states by editing it).
//!
//! Input: `[mode] rest`.
//! - mode % 4 == 0: `rest` is everything a client sends to a v2 server
//!   (frame 1, sealed frames, garbage), read in chunks of `mode / 4 % 8 +
//!   1` bytes.
//! - mode % 4 == 1: `rest` is everything a server sends to an NK device
//!   (mode & 4 clear) or an NN device, after the device's frame 1.
//! - mode % 4 == 2: the genuine NK (mode & 4 clear) or NN login, with
//!   `rest` as edits `[frame] [offset] [xor]`: byte `offset` of the
//!   `frame`-th frame of the login is XORed before it is delivered.
//! - mode % 4 == 3: after the genuine NK login, `rest` is what the device
//!   sends to the server's established connection (raw bytes).
//!
//! Checked beyond "no panic": an edited login never succeeds (every byte
//! after the length prefix is authenticated: a flip fails the login); an
//! unedited one always does; a server error is final and nothing follows
//! its refusal; the device sends nothing after an error; a session frame
//! that is not the genuine next one ends the session.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tether_core::connection::{
    ClientConfig, ClientHandshakeV2, ConnectionError, Decoy, Instant, ServerConfig,
    ServerConnection, ServerHandshake, ServerKeys, ServerStep,
};
use tether_core::noise::StaticKeypair;
use tether_core::scram::{ClientCredentials, Mechanism};
use tether_fuzz::{CLIENT_KEYS, Counter, SERVER_CREDENTIALS};

static CURRENT: LazyLock<StaticKeypair> =
    LazyLock::new(|| StaticKeypair::generate(&mut Counter(1)));
static PREVIOUS: LazyLock<StaticKeypair> =
    LazyLock::new(|| StaticKeypair::generate(&mut Counter(2)));

const DECOY: Decoy<'static> = Decoy {
    secret: b"fuzzing decoy secret",
    iterations: 4096,
    mechanism: Mechanism::ScramSha256,
};

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn server() -> ServerHandshake<Vec<u8>, 4, 4> {
    let keys = ServerKeys {
        current: Some(CURRENT.clone()),
        previous: Some(PREVIOUS.clone()),
        require_encryption: false,
    };
    ServerHandshake::new_v2(
        vec![0; 2048],
        ServerConfig::default(),
        at(0),
        keys,
        &mut Counter(3),
    )
    .unwrap()
}

fn device(nk: bool, rx: &mut [u8]) -> ClientHandshakeV2<'_, 'static> {
    ClientHandshakeV2::new(
        rx,
        "user",
        ClientCredentials::Keys(&CLIENT_KEYS),
        nk.then(|| CURRENT.public()),
        &ClientConfig::default(),
        &mut Counter(4),
    )
    .unwrap()
}

/// Something bytes go into.
trait Input {
    fn receive_buffer(&mut self) -> &mut [u8];
    fn commit(&mut self, n: usize);
}
impl Input for ServerHandshake<Vec<u8>, 4, 4> {
    fn receive_buffer(&mut self) -> &mut [u8] {
        self.receive_buffer()
    }
    fn commit(&mut self, n: usize) {
        self.commit(n)
    }
}
impl Input for ClientHandshakeV2<'_, '_> {
    fn receive_buffer(&mut self) -> &mut [u8] {
        self.receive_buffer()
    }
    fn commit(&mut self, n: usize) {
        self.commit(n)
    }
}
impl Input for ServerConnection<Vec<u8>, 4, 4> {
    fn receive_buffer(&mut self) -> &mut [u8] {
        self.receive_buffer()
    }
    fn commit(&mut self, n: usize) {
        self.commit(n)
    }
}

/// Feeds `bytes` (at most `chunk` per read); returns how many were taken.
fn push(m: &mut impl Input, bytes: &[u8], chunk: usize) -> usize {
    let mut used = 0;
    while used < bytes.len() {
        let dest = m.receive_buffer();
        if dest.is_empty() {
            break;
        }
        let n = dest.len().min(bytes.len() - used).min(chunk);
        dest[..n].copy_from_slice(&bytes[used..used + n]);
        m.commit(n);
        used += n;
    }
    used
}

/// Runs the server's side until it waits for input; false once it failed
/// (and checks that a failed server sends at most its refusal).
fn drive_server(
    s: &mut ServerHandshake<Vec<u8>, 4, 4>,
    out: &mut Vec<Vec<u8>>,
    welcomed: &mut Option<ServerConnection<Vec<u8>, 4, 4>>,
) -> bool {
    let mut tx = vec![0u8; 1024];
    let mut rng = Counter(5);
    loop {
        match s.poll() {
            Ok(Some(ServerStep::Login(_))) => {
                let _ = s.challenge(Some(SERVER_CREDENTIALS.clone()), &DECOY, &mut rng);
            }
            Ok(Some(ServerStep::Verified(_))) => {
                let (conn, frame) = s.welcome(1, at(0), &mut tx).unwrap();
                out.push(frame.to_vec());
                *welcomed = Some(conn);
                return true;
            }
            Ok(Some(_)) => {}
            Ok(None) => {}
            Err(e) => {
                let mut sent = 0;
                while let Some(f) = s.poll_transmit(&mut tx) {
                    out.push(f.to_vec());
                    sent += 1;
                }
                assert!(sent <= 1, "more than a refusal after {e:?}");
                assert_eq!(s.poll().unwrap_err(), e, "a server error is final");
                assert!(s.poll_transmit(&mut tx).is_none());
                return false;
            }
        }
        let mut sent = false;
        while let Some(f) = s.poll_transmit(&mut tx) {
            out.push(f.to_vec());
            sent = true;
        }
        if !sent {
            return true;
        }
    }
}

/// A login between the two machines; `edit` may change each frame before
/// it is delivered. Returns whether both sides logged in, and the server's
/// connection.
fn login(
    nk: bool,
    mut edit: impl FnMut(usize, &mut Vec<u8>),
) -> (bool, Option<ServerConnection<Vec<u8>, 4, 4>>) {
    let mut rx = [0u8; 1024];
    let mut client = device(nk, &mut rx);
    let mut s = server();
    let mut tx = vec![0u8; 1024];
    let mut n = 0;
    let mut welcomed = None;
    let mut server_alive = true;
    for _ in 0..8 {
        while let Some(f) = client.poll_transmit(at(0), &mut tx) {
            let mut f = f.to_vec();
            edit(n, &mut f);
            n += 1;
            push(&mut s, &f, usize::MAX);
        }
        let mut down = Vec::new();
        if server_alive && welcomed.is_none() {
            server_alive = drive_server(&mut s, &mut down, &mut welcomed);
        }
        for mut f in down {
            edit(n, &mut f);
            n += 1;
            push(&mut client, &f, usize::MAX);
        }
        match client.poll(at(0)) {
            Ok(Some(_)) => return (welcomed.is_some(), welcomed),
            Ok(None) => {}
            Err(_) => {
                assert!(client.poll_transmit(at(0), &mut tx).is_none());
                return (false, None);
            }
        }
    }
    (false, None)
}

/// The genuine NK login's server connection (deterministic: made once).
static LOGGED_IN: LazyLock<std::sync::Mutex<ServerConnection<Vec<u8>, 4, 4>>> =
    LazyLock::new(|| {
        let (ok, conn) = login(true, |_, _| {});
        assert!(ok, "the genuine login succeeds");
        std::sync::Mutex::new(conn.unwrap())
    });

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let mut s = server();
            push(&mut s, rest, usize::from(mode / 4 % 8) + 1);
            let mut out = Vec::new();
            let _ = drive_server(&mut s, &mut out, &mut None);
        }
        1 => {
            let mut rx = [0u8; 1024];
            let mut client = device(mode & 4 == 0, &mut rx);
            let mut tx = vec![0u8; 1024];
            assert!(client.poll_transmit(at(0), &mut tx).is_some());
            let mut rest = rest;
            loop {
                let used = push(&mut client, rest, usize::MAX);
                rest = &rest[used..];
                match client.poll(at(0)) {
                    Ok(Some(_)) => return,
                    Ok(None) => {
                        while client.poll_transmit(at(0), &mut tx).is_some() {}
                        if used == 0 {
                            return;
                        }
                    }
                    Err(e) => {
                        assert!(client.poll_transmit(at(0), &mut tx).is_none());
                        assert!(client.poll(at(0)).is_err(), "{e:?} is final");
                        return;
                    }
                }
            }
        }
        2 => {
            // Edits to the same byte compose: two equal XORs cancel, and
            // the login is then genuine (the net XOR per byte is applied).
            let mut edits = std::collections::BTreeMap::<(usize, usize), u8>::new();
            for e in rest.chunks_exact(3) {
                *edits
                    .entry((usize::from(e[0] % 8), usize::from(e[1])))
                    .or_default() ^= e[2];
            }
            edits.retain(|_, xor| *xor != 0);
            let mut changed = false;
            let (ok, _) = login(mode & 4 == 0, |n, f| {
                for (&(frame, offset), &xor) in &edits {
                    // Past the length prefix: an edited prefix is a framing
                    // matter (tested elsewhere), and may just delay a frame.
                    let at = 2 + offset;
                    if frame == n && at < f.len() {
                        f[at] ^= xor;
                        changed = true;
                    }
                }
            });
            assert_eq!(
                ok, !changed,
                "an edited login never succeeds, a genuine one does"
            );
        }
        _ => {
            let mut conn = LOGGED_IN.lock().unwrap().clone();
            push(&mut conn, rest, usize::MAX);
            let mut tx = vec![0u8; 1024];
            // No genuine sealed frame is in the input (the device's keys
            // are not), so the first whole frame ends the session.
            match conn.poll_event(at(0)) {
                Ok(None) => {}
                Ok(Some(e)) => panic!("a forged frame was accepted: {e:?}"),
                Err(ConnectionError::Session(_) | ConnectionError::Frame(_)) => {
                    while conn.poll_transmit(at(0), &mut tx).is_some() {}
                    assert!(conn.poll_event(at(0)).is_err());
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    }
});
