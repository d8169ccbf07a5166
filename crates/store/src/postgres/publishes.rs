//! Publishes on PostgreSQL, group-committed: the publishes waiting when a writer is free
//! are written by one statement (messages, deliveries, dedupe keys and idempotent answers,
//! each an `UNNEST` of one array per column, tied together by data-modifying CTEs), so one
//! round trip and one synced commit acknowledge them all. Two writers take turns, so one
//! batch fills while the other commits. If the statement fails, each of its publishes runs
//! again alone, so a failing one never takes the others down with it; so does a publish
//! alone whose answer was lost, which may have committed (a publish that finds its own
//! message is `Created`).

use super::{pg_error, queue, rows};
use crate::*;
use deadpool_postgres::Pool;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Publishes one transaction holds at most.
const BATCH_MAX: usize = 256;
/// Writers taking batches in turn.
pub const WRITERS: usize = 2;

pub type Reply = oneshot::Sender<StoreResult<PublishOutcome>>;
/// A publish waiting for its writer, and where its outcome goes.
pub type Job = (Publish, Reply);
pub type Inbox = Arc<Mutex<mpsc::Receiver<Job>>>;

/// One writer: takes what waits in `inbox` and commits it, until every sender is gone.
pub async fn run(pool: Pool, inbox: Inbox, timeout: Duration) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        if inbox.lock().await.recv_many(&mut batch, BATCH_MAX).await == 0 {
            return;
        }
        let (now, later) = split_repeated_keys(std::mem::take(&mut batch));
        commit_batch(&pool, now, timeout).await;
        for job in later {
            commit_batch(&pool, vec![job], timeout).await;
        }
    }
}

/// Two publishes of one provider event in one transaction could both pass the dedupe check
/// (each sees the other's key before its message): all but the first of each key wait for
/// their own transaction, after the batch.
fn split_repeated_keys(batch: Vec<Job>) -> (Vec<Job>, Vec<Job>) {
    let mut seen = HashSet::new();
    batch.into_iter().partition(|(publish, _)| publish.dedupe.as_ref().is_none_or(|key| seen.insert(key.clone())))
}

async fn commit_batch(pool: &Pool, batch: Vec<Job>, timeout: Duration) {
    let publishes: Vec<&Publish> = batch.iter().map(|(publish, _)| publish).collect();
    let outcomes = match within(timeout, write(pool, &publishes)).await {
        Ok(outcomes) => outcomes,
        // A publish alone that the database refused fails; one whose answer did not come
        // (a timeout, a connection lost) may have committed, and runs again to find out.
        Err(e) if publishes.len() == 1 && !matches!(e, StoreError::Unavailable(_)) => vec![Err(e)],
        // One failed (or the transaction did, or its answer was lost): each runs again
        // alone and hears its own fate, until the database does not answer one: the rest
        // hear that at once. Each waiting its own timeout, a batch of 256 kept its last
        // publisher waiting 256 timeouts while the database hung.
        Err(_) => {
            let mut outcomes = Vec::with_capacity(publishes.len());
            let mut unanswered: Option<StoreError> = None;
            for publish in &publishes {
                if let Some(e) = &unanswered {
                    outcomes.push(Err(e.clone()));
                    continue;
                }
                let alone = within(timeout, write(pool, std::slice::from_ref(publish))).await;
                let outcome = alone.and_then(|mut one| one.pop().expect("one outcome per publish"));
                if let Err(e @ StoreError::Unavailable(_)) = &outcome {
                    unanswered = Some(e.clone());
                }
                outcomes.push(outcome);
            }
            outcomes
        }
    };
    for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
        let _ = reply.send(outcome);
    }
}

async fn within<T>(timeout: Duration, work: impl std::future::Future<Output = StoreResult<T>>) -> StoreResult<T> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("the database did not answer in time".into())))
}

/// Writes every publish in one statement (atomic on its own, synchronous commit on).
/// Publishes the statement did not insert are duplicates (their earlier message is looked
/// up), or were committed by an earlier try of the same publish (its message id is there).
async fn write(pool: &Pool, publishes: &[&Publish]) -> StoreResult<Vec<StoreResult<PublishOutcome>>> {
    let client = pool.get().await.map_err(|e| StoreError::Unavailable(format!("database: {e}")))?;
    let columns = Columns::of(publishes);
    let statement = client.prepare_cached(BATCH_SQL).await.map_err(pg_error)?;
    let inserted: HashSet<String> = client
        .query(&statement, &columns.params())
        .await
        .map_err(pg_error)?
        .iter()
        .map(|row| row.try_get(0).map_err(pg_error))
        .collect::<StoreResult<_>>()?;
    let mut outcomes = Vec::with_capacity(publishes.len());
    for publish in publishes {
        outcomes.push(match inserted.contains(&publish.message.id) {
            true => Ok(PublishOutcome::Created),
            false => queue::earlier_message(&client, publish).await.map(|earlier| match earlier {
                // This very publish, committed by an earlier try whose answer was lost (a
                // timeout, a dropped connection): that commit is its outcome, deliveries
                // claimed as this publish asked.
                PublishOutcome::Duplicate(m) if m.id == publish.message.id => PublishOutcome::Created,
                other => other,
            }),
        });
    }
    Ok(outcomes)
}

/// A batch of publishes in one statement. Dedupe keys are taken first; a message is
/// inserted only if it needs no key or got its key, and only if its `eventId` is new (a
/// statement that meets another's key or `eventId` not yet committed waits for it, and
/// then takes nothing: no condition here reads another table, whose rows committed since
/// the statement began it would not see); deliveries and idempotent answers follow the messages
/// inserted. Returns the ids of the messages inserted.
const BATCH_SQL: &str = "\
WITH pub AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[], $7::text[],
        $8::text[], $9::int8[], $10::text[], $11::text[], $12::int8[], $13::int8[], $14::text[], $15::text[],
        $33::text[])
    AS t(id, app_id, event_id, event_type, payload, channels, tags, callback_url, deliver_at, source_id, headers,
        retain_until, created_at, dedupe_source, dedupe_key, ordering_key)
),
keyed AS (
    INSERT INTO inbound_keys (source_id, event_key, msg_id, created_at)
    SELECT dedupe_source, dedupe_key, id, created_at FROM pub WHERE dedupe_key IS NOT NULL
    ON CONFLICT (source_id, event_key) DO NOTHING
    RETURNING msg_id
),
inserted AS (
    INSERT INTO messages (id, app_id, event_id, event_type, payload, channels, tags, callback_url, deliver_at,
        source_id, headers, retain_until, created_at, ordering_key)
    SELECT id, app_id, event_id, event_type, payload, channels, tags, callback_url, deliver_at, source_id, headers,
        retain_until, created_at, ordering_key
    FROM pub WHERE dedupe_key IS NULL OR id IN (SELECT msg_id FROM keyed)
    ON CONFLICT DO NOTHING
    RETURNING id
),
delivered AS (
    INSERT INTO deliveries (id, msg_id, app_id, endpoint_id, state, attempts, next_at, first_attempt_at, trigger,
        updated_at, claimed_by, order_key, order_seq)
    SELECT d.*, CASE WHEN d.order_key IS NOT NULL THEN nextval('order_seq') END
    FROM UNNEST($16::text[], $17::text[], $18::text[], $19::text[], $20::int8[], $21::int8[], $22::int8[],
        $23::int8[], $24::int8[], $25::int8[], $26::int8[], $34::text[])
    AS d(id, msg_id, app_id, endpoint_id, state, attempts, next_at, first_attempt_at, trigger, updated_at, claimed_by,
        order_key)
    WHERE d.msg_id IN (SELECT id FROM inserted)
),
remembered AS (
    INSERT INTO idempotency (key, status, body, created_at, fingerprint)
    SELECT key, status, body, created_at, fingerprint
    FROM UNNEST($27::text[], $28::int8[], $29::bytea[], $30::int8[], $31::text[], $32::bytea[])
    AS i(key, status, body, created_at, msg_id, fingerprint)
    WHERE i.msg_id IN (SELECT id FROM inserted)
    ON CONFLICT (key) DO UPDATE SET status = excluded.status, body = excluded.body, created_at = excluded.created_at,
        fingerprint = excluded.fingerprint
)
SELECT id FROM inserted";

/// One array per column of a batch: messages (with their dedupe keys), deliveries, answers.
struct Columns<'a> {
    ids: Vec<&'a str>,
    app_ids: Vec<&'a str>,
    event_ids: Vec<Option<&'a str>>,
    event_types: Vec<&'a str>,
    payloads: Vec<&'a [u8]>,
    channels: Vec<Option<String>>,
    tags: Vec<Option<String>>,
    callback_urls: Vec<Option<&'a str>>,
    deliver_at: Vec<Option<i64>>,
    source_ids: Vec<Option<&'a str>>,
    headers: Vec<Option<String>>,
    retain_until: Vec<Option<i64>>,
    created: Vec<i64>,
    dedupe_sources: Vec<Option<&'a str>>,
    dedupe_keys: Vec<Option<&'a str>>,
    deliveries: queue::DeliveryColumns<'a>,
    answer_keys: Vec<&'a str>,
    answer_statuses: Vec<i64>,
    answer_bodies: Vec<&'a [u8]>,
    answer_created: Vec<i64>,
    answer_msg_ids: Vec<&'a str>,
    answer_fingerprints: Vec<&'a [u8]>,
    ordering_keys: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn of(publishes: &[&'a Publish]) -> Columns<'a> {
        let messages = || publishes.iter().map(|p| &*p.message);
        let answers: Vec<(&IdempotentResponse, &str)> =
            publishes.iter().filter_map(|p| Some((p.idempotency.as_ref()?, p.message.id.as_str()))).collect();
        let deliveries: Vec<(&Delivery, Option<i64>, i64)> = publishes
            .iter()
            .flat_map(|p| p.deliveries.iter().map(move |d| (d, p.claim_of(d), p.stored_state(d))))
            .collect();
        Columns {
            ids: messages().map(|m| m.id.as_str()).collect(),
            app_ids: messages().map(|m| m.app_id.as_str()).collect(),
            event_ids: messages().map(|m| m.event_id.as_deref()).collect(),
            event_types: messages().map(|m| m.event_type.as_str()).collect(),
            payloads: messages().map(|m| &m.payload[..]).collect(),
            channels: messages().map(|m| rows::opt_json(&m.channels)).collect(),
            tags: messages().map(|m| rows::opt_json(&m.tags)).collect(),
            callback_urls: messages().map(|m| m.callback_url.as_deref()).collect(),
            deliver_at: messages().map(|m| m.deliver_at).collect(),
            source_ids: messages().map(|m| m.source_id.as_deref()).collect(),
            headers: messages().map(|m| rows::opt_json(&m.headers)).collect(),
            retain_until: messages().map(|m| m.retain_until).collect(),
            created: messages().map(|m| m.created_at).collect(),
            dedupe_sources: publishes.iter().map(|p| p.dedupe.as_ref().map(|(s, _)| s.as_str())).collect(),
            dedupe_keys: publishes.iter().map(|p| p.dedupe.as_ref().map(|(_, k)| k.as_str())).collect(),
            deliveries: queue::DeliveryColumns::of(&deliveries),
            answer_keys: answers.iter().map(|(a, _)| a.key.as_str()).collect(),
            answer_statuses: answers.iter().map(|(a, _)| i64::from(a.status)).collect(),
            answer_bodies: answers.iter().map(|(a, _)| &a.body[..]).collect(),
            answer_created: answers.iter().map(|(a, _)| a.created_at).collect(),
            answer_msg_ids: answers.iter().map(|(_, msg_id)| *msg_id).collect(),
            answer_fingerprints: answers.iter().map(|(a, _)| &a.fingerprint[..]).collect(),
            ordering_keys: messages().map(|m| m.ordering_key.as_deref()).collect(),
        }
    }

    fn params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &self.ids,
            &self.app_ids,
            &self.event_ids,
            &self.event_types,
            &self.payloads,
            &self.channels,
            &self.tags,
            &self.callback_urls,
            &self.deliver_at,
            &self.source_ids,
            &self.headers,
            &self.retain_until,
            &self.created,
            &self.dedupe_sources,
            &self.dedupe_keys,
        ];
        params.extend(self.deliveries.params());
        params.extend([
            &self.answer_keys as &(dyn tokio_postgres::types::ToSql + Sync),
            &self.answer_statuses,
            &self.answer_bodies,
            &self.answer_created,
            &self.answer_msg_ids,
            &self.answer_fingerprints,
            &self.ordering_keys,
            self.deliveries.order_keys(),
        ]);
        params
    }
}
