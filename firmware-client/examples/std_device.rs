//! A device on a host (tether-firmware's `host` adapter over tokio): logs
//! in, calls the server with a typed method, then serves the server's
//! calls for a while. Pair it with `std-server/examples/custom_realm.rs`
//! (which answers `report_temperature` and calls `blink` back) or
//! `std-server/examples/axum_app.rs` (whose HTTP handlers call `echo` and
//! `blink` on it).
//!
//! ```text
//! cargo run -p tether-server --example custom_realm &
//! cargo run -p tether-firmware --features std --example std_device
//! ```
//!
//! Environment: `TETHER_ADDR` (127.0.0.1:7420), `TETHER_USER` (alice),
//! `TETHER_PASSWORD` (the fixture's alice-password), `TETHER_SERVE_SECS`
//! (how long to stay reachable, 5).

use std::time::Duration;

use getrandom::SysRng;
use tether_core::method::Method;
use tether_core::method::builtin::WhoAmI;
use tether_core::rand_core::UnwrapErr;
use tether_core::scram::ClientCredentials;
use tether_firmware::{BufferStore, Config, Methods, OwnedCallError, host};

/// Device -> server: a reading; the server answers the setpoint.
struct ReportTemperature;
impl Method for ReportTemperature {
    const NAME: &'static str = "report_temperature";
    type Args<'a> = f32;
    type Reply<'a> = f32;
}
impl tether_core::method::ToServer for ReportTemperature {}

/// Server -> device: blink the LED `n` times; answers whether it did.
struct Blink;
impl Method for Blink {
    const NAME: &'static str = "blink";
    type Args<'a> = u8;
    type Reply<'a> = bool;
}
impl tether_core::method::ToDevice for Blink {}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, user) = (
        env("TETHER_ADDR", "127.0.0.1:7420"),
        env("TETHER_USER", "alice"),
    );
    let password = env("TETHER_PASSWORD", "alice-password");
    let serve_secs: u64 = env("TETHER_SERVE_SECS", "5").parse()?;
    let mut store: BufferStore = BufferStore::new();
    let credentials = ClientCredentials::Password(&password);
    let config = Config::default().with_min_iterations(100_000);
    let login = host::connect(
        addr.as_str(),
        store.buffers(),
        &user,
        credentials,
        &mut UnwrapErr(SysRng),
        &config,
    )
    .await?;
    let mut session = login.session;

    // How this device answers the server: one line per method.
    let mut led = Methods::new(0u32).method::<Blink>(|blinks, n| {
        println!("device: blinking {n} times");
        *blinks += u32::from(n);
        Ok(true)
    });

    // A borrowed reply (and error): read it before the next call.
    match session.call::<WhoAmI, _>(&(), &mut led).await {
        Ok(me) => println!(
            "device: logged in as {} (session {})",
            me.username, me.session_id
        ),
        Err(e) if !e.ends_session() => println!("device: whoami: {e}"),
        Err(e) => return Err(e.into_owned().into()),
    }

    // An owned reply and an owned error: `?` into Box<dyn Error> works.
    match session
        .call_owned::<ReportTemperature, _>(&19.5, &mut led)
        .await
    {
        Ok(setpoint) => println!("device: setpoint {setpoint}"),
        Err(OwnedCallError::Remote { code, message }) => {
            println!("device: this server has no thermostat ({code}: {message})")
        }
        Err(e) => return Err(e.into()),
    }

    session
        .serve_for(&mut led, Duration::from_secs(serve_secs))
        .await?;
    session.close().await?;
    println!("device: done");
    Ok(())
}
