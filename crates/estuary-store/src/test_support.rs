//! PostgreSQL databases for tests (feature `test-support`): each test gets a database of its
//! own on the PostgreSQL server the tests use, dropped when the test ends.
//!
//! The server is the one in `ESTUARY_TEST_POSTGRES` (an admin URL whose role may create
//! databases), by default `postgres://estuary_test:estuary_test@127.0.0.1:5432/postgres`, the
//! role `.ci/run` creates. When that cannot be reached and this runs as root on a Debian
//! machine with the `postgresql` package, the local cluster is started and the role created,
//! as `.ci/run` does. A test that needs PostgreSQL fails (never skips) when there is none.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::{DatabaseUrl, StoreError};

/// The admin URL used when `ESTUARY_TEST_POSTGRES` is not set.
pub const DEFAULT_ADMIN_URL: &str =
    "postgres://estuary_test:estuary_test@127.0.0.1:5432/postgres?sslmode=disable";

/// A database that exists until this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates an empty database with a name unique to this process and test.
    pub async fn create(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let admin_url =
            std::env::var("ESTUARY_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
        let tag: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let name = format!(
            "estuary_t{}_{}_{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let client = match admin_client(&admin_url).await {
            Ok(client) => client,
            Err(first) => {
                start_local_postgres();
                admin_client(&admin_url).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL for tests is not reachable at {} ({first}; after trying to start \
                         the local cluster: {e}). Run .ci/run once (it installs and starts PostgreSQL \
                         and creates the role), or set ESTUARY_TEST_POSTGRES to an admin URL whose \
                         role may create databases.",
                        redacted(&admin_url)
                    )
                })
            }
        };
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let url = replace_database(&admin_url, &name);
        TestDatabase {
            admin_url,
            name,
            url,
        }
    }

    /// The database's URL (with the admin role's credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs SQL as the admin role, on the admin database (to take this database away from its
    /// users and give it back, say).
    pub async fn admin_execute(&self, sql: &str) {
        let client = admin_client(&self.admin_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client
            .batch_execute(&sql.replace("$DATABASE", &self.name))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The database's URL, parsed.
    pub fn database_url(&self) -> DatabaseUrl {
        self.url.parse().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime: a thread of its own with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(client) = admin_client(&admin_url).await {
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn admin_client(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    let DatabaseUrl::Postgres(parsed) = url.parse::<DatabaseUrl>()? else {
        return Err(StoreError::BadUrl(
            "ESTUARY_TEST_POSTGRES must be a postgres:// URL".into(),
        ));
    };
    let (client, connection) = parsed.config.connect(parsed.tls_connector()?).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// As `.ci/run`: start Debian's cluster and create the test role (root only).
fn start_local_postgres() {
    let Ok(versions) = std::fs::read_dir("/etc/postgresql") else {
        return;
    };
    for version in versions.flatten() {
        let version = version.file_name().to_string_lossy().into_owned();
        let _ = std::process::Command::new("pg_ctlcluster")
            .args([version.as_str(), "main", "start"])
            .status();
    }
    let _ = std::process::Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            "psql",
            "-q",
            "-c",
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'estuary_test') THEN \
             CREATE ROLE estuary_test LOGIN CREATEDB PASSWORD 'estuary_test'; END IF; END $$",
        ])
        .status();
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let base = match base.rfind('/') {
        Some(slash) if slash > base.find("://").map_or(0, |i| i + 2) => &base[..slash],
        _ => base,
    };
    if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    }
}

fn redacted(url: &str) -> String {
    url.parse::<DatabaseUrl>()
        .map(|u| u.redacted())
        .unwrap_or_else(|_| "(unparsable URL)".into())
}
