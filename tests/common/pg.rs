//! A fresh PostgreSQL database per test, dropped when the test ends — also when it
//! panics (the guard's `Drop` runs while unwinding).
//!
//! Databases are made through the `test` database of the PostgreSQL on 127.0.0.1:5432
//! (`SPOOL_TEST_POSTGRES` overrides the URL). Their names carry their creation time
//! (`spool_t_<unix seconds>_<random>`), so one left behind by a test process that was
//! itself killed is dropped by a later run once it is an hour old.
//!
//! PostgreSQL that cannot be reached fails the test with a message saying so: these
//! tests never skip silently.
#![allow(dead_code)] // not every test binary uses every helper

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

/// The database through which test databases are made and dropped.
pub fn admin_url() -> String {
    std::env::var("SPOOL_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

const PREFIX: &str = "spool_t_";
/// A leftover test database older than this is dropped by the next test that starts.
const STALE: Duration = Duration::from_secs(3600);

/// A database that exists until this guard is dropped.
pub struct TestDb {
    pub name: String,
    /// Its URL, for `DATABASE_URL`.
    pub url: String,
}

async fn admin() -> PgConnection {
    let url = admin_url();
    let options: PgConnectOptions = url.parse().unwrap_or_else(|e| {
        panic!("SPOOL_TEST_POSTGRES={url:?} is not a PostgreSQL URL: {e}");
    });
    match tokio::time::timeout(
        Duration::from_secs(10),
        options.disable_statement_logging().connect(),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "PostgreSQL is not reachable at {url}: {e}. These tests need it running \
             (CI has it; locally: pg_ctlcluster <version> main start)."
        ),
        Err(_) => panic!("PostgreSQL at {url} did not answer within 10 s"),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl TestDb {
    /// Creates an empty database with a fresh name.
    pub async fn create() -> TestDb {
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes).unwrap();
        let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("{PREFIX}{}_{random}", now_secs());
        let mut conn = admin().await;
        drop_stale(&mut conn).await;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
        let _ = conn.close().await;
        let admin = admin_url();
        let (server, _) = admin
            .rsplit_once('/')
            .filter(|(server, _)| server.contains("://"))
            .unwrap_or_else(|| panic!("{admin:?} names no database to replace"));
        let url = format!("{server}/{name}");
        TestDb { name, url }
    }

    /// A small pool on the test database, for the test's own queries.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(
                self.url
                    .parse::<PgConnectOptions>()
                    .unwrap()
                    .disable_statement_logging(),
            )
            .await
            .unwrap()
    }
}

/// Drops test databases left behind long ago (their process was killed before its
/// guards ran).
async fn drop_stale(conn: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(PREFIX)
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    let now = now_secs();
    for name in names {
        let made = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if made.is_some_and(|made| now.saturating_sub(made) > STALE.as_secs()) {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut *conn)
                .await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // `Drop` cannot await, and the test's runtime may be the one running it: drop
        // the database from a thread with a runtime of its own, and wait for it.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let url = admin_url();
                let mut conn = tokio::time::timeout(
                    Duration::from_secs(10),
                    url.parse::<PgConnectOptions>()
                        .map_err(|e| e.to_string())?
                        .disable_statement_logging()
                        .connect(),
                )
                .await
                .map_err(|_| "timed out connecting".to_owned())?
                .map_err(|e| e.to_string())?;
                // FORCE ends the connections a killed test's servers may have left.
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = conn.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            // No panic here: this may run while a failed test unwinds.
            Ok(Err(e)) => eprintln!("could not drop the test database {}: {e}", self.name),
            Err(_) => eprintln!("dropping the test database {} panicked", self.name),
        }
    }
}
