//! Protocol v2's Noise initiator on a Cortex-M4 (QEMU mps2-an386): the
//! device side of docs/PROTOCOL.md's v2 draft vectors, for measuring.
//!
//! - `--features nk`: `Noise_NK` with the pinned server key: writes frame 1
//!   (the Hello encrypted), reads frame 2 (the Challenge), opens the
//!   server's Welcome frame and seals the call frame;
//! - `--features nn`: `Noise_NN`: frames 1 and 2, seals the Hello frame and
//!   opens the Challenge frame;
//! - `--features login`: tether-core's whole device login,
//!   `ClientHandshakeV2` over `Noise_NK` with cached keys (what
//!   tether-firmware's feature `v2` drives), against tether-core's v2
//!   server machine in memory, then one sealed call; only the device's
//!   work is measured: each of its calls into the machine is bracketed by
//!   the markers (the plugin prints one count per bracket; ./size adds
//!   them) and its stack depth is measured below the caller's frame
//!   (painted before each call);
//! - neither: the baseline, the same I/O and the same constants without
//!   Noise, so that `size` reports the flash Noise adds.
//!
//! Every output is compared with the draft's vectors; QEMU exits 0 only if
//! all matched. The stack below `main` is painted first and the high-water
//! mark printed. `noise_measure_begin` / `noise_measure_end` bracket the
//! handshake for an instruction-counting QEMU plugin (see ./size).
#![no_std]
#![no_main]

use core::hint::black_box;
use core::panic::PanicInfo;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};

#[allow(dead_code)]
mod vectors;

#[entry]
fn main() -> ! {
    #[cfg(feature = "login")]
    {
        let (ok, depth) = login::run();
        hprintln!("login ok={} stack={}", ok, depth);
        debug::exit(if ok {
            debug::EXIT_SUCCESS
        } else {
            debug::EXIT_FAILURE
        });
    }
    stack::paint();
    // Called through black_box'd pointers: never inlined, always present.
    black_box(noise_measure_begin as extern "C" fn())();
    let ok = run();
    black_box(noise_measure_end as extern "C" fn())();
    let used = stack::high_water();
    hprintln!("{} ok={} stack={}", variant(), ok, used);
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    loop {}
}

// The markers' bodies differ, or the linker folds them into one function.
#[inline(never)]
#[unsafe(no_mangle)]
extern "C" fn noise_measure_begin() {
    black_box(0x6265_6769_u32);
}

#[inline(never)]
#[unsafe(no_mangle)]
extern "C" fn noise_measure_end() {
    black_box(0x656e_6400_u32);
}

fn variant() -> &'static str {
    if cfg!(feature = "login") {
        "login"
    } else if cfg!(feature = "nk") {
        "nk"
    } else if cfg!(feature = "nn") {
        "nn"
    } else {
        "baseline"
    }
}

/// The baseline touches every constant the handshakes use.
#[cfg(not(any(feature = "nn", feature = "nk", feature = "login")))]
#[inline(never)]
fn run() -> bool {
    use vectors::*;
    let mut x = 0u8;
    for v in [
        &SERVER_PUBLIC[..],
        &DEVICE_EPHEMERAL,
        NK_HELLO,
        NK_MSG1,
        NK_MSG2,
        NK_WELCOME,
        NK_CALL_PLAIN,
        NK_CALL,
        NN_MSG1,
        NN_MSG2,
        NN_HELLO,
        NN_CHALLENGE,
    ] {
        for b in black_box(v) {
            x ^= b;
        }
    }
    black_box(x) != 1
}

#[cfg(any(feature = "nn", feature = "nk"))]
#[inline(never)]
fn run() -> bool {
    handshake::run()
}

#[cfg(feature = "login")]
#[inline(never)]
fn run() -> bool {
    true
}

#[cfg(feature = "login")]
mod login {
    use core::hint::black_box;

    use tether_core::connection::{
        ClientConfig, ClientHandshakeV2, Decoy, Instant, ServerConfig, ServerHandshake,
        ServerKeys, ServerStep,
    };
    use tether_core::method::builtin::Echo;
    use tether_core::noise::StaticKeypair;
    use tether_core::rand_core::{TryCryptoRng, TryRng};
    use tether_core::scram::{CachedKeys, ClientCredentials, Mechanism};

    use super::{noise_measure_begin, noise_measure_end, stack};

    /// mcu/qemu-core-test's Django row (4096 iterations).
    const DJANGO_ROW: &str =
        "pbkdf2_sha256$4096$TetherMcuSalt2026qemu0$oBCBcMTKDFsDALxnUOnfFdjMUpC+mPMQWck1ZUkv160=";
    const PASSWORD: &str = "correct horse battery staple";

    /// A counter's bytes (a device uses its TRNG).
    struct Counter(u8);
    impl TryRng for Counter {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(u32::from(self.0))
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(u64::from(self.0))
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
            for b in dest {
                self.0 = self.0.wrapping_mul(29).wrapping_add(7);
                *b = self.0;
            }
            Ok(())
        }
    }
    impl TryCryptoRng for Counter {}

    /// Runs `f` (a call into the device's machine) between the markers,
    /// on a painted stack; returns its result and how deep it went below
    /// this frame.
    #[inline(never)]
    fn device<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let sp = cortex_m::register::msp::read() as usize;
        stack::paint();
        black_box(noise_measure_begin as extern "C" fn())();
        let out = f();
        black_box(noise_measure_end as extern "C" fn())();
        (out, sp - stack::lowest())
    }

    /// Moves a frame from `from` into a machine's receive buffer.
    fn deliver(frame: &[u8], mut into: impl FnMut(&[u8]) -> usize) {
        let mut rest = frame;
        while !rest.is_empty() {
            let n = into(rest);
            if n == 0 {
                return;
            }
            rest = &rest[n..];
        }
    }

    pub fn run() -> (bool, usize) {
        let Ok(account) = tether_core::django::credentials(DJANGO_ROW) else {
            return (false, 0);
        };
        // PBKDF2 offline, before the measurement (a device logs in with
        // cached keys).
        let Ok(keys) =
            CachedKeys::derive(Mechanism::ScramSha256, PASSWORD, &account.salt, account.iterations)
        else {
            return (false, 0);
        };
        let server_key = StaticKeypair::from_secret(core::array::from_fn(|i| i as u8));
        let pinned = *server_key.public();
        let server_keys = ServerKeys {
            current: Some(server_key),
            previous: None,
            require_encryption: true,
        };
        let decoy = Decoy {
            secret: b"a server secret of 16+ bytes",
            iterations: 4096,
            mechanism: Mechanism::ScramSha256,
        };
        let (mut c_rx, mut c_tx) = ([0u8; 512], [0u8; 512]);
        let (mut s_rx, mut s_tx) = ([0u8; 512], [0u8; 512]);
        let mut rng = Counter(1);
        let now = Instant::from_millis(0);
        let mut depth = 0;
        let Ok(mut server) = ServerHandshake::<&mut [u8], 4, 2>::new_v2(
            &mut s_rx[..],
            ServerConfig::default(),
            now,
            server_keys,
            &mut rng,
        ) else {
            return (false, 0);
        };
        let (client, d) = device(|| {
            ClientHandshakeV2::<4>::new(
                &mut c_rx,
                "alice",
                ClientCredentials::Keys(&keys),
                Some(&pinned),
                &ClientConfig::default(),
                &mut Counter(2),
            )
        });
        depth = depth.max(d);
        let Ok(mut client) = client else {
            return (false, depth);
        };
        let mut server_conn = None;
        for _ in 0..6 {
            let (frame, d) = device(|| client.poll_transmit(now, &mut c_tx).map(<[u8]>::len));
            depth = depth.max(d);
            if let Some(len) = frame {
                deliver(&c_tx[..len], |bytes| {
                    let buf = server.receive_buffer();
                    let n = buf.len().min(bytes.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    server.commit(n);
                    n
                });
            }
            loop {
                match server.poll() {
                    Ok(Some(ServerStep::Login(_))) => {
                        if server.challenge(Some(account.clone()), &decoy, &mut rng).is_err() {
                            return (false, depth);
                        }
                    }
                    Ok(Some(ServerStep::Verified(_))) => {
                        let Ok((conn, frame)) = server.welcome(1, now, &mut s_tx) else {
                            return (false, depth);
                        };
                        let len = frame.len();
                        server_conn = Some(conn);
                        push(&mut client, &s_tx[..len], &mut depth);
                        break;
                    }
                    Ok(Some(_)) | Err(_) => return (false, depth),
                    Ok(None) => {}
                }
                match server.poll_transmit(&mut s_tx).map(<[u8]>::len) {
                    Some(len) => push(&mut client, &s_tx[..len], &mut depth),
                    None => break,
                }
            }
            let (polled, d) = device(|| client.poll(now).map(|e| e.map(|e| e.connection)));
            depth = depth.max(d);
            match polled {
                Ok(Some(mut conn)) => {
                    // The login is done; one sealed call.
                    let (call, d) = device(|| {
                        conn.call::<Echo>(now, &"hi", core::time::Duration::from_secs(5), &mut c_tx)
                            .map(|(_, f)| f.len())
                    });
                    depth = depth.max(d);
                    return (call.is_ok() && server_conn.is_some(), depth);
                }
                Ok(None) => {}
                Err(_) => return (false, depth),
            }
        }
        (false, depth)
    }

    /// Delivers a server frame to the device (its receive buffer and
    /// commit are the device's work, measured).
    fn push(client: &mut ClientHandshakeV2<'_, '_, 4>, frame: &[u8], depth: &mut usize) {
        deliver(frame, |bytes| {
            let (n, d) = device(|| {
                let buf = client.receive_buffer();
                let n = buf.len().min(bytes.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                client.commit(n);
                n
            });
            *depth = (*depth).max(d);
            n
        });
    }
}

#[cfg(any(feature = "nn", feature = "nk"))]
mod handshake {
    use core::hint::black_box;

    use tether_core::noise::{Initiator, TAG_LEN, Transport};
    use tether_core::rand_core::{TryCryptoRng, TryRng};

    use super::vectors::*;

    /// Hands out the vector's ephemeral key (a device uses its TRNG).
    struct Fixed;

    impl TryRng for Fixed {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(0)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(0)
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
            dest.copy_from_slice(black_box(&DEVICE_EPHEMERAL[..dest.len()]));
            Ok(())
        }
    }
    impl TryCryptoRng for Fixed {}

    fn prologue(pattern: u8) -> [u8; 10] {
        let mut p = *b"tether/2\x02\x00";
        p[9] = pattern;
        p
    }

    /// Seals `plain` as a v2 session frame body (seq || ciphertext || tag).
    fn seal<'b>(t: &mut Transport, plain: &[u8], out: &'b mut [u8]) -> Option<&'b [u8]> {
        out[..8].copy_from_slice(&t.send.nonce().to_be_bytes());
        out[8..8 + plain.len()].copy_from_slice(plain);
        let n = t.send.encrypt_with_ad(&[], &mut out[8..], plain.len()).ok()?;
        Some(&out[..8 + n])
    }

    /// Opens a v2 session frame body in place.
    fn open<'b>(t: &mut Transport, body: &'b mut [u8]) -> Option<&'b [u8]> {
        let seq = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
        if seq != t.recv.nonce() || body.len() < 8 + TAG_LEN {
            return None;
        }
        t.recv.decrypt_with_ad(&[], &mut body[8..]).ok().map(|p| &*p)
    }

    pub fn run() -> bool {
        let mut out = [0u8; 512];
        let mut buf = [0u8; 512];
        #[cfg(feature = "nk")]
        {
            let Ok((device, m1)) = Initiator::nk(&prologue(1), black_box(&SERVER_PUBLIC))
                .write_message(black_box(NK_HELLO), &mut out, &mut Fixed)
            else {
                return false;
            };
            if m1 != NK_MSG1 {
                return false;
            }
            buf[..NK_MSG2.len()].copy_from_slice(black_box(NK_MSG2));
            let Ok((mut t, challenge)) = device.read_message(&mut buf[..NK_MSG2.len()]) else {
                return false;
            };
            if challenge.first() != Some(&1) {
                return false;
            }
            let mut frame = [0u8; 128];
            frame[..NK_WELCOME.len()].copy_from_slice(black_box(NK_WELCOME));
            match open(&mut t, &mut frame[..NK_WELCOME.len()]) {
                Some(welcome) if welcome.first() == Some(&3) => {}
                _ => return false,
            }
            // The call is the device's second frame (the Proof was its first).
            t.send.set_nonce(1);
            seal(&mut t, black_box(NK_CALL_PLAIN), &mut out) == Some(NK_CALL)
        }
        #[cfg(all(feature = "nn", not(feature = "nk")))]
        {
            let Ok((device, m1)) =
                Initiator::nn(&prologue(0)).write_message(&[], &mut out, &mut Fixed)
            else {
                return false;
            };
            if m1 != NN_MSG1 {
                return false;
            }
            buf[..NN_MSG2.len()].copy_from_slice(black_box(NN_MSG2));
            let Ok((mut t, _)) = device.read_message(&mut buf[..NN_MSG2.len()]) else {
                return false;
            };
            if seal(&mut t, black_box(NK_HELLO), &mut out) != Some(NN_HELLO) {
                return false;
            }
            let mut frame = [0u8; 160];
            frame[..NN_CHALLENGE.len()].copy_from_slice(black_box(NN_CHALLENGE));
            matches!(open(&mut t, &mut frame[..NN_CHALLENGE.len()]), Some(c) if c.first() == Some(&1))
        }
    }
}

/// Stack painting: the measurement's only unsafe code (not in tether-core).
mod stack {
    const PAINT: u32 = 0xCAFE_F00D;

    unsafe extern "C" {
        static _stack_end: u32;
        static _stack_start: u32;
    }

    fn bottom() -> usize {
        (&raw const _stack_end) as usize
    }

    fn top() -> usize {
        (&raw const _stack_start) as usize
    }

    /// Fills the stack from its bottom to a little below the current frame.
    #[inline(never)]
    pub fn paint() {
        let sp = cortex_m::register::msp::read() as usize;
        let mut addr = bottom();
        while addr < sp - 64 {
            // SAFETY: [bottom, sp - 64) is this stack's unused part: nothing
            // lives there yet, and the linker reserves it (memory.x).
            unsafe { (addr as *mut u32).write_volatile(PAINT) };
            addr += 4;
        }
    }

    /// The lowest address written since `paint`.
    #[cfg(feature = "login")]
    #[inline(never)]
    pub fn lowest() -> usize {
        let mut addr = bottom();
        // SAFETY: reads within the stack region (memory.x).
        while addr < top() && unsafe { (addr as *const u32).read_volatile() } == PAINT {
            addr += 4;
        }
        addr
    }

    /// Bytes of stack used since `paint`, counted from the top.
    #[inline(never)]
    pub fn high_water() -> usize {
        let mut addr = bottom();
        // SAFETY: reads within the stack region (memory.x).
        while addr < top() && unsafe { (addr as *const u32).read_volatile() } == PAINT {
            addr += 4;
        }
        top() - addr
    }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}
