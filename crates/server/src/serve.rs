//! The HTTP server loop. Hookline runs its own accept loop on hyper-util so the transport
//! limits are its own to set: connections at once, header count and bytes, and how long a
//! client may take to send its request head (a slowloris defence).

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Transport limits; see the `[server]` section of the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub headers_max: usize,
    pub header_bytes_max: usize,
    pub header_read_timeout_ms: u64,
    /// How long shutdown waits for open requests to finish.
    pub drain_ms: u64,
}

/// hyper refuses a read buffer smaller than this.
const BUFFER_BYTES_MIN: usize = 8_192;

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and lets
/// open requests finish for up to `limits.drain_ms`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_headers(limits.headers_max)
        .max_buf_size(limits.header_bytes_max.max(BUFFER_BYTES_MIN));
    let graceful = GracefulShutdown::new();
    // A connection over the limit waits in the kernel's backlog until a slot frees up.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the slot semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection =
            graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_millis(limits.drain_ms), graceful.shutdown()).await;
    Ok(())
}
