//! tether-core on a Cortex-M4 (QEMU mps2-an386): both ends of a Tether login
//! and session run in memory, every message crossing a frame encoder and an
//! incremental frame decoder as it would cross TCP.
//!
//! 1. The server turns a Django `pbkdf2_sha256` row into a SCRAM verifier
//!    (no PBKDF2).
//! 2. Password login: SCRAM-SHA-256, the server checks the proof, the device
//!    checks the server's signature; the device runs PBKDF2 once.
//! 3. A session frame each way is authenticated; a tampered frame and a
//!    replayed one are rejected.
//! 4. Second login with the device's cached keys (no PBKDF2), frames again.
//! 5. Impostors: a forged server signature, keys not matching the row, and a
//!    server asking for fewer iterations than the device's floor all fail.
//!
//! Every step is printed over semihosting; QEMU exits 0 only if all passed
//! (any failure panics, and the panic handler exits with a failure status).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::convert::Infallible;
use core::fmt::Debug;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprintln};
use tether_core::django;
use tether_core::frame::{FrameDecoder, encode_message};
use tether_core::message::{self, Challenge, Handshake, Hello, Message, Proof, Welcome};
use tether_core::rand_core::{TryCryptoRng, TryRng};
use tether_core::scram::{
    CachedKeys, ClientConfig, ClientCredentials, ClientLogin, ClientProofSent, ClientSuccess, Key,
    Mechanism, ScramError, ServerCredentials, ServerLogin, ServerSuccess,
};
use tether_core::session::{Role, SessionError};

const USERNAME: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";

/// alice's `auth_user.password`, in Django's exact format, with a low
/// iteration count so that the device's PBKDF2 is quick under emulation:
/// ```text
/// python3 -c "import hashlib,base64; s='TetherMcuSalt2026qemu0'; \
///   print('pbkdf2_sha256\$4096\$'+s+'\$'+base64.b64encode(hashlib.pbkdf2_hmac( \
///   'sha256', b'correct horse battery staple', s.encode(), 4096, 32)).decode())"
/// ```
const DJANGO_ROW: &str =
    "pbkdf2_sha256$4096$TetherMcuSalt2026qemu0$oBCBcMTKDFsDALxnUOnfFdjMUpC+mPMQWck1ZUkv160=";

/// The same password hashed with 1000 iterations (same recipe, salt
/// `TetherMcuLowIterSalt01`): below the device's floor, so a server offering
/// it must be refused before any PBKDF2 runs.
const DJANGO_ROW_LOW_ITERATIONS: &str =
    "pbkdf2_sha256$1000$TetherMcuLowIterSalt01$EElCbSHkcuTlIn3wC3vu9Zu1SE2PEt+1UZBHHgSmAMk=";

/// The device's iteration floor: RFC 7677's minimum, which the test row meets.
const MIN_ITERATIONS: u32 = 4096;

/// Frame body limit announced by both ends (the protocol's minimum).
const MAX_FRAME: u16 = 512;
const MAX: usize = MAX_FRAME as usize;

/// Milliseconds since boot, counted by SysTick (QEMU's virtual clock, so a
/// rough guide to emulation speed, not to a real Cortex-M4's).
static MILLIS: AtomicU32 = AtomicU32::new(0);

/// mps2-an386's system clock in QEMU.
const SYSCLK_HZ: u32 = 25_000_000;

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

fn millis() -> u32 {
    MILLIS.load(Ordering::Relaxed)
}

/// A counter-based generator (SplitMix64) for nonces. Deterministic and NOT
/// secure: fine for a test, where both ends are ours; a device must use its
/// hardware RNG.
struct TestRng(u64);

impl TryRng for TestRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.try_next_u64()? >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let word = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    }
}

impl TryCryptoRng for TestRng {}

/// Fails the run with the step's name and the error.
trait Check<T> {
    fn check(self, step: &str) -> T;
}

impl<T, E: Debug> Check<T> for Result<T, E> {
    #[track_caller]
    fn check(self, step: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{step}: {e:?}"),
        }
    }
}

#[track_caller]
fn ensure(ok: bool, step: &str) {
    if !ok {
        panic!("{step}");
    }
}

/// One direction of the in-memory link: the sender's frame buffer and the
/// receiver's decoder.
struct Pipe<'b> {
    wire: [u8; MAX + 2],
    decoder: FrameDecoder<&'b mut [u8]>,
}

impl<'b> Pipe<'b> {
    fn new(rx_buf: &'b mut [u8]) -> Self {
        Self {
            wire: [0; MAX + 2],
            decoder: FrameDecoder::new(rx_buf, MAX),
        }
    }
}

/// Hands `frame` to `decoder` in two pieces, as TCP may, and returns the
/// frame body it yields.
fn deliver<'d>(decoder: &'d mut FrameDecoder<&mut [u8]>, frame: &[u8]) -> &'d [u8] {
    let split = frame.len() / 2;
    let (used, body) = decoder
        .push(&frame[..split])
        .check("decode frame, first part");
    ensure(used == split && body.is_none(), "frame completed early");
    let (used, body) = decoder
        .push(&frame[split..])
        .check("decode frame, second part");
    ensure(used == frame.len() - split, "frame not consumed whole");
    match body {
        Some(body) => body,
        None => panic!("frame incomplete"),
    }
}

/// Sends a handshake message through `pipe` and hands the decoded message to
/// `receive`.
fn send_handshake<R>(
    pipe: &mut Pipe<'_>,
    msg: &Handshake<'_>,
    receive: impl FnOnce(Handshake<'_>) -> R,
) -> R {
    let frame = encode_message(msg, &mut pipe.wire, MAX).check("encode handshake frame");
    let body = deliver(&mut pipe.decoder, frame);
    receive(message::decode(body).check("decode handshake message"))
}

/// What a login leaves behind when it succeeded on both ends.
struct Login {
    device: ClientSuccess,
    server: ServerSuccess,
}

/// How the test server answers, to play an impostor.
#[derive(Clone, Copy, PartialEq)]
enum ServerPlay {
    Honest,
    ForgeSignature,
}

/// A full login over frames: hello, challenge, proof, welcome. A step that
/// refuses (the device refusing the challenge or the server's signature, the
/// server refusing the proof) is returned as an error for the negative
/// tests; anything else unexpected fails the run.
fn handshake(
    label: &str,
    credentials: ClientCredentials<'_>,
    row: &str,
    play: ServerPlay,
    rngs: &mut (TestRng, TestRng),
    c2s: &mut Pipe<'_>,
    s2c: &mut Pipe<'_>,
    verbose: bool,
) -> Result<Login, (&'static str, ScramError)> {
    let config = ClientConfig {
        min_iterations: MIN_ITERATIONS,
        ..ClientConfig::default()
    };

    // Device -> server: hello.
    let login = ClientLogin::<256>::new(USERNAME, credentials, config, &mut rngs.0)
        .check("ClientLogin::new");
    let hello = Handshake::Hello(Hello {
        version: message::PROTOCOL_VERSION,
        mechanisms: login.mechanisms(),
        max_frame: MAX_FRAME,
        client_first: login.client_first(),
    });
    if verbose {
        hprintln!("  device -> hello      {}", login.client_first());
    }
    let server = send_handshake(c2s, &hello, |msg| {
        let Handshake::Hello(hello) = msg else {
            panic!("{label}: expected a hello")
        };
        ensure(hello.version == message::PROTOCOL_VERSION, "hello version");
        ensure(hello.max_frame >= MAX_FRAME, "hello max_frame");
        ensure(
            hello.mechanisms.contains(Mechanism::ScramSha256),
            "hello offers SCRAM-SHA-256",
        );
        ServerLogin::<512>::new(hello.client_first).check("ServerLogin::new")
    });
    ensure(server.username() == USERNAME, "server reads the username");

    // Server -> device: challenge from the Django row (no PBKDF2 here).
    let creds: ServerCredentials = django::credentials(row).check("django::credentials");
    ensure(
        creds.mechanism == Mechanism::ScramSha256,
        "row is SCRAM-SHA-256",
    );
    let server = server
        .challenge(&creds, &mut rngs.1)
        .check("ServerLogin::challenge");
    let challenge = Handshake::Challenge(Challenge {
        mechanism: creds.mechanism,
        server_first: server.server_first(),
    });
    if verbose {
        hprintln!("  server -> challenge  {}", server.server_first());
    }
    let t0 = millis();
    let device: ClientProofSent = send_handshake(s2c, &challenge, |msg| {
        let Handshake::Challenge(ch) = msg else {
            panic!("{label}: expected a challenge")
        };
        login.handle_challenge(ch.mechanism, ch.server_first)
    })
    .map_err(|e| ("device rejects the challenge", e))?;
    let proof_ms = millis().wrapping_sub(t0);

    // Device -> server: proof; the server verifies it.
    let proof = Handshake::Proof(Proof {
        client_final: device.client_final(),
    });
    if verbose {
        hprintln!("  device -> proof      {}", device.client_final());
    }
    let server = send_handshake(c2s, &proof, |msg| {
        let Handshake::Proof(p) = msg else {
            panic!("{label}: expected a proof")
        };
        server.verify(p.client_final)
    })
    .map_err(|e| ("server rejects the proof", e))?;
    ensure(
        server.username() == USERNAME,
        "server's authenticated username",
    );

    // Server -> device: welcome with the server's signature; the device
    // verifies it.
    let mut forged = [0u8; 64];
    let server_final = match play {
        ServerPlay::Honest => server.server_final(),
        ServerPlay::ForgeSignature => {
            // Change the signature's first base64 character (after "v="),
            // as an impostor without ServerKey must guess it.
            let real = server.server_final().as_bytes();
            let forged = &mut forged[..real.len()];
            forged.copy_from_slice(real);
            forged[2] = if forged[2] == b'A' { b'B' } else { b'A' };
            core::str::from_utf8(forged).check("forged signature")
        }
    };
    let welcome = Handshake::Welcome(Welcome {
        server_final,
        session_id: 1,
        max_frame: MAX_FRAME,
        heartbeat_secs: 30,
    });
    if verbose {
        hprintln!("  server -> welcome    {}", server_final);
    }
    let device = send_handshake(s2c, &welcome, |msg| {
        let Handshake::Welcome(w) = msg else {
            panic!("{label}: expected a welcome")
        };
        ensure(w.max_frame >= MAX_FRAME, "welcome max_frame");
        device.handle_server_final(w.server_final)
    })
    .map_err(|e| ("device rejects the server's signature", e))?;
    hprintln!(
        "  {}: mutually authenticated as {:?}; PBKDF2 ran on the device: {} (proof took {} ms)",
        label,
        server.username(),
        device.derived,
        proof_ms
    );
    Ok(Login { device, server })
}

/// Session frames both ways, then a tampered and a replayed frame.
fn session_frames(label: &str, login: Login, c2s: &mut Pipe<'_>, s2c: &mut Pipe<'_>) -> CachedKeys {
    let (mut device_tx, mut device_rx) = login.device.session.into_halves(Role::Client);
    let (mut server_tx, mut server_rx) = login.server.session.into_halves(Role::Server);

    // Device -> server: a call.
    let call = Message::Call {
        id: 7,
        method: "sensor.report",
        args: b"\x15\x2a",
    };
    let frame = device_tx
        .seal(&call, &mut c2s.wire, MAX)
        .check("device seals a call");
    let body = deliver(&mut c2s.decoder, frame);
    let got = server_rx.open(body).check("server opens the call");
    ensure(got == call, "server receives the call unchanged");
    hprintln!(
        "  {}: device -> server call frame ({} bytes) verified",
        label,
        frame.len()
    );

    // Server -> device: its reply.
    let reply = Message::Reply {
        id: 7,
        result: b"\x01",
    };
    let frame = server_tx
        .seal(&reply, &mut s2c.wire, MAX)
        .check("server seals a reply");
    let body = deliver(&mut s2c.decoder, frame);
    let got = device_rx.open(body).check("device opens the reply");
    ensure(got == reply, "device receives the reply unchanged");
    hprintln!(
        "  {}: server -> device reply frame ({} bytes) verified",
        label,
        frame.len()
    );

    // Device -> server: a notify, altered in transit (one bit of the
    // message), must fail its tag; the genuine frame then opens, and the
    // same frame played again is refused. (An opener that failed opens
    // nothing more: the tampered frame is tried on a copy of it.)
    let notify = Message::Notify {
        method: "sensor.alarm",
        args: b"\x00",
    };
    let frame = device_tx
        .seal(&notify, &mut c2s.wire, MAX)
        .check("device seals a notify");
    let mut tampered = [0u8; MAX + 2];
    let tampered = &mut tampered[..frame.len()];
    tampered.copy_from_slice(frame);
    let last_arg = frame.len() - tether_core::session::TAG_LEN - 1;
    tampered[last_arg] ^= 0x01;
    let body = deliver(&mut c2s.decoder, tampered);
    match server_rx.clone().open(body) {
        Err(SessionError::BadTag) => {}
        other => panic!("{label}: tampered frame not rejected: {other:?}"),
    }
    hprintln!("  {}: tampered frame rejected (bad tag)", label);
    let body = deliver(&mut c2s.decoder, frame);
    let got = server_rx
        .open(body)
        .check("server opens the genuine notify");
    ensure(got == notify, "server receives the notify unchanged");
    let body = deliver(&mut c2s.decoder, frame);
    match server_rx.open(body) {
        Err(SessionError::Replayed {
            seq: 1,
            expected: 2,
        }) => {}
        other => panic!("{label}: replayed frame not rejected: {other:?}"),
    }
    hprintln!("  {}: genuine frame accepted, its replay rejected", label);
    login.device.keys
}

#[entry]
fn main() -> ! {
    hprintln!("qemu-core-test: tether-core on a Cortex-M4 (QEMU mps2-an386)");
    if cfg!(feature = "selftest-panic") {
        panic!("selftest-panic: deliberate failure");
    }
    if let Some(mut p) = cortex_m::Peripherals::take() {
        p.SYST.set_clock_source(SystClkSource::Core);
        p.SYST.set_reload(SYSCLK_HZ / 1000 - 1);
        p.SYST.clear_current();
        p.SYST.enable_interrupt();
        p.SYST.enable_counter();
    }

    let (mut c2s_buf, mut s2c_buf) = ([0u8; MAX], [0u8; MAX]);
    let mut c2s = Pipe::new(&mut c2s_buf);
    let mut s2c = Pipe::new(&mut s2c_buf);
    let mut rngs = (TestRng(1), TestRng(0x5eed));

    hprintln!("[1] server: Django row -> SCRAM verifier");
    let parsed = django::parse(DJANGO_ROW).check("django::parse");
    hprintln!(
        "  {} iterations, salt {:?} (no PBKDF2 on the server)",
        parsed.iterations,
        parsed.salt
    );

    hprintln!("[2] login 1: password (SCRAM-SHA-256)");
    let first = handshake(
        "login 1",
        ClientCredentials::Password(PASSWORD),
        DJANGO_ROW,
        ServerPlay::Honest,
        &mut rngs,
        &mut c2s,
        &mut s2c,
        true,
    )
    .check("login 1");
    ensure(first.device.derived, "login 1 derived the keys");

    hprintln!("[3] session 1: authenticated frames");
    let keys = session_frames("session 1", first, &mut c2s, &mut s2c);
    hprintln!(
        "  cached keys: {} iterations, mechanism {}",
        keys.iterations,
        keys.mechanism
    );

    hprintln!("[4] login 2: cached keys (no PBKDF2)");
    let second = handshake(
        "login 2",
        ClientCredentials::Keys(&keys),
        DJANGO_ROW,
        ServerPlay::Honest,
        &mut rngs,
        &mut c2s,
        &mut s2c,
        false,
    )
    .check("login 2");
    ensure(!second.device.derived, "login 2 ran no PBKDF2");
    hprintln!("[5] session 2: authenticated frames");
    session_frames("session 2", second, &mut c2s, &mut s2c);

    hprintln!("[6] impostors");
    match handshake(
        "forged server",
        ClientCredentials::Keys(&keys),
        DJANGO_ROW,
        ServerPlay::ForgeSignature,
        &mut rngs,
        &mut c2s,
        &mut s2c,
        false,
    ) {
        Err(("device rejects the server's signature", ScramError::InvalidServerSignature)) => {}
        Err((step, e)) => panic!("forged server: unexpected failure at '{step}': {e:?}"),
        Ok(_) => panic!("forged server signature accepted"),
    }
    hprintln!("  forged server signature: rejected by the device");

    let mut wrong = keys.clone();
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(wrong.client_key.as_bytes());
    bytes[0] ^= 0x80;
    wrong.client_key = Key::from_slice(&bytes)
        .ok_or("32 bytes")
        .check("Key::from_slice");
    match handshake(
        "wrong keys",
        ClientCredentials::Keys(&wrong),
        DJANGO_ROW,
        ServerPlay::Honest,
        &mut rngs,
        &mut c2s,
        &mut s2c,
        false,
    ) {
        Err(("server rejects the proof", ScramError::InvalidProof)) => {}
        Err((step, e)) => panic!("wrong keys: unexpected failure at '{step}': {e:?}"),
        Ok(_) => panic!("wrong client key accepted"),
    }
    hprintln!("  device without the password: proof rejected by the server");

    match handshake(
        "low iterations",
        ClientCredentials::Password(PASSWORD),
        DJANGO_ROW_LOW_ITERATIONS,
        ServerPlay::Honest,
        &mut rngs,
        &mut c2s,
        &mut s2c,
        false,
    ) {
        Err((
            "device rejects the challenge",
            ScramError::IterationsTooLow {
                offered: 1000,
                minimum: MIN_ITERATIONS,
            },
        )) => {}
        Err((step, e)) => panic!("low iterations: unexpected failure at '{step}': {e:?}"),
        Ok(_) => panic!("iteration count below the floor accepted"),
    }
    hprintln!(
        "  server offering 1000 iterations (< {}): refused by the device",
        MIN_ITERATIONS
    );

    hprintln!("qemu-core-test: PASS (all steps verified, {} ms)", millis());
    debug::exit(debug::EXIT_SUCCESS);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Any panic fails the run: report it and leave QEMU with a failure status.
#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    hprintln!("qemu-core-test: FAIL: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}
