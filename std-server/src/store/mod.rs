//! The credential store: Django's own tables, read with one indexed query per
//! login.
//!
//! The store reads `auth_user` (or a custom `AUTH_USER_MODEL` table) through
//! sqlx's runtime-generic driver, so one binary serves SQLite (Django's
//! default `db.sqlite3`), PostgreSQL and MySQL/MariaDB, chosen by the URL;
//! lookups in a SQLite file are answered by dedicated reader threads
//! instead ([`sqlite_reader`]: sqlx's hand-offs were half of a login's CPU).
//! The only statement it ever writes is Django's `update_last_login`
//! (`UPDATE <table> SET last_login = now WHERE id IN (...)`), batched by
//! one background task ([`last_login`]), and only when
//! [`StoreConfig::update_last_login`] is on.
//!
//! Each login costs one `SELECT` on the username column (unique, so
//! indexed, in every Django schema) that also answers the optional
//! permission and group gates with `EXISTS` sub-queries over the indexed
//! many-to-many tables, the way Django's `ModelBackend` decides
//! (see [`UserRecord::is_authorised`]).
//!
//! A lookup is bounded by [`StoreConfig::lookup_timeout`]: a database that is
//! down or locked turns into [`StoreError::Unavailable`] within that time,
//! and the pool reconnects by itself when the database returns.
//!
//! Each database needs its cargo feature (`sqlite`, `postgres`, `mysql`;
//! all in the default features): [`Store::open`] refuses the URL of a
//! database left out of the build with [`StoreError::Config`] naming the
//! feature to enable. A build with none of them compiles, but no store
//! opens, so no server starts.
//!
//! The optional cache ([`StoreConfig::cache_ttl`], off by default) keeps a
//! lookup result for at most its TTL, never longer: a user deactivated or
//! whose password changed can keep logging in for at most that long.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, AssertSqlSafe, Row as _};
use tether_core::scram::Mechanism;

use crate::metrics::{Metrics, StoreMetrics};

pub mod last_login;
#[cfg(feature = "sqlite")]
mod sqlite_file;
#[cfg(feature = "sqlite")]
pub mod sqlite_reader;

use last_login::LastLoginWriter;
#[cfg(feature = "sqlite")]
use sqlite_file::FileWatch;
#[cfg(feature = "sqlite")]
use sqlite_reader::SqliteReader;

/// Which SQL dialect a database URL speaks. Every variant exists in every
/// build; a store opens only those whose cargo feature is enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (`sqlite://path`).
    Sqlite,
    /// PostgreSQL (`postgres://` or `postgresql://`).
    Postgres,
    /// MySQL or MariaDB (`mysql://` or `mariadb://`).
    MySql,
}

impl Backend {
    /// The backend of a database URL, from its scheme. A backend whose
    /// cargo feature this build lacks is an error naming the feature.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or("");
        let backend = match scheme {
            "sqlite" => Self::Sqlite,
            "postgres" | "postgresql" => Self::Postgres,
            "mysql" | "mariadb" => Self::MySql,
            _ => {
                return Err(StoreError::Config(format!(
                    "unsupported database URL scheme {scheme:?}: use sqlite://, postgres:// or \
                     mysql://"
                )));
            }
        };
        if backend.is_compiled() {
            Ok(backend)
        } else {
            Err(StoreError::Config(format!(
                "this build has no {scheme} support: enable tether-server's cargo feature `{}`",
                backend.feature()
            )))
        }
    }

    /// The cargo feature of tether-server that compiles this backend's
    /// driver in.
    pub fn feature(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::MySql => "mysql",
        }
    }

    /// Whether this build has the backend's driver (its
    /// [`feature`](Self::feature) is enabled).
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Sqlite => cfg!(feature = "sqlite"),
            Self::Postgres => cfg!(feature = "postgres"),
            Self::MySql => cfg!(feature = "mysql"),
        }
    }

    /// Quotes a (validated) identifier: `"name"`, or `` `name` `` for
    /// MySQL.
    pub fn quote(self, ident: &str) -> String {
        match self {
            Self::MySql => format!("`{ident}`"),
            Self::Sqlite | Self::Postgres => format!("\"{ident}\""),
        }
    }

    /// The `n`th (1-based) bind placeholder: `$n` for PostgreSQL, else `?`.
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Self::Postgres => format!("${n}"),
            Self::Sqlite | Self::MySql => "?".to_string(),
        }
    }

    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::MySql => "mysql",
        }
    }
}

/// Normalises the database URL forms Django projects use (`DATABASE_URL`
/// as dj-database-url reads it) to the ones sqlx reads: `pgsql://`,
/// `postgis://` -> `postgres://`; `mysql2://`, `mysqlgis://` -> `mysql://`.
/// SQLite URLs follow sqlx: `sqlite://db.sqlite3` is relative to the working
/// directory, `sqlite:///abs/path` and `sqlite:////abs/path` are absolute.
pub fn normalize_url(url: &str) -> String {
    for (from, to) in [
        ("pgsql://", "postgres://"),
        ("postgis://", "postgres://"),
        ("mysql2://", "mysql://"),
        ("mysqlgis://", "mysql://"),
    ] {
        if let Some(rest) = url.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    url.to_string()
}

/// For a `sqlite:` URL whose file does not exist: what `tether serve` warns
/// at start (the server starts anyway: a file being restored comes back by
/// itself). Explains the URL forms, the usual cause of a wrong path.
pub fn missing_sqlite_file(url: &str) -> Option<String> {
    if Backend::from_url(url).ok()? != Backend::Sqlite {
        return None;
    }
    let path = sqlite_file_of(url)?;
    if path.exists() {
        return None;
    }
    let absolute = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
    Some(format!(
        "the SQLite database file {} does not exist (from {url}); logins are refused \
         `unavailable` until it does. sqlite://db.sqlite3 (two slashes) is relative to the \
         working directory, sqlite:///srv/site/db.sqlite3 (three slashes) is the absolute \
         path /srv/site/db.sqlite3 (dj-database-url reads three slashes as relative: \
         write four, sqlite:////srv/site/db.sqlite3, for an absolute path in both)",
        absolute.display()
    ))
}

/// The database file of a `sqlite:` URL, when the lookup threads can open
/// it. Always `None` without the `sqlite` feature (whose
/// URLs [`Backend::from_url`] refuses anyway).
fn sqlite_file_of(url: &str) -> Option<std::path::PathBuf> {
    #[cfg(feature = "sqlite")]
    return SqliteReader::file_of(url);
    #[cfg(not(feature = "sqlite"))]
    {
        let _ = url;
        None
    }
}

/// The URL with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_string(),
    }
}

/// A Django permission, `app_label.codename` (as in `user.has_perm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// The app label (`django_content_type.app_label`).
    pub app_label: String,
    /// The codename (`auth_permission.codename`).
    pub codename: String,
}

impl std::str::FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('.') {
            Some((app, code)) if !app.is_empty() && !code.is_empty() && !code.contains('.') => {
                Ok(Self {
                    app_label: app.to_string(),
                    codename: code.to_string(),
                })
            }
            _ => Err(format!(
                "{s:?} is not a permission of the form app_label.codename (e.g. devices.connect)"
            )),
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.app_label, self.codename)
    }
}

/// How to find users in the database.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Database URL (`sqlite://db.sqlite3`, `postgres://...`, `mysql://...`).
    pub url: String,
    /// The user table (`AUTH_USER_MODEL`'s table; default `auth_user`).
    pub user_table: String,
    /// The column of `USERNAME_FIELD` (default `username`; e.g. `email`).
    pub username_column: String,
    /// The user's foreign-key column in the user's many-to-many tables
    /// (default: `<model>_id`, with the model name taken from the table name
    /// after its last `_`: `user_id` for `auth_user`, `emailuser_id` for
    /// `accounts_emailuser`).
    pub user_fk_column: Option<String>,
    /// The user-groups table (default `<user_table>_groups`).
    pub user_groups_table: Option<String>,
    /// The user-permissions table (default `<user_table>_user_permissions`).
    pub user_permissions_table: Option<String>,
    /// Only users with this permission may log in (`--require-perm`).
    pub require_perm: Option<Permission>,
    /// Only members of this group may log in (`--require-group`).
    pub require_group: Option<String>,
    /// Write `last_login` on each successful login, as Django's
    /// `update_last_login` does (default on).
    pub update_last_login: bool,
    /// Upper bound on one lookup, connection included (default 2 s).
    pub lookup_timeout: Duration,
    /// How long a lookup result may be reused (default zero: no cache).
    pub cache_ttl: Duration,
    /// Most cached usernames (default 10,000).
    pub cache_capacity: usize,
    /// Most pooled database connections (default 8).
    pub max_connections: u32,
}

impl StoreConfig {
    /// Django's defaults (`auth_user`/`username`) for a database URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            user_table: "auth_user".into(),
            username_column: "username".into(),
            user_fk_column: None,
            user_groups_table: None,
            user_permissions_table: None,
            require_perm: None,
            require_group: None,
            update_last_login: true,
            lookup_timeout: Duration::from_secs(2),
            cache_ttl: Duration::ZERO,
            cache_capacity: 10_000,
            max_connections: 8,
        }
    }

    /// The user's foreign-key column in the many-to-many tables.
    pub fn fk_column(&self) -> String {
        self.user_fk_column.clone().unwrap_or_else(|| {
            let model = self.user_table.rsplit('_').next().unwrap_or("user");
            format!("{model}_id")
        })
    }

    /// The user-groups table.
    pub fn groups_table(&self) -> String {
        self.user_groups_table
            .clone()
            .unwrap_or_else(|| format!("{}_groups", self.user_table))
    }

    /// The user-permissions table.
    pub fn permissions_table(&self) -> String {
        self.user_permissions_table
            .clone()
            .unwrap_or_else(|| format!("{}_user_permissions", self.user_table))
    }

    fn identifiers(&self) -> Vec<String> {
        vec![
            self.user_table.clone(),
            self.username_column.clone(),
            self.fk_column(),
            self.groups_table(),
            self.permissions_table(),
        ]
    }
}

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configuration cannot work (bad URL scheme, bad identifier).
    #[error("configuration: {0}")]
    Config(String),
    /// The database could not answer in time or at all; retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error that retrying will not fix (a
    /// missing table or column): the configuration does not match the
    /// schema. Logins are refused as unavailable.
    #[error("database query failed: {0}")]
    Query(String),
}

impl StoreError {
    fn from_sqlx(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) => {
                // A locked or missing SQLite database is a transient
                // condition (a migration, a file being restored).
                let msg = db.message().to_string();
                if msg.contains("locked") || msg.contains("busy") || msg.contains("unable to open")
                {
                    Self::Unavailable(msg)
                } else {
                    Self::Query(msg)
                }
            }
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// One user row as a login needs it. The password hash is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Primary key.
    pub id: i64,
    /// The username as stored (the identity; on MySQL's case-insensitive
    /// collations it may differ from what the client typed).
    pub username: String,
    /// Django's encoded password hash.
    pub password: String,
    /// `is_active`.
    pub is_active: bool,
    /// `is_superuser`.
    pub is_superuser: bool,
    /// Whether the user holds the required permission through
    /// `user_permissions` or a group (`None` when no permission is required).
    /// Superuser status is applied by [`Self::is_authorised`], not here.
    pub has_perm: Option<bool>,
    /// Whether the user is in the required group (`None` when none is
    /// required).
    pub in_group: Option<bool>,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("algorithm", &self.algorithm().name())
            .field("is_active", &self.is_active)
            .field("is_superuser", &self.is_superuser)
            .field("has_perm", &self.has_perm)
            .field("in_group", &self.in_group)
            .finish_non_exhaustive()
    }
}

impl UserRecord {
    /// The algorithm of the stored hash.
    pub fn algorithm(&self) -> tether_core::django::HashAlgorithm {
        tether_core::django::HashAlgorithm::identify(&self.password)
    }

    /// Whether the row may log in, as Django decides: the user is active;
    /// if a permission is required, an active superuser has it, otherwise
    /// it must come from `user_permissions` or a group (`ModelBackend`); if
    /// a group is required, the user must be a member (superusers too).
    pub fn is_authorised(&self) -> bool {
        self.is_active
            && (self.is_superuser || self.has_perm.unwrap_or(true))
            && self.in_group.unwrap_or(true)
    }
}

/// The Django credential store.
pub struct Store {
    config: StoreConfig,
    backend: Backend,
    pool: AnyPool,
    // Built once from validated identifiers; values are always bound.
    /// `SELECT <what a login reads> FROM <user table> u`.
    select_sql: String,
    /// The permission and group gates' values, bound first.
    gate_binds: Vec<String>,
    lookup_sql: Arc<str>,
    lookup_binds: Vec<String>,
    /// SQLite files: lookups on dedicated threads instead of the pool.
    #[cfg(feature = "sqlite")]
    reader: Option<SqliteReader>,
    last_login: LastLoginWriter,
    cache: Option<Cache>,
    metrics: Metrics,
    recorded: StoreMetrics,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("url", &redact_url(&self.config.url))
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

fn check_identifier(ident: &str) -> Result<(), StoreError> {
    let mut chars = ident.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && ident.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "{ident:?} is not a plain SQL identifier (letters, digits, _)"
        )))
    }
}

/// Builds SQL with positional placeholders for any backend.
struct SqlBuilder {
    backend: Backend,
    binds: Vec<String>,
}

impl SqlBuilder {
    fn bind(&mut self, value: &str) -> String {
        self.binds.push(value.to_string());
        self.backend.placeholder(self.binds.len())
    }
}

impl Store {
    /// Opens the store. The pool connects lazily: a database that is down
    /// now makes logins `unavailable` until it returns, it does not stop
    /// the server. Use [`Store::ping`] to check it.
    pub fn open(config: StoreConfig) -> Result<Self, StoreError> {
        install_default_drivers();
        let url = normalize_url(&config.url);
        let backend = Backend::from_url(&url)?;
        for ident in config.identifiers() {
            check_identifier(&ident)?;
        }
        let q = |s: &str| backend.quote(s);
        let fk = q(&config.fk_column());
        let mut b = SqlBuilder {
            backend,
            binds: Vec::new(),
        };
        let perm_expr = match &config.require_perm {
            Some(p) => {
                let (a1, c1) = (b.bind(&p.app_label), b.bind(&p.codename));
                let (a2, c2) = (b.bind(&p.app_label), b.bind(&p.codename));
                format!(
                    "CASE WHEN EXISTS (SELECT 1 FROM {up} up \
                       JOIN {perm} p ON p.{id} = up.{pid} \
                       JOIN {ct} ct ON ct.{id} = p.{ctid} \
                       WHERE up.{fk} = u.{id} AND ct.{app} = {a1} AND p.{code} = {c1}) \
                     OR EXISTS (SELECT 1 FROM {ug} ug \
                       JOIN {gp} gp ON gp.{gid} = ug.{gid} \
                       JOIN {perm} p ON p.{id} = gp.{pid} \
                       JOIN {ct} ct ON ct.{id} = p.{ctid} \
                       WHERE ug.{fk} = u.{id} AND ct.{app} = {a2} AND p.{code} = {c2}) \
                     THEN 1 ELSE 0 END",
                    up = q(&config.permissions_table()),
                    ug = q(&config.groups_table()),
                    perm = q("auth_permission"),
                    ct = q("django_content_type"),
                    gp = q("auth_group_permissions"),
                    id = q("id"),
                    pid = q("permission_id"),
                    gid = q("group_id"),
                    ctid = q("content_type_id"),
                    app = q("app_label"),
                    code = q("codename"),
                )
            }
            None => "NULL".to_string(),
        };
        let group_expr = match &config.require_group {
            Some(g) => {
                let g1 = b.bind(g);
                format!(
                    "CASE WHEN EXISTS (SELECT 1 FROM {ug} ug JOIN {grp} g ON g.{id} = ug.{gid} \
                       WHERE ug.{fk} = u.{id} AND g.{name} = {g1}) THEN 1 ELSE 0 END",
                    ug = q(&config.groups_table()),
                    grp = q("auth_group"),
                    id = q("id"),
                    gid = q("group_id"),
                    name = q("name"),
                )
            }
            None => "NULL".to_string(),
        };
        // The columns a login reads, for one username or (revalidation)
        // for many ids.
        let select = format!(
            "SELECT u.{id}, u.{username}, u.{password}, \
               CASE WHEN u.{active} THEN 1 ELSE 0 END, \
               CASE WHEN u.{superuser} THEN 1 ELSE 0 END, \
               {perm_expr}, {group_expr} \
             FROM {table} u",
            id = q("id"),
            username = q(&config.username_column),
            password = q("password"),
            active = q("is_active"),
            superuser = q("is_superuser"),
            table = q(&config.user_table),
        );
        let gate_binds = b.binds.clone();
        let username_bind = b.bind("");
        let lookup_sql = format!(
            "{select} WHERE u.{username} = {username_bind}",
            username = q(&config.username_column),
        );
        let mut lookup_binds = b.binds;
        lookup_binds.pop(); // the username, bound per lookup
        let timeout = config.lookup_timeout;
        #[cfg(feature = "sqlite")]
        let file = match SqliteReader::file_of(&url) {
            Some(path) if backend == Backend::Sqlite => {
                Some((path.clone(), Arc::new(FileWatch::new(path))))
            }
            _ => None,
        };
        #[cfg(feature = "sqlite")]
        let watch = file.as_ref().map(|(_, w)| w.clone());
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(timeout)
            .idle_timeout(Duration::from_secs(60))
            .max_lifetime(Duration::from_secs(15 * 60))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
                        // Wait for a writer's lock at most as long as a lookup may take.
                        let pragma = format!("PRAGMA busy_timeout = {}", timeout.as_millis());
                        sqlx::query(AssertSqlSafe(pragma))
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            });
        // A connection to a SQLite file that was since replaced by rename
        // reads the old file: take another. sqlx dates a connection once it
        // is connected, so a replacement during the connect (under 100 ms)
        // counts too.
        #[cfg(feature = "sqlite")]
        let pool = pool.before_acquire(move |_conn, meta| {
            let stale = watch.as_ref().is_some_and(|w| {
                let opened = Instant::now()
                    .checked_sub(meta.age + Duration::from_millis(100))
                    .unwrap_or_else(Instant::now);
                w.is_stale(opened)
            });
            Box::pin(async move { Ok(!stale) })
        });
        let pool = pool
            .connect_lazy(&url)
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let cache = (!config.cache_ttl.is_zero()).then(|| Cache {
            ttl: config.cache_ttl,
            capacity: config.cache_capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        });
        let metrics = Metrics::new();
        let lookup_sql: Arc<str> = lookup_sql.into();
        #[cfg(feature = "sqlite")]
        let reader = match file {
            Some((path, watch)) => Some(
                SqliteReader::start(
                    path,
                    watch,
                    lookup_sql.clone(),
                    lookup_binds.clone(),
                    timeout,
                )
                .map_err(|e| StoreError::Config(format!("cannot start lookup threads: {e}")))?,
            ),
            None => None,
        };
        let last_login =
            LastLoginWriter::new(pool.clone(), backend, &config.user_table, timeout * 2);
        Ok(Self {
            config,
            backend,
            pool,
            select_sql: select,
            gate_binds,
            lookup_sql,
            lookup_binds,
            #[cfg(feature = "sqlite")]
            reader,
            last_login,
            cache,
            recorded: metrics.store(),
            metrics,
        })
    }

    /// Records into `metrics` (shared with other stores) instead of this
    /// store's own registry. A [`Server`](crate::Server) records into its
    /// store's metrics.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.recorded = metrics.store();
        self.metrics = metrics;
        self
    }

    /// The metrics this store, and the servers bound on it, record into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The database's backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool (for `tether check` and tests).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The SQL of the login lookup (for logs and `tether check`).
    pub fn lookup_sql(&self) -> &str {
        &self.lookup_sql
    }

    /// Checks that the database answers and the lookup query runs.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query_user("").await.map(|_| ())
    }

    /// Finds a user by username (the `USERNAME_FIELD` column), through the
    /// cache when one is configured. `Ok(None)`: no such user.
    pub async fn lookup(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        if let Some(cache) = &self.cache
            && let Some(hit) = cache.get(username)
        {
            self.recorded.cache_hits.inc();
            return Ok(hit);
        }
        // The entry ages from before the query: a row read late in a slow
        // query is never trusted for longer than the TTL after it was read.
        let asked = Instant::now();
        let result = self.query_user(username).await;
        self.recorded
            .lookup_duration
            .observe(asked.elapsed().as_secs_f64());
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                match &e {
                    StoreError::Query(_) => self.recorded.query_errors.inc(),
                    StoreError::Unavailable(_) | StoreError::Config(_) => {
                        self.recorded.unavailable.inc()
                    }
                };
                return Err(e);
            }
        };
        if let Some(cache) = &self.cache {
            cache.put(username, result.clone(), asked);
        }
        Ok(result)
    }

    async fn query_user(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let no_answer = || {
            StoreError::Unavailable(format!(
                "no answer within {} ms",
                self.config.lookup_timeout.as_millis()
            ))
        };
        #[cfg(feature = "sqlite")]
        if let Some(reader) = &self.reader {
            return tokio::time::timeout(self.config.lookup_timeout, reader.lookup(username))
                .await
                .map_err(|_| no_answer())?
                .map_err(|_| StoreError::Unavailable("lookup threads stopped".into()))?;
        }
        let mut query = sqlx::query(AssertSqlSafe(self.lookup_sql.clone()));
        for value in &self.lookup_binds {
            query = query.bind(value.as_str());
        }
        query = query.bind(username);
        let row =
            tokio::time::timeout(self.config.lookup_timeout, query.fetch_optional(&self.pool))
                .await
                .map_err(|_| no_answer())?
                .map_err(StoreError::from_sqlx)?;
        let Some(row) = row else { return Ok(None) };
        record_of(&row).map(Some)
    }

    /// Re-reads the rows of users by primary key, as a login reads them
    /// (hash, `is_active`, the permission and group gates), with one query
    /// per [`REVALIDATE_CHUNK`] ids: the revalidation of live sessions. A
    /// user missing from the answer was deleted.
    pub async fn revalidate(&self, ids: &[i64]) -> Result<Vec<UserRecord>, StoreError> {
        let mut records = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(REVALIDATE_CHUNK) {
            let mut b = SqlBuilder {
                backend: self.backend,
                binds: self.gate_binds.clone(),
            };
            let list: Vec<String> = chunk.iter().map(|_| b.bind("")).collect();
            let sql = format!(
                "{} WHERE u.{} IN ({})",
                self.select_sql,
                self.backend.quote("id"),
                list.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for value in &self.gate_binds {
                query = query.bind(value.as_str());
            }
            for id in chunk {
                query = query.bind(*id);
            }
            let rows =
                tokio::time::timeout(self.config.lookup_timeout * 2, query.fetch_all(&self.pool))
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable(format!(
                            "no answer within {} ms",
                            (self.config.lookup_timeout * 2).as_millis()
                        ))
                    })?
                    .map_err(StoreError::from_sqlx)?;
            for row in &rows {
                records.push(record_of(row)?);
            }
        }
        Ok(records)
    }

    /// Forgets cached lookups of this user (by id, or by the username
    /// typed at login), so that the next login reads the database.
    pub fn forget(&self, user_id: Option<i64>, username: Option<&str>) {
        if let Some(cache) = &self.cache {
            let mut entries = cache.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.retain(|typed, (_, record)| {
                let by_name = username.is_some_and(|u| u == typed)
                    || record
                        .as_ref()
                        .is_some_and(|r| username.is_some_and(|u| u == r.username));
                let by_id = record
                    .as_ref()
                    .is_some_and(|r| user_id.is_some_and(|id| id == r.id));
                !(by_name || by_id)
            });
        }
    }

    /// How many `pbkdf2_*` rows use each mechanism and iteration count
    /// (inactive rows too: an outsider sees their shape as well). One
    /// grouped query over the user table, bounded by `timeout`; the shares
    /// decoy challenges are drawn from ([`crate::decoy::DecoyMix`]).
    pub async fn census(
        &self,
        timeout: Duration,
    ) -> Result<BTreeMap<(Mechanism, u32), u64>, StoreError> {
        let password = self.backend.quote("password");
        // `<algorithm>$<iterations>`: everything before the second `$`.
        let prefix = match self.backend {
            Backend::MySql => format!("SUBSTRING_INDEX({password}, '$', 2)"),
            Backend::Postgres => {
                format!("split_part({password}, '$', 1) || '$' || split_part({password}, '$', 2)")
            }
            Backend::Sqlite => format!(
                "substr({password}, 1, instr({password}, '$') \
                   + instr(substr({password}, instr({password}, '$') + 1), '$') - 1)"
            ),
        };
        let sql = format!(
            "SELECT {prefix} AS shape, COUNT(*) FROM {table} \
             WHERE {password} LIKE 'pbkdf2%' OR {password} LIKE 'scram_sha256$%' \
             GROUP BY shape",
            table = self.backend.quote(&self.config.user_table),
        );
        let rows = tokio::time::timeout(
            timeout,
            sqlx::query(AssertSqlSafe(sql)).fetch_all(&self.pool),
        )
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!("no answer within {} ms", timeout.as_millis()))
        })?
        .map_err(StoreError::from_sqlx)?;
        let mut counts = BTreeMap::new();
        for row in rows {
            let shape: String = row
                .try_get(0)
                .map_err(|e| StoreError::Query(e.to_string()))?;
            let n: i64 = row
                .try_get(1)
                .map_err(|e| StoreError::Query(e.to_string()))?;
            let Some((algorithm, iterations)) = shape.split_once('$') else {
                continue;
            };
            let mechanism = match algorithm {
                // Both forms of a SHA-256 verifier: to an outsider they are
                // the same shape (docs/DJANGO.md section 4).
                "pbkdf2_sha256" | "scram_sha256" => Mechanism::ScramSha256,
                "pbkdf2_sha1" => Mechanism::ScramSha1,
                _ => continue,
            };
            let Ok(iterations) = iterations.parse::<u32>() else {
                continue;
            };
            if iterations == 0 {
                continue;
            }
            *counts.entry((mechanism, iterations)).or_default() += n.max(0) as u64;
        }
        Ok(counts)
    }

    /// Records a successful login as Django's `update_last_login` does
    /// (`last_login = now`, UTC, in the format Django's backend writes),
    /// written within [`last_login::FLUSH_INTERVAL`] by the store's
    /// background writer. Does nothing when
    /// [`StoreConfig::update_last_login`] is off. Call within a tokio
    /// runtime.
    pub fn record_login(&self, user_id: i64) {
        if self.config.update_last_login {
            self.last_login.queue(user_id);
        }
    }

    /// Writes the `last_login`s queued so far now.
    pub async fn flush_last_logins(&self) -> Result<(), StoreError> {
        self.last_login.flush().await
    }

    /// Writes the queued `last_login`s, stops the lookup threads and closes
    /// the pool's connections.
    pub async fn close(&self) {
        if let Err(e) = self.last_login.close().await {
            tracing::warn!(error = %e, "could not write the last logins before closing");
        }
        #[cfg(feature = "sqlite")]
        if let Some(reader) = &self.reader {
            reader.close();
        }
        self.pool.close().await;
    }
}

/// Ids per revalidation query: the default `--max-sessions` fits in one
/// (well within SQLite's 32,766 and PostgreSQL's and MySQL's 65,535 bind
/// parameters).
pub const REVALIDATE_CHUNK: usize = 10_000;

/// A row of the login's columns (through sqlx).
fn record_of(row: &sqlx::any::AnyRow) -> Result<UserRecord, StoreError> {
    let query = |e: sqlx::Error| StoreError::Query(e.to_string());
    let get_flag = |i: usize| -> Result<Option<bool>, StoreError> {
        let v: Option<i64> = row.try_get(i).map_err(query)?;
        Ok(v.map(|v| v != 0))
    };
    Ok(UserRecord {
        id: row.try_get(0).map_err(query)?,
        username: row.try_get(1).map_err(query)?,
        password: row.try_get(2).map_err(query)?,
        is_active: get_flag(3)?.unwrap_or(false),
        is_superuser: get_flag(4)?.unwrap_or(false),
        has_perm: get_flag(5)?,
        in_group: get_flag(6)?,
    })
}

/// A bounded map of recent lookups, each valid for at most `ttl`.
struct Cache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, (Instant, Option<UserRecord>)>>,
}

impl Cache {
    fn get(&self, username: &str) -> Option<Option<UserRecord>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(username) {
            Some((at, record)) if at.elapsed() < self.ttl => Some(record.clone()),
            Some(_) => {
                entries.remove(username);
                None
            }
            None => None,
        }
    }

    fn put(&self, username: &str, record: Option<UserRecord>, asked: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(username.to_string(), (asked, record));
    }
}

/// Formats a time as Django writes `DateTimeField`s with `USE_TZ = True`:
/// UTC, `YYYY-MM-DD HH:MM:SS.ffffff` (plus `+00:00` for PostgreSQL's
/// `timestamptz`).
pub fn django_timestamp(t: SystemTime, backend: Backend) -> String {
    let base = crate::timefmt::django(t);
    match backend {
        Backend::Postgres => format!("{base}+00:00"),
        _ => base,
    }
}

/// A shared store.
pub type SharedStore = Arc<Store>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_djangos_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_972_114_123_456);
        assert_eq!(
            django_timestamp(t, Backend::Sqlite),
            "2026-11-29 17:08:34.123456"
        );
        assert_eq!(
            django_timestamp(t, Backend::Postgres),
            "2026-11-29 17:08:34.123456+00:00"
        );
    }

    #[test]
    fn urls_are_normalised_and_redacted() {
        assert_eq!(normalize_url("pgsql://a@b/c"), "postgres://a@b/c");
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://db.sqlite3"), "sqlite://db.sqlite3");
        assert!(Backend::from_url("oracle://x").is_err());
        #[cfg(feature = "mysql")]
        assert_eq!(Backend::from_url("mariadb://x").unwrap(), Backend::MySql);
        #[cfg(not(feature = "mysql"))]
        assert!(
            Backend::from_url("mariadb://x")
                .unwrap_err()
                .to_string()
                .contains("feature `mysql`")
        );
    }

    /// A URL of a database whose cargo feature is off is refused, by
    /// `Backend::from_url` and `Store::open`, with the feature's name; one
    /// whose feature is on is accepted. CI runs this with every database
    /// feature on (the default) and with none.
    #[test]
    fn a_database_left_out_of_the_build_is_refused_with_its_feature() {
        assert_eq!(Backend::Sqlite.is_compiled(), cfg!(feature = "sqlite"));
        assert_eq!(Backend::Postgres.is_compiled(), cfg!(feature = "postgres"));
        assert_eq!(Backend::MySql.is_compiled(), cfg!(feature = "mysql"));
        for (url, backend, scheme) in [
            ("sqlite://db.sqlite3", Backend::Sqlite, "sqlite"),
            ("sqlite:///srv/site/db.sqlite3", Backend::Sqlite, "sqlite"),
            ("postgres://u@h/db", Backend::Postgres, "postgres"),
            ("postgresql://u@h/db", Backend::Postgres, "postgresql"),
            ("mysql://u@h/db", Backend::MySql, "mysql"),
            ("mariadb://u@h/db", Backend::MySql, "mariadb"),
        ] {
            if backend.is_compiled() {
                assert_eq!(Backend::from_url(url).unwrap(), backend, "{url}");
                continue;
            }
            let expected = format!(
                "configuration: this build has no {scheme} support: enable tether-server's \
                 cargo feature `{}`",
                backend.feature()
            );
            let err = Backend::from_url(url).unwrap_err();
            assert_eq!(err.to_string(), expected, "{url}");
            let err = Store::open(StoreConfig::new(url)).unwrap_err();
            assert!(matches!(err, StoreError::Config(_)), "{url}: {err:?}");
            assert_eq!(err.to_string(), expected, "{url}");
            assert_eq!(missing_sqlite_file(url), None);
        }
    }

    #[test]
    #[cfg(feature = "sqlite")]
    fn a_missing_sqlite_file_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("db.sqlite3");
        std::fs::write(&there, b"").unwrap();
        assert_eq!(
            missing_sqlite_file(&format!("sqlite://{}", there.display())),
            None
        );
        let missing = dir.path().join("nope.sqlite3");
        let warning = missing_sqlite_file(&format!("sqlite://{}", missing.display())).unwrap();
        assert!(
            warning.contains(&missing.display().to_string()),
            "{warning}"
        );
        assert!(warning.contains("sqlite:///srv/site/db.sqlite3 (three slashes)"));
        assert!(
            missing_sqlite_file("sqlite://relative-nope.sqlite3")
                .unwrap()
                .contains("relative to the working directory")
        );
        assert_eq!(missing_sqlite_file("postgres://x/y"), None);
        assert_eq!(missing_sqlite_file("sqlite::memory:"), None);
    }

    #[test]
    fn defaults_follow_djangos_naming() {
        let mut c = StoreConfig::new("sqlite://x");
        assert_eq!(c.fk_column(), "user_id");
        assert_eq!(c.groups_table(), "auth_user_groups");
        assert_eq!(c.permissions_table(), "auth_user_user_permissions");
        c.user_table = "accounts_emailuser".into();
        assert_eq!(c.fk_column(), "emailuser_id");
        assert_eq!(c.groups_table(), "accounts_emailuser_groups");
        assert!(check_identifier("auth_user").is_ok());
        assert!(check_identifier("x\"; DROP").is_err());
        assert!("devices.connect".parse::<Permission>().is_ok());
        assert!("devices".parse::<Permission>().is_err());
    }

    #[test]
    fn authorisation_follows_model_backend() {
        let mut r = UserRecord {
            id: 1,
            username: "a".into(),
            password: String::new(),
            is_active: true,
            is_superuser: false,
            has_perm: Some(false),
            in_group: None,
        };
        assert!(!r.is_authorised());
        r.is_superuser = true;
        assert!(r.is_authorised());
        r.is_active = false;
        assert!(!r.is_authorised());
        r.is_active = true;
        r.in_group = Some(false);
        assert!(!r.is_authorised());
    }
}
