//! Helpers shared by the real-binary test files: a free port, waiting for health, and a
//! sink that records each delivery's `webhook-id`.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub async fn wait_healthy(http: &reqwest::Client, url: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = http.get(format!("{url}/api/v1/health")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "hookline never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An endpoint that records the `webhook-id` of every delivery it answers; while `hold`
/// is set it never answers (deliveries stay in flight).
pub async fn recording_sink(hold: Arc<AtomicBool>, seen: Arc<Mutex<HashSet<String>>>) -> String {
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let (hold, seen) = (hold.clone(), seen.clone());
        async move {
            if hold.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            seen.lock().unwrap().insert(id);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}
