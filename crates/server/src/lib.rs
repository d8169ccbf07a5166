//! Hookline's server: the management API, the delivery engine and the SSRF-safe client,
//! started by one entry point, [`run`], which takes its listener, clock and shutdown
//! signal from the caller.

pub mod alerts;
pub mod api;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod dispatch;
pub mod error;
pub mod housekeeping;
pub mod ingest;
pub mod metrics;
pub mod openapi;
pub mod reconcile;
pub mod serve;
pub mod stats;
pub mod wire;

use crate::api::{hash_token, AppState};
use crate::clock::Clock;
use crate::config::Config;
use crate::dispatch::Engine;
use hookline_core::id::prefix;
use hookline_store::{Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
}

/// A new id of kind `prefix`, made at `now`. Ids of one process sort in creation order,
/// even within one millisecond, so they serve as pagination iterators.
pub fn new_id(prefix: &str, now: hookline_core::UnixMs) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let random = hookline_core::id::counted_random(COUNTER.fetch_add(1, Ordering::Relaxed), rand::random());
    hookline_core::id::new_id(prefix, now, random)
}

/// Where this node's admin token comes from, as settled at start.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminToken {
    /// Made now (first start, nothing configured): shown once, stored hashed.
    Generated(String),
    /// The one made at an earlier start.
    Stored,
    /// `api.admin_token`; `retired` generated tokens were deleted in its favour.
    Configured { retired: usize },
}

/// Makes sure an admin token exists. With `api.admin_token` set, a token generated at an
/// earlier start is deleted: setting one is how an operator replaces a generated token that
/// leaked, and the API cannot delete an admin token.
pub async fn ensure_admin_token(
    store: &dyn Store,
    config: &Config,
    clock: &dyn Clock,
) -> Result<AdminToken, StoreError> {
    let stored: Vec<_> = store.tokens().await?.into_iter().filter(|t| t.app_id.is_none()).collect();
    if config.api.admin_token.is_some() {
        for token in &stored {
            store.delete_token(&token.id).await?;
        }
        return Ok(AdminToken::Configured { retired: stored.len() });
    }
    if !stored.is_empty() {
        return Ok(AdminToken::Stored);
    }
    let token = format!("hk_admin_{}", hex::encode(rand::random::<[u8; 24]>()));
    let now = clock.now_ms();
    let record = hookline_store::Token {
        id: new_id(prefix::TOKEN, now),
        hash: hash_token(&token),
        app_id: None,
        created_at: now,
    };
    store.add_token(record).await?;
    Ok(AdminToken::Generated(token))
}

/// Makes sure the internal application that holds the operational webhook endpoints
/// exists (several nodes starting at once: whichever creates it first wins).
pub async fn ensure_operational_app(store: &dyn Store, clock: &dyn Clock) -> Result<(), StoreError> {
    match store.get_app(hookline_store::OPERATIONAL_APP_ID).await {
        Err(StoreError::NotFound) => {}
        other => return other.map(|_| ()),
    }
    let now = clock.now_ms();
    let app = hookline_store::App {
        id: hookline_store::OPERATIONAL_APP_ID.to_owned(),
        uid: None,
        name: "Hookline operational webhooks".to_owned(),
        throttle_rate: None,
        metadata: Default::default(),
        retry_policy: None,
        secret: api::new_secret().as_str().to_owned(),
        previous_secrets: Vec::new(),
        created_at: now,
        updated_at: now,
        alert_email: None,
    };
    match store.create_app(app).await {
        Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Options for embedding and tests.
#[derive(Default)]
pub struct RunOptions {
    /// Seeds the retry jitter so schedules are reproducible.
    pub jitter_seed: Option<u64>,
    /// A runtime for the delivery engine (its scheduler and every delivery), apart from the
    /// API's, so that however much is being delivered, requests are answered at once.
    /// `hookline serve` makes one (`delivery.threads`); without it the engine shares the
    /// caller's runtime.
    pub delivery_runtime: Option<tokio::runtime::Handle>,
}

/// Serves the API on `listener` and delivers until `shutdown` resolves; then stops
/// accepting, lets in-flight deliveries finish up to the grace period, and returns.
pub async fn run(
    config: Config,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: RunOptions,
) -> Result<(), ServerError> {
    // Install the recorder before anything records, or early metrics are lost.
    let _ = metrics::handle();
    let tokens = housekeeping::load_tokens(store.as_ref(), &config).await?;
    ensure_operational_app(store.as_ref(), clock.as_ref()).await?;
    let addresses = config.address_policy();
    let state_grace_ms = config.delivery.shutdown_grace_ms;
    let limits = serve::Limits {
        max_connections: config.server.max_connections,
        headers_max: config.server.headers_max,
        header_bytes_max: config.server.header_bytes_max,
        header_read_timeout_ms: config.server.header_read_timeout_ms,
        body_read_timeout_ms: config.server.body_read_timeout_ms,
        write_timeout_ms: config.server.write_timeout_ms,
        drain_ms: config.delivery.shutdown_grace_ms,
    };
    let start = Engine::start(
        store.clone(),
        clock.clone(),
        config.delivery.clone(),
        config.cluster.clone(),
        addresses.clone(),
        options.jitter_seed,
        alerts::Mailer::new(&config.alerts, store.clone(), clock.clone()).map_err(ServerError::Config)?,
    );
    let engine = match options.delivery_runtime {
        // Started there, the engine's tasks (its scheduler, every delivery) live there.
        Some(runtime) => match runtime.spawn(start).await {
            Ok(started) => started?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(ServerError::Config(format!("the delivery runtime stopped: {e}"))),
        },
        None => start.await?,
    };
    let consumers =
        ingest::queue::Consumers::start(&config, ingest::queue::Ingestor::new(&config, engine.clone(), clock.clone()));
    let state = Arc::new(AppState {
        store,
        clock,
        engine: engine.clone(),
        config,
        addresses,
        tokens: std::sync::RwLock::new(tokens),
        rejections: Default::default(),
        rate_buckets: Default::default(),
        idempotency_in_flight: Default::default(),
        queues: consumers.statuses.clone(),
        health: Default::default(),
    });
    let background = [
        tokio::spawn(housekeeping::follow_changes(state.clone())),
        tokio::spawn(housekeeping::lead_and_retain(state.clone())),
        tokio::spawn(housekeeping::sweep_deleted_series(state.clone())),
    ];
    let app = api::router(state);
    tracing::info!(listen = %listener.local_addr()?, "hookline is ready");
    serve::serve(listener, app, limits, shutdown).await?;
    tracing::info!(in_flight = engine.in_flight(), "stopped accepting; finishing in-flight deliveries");
    // Writes whose client went away finish while the engine still runs.
    engine.detached.wait(std::time::Duration::from_millis(state_grace_ms)).await;
    // Consumers stop first: what they are storing is committed and acknowledged while
    // the engine still runs.
    consumers.shutdown(std::time::Duration::from_millis(state_grace_ms)).await;
    for task in background {
        task.abort();
    }
    engine.shutdown().await;
    Ok(())
}
