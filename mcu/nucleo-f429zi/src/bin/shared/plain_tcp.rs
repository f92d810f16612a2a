//! The baseline's device: the example's board, DHCP, DNS lookup, logging
//! and TCP socket, without Tether: resolve, connect, send, read, repeat.
//! Shared by `size-baseline` and `size-core-only`; the binary's
//! `received` sees every chunk read.

use defmt::{info, warn};
use embassy_net::Stack;
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::TcpSocket;
use embassy_stm32::exti::ExtiInput;
use embassy_stm32::gpio::Output;
use embassy_stm32::mode::Async;
use embedded_io_async::Write;

use crate::board::{KeyFlash, Trng};
use crate::settings::{SERVER_NAME, SERVER_PORT};

/// Called by `board`'s `main` once DHCP is done.
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
                crate::received(&mut rng, &buf, n);
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
