//! The embedded SQLite backend: WAL, synchronous commits, one writer thread that batches
//! every write it finds waiting into one transaction (group commit), and a small pool of
//! read connections.

mod alerts;
mod fanout;
mod queue;
mod resources;
mod rows;
mod schema;
mod stats;

use crate::sealed::{Sealer, KEY_BYTES};
use crate::*;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Condvar;
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Writes one batch may hold; bounds the time one commit takes.
const BATCH_JOBS_MAX: usize = 2_048;
/// Writes waiting in one lane before callers wait for room.
const QUEUE_JOBS_MAX: usize = 16_384;
/// Background writes one batch takes while acknowledged writes wait, so a backlog of
/// attempt records never delays a publisher's 2xx by more than one such batch.
const BACKGROUND_JOBS_PER_BUSY_BATCH: usize = 256;
/// Read connections, kept open, and reads run at once: a storm of API reads waits for one
/// of them rather than opening a connection (with its own page cache) and taking a
/// blocking thread per read.
const READERS_MAX: usize = 8;

/// One queued write. It may run twice (see [`commit_batch`]), so it is a `Fn`.
trait Job: Send {
    /// Runs the write inside the open transaction, alone in a savepoint when `isolated`;
    /// false if it failed.
    fn run(&mut self, conn: &Connection, isolated: bool) -> bool;
    /// Answers the caller: the write's own result, or the commit's error.
    fn finish(self: Box<Self>, commit_error: Option<&StoreError>);
}

struct Write<T, F> {
    f: F,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
    _room: OwnedSemaphorePermit,
}

impl<T, F> Job for Write<T, F>
where
    T: Send,
    F: Fn(&Connection) -> StoreResult<T> + Send,
{
    fn run(&mut self, conn: &Connection, isolated: bool) -> bool {
        let result = if isolated { in_savepoint(conn, &self.f) } else { (self.f)(conn) };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit_error: Option<&StoreError>) {
        let outcome = match (self.result, commit_error) {
            (Some(Ok(_)) | None, Some(e)) => Err(e.clone()),
            (Some(result), _) => result,
            (None, None) => Err(StoreError::Unavailable("the write did not run".into())),
        };
        let _ = self.reply.send(outcome);
    }
}

/// Which queue a write waits in. Acknowledged writes (a caller is waiting to answer a
/// client) go first; background writes (attempt records) fill the rest of each batch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Acknowledged = 0,
    Background = 1,
}

#[derive(Default)]
struct Queues {
    lanes: [VecDeque<Box<dyn Job>>; 2],
    closed: bool,
    /// The writer is waiting for the bell. Ringing it is a syscall, so writers ring only
    /// then: a busy writer finds new jobs when its commit is done.
    idle: bool,
}

/// The writer's two queues and the bell that wakes it.
#[derive(Default)]
struct Inbox {
    queues: Mutex<Queues>,
    bell: Condvar,
}

pub struct SqliteStore {
    sealer: Sealer,
    inbox: Arc<Inbox>,
    room: [Arc<Semaphore>; 2],
    readers: Arc<Mutex<Vec<Connection>>>,
    /// `READERS_MAX` permits: one per read running.
    reading: Arc<Semaphore>,
    path: PathBuf,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // The writer finishes what is queued, then stops.
        self.inbox.queues.lock().expect("writer inbox lock").closed = true;
        self.inbox.bell.notify_all();
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `hookline.db` in `data_dir` and migrates it. Secrets are
    /// sealed with `secret_key` (see [`load_or_create_key`]).
    pub fn open(data_dir: &Path, secret_key: &[u8; KEY_BYTES]) -> StoreResult<SqliteStore> {
        create_data_dir(data_dir)
            .map_err(|e| StoreError::Unavailable(format!("create {}: {e}", data_dir.display())))?;
        let path = data_dir.join("hookline.db");
        let writer = open_connection(&path, true)?;
        schema::migrate(&writer)?;
        let inbox = Arc::new(Inbox::default());
        let writer_inbox = inbox.clone();
        std::thread::Builder::new()
            .name("hookline-writer".into())
            .spawn(move || run_writer(writer, &writer_inbox))
            .map_err(|e| StoreError::Unavailable(format!("start writer: {e}")))?;
        let room = [Arc::new(Semaphore::new(QUEUE_JOBS_MAX)), Arc::new(Semaphore::new(QUEUE_JOBS_MAX))];
        let sealer = Sealer::new(secret_key);
        let (readers, reading) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Semaphore::new(READERS_MAX)));
        Ok(SqliteStore { sealer, inbox, room, readers, reading, path })
    }

    /// Runs `f` inside the next group commit; resolves once the commit is synced.
    pub(crate) async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.write_in(Lane::Acknowledged, f).await
    }

    pub(crate) async fn write_in<T, F>(&self, lane: Lane, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let room = self.room[lane as usize].clone().acquire_owned().await.map_err(|_| closed())?;
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Write { f, result: None, reply, _room: room });
        let ring = {
            let mut queues = self.inbox.queues.lock().expect("writer inbox lock");
            if queues.closed {
                return Err(closed());
            }
            queues.lanes[lane as usize].push_back(job);
            std::mem::take(&mut queues.idle)
        };
        if ring {
            self.inbox.bell.notify_one();
        }
        answer.await.map_err(|_| StoreError::Unavailable("the write was not committed".into()))?
    }

    /// Deletes `table`'s rows created before `before`, a job of `chunk` keys at a time on the
    /// background lane: publishes go between the jobs, and losing one in a crash only
    /// leaves expired rows for the next pass.
    async fn purge_expired(
        &self,
        table: &'static crate::columns::Expiring,
        before: UnixMs,
        chunk: usize,
    ) -> StoreResult<usize> {
        crate::columns::walk_chunks(|after| {
            self.write_in(Lane::Background, move |c| {
                queue::purge_expired(c, table, after.as_deref(), before, chunk.max(1))
            })
        })
        .await
    }

    /// Writes out unwritten fan-outs before a read of deliveries, so the read sees every
    /// delivery as a row. Costs one lookup when there are none.
    async fn write_out_fanouts(&self) -> StoreResult<()> {
        if self.read(fanout::any).await? {
            self.write(|c| fanout::write_out(c, fanout::Which::All)).await?;
        }
        Ok(())
    }

    /// Runs `f` on a read connection on the blocking pool.
    pub(crate) async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let permit = self.reading.clone().acquire_owned().await.map_err(|_| closed())?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = readers.lock().expect("reader pool lock").pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => open_connection(&path, false)?,
            };
            let result = f(&conn);
            let mut pool = readers.lock().expect("reader pool lock");
            if pool.len() < READERS_MAX {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

/// Creates the data directory (and its parents) if missing, readable by this user alone: the
/// database beside the key holds payloads, URLs and responses, and SQLite makes its files
/// readable by all under the common umask. A directory that exists is left as it is.
pub fn create_data_dir(data_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir)
}

/// The key that seals secrets: read from `secret.key` in `data_dir`, or created there (mode
/// 0600) on first start. Operators who keep the key elsewhere pass it in config instead.
/// A missing key beside an existing `hookline.db` is refused, not replaced: the database's
/// secrets were sealed with the lost key, and a new one would open none of them.
pub fn load_or_create_key(data_dir: &Path) -> StoreResult<[u8; KEY_BYTES]> {
    use base64::Engine;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let unavailable =
        |what: &str, e: std::io::Error| StoreError::Unavailable(format!("{what} {}: {e}", data_dir.display()));
    create_data_dir(data_dir).map_err(|e| unavailable("create", e))?;
    let path = data_dir.join("secret.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => decode_key(text.trim()).map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && data_dir.join("hookline.db").exists() => {
            Err(StoreError::Corrupt(format!(
                "{} is missing, but {} exists: its secrets were sealed with that key; restore the file \
                 (or give the key as security.secret_key)",
                path.display(),
                data_dir.join("hookline.db").display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Written whole to a file of this process's own, synced, then linked into place:
            // `secret.key` never exists half-written (a crash there left it empty, and every
            // later start refused it), and of two starts at once one key wins, read by both.
            let key: [u8; KEY_BYTES] = rand::random();
            let temporary =
                data_dir.join(format!(".secret.key.{}.{:x}.tmp", std::process::id(), rand::random::<u64>()));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)
                .map_err(|e| unavailable("create secret.key in", e))?;
            let text = base64::engine::general_purpose::STANDARD.encode(key);
            file.write_all(text.as_bytes())
                .and_then(|_| file.sync_all())
                .map_err(|e| unavailable("write secret.key in", e))?;
            let linked = std::fs::hard_link(&temporary, &path);
            let _ = std::fs::remove_file(&temporary);
            match linked {
                Ok(()) => {
                    std::fs::File::open(data_dir).and_then(|dir| dir.sync_all()).map_err(|e| unavailable("sync", e))?;
                    Ok(key)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(data_dir),
                Err(e) => Err(unavailable("create secret.key in", e)),
            }
        }
        Err(e) => Err(unavailable("read secret.key in", e)),
    }
}

/// A key given as base64 of 32 bytes.
pub fn decode_key(text: &str) -> Result<[u8; KEY_BYTES], String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| "the secret key is not base64".to_owned())?;
    bytes.try_into().map_err(|_| format!("the secret key must be {KEY_BYTES} bytes"))
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is shut down".into())
}

fn open_connection(path: &Path, writer: bool) -> StoreResult<Connection> {
    let flags = if writer {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(sql_error)?;
    // rusqlite keeps 16 prepared statements by default. The writer prepares more than that
    // across its paths (publish, fan-outs, ordering lanes, attempt records, claims,
    // statistics, retention), and a statement pushed out is compiled again on its next use;
    // readers get the same setting.
    conn.set_prepared_statement_cache_capacity(64);
    // synchronous=FULL: a commit returns only once the WAL is synced, so an acknowledged
    // write survives power loss, not only a process crash.
    conn.execute_batch(
        "PRAGMA busy_timeout = 5000;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA temp_store = MEMORY;",
    )
    .map_err(sql_error)?;
    Ok(conn)
}

/// Runs one job so that its failure rolls back only its own changes.
fn in_savepoint<T>(conn: &Connection, f: impl Fn(&Connection) -> StoreResult<T>) -> StoreResult<T> {
    // SQLite rolls the whole transaction back on some errors (disk full, IO); a job that
    // ran after that would autocommit on its own, so it must not run at all.
    if conn.is_autocommit() {
        return Err(StoreError::Unavailable("the write batch was aborted by an earlier error".into()));
    }
    conn.execute_batch("SAVEPOINT job").map_err(sql_error)?;
    let result = f(conn);
    let end = if result.is_ok() { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
    conn.execute_batch(end).map_err(sql_error)?;
    result
}

/// Closes the inbox if the writer ends by a panic: the jobs queued are dropped (their
/// callers hear the write was not committed) and later writes are refused, where they
/// waited for ever for a writer that was gone. The transaction open, if any, rolls back
/// with the connection.
struct ClosedOnPanic<'a>(&'a Inbox);

impl Drop for ClosedOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the SQLite writer stopped on a panic; every write is refused until a restart");
            let mut queues = self.0.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            queues.closed = true;
            queues.lanes.iter_mut().for_each(VecDeque::clear);
        }
    }
}

fn run_writer(conn: Connection, inbox: &Inbox) {
    let _closed_on_panic = ClosedOnPanic(inbox);
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(BATCH_JOBS_MAX);
    // `open_connection` opens every connection with FULL.
    let mut synced = Synced(true);
    loop {
        let acknowledged_jobs;
        {
            let mut queues = inbox.queues.lock().expect("writer inbox lock");
            while queues.lanes.iter().all(VecDeque::is_empty) {
                if queues.closed {
                    return;
                }
                queues.idle = true;
                queues = inbox.bell.wait(queues).expect("writer inbox lock");
            }
            queues.idle = false;
            let [acknowledged, background] = &mut queues.lanes;
            acknowledged_jobs = acknowledged.len().min(BATCH_JOBS_MAX);
            batch.extend(acknowledged.drain(..acknowledged_jobs));
            let room = if batch.is_empty() { BATCH_JOBS_MAX } else { BACKGROUND_JOBS_PER_BUSY_BATCH };
            let take = background.len().min(room);
            batch.extend(background.drain(..take));
        }
        if let Err(e) = synced.set(&conn, acknowledged_jobs > 0) {
            tracing::error!(error = %e, "could not set the writer's synchronous mode");
            for job in batch.drain(..) {
                job.finish(Some(&e));
            }
            continue;
        }
        commit_batch(&conn, &mut batch);
    }
}

/// Whether commits wait for the WAL to reach the disk (`synchronous = FULL`). A batch
/// holding an acknowledged write does; a batch of background writes only (attempt records,
/// claims, leases, statistics, retention) does not: its frames reach the disk with the next
/// synced commit or checkpoint, since the WAL is synced as a whole, in order. A power loss
/// in between loses at most those background writes, which costs a delivery sent again,
/// never an acknowledged message. A process crash loses nothing: the frames are written.
struct Synced(bool);

impl Synced {
    /// Sets the mode for the next batch; the batch must not run if this fails.
    fn set(&mut self, conn: &Connection, full: bool) -> StoreResult<()> {
        if self.0 != full {
            let pragma = if full { "PRAGMA synchronous = FULL" } else { "PRAGMA synchronous = NORMAL" };
            conn.execute_batch(pragma).map_err(sql_error)?;
            self.0 = full;
        }
        Ok(())
    }
}

/// What one pass over a batch came to.
enum Pass {
    /// The transaction ended: committed, or failed with this error.
    Ended(Option<StoreError>),
    /// The job at this index failed; the transaction was rolled back.
    JobFailed(usize),
}

/// Commits a batch in one transaction. Jobs run back to back, with no savepoint each: a
/// savepoint per job cost about a fifth of the writer's CPU (statement journal pages). If a
/// job fails, its partial changes cannot be told apart from the others', so the whole
/// transaction is rolled back, that job hears its own error, and the rest of the batch runs
/// again, each job in its own savepoint.
fn commit_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>) {
    let error = match run_pass(conn, batch, false) {
        Pass::Ended(error) => error,
        Pass::JobFailed(index) => {
            batch.remove(index).finish(None);
            match run_pass(conn, batch, true) {
                Pass::Ended(error) => error,
                Pass::JobFailed(_) => unreachable!("an isolated pass runs every job"),
            }
        }
    };
    for job in batch.drain(..) {
        job.finish(error.as_ref());
    }
}

fn run_pass(conn: &Connection, batch: &mut [Box<dyn Job>], isolated: bool) -> Pass {
    if let Err(e) = control(conn, "BEGIN IMMEDIATE") {
        // Nothing ran: every caller hears the error and nothing was acknowledged.
        tracing::error!(error = %e, "could not begin a write batch");
        return Pass::Ended(Some(e));
    }
    for (index, job) in batch.iter_mut().enumerate() {
        if !job.run(conn, isolated) && !isolated {
            let _ = conn.execute_batch("ROLLBACK");
            return Pass::JobFailed(index);
        }
    }
    let commit = control(conn, "COMMIT");
    if commit.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let error = commit.err();
    if let Some(e) = &error {
        tracing::error!(error = %e, jobs = batch.len(), "write batch failed to commit");
    }
    Pass::Ended(error)
}

/// Runs `BEGIN IMMEDIATE` or `COMMIT` from the statement cache: `execute_batch` compiled
/// them afresh for every commit. (The sync-mode switch stays on `execute_batch`: SQLite
/// compiles a `PRAGMA` again at each run whatever the cache holds.)
fn control(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ()).map_err(sql_error)
}

/// Maps SQLite errors to what callers act on: conflicts, absent rows, unavailability.
pub(crate) fn sql_error(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation => StoreError::Conflict(e.to_string()),
            ErrorCode::DiskFull | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen | ErrorCode::ReadOnly => {
                StoreError::Unavailable(e.to_string())
            }
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Unavailable(e.to_string()),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => StoreError::Corrupt(e.to_string()),
            _ => StoreError::Unavailable(e.to_string()),
        },
        rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..) => {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_app(&self, app: App) -> StoreResult<App> {
        let sealed = self.sealer.seal_app(app.clone());
        self.write(move |c| resources::insert_app(c, &sealed)).await.map(|_| app)
    }
    async fn get_app(&self, key: Key<'_>) -> StoreResult<App> {
        let key = key.to_owned();
        self.read(move |c| resources::get_app(c, &key)).await.and_then(|a| self.sealer.open_app(a))
    }
    async fn list_apps(&self, page: Page) -> StoreResult<Listed<App>> {
        let listed = self.read(move |c| resources::list_apps(c, &page)).await?;
        self.sealer.open_all(listed, Sealer::open_app)
    }
    async fn update_app(&self, app: App) -> StoreResult<App> {
        let sealed = self.sealer.seal_app(app.clone());
        self.write(move |c| resources::update_app(c, &sealed)).await.map(|_| app)
    }
    async fn set_app_secrets(&self, app: App, read: &App) -> StoreResult<bool> {
        let (sealed, read, sealer) = (self.sealer.seal_app(app), read.clone(), self.sealer.clone());
        self.write(move |c| resources::set_app_secrets(c, &sealer, &sealed, &read)).await
    }
    async fn delete_app(&self, id: &str) -> StoreResult<()> {
        let app_id = id.to_owned();
        self.write(move |c| resources::delete_app(c, &app_id)).await
    }
    async fn purge_deleted_app(&self, app_id: &str, chunk: usize) -> StoreResult<bool> {
        let app_id = app_id.to_owned();
        self.write_in(Lane::Background, move |c| resources::purge_deleted_app(c, &app_id, chunk.max(1))).await
    }
    async fn deleted_apps(&self) -> StoreResult<Vec<(String, i64)>> {
        self.read(|c| {
            let mut statement = c.prepare_cached(crate::columns::DELETED_APPS).map_err(sql_error)?;
            let found = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sql_error)?;
            found.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)
        })
        .await
    }

    async fn create_event_type(&self, event_type: EventType) -> StoreResult<EventType> {
        let kept = event_type.clone();
        self.write(move |c| resources::insert_event_type(c, &kept)).await.map(|_| event_type)
    }
    async fn get_event_type(&self, name: &str) -> StoreResult<EventType> {
        let name = name.to_owned();
        self.read(move |c| resources::get_event_type(c, &name)).await
    }
    async fn list_event_types(&self, page: Page, include_archived: bool) -> StoreResult<Listed<EventType>> {
        self.read(move |c| resources::list_event_types(c, &page, include_archived)).await
    }
    async fn update_event_type(&self, event_type: EventType) -> StoreResult<EventType> {
        let kept = event_type.clone();
        self.write(move |c| resources::update_event_type(c, &kept)).await.map(|_| event_type)
    }
    async fn delete_event_type(&self, name: &str) -> StoreResult<()> {
        let name = name.to_owned();
        self.write(move |c| resources::delete_event_type(c, &name)).await
    }

    async fn create_endpoint(&self, endpoint: Endpoint) -> StoreResult<Endpoint> {
        let sealed = self.sealer.seal_endpoint(endpoint.clone());
        self.write(move |c| resources::insert_endpoint(c, &sealed)).await.map(|_| endpoint)
    }
    async fn get_endpoint(&self, app_id: &str, key: Key<'_>) -> StoreResult<Endpoint> {
        let (app_id, key) = (app_id.to_owned(), key.to_owned());
        self.read(move |c| resources::get_endpoint(c, &app_id, &key)).await.and_then(|e| self.sealer.open_endpoint(e))
    }
    async fn list_endpoints(&self, app_id: &str, page: Page) -> StoreResult<Listed<Endpoint>> {
        let app_id = app_id.to_owned();
        let listed = self.read(move |c| resources::list_endpoints(c, &app_id, &page)).await?;
        self.sealer.open_all(listed, Sealer::open_endpoint)
    }
    async fn app_endpoints(&self, app_id: &str) -> StoreResult<Vec<Endpoint>> {
        let app_id = app_id.to_owned();
        let endpoints = self.read(move |c| resources::app_endpoints(c, &app_id)).await?;
        endpoints.into_iter().map(|e| self.sealer.open_endpoint(e)).collect()
    }
    async fn update_endpoint(&self, endpoint: Endpoint, read: &Endpoint) -> StoreResult<Option<Endpoint>> {
        let (sealed, read) = (self.sealer.seal_endpoint(endpoint.clone()), read.clone());
        let written = self.write(move |c| resources::update_endpoint(c, &sealed, &read)).await?;
        Ok(written.map(|fail_since| Endpoint { fail_since, ..endpoint }))
    }
    async fn delete_endpoint(&self, app_id: &str, id: &str) -> StoreResult<()> {
        let (app_id, id) = (app_id.to_owned(), id.to_owned());
        self.write(move |c| resources::delete_endpoint(c, &app_id, &id)).await
    }
    async fn close_deleted_endpoint_step(
        &self,
        endpoint_id: &str,
        after: &str,
        chunk: usize,
    ) -> StoreResult<Option<String>> {
        let (endpoint_id, after) = (endpoint_id.to_owned(), after.to_owned());
        self.write(move |c| resources::close_deliveries_step(c, &endpoint_id, &after, chunk.max(1))).await
    }

    async fn publish(&self, publish: Publish) -> StoreResult<PublishOutcome> {
        self.write(move |c| queue::publish(c, &publish)).await
    }
    async fn get_message(&self, app_id: &str, key: Key<'_>) -> StoreResult<Message> {
        let (app_id, key) = (app_id.to_owned(), key.to_owned());
        self.read(move |c| queue::get_message(c, &app_id, &key)).await
    }
    async fn message_by_id(&self, id: &str) -> StoreResult<Message> {
        let id = id.to_owned();
        self.read(move |c| queue::message_by_id(c, &id)).await
    }
    async fn list_messages(&self, app_id: &str, filter: ListFilter, page: Page) -> StoreResult<Listed<Message>> {
        let app_id = app_id.to_owned();
        self.read(move |c| queue::list_messages(c, &app_id, &filter, &page)).await
    }

    async fn register_node(&self, name: &str, now: UnixMs, lease_ms: u64) -> StoreResult<NodeLease> {
        let name = name.to_owned();
        self.write(move |c| queue::register_node(c, &name, now, lease_ms)).await
    }
    async fn renew_node(&self, token: i64, now: UnixMs, lease_ms: u64) -> StoreResult<bool> {
        self.write_in(Lane::Background, move |c| queue::renew_node(c, token, now, lease_ms)).await
    }
    async fn retire_node(&self, token: i64) -> StoreResult<()> {
        self.write(move |c| queue::retire_node(c, token)).await
    }
    async fn live_nodes(&self, now: UnixMs) -> StoreResult<usize> {
        self.read(move |c| queue::live_nodes(c, now)).await
    }
    async fn claim_due(&self, claim: ClaimDue) -> StoreResult<Claimed> {
        self.write_in(Lane::Background, move |c| queue::claim_due(c, &claim)).await
    }
    async fn claim_deferred(
        &self,
        token: i64,
        lane: DeferredLane,
        now: UnixMs,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        self.write_in(Lane::Background, move |c| queue::claim_deferred(c, token, &lane, now, limit)).await
    }
    async fn deferred_lanes(&self, after: Option<DeferredLane>, limit: usize) -> StoreResult<Vec<DeferredLane>> {
        self.read(move |c| queue::deferred_lanes(c, after.as_ref(), limit)).await
    }
    async fn lead(&self, token: i64, now: UnixMs, lease_ms: u64) -> StoreResult<bool> {
        self.write_in(Lane::Background, move |c| queue::lead(c, token, now, lease_ms)).await
    }
    async fn overdue_claims(&self, token: i64, due_before: UnixMs, window: usize) -> StoreResult<Vec<DeliveryKey>> {
        self.read(move |c| queue::overdue_claims(c, token, due_before, window)).await
    }
    async fn free_claims(&self, token: i64, deliveries: Vec<DeliveryKey>) -> StoreResult<usize> {
        self.write_in(Lane::Background, move |c| queue::free_claims(c, token, &deliveries)).await
    }
    async fn count_open_deliveries(&self) -> StoreResult<u64> {
        self.write_out_fanouts().await?;
        self.read(queue::count_open_deliveries).await
    }
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }
    async fn get_delivery(&self, msg_id: &str, id: &str) -> StoreResult<Delivery> {
        let get = |(msg_id, id): (String, String)| self.read(move |c| queue::get_delivery(c, &msg_id, &id));
        let key = (msg_id.to_owned(), id.to_owned());
        match get(key.clone()).await {
            // It may be one of a fan-out not yet written out.
            Err(StoreError::NotFound) => {
                self.write_out_fanouts().await?;
                get(key).await
            }
            found => found,
        }
    }
    async fn still_claimed(&self, msg_id: &str, id: &str, claim: i64) -> StoreResult<bool> {
        // Never a fan-out's: ordered deliveries have rows of their own.
        let (msg_id, id) = (msg_id.to_owned(), id.to_owned());
        self.read(move |c| {
            c.prepare_cached(crate::columns::STILL_CLAIMED)
                .and_then(|mut s| s.exists(rusqlite::params![msg_id, id, claim]))
                .map_err(sql_error)
        })
        .await
    }
    async fn record_attempt(&self, record: AttemptRecord) -> StoreResult<Recorded> {
        self.write_in(Lane::Background, move |c| queue::record_attempt(c, &record)).await
    }
    async fn resend(
        &self,
        app_id: &str,
        msg_id: &str,
        endpoint_id: &str,
        new_id: String,
        now: UnixMs,
        claim: i64,
    ) -> StoreResult<Delivery> {
        let (app_id, msg_id, endpoint_id) = (app_id.to_owned(), msg_id.to_owned(), endpoint_id.to_owned());
        self.write(move |c| queue::resend(c, &app_id, &msg_id, &endpoint_id, &new_id, now, claim)).await
    }
    async fn recover(
        &self,
        recovery: &Recovery,
        after: Option<String>,
        chunk: usize,
    ) -> StoreResult<(Vec<Delivery>, Option<String>)> {
        let recovery = recovery.clone();
        self.write(move |c| queue::recover(c, &recovery, after.as_deref(), chunk.max(1))).await
    }
    async fn promote_lanes(&self, lanes: Vec<(String, String)>, now: UnixMs) -> StoreResult<usize> {
        self.write_in(Lane::Background, move |c| queue::promote_lanes(c, &lanes, now)).await
    }
    async fn waiting_lanes(&self, after: (String, String), limit: usize) -> StoreResult<Vec<(String, String, bool)>> {
        self.read(move |c| queue::waiting_lanes(c, &after, limit)).await
    }
    async fn skip_delivery(&self, app_id: &str, msg_id: &str, endpoint_id: &str, now: UnixMs) -> StoreResult<Delivery> {
        let (app_id, msg_id, endpoint_id) = (app_id.to_owned(), msg_id.to_owned(), endpoint_id.to_owned());
        self.write(move |c| queue::skip(c, &app_id, &msg_id, &endpoint_id, now)).await
    }
    async fn close_stranded(&self, msg_id: &str, id: &str, now: UnixMs) -> StoreResult<bool> {
        let (msg_id, id) = (msg_id.to_owned(), id.to_owned());
        self.write_in(Lane::Background, move |c| queue::close_stranded(c, &msg_id, &id, now)).await
    }
    async fn ordering_lanes(
        &self,
        endpoint_id: &str,
        key: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<OrderingLane>> {
        let (endpoint_id, key) = (endpoint_id.to_owned(), key.map(str::to_owned));
        self.read(move |c| queue::ordering_lanes(c, &endpoint_id, key.as_deref(), limit)).await
    }
    async fn deliveries_of_message(&self, app_id: &str, msg_id: &str, page: Page) -> StoreResult<Listed<DeliveryView>> {
        let (app_id, msg_id) = (app_id.to_owned(), msg_id.to_owned());
        self.write_out_fanouts().await?;
        let listed = self.read(move |c| queue::deliveries_of_message(c, &app_id, &msg_id, &page)).await?;
        self.sealer.open_views(listed)
    }
    async fn deliveries_of_endpoint(
        &self,
        app_id: &str,
        endpoint_id: &str,
        filter: ListFilter,
        page: Page,
    ) -> StoreResult<Listed<DeliveryView>> {
        let (app_id, endpoint_id) = (app_id.to_owned(), endpoint_id.to_owned());
        self.write_out_fanouts().await?;
        self.read(move |c| queue::deliveries_of_endpoint(c, &app_id, &endpoint_id, &filter, &page)).await
    }
    async fn list_attempts(
        &self,
        app_id: &str,
        scope: AttemptScope<'_>,
        filter: ListFilter,
        page: Page,
    ) -> StoreResult<Listed<Attempt>> {
        let app_id = app_id.to_owned();
        let (by_endpoint, key) = match scope {
            AttemptScope::Endpoint(k) => (true, k.to_owned()),
            AttemptScope::Message(k) => (false, k.to_owned()),
        };
        self.read(move |c| {
            let scope = if by_endpoint { AttemptScope::Endpoint(&key) } else { AttemptScope::Message(&key) };
            queue::list_attempts(c, &app_id, scope, &filter, &page)
        })
        .await
    }
    async fn get_attempt(&self, app_id: &str, msg_id: &str, attempt_id: &str) -> StoreResult<Attempt> {
        let (app_id, msg_id, attempt_id) = (app_id.to_owned(), msg_id.to_owned(), attempt_id.to_owned());
        self.read(move |c| queue::get_attempt(c, &app_id, &msg_id, &attempt_id)).await
    }

    async fn create_source(&self, source: Source) -> StoreResult<Source> {
        let sealed = self.sealer.seal_source(source.clone());
        self.write(move |c| resources::insert_source(c, &sealed)).await.map(|_| source)
    }
    async fn get_source(&self, key: Key<'_>) -> StoreResult<Source> {
        let key = key.to_owned();
        self.read(move |c| resources::get_source(c, &key)).await.and_then(|s| self.sealer.open_source(s))
    }
    async fn list_sources(&self, page: Page) -> StoreResult<Listed<Source>> {
        let listed = self.read(move |c| resources::list_sources(c, &page)).await?;
        self.sealer.open_all(listed, Sealer::open_source)
    }
    async fn update_source(&self, source: Source) -> StoreResult<Source> {
        let sealed = self.sealer.seal_source(source.clone());
        self.write(move |c| resources::update_source(c, &sealed)).await.map(|_| source)
    }
    async fn delete_source(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |c| resources::delete_source(c, &id)).await
    }
    async fn list_source_messages(&self, source_id: &str, page: Page) -> StoreResult<Listed<Message>> {
        let source_id = source_id.to_owned();
        self.read(move |c| queue::list_source_messages(c, &source_id, &page)).await
    }
    async fn purge_messages(&self, created_before: UnixMs, now: UnixMs, limit: usize) -> StoreResult<usize> {
        self.write_in(Lane::Background, move |c| queue::purge_messages(c, created_before, now, limit)).await
    }
    async fn purge_inbound_keys(&self, before: UnixMs, chunk: usize) -> StoreResult<usize> {
        self.purge_expired(&crate::columns::INBOUND_KEYS, before, chunk).await
    }

    async fn save_reconcile_run(&self, source_id: &str, started_at: UnixMs, run: String) -> StoreResult<()> {
        let source_id = source_id.to_owned();
        self.write_in(Lane::Background, move |c| resources::save_reconcile_run(c, &source_id, started_at, &run)).await
    }
    async fn reconcile_runs(&self, source_id: &str, limit: usize) -> StoreResult<Vec<String>> {
        let source_id = source_id.to_owned();
        self.read(move |c| resources::reconcile_runs(c, &source_id, limit)).await
    }
    async fn add_stats(&self, rows: Vec<StatRow>) -> StoreResult<()> {
        self.write_in(Lane::Background, move |c| stats::add(c, &rows)).await
    }
    async fn stats_of(&self, scope: StatScope<'_>, since: UnixMs, until: UnixMs) -> StoreResult<Vec<StatRow>> {
        // The read runs on another thread: the scope goes there owned.
        let (kind, key) = match scope {
            StatScope::One(id) => (0, id.to_owned()),
            StatScope::EndpointsOf(app_id) => (1, app_id.to_owned()),
            StatScope::Endpoints => (2, String::new()),
        };
        self.read(move |c| {
            let scope = match kind {
                0 => StatScope::One(&key),
                1 => StatScope::EndpointsOf(&key),
                _ => StatScope::Endpoints,
            };
            stats::of(c, scope, since, until)
        })
        .await
    }
    async fn roll_up_stats(&self, minutes_before: UnixMs, drop_before: UnixMs, limit: usize) -> StoreResult<usize> {
        self.write_in(Lane::Background, move |c| stats::roll_up(c, minutes_before, drop_before, limit)).await
    }
    async fn delivery_counts(
        &self,
        endpoint_id: &str,
        since: UnixMs,
        until: UnixMs,
    ) -> StoreResult<Vec<(hookline_core::delivery::DeliveryState, u64)>> {
        let endpoint_id = endpoint_id.to_owned();
        self.write_out_fanouts().await?;
        self.read(move |c| stats::delivery_counts(c, &endpoint_id, since, until)).await
    }

    async fn idempotent_response(&self, key: &str, since: UnixMs) -> StoreResult<Option<IdempotentResponse>> {
        let key = key.to_owned();
        self.read(move |c| queue::idempotent_response(c, &key, since)).await
    }
    async fn reserve_idempotency_key(
        &self,
        key: &str,
        fingerprint: [u8; 32],
        token: [u8; 16],
        now: UnixMs,
        since: UnixMs,
        stale_before: UnixMs,
    ) -> StoreResult<Reservation> {
        // The acknowledged lane: the background one may hold a backlog of attempt records,
        // which a publish's reservation must not wait behind.
        let key = key.to_owned();
        self.write(move |c| queue::reserve_idempotency_key(c, &key, &fingerprint, &token, now, since, stale_before))
            .await
    }
    async fn release_idempotency_key(&self, key: &str, token: [u8; 16]) -> StoreResult<()> {
        let key = key.to_owned();
        self.write(move |c| queue::release_idempotency_key(c, &key, &token)).await
    }
    async fn save_idempotent_response(&self, response: IdempotentResponse) -> StoreResult<()> {
        self.write(move |c| queue::save_idempotent_response(c, &response)).await
    }
    async fn purge_idempotent_responses(&self, before: UnixMs, chunk: usize) -> StoreResult<usize> {
        self.purge_expired(&crate::columns::IDEMPOTENCY, before, chunk).await
    }
    async fn tokens(&self) -> StoreResult<Vec<Token>> {
        self.read(queue::tokens).await
    }
    async fn ping(&self) -> StoreResult<()> {
        // Nothing written: a commit with nothing in it, unsynced.
        self.write_in(Lane::Background, |_| Ok(())).await
    }
    async fn add_token(&self, token: Token) -> StoreResult<()> {
        self.write(move |c| queue::add_token(c, &token)).await
    }
    async fn delete_token(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |c| queue::delete_token(c, &id)).await
    }
    async fn failing_endpoints(&self, limit: usize) -> StoreResult<Vec<Endpoint>> {
        let endpoints = self.read(move |c| resources::failing_endpoints(c, limit)).await?;
        endpoints.into_iter().map(|e| self.sealer.open_endpoint(e)).collect()
    }
    async fn add_session(&self, session: DashboardSession) -> StoreResult<()> {
        self.write(move |c| resources::add_session(c, &session)).await
    }
    async fn session(&self, id: [u8; 32], now: UnixMs) -> StoreResult<Option<DashboardSession>> {
        self.read(move |c| resources::session(c, &id, now)).await
    }
    async fn use_link(&self, link_id: [u8; 32], session: DashboardSession) -> StoreResult<Option<DashboardSession>> {
        self.write(move |c| resources::use_link(c, &link_id, &session)).await
    }
    async fn delete_session(&self, id: [u8; 32]) -> StoreResult<()> {
        self.write(move |c| {
            c.execute("DELETE FROM dashboard_sessions WHERE id = ?1", [&id[..]]).map_err(sql_error).map(|_| ())
        })
        .await
    }
    async fn queue_alert_email(&self, email: AlertEmail, app_max: usize, all_max: usize) -> StoreResult<u64> {
        self.write(move |c| alerts::queue(c, &email, app_max, all_max)).await
    }
    async fn take_alert_emails(&self, now: UnixMs, hold_ms: u64, limit: usize) -> StoreResult<Vec<AlertEmail>> {
        self.write_in(Lane::Background, move |c| alerts::take(c, now, hold_ms, limit)).await
    }
    async fn alert_email_tried(&self, id: &str, retry: Option<(u32, UnixMs)>) -> StoreResult<()> {
        let id = id.to_owned();
        self.write_in(Lane::Background, move |c| alerts::tried(c, &id, retry)).await
    }
    async fn count_alert_failures(&self, counts: Vec<AlertDigest>) -> StoreResult<()> {
        self.write_in(Lane::Background, move |c| alerts::count(c, &counts)).await
    }
    async fn take_alert_digests(&self, rules: DigestRules) -> StoreResult<DigestsTaken> {
        self.write_in(Lane::Background, move |c| alerts::take_digests(c, &rules)).await
    }
    async fn purge_sessions(&self, now: UnixMs) -> StoreResult<usize> {
        self.write(move |c| {
            c.execute("DELETE FROM dashboard_sessions WHERE expires_at <= ?1", [now]).map_err(sql_error)
        })
        .await
    }
    async fn expire_sessions(&self, app_id: &str, now: UnixMs, at: UnixMs) -> StoreResult<usize> {
        let app_id = app_id.to_owned();
        self.write(move |c| {
            c.execute(
                "UPDATE dashboard_sessions SET expires_at = CASE WHEN link THEN 0 ELSE ?3 END \
                 WHERE app_id = ?1 AND expires_at > CASE WHEN link THEN ?2 ELSE ?3 END",
                rusqlite::params![app_id, now, at],
            )
            .map_err(sql_error)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(c: &Connection) -> StoreResult<i64> {
        c.query_row("PRAGMA synchronous", [], |r| r.get(0)).map_err(sql_error)
    }

    /// An acknowledged write commits with the WAL synced (FULL, 2), alone or beside
    /// background writes; background writes alone commit without waiting (NORMAL, 1).
    #[tokio::test]
    async fn only_acknowledged_writes_wait_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), &[7; KEY_BYTES]).unwrap();
        assert_eq!(store.write_in(Lane::Background, synchronous).await.unwrap(), 1);
        assert_eq!(store.write(synchronous).await.unwrap(), 2);
        assert_eq!(store.write_in(Lane::Background, synchronous).await.unwrap(), 1);
        let (acknowledged, background) =
            tokio::join!(store.write(synchronous), store.write_in(Lane::Background, synchronous));
        assert_eq!(acknowledged.unwrap(), 2);
        assert!(matches!(background.unwrap(), 1 | 2), "in the acknowledged write's batch, or in one after it");
    }

    /// A job that panics ends the writer: its batch and every write queued or made after
    /// are answered with an error (they waited for ever).
    #[tokio::test]
    async fn a_panic_on_the_writer_fails_every_write_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path(), &[7; KEY_BYTES]).unwrap());
        assert_eq!(store.write(synchronous).await.unwrap(), 2);
        let held = std::sync::Arc::new(std::sync::Barrier::new(2));
        let holding = held.clone();
        let panicking = store.write(move |_| -> StoreResult<()> {
            holding.wait();
            panic!("a job's bug");
        });
        let queued = {
            let store = store.clone();
            tokio::spawn(async move { store.write(synchronous).await })
        };
        let released = tokio::task::spawn_blocking(move || {
            // The queued write is in the inbox behind the panicking job before it panics.
            std::thread::sleep(std::time::Duration::from_millis(50));
            held.wait();
        });
        let answers = async {
            let panicked = panicking.await;
            released.await.unwrap();
            (panicked, queued.await.unwrap(), store.write(synchronous).await)
        };
        let (panicked, queued, later) =
            tokio::time::timeout(std::time::Duration::from_secs(60), answers).await.expect("every write is answered");
        assert!(panicked.is_err() && queued.is_err() && later.is_err(), "{panicked:?} {queued:?} {later:?}");
    }

    /// Retention walks the expiring tables along their primary key, and deleting an
    /// application finds its rows through indexes: no statement scans a whole table or
    /// sorts it (`DELETE … WHERE created_at < ?` did, and deliveries and attempts by
    /// `app_id`, on the writer, for as long as the database is large).
    #[tokio::test]
    async fn retention_and_deletion_statements_use_keys_and_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), &[7; KEY_BYTES]).unwrap();
        let plans = store
            .read(|c| {
                let p: fn(usize) -> String = |i| format!("?{i}");
                let mut plans = Vec::new();
                // The tables that grow with traffic (sources, tokens and alerts are a few
                // rows an application), and a recover's steps.
                let walked = ["deliveries", "attempts", "fanouts", "messages"];
                let of_app = walked
                    .map(|table| crate::columns::delete_app_messages_sql(table, p))
                    .into_iter()
                    .chain([crate::columns::delete_app_stats_sql(p), crate::columns::app_rows_left_sql(p)])
                    .chain(["DELETE FROM endpoints WHERE app_id = ?1".into()])
                    .chain([
                        crate::columns::recover_span_sql(p),
                        crate::columns::recover_sql(p, queue::RESTART, false),
                        crate::columns::close_span_sql(p),
                    ]);
                let walks = [&crate::columns::INBOUND_KEYS, &crate::columns::IDEMPOTENCY]
                    .map(|table| [table.chunk_sql(false, p), table.delete_sql(false, p), table.delete_sql(true, p)]);
                {
                    for sql in walks.into_iter().flatten().chain(of_app) {
                        let mut explain = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).map_err(sql_error)?;
                        let nulls = vec![rusqlite::types::Null; explain.parameter_count()];
                        let details: Vec<String> = explain
                            .query_map(rusqlite::params_from_iter(nulls), |r| r.get(3))
                            .map_err(sql_error)?
                            .collect::<Result<_, _>>()
                            .map_err(sql_error)?;
                        plans.push((sql, details.join("; ")));
                    }
                }
                Ok(plans)
            })
            .await
            .unwrap();
        for (sql, plan) in plans {
            // Every table searched through a key or an index, none scanned whole or sorted
            // (`s` is a recover step's span, a subquery of at most a chunk of rows; a
            // constant row is a `SELECT` without a table).
            let scans = plan
                .split("; ")
                .any(|step| step.starts_with("SCAN") && !["SCAN s", "SCAN CONSTANT ROW"].contains(&step));
            assert!(!scans && !plan.contains("TEMP B-TREE"), "{sql}: {plan}");
        }
    }

    /// Starts at once on a new data directory agree on one key, each finding it whole, and
    /// leave nothing beside it; with `create_new` on `secret.key` itself, a start could read
    /// the file another had created and not yet written (empty: refused as corrupt).
    #[test]
    fn starts_at_once_agree_on_one_whole_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let starts: Vec<_> = (0..8)
                .map(|_| {
                    let path = dir.path().to_owned();
                    std::thread::spawn(move || load_or_create_key(&path))
                })
                .collect();
            let keys: Vec<_> = starts.into_iter().map(|s| s.join().unwrap().unwrap()).collect();
            assert!(keys.windows(2).all(|pair| pair[0] == pair[1]), "one key");
            let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, ["secret.key"]);
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &dir.path().join("secret.key").metadata().unwrap().permissions(),
            );
            assert_eq!(mode & 0o777, 0o600);
            assert_eq!(load_or_create_key(dir.path()).unwrap(), keys[0]);
        }
    }

    /// 64 reads at once run at most `READERS_MAX` at a time (so on the pooled connections,
    /// never one opened per read), and all of them finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_storm_of_reads_runs_on_the_pooled_connections() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path(), &[7; KEY_BYTES]).unwrap());
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let reads: Vec<_> = (0..64)
            .map(|_| {
                let (store, running, most) = (store.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    store
                        .read(move |_| {
                            most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(5));
                            running.fetch_sub(1, Ordering::SeqCst);
                            Ok(())
                        })
                        .await
                })
            })
            .collect();
        for read in reads {
            read.await.unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= READERS_MAX, "{most} reads at once");
    }
}
