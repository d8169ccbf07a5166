//! The PostgreSQL schema and its migrations. Several nodes may start at once: each
//! migrates under a session advisory lock, so exactly one applies each version and the
//! others find it done.

use super::pg_error;
use crate::{StoreError, StoreResult};

/// Any fixed number; all Hookline nodes take the same lock ("hookline" in ASCII).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_6c69_6e65;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    uid TEXT UNIQUE,
    name TEXT NOT NULL,
    throttle_rate BIGINT,
    metadata TEXT NOT NULL,
    retry_policy TEXT,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE event_types (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    archived BOOLEAN NOT NULL,
    deprecated BOOLEAN NOT NULL,
    schemas TEXT,
    group_name TEXT,
    feature_flags TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE endpoints (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    uid TEXT,
    url TEXT NOT NULL,
    description TEXT NOT NULL,
    disabled BOOLEAN NOT NULL,
    event_types TEXT,
    channels TEXT,
    throttle_rate BIGINT,
    metadata TEXT NOT NULL,
    headers TEXT NOT NULL,
    secrets TEXT NOT NULL,
    signature_scheme TEXT NOT NULL,
    retry_policy TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (app_id, uid)
);
CREATE INDEX endpoints_by_app ON endpoints (app_id, id);
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    event_id TEXT,
    event_type TEXT NOT NULL,
    payload BYTEA NOT NULL,
    channels TEXT,
    tags TEXT,
    callback_url TEXT,
    deliver_at BIGINT,
    source_id TEXT,
    headers TEXT,
    retain_until BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX messages_by_app ON messages (app_id, id);
CREATE INDEX messages_by_source ON messages (source_id, id) WHERE source_id IS NOT NULL;
CREATE UNIQUE INDEX messages_by_event_id ON messages (app_id, event_id) WHERE event_id IS NOT NULL;
CREATE INDEX messages_retained ON messages (retain_until) WHERE retain_until IS NOT NULL;
-- Claims change claimed_by only, which no index covers: those updates stay HOT (room on
-- the page from the fill factor), so a claim rewrites no index entry.
CREATE TABLE deliveries (
    id TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    endpoint_id TEXT,
    state BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_at BIGINT,
    first_attempt_at BIGINT,
    trigger BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    claimed_by BIGINT,
    PRIMARY KEY (msg_id, id)
) WITH (fillfactor = 80);
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, msg_id);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state IN (1, 3);
CREATE TABLE attempts (
    id TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    endpoint_id TEXT,
    url TEXT NOT NULL,
    status_code BIGINT NOT NULL,
    response TEXT NOT NULL,
    duration_ms BIGINT NOT NULL,
    error_class TEXT,
    state BIGINT NOT NULL,
    trigger BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (msg_id, id)
);
CREATE INDEX attempts_by_endpoint ON attempts (endpoint_id, id);
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    status BIGINT NOT NULL,
    body BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE sources (
    id TEXT PRIMARY KEY,
    uid TEXT UNIQUE,
    name TEXT NOT NULL,
    app_id TEXT NOT NULL,
    preset TEXT NOT NULL,
    secrets TEXT NOT NULL,
    event_types TEXT,
    config TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE inbound_keys (
    source_id TEXT NOT NULL,
    event_key TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (source_id, event_key)
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    hash BYTEA NOT NULL UNIQUE,
    app_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE nodes (
    token BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    lease_until BIGINT NOT NULL,
    started_at BIGINT NOT NULL
);
CREATE TABLE leader (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    token BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);
"#,
    r#"
-- Idempotency keys remember what request they answered; keys stored before this version
-- were scoped differently and are never looked up again (they expire with their TTL).
ALTER TABLE idempotency ADD COLUMN fingerprint BYTEA NOT NULL DEFAULT '\x'::bytea;
"#,
    r#"
-- Endpoint health: the first failed attempt since the last success (automatic disabling).
ALTER TABLE endpoints ADD COLUMN fail_since BIGINT;
"#,
    r#"
-- Where alert emails about an application's endpoints go.
ALTER TABLE apps ADD COLUMN alert_email TEXT;
"#,
    r#"
-- Statistics: counters per endpoint or inbound source per minute (hours after a day).
CREATE TABLE stats (
    scope TEXT NOT NULL,
    app_id TEXT NOT NULL,
    width_ms BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    succeeded BIGINT NOT NULL, failed BIGINT NOT NULL,
    l0 BIGINT NOT NULL, l1 BIGINT NOT NULL, l2 BIGINT NOT NULL, l3 BIGINT NOT NULL,
    l4 BIGINT NOT NULL, l5 BIGINT NOT NULL, l6 BIGINT NOT NULL, l7 BIGINT NOT NULL,
    accepted BIGINT NOT NULL, refused BIGINT NOT NULL, duplicate BIGINT NOT NULL,
    PRIMARY KEY (scope, width_ms, bucket)
);
CREATE INDEX stats_by_app ON stats (app_id, bucket);
CREATE INDEX stats_by_age ON stats (width_ms, bucket);
"#,
    r#"
-- Ordering: a message's key, FIFO endpoints, and each ordered delivery's lane (endpoint,
-- key) and place in it. A lane has at most one open delivery (1, 3); the rest wait (6).
ALTER TABLE messages ADD COLUMN ordering_key TEXT;
ALTER TABLE endpoints ADD COLUMN fifo BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE deliveries ADD COLUMN order_key TEXT;
ALTER TABLE deliveries ADD COLUMN order_seq BIGINT;
CREATE SEQUENCE order_seq;
CREATE INDEX deliveries_lane_open ON deliveries (endpoint_id, order_key)
    WHERE order_key IS NOT NULL AND state IN (1, 3);
CREATE INDEX deliveries_waiting ON deliveries (endpoint_id, order_key, order_seq) WHERE state = 6;
"#,
    r#"
-- Reconciliation: a key for the provider's events API (sealed), and each run's result.
ALTER TABLE sources ADD COLUMN api_key TEXT;
CREATE TABLE reconcile_runs (
    source_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    run TEXT NOT NULL,
    PRIMARY KEY (source_id, started_at)
);
"#,
    r#"
-- The dashboard: sessions and single-use portal links, by the SHA-256 of their secret.
CREATE TABLE dashboard_sessions (
    id BYTEA PRIMARY KEY,
    link BOOLEAN NOT NULL,
    token_id TEXT NOT NULL,
    app_id TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);
-- Failing endpoints across applications, longest failing first.
CREATE INDEX endpoints_failing ON endpoints (fail_since) WHERE fail_since IS NOT NULL;
"#,
    r#"
-- Deferred deliveries (state 7): due, but waiting for their lane (an endpoint, or an
-- application's callback URLs) to have room, outside the due index every claim reads.
-- The callback lane's endpoint is '' in it, so that each lane's rows are in due order.
CREATE INDEX deliveries_deferred ON deliveries (app_id, coalesce(endpoint_id, ''), next_at) WHERE state = 7;
"#,
    crate::columns::CLOSE_ORPHANED_DELIVERIES,
    crate::columns::ALERT_EMAILS_TABLE,
    crate::columns::ALERT_DIGESTS_TABLE,
    BYTE_ORDER,
    APP_DELETIONS,
    // See SQLite's.
    r#"ALTER TABLE apps ADD COLUMN previous_secrets TEXT COLLATE "C" NOT NULL DEFAULT '[]';"#,
];

/// Applications whose messages and statistics are still being deleted (see SQLite's).
const APP_DELETIONS: &str = r#"
CREATE TABLE app_deletions (
    app_id TEXT COLLATE "C" PRIMARY KEY,
    steps BIGINT NOT NULL DEFAULT 0
);
"#;

/// Every text column compares byte by byte (`COLLATE "C"`), whatever the database's own
/// order: ids sort by creation time only so (SQLite compares bytes), and retention, the
/// statistics' id ranges, sweeps and every list go by `id <` and `ORDER BY id`. Under a
/// language's order (most servers' default, `en_US.UTF-8` or ICU English) `msg_2a…` sorts
/// before `msg_2Z…`: retention took recent messages for old ones and kept old ones, and
/// lists came out of time order. One `ALTER TABLE` per table, so its indexes are built
/// again once. A text column added later must say `COLLATE "C"` (a test checks them all).
const BYTE_ORDER: &str = r#"
DO $$
DECLARE t record;
BEGIN
    FOR t IN
        SELECT table_name, string_agg(format('ALTER COLUMN %I TYPE text COLLATE "C"', column_name), ', ') AS alters
        FROM information_schema.columns
        WHERE table_schema = current_schema() AND data_type = 'text' AND coalesce(collation_name, '') <> 'C'
        GROUP BY table_name
    LOOP
        EXECUTE format('ALTER TABLE %I %s', t.table_name, t.alters);
    END LOOP;
END $$;
"#;

/// Applies every migration the database lacks, one node at a time; returns the version
/// the schema is at.
pub async fn migrate(server: &super::Server) -> StoreResult<i64> {
    let (mut client, connection) = server.connect().await.map_err(pg_error)?;
    let connection = tokio::spawn(connection);
    let result = migrate_locked(&mut client).await;
    drop(client);
    let _ = connection.await;
    result
}

async fn migrate_locked(client: &mut tokio_postgres::Client) -> StoreResult<i64> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg_error)?;
    let result = apply(client).await;
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await.map_err(pg_error);
    let version = result?;
    unlocked.map(|_| version)
}

async fn apply(client: &mut tokio_postgres::Client) -> StoreResult<i64> {
    client
        // `IF NOT EXISTS` would otherwise log a notice at every start.
        .batch_execute("SET client_min_messages = warning; CREATE TABLE IF NOT EXISTS hookline_schema (version BIGINT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        .await
        .map_err(pg_error)?;
    let version: i64 =
        client.query_one("SELECT COALESCE(max(version), 0) FROM hookline_schema", &[]).await.map_err(pg_error)?.get(0);
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Corrupt(format!(
            "database schema version {version} is newer than this hookline ({known}); upgrade hookline"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let next = index as i64 + 1;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute("INSERT INTO hookline_schema (version) VALUES ($1)", &[&next]).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version = next, "migrated the PostgreSQL schema");
    }
    Ok(known)
}
