//! The SQLite schema and its migrations, keyed by `PRAGMA user_version`.

use super::sql_error;
use crate::{StoreError, StoreResult};
use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    uid TEXT UNIQUE,
    name TEXT NOT NULL,
    throttle_rate INTEGER,
    metadata TEXT NOT NULL,
    retry_policy TEXT,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE event_types (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    archived INTEGER NOT NULL,
    deprecated INTEGER NOT NULL,
    schemas TEXT,
    group_name TEXT,
    feature_flags TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE endpoints (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    uid TEXT,
    url TEXT NOT NULL,
    description TEXT NOT NULL,
    disabled INTEGER NOT NULL,
    event_types TEXT,
    channels TEXT,
    throttle_rate INTEGER,
    metadata TEXT NOT NULL,
    headers TEXT NOT NULL,
    secrets TEXT NOT NULL,
    signature_scheme TEXT NOT NULL,
    retry_policy TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (app_id, uid)
);
CREATE INDEX endpoints_by_app ON endpoints (app_id, id);
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    event_id TEXT,
    event_type TEXT NOT NULL,
    payload BLOB NOT NULL,
    channels TEXT,
    tags TEXT,
    callback_url TEXT,
    deliver_at INTEGER,
    source_id TEXT,
    headers TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX messages_by_app ON messages (app_id, id);
CREATE INDEX messages_by_source ON messages (source_id, id) WHERE source_id IS NOT NULL;
CREATE UNIQUE INDEX messages_by_event_id ON messages (app_id, event_id) WHERE event_id IS NOT NULL;
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    msg_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    endpoint_id TEXT,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    next_at INTEGER,
    first_attempt_at INTEGER,
    trigger INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX deliveries_by_msg ON deliveries (msg_id);
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, msg_id);
CREATE INDEX deliveries_open ON deliveries (state) WHERE state IN (1, 3);
CREATE TABLE attempts (
    id TEXT PRIMARY KEY,
    msg_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    endpoint_id TEXT,
    url TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    error_class TEXT,
    state INTEGER NOT NULL,
    trigger INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX attempts_by_msg ON attempts (msg_id, id);
CREATE INDEX attempts_by_endpoint ON attempts (endpoint_id, id);
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE sources (
    id TEXT PRIMARY KEY,
    uid TEXT UNIQUE,
    name TEXT NOT NULL,
    app_id TEXT NOT NULL,
    preset TEXT NOT NULL,
    secrets TEXT NOT NULL,
    event_types TEXT,
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE inbound_keys (
    source_id TEXT NOT NULL,
    event_key TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (source_id, event_key)
) WITHOUT ROWID;
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    app_id TEXT,
    created_at INTEGER NOT NULL
);
"#,
    r#"
-- Deliveries and attempts keyed by (msg_id, id): the key serves the by-message lookups the
-- separate msg_id indexes served, and each commit writes two B-trees fewer.
CREATE TABLE deliveries_v2 (
    id TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    endpoint_id TEXT,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    next_at INTEGER,
    first_attempt_at INTEGER,
    trigger INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (msg_id, id)
) WITHOUT ROWID;
INSERT INTO deliveries_v2 SELECT id, msg_id, app_id, endpoint_id, state, attempts, next_at, first_attempt_at,
    trigger, updated_at FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v2 RENAME TO deliveries;
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, msg_id);
CREATE INDEX deliveries_open ON deliveries (state) WHERE state IN (1, 3);
CREATE TABLE attempts_v2 (
    id TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    endpoint_id TEXT,
    url TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    error_class TEXT,
    state INTEGER NOT NULL,
    trigger INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (msg_id, id)
) WITHOUT ROWID;
INSERT INTO attempts_v2 SELECT id, msg_id, app_id, delivery_id, endpoint_id, url, status_code, response,
    duration_ms, error_class, state, trigger, created_at FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_v2 RENAME TO attempts;
CREATE INDEX attempts_by_endpoint ON attempts (endpoint_id, id);
"#,
    r#"
-- Claims and leases: due work is claimed in windows by a node token instead of loaded
-- whole at start, so memory follows the work in flight, not the backlog.
ALTER TABLE deliveries ADD COLUMN claimed_by INTEGER;
DROP INDEX deliveries_open;
CREATE INDEX deliveries_due ON deliveries (next_at, claimed_by) WHERE state IN (1, 3);
CREATE TABLE nodes (
    token INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    lease_until INTEGER NOT NULL,
    started_at INTEGER NOT NULL
);
CREATE TABLE leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token INTEGER NOT NULL,
    lease_until INTEGER NOT NULL
);
-- Retention: a message's own end of retention (Svix's payloadRetentionPeriod).
ALTER TABLE messages ADD COLUMN retain_until INTEGER;
CREATE INDEX messages_retained ON messages (retain_until) WHERE retain_until IS NOT NULL;
"#,
    r#"
-- Idempotency keys remember what request they answered; keys stored before this version
-- were scoped differently and are never looked up again (they expire with their TTL).
ALTER TABLE idempotency ADD COLUMN fingerprint BLOB NOT NULL DEFAULT x'';
"#,
    r#"
-- Endpoint health: the first failed attempt since the last success (automatic disabling).
ALTER TABLE endpoints ADD COLUMN fail_since INTEGER;
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
    width_ms INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    succeeded INTEGER NOT NULL, failed INTEGER NOT NULL,
    l0 INTEGER NOT NULL, l1 INTEGER NOT NULL, l2 INTEGER NOT NULL, l3 INTEGER NOT NULL,
    l4 INTEGER NOT NULL, l5 INTEGER NOT NULL, l6 INTEGER NOT NULL, l7 INTEGER NOT NULL,
    accepted INTEGER NOT NULL, refused INTEGER NOT NULL, duplicate INTEGER NOT NULL,
    PRIMARY KEY (scope, width_ms, bucket)
);
CREATE INDEX stats_by_app ON stats (app_id, bucket);
CREATE INDEX stats_by_age ON stats (width_ms, bucket);
"#,
    r#"
-- Ordering: a message's key, FIFO endpoints, and each ordered delivery's lane (endpoint,
-- key) and place in it. A lane has at most one open delivery (1, 3); the rest wait (6).
ALTER TABLE messages ADD COLUMN ordering_key TEXT;
ALTER TABLE endpoints ADD COLUMN fifo INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN order_key TEXT;
ALTER TABLE deliveries ADD COLUMN order_seq INTEGER;
CREATE TABLE order_seq (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO order_seq (id, value) VALUES (1, 0);
CREATE INDEX deliveries_lane_open ON deliveries (endpoint_id, order_key)
    WHERE order_key IS NOT NULL AND state IN (1, 3);
CREATE INDEX deliveries_waiting ON deliveries (endpoint_id, order_key, order_seq) WHERE state = 6;
"#,
    r#"
-- Reconciliation: a key for the provider's events API (sealed), and each run's result.
ALTER TABLE sources ADD COLUMN api_key TEXT;
CREATE TABLE reconcile_runs (
    source_id TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    run TEXT NOT NULL,
    PRIMARY KEY (source_id, started_at)
);
"#,
    r#"
-- The dashboard: sessions and single-use portal links, by the SHA-256 of their secret.
CREATE TABLE dashboard_sessions (
    id BLOB PRIMARY KEY,
    link INTEGER NOT NULL,
    token_id TEXT NOT NULL,
    app_id TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);
-- Failing endpoints across applications, longest failing first.
CREATE INDEX endpoints_failing ON endpoints (fail_since) WHERE fail_since IS NOT NULL;
"#,
    r#"
-- Fan-outs kept as one row until their deliveries are attempted (see sqlite/fanout.rs):
-- the deliveries' common columns, and a `<id>\t<endpoint id>\n` line per delivery.
CREATE TABLE fanouts (
    msg_id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    next_at INTEGER,
    first_attempt_at INTEGER,
    trigger INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    claimed_by INTEGER,
    entries TEXT NOT NULL
) WITHOUT ROWID;
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
    APP_DELETIONS,
    // An application's secrets that still sign callback deliveries beside its current one
    // after a rotation, each until its expiry (a JSON list of `StoredSecret`, sealed texts).
    "ALTER TABLE apps ADD COLUMN previous_secrets TEXT NOT NULL DEFAULT '[]';",
];

/// Applications deleted whose messages and statistics a walk is still deleting: written in
/// the commit that deletes the application, gone once the walk ends; `steps` counts the
/// walk's steps, so that the retention pass tells a walk under way from one a crash or an
/// outage cut short (which it takes up).
const APP_DELETIONS: &str = r#"
CREATE TABLE app_deletions (
    app_id TEXT PRIMARY KEY,
    steps INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"#;

pub fn migrate(conn: &Connection) -> StoreResult<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql_error)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Corrupt(format!(
            "database schema version {version} is newer than this hookline ({known}); upgrade hookline"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let next = index as i64 + 1;
        conn.execute_batch(&format!("BEGIN; {sql}; PRAGMA user_version = {next}; COMMIT;")).map_err(sql_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written by the first schema keeps its deliveries and attempts, and finds
    /// them by message and by id, after the later migrations.
    #[test]
    fn version_1_data_survives_the_migrations() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!("{} PRAGMA user_version = 1;", MIGRATIONS[0])).unwrap();
        conn.execute_batch(
            "INSERT INTO endpoints VALUES ('ep_1', 'app_1', NULL, 'https://x.test/', '', 0, NULL, NULL, NULL,
                 '{}', '{}', '[]', '\"standard_webhooks\"', NULL, 100, 100);
             INSERT INTO deliveries VALUES ('dlv_1', 'msg_1', 'app_1', 'ep_1', 3, 1, 500, 100, 0, 100);
             INSERT INTO deliveries VALUES ('dlv_2', 'msg_1', 'app_1', 'ep_gone', 1, 0, 500, NULL, 0, 100);
             INSERT INTO attempts VALUES ('atm_1', 'msg_1', 'app_1', 'dlv_1', 'ep_1', 'https://x.test/', 500,
                 'oops', 12, 'http_status', 3, 0, 100);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let delivery: (String, i64, i64) = conn
            .query_row(
                "SELECT endpoint_id, state, next_at FROM deliveries WHERE msg_id = 'msg_1' AND id = 'dlv_1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(delivery, ("ep_1".into(), 3, 500));
        let attempt: (String, i64, String) = conn
            .query_row(
                "SELECT delivery_id, status_code, response FROM attempts WHERE msg_id = 'msg_1' AND id = 'atm_1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(attempt, ("dlv_1".into(), 500, "oops".into()));
        let open: i64 = conn
            .query_row("SELECT count(*) FROM deliveries WHERE state IN (1, 3) AND claimed_by IS NULL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(open, 1, "open deliveries of an earlier version are unclaimed: any node takes them");
        let gone: i64 = conn.query_row("SELECT state FROM deliveries WHERE id = 'dlv_2'", [], |r| r.get(0)).unwrap();
        assert_eq!(gone, 4, "an open delivery to an endpoint deleted before is canceled");
        let plan: String = conn
            .query_row("EXPLAIN QUERY PLAN SELECT * FROM attempts WHERE msg_id = 'msg_1' ORDER BY id", [], |r| r.get(3))
            .unwrap();
        assert!(plan.contains("PRIMARY KEY"), "by-message reads use the key: {plan}");
        migrate(&conn).unwrap();
    }
}
