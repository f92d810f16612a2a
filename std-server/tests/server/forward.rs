//! `--forward` against an HTTP application in the test process (axum) that
//! checks every request's signature the way docs/DJANGO.md describes it:
//! the status mapping, timeouts, refused connections, the limits, and
//! notifications and events delivered in order, at least once, with the
//! same request id on every retry. The real Django project behind
//! gunicorn is tests/tests/django_forward.rs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};
use tether_core::message::{ErrorCode, GoodbyeReason, Message};
use tether_core::method::Method;
use tether_core::method::builtin::Echo;
use tether_server::forward::{ForwardConfig, ForwardSecret, Forwarder};
use tether_server::{DefaultRealm, Server, ServerSecret, Store, StoreConfig};

use crate::common::*;

const DB: &str = "default.sqlite3";
const SECRET: &str = "forward test secret, 32 characters";

/// A method whose args and reply are strings.
macro_rules! text_method {
    ($ty:ident, $name:literal) => {
        struct $ty;
        impl Method for $ty {
            const NAME: &'static str = $name;
            type Args<'a> = &'a str;
            type Reply<'a> = &'a str;
        }
        impl tether_core::method::ToServer for $ty {}
        impl tether_core::method::ToDevice for $ty {}
    };
}
text_method!(Upper, "upper");
text_method!(Missing, "missing");
text_method!(BadArgs, "bad_args");
text_method!(Denied, "denied");
text_method!(Custom, "custom");
text_method!(Conflict, "conflict");
text_method!(Boom, "boom");
text_method!(Slow, "slow");
text_method!(LongError, "long_error");
text_method!(Big, "big");
text_method!(Odd, "odd name/é");

/// One request as the application saw it.
#[derive(Debug, Clone)]
struct Seen {
    route: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct AppState {
    seen: Vec<Seen>,
    /// Answer the next deliveries (notify/event) with 503.
    fail_deliveries: usize,
}

#[derive(Clone)]
struct App {
    state: Arc<Mutex<AppState>>,
    secret: String,
}

impl App {
    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn deliveries(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| !s.route.starts_with("call/"))
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// docs/DJANGO.md 1.2, step by step.
fn signature_ok(secret: &str, route: &str, h: &HashMap<String, String>, body: &[u8]) -> bool {
    let get = |k: &str| h.get(k).map(String::as_str).unwrap_or("");
    let text = [
        "tether-forward-v1",
        get("x-tether-timestamp"),
        "POST",
        route,
        get("x-tether-request-id"),
        get("x-tether-user-id"),
        get("x-tether-username"),
        get("x-tether-session"),
        get("x-tether-peer"),
        &hex(&Sha256::digest(body)),
    ]
    .join("\n");
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(text.as_bytes());
    let want = format!("v1={}", hex(&mac.finalize().into_bytes()));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let fresh = get("x-tether-timestamp")
        .parse::<i64>()
        .is_ok_and(|t| (now - t).abs() <= 300);
    // A test may compare plainly; Django must use hmac.compare_digest.
    get("x-tether-signature") == want && fresh
}

async fn handle(State(app): State<App>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    // The route as sent (still quoted), relative to the base URL.
    let route = uri.path().strip_prefix("/app/").unwrap_or("").to_string();
    if !signature_ok(&app.secret, &route, &headers, &body) {
        return (StatusCode::FORBIDDEN, "bad signature").into_response();
    }
    let text = || {
        tether_core::method::decode_args::<Echo>(&body)
            .unwrap_or("")
            .to_string()
    };
    let reply = |s: &str| {
        let mut buf = vec![0u8; s.len() + 8];
        tether_core::method::encode_reply::<Echo>(&s, &mut buf)
            .unwrap()
            .to_vec()
    };
    let plain = [("content-type", "text/plain; charset=utf-8")];
    {
        let mut state = app.state.lock().unwrap();
        state.seen.push(Seen {
            route: route.clone(),
            headers: headers.clone(),
            body: body.to_vec(),
        });
        if !route.starts_with("call/") && state.fail_deliveries > 0 {
            state.fail_deliveries -= 1;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    match route.as_str() {
        "call/upper" | "call/echo" => reply(&text().to_uppercase()).into_response(),
        "call/odd%20name%2F%C3%A9" => reply("odd").into_response(),
        "call/bad_args" => StatusCode::UNPROCESSABLE_ENTITY.into_response(),
        "call/denied" => StatusCode::FORBIDDEN.into_response(),
        "call/custom" => (
            StatusCode::CONFLICT,
            [
                ("x-tether-error-code", "1042"),
                ("content-type", "text/plain"),
            ],
            "valve stuck",
        )
            .into_response(),
        "call/conflict" => (
            StatusCode::CONFLICT,
            [("content-type", "text/html")],
            "<html>conflict</html>",
        )
            .into_response(),
        "call/boom" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            plain,
            "Traceback: SECRET_KEY=hunter2",
        )
            .into_response(),
        "call/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            reply("late").into_response()
        }
        "call/long_error" => (StatusCode::BAD_REQUEST, plain, "é".repeat(6000)).into_response(),
        "call/big" => reply(&"x".repeat(10_000)).into_response(),
        r if r.starts_with("call/") => StatusCode::NOT_FOUND.into_response(),
        _ => StatusCode::OK.into_response(),
    }
}

async fn start_app(secret: &str) -> (App, SocketAddr) {
    let app = App {
        state: Arc::default(),
        secret: secret.to_string(),
    };
    let router = Router::new()
        .route("/app/{*route}", post(handle))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (app, addr)
}

struct Forwarded {
    addr: SocketAddr,
    handle: tether_server::ServerHandle,
    store: Arc<Store>,
    forwarder: Forwarder,
    _db: Db,
}

async fn serve_forwarding(url: String, f: impl FnOnce(&mut ForwardConfig)) -> Forwarded {
    let db = Db::copy(DB);
    let mut config = ForwardConfig::new(url, ForwardSecret::new(SECRET).unwrap());
    f(&mut config);
    let mut store = StoreConfig::new(db.url());
    store.update_last_login = false;
    let store = Arc::new(Store::open(store).unwrap());
    let forwarder = Forwarder::new(config, store.metrics()).unwrap();
    let server = Server::bind(
        "127.0.0.1:0",
        test_config(),
        store.clone(),
        DefaultRealm::new().forward_to(forwarder.clone()),
        ServerSecret::from_value("test secret, at least 16 bytes").unwrap(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    tokio::spawn(server.run());
    Forwarded {
        addr,
        handle,
        store,
        forwarder,
        _db: db,
    }
}

impl Forwarded {
    fn metric(&self, series: &str) -> f64 {
        let text = self.store.metrics().render();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }
}

async fn alice(addr: SocketAddr) -> Session {
    login(addr, "alice", password(DB, "alice")).await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    tether_core::method::decode_reply::<Echo>(bytes)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_signed_and_answers_map_as_the_contract_says() {
    let (app, addr) = start_app(SECRET).await;
    let f = serve_forwarding(format!("http://{addr}/app/"), |c| {
        c.timeout = Duration::from_millis(500);
    })
    .await;
    let mut s = alice(f.addr).await;

    assert_eq!(text(&s.call::<Upper>(&"hello").await.unwrap()), "HELLO");
    // (The `connected` event may arrive before or after the call.)
    let call = app
        .seen()
        .into_iter()
        .rfind(|r| r.route != "event")
        .unwrap();
    assert_eq!(call.route, "call/upper");
    assert_eq!(call.headers["x-tether-username"], "alice");
    assert_eq!(
        call.headers["x-tether-user-id"],
        user(DB, "alice")["id"].to_string()
    );
    assert_eq!(call.headers["x-tether-session"], s.session_id.to_string());
    assert!(call.headers["x-tether-peer"].starts_with("127.0.0.1:"));
    assert_eq!(call.headers["content-type"], "application/octet-stream");
    assert_eq!(call.headers["x-tether-request-id"].len(), 32);
    assert_eq!(call.body, b"\x05hello", "the args bytes, verbatim");
    // Names are quoted in the route.
    assert_eq!(text(&s.call::<Odd>(&"").await.unwrap()), "odd");

    let err = |r: Result<Vec<u8>, (ErrorCode, String)>| r.unwrap_err();
    let (code, message) = err(s.call::<Missing>(&"").await);
    assert_eq!(code, ErrorCode::UNKNOWN_METHOD);
    assert!(message.contains("missing"), "{message}");
    assert_eq!(
        err(s.call::<BadArgs>(&"").await).0,
        ErrorCode::BAD_ARGUMENTS
    );
    assert_eq!(
        err(s.call::<Denied>(&"").await),
        (ErrorCode::FORBIDDEN, "refused by the application".into())
    );
    assert_eq!(
        err(s.call::<Custom>(&"").await),
        (ErrorCode(1042), "valve stuck".into())
    );
    let (code, message) = err(s.call::<Conflict>(&"").await);
    assert_eq!(code, ErrorCode::FAILED);
    assert!(message.contains("409"), "{message}");
    let (code, message) = err(s.call::<Boom>(&"").await);
    assert_eq!(code, ErrorCode::FAILED);
    assert_eq!(message, "application error: HTTP 500 Internal Server Error");
    let (code, message) = err(s.call::<Slow>(&"").await);
    assert_eq!(code, ErrorCode::TIMEOUT);
    assert!(message.contains("0.5 s"), "{message}");
    // Longer than the device's frame (4096): cut to fit, still answered.
    let (code, message) = err(s.call::<LongError>(&"").await);
    assert_eq!(code, ErrorCode::BAD_ARGUMENTS);
    assert!(
        message.len() > 3000 && message.len() < 4096,
        "{}",
        message.len()
    );
    assert!(message.chars().all(|c| c == 'é'));
    let (code, message) = err(s.call::<Big>(&"").await);
    assert_eq!(code, ErrorCode::FAILED);
    assert!(
        message.contains("larger than the device's frame"),
        "{message}"
    );

    // The built-ins stay on the server.
    assert_eq!(s.echo("still here").await, "still here");
    assert!(!app.seen().iter().any(|c| c.route == "call/echo"));

    for (outcome, n) in [
        ("ok", 2.0),
        ("client_error", 6.0),
        ("server_error", 1.0),
        ("timeout", 1.0),
        ("too_large", 1.0),
    ] {
        assert_eq!(
            f.metric(&format!(
                "tether_forward_calls_total{{outcome=\"{outcome}\"}}"
            )),
            n,
            "{outcome}"
        );
    }
    assert_eq!(f.metric("tether_forward_call_duration_seconds_count"), 11.0);
    f.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_and_a_wrong_secret_name_their_cause() {
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let f = serve_forwarding(format!("http://127.0.0.1:{port}/app"), |_| {}).await;
    let mut s = alice(f.addr).await;
    let (code, message) = s.call::<Upper>(&"x").await.unwrap_err();
    assert_eq!(code, ErrorCode::FAILED);
    assert!(
        message.contains(&format!("cannot reach the application at 127.0.0.1:{port}"))
            && message.to_lowercase().contains("refused"),
        "{message}"
    );
    assert_eq!(
        f.metric("tether_forward_calls_total{outcome=\"unreachable\"}"),
        1.0
    );

    // The application checks with another secret: 403, the device sees
    // the application's refusal.
    let (app, addr) = start_app("the application's own secret!!").await;
    let f = serve_forwarding(format!("http://{addr}/app"), |_| {}).await;
    let mut s = alice(f.addr).await;
    assert_eq!(
        s.call::<Upper>(&"x").await.unwrap_err(),
        (ErrorCode::FORBIDDEN, "bad signature".into())
    );
    assert_eq!(app.seen().len(), 0, "a refused request is not acted on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_limits_get_busy_at_once() {
    let (_app, addr) = start_app(SECRET).await;
    let f = serve_forwarding(format!("http://{addr}/app"), |c| {
        c.max_calls_per_session = 1;
        c.max_calls = 2;
    })
    .await;
    let mut a = alice(f.addr).await;
    let slow = a.start_call::<Slow>(&"").await;
    // The first is in flight (3 s); the second of this session is refused.
    let busy = a.start_call::<Upper>(&"x").await;
    match a.recv_timeout(Duration::from_secs(2)).await {
        Some(Msg::Error { id, code, message }) => {
            assert_eq!((id, code), (busy, ErrorCode::BUSY));
            assert!(message.contains("for this session (1)"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Another session has its own slot, then the server-wide limit (2)
    // is reached.
    let mut b = alice(f.addr).await;
    let slow_b = b.start_call::<Slow>(&"").await;
    let mut c = alice(f.addr).await;
    let (code, message) = c.call::<Upper>(&"x").await.unwrap_err();
    assert_eq!(code, ErrorCode::BUSY);
    assert!(message.contains("in flight (2)"), "{message}");
    for (s, id) in [(&mut a, slow), (&mut b, slow_b)] {
        match s.recv_timeout(Duration::from_secs(10)).await {
            Some(Msg::Reply { id: rid, .. }) => assert_eq!(rid, id),
            other => panic!("{other:?}"),
        }
    }
    // Slots are given back.
    assert_eq!(text(&c.call::<Upper>(&"x").await.unwrap()), "X");
    assert_eq!(
        f.metric("tether_forward_calls_total{outcome=\"busy\"}"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builtin_handed_to_the_application_is_answered_there() {
    let (app, addr) = start_app(SECRET).await;
    let f = serve_forwarding(format!("http://{addr}/app"), |c| {
        c.builtins = vec!["echo".into()];
    })
    .await;
    let mut s = alice(f.addr).await;
    assert_eq!(s.echo("overridden").await, "OVERRIDDEN");
    // (The session's `connected` event is delivered on its own and may
    // arrive before or after the call.)
    let calls: Vec<String> = app
        .seen()
        .into_iter()
        .map(|r| r.route)
        .filter(|r| r != "event")
        .collect();
    assert_eq!(calls, ["call/echo"]);
    let bad = ForwardConfig {
        builtins: vec!["device_info".into()],
        ..ForwardConfig::new("http://x/", ForwardSecret::new(SECRET).unwrap())
    };
    let err = Forwarder::new(bad, f.store.metrics()).unwrap_err();
    assert!(err.to_string().contains("not a built-in method"), "{err}");
    for (url, why) in [
        ("ftp://x/", "http:// or https://"),
        ("http://x/?a=b", "no query"),
        ("http://u:p@x/", "no credentials"),
        ("x", "relative URL"),
    ] {
        let config = ForwardConfig::new(url, ForwardSecret::new(SECRET).unwrap());
        let err = Forwarder::new(config, f.store.metrics()).unwrap_err();
        assert!(err.to_string().contains(why), "{url}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_and_events_arrive_in_order_at_least_once_after_the_session() {
    let (app, addr) = start_app(SECRET).await;
    // The first three attempts fail (503): retried with backoff.
    app.state.lock().unwrap().fail_deliveries = 3;
    let f = serve_forwarding(format!("http://{addr}/app"), |_| {}).await;
    let mut s = alice(f.addr).await;
    let session_id = s.session_id;
    for i in 0..20u32 {
        let mut buf = [0u8; 16];
        let args = tether_core::method::encode_args::<Echo>(&i.to_string().as_str(), &mut buf)
            .unwrap()
            .to_vec();
        s.send(&Message::Notify {
            method: "button",
            args: &args,
        })
        .await;
    }
    s.send(&Message::Goodbye {
        reason: GoodbyeReason::Normal,
    })
    .await;
    drop(s);
    // Delivered after the session ended: 20 notifications and 2 events.
    eventually(Duration::from_secs(20), || {
        let mut delivered: Vec<String> = app
            .deliveries()
            .iter()
            .map(|d| d.headers["x-tether-request-id"].clone())
            .collect();
        delivered.dedup();
        delivered.len() == 22
    })
    .await;
    let all = app.deliveries();
    // The failed attempts were the first item (connected), three times,
    // with the same request id.
    let first_id = &all[0].headers["x-tether-request-id"];
    assert!(
        all[..4]
            .iter()
            .all(|d| &d.headers["x-tether-request-id"] == first_id)
    );
    let delivered = &all[3..];
    assert_eq!(delivered.len(), 22);
    let connected: serde_json::Value = serde_json::from_slice(&delivered[0].body).unwrap();
    assert_eq!(delivered[0].route, "event");
    assert_eq!(delivered[0].headers["content-type"], "application/json");
    assert_eq!(connected["event"], "connected");
    assert_eq!(connected["session_id"], session_id);
    assert_eq!(connected["username"], "alice");
    assert_eq!(connected["user_id"], user(DB, "alice")["id"]);
    assert!(connected["at"].as_str().unwrap().ends_with('Z'));
    for (i, d) in delivered[1..21].iter().enumerate() {
        assert_eq!(d.route, "notify/button");
        assert_eq!(d.headers["content-type"], "application/octet-stream");
        let got = tether_core::method::decode_args::<Echo>(&d.body).unwrap();
        assert_eq!(got, i.to_string(), "in order");
    }
    let disconnected: serde_json::Value = serde_json::from_slice(&delivered[21].body).unwrap();
    assert_eq!(disconnected["event"], "disconnected");
    assert_eq!(disconnected["reason"], "normal");
    assert_eq!(
        f.metric("tether_forward_deliveries_total{kind=\"notify\",outcome=\"delivered\"}"),
        20.0
    );
    assert_eq!(
        f.metric("tether_forward_deliveries_total{kind=\"event\",outcome=\"delivered\"}"),
        2.0
    );
    assert_eq!(f.metric("tether_forward_delivery_retries_total"), 3.0);
    assert_eq!(f.metric("tether_forward_queue_depth"), 0.0);
    f.handle.shutdown();
    f.forwarder.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_new_notifications_and_counts_them() {
    let (app, addr) = start_app(SECRET).await;
    // Every delivery fails until the test says otherwise.
    app.state.lock().unwrap().fail_deliveries = usize::MAX;
    let f = serve_forwarding(format!("http://{addr}/app"), |c| c.queue = 3).await;
    let mut s = alice(f.addr).await;
    for i in 0..10u8 {
        s.send(&Message::Notify {
            method: "n",
            args: &[i],
        })
        .await;
    }
    // A call after them: its answer means they were all handled.
    assert_eq!(s.echo("sync").await, "sync");
    assert_eq!(
        f.metric("tether_forward_deliveries_total{kind=\"notify\",outcome=\"dropped\"}"),
        7.0
    );
    // connected + 3 notifications.
    assert_eq!(f.metric("tether_forward_queue_depth"), 4.0);
    app.state.lock().unwrap().fail_deliveries = 0;
    eventually(Duration::from_secs(20), || {
        app.deliveries()
            .iter()
            .filter(|d| d.route == "notify/n")
            .count()
            >= 3
    })
    .await;
    let bodies: Vec<Vec<u8>> = app
        .deliveries()
        .into_iter()
        .filter(|d| d.route == "notify/n")
        .map(|d| d.body)
        .collect();
    assert_eq!(
        bodies,
        vec![vec![0], vec![1], vec![2]],
        "the first three, in order"
    );
    // Shutdown: what cannot be delivered within the grace is abandoned.
    app.state.lock().unwrap().fail_deliveries = usize::MAX;
    for i in 0..2u8 {
        s.send(&Message::Notify {
            method: "late",
            args: &[i],
        })
        .await;
    }
    assert_eq!(s.echo("sync").await, "sync");
    f.handle.shutdown();
    f.forwarder.close(Duration::from_millis(200)).await;
    // Two notifications and the disconnected event.
    assert_eq!(
        f.metric("tether_forward_deliveries_total{kind=\"notify\",outcome=\"abandoned\"}"),
        2.0
    );
    assert_eq!(
        f.metric("tether_forward_deliveries_total{kind=\"event\",outcome=\"abandoned\"}"),
        1.0
    );
    assert_eq!(f.metric("tether_forward_queue_depth"), 0.0);
}
