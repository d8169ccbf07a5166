//! Scratch databases for tests: every test run (and every test in it that wants one) gets
//! a database of its own on the PostgreSQL server named by `HOOKLINE_TEST_PG_URL`
//! (default: the local server, user `postgres`). Databases of test processes that are
//! gone are dropped when the next one is made.

use super::pg_error;
use crate::StoreResult;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio_postgres::NoTls;

const PREFIX: &str = "hookline_test_";

/// The server tests use, as an URL to its maintenance database.
pub fn server_url() -> String {
    std::env::var("HOOKLINE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database on the tests' server and returns its URL.
pub async fn fresh_database() -> StoreResult<String> {
    fresh_database_on(&server_url()).await
}

/// Creates an empty database on the server of `server` (an URL to any database there).
pub async fn fresh_database_on(server: &str) -> StoreResult<String> {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let (client, connection) =
        server.parse::<tokio_postgres::Config>().map_err(pg_error)?.connect(NoTls).await.map_err(pg_error)?;
    tokio::spawn(connection);
    drop_orphans(&client).await?;
    let name =
        format!("{PREFIX}{}_{}_{}", std::process::id(), COUNT.fetch_add(1, Ordering::SeqCst), rand::random::<u32>());
    // Ordered as most servers order text (an ICU English collation, the default of many
    // hosted and packaged servers), not byte by byte: Hookline's ids sort by time only in
    // byte order, which its schema asks for, and the tests must see it does.
    let icu = format!("CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'");
    if client.batch_execute(&icu).await.is_err() {
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.map_err(pg_error)?;
    }
    let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// Drops the scratch databases of test processes that no longer run.
async fn drop_orphans(client: &tokio_postgres::Client) -> StoreResult<()> {
    let rows = client
        .query("SELECT datname FROM pg_database WHERE datname LIKE 'hookline\\_test\\_%'", &[])
        .await
        .map_err(pg_error)?;
    for row in rows {
        let name: String = row.get(0);
        let pid = name.strip_prefix(PREFIX).and_then(|rest| rest.split('_').next()).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            // Another run may be dropping it at the same moment; that is fine.
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
    Ok(())
}
