//! `tether demo`: a Django-shaped SQLite database with a demo user, the
//! server, and a simulated device (the tether-firmware client over a std
//! socket) that logs in, calls the server and answers the server's call.
//!
//! The database gets Django 5.2's exact schema for `django.contrib.auth`
//! and `django.contrib.contenttypes` (the DDL its `migrate` ran, embedded),
//! the rows `migrate` records for them (`django_migrations`, content types,
//! default permissions), and one user whose password hash is a genuine
//! `pbkdf2_sha256` at Django 5.2's default of 1,000,000 iterations, made the
//! way Django's `make_password` makes it (22-character salt). A Django
//! project pointed at the file sees those apps as migrated.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use rand::{RngExt as _, SeedableRng as _};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AssertSqlSafe, Row as _};
use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo, WhoAmI};
use tether_core::scram::ClientCredentials;
use tether_firmware::{
    BufferStore, Config as DeviceConfig, Handler, Request, Responded, Responder,
};
use tokio::sync::Notify;

use tether_server::default_realm::{DefaultRealm, RealmEvent};
use tether_server::secret::ServerSecret;
use tether_server::server::{Server, ServerConfig};
use tether_server::store::{Backend, Store, StoreConfig, django_timestamp};

/// Django 5.2's DDL for the auth and contenttypes tables on SQLite.
pub const DJANGO_AUTH_SCHEMA: &str = include_str!("django_auth_schema.sql");

/// Django 5.2's default PBKDF2 iterations.
pub const DJANGO_DEFAULT_ITERATIONS: u32 = 1_000_000;

/// The demo account.
pub const DEMO_USER: &str = "alice";
/// The demo account's password.
pub const DEMO_PASSWORD: &str = "wonderland";

/// The characters of Django's `get_random_string` (salts).
const RANDOM_STRING_CHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A Django `pbkdf2_sha256` hash of `password`, as `make_password` writes it:
/// a fresh 22-character salt, `iterations` rounds, base64 of the 32-byte key.
/// Runs PBKDF2 (about 0.2 s at 1,000,000 iterations, optimised).
pub fn make_password(password: &str, iterations: u32) -> String {
    let mut rng = rand::rng();
    let salt: String = (0..22)
        .map(|_| RANDOM_STRING_CHARS[rng.random_range(0..RANDOM_STRING_CHARS.len())] as char)
        .collect();
    make_password_with_salt(password, &salt, iterations)
}

/// [`make_password`] with a given salt.
pub fn make_password_with_salt(password: &str, salt: &str, iterations: u32) -> String {
    let mut key = [0u8; 32];
    // Monomorphised here: about 0.2 s at 1,000,000 iterations in release
    // builds, a few seconds in unoptimised debug builds.
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), salt.as_bytes(), iterations, &mut key);
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    format!("pbkdf2_sha256${iterations}${salt}${b64}")
}

/// What [`prepare_database`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Created the file, the schema and the demo user.
    Created,
    /// The file existed with the demo user.
    Existing,
}

/// Creates (if missing) a SQLite database with Django's auth schema and the
/// demo user. An existing database is used as it is if it has the demo
/// user; otherwise it is left alone and an error says so.
pub async fn prepare_database(url: &str) -> Result<Prepared, String> {
    install_default_drivers();
    let path = url
        .strip_prefix("sqlite://")
        .ok_or_else(|| format!("the demo needs a sqlite:// database, not {url}"))?;
    let path = path.split('?').next().unwrap_or(path);
    let exists = std::path::Path::new(path).exists();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{path}?mode=rwc"))
        .await
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    let result = async {
        if exists {
            let row = sqlx::query("SELECT count(*) FROM auth_user WHERE username = ?")
                .bind(DEMO_USER)
                .fetch_one(&pool)
                .await
                .map_err(|e| format!("{path} exists but is not a Django database: {e}"))?;
            let n: i64 = row.try_get(0).map_err(|e| e.to_string())?;
            return if n > 0 {
                Ok(Prepared::Existing)
            } else {
                Err(format!(
                    "{path} exists without the demo user {DEMO_USER}; \
                     refusing to add users to it (use --database with a new file)"
                ))
            };
        }
        let hash = make_password(DEMO_PASSWORD, DJANGO_DEFAULT_ITERATIONS);
        let now = django_timestamp(SystemTime::now(), Backend::Sqlite);
        let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
        sqlx::raw_sql(AssertSqlSafe(DJANGO_AUTH_SCHEMA))
            .execute(&mut *tx)
            .await
            .map_err(|e| format!("creating the schema: {e}"))?;
        for (app, name) in MIGRATIONS {
            sqlx::query("INSERT INTO django_migrations (app, name, applied) VALUES (?, ?, ?)")
                .bind(*app)
                .bind(*name)
                .bind(now.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
        }
        for (app, model, verbose) in CONTENT_TYPES {
            sqlx::query("INSERT INTO django_content_type (app_label, model) VALUES (?, ?)")
                .bind(*app)
                .bind(*model)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            for action in ["add", "change", "delete", "view"] {
                sqlx::query(
                    "INSERT INTO auth_permission (content_type_id, codename, name) \
                     SELECT id, ?, ? FROM django_content_type WHERE app_label = ? AND model = ?",
                )
                .bind(format!("{action}_{model}"))
                .bind(format!("Can {action} {verbose}"))
                .bind(*app)
                .bind(*model)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            }
        }
        sqlx::query(
            "INSERT INTO auth_user (password, last_login, is_superuser, username, last_name, \
             email, is_staff, is_active, date_joined, first_name) \
             VALUES (?, NULL, 0, ?, '', '', 0, 1, ?, '')",
        )
        .bind(hash)
        .bind(DEMO_USER)
        .bind(now.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(Prepared::Created)
    }
    .await;
    pool.close().await;
    result
}

/// The migrations Django records for contenttypes and auth (5.2).
const MIGRATIONS: &[(&str, &str)] = &[
    ("contenttypes", "0001_initial"),
    ("auth", "0001_initial"),
    ("contenttypes", "0002_remove_content_type_name"),
    ("auth", "0002_alter_permission_name_max_length"),
    ("auth", "0003_alter_user_email_max_length"),
    ("auth", "0004_alter_user_username_opts"),
    ("auth", "0005_alter_user_last_login_null"),
    ("auth", "0006_require_contenttypes_0002"),
    ("auth", "0007_alter_validators_add_error_messages"),
    ("auth", "0008_alter_user_username_max_length"),
    ("auth", "0009_alter_user_last_name_max_length"),
    ("auth", "0010_alter_group_name_max_length"),
    ("auth", "0011_update_proxy_permissions"),
    ("auth", "0012_alter_user_first_name_max_length"),
];

/// Content types `migrate` creates for these apps, with their verbose names.
const CONTENT_TYPES: &[(&str, &str, &str)] = &[
    ("auth", "permission", "permission"),
    ("auth", "group", "group"),
    ("auth", "user", "user"),
    ("contenttypes", "contenttype", "content type"),
];

/// Options of `tether demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where to listen.
    pub listen: String,
    /// The SQLite database URL.
    pub database: String,
    /// Keep serving after the device is done (until Ctrl-C).
    pub keep_serving: bool,
}

/// The simulated device's mind: answers `device_info` and `echo`.
struct DemoDevice {
    booted: Instant,
    answered: Arc<Notify>,
}

impl Handler for DemoDevice {
    async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
        if req.is::<DeviceInfo>() {
            let uptime_secs = self.booted.elapsed().as_secs();
            say(&format!(
                "device: the server called device_info; answering firmware \"{DEVICE_FIRMWARE}\", up {uptime_secs} s"
            ));
            self.answered.notify_one();
            reply.ok::<DeviceInfo>(&DeviceStatus {
                firmware: DEVICE_FIRMWARE,
                uptime_secs,
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

const DEVICE_FIRMWARE: &str = concat!("tether-demo-device ", env!("CARGO_PKG_VERSION"));

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the demo; `Ok(())` when the device did every step.
pub async fn run(options: DemoOptions) -> Result<(), String> {
    let started = Instant::now();
    let prepared = prepare_database(&options.database).await?;
    match prepared {
        Prepared::Created => say(&format!(
            "demo: created {} with Django's auth schema and user {DEMO_USER} \
             (pbkdf2_sha256, {DJANGO_DEFAULT_ITERATIONS} iterations)",
            options.database
        )),
        Prepared::Existing => say(&format!("demo: using {}", options.database)),
    }
    say(&format!(
        "demo: credentials: username {DEMO_USER}, password {DEMO_PASSWORD}"
    ));

    let store = Arc::new(
        Store::open(StoreConfig::new(options.database.clone())).map_err(|e| e.to_string())?,
    );
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let realm = DefaultRealm::new()
        .ask_device_info(true)
        .with_events(events_tx);
    let registry = realm.registry();
    // A demo secret and server key only live as long as the process. The
    // device pins the key: protocol v2 over Noise_NK, as a provisioned
    // device logs in.
    let server_key = tether_core::noise::StaticKeypair::generate(&mut rand::rng());
    let pinned = *server_key.public();
    let server = Server::bind(
        options.listen.as_str(),
        ServerConfig::default(),
        store,
        realm,
        ServerSecret::random(),
    )
    .await
    .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?
    .with_noise_keys(tether_core::connection::ServerKeys {
        current: Some(server_key),
        ..Default::default()
    });
    let addr = server.local_addr();
    let handle = server.handle();
    say(&format!("server: listening on {addr}"));
    let server_task = tokio::spawn(server.run());
    let printer = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                RealmEvent::Connected {
                    session,
                    username,
                    peer,
                } => say(&format!(
                    "server: {username} connected (session {session}, peer {peer})"
                )),
                RealmEvent::DeviceInfo {
                    session,
                    firmware,
                    uptime_secs,
                } => say(&format!(
                    "server: session {session}'s device runs \"{firmware}\", up {uptime_secs} s"
                )),
                RealmEvent::Disconnected {
                    session,
                    username,
                    end,
                } => say(&format!(
                    "server: {username} disconnected (session {session}: {end})"
                )),
            }
        }
    });

    let device = run_device(addr, pinned).await;
    // Let the server see the device's goodbye before anything else.
    let waited = tokio::time::timeout(Duration::from_secs(2), async {
        while !registry.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let _ = waited.await;
    if options.keep_serving && device.is_ok() {
        say("demo: the server keeps serving; stop it with Ctrl-C");
        tokio::select! {
            _ = tether_server::server::shutdown_signal() => {}
            _ = handle_wait(&handle) => {}
        }
    }
    handle.shutdown();
    let _ = server_task.await;
    let _ = tokio::time::timeout(Duration::from_secs(1), printer).await;
    device?;
    say(&format!(
        "demo: done in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn handle_wait(handle: &tether_server::server::ServerHandle) {
    while !handle.is_shutting_down() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The simulated device: the tether-firmware client over a std socket.
async fn run_device(addr: SocketAddr, server_key: [u8; 32]) -> Result<(), String> {
    let mut store: BufferStore = BufferStore::new();
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let config = DeviceConfig::default()
        .with_min_iterations(DJANGO_DEFAULT_ITERATIONS)
        .with_server_key(server_key);
    say(&format!(
        "device: connecting to {addr} as {DEMO_USER} over protocol v2 (Noise_NK, server key {}...; PBKDF2 runs once on the device)",
        hex::encode(&server_key[..4])
    ));
    let t = Instant::now();
    let login = tether_firmware::host::connect(
        addr,
        store.buffers(),
        DEMO_USER,
        ClientCredentials::Password(DEMO_PASSWORD),
        &mut rng,
        &config,
    )
    .await
    .map_err(|e| format!("device: {e}"))?;
    say(&format!(
        "device: logged in, server verified, session encrypted (session {}, {} ms, keys derived: {})",
        login.session.session_id(),
        t.elapsed().as_millis(),
        login.derived
    ));
    let answered = Arc::new(Notify::new());
    let mut mind = DemoDevice {
        booted: Instant::now(),
        answered: answered.clone(),
    };
    let mut session = login.session;
    let text = "hello from the device";
    let echoed = session
        .call::<Echo, _>(&text, &mut mind)
        .await
        .map_err(|e| format!("device: echo failed: {e:?}"))?
        .to_string();
    say(&format!("device: echo(\"{text}\") -> \"{echoed}\""));
    let me = session
        .call::<WhoAmI, _>(&(), &mut mind)
        .await
        .map_err(|e| format!("device: whoami failed: {e:?}"))?;
    say(&format!(
        "device: whoami() -> user {} (id {}), session {}, superuser {}",
        me.username, me.user_id, me.session_id, me.is_superuser
    ));
    // Stay reachable until the server's device_info call has been answered.
    let waited = session
        .serve_until(
            &mut mind,
            tokio::time::timeout(Duration::from_secs(10), answered.notified()),
        )
        .await
        .map_err(|e| format!("device: {e}"))?;
    if waited.is_err() {
        return Err("device: the server never called device_info".into());
    }
    // Let the reply reach the server before saying goodbye.
    session
        .serve_for(&mut mind, Duration::from_millis(100))
        .await
        .map_err(|e| format!("device: {e}"))?;
    say("device: goodbye");
    session.close().await.map_err(|e| format!("device: {e}"))?;
    Ok(())
}
