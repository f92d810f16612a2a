//! A server with its own realm and typed methods both ways: the device
//! reports a temperature and gets the setpoint back (device -> server);
//! once a device is attached, the server makes it blink (server -> device).
//!
//! ```text
//! cargo run -p tether-server --example custom_realm
//! cargo run -p tether-firmware --features std --example std_device   # in another shell
//! ```
//!
//! Environment: `TETHER_ADDR` (127.0.0.1:7420), `TETHER_DATABASE` (a
//! Django database URL; the repository's fixture by default: user alice,
//! password alice-password).

use std::sync::Arc;

use tether_core::message::RefusalCode;
use tether_core::method::Method;
use tether_server::dispatch::Methods;
use tether_server::realm::{Avatar, CallResult, IncomingCall, Mind, Realm, SessionInfo};
use tether_server::{Server, ServerConfig, ServerSecret, Store, StoreConfig};

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

/// What each of a device's calls gets.
#[derive(Clone)]
struct Device {
    user: String,
}

/// Makes a thermostat of every device that logs in; its methods are built
/// once and shared by every session.
struct Thermostats {
    methods: Arc<Methods<Device>>,
}

/// One logged-in device, as the server sees it.
struct Thermostat {
    device: Device,
    mind: Mind,
    methods: Arc<Methods<Device>>,
}

impl Realm for Thermostats {
    type Avatar = Thermostat;
    async fn avatar(&self, session: &SessionInfo, mind: Mind) -> Result<Thermostat, RefusalCode> {
        let device = Device {
            user: session.user.username.clone(),
        };
        let methods = self.methods.clone();
        Ok(Thermostat {
            device,
            mind,
            methods,
        })
    }
}

impl Avatar for Thermostat {
    async fn call(&self, call: IncomingCall) -> CallResult {
        self.methods.dispatch(self.device.clone(), call).await
    }

    async fn attached(&self) {
        match self.mind.call::<Blink>(&3).await {
            Ok(blinked) => println!("server: {} blinked: {}", self.device.user, blinked.get()),
            Err(e) => println!("server: blink failed: {e}"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("TETHER_ADDR").unwrap_or_else(|_| "127.0.0.1:7420".into());
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/django/default.sqlite3"
    );
    let database =
        std::env::var("TETHER_DATABASE").unwrap_or_else(|_| format!("sqlite://{fixture}"));
    let store = Arc::new(Store::open(StoreConfig::new(database))?);
    let secret = ServerSecret::random();
    // One line per method the device may call.
    let methods =
        Methods::new().method::<ReportTemperature, _>(|device: Device, celsius| async move {
            println!("server: {} reports {celsius} °C", device.user);
            Ok(21.0)
        });
    let realm = Thermostats {
        methods: Arc::new(methods),
    };
    let server = Server::bind(addr, ServerConfig::default(), store, realm, secret).await?;
    println!("server: listening on {}", server.local_addr());
    let handle = server.handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.shutdown();
    });
    server.run().await;
    Ok(())
}
