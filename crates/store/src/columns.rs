//! What both backends share about rows: the column lists (in the order every mapper
//! reads them) and the JSON encoding of structured columns.

use serde::Serialize;

pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize")
}

pub fn opt_json<T: Serialize>(value: &Option<T>) -> Option<String> {
    value.as_ref().map(to_json)
}

/// An ordered delivery still open in its lane (pending, sending or waiting its turn).
pub const OPEN_ORDERED: &str = "(order_key IS NOT NULL AND state IN (1, 3, 6))";

/// A resend of an ordered delivery still open in its lane: it would be sent beside the
/// copy under way (and the lane's next after the first to finish), or out of its turn.
pub fn open_in_lane() -> crate::StoreError {
    crate::StoreError::Conflict(
        "the delivery is still open in its ordering lane and is sent in its turn; skip it to move the lane on".into(),
    )
}

pub const APP_COLUMNS: &str = "id, uid, name, throttle_rate, metadata, retry_policy, secret, created_at, updated_at, \
     alert_email, previous_secrets";

/// Takes an `Idempotency-Key` for a request: a row of status 0 (no answer yet), written
/// unless the key holds an answer kept since `since` or a reservation made since
/// `stale_before`. Parameters: key, fingerprint, now, since, stale_before, the reservation's
/// token (kept as its body). Returns the key when taken.
pub fn reserve_idempotency_sql(p: impl Fn(usize) -> String) -> String {
    format!(
        "INSERT INTO idempotency (key, status, body, created_at, fingerprint) VALUES ({}, 0, {}, {}, {}) \
         ON CONFLICT (key) DO UPDATE SET status = 0, body = excluded.body, created_at = excluded.created_at, \
         fingerprint = excluded.fingerprint \
         WHERE (idempotency.status <> 0 AND idempotency.created_at < {}) \
         OR (idempotency.status = 0 AND idempotency.created_at < {}) RETURNING key",
        p(1),
        p(6),
        p(3),
        p(2),
        p(4),
        p(5)
    )
}

/// What an `Idempotency-Key` row reads as (an `IdempotentResponse`).
const IDEMPOTENCY_COLUMNS: &str = "key, status, body, created_at, fingerprint";

/// What a key not taken holds; parameter: key.
pub fn held_idempotency_sql(p: impl Fn(usize) -> String) -> String {
    format!("SELECT {IDEMPOTENCY_COLUMNS} FROM idempotency WHERE key = {}", p(1))
}

/// The answer a key holds, kept since a time (a reservation is none); parameters: key, since.
pub fn idempotent_answer_sql(p: impl Fn(usize) -> String) -> String {
    format!(
        "SELECT {IDEMPOTENCY_COLUMNS} FROM idempotency WHERE key = {} AND created_at >= {} AND status <> 0",
        p(1),
        p(2)
    )
}

/// Gives a reservation up; parameters: key, its token.
pub fn release_idempotency_sql(p: impl Fn(usize) -> String) -> String {
    format!("DELETE FROM idempotency WHERE key = {} AND status = 0 AND body = {}", p(1), p(2))
}

/// Writes an application's secrets; parameters: id, secret, previous secrets, updated_at.
pub fn set_app_secrets_sql(p: impl Fn(usize) -> String) -> String {
    format!("UPDATE apps SET secret = {}, previous_secrets = {}, updated_at = {} WHERE id = {}", p(2), p(3), p(4), p(1))
}

pub const EVENT_TYPE_COLUMNS: &str =
    "name, description, archived, deprecated, schemas, group_name, feature_flags, created_at, updated_at";

pub const ENDPOINT_COLUMNS: &str =
    "id, app_id, uid, url, description, disabled, event_types, channels, throttle_rate, \
     metadata, headers, secrets, signature_scheme, retry_policy, created_at, updated_at, fail_since, fifo";

/// The positions in `ENDPOINT_COLUMNS` of an endpoint update's parameters, in order: its
/// key (`id`, `app_id`), then every column it writes; `created_at` and `fail_since` (the
/// store's own) it keeps. The read's `updated_at` and `disabled` follow them.
pub fn endpoint_update_params() -> Vec<usize> {
    let kept = ["created_at", "fail_since"];
    ENDPOINT_COLUMNS.split(',').map(str::trim).enumerate().filter(|(_, c)| !kept.contains(c)).map(|(i, _)| i).collect()
}

/// An endpoint's conditional update (see `Store::update_endpoint`) over the parameters of
/// `endpoint_update_params`, then the `updated_at` and `disabled` it was read with. `p`
/// writes a parameter (`$n` or `?n`).
pub fn update_endpoint_sql(p: fn(usize) -> String) -> String {
    let columns: Vec<&str> = ENDPOINT_COLUMNS.split(',').map(str::trim).collect();
    let params = endpoint_update_params();
    let param_of = |column: &str| p(1 + params.iter().position(|&i| columns[i] == column).expect("a written column"));
    let set: Vec<String> =
        params.iter().enumerate().skip(2).map(|(n, &i)| format!("{} = {}", columns[i], p(n + 1))).collect();
    let (read_at, was_disabled) = (p(params.len() + 1), p(params.len() + 2));
    format!(
        "UPDATE endpoints SET {}, fail_since = CASE WHEN disabled AND NOT {} THEN NULL ELSE fail_since END \
         WHERE id = {} AND app_id = {} AND updated_at = {read_at} AND disabled = {was_disabled} RETURNING fail_since",
        set.join(", "),
        param_of("disabled"),
        param_of("id"),
        param_of("app_id"),
    )
}

/// The next lane with deliveries waiting after the lane `(after_endpoint, after_key)`: one
/// seek along `deliveries_waiting`, however many deliveries wait in either lane.
macro_rules! next_waiting_lane {
    ($column:literal, $after_endpoint:expr, $after_key:expr) => {
        format!(
            concat!(
                "(SELECT d.",
                $column,
                " FROM deliveries d WHERE d.state = 6 AND d.endpoint_id IS NOT NULL AND d.order_key IS NOT NULL \
                 AND (d.endpoint_id, d.order_key) > ({}, {}) ORDER BY d.endpoint_id, d.order_key LIMIT 1)"
            ),
            $after_endpoint, $after_key
        )
    };
}

/// The next (at most `p(3)`) lanes with deliveries waiting after the lane `(p(1), p(2))`,
/// in `(endpoint_id, order_key)` order, found a lane a seek (a skip scan of
/// `deliveries_waiting`: a `DISTINCT` over the waiting deliveries read every one of them,
/// millions behind an endpoint down for hours); each with 1 when it is stalled, else 0:
/// none open (the others move when their open one closes), and its application not being
/// deleted (a claim closed the heads of those, and each sweep made the next one due for the
/// claim to close again).
pub fn waiting_lanes_sql(p: impl Fn(usize) -> String) -> String {
    format!(
        "WITH RECURSIVE walk(endpoint_id, order_key, n) AS ( \
             SELECT {}, {}, CAST(1 AS BIGINT) \
             UNION ALL \
             SELECT {}, {}, w.n + 1 FROM walk w WHERE w.endpoint_id IS NOT NULL AND w.n < {} \
         ) \
         SELECT w.endpoint_id, w.order_key, CASE WHEN NOT EXISTS (SELECT 1 FROM deliveries o \
                 WHERE o.endpoint_id = w.endpoint_id AND o.order_key = w.order_key AND o.state IN (1, 3)) \
             AND NOT EXISTS (SELECT 1 FROM app_deletions z WHERE z.app_id = (SELECT x.app_id FROM deliveries x \
                 WHERE x.state = 6 AND x.endpoint_id = w.endpoint_id AND x.order_key = w.order_key LIMIT 1)) \
             THEN 1 ELSE 0 END \
         FROM walk w WHERE w.endpoint_id IS NOT NULL",
        next_waiting_lane!("endpoint_id", p(1), p(2)),
        next_waiting_lane!("order_key", p(1), p(2)),
        next_waiting_lane!("endpoint_id", "w.endpoint_id", "w.order_key"),
        next_waiting_lane!("order_key", "w.endpoint_id", "w.order_key"),
        p(3)
    )
}

/// The alert emails' outbox (both backends).
pub const ALERT_EMAILS_TABLE: &str = "
-- Alert emails waiting to be sent (see Store::queue_alert_email): durable, so that a
-- restart loses none, and shared, so that one node sends each.
CREATE TABLE alert_emails (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    about TEXT,
    to_addr TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    tries INTEGER NOT NULL,
    not_before BIGINT NOT NULL
);
CREATE INDEX alert_emails_due ON alert_emails (not_before, id);
CREATE INDEX alert_emails_about ON alert_emails (about) WHERE about IS NOT NULL;
CREATE INDEX alert_emails_of_app ON alert_emails (app_id, id);
";

/// The tables of an application's configuration (a few rows each, by `app_id`), emptied in
/// the commit that deletes it. Its messages, with their deliveries and attempts, and its
/// statistics grow with traffic: a walk deletes them afterwards, a step at a time
/// (`Store::purge_deleted_app`).
pub const APP_CONFIG_TABLES: [&str; 5] = ["endpoints", "sources", "tokens", "alert_emails", "alert_digests"];

/// `DELETE FROM {table}` of the rows of a deleted application's next `p(2)` messages, in
/// message-id order (`table` keyed by `msg_id`; `messages` itself by `id`). Each statement
/// of a step finds the same messages: run the messages' own last.
pub fn delete_app_messages_sql(table: &str, p: fn(usize) -> String) -> String {
    let column = if table == "messages" { "id" } else { "msg_id" };
    format!(
        "DELETE FROM {table} WHERE {column} IN (SELECT id FROM messages WHERE app_id = {} ORDER BY id LIMIT {})",
        p(1),
        p(2)
    )
}

/// Whether the deleted application `p(1)` has messages or statistics left: its mark goes
/// only once it has none (two walks at once, one of them the retention pass's, may each
/// find the other's step empty).
pub fn app_rows_left_sql(p: fn(usize) -> String) -> String {
    let app = p(1);
    format!(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE app_id = {app}) OR EXISTS (SELECT 1 FROM stats WHERE app_id = {app})"
    )
}

/// A delivery's application is being deleted. A claim closes such due rows of its window
/// (canceled, out of the due index) instead of claiming them: claimed, each was closed one
/// at a time by the node; skipped, each claim read through all of them again.
pub const IN_DELETION: &str = "app_id IN (SELECT app_id FROM app_deletions)";

/// A delivery's application is not being deleted: a deferred lane's claim leaves its rows
/// to the walk.
pub const NOT_DELETED: &str = "app_id NOT IN (SELECT app_id FROM app_deletions)";

/// The deletions under way, with their steps so far.
pub const DELETED_APPS: &str = "SELECT app_id, steps FROM app_deletions ORDER BY app_id";

/// Counts a step of a deleted application `p(1)`'s walk on its mark.
pub fn app_deletion_step_sql(p: fn(usize) -> String) -> String {
    format!("UPDATE app_deletions SET steps = steps + 1 WHERE app_id = {}", p(1))
}

/// Deletes the next `p(2)` statistics rows of a deleted application `p(1)`.
pub fn delete_app_stats_sql(p: fn(usize) -> String) -> String {
    format!(
        "DELETE FROM stats WHERE (scope, width_ms, bucket) IN \
         (SELECT scope, width_ms, bucket FROM stats WHERE app_id = {} LIMIT {})",
        p(1),
        p(2)
    )
}

pub const ALERT_DIGESTS_TABLE: &str = "
-- Failures of an endpoint not yet told in a summary email (see Store::count_alert_failures):
-- one row per endpoint, shared, so that every node's counts add up to one summary a window.
CREATE TABLE alert_digests (
    endpoint_id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    to_addr TEXT NOT NULL,
    app TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    url TEXT NOT NULL,
    failing BIGINT NOT NULL,
    exhausted BIGINT NOT NULL,
    since BIGINT,
    sent_at BIGINT
);
";

pub const ALERT_DIGEST_COLUMNS: &str =
    "endpoint_id, app_id, to_addr, app, endpoint, url, failing, exhausted, since, sent_at";

/// Adds a node's counts to an endpoint's digest (`$1`–`$9`: its columns but `sent_at`).
pub const COUNT_ALERT_FAILURES: &str = "INSERT INTO alert_digests \
     (endpoint_id, app_id, to_addr, app, endpoint, url, failing, exhausted, since) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (endpoint_id) DO UPDATE SET app_id = excluded.app_id, to_addr = excluded.to_addr, \
     app = excluded.app, endpoint = excluded.endpoint, url = excluded.url, \
     failing = alert_digests.failing + excluded.failing, \
     exhausted = alert_digests.exhausted + excluded.exhausted, \
     since = CASE WHEN alert_digests.since IS NULL OR excluded.since < alert_digests.since \
     THEN excluded.since ELSE alert_digests.since END";

/// A digest told (`$1` now, `$2` the endpoint): it starts over.
pub const RESET_ALERT_DIGEST: &str =
    "UPDATE alert_digests SET failing = 0, exhausted = 0, since = NULL, sent_at = $1 WHERE endpoint_id = $2";

/// An alert digest's application still exists (counts a node flushed after the application
/// was deleted made its digest again).
const DIGEST_APP_EXISTS: &str = "EXISTS (SELECT 1 FROM apps WHERE apps.id = alert_digests.app_id)";

/// Forgets digests with nothing to tell whose last summary is a window old (`$1` now, `$2`
/// the window), and those of deleted applications; `lock` as in [`due_digests_sql`] (on
/// PostgreSQL, rows a node's counts hold are skipped: waiting for them while holding due
/// rows those counts wait for deadlocks).
pub fn forget_quiet_digests_sql(lock: &str) -> String {
    format!(
        "DELETE FROM alert_digests WHERE endpoint_id IN \
         (SELECT endpoint_id FROM alert_digests \
         WHERE (since IS NULL AND $1 >= sent_at + $2) OR NOT {DIGEST_APP_EXISTS} {lock})"
    )
}

/// When a digest with failures to tell is due: `greatest` is the backend's two-argument
/// maximum (`max` in SQLite, `GREATEST` in PostgreSQL), `gather` and `window` the
/// parameters of the gathering pause and the window.
fn digest_due(greatest: &str, gather: &str, window: &str) -> String {
    format!("{greatest}(since + {gather}, coalesce(sent_at + {window}, 0))")
}

/// The digests due (`$1` now, `$2` the gathering pause, `$3` the window, `$4` how many:
/// SQLite numbers them in the order they first appear), earliest failure first, of
/// applications that exist; `lock` is what the backend adds to keep other takers off (of
/// `alert_digests` rows only).
pub fn due_digests_sql(greatest: &str, lock: &str) -> String {
    let due = digest_due(greatest, "$2", "$3");
    format!(
        "SELECT {ALERT_DIGEST_COLUMNS} FROM alert_digests \
         WHERE since IS NOT NULL AND $1 >= {due} AND {DIGEST_APP_EXISTS} \
         ORDER BY since, endpoint_id LIMIT $4 {lock}"
    )
}

/// When the next digest is due (`$1` the gathering pause, `$2` the window).
pub fn next_digest_sql(greatest: &str) -> String {
    let due = digest_due(greatest, "$1", "$2");
    format!("SELECT min({due}) FROM alert_digests WHERE since IS NOT NULL")
}

/// Drops the email waiting about the endpoint `$1` (an older state of it) that a new one
/// (`$2`) replaces. Not the new one itself: put again because the answer to its queueing
/// was lost, it was deleted and written anew with no tries, due at once while a node may
/// have been sending it.
pub const ALERT_EMAIL_REPLACED: &str = "DELETE FROM alert_emails WHERE about = $1 AND id <> $2";

/// Pushes an application's alert emails out past `$2` waiting: summaries before emails about
/// an endpoint's state (at most one an endpoint: `about` replaces), oldest first. During an
/// SMTP outage summaries pile up, one an endpoint a window, and pushed out the email saying
/// an endpoint was disabled.
pub const ALERT_EMAILS_OF_APP_OVER: &str = "DELETE FROM alert_emails WHERE app_id = $1 AND id NOT IN \
     (SELECT id FROM alert_emails WHERE app_id = $1 ORDER BY about IS NULL, id DESC LIMIT $2)";

/// Pushes alert emails out past `$1` waiting in all: the last of the applications with the
/// most waiting first (each application's ranked as [`ALERT_EMAILS_OF_APP_OVER`] ranks them:
/// its summaries last), so no tenant's burst pushes out another's few; among equals,
/// summaries before states, then the oldest.
pub const ALERT_EMAILS_OVER: &str = "DELETE FROM alert_emails WHERE id IN (SELECT id FROM \
     (SELECT id, row_number() OVER (ORDER BY depth, about IS NULL, id DESC) AS kept FROM \
         (SELECT id, about, row_number() OVER (PARTITION BY app_id ORDER BY about IS NULL, id DESC) AS depth \
          FROM alert_emails) ranked) ordered \
     WHERE kept > $1)";

pub const MESSAGE_COLUMNS: &str = "id, app_id, event_id, event_type, payload, channels, tags, callback_url, \
     deliver_at, source_id, headers, retain_until, created_at, ordering_key";

pub const SOURCE_COLUMNS: &str =
    "id, uid, name, app_id, preset, secrets, event_types, config, created_at, updated_at, api_key";

pub const DELIVERY_COLUMNS: &str =
    "id, msg_id, app_id, endpoint_id, state, attempts, next_at, first_attempt_at, trigger, updated_at, order_key";

/// A delivery open (due or being sent) under claim `$3` (`Store::still_claimed`).
pub const STILL_CLAIMED: &str =
    "SELECT 1 FROM deliveries WHERE msg_id = $1 AND id = $2 AND state IN (1, 3) AND claimed_by = $3";

/// How many columns `DELIVERY_COLUMNS` names (a statement may return more after them).
pub const DELIVERY_COLUMN_COUNT: usize = 11;

/// A deferred lane's endpoint as the `deliveries_deferred` index has it: '' for an
/// application's callback lane, so that each lane's rows are in due order after it.
pub const LANE_ENDPOINT: &str = "coalesce(endpoint_id, '')";

/// Open deliveries (pending, sending, deferred): two counts, each from its partial index
/// (`deliveries_due`, `deliveries_deferred`).
pub const COUNT_OPEN_DELIVERIES: &str = "SELECT (SELECT count(*) FROM deliveries WHERE state IN (1, 3)) \
     + (SELECT count(*) FROM deliveries WHERE state = 7)";

/// [`crate::Store::overdue_claims`]: `$1` due before, `$2` the window, `$3` the token.
/// SQLite numbers `$n` parameters in the order they first appear, so both backends bind
/// the same list. SQLite reads the window from `deliveries_due` alone (it holds
/// `claimed_by`); PostgreSQL's index has `next_at` only, so the window is bounded.
pub const OVERDUE_CLAIMS: &str = "SELECT msg_id, id FROM ( \
         SELECT msg_id, id, claimed_by, next_at FROM deliveries \
         WHERE state IN (1, 3) AND next_at < $1 ORDER BY next_at LIMIT $2) AS due \
     WHERE claimed_by = $3 ORDER BY next_at";

/// The stored states of an open delivery, for `state IN (…)`: pending, sending, waiting
/// behind its ordering key, deferred. A macro, so that constant statements can `concat!` it.
macro_rules! open_states {
    () => {
        "1, 3, 6, 7"
    };
}
pub(crate) use open_states;

/// Retention keeps a message while any of its deliveries is open, whatever its age: an
/// acknowledged event goes once it is delivered or visibly failed, never before. SQLite
/// adds its `fanouts` rows (a fan-out not yet attempted) to this.
pub const NO_OPEN_DELIVERY: &str = concat!(
    "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.msg_id = messages.id AND d.state IN (",
    open_states!(),
    "))"
);

/// `Store::close_stranded`'s two statements, over the delivery's `msg_id` and `id` (and
/// the time, for the second); `p` writes a parameter (`$n` or `?n`). Each answers the
/// closed delivery's lane (`endpoint_id`, `order_key`). The first deletes it if its message
/// or application is gone (on PostgreSQL a write that opens a delivery, a resend or a
/// publish, can commit beside a retention pass or a deletion that did not see it); the
/// second cancels it if its endpoint is gone (a publish racing the endpoint's deletion),
/// as the deletion cancels its open deliveries.
pub fn close_stranded_sql(p: fn(usize) -> String) -> [String; 2] {
    let (msg_id, id, now) = (p(1), p(2), p(3));
    [
        format!(
            "DELETE FROM deliveries WHERE msg_id = {msg_id} AND id = {id} \
             AND (NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = deliveries.msg_id) \
                  OR NOT EXISTS (SELECT 1 FROM apps a WHERE a.id = deliveries.app_id)) \
             RETURNING endpoint_id, order_key"
        ),
        format!(
            concat!(
                "UPDATE deliveries SET state = 4, next_at = NULL, claimed_by = NULL, updated_at = {now} \
                 WHERE msg_id = {msg_id} AND id = {id} AND state IN (",
                open_states!(),
                ") AND deliveries.endpoint_id IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.id = deliveries.endpoint_id) \
                 RETURNING endpoint_id, order_key"
            ),
            now = now,
            msg_id = msg_id,
            id = id
        ),
    ]
}

/// A recover step's span: the last message id among the endpoint's next deliveries in
/// message-id order, and how many there are (at most the chunk). Parameters: the endpoint,
/// the first id the recovery covers (inclusive), the cursor (exclusive), the first id it
/// does not (exclusive), the chunk. Message ids sort by creation time, so the recovery's
/// window bounds the walk.
pub fn recover_span_sql(p: fn(usize) -> String) -> String {
    format!(
        "SELECT max(msg_id), count(*) FROM (SELECT msg_id FROM deliveries WHERE endpoint_id = {} \
         AND msg_id >= {} AND msg_id > {} AND msg_id < {} ORDER BY msg_id LIMIT {}) s",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5)
    )
}

/// The message ids a recovery's walk spans: those made a minute either side of its window.
/// An id is made from the clock read when the message is, its `created_at` from a reading
/// of its own; the window itself is checked on `created_at`.
pub fn recover_id_bounds(r: &crate::Recovery) -> (String, String) {
    const SLACK_MS: i64 = 60_000;
    (
        crate::retention_cutoff_id(r.since.saturating_sub(SLACK_MS)),
        crate::retention_cutoff_id(r.until.saturating_add(SLACK_MS)),
    )
}

/// Closes (cancels) the deleted endpoint `p(1)`'s open deliveries of a span, after `p(2)` up
/// to `p(3)` (a span of [`recover_span_sql`] from `""` to [`PAST_EVERY_ID`]): a step of a
/// deletion, bounded whatever the endpoint's backlog.
pub fn close_span_sql(p: fn(usize) -> String) -> String {
    format!(
        concat!(
            "UPDATE deliveries SET state = 4, next_at = NULL, claimed_by = NULL \
             WHERE endpoint_id = {} AND msg_id > {} AND msg_id <= {} AND state IN (",
            open_states!(),
            ")"
        ),
        p(1),
        p(2),
        p(3)
    )
}

/// Sorts after every id (ids are ASCII letters, digits and `_`).
pub const PAST_EVERY_ID: &str = "~";

/// A recover step: the endpoint's exhausted or skipped deliveries of the span (from `p(9)`,
/// the recovery's first id, after the cursor `p(7)`, up to `p(8)`) whose messages are the
/// application's and created in the window, set as `restart` says (it uses `p(1)`, now,
/// and `p(2)`). Parameters: 3 the endpoint, 4 the application, 5 and 6 the window. Driven
/// by the endpoint's deliveries in the span, each message found by its key; with
/// `lock_messages` (PostgreSQL) the messages are share-locked until the commit.
pub fn recover_sql(p: fn(usize) -> String, restart: &str, lock_messages: bool) -> String {
    let (endpoint, app, since, until, after, last, first) = (p(3), p(4), p(5), p(6), p(7), p(8), p(9));
    let span = format!("msg_id >= {first} AND msg_id > {after} AND msg_id <= {last}");
    let message = format!("m.app_id = {app} AND m.created_at >= {since} AND m.created_at < {until}");
    let of_message = match lock_messages {
        true => format!(
            "msg_id IN (SELECT m.id FROM messages m WHERE m.id >= {first} AND m.id > {after} AND m.id <= {last} \
             AND {message} AND EXISTS (SELECT 1 FROM deliveries r WHERE r.msg_id = m.id \
             AND r.endpoint_id = {endpoint} AND r.state IN (2, 5)) FOR SHARE OF m)"
        ),
        false => format!("EXISTS (SELECT 1 FROM messages m WHERE m.id = deliveries.msg_id AND {message})"),
    };
    format!(
        "UPDATE deliveries SET {restart} WHERE endpoint_id = {endpoint} AND state IN (2, 5) AND {span} \
         AND {of_message} RETURNING {DELIVERY_COLUMNS}"
    )
}

/// A migration of both backends: deliveries left open to endpoints deleted before a
/// deletion closed ordered deliveries waiting behind the open one. Never sendable, they
/// would keep their messages from retention for ever.
pub const CLOSE_ORPHANED_DELIVERIES: &str = concat!(
    "UPDATE deliveries SET state = 4, next_at = NULL, claimed_by = NULL \
     WHERE endpoint_id IS NOT NULL AND state IN (",
    open_states!(),
    ") AND NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.id = deliveries.endpoint_id);"
);

pub const ATTEMPT_COLUMNS: &str = "id, msg_id, app_id, delivery_id, endpoint_id, url, status_code, response, \
     duration_ms, error_class, state, trigger, created_at";

pub const STAT_COLUMNS: &str = "scope, app_id, width_ms, bucket, succeeded, failed, l0, l1, l2, l3, l4, l5, l6, l7, \
     accepted, refused, duplicate";

/// The counters of a statistics row (the columns after its four key columns).
pub const STAT_COUNTERS: usize = 13;

/// `c = <table>.c + excluded.c` for every counter: an upsert that adds.
pub fn stat_counter_sums(table: &str) -> String {
    STAT_COLUMNS
        .split(',')
        .skip(4)
        .map(str::trim)
        .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table whose rows expire by `created_at`, keyed by `keys` (its primary key, text).
/// Retention walks it in key order, a chunk of keys a statement: one `DELETE … WHERE
/// created_at < ?` scanned the whole table (there is no index on the time, which would cost
/// every insert a B-tree more), holding SQLite's writer, and every publish behind it, for as
/// long as the table is large, and running past PostgreSQL's statement timeout.
pub struct Expiring {
    pub table: &'static str,
    pub keys: &'static [&'static str],
}

/// Provider event ids kept for the dedupe window.
pub const INBOUND_KEYS: Expiring = Expiring { table: "inbound_keys", keys: &["source_id", "event_key"] };

/// Answers kept for `Idempotency-Key` replays.
pub const IDEMPOTENCY: Expiring = Expiring { table: "idempotency", keys: &["key"] };

/// Walks an expiring table a chunk at a time: `chunk_after(cursor)` deletes what expired in
/// the chunk after `cursor` (from the start without one) and answers how many, and the
/// cursor of the next chunk (none at the end). How many went in all.
pub async fn walk_chunks<F, Fut>(mut chunk_after: F) -> crate::StoreResult<usize>
where
    F: FnMut(Option<Vec<String>>) -> Fut,
    Fut: std::future::Future<Output = crate::StoreResult<(usize, Option<Vec<String>>)>>,
{
    let (mut deleted, mut after) = (0, None);
    loop {
        let (n, next) = chunk_after(after.take()).await?;
        deleted += n;
        match next {
            Some(key) => after = Some(key),
            None => return Ok(deleted),
        }
    }
}

impl Expiring {
    fn key_tuple(&self) -> String {
        format!("({})", self.keys.join(", "))
    }

    /// `(p(first), …)`, one placeholder a key column.
    fn placeholders(&self, first: usize, p: fn(usize) -> String) -> String {
        let all: Vec<String> = (first..first + self.keys.len()).map(p).collect();
        format!("({})", all.join(", "))
    }

    /// The keys of the next chunk, in order: after the cursor (parameters `1..=n`, `n` key
    /// columns) unless `from_start`; the chunk's size is the last parameter.
    pub fn chunk_sql(&self, from_start: bool, p: fn(usize) -> String) -> String {
        let (keys, n) = (self.keys.join(", "), self.keys.len());
        let (after, limit) = match from_start {
            true => (String::new(), 1),
            false => (format!("WHERE {} > {}", self.key_tuple(), self.placeholders(1, p)), n + 1),
        };
        format!("SELECT {keys} FROM {} {after} ORDER BY {keys} LIMIT {}", self.table, p(limit))
    }

    /// Deletes the chunk's rows created before the last parameter: after the cursor
    /// (parameters `1..=n`) unless `from_start`, up to and with the chunk's last key (the
    /// next `n`).
    pub fn delete_sql(&self, from_start: bool, p: fn(usize) -> String) -> String {
        let (tuple, n) = (self.key_tuple(), self.keys.len());
        let (after, last_from) = match from_start {
            true => (String::new(), 1),
            false => (format!("{tuple} > {} AND ", self.placeholders(1, p)), n + 1),
        };
        let upto = self.placeholders(last_from, p);
        format!("DELETE FROM {} WHERE {after}{tuple} <= {upto} AND created_at < {}", self.table, p(last_from + n))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_delivery_column_count_is_the_columns_named() {
        assert_eq!(super::DELIVERY_COLUMNS.split(',').count(), super::DELIVERY_COLUMN_COUNT);
    }
}
