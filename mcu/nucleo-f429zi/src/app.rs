//! The example's application: what the server can ask of the board
//! (`device_info`, `echo`, `set_led`), the `button` notification, and the
//! session that tether-firmware's `embassy::Link` keeps up, logging in with
//! the account and keys of the binary's key store (`crate::Store`: the
//! example keeps them in flash, see `src/main.rs`).

use core::convert::Infallible;
use core::ops::ControlFlow;

use defmt::{info, warn};
use embassy_net::Stack;
use embassy_stm32::exti::ExtiInput;
use embassy_stm32::gpio::{Level, Output};
use embassy_stm32::mode::Async;
use embassy_time::Instant;
use serde::{Deserialize, Serialize};
use tether_core::method::Method;
use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo};
use tether_core::scram::{CachedKeys, ScramError};
use tether_firmware::embassy::{Account, HostName, Link};
use tether_firmware::storage::Stored;
use tether_firmware::{Backoff, BufferStore, Error, Handler, Request, Responded, Responder};

use crate::Store;
use crate::board::{KeyFlash, Trng};
use crate::settings::{CONFIG, PASSWORD, SERVER_NAME, SERVER_PORT, USERNAME};

/// Server -> device: switch LD1.
pub struct SetLed;
impl Method for SetLed {
    const NAME: &'static str = "set_led";
    type Args<'a> = bool;
    type Reply<'a> = ();
}
impl tether_core::method::ToDevice for SetLed {}

/// Device -> server notification: the user button was pressed.
pub struct Button;
#[derive(Serialize, Deserialize)]
pub struct Press {
    /// How many presses since boot.
    pub count: u32,
}
impl Method for Button {
    const NAME: &'static str = "button";
    type Args<'a> = Press;
    type Reply<'a> = ();
}
impl tether_core::method::ToServer for Button {}

/// The mind: what the server can ask of this board.
struct Mind {
    led: Output<'static>,
}

impl Handler for Mind {
    async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
        if req.is::<DeviceInfo>() {
            reply.ok::<DeviceInfo>(&DeviceStatus {
                firmware: concat!("nucleo-f429zi-tether ", env!("CARGO_PKG_VERSION")),
                uptime_secs: Instant::now().as_secs(),
            })
        } else if req.is::<Echo>() {
            match req.args::<Echo>() {
                Ok(text) => reply.ok::<Echo>(&text),
                Err(_) => reply.bad_arguments(),
            }
        } else if req.is::<SetLed>() {
            match req.args::<SetLed>() {
                Ok(on) => {
                    self.led
                        .set_level(if on { Level::High } else { Level::Low });
                    reply.ok::<SetLed>(&())
                }
                Err(_) => reply.bad_arguments(),
            }
        } else {
            reply.unknown_method()
        }
    }
}

/// Where the account and its keys are kept between boots.
pub trait Keys: Sized {
    /// Opens the store on the key flash; the account and keys it holds.
    async fn open(flash: KeyFlash) -> (Self, Option<Stored>);
    /// Keeps the keys a first login derived.
    async fn save(&mut self, username: &str, keys: &CachedKeys);
    /// Drops stale keys; the username stays.
    async fn forget(&mut self);
}

/// Says why the device gave up, and drops stale keys.
async fn report(fatal: Result<Infallible, Error<tether_firmware::embassy::TcpError>>, store: &mut Store) {
    match fatal {
        Err(Error::Login(ScramError::CachedKeysMismatch)) => {
            // The password was changed or Django re-hashed it: these
            // keys will never work again, and there is no password to
            // derive new ones from (with `PASSWORD`, `Link` derives
            // them by itself and hands them over to be saved). Drop
            // them (the username stays) and wait to be provisioned
            // again.
            warn!("the stored keys are stale: provision this device again");
            Keys::forget(store).await;
        }
        Err(Error::Refused { code, .. }) => {
            warn!("login refused ({}): check the account", code.as_str());
        }
        _ => warn!("cannot log in; check the account"),
    }
}

/// Logs in as the account in the key store (or `USERNAME`), serves the
/// server's calls and notifies it of button presses, reconnecting whenever
/// the connection is lost; if the login cannot succeed without a human,
/// says why and blinks LD1. Called by `board`'s `main` once DHCP is done.
pub async fn device_main(
    stack: Stack<'static>,
    mut rng: Trng,
    led: Output<'static>,
    mut button: ExtiInput<'static, Async>,
    flash: KeyFlash,
) -> ! {
    let (mut store, stored) = Store::open(flash).await;
    let username = stored.as_ref().map_or(USERNAME, |s| s.username.as_str());
    let keys = stored.as_ref().and_then(|s| s.keys.clone());
    info!(
        "account {} ({})",
        username,
        if keys.is_some() { "keys from flash" } else { "no keys yet" }
    );
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
    // A first boot's offline PBKDF2 (a minute or more): a log line
    // every 10%. Feed a watchdog here if the firmware runs one.
    #[cfg(feature = "first-login")]
    let mut progress = |done: u32, total: u32| {
        if total >= 10 && done % (total / 10) < tether_firmware::embassy::DERIVATION_STEP {
            info!("deriving keys: {}/{} iterations", done, total);
        }
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
    #[cfg(feature = "first-login")]
    let link = link.on_derivation(&mut progress);
    let mut link = link;
    let mut mind = Mind { led };
    let mut presses = 0u32;
    let fatal = link
        .run(&mut rng, async |connected| {
            info!("logged in");
            if let Some(keys) = connected.new_keys {
                Keys::save(&mut store, username, keys).await;
            }
            let session = &mut connected.session;
            loop {
                // Serve the server until the button is pressed.
                match session
                    .serve_until(&mut mind, button.wait_for_rising_edge())
                    .await
                {
                    Ok(()) => {
                        presses += 1;
                        if let Err(e) = session.notify::<Button>(&Press { count: presses }).await
                            && let tether_firmware::CallError::Session(lost) = e
                        {
                            return ControlFlow::<Infallible, _>::Continue(lost);
                        }
                    }
                    Err(lost) => return ControlFlow::<Infallible, _>::Continue(lost),
                }
            }
        })
        .await;
    // Only what retrying cannot fix ends up here: a human must act.
    report(fatal, &mut store).await;
    loop {
        mind.led.toggle();
        embassy_time::Timer::after_millis(200).await;
    }
}
