//! Redis Streams: a consumer group read with `XREADGROUP`; entries are acknowledged with
//! `XACK` once stored. A refused entry is added to `<stream>:dlq` (with its id, code and
//! reason) and acknowledged by one script, which stops before the `XACK` if the `XADD`
//! fails (a `MULTI` would run the `XACK` anyway). Entries left unacknowledged (a node that
//! died, or stopped while the store was down) are taken over with `XAUTOCLAIM` once idle
//! for `claim_idle_ms`; entries a consumer is still storing are claimed again by it every
//! third of that time, so they never look idle. After a restart, a consumer first reads
//! its own pending entries. A refused entry whose dead letter cannot be written stays
//! pending, taken again once idle.

use super::{Consumer, ConsumerStatus, Handled, Ingestor, Lanes};
use crate::config::RedisIngest;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamId;
use redis::{AsyncConnectionConfig, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long one `XREADGROUP` waits for new entries.
const BLOCK_MS: u64 = 1_000;
/// How often the group's lag is read.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// Dead-letters one entry and acknowledges it, atomically: `XADD` to the dead-letter
/// stream, and only if that worked, `XACK`. KEYS: stream, dead-letter stream. ARGV: group,
/// entry id, code, reason, the message field's name, its body.
const DEAD_LETTER: &str = r"
redis.call('XADD', KEYS[2], '*', 'id', ARGV[2], 'code', ARGV[3], 'reason', ARGV[4], ARGV[5], ARGV[6])
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
";

pub struct Redis {
    config: RedisIngest,
    consumer: String,
    status: Arc<ConsumerStatus>,
    lanes: Arc<Lanes>,
}

impl Redis {
    pub fn new(config: &RedisIngest, node: &str) -> Redis {
        let name = format!("redis:{}:{}", config.stream, config.group);
        let source = format!("stream {} group {}", config.stream, config.group);
        Redis {
            consumer: config.consumer.clone().unwrap_or_else(|| node.to_owned()),
            status: ConsumerStatus::new("redis", name, &config.url, source),
            config: config.clone(),
            lanes: Arc::default(),
        }
    }

    async fn connect(&self) -> Result<(MultiplexedConnection, MultiplexedConnection), String> {
        let client = redis::Client::open(self.config.url.as_str()).map_err(|e| format!("the URL: {e}"))?;
        let blocking = Duration::from_millis(BLOCK_MS) + Duration::from_secs(5);
        let options = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(blocking));
        // Blocking reads get a connection of their own: commands queue behind them.
        let reader = client.get_multiplexed_async_connection_with_config(&options).await.map_err(text)?;
        let writer = client.get_multiplexed_async_connection_with_config(&options).await.map_err(text)?;
        Ok((reader, writer))
    }

    /// Entries from `XREADGROUP` (`start` `>` for new ones, `0` for this consumer's pending).
    async fn read(&self, conn: &mut MultiplexedConnection, start: &str, block: bool) -> Result<Vec<StreamId>, String> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&self.config.group).arg(&self.consumer).arg("COUNT").arg(self.config.batch);
        if block {
            cmd.arg("BLOCK").arg(BLOCK_MS);
        }
        cmd.arg("STREAMS").arg(&self.config.stream).arg(start);
        let reply: Value = cmd.query_async(conn).await.map_err(text)?;
        // `[[stream, entries]]` (a map of stream to entries in RESP3), or nil.
        let streams = match reply {
            Value::Array(streams) => streams.into_iter().filter_map(|s| array(s)?.into_iter().nth(1)).collect(),
            Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
            _ => Vec::new(),
        };
        Ok(streams.into_iter().flat_map(entries_of).collect())
    }

    /// Takes over entries idle past `claim_idle_ms` from any consumer of the group.
    async fn autoclaim(&self, conn: &mut MultiplexedConnection, cursor: &mut String) -> Result<Vec<StreamId>, String> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(&self.consumer)
            .arg(self.config.claim_idle_ms)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(self.config.batch)
            .query_async(conn)
            .await
            .map_err(text)?;
        // `[next cursor, entries, deleted ids]`.
        let mut items = array(reply).ok_or("XAUTOCLAIM: not an array")?.into_iter();
        *cursor = items.next().and_then(text_of).ok_or("XAUTOCLAIM: no cursor")?;
        Ok(items.next().map(entries_of).unwrap_or_default())
    }

    /// Stores a batch concurrently (so the store commits it together, each message after
    /// the earlier ones of its ordering lane), then acknowledges what was stored in one
    /// `XACK` and dead-letters what was refused. Entries still unstored at shutdown stay
    /// pending.
    async fn handle(
        &self,
        ingestor: &Ingestor,
        conn: &mut MultiplexedConnection,
        entries: Vec<StreamId>,
        stopping: &watch::Receiver<bool>,
    ) -> Result<(), String> {
        let field = self.config.field.as_str();
        let prepared: Vec<_> =
            entries.iter().map(|entry| ingestor.prepare(Some(&entry.id), body(entry, field))).collect();
        let turns: Vec<_> = prepared.iter().map(|p| self.lanes.turn(p.lane())).collect();
        let storing = futures_util::future::join_all(
            prepared
                .iter()
                .zip(turns)
                .map(|(prepared, turn)| ingestor.store_in_turn(&self.status, prepared, turn, stopping)),
        );
        let ids: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
        let handled = self.keeping(conn.clone(), &ids, storing).await;
        let mut stored = Vec::new();
        let mut refused = Vec::new();
        for (entry, handled) in entries.iter().zip(handled) {
            match handled {
                Some(Handled::Stored { .. }) => stored.push(entry.id.as_str()),
                Some(Handled::Refused { code, reason }) => refused.push((entry, code, reason)),
                Some(Handled::Unavailable) | None => {}
            }
        }
        if !stored.is_empty() {
            let _: i64 = redis::cmd("XACK")
                .arg(&self.config.stream)
                .arg(&self.config.group)
                .arg(&stored)
                .query_async(conn)
                .await
                .map_err(text)?;
        }
        // A dead letter that cannot be written (the dead-letter stream out of the ACL's
        // keys, of another type, Redis out of memory) leaves its entry pending, to be taken
        // again by `XAUTOCLAIM` once idle, and the consumer goes on: ending the session
        // here, it read the same entry first on every new one and never got past it.
        for (entry, code, reason) in refused {
            let dead_lettered: Result<i64, _> = redis::cmd("EVAL")
                .arg(DEAD_LETTER)
                .arg(2)
                .arg(&self.config.stream)
                .arg(format!("{}:dlq", self.config.stream))
                .arg(&self.config.group)
                .arg(&entry.id)
                .arg(code)
                .arg(&reason)
                .arg(field)
                .arg(body(entry, field))
                .query_async(conn)
                .await;
            match dead_lettered {
                Ok(_) => {
                    tracing::warn!(consumer = %self.status.name, entry = %entry.id, code, %reason, "queue message refused; dead-lettered")
                }
                Err(e) => {
                    tracing::warn!(consumer = %self.status.name, entry = %entry.id, code, %reason, error = %e, "queue message refused; could not dead-letter it, it stays pending");
                    self.status.note(format!("dead-lettering {}: {e}", entry.id));
                }
            }
        }
        Ok(())
    }

    /// Runs `work` on entries `ids` while keeping them this consumer's: the group sees an
    /// entry read and not acknowledged as idle, and once idle `claim_idle_ms` another node's
    /// `XAUTOCLAIM` takes it over (and stores it too, out of its ordering lane's order),
    /// however busy this consumer is with it (the store down: it tries again and again). So
    /// every third of that time, `XCLAIM … JUSTID` claims them again, which makes them not
    /// idle. Its minimum idle time keeps it from taking back an entry another node did
    /// take over (while this node could not reach Redis): that node's claim is at least
    /// `claim_idle_ms` after this consumer's last, so the entry is idle for less than the
    /// time since then minus `claim_idle_ms`; this consumer's own for about that time.
    async fn keeping<T>(&self, mut conn: MultiplexedConnection, ids: &[&str], work: impl Future<Output = T>) -> T {
        let claim_idle = Duration::from_millis(self.config.claim_idle_ms);
        let every = (claim_idle / 3).max(Duration::from_millis(10));
        // Polled beside `work`, never in its way: a claim waiting on Redis delays no store.
        let keep = async {
            let mut kept_at = Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let sent_at = Instant::now();
                let min_idle = sent_at.duration_since(kept_at).saturating_sub(claim_idle / 2);
                let claimed: Result<Value, _> = redis::cmd("XCLAIM")
                    .arg(&self.config.stream)
                    .arg(&self.config.group)
                    .arg(&self.consumer)
                    .arg(min_idle.as_millis() as u64)
                    .arg(ids)
                    .arg("JUSTID")
                    .query_async(&mut conn)
                    .await;
                match claimed {
                    Ok(_) => kept_at = sent_at,
                    Err(e) => self.status.note(format!("keeping entries being stored: {e}")),
                }
            }
        };
        tokio::select! {
            out = work => out,
            never = keep => never,
        }
    }

    /// Waiting entries plus entries read and not acknowledged (`XINFO GROUPS`).
    async fn lag(&self, conn: &mut MultiplexedConnection) -> Result<u64, String> {
        let groups: Vec<Vec<Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg(&self.config.stream).query_async(conn).await.map_err(text)?;
        let group = groups.iter().find(|g| {
            field_of(g, "name").is_some_and(|n| n == Value::BulkString(self.config.group.clone().into_bytes()))
        });
        let number = |name| match group.and_then(|g| field_of(g, name)) {
            Some(Value::Int(n)) => n.max(0) as u64,
            _ => 0,
        };
        Ok(number("lag") + number("pending"))
    }
}

/// An entry's message: the bytes of its `field` (none if it has no such field).
/// Stream entries (`[[id, [name, value, ...]], ...]`) read from the reply's bytes, not
/// with redis-rs's typed replies: those take field names as UTF-8 and fail the whole reply
/// on one that is not, an entry Redis keeps pending, so it stopped the group for good
/// (and every node whose `XAUTOCLAIM` took it over). A name that is not UTF-8 is read
/// lossily: an entry whose message field is missing so is dead-lettered as empty.
fn entries_of(list: Value) -> Vec<StreamId> {
    let entry = |entry: Value| {
        let mut parts = array(entry)?.into_iter();
        let id = text_of(parts.next()?)?;
        let fields = parts.next().and_then(array).unwrap_or_default();
        let mut map = std::collections::HashMap::new();
        let mut flat = fields.into_iter();
        while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
            if let Value::BulkString(name) = name {
                map.insert(String::from_utf8_lossy(&name).into_owned(), value);
            }
        }
        Some(StreamId { id, map, ..Default::default() })
    };
    array(list).unwrap_or_default().into_iter().filter_map(entry).collect()
}

fn array(value: Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

/// A bulk or simple string's text (entry ids and cursors are ASCII).
fn text_of(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

fn body<'a>(entry: &'a StreamId, field: &str) -> &'a [u8] {
    match entry.map.get(field) {
        Some(Value::BulkString(body)) => body,
        _ => &[],
    }
}

/// The value after `name` in a flat `[name, value, ...]` reply.
fn field_of(flat: &[Value], name: &str) -> Option<Value> {
    flat.chunks(2).find_map(|pair| match pair {
        [Value::BulkString(key), value] if key == name.as_bytes() => Some(value.clone()),
        [Value::SimpleString(key), value] if key == name => Some(value.clone()),
        _ => None,
    })
}

fn text(e: redis::RedisError) -> String {
    e.to_string()
}

#[async_trait::async_trait]
impl Consumer for Redis {
    fn status(&self) -> &Arc<ConsumerStatus> {
        &self.status
    }

    async fn run(&self, ingestor: &Arc<Ingestor>, mut stopping: watch::Receiver<bool>) -> Result<(), String> {
        let (mut reader, mut writer) = self.connect().await?;
        let created: Result<(), _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut writer)
            .await;
        if let Err(e) = created {
            if e.code() != Some("BUSYGROUP") {
                return Err(format!("creating the group: {e}"));
            }
        }
        self.status.connected();
        // This consumer's own pending entries first (it may have died holding some), each
        // once: the read goes on after the last one read, so one left pending again (its
        // dead letter refused) does not come back first for ever.
        let mut own_pending = Some("0".to_owned());
        let mut cursor = "0-0".to_owned();
        let claim_every = Duration::from_millis(self.config.claim_idle_ms / 2).max(Duration::from_millis(100));
        let mut next_claim = Instant::now() + claim_every;
        let mut next_lag = Instant::now();
        while !*stopping.borrow() {
            let now = Instant::now();
            if now >= next_lag {
                match self.lag(&mut writer).await {
                    Ok(lag) => self.status.set_lag(lag),
                    Err(e) => self.status.note(format!("reading the lag: {e}")),
                }
                next_lag = now + LAG_EVERY;
            }
            let entries = if now >= next_claim {
                let entries = self.autoclaim(&mut writer, &mut cursor).await?;
                if cursor == "0-0" {
                    next_claim = now + claim_every;
                }
                entries
            } else if let Some(after) = &own_pending {
                let entries = self.read(&mut writer, after, false).await?;
                own_pending = entries.last().map(|entry| entry.id.clone());
                entries
            } else {
                tokio::select! {
                    entries = self.read(&mut reader, ">", true) => entries?,
                    // A dropped sender is a stop too.
                    _ = stopping.changed() => return Ok(()),
                }
            };
            if !entries.is_empty() {
                self.handle(ingestor, &mut writer, entries, &stopping).await?;
            }
        }
        Ok(())
    }
}
