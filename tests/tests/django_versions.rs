//! Issue 5, item 2: users made by Django 4.2 LTS, 5.2 LTS and the newest
//! Django all log in (their default iteration counts differ), with
//! pbkdf2_sha256, pbkdf2_sha1 and django-tether's scram_sha256 rows, and after
//! Django's own `set_password` the old password fails at once and the new
//! one works, against the real tether-server and the firmware client.

mod firmware_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use firmware_support::*;
use tether_core::message::RefusalCode;
use tether_core::scram::{ClientCredentials, Mechanism, ScramError};
use tether_firmware::{BufferStore, Config, Error, host};

/// Each Django version's database and the venv that made it.
const VERSIONS: [(&str, &str); 3] = [
    ("django-4.2.sqlite3", ".venv-django-4.2"),
    ("default.sqlite3", ".venv-django-5.2"),
    ("django-latest.sqlite3", ".venv-django-latest"),
];

fn manifest_user(db: &str, username: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("users.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["databases"][db]["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == username)
        .cloned()
        .unwrap()
}

fn config() -> Config {
    Config::default().with_min_iterations(100_000)
}

async fn login(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
) -> Result<tether_core::scram::CachedKeys, Error<std::io::Error>> {
    let mut store: BufferStore = BufferStore::new();
    let mut login = host::connect(
        addr,
        store.buffers(),
        user,
        ClientCredentials::Password(password),
        &mut TestRng(7),
        &config(),
    )
    .await?;
    let keys = login.keys.clone();
    login.session.close().await.ok();
    Ok(keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_every_django_version_log_in_at_their_own_iterations() {
    let mut counts = Vec::new();
    for (db_name, _) in VERSIONS {
        let db = Db::copy(db_name);
        let server = start_server(&db, "127.0.0.1:0", Duration::from_secs(30)).await;
        // sam's row is django-tether's scram_sha256 (StoredKey/ServerKey only).
        for (user, mechanism) in [
            ("alice", Mechanism::ScramSha256),
            ("bob", Mechanism::ScramSha1),
            ("sam", Mechanism::ScramSha256),
        ] {
            let row = manifest_user(db_name, user);
            let keys = login(server.addr, user, row["password"].as_str().unwrap())
                .await
                .unwrap_or_else(|e| panic!("{db_name} {user}: {e:?}"));
            assert_eq!(keys.mechanism, mechanism, "{db_name} {user}");
            assert_eq!(
                u64::from(keys.iterations),
                row["iterations"].as_u64().unwrap(),
                "{db_name} {user}"
            );
            assert_eq!(
                keys.salt.as_slice(),
                row["salt"].as_str().unwrap().as_bytes()
            );
            // A wrong password is refused, whatever the version.
            let wrong = login(server.addr, user, "not-the-password")
                .await
                .unwrap_err();
            assert!(
                matches!(
                    wrong,
                    Error::Refused {
                        code: RefusalCode::Unauthorized,
                        ..
                    }
                ),
                "{db_name} {user}: {wrong:?}"
            );
        }
        counts.push((
            db_name,
            manifest_user(db_name, "alice")["iterations"]
                .as_u64()
                .unwrap(),
        ));
        server.handle.shutdown();
    }
    // Django raises its default every release: 4.2 < 5.2 < newest.
    assert!(
        counts[0].1 < counts[1].1 && counts[1].1 < counts[2].1,
        "{counts:?}"
    );
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Django's own `set_password` on alice in `db`, with the venv of the
/// version that made it.
fn django_set_password(venv: &str, db: &Path, new_password: &str) {
    let python = repo().join(venv).join("bin/python");
    let status = std::process::Command::new(&python)
        .current_dir(repo().join("scripts/django/project"))
        .env("DJANGO_SETTINGS_MODULE", "tether_project.settings")
        .env("TETHER_DATABASE_URL", format!("sqlite:///{}", db.display()))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NEW_PASSWORD", new_password)
        .args([
            "-c",
            "import os, django; django.setup()\n\
             from django.contrib.auth import get_user_model\n\
             u = get_user_model().objects.get(username='alice')\n\
             u.set_password(os.environ['NEW_PASSWORD']); u.save()",
        ])
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run scripts/django/make-fixtures)",
                python.display()
            )
        });
    assert!(status.success(), "set_password with {venv} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Django virtualenvs (scripts/django/make-fixtures)"]
async fn after_djangos_set_password_the_old_password_fails_at_once() {
    for (db_name, venv) in VERSIONS {
        let db = Db::copy(db_name);
        let server = start_server(&db, "127.0.0.1:0", Duration::from_secs(30)).await;
        let old = manifest_user(db_name, "alice")["password"]
            .as_str()
            .unwrap()
            .to_owned();
        let old_keys = login(server.addr, "alice", &old).await.unwrap();

        django_set_password(venv, &db.path, "a brand new password");

        // No restart, no cache: the very next login sees the new row.
        let refused = login(server.addr, "alice", &old).await.unwrap_err();
        assert!(
            matches!(
                refused,
                Error::Refused {
                    code: RefusalCode::Unauthorized,
                    ..
                }
            ),
            "{db_name}: {refused:?}"
        );
        // Keys cached from the old password no longer fit (new salt).
        let mut store: BufferStore = BufferStore::new();
        let stale = host::connect(
            server.addr,
            store.buffers(),
            "alice",
            ClientCredentials::Keys(&old_keys),
            &mut TestRng(8),
            &config(),
        )
        .await;
        assert!(
            matches!(stale, Err(Error::Login(ScramError::CachedKeysMismatch))),
            "{db_name}: old keys must not log in"
        );
        let new_keys = login(server.addr, "alice", "a brand new password")
            .await
            .unwrap();
        assert_ne!(
            new_keys.salt, old_keys.salt,
            "{db_name}: Django picks a new salt"
        );
        server.handle.shutdown();
    }
}
