//! An axum web application that reaches devices from its HTTP handlers:
//! `GET /devices/{user}/blink?times=N` calls `blink` on the user's newest
//! session and answers with the device's reply; the server's admin API is
//! nested under `/tether` (behind a bearer token: a nested admin router
//! without one refuses to build).
//!
//! ```text
//! cargo run -p tether-server --example axum_app
//! cargo run -p tether-firmware --features std --example std_device   # in another shell
//! curl 'http://127.0.0.1:8080/devices/alice/blink?times=2'
//! ```
//!
//! Environment: `TETHER_ADDR` (devices, 127.0.0.1:7420), `HTTP_ADDR`
//! (127.0.0.1:8080), `TETHER_DATABASE` (the repository's fixture by
//! default), `TETHER_ADMIN_TOKEN` (a random one by default).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tether_core::method::Method;
use tether_server::{
    Admin, AdminConfig, AdminToken, CallError, DefaultRealm, Registry, Server, ServerConfig,
    ServerSecret, Store, StoreConfig,
};

/// Server -> device: blink the LED `n` times; answers whether it did.
struct Blink;
impl Method for Blink {
    const NAME: &'static str = "blink";
    type Args<'a> = u8;
    type Reply<'a> = bool;
}
impl tether_core::method::ToDevice for Blink {}

#[derive(serde::Deserialize)]
struct Times {
    times: u8,
}

/// One HTTP request, one call to a device. If the HTTP client hangs up,
/// axum drops this future and the call's slot is freed with it.
async fn blink(
    State(sessions): State<Registry>,
    Path(user): Path<String>,
    Query(Times { times }): Query<Times>,
) -> Result<Json<bool>, (StatusCode, String)> {
    let Some(mind) = sessions.newest_of(&user) else {
        return Err((StatusCode::NOT_FOUND, format!("{user} is not connected")));
    };
    match mind.call::<Blink>(&times).await {
        Ok(reply) => Ok(Json(reply.into_owned())),
        Err(e @ (CallError::Timeout | CallError::Closed)) => {
            Err((StatusCode::GATEWAY_TIMEOUT, e.to_string()))
        }
        Err(e) => Err((StatusCode::BAD_GATEWAY, e.to_string())),
    }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/django/default.sqlite3"
    );
    let database = env("TETHER_DATABASE", &format!("sqlite://{fixture}"));
    let store = Arc::new(Store::open(StoreConfig::new(database))?);
    let listener = tokio::net::TcpListener::bind(env("TETHER_ADDR", "127.0.0.1:7420")).await?;
    let server = Server::from_listener(
        listener,
        ServerConfig::default(),
        store,
        DefaultRealm::new(),
        ServerSecret::random(),
    );

    let random = hex::encode(ServerSecret::random().as_bytes());
    let token = env("TETHER_ADMIN_TOKEN", &random);
    let admin = AdminConfig {
        token: Some(AdminToken::new(&token)?),
        ..Default::default()
    };
    let app = Router::new()
        .route("/devices/{user}/blink", get(blink))
        .with_state(server.sessions())
        .nest("/tether", Admin::new(&server, admin).router()?);

    let http = tokio::net::TcpListener::bind(env("HTTP_ADDR", "127.0.0.1:8080")).await?;
    println!(
        "app: devices on {}, HTTP on {}",
        server.local_addr(),
        http.local_addr()?
    );
    let handle = server.handle();
    tokio::spawn(server.run());
    axum::serve(http, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    handle.shutdown();
    Ok(())
}
