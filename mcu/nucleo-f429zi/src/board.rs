//! The NUCLEO-F429ZI's bring-up, and the firmware's entry: `main` sets up
//! the clocks, the TRNG, the Ethernet MAC (RMII, LAN8742A PHY) and
//! embassy-net, waits for DHCP, and hands the board over to the binary's
//! `device_main` (the example's is `app::device_main`). Logs go out over RTT
//! with defmt; panics halt under the debugger (panic-probe). Shared by the
//! example (`src/main.rs`) and the size measurement binaries
//! (`src/bin/size-*.rs`), so that they all run the same board code.

use core::convert::Infallible;

use defmt::info;
use embassy_executor::Spawner;
use embassy_net::StackResources;
use embassy_stm32::eth::{Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::exti::ExtiInput;
use embassy_stm32::gpio::{Level, Output, Pull, Speed};
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

const MAC_ADDR: [u8; 6] = [0x02, 0x00, 0x54, 0x45, 0x54, 0x48];

type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;
/// Flash bank 2's last region, which holds the example's key store.
pub type KeyFlash = flash::Bank2Region3<'static, flash::Async>;

/// The STM32's TRNG as tether-core's `CryptoRng` (rand_core 0.10).
pub struct Trng(pub Rng<'static, RNG>);

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

/// Clocks, RNG, Ethernet and the network stack; once DHCP has configured
/// the address, the gateway and the DNS servers, the binary's
/// `device_main` runs with the LED, the button and the key flash.
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
    crate::device_main(stack, rng, led, button, flash).await
}
