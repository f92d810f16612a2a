//! A Tether device on a NUCLEO-F429ZI: the STM32F429ZI's Ethernet MAC (RMII,
//! LAN8742A PHY on the board) under embassy-net, and tether-firmware's
//! `embassy::Link` logging in to a Tether server and keeping the session:
//!
//! - gets its address by DHCP and finds the server by DNS (`SERVER_NAME`),
//!   again before every reconnection;
//! - logs in as the account kept in flash (`KEY_REGION`: username and keys,
//!   written at the factory by `firmware-client/examples/provision.rs`, or
//!   saved here after a first login), so that no reboot repeats PBKDF2 and
//!   a provisioned device never holds the password;
//! - on a first boot with `PASSWORD` and no keys in flash (feature
//!   `first-login`, on by default): `Link` probes
//!   the account's salt and iteration count, runs PBKDF2 with no connection
//!   open (a minute or more at Django's 1,000,000 iterations; progress is
//!   logged), logs in with the derived keys, and this example saves them;
//! - answers the server's calls: `device_info` (firmware, uptime), `echo`,
//!   and `set_led` (switches LD1, PB0);
//! - notifies the server `button` when the blue user button (PC13) is
//!   pressed, staying reachable while it waits (`serve_until`);
//! - reconnects with exponential backoff and jitter.
//!
//! Logs go out over RTT with defmt (`cargo run --release` under probe-rs).
//! The feature variants (`baseline`, `core-only`, `app-minimal`,
//! `no-storage`) exist for ./size, which splits the flash between the
//! network stack, tether-firmware + tether-core and this application.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::convert::Infallible;

#[allow(unused_imports)] // app-minimal logs no warnings
use defmt::{info, warn};
use embassy_executor::Spawner;
use embassy_net::{Stack, StackResources};
use embassy_stm32::eth::{Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::exti::ExtiInput;
use embassy_stm32::gpio::{Level, Output, Pull, Speed};
use embassy_stm32::mode::Async;
use embassy_stm32::peripherals::{ETH, ETH_SMA, RNG};
use embassy_stm32::rng::Rng;
use embassy_stm32::time::Hertz;
use embassy_stm32::{Config, bind_interrupts, eth, exti, flash, interrupt, peripherals, rng};
use static_cell::StaticCell;
use {defmt_rtt as _, panic_probe as _};

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
    HASH_RNG => rng::InterruptHandler<peripherals::RNG>;
    EXTI15_10 => exti::InterruptHandler<interrupt::typelevel::EXTI15_10>;
    FLASH => flash::InterruptHandler;
});

/// The Tether server's name (a dotted IPv4 address works too) and port.
const SERVER_NAME: &str = "tether.example.com";
const SERVER_PORT: u16 = tether_core::frame::DEFAULT_PORT;
/// The account used when the flash holds none (development only: a
/// provisioned device reads its username and keys from `KEY_REGION`).
#[cfg_attr(feature = "baseline", allow(dead_code))]
const USERNAME: &str = "sensor-7";
/// The password for a first login when the flash holds no keys; `None` for
/// a device provisioned at the factory (the password never reaches it).
#[cfg_attr(feature = "baseline", allow(dead_code))]
const PASSWORD: Option<&str> = Some("change me");
/// Protocol v2 (feature `v2`): the server's static public key, pinned
/// (`tether keys --server` prints it): the login runs Noise_NK and every
/// frame is encrypted. Replace it with your server's.
#[cfg(feature = "v2")]
const SERVER_KEY: [u8; 32] = [
    0x8f, 0x40, 0xc5, 0xad, 0xb6, 0x8f, 0x25, 0x62, 0x4a, 0xe5, 0xb2, 0x14, 0xea, 0x76, 0x7a, 0x6e,
    0xc9, 0x4d, 0x82, 0x9d, 0x3d, 0x7b, 0x5e, 0x1a, 0xd1, 0xba, 0x6f, 0x3e, 0x21, 0x38, 0x28, 0x5f,
];
const MAC_ADDR: [u8; 6] = [0x02, 0x00, 0x54, 0x45, 0x54, 0x48];

/// The key store's region, as offsets into flash bank 2's 128 KiB sectors
/// (`Bank2Region3`, which starts at 0x0812_0000): its last two sectors,
/// 0x081C_0000..0x0820_0000. Code runs from bank 1, so saving keys never
/// stalls it. `provision --board nucleo-f429zi` writes the same region.
#[cfg_attr(any(feature = "baseline", feature = "app-minimal", feature = "no-storage"), allow(dead_code))]
const KEY_REGION: core::ops::Range<u32> = 0x000A_0000..0x000E_0000;

type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;
type KeyFlash = flash::Bank2Region3<'static, flash::Async>;

/// The STM32's TRNG as tether-core's `CryptoRng` (rand_core 0.10).
struct Trng(Rng<'static, RNG>);

impl tether_core::rand_core::TryRng for Trng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.0.next_u32())
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.next_u64())
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}
impl tether_core::rand_core::TryCryptoRng for Trng {}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Device>) -> ! {
    runner.run().await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) -> ! {
    let mut config = Config::default();
    {
        use embassy_stm32::rcc::*;
        // 8 MHz from the ST-LINK's MCO; 168 MHz core, 48 MHz for the RNG.
        config.rcc.hse = Some(Hse {
            freq: Hertz(8_000_000),
            mode: HseMode::Bypass,
        });
        config.rcc.pll_src = PllSource::HSE;
        config.rcc.pll = Some(Pll {
            prediv: PllPreDiv::DIV4,
            mul: PllMul::MUL168,
            divp: Some(PllPDiv::DIV2),
            divq: Some(PllQDiv::DIV7),
            divr: None,
        });
        config.rcc.ahb_pre = AHBPrescaler::DIV1;
        config.rcc.apb1_pre = APBPrescaler::DIV4;
        config.rcc.apb2_pre = APBPrescaler::DIV2;
        config.rcc.sys = Sysclk::PLL1_P;
    }
    let p = embassy_stm32::init(config);
    info!("nucleo-f429zi-tether {}", env!("CARGO_PKG_VERSION"));

    let mut rng = Trng(Rng::new(p.RNG, Irqs));
    let seed = rng.0.next_u64();

    static PACKETS: StaticCell<PacketQueue<4, 4>> = StaticCell::new();
    // NUCLEO-F429ZI RMII wiring (UM1974).
    let device = Ethernet::new(
        PACKETS.init(PacketQueue::new()),
        p.ETH,
        Irqs,
        p.PA1,  // REF_CLK
        p.PA7,  // CRS_DV
        p.PC4,  // RXD0
        p.PC5,  // RXD1
        p.PG13, // TXD0
        p.PB13, // TXD1
        p.PG11, // TX_EN
        MAC_ADDR,
        p.ETH_SMA,
        p.PA2, // MDIO
        p.PC1, // MDC
    );
    // DHCP for the address, the gateway and the DNS servers.
    let net_config = embassy_net::Config::dhcpv4(Default::default());
    // Sockets: DHCP, DNS, the TCP connection.
    static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        device,
        net_config,
        RESOURCES.init(StackResources::new()),
        seed,
    );
    spawner.spawn(net_task(runner).unwrap());

    info!("waiting for DHCP");
    stack.wait_config_up().await;
    if let Some(v4) = stack.config_v4() {
        info!("address {}", v4.address);
    }

    let flash = flash::Flash::new(p.FLASH, Irqs).into_regions().bank2_region3;
    let led = Output::new(p.PB0, Level::Low, Speed::Low);
    let button = ExtiInput::new(p.PC13, p.EXTI13, Pull::Down, Irqs);
    device_main(stack, rng, led, button, flash).await
}

#[cfg(not(feature = "baseline"))]
// app-minimal leaves this example's methods, notification and key store unused.
#[cfg_attr(
    any(feature = "app-minimal", feature = "no-storage"),
    allow(dead_code, unused_imports, unused_mut, unused_variables)
)]
mod app {
    use core::ops::ControlFlow;

    use embassy_time::Instant;
    use serde::{Deserialize, Serialize};
    use tether_core::method::Method;
    use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo};
    use tether_core::scram::{CachedKeys, ScramError};
    use tether_firmware::embassy::{Account, HostName, Link};
    use tether_firmware::storage::{KeyStore, StorageError, Stored};
    use tether_firmware::{Backoff, BufferStore, Config, Error, Handler, Request, Responded, Responder};

    /// The client's settings, in flash: Django 4.2's iteration floor;
    /// with feature `v2`, protocol v2 towards the pinned server key.
    #[cfg(not(feature = "v2"))]
    static CONFIG: Config = Config::new().with_min_iterations(600_000);
    #[cfg(feature = "v2")]
    static CONFIG: Config = Config::new()
        .with_min_iterations(600_000)
        .with_server_key(super::SERVER_KEY);

    use super::*;

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

    #[cfg(not(feature = "app-minimal"))]
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

    /// `app-minimal` (./size): the session without this example's methods,
    /// so that the application's own code can be told from the client's.
    #[cfg(feature = "app-minimal")]
    impl Handler for Mind {
        async fn on_call(&mut self, _req: Request<'_>, reply: Responder<'_>) -> Responded {
            reply.unknown_method()
        }
    }

    /// The key store, or (variants without it) nothing.
    #[cfg(not(any(feature = "app-minimal", feature = "no-storage")))]
    type Store = KeyStore<KeyFlash>;
    #[cfg(any(feature = "app-minimal", feature = "no-storage"))]
    type Store = ();

    #[cfg(not(any(feature = "app-minimal", feature = "no-storage")))]
    async fn open_store(flash: KeyFlash) -> (Store, Option<Stored>) {
        let mut store = match KeyStore::new(flash, KEY_REGION) {
            Ok(store) => store,
            Err(_) => defmt::panic!("KEY_REGION is not whole sectors of Bank2Region3"),
        };
        let stored = match store.load().await {
            Ok(stored) => stored,
            Err(e) => {
                warn!("key store: {}; using the built-in account", why(&e));
                None
            }
        };
        (store, stored)
    }

    #[cfg(any(feature = "app-minimal", feature = "no-storage"))]
    async fn open_store(_flash: KeyFlash) -> (Store, Option<Stored>) {
        ((), None)
    }

    #[cfg(not(any(feature = "app-minimal", feature = "no-storage")))]
    async fn save_keys(store: &mut Store, username: &str, keys: &CachedKeys) {
        match store.save(username, Some(keys)).await {
            Ok(()) => info!("keys saved to flash: the next boot skips PBKDF2"),
            Err(e) => warn!("key store: {}", why(&e)),
        }
    }

    /// A key store error in a few words (tether-firmware's own defmt
    /// formatting comes with its `defmt` feature, which ./size leaves off).
    #[cfg(not(any(feature = "app-minimal", feature = "no-storage")))]
    fn why<E>(e: &StorageError<E>) -> &'static str {
        match e {
            StorageError::Flash(_) => "flash error",
            StorageError::Corrupted => "region corrupted, erase and provision again",
            StorageError::UnknownFormat(_) => "record of another format",
            _ => "unusable record",
        }
    }

    #[cfg(any(feature = "app-minimal", feature = "no-storage"))]
    async fn save_keys(_store: &mut Store, _username: &str, _keys: &CachedKeys) {}

    #[cfg(not(any(feature = "app-minimal", feature = "no-storage")))]
    async fn forget_keys(store: &mut Store) {
        if let Err(e) = store.forget_keys().await {
            warn!("key store: {}", why(&e));
        }
    }

    #[cfg(any(feature = "app-minimal", feature = "no-storage"))]
    async fn forget_keys(_store: &mut Store) {}

    /// Says why the device gave up, and drops stale keys.
    #[cfg(not(feature = "app-minimal"))]
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
                forget_keys(store).await;
            }
            Err(Error::Refused { code, .. }) => {
                warn!("login refused ({}): check the account", code.as_str());
            }
            _ => warn!("cannot log in; check the account"),
        }
    }

    /// app-minimal: no report (the application's part).
    #[cfg(feature = "app-minimal")]
    async fn report(_fatal: Result<Infallible, Error<tether_firmware::embassy::TcpError>>, _store: &mut Store) {}

    pub async fn device_main(
        stack: Stack<'static>,
        mut rng: Trng,
        led: Output<'static>,
        mut button: ExtiInput<'static, Async>,
        flash: KeyFlash,
    ) -> ! {
        let (mut store, stored) = open_store(flash).await;
        let username = stored.as_ref().map_or(USERNAME, |s| s.username.as_str());
        let keys = stored.as_ref().and_then(|s| s.keys.clone());
        #[cfg(not(feature = "app-minimal"))]
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
        #[cfg(all(feature = "first-login", not(feature = "app-minimal")))]
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
        #[cfg(all(feature = "first-login", not(feature = "app-minimal")))]
        let link = link.on_derivation(&mut progress);
        let mut link = link;
        let mut mind = Mind { led };
        let mut presses = 0u32;
        let fatal = link
            .run(&mut rng, async |connected| {
                info!("logged in");
                if let Some(keys) = connected.new_keys {
                    save_keys(&mut store, username, keys).await;
                }
                let session = &mut connected.session;
                loop {
                    // Serve the server until the button is pressed.
                    match session
                        .serve_until(&mut mind, button.wait_for_rising_edge())
                        .await
                    {
                        // app-minimal: the press only toggles LD1, as in
                        // the baseline; no notification.
                        #[cfg(feature = "app-minimal")]
                        Ok(()) => mind.led.toggle(),
                        #[cfg(not(feature = "app-minimal"))]
                        Ok(()) => {
                            presses += 1;
                            if let Err(e) =
                                session.notify::<Button>(&Press { count: presses }).await
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
}

#[cfg(feature = "baseline")]
mod app {
    use embassy_net::dns::DnsQueryType;
    use embassy_net::tcp::TcpSocket;
    use embedded_io_async::Write;

    use super::*;

    /// The same board without Tether: resolve, connect, send, read, repeat.
    pub async fn device_main(
        stack: Stack<'static>,
        mut rng: Trng,
        mut led: Output<'static>,
        mut button: ExtiInput<'static, Async>,
        _flash: KeyFlash,
    ) -> ! {
        let (mut sock_rx, mut sock_tx) = ([0u8; 1024], [0u8; 1024]);
        loop {
            let server = match stack.dns_query(SERVER_NAME, DnsQueryType::A).await {
                Ok(found) => found.first().map(|ip| (*ip, SERVER_PORT)),
                Err(_) => None,
            };
            let mut socket = TcpSocket::new(stack, &mut sock_rx, &mut sock_tx);
            if let Some(server) = server
                && socket.connect(server).await.is_ok()
            {
                info!("connected");
                let mut buf = [0u8; 64];
                let _ = socket.write_all(&rng.0.next_u32().to_le_bytes()).await;
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    led.toggle();
                    #[cfg(feature = "core-only")]
                    core_only::exercise(&mut rng, &buf[..n]);
                    button.wait_for_rising_edge().await;
                    let _ = socket.write_all(&buf[..n]).await;
                }
            } else {
                warn!("cannot connect to the server");
            }
            socket.abort();
            embassy_time::Timer::after_secs(1).await;
        }
    }
}

/// tether-core's client connection machine driven directly, as
/// tether-firmware drives it, on bytes from the network (so that nothing is
/// optimised away): the size of this variant minus the baseline is
/// tether-core's part of the share.
#[cfg(feature = "core-only")]
mod core_only {
    use tether_core::connection::{ClientConfig, ClientHandshake, Event, Instant};
    use tether_core::message::ErrorCode;
    use tether_core::scram::ClientCredentials;

    use super::*;

    /// Copies as much of `input` as the machine asks for.
    fn feed(buf: &mut [u8], input: &[u8]) -> usize {
        let n = buf.len().min(input.len());
        buf[..n].copy_from_slice(&input[..n]);
        n
    }

    pub fn exercise(rng: &mut Trng, input: &[u8]) -> Option<()> {
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
}

use app::device_main;
