//! Time as an input. The server asks a `Clock` for the time and to sleep; tests pass a
//! `ManualClock` and move time forward in milliseconds, so days of retries run instantly.

use hookline_core::UnixMs;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::watch;

pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> UnixMs;
    /// Resolves once `now_ms() >= at`.
    fn sleep_until(&self, at: UnixMs) -> Sleep<'_>;
}

/// Wall-clock time.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMs {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as UnixMs).unwrap_or(0)
    }

    fn sleep_until(&self, at: UnixMs) -> Sleep<'_> {
        let wait_ms = (at - self.now_ms()).max(0) as u64;
        Box::pin(tokio::time::sleep(std::time::Duration::from_millis(wait_ms)))
    }
}

/// Time that moves only when a test says so.
pub struct ManualClock {
    now: AtomicI64,
    ticks: watch::Sender<UnixMs>,
}

impl ManualClock {
    pub fn new(start: UnixMs) -> ManualClock {
        ManualClock { now: AtomicI64::new(start), ticks: watch::channel(start).0 }
    }

    pub fn advance(&self, by_ms: i64) {
        let now = self.now.fetch_add(by_ms, Ordering::SeqCst) + by_ms;
        self.ticks.send_replace(now);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMs {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, at: UnixMs) -> Sleep<'_> {
        let mut ticks = self.ticks.subscribe();
        Box::pin(async move {
            while self.now_ms() < at {
                if ticks.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}
