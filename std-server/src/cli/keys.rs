//! `tether keys`: a device's cached SCRAM keys from its password.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use tether_core::scram::{CachedKeys, Mechanism};
use tether_server::store::{Store, StoreConfig, normalize_url};

use super::read_password;

/// Output format of `tether keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeysFormat {
    /// One field per line.
    Text,
    /// Only the postcard encoding of `CachedKeys`, in hex (what a device
    /// stores and loads with postcard).
    Postcard,
}

/// The mechanism of `tether keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MechanismArg {
    /// SCRAM-SHA-256 (pbkdf2_sha256 rows).
    Sha256,
    /// SCRAM-SHA-1 (pbkdf2_sha1 rows).
    Sha1,
}

/// `tether keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Print the public half of the server's static key (protocol v2: what
    /// devices pin for Noise NK) from --server-key-file, creating the file
    /// (mode 0600) if missing; no user keys.
    #[arg(long, conflicts_with_all = ["user", "database"])]
    pub server: bool,
    /// With --server: key rotation, step 1. Makes a fresh current key and
    /// keeps the current one as the previous (the one before is dropped),
    /// then prints the new public key. `tether serve` picks the file up on
    /// SIGHUP (or restart) and serves both keys: devices pinning either log
    /// in. Provision the new key, then --retire-previous.
    #[arg(long, requires = "server", conflicts_with = "retire_previous")]
    pub rotate: bool,
    /// With --server: key rotation, step 2. Drops the previous key; after
    /// SIGHUP (or restart) devices still pinning it are refused
    /// `unknown_key`. Prints the current public key.
    #[arg(long, requires = "server")]
    pub retire_previous: bool,
    /// The server's static key file (with --server).
    #[arg(long, default_value = tether_server::server_key::DEFAULT_SERVER_KEY_FILE)]
    pub server_key_file: std::path::PathBuf,
    /// The username the keys are for (printed with them).
    #[arg(long, required_unless_present = "server", default_value = "")]
    pub user: String,
    /// The salt of the user's Django hash (the third `$` field).
    #[arg(long, required_unless_present_any = ["database", "server"])]
    pub salt: Option<String>,
    /// The iteration count of the user's Django hash.
    #[arg(long, required_unless_present_any = ["database", "server"])]
    pub iterations: Option<u32>,
    /// The hash's algorithm.
    #[arg(long, value_enum, default_value = "sha256")]
    pub mechanism: MechanismArg,
    /// Read salt, iterations and algorithm from the user's row instead, and
    /// check the password against it.
    #[arg(long)]
    pub database: Option<String>,
    /// The user table (with --database).
    #[arg(long, default_value = "auth_user")]
    pub user_table: String,
    /// The USERNAME_FIELD column (with --database).
    #[arg(long, default_value = "username")]
    pub username_column: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: KeysFormat,
}

/// `tether keys --server [--rotate | --retire-previous]`: the public key
/// devices pin on stdout, what to do next on stderr.
fn server_keys(args: &KeysArgs) -> Result<(), String> {
    use tether_server::server_key::{
        load_or_create, previous_public_hex, public_hex, retire_previous, rotate,
    };
    let path = &args.server_key_file;
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    let keys = if args.rotate {
        let keys = rotate(path).map_err(failed)?;
        eprintln!(
            "tether keys: {}: new current key (printed); the old one is kept as the \
             previous key. Send SIGHUP to `tether serve` (or restart it): it then \
             accepts both. Provision devices with the new key, then run \
             `tether keys --server --retire-previous`.",
            path.display()
        );
        keys
    } else if args.retire_previous {
        let (keys, dropped) = retire_previous(path).map_err(failed)?;
        if dropped {
            eprintln!(
                "tether keys: {}: previous key dropped. After SIGHUP (or a restart) \
                 `tether serve` refuses devices still pinning it `unknown_key`.",
                path.display()
            );
        } else {
            eprintln!("tether keys: {}: no previous key to drop", path.display());
        }
        keys
    } else {
        load_or_create(path).map_err(failed)?.0
    };
    if let Some(previous) = previous_public_hex(&keys) {
        eprintln!("tether keys: previous key (still accepted): {previous}");
    }
    println!("{}", public_hex(&keys).unwrap_or_default());
    Ok(())
}

pub async fn run(args: KeysArgs) -> ExitCode {
    match keys_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether keys: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn keys_inner(args: KeysArgs) -> Result<(), String> {
    if args.server {
        return server_keys(&args);
    }
    let mut mechanism = match args.mechanism {
        MechanismArg::Sha256 => Mechanism::ScramSha256,
        MechanismArg::Sha1 => Mechanism::ScramSha1,
    };
    let (mut salt, mut iterations) = (args.salt.clone(), args.iterations);
    let mut row_hash = None;
    if let Some(url) = &args.database {
        let mut config = StoreConfig::new(normalize_url(url));
        config.user_table = args.user_table.clone();
        config.username_column = args.username_column.clone();
        config.update_last_login = false;
        let store = Store::open(config).map_err(|e| e.to_string())?;
        let row = store
            .lookup(&args.user)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no user {:?} in the database", args.user))?;
        store.close().await;
        let parsed = tether_core::django::parse(&row.password).map_err(|e| e.to_string())?;
        mechanism = parsed.mechanism;
        salt = Some(parsed.salt.to_string());
        iterations = Some(parsed.iterations);
        row_hash =
            Some(tether_core::django::credentials(&row.password).map_err(|e| e.to_string())?);
    }
    let salt = salt.ok_or("--salt is required")?;
    let iterations = iterations.ok_or("--iterations is required")?;
    let password = read_password()?;
    let keys = CachedKeys::derive(mechanism, &password, salt.as_bytes(), iterations)
        .map_err(|e| e.to_string())?;
    if let Some(row) = &row_hash
        && !keys.server_key.ct_eq(&row.server_key)
    {
        return Err("the password does not match the user's row".into());
    }
    let mut buf = [0u8; 256];
    let postcard = tether_core::message::encode(&keys, &mut buf).map_err(|e| e.to_string())?;
    match args.format {
        KeysFormat::Postcard => println!("{}", hex::encode(postcard)),
        KeysFormat::Text => {
            let b64 = |b: &[u8]| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(b)
            };
            println!("user: {}", args.user);
            println!("mechanism: {mechanism}");
            println!("iterations: {iterations}");
            println!("salt: {salt}");
            println!("client_key: {}", b64(keys.client_key.as_bytes()));
            println!("server_key: {}", b64(keys.server_key.as_bytes()));
            println!("postcard: {}", hex::encode(postcard));
            if row_hash.is_some() {
                println!("checked: the password matches the user's row");
            }
            eprintln!(
                "tether keys: these keys log the device in as {} without the password: \
                 store them as carefully as the password. They stop working when the \
                 password or its hash (salt, iterations) changes.",
                args.user
            );
        }
    }
    Ok(())
}
