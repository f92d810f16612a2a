//! A Tether device on an ESP32-C3 (an ESP32-C3-DevKitM-1 or any board with
//! 4 MiB of flash): esp-hal, esp-rtos running embassy, esp-radio's Wi-Fi
//! station under embassy-net, and tether-firmware's `embassy::Link`:
//!
//! - joins the Wi-Fi network `WIFI_SSID` (and joins again whenever the
//!   access point drops it, backing off), gets its address by DHCP and
//!   finds the server by DNS (`SERVER_NAME`), again before every
//!   reconnection;
//! - logs in as the account kept in flash (`KEY_REGION`: username and keys,
//!   written at the factory by `firmware-client/examples/provision.rs`
//!   `--board esp32c3`, or saved here after a first password login);
//! - answers the server's `device_info` and `echo`;
//! - notifies the server `button` when the BOOT button (GPIO9) is pressed;
//! - reconnects to the server with exponential backoff and jitter.
//!
//! Wi-Fi credentials and the server's name are read from the environment at
//! build time (`WIFI_SSID`, `WIFI_PASSWORD`, `TETHER_SERVER`), with the
//! defaults below. Logs go out over RTT with defmt.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::ops::ControlFlow;

use defmt::{info, warn};
use embassy_embedded_hal::adapter::BlockingAsync;
use embassy_executor::Spawner;
use embassy_net::{Runner, Stack, StackResources};
use embassy_time::{Duration, Instant, Timer};
use esp_hal::clock::CpuClock;
use esp_hal::gpio::{Input, InputConfig, Pull};
use esp_hal::rng::{Trng, TrngSource};
use esp_hal::timer::timg::TimerGroup;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{AuthenticationMethodConfig, Config as WifiConfig, Interface, WifiController};
use esp_storage::FlashStorage;
use serde::{Deserialize, Serialize};
use static_cell::StaticCell;
use tether_core::method::Method;
use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo};
use tether_core::scram::ScramError;
use tether_firmware::embassy::{Account, HostName, Link};
use tether_firmware::storage::KeyStore;
use tether_firmware::{
    Backoff, BufferStore, CallError, Config, Error, Handler, Request, Responded, Responder,
};
use {defmt_rtt as _, esp_backtrace as _};

esp_bootloader_esp_idf::esp_app_desc!();

/// A build-time setting from the environment, or a default.
macro_rules! setting {
    ($name:literal, $default:literal) => {
        match option_env!($name) {
            Some(v) => v,
            None => $default,
        }
    };
}

const WIFI_SSID: &str = setting!("WIFI_SSID", "tether-lab");
const WIFI_PASSWORD: &str = setting!("WIFI_PASSWORD", "change me");
/// The Tether server's name (a dotted IPv4 address works too).
const SERVER_NAME: &str = setting!("TETHER_SERVER", "tether.example.com");
const SERVER_PORT: u16 = tether_core::frame::DEFAULT_PORT;
/// The account used when the flash holds none (development only).
const USERNAME: &str = "sensor-7";
/// The password for a first login when the flash holds no keys; `None` for
/// a device provisioned at the factory (the password never reaches it).
const PASSWORD: Option<&str> = Some("change me");
/// The key store: the last two 4 KiB sectors of the 4 MiB flash, past the
/// partition table's app and data partitions. `provision --board esp32c3`
/// writes the same region.
const KEY_REGION: core::ops::Range<u32> = 0x3F_E000..0x40_0000;

/// Device -> server notification: the BOOT button was pressed.
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
struct Mind;

impl Handler for Mind {
    async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
        if req.is::<DeviceInfo>() {
            reply.ok::<DeviceInfo>(&DeviceStatus {
                firmware: concat!("esp32c3-tether ", env!("CARGO_PKG_VERSION")),
                uptime_secs: Instant::now().as_secs(),
            })
        } else if req.is::<Echo>() {
            match req.args::<Echo>() {
                Ok(text) => reply.ok::<Echo>(&text),
                Err(_) => reply.bad_arguments(),
            }
        } else {
            reply.unknown_method()
        }
    }
}

/// Keeps the station associated: joins, waits for the access point to drop
/// it, joins again, backing off from 1 s to 60 s while joins fail.
#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>) {
    let (Ok(ssid), Ok(password)) = (WIFI_SSID.try_into(), WIFI_PASSWORD.try_into()) else {
        warn!("wifi: the SSID or the password is too long");
        return;
    };
    let station = StationConfig::default()
        .with_ssid(ssid)
        .with_authentication(AuthenticationMethodConfig::WpaWpa2Personal(password));
    if controller.set_config(&WifiConfig::Station(station)).is_err() {
        warn!("wifi: the station configuration was refused");
        return;
    }
    let mut delay = Duration::from_secs(1);
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                info!("wifi: joined {}", WIFI_SSID);
                delay = Duration::from_secs(1);
                let _ = controller.wait_for_disconnect_async().await;
                warn!("wifi: disconnected");
            }
            Err(_) => {
                warn!("wifi: cannot join {}; again in {} s", WIFI_SSID, delay.as_secs());
                Timer::after(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface>) {
    runner.run().await
}

#[esp_rtos::main]
async fn main(spawner: Spawner) {
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // esp-radio's buffers and tasks live on this heap.
    esp_alloc::heap_allocator!(size: 72 * 1024);
    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);
    info!("esp32c3-tether {}", env!("CARGO_PKG_VERSION"));

    // The TRNG (SAR ADC noise while the radio is off, radio noise after).
    let _trng_source = TrngSource::new(peripherals.RNG, peripherals.ADC1);
    let Ok(rng) = Trng::try_new() else {
        defmt::panic!("no TRNG");
    };
    let seed = rng.random() as u64 | (rng.random() as u64) << 32;

    let interface = Interface::station();
    let Ok(controller) = WifiController::new(peripherals.WIFI, Default::default()) else {
        defmt::panic!("the Wi-Fi driver did not start");
    };
    // Sockets: DHCP, DNS, the TCP connection.
    static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        interface,
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    spawner.spawn(wifi_task(controller).unwrap());
    spawner.spawn(net_task(runner).unwrap());

    info!("waiting for Wi-Fi and DHCP");
    stack.wait_config_up().await;
    if let Some(v4) = stack.config_v4() {
        info!("address {}", v4.address);
    }

    let button = Input::new(
        peripherals.GPIO9,
        InputConfig::default().with_pull(Pull::Up),
    );
    let flash = BlockingAsync::new(FlashStorage::new(peripherals.FLASH));
    device_main(stack, rng, button, flash).await
}

async fn device_main(
    stack: Stack<'static>,
    mut rng: Trng,
    mut button: Input<'static>,
    flash: BlockingAsync<FlashStorage<'static>>,
) {
    let Ok(mut store) = KeyStore::new(flash, KEY_REGION) else {
        defmt::panic!("KEY_REGION is not whole flash sectors");
    };
    let stored = match store.load().await {
        Ok(stored) => stored,
        Err(e) => {
            warn!("{}; using the built-in account", e);
            None
        }
    };
    let username = stored.as_ref().map_or(USERNAME, |s| s.username.as_str());
    let keys = stored.as_ref().and_then(|s| s.keys.clone());
    info!(
        "account {} ({})",
        username,
        if keys.is_some() { "keys from flash" } else { "no keys yet" }
    );
    let (mut sock_rx, mut sock_tx) = ([0u8; 1024], [0u8; 1024]);
    let mut buffers: BufferStore<512, 512> = BufferStore::new();
    // The client's settings, in flash.
    static CONFIG: Config = Config::new().with_min_iterations(600_000);
    let mut link = Link::new(
        stack,
        HostName {
            host: SERVER_NAME,
            port: SERVER_PORT,
        },
        &mut sock_rx,
        &mut sock_tx,
        buffers.buffers(),
        Account {
            username,
            password: PASSWORD,
            keys,
        },
        &CONFIG,
        Backoff::default(),
    );
    let mut mind = Mind;
    let mut presses = 0u32;
    let fatal = link
        .run(&mut rng, async |connected| {
            info!("logged in");
            if let Some(keys) = connected.new_keys {
                match store.save(username, Some(keys)).await {
                    Ok(()) => info!("keys saved to flash: the next boot skips PBKDF2"),
                    Err(e) => warn!("{}", e),
                }
            }
            let session = &mut connected.session;
            loop {
                match session
                    .serve_until(&mut mind, button.wait_for_falling_edge())
                    .await
                {
                    Ok(()) => {
                        presses += 1;
                        if let Err(CallError::Session(lost)) =
                            session.notify::<Button>(&Press { count: presses }).await
                        {
                            return ControlFlow::<(), _>::Continue(lost);
                        }
                    }
                    Err(lost) => return ControlFlow::<(), _>::Continue(lost),
                }
            }
        })
        .await;
    match fatal {
        Err(Error::Login(ScramError::CachedKeysMismatch)) => {
            // The password was changed or Django re-hashed it: drop the
            // keys (the username stays) and wait to be provisioned again.
            warn!("the stored keys are stale: provision this device again");
            if let Err(e) = store.forget_keys().await {
                warn!("{}", e);
            }
        }
        Err(Error::Refused { code, .. }) => {
            warn!("login refused ({}): check the account", code.as_str());
        }
        _ => warn!("cannot log in; check the account"),
    }
    loop {
        Timer::after_secs(3600).await;
    }
}
