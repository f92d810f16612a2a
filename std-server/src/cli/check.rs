//! `tether check`: whether a database has what the server needs, and who
//! can log in.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use sqlx::{AssertSqlSafe, Row as _};
use tether_core::django::HashAlgorithm;
use tether_server::store::{Backend, Store, redact_url};

use super::StoreArgs;

/// `tether check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The database and how to read it.
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn run(args: CheckArgs) -> ExitCode {
    match check_inner(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tether check: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn check_inner(args: CheckArgs) -> Result<bool, String> {
    let config = args.store.config();
    let url = redact_url(&config.url);
    let store = Store::open(config.clone()).map_err(|e| e.to_string())?;
    let backend = store.backend();
    let q = |s: &str| backend.quote(s);
    println!("database: {url} ({})", backend.name());
    let mut ok = true;
    let needs_perm = config.require_perm.is_some();
    let needs_group = config.require_group.is_some();
    let fk = config.fk_column();
    let checks: Vec<(String, Vec<String>, bool)> = vec![
        (
            config.user_table.clone(),
            vec![
                "id".into(),
                config.username_column.clone(),
                "password".into(),
                "is_active".into(),
                "is_superuser".into(),
                "last_login".into(),
            ],
            true,
        ),
        (
            config.groups_table(),
            vec![fk.clone(), "group_id".into()],
            needs_perm || needs_group,
        ),
        (
            config.permissions_table(),
            vec![fk.clone(), "permission_id".into()],
            needs_perm,
        ),
        (
            "auth_group".into(),
            vec!["id".into(), "name".into()],
            needs_group,
        ),
        (
            "auth_group_permissions".into(),
            vec!["group_id".into(), "permission_id".into()],
            needs_perm,
        ),
        (
            "auth_permission".into(),
            vec!["id".into(), "content_type_id".into(), "codename".into()],
            needs_perm,
        ),
        (
            "django_content_type".into(),
            vec!["id".into(), "app_label".into()],
            needs_perm,
        ),
    ];
    for (table, columns, required) in &checks {
        let cols: Vec<String> = columns.iter().map(|c| q(c)).collect();
        let sql = format!("SELECT {} FROM {} WHERE 1 = 0", cols.join(", "), q(table));
        let result = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(store.pool())
            .await;
        match (result, required) {
            (Ok(_), _) => println!("ok      {table} ({})", columns.join(", ")),
            (Err(e), true) => {
                ok = false;
                println!(
                    "MISSING {table} ({}): {}",
                    columns.join(", "),
                    db_message(&e)
                );
            }
            (Err(e), false) => println!(
                "absent  {table} ({}): {} (only needed for --require-perm/--require-group)",
                columns.join(", "),
                db_message(&e)
            ),
        }
    }
    if !ok {
        println!("the server cannot log anyone in with this database and these options");
        return Ok(false);
    }
    match store.ping().await {
        Ok(()) => println!("ok      login query: {}", store.lookup_sql()),
        Err(e) => {
            println!("FAILED  login query: {e}");
            return Ok(false);
        }
    }
    if let Some(perm) = &config.require_perm {
        let sql = format!(
            "SELECT count(*) FROM {p} p JOIN {ct} ct ON ct.{id} = p.{ctid} \
             WHERE ct.{app} = {ph1} AND p.{code} = {ph2}",
            p = q("auth_permission"),
            ct = q("django_content_type"),
            id = q("id"),
            ctid = q("content_type_id"),
            app = q("app_label"),
            code = q("codename"),
            ph1 = backend.placeholder(1),
            ph2 = backend.placeholder(2),
        );
        let n: i64 = sqlx::query(AssertSqlSafe(sql))
            .bind(perm.app_label.as_str())
            .bind(perm.codename.as_str())
            .fetch_one(store.pool())
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| e.to_string())?;
        if n == 0 {
            println!("WARNING permission {perm} does not exist: only superusers can log in");
        } else {
            println!("ok      permission {perm} exists");
        }
    }
    if let Some(group) = &config.require_group {
        let sql = format!(
            "SELECT count(*) FROM {g} WHERE {name} = {ph}",
            g = q("auth_group"),
            name = q("name"),
            ph = backend.placeholder(1),
        );
        let n: i64 = sqlx::query(AssertSqlSafe(sql))
            .bind(group.as_str())
            .fetch_one(store.pool())
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| e.to_string())?;
        if n == 0 {
            println!("WARNING group {group:?} does not exist: nobody can log in");
        } else {
            println!("ok      group {group:?} exists");
        }
    }
    // Per algorithm: how many active users can log in by challenge-response.
    let sql = format!(
        "SELECT {pw}, CASE WHEN {active} THEN 1 ELSE 0 END FROM {t}",
        pw = q("password"),
        active = q("is_active"),
        t = q(&config.user_table),
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .fetch_all(store.pool())
        .await
        .map_err(|e| e.to_string())?;
    let mut by_algorithm: BTreeMap<&'static str, (HashAlgorithm, usize, usize)> = BTreeMap::new();
    let mut iterations: BTreeMap<u32, usize> = BTreeMap::new();
    let (mut can, mut inactive) = (0usize, 0usize);
    for row in &rows {
        let password: String = row.try_get(0).map_err(|e| e.to_string())?;
        let active: i64 = row.try_get(1).map_err(|e| e.to_string())?;
        if active == 0 {
            inactive += 1;
            continue;
        }
        let algorithm = HashAlgorithm::identify(&password);
        let usable = tether_core::django::credentials(&password).is_ok();
        let entry = by_algorithm
            .entry(algorithm.name())
            .or_insert((algorithm, 0, 0));
        if usable {
            entry.1 += 1;
            can += 1;
            if let Ok(p) = tether_core::django::parse(&password) {
                *iterations.entry(p.iterations).or_default() += 1;
            }
        } else {
            entry.2 += 1;
        }
    }
    println!(
        "users: {} ({} inactive, not counted below)",
        rows.len(),
        inactive
    );
    let mut advice = Vec::new();
    for (algorithm, (alg, yes, no)) in &by_algorithm {
        if *no == 0 {
            println!("  {algorithm:<14} {yes:>6} can log in by challenge-response");
        } else if *yes == 0 {
            println!("  {algorithm:<14} {no:>6} cannot log in by challenge-response");
            if !advice.contains(&alg.advice()) {
                advice.push(alg.advice());
            }
        } else {
            println!(
                "  {algorithm:<14} {yes:>6} can, {no} cannot (malformed hash: set the password again)"
            );
        }
    }
    for text in advice {
        println!("  what to do: {text}");
    }
    println!("active users who can log in by challenge-response: {can}");
    // Migration progress to scram_sha256 (docs/DJANGO.md section 4).
    let count = |a: HashAlgorithm| by_algorithm.get(a.name()).map_or(0, |e| e.1);
    let verifiers = count(HashAlgorithm::ScramSha256);
    let convertible = count(HashAlgorithm::Pbkdf2Sha256);
    let equivalent = convertible + count(HashAlgorithm::Pbkdf2Sha1);
    if can > 0 {
        println!(
            "scram_sha256 rows (a copy cannot log a device in): {verifiers} of {can} ({:.0}%)",
            100.0 * verifiers as f64 / can as f64
        );
    }
    if equivalent > 0 {
        println!(
            "hint: {equivalent} pbkdf2 rows are password-equivalent for Tether (a copy of the \
             table logs their devices in): put django_tether.hashers.ScramSHA256PasswordHasher \
             first in PASSWORD_HASHERS, then `manage.py tether_convert_hashes` converts the \
             {convertible} pbkdf2_sha256 rows at once and devices keep their keys; the others \
             convert as their users log in on the site"
        );
    }
    if !iterations.is_empty() {
        let list: Vec<String> = iterations
            .iter()
            .map(|(i, n)| format!("{i} ({n})"))
            .collect();
        println!("PBKDF2 iterations in use: {}", list.join(", "));
    }
    match store
        .census(store.config().lookup_timeout.max(Duration::from_secs(30)))
        .await
    {
        Ok(counts) => match tether_server::decoy::DecoyMix::from_counts(&counts) {
            Some(mix) => println!(
                "decoy challenges (shares of the pbkdf2 and scram_sha256 rows, inactive too): {mix}"
            ),
            None => {
                println!(
                    "decoy challenges: no pbkdf2 or scram_sha256 row; SCRAM-SHA-256 at --decoy-iterations"
                )
            }
        },
        Err(e) => println!("decoy challenges: cannot count the rows: {e}"),
    }
    if store.backend() == Backend::Sqlite
        && let Ok(row) = sqlx::query("PRAGMA journal_mode")
            .fetch_one(store.pool())
            .await
        && let Ok(mode) = row.try_get::<String, _>(0)
    {
        println!("sqlite journal mode: {mode}");
        if !mode.eq_ignore_ascii_case("wal") {
            println!(
                "hint: WAL mode lets logins read while Django writes: sqlite3 DB 'PRAGMA journal_mode=WAL' (kept in the file)"
            );
        }
    }
    store.close().await;
    Ok(true)
}

fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string(),
    }
}
