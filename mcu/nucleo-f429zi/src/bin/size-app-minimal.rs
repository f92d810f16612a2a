//! `./size`'s app-minimal variant: the example's Tether session without its
//! application: every call is answered `unknown_method`, a button press
//! only toggles LD1 (as in the baseline), no notification, no report of a
//! fatal error, keys in RAM only. The example minus this is its own
//! application; this minus the baseline is tether-firmware + tether-core
//! (built with `--features v2` too: client + core with protocol v2).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::convert::Infallible;
use core::ops::ControlFlow;

use board::{KeyFlash, Trng};
use defmt::info;
use embassy_net::Stack;
use embassy_stm32::exti::ExtiInput;
use embassy_stm32::gpio::Output;
use embassy_stm32::mode::Async;
use settings::{CONFIG, PASSWORD, SERVER_NAME, SERVER_PORT, USERNAME};
use tether_core::scram::CachedKeys;
use tether_firmware::embassy::{Account, HostName, Link, TcpError};
use tether_firmware::storage::Stored;
use tether_firmware::{Backoff, BufferStore, Error, Handler, Request, Responded, Responder};

// The example's board bring-up (its `main` runs `device_main`) and settings.
#[path = "../board.rs"]
mod board;
#[path = "../settings.rs"]
mod settings;

/// A mind that knows no method.
struct Mind {
    led: Output<'static>,
}

impl Handler for Mind {
    async fn on_call(&mut self, _req: Request<'_>, reply: Responder<'_>) -> Responded {
        reply.unknown_method()
    }
}

/// No key store: keys in RAM only, the built-in account. The example's
/// steps with it (open, save after a first login, report a fatal error)
/// are kept, doing nothing, so that this variant has the example's shape
/// and the difference is the application's code and state.
type Store = ();

async fn open_store(_flash: KeyFlash) -> (Store, Option<Stored>) {
    ((), None)
}

async fn save_keys(_store: &mut Store, _username: &str, _keys: &CachedKeys) {}

async fn report(_fatal: Result<Infallible, Error<TcpError>>, _store: &mut Store) {}

/// The example's `app::device_main` with its application taken away.
/// Called by `board`'s `main` once DHCP is done.
async fn device_main(
    stack: Stack<'static>,
    mut rng: Trng,
    led: Output<'static>,
    mut button: ExtiInput<'static, Async>,
    flash: KeyFlash,
) -> ! {
    let (mut store, stored) = open_store(flash).await;
    let username = stored.as_ref().map_or(USERNAME, |s| s.username.as_str());
    let keys = stored.as_ref().and_then(|s| s.keys.clone());
    // 1 KiB each way for the TCP socket (network stack), and the
    // client's 512-byte frame buffers.
    let (mut sock_rx, mut sock_tx) = ([0u8; 1024], [0u8; 1024]);
    let mut store_buf: BufferStore<512, 512> = BufferStore::new();
    let server = HostName {
        host: SERVER_NAME,
        port: SERVER_PORT,
    };
    let account = Account {
        username,
        password: PASSWORD,
        keys,
    };
    let link = Link::new(
        stack,
        server,
        &mut sock_rx,
        &mut sock_tx,
        store_buf.buffers(),
        account,
        &CONFIG,
        Backoff::default(),
    );
    // Rebound as the example rebinds it (for the first login's progress):
    // the same code as the example's without `first-login`.
    let mut link = link;
    let mut mind = Mind { led };
    let fatal = link
        .run(&mut rng, async |connected| {
            info!("logged in");
            if let Some(keys) = connected.new_keys {
                save_keys(&mut store, username, keys).await;
            }
            let session = &mut connected.session;
            loop {
                // Serve the server until the button is pressed, which
                // only toggles LD1.
                match session
                    .serve_until(&mut mind, button.wait_for_rising_edge())
                    .await
                {
                    Ok(()) => mind.led.toggle(),
                    Err(lost) => return ControlFlow::<Infallible, _>::Continue(lost),
                }
            }
        })
        .await;
    report(fatal, &mut store).await;
    loop {
        mind.led.toggle();
        embassy_time::Timer::after_millis(200).await;
    }
}
