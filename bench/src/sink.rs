//! The sink: an HTTP server that records when each `webhook-id` arrives, and answers after
//! a delay and with a status chosen by the path: `/s/{delay_ms}/{status}` (or `/p/...`,
//! which records the payload's `id` instead).

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Arrivals {
    /// Arrival times per message id (more than one means duplicates).
    pub by_id: Mutex<HashMap<String, Vec<Instant>>>,
    pub in_flight: AtomicUsize,
    pub in_flight_max: AtomicUsize,
    pub total: AtomicUsize,
}

impl Arrivals {
    pub fn count(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    pub fn clear(&self) {
        self.by_id.lock().unwrap().clear();
        self.total.store(0, Ordering::SeqCst);
        self.in_flight_max.store(0, Ordering::SeqCst);
    }
}

/// The sink's listen backlog; the kernel caps it at `net.core.somaxconn`.
const SINK_BACKLOG: u32 = 65_535;

pub struct Sink {
    pub url: String,
    pub arrivals: Arc<Arrivals>,
}

impl Sink {
    pub async fn start() -> anyhow::Result<Sink> {
        let arrivals = Arc::new(Arrivals::default());
        let (by_header, by_payload) = (arrivals.clone(), arrivals.clone());
        let app = axum::Router::new()
            .route(
                "/s/{delay_ms}/{status}",
                axum::routing::post(move |Path((delay_ms, status)): Path<(u64, u16)>, headers: HeaderMap| {
                    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    answer(by_header.clone(), id, delay_ms, status)
                }),
            )
            .route(
                "/p/{delay_ms}/{status}",
                axum::routing::post(move |Path((delay_ms, status)): Path<(u64, u16)>, body: axum::body::Bytes| {
                    let payload: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let id = payload["id"].as_str().map(str::to_owned);
                    answer(by_payload.clone(), id, delay_ms, status)
                }),
            );
        // The sink runs on its own runtime and threads, as a separate server would: sharing
        // the load generator's runtime would make the generator's publishes queue behind
        // the sink's work and inflate the publish latencies it measures.
        // A backlog as deep as the system allows (somaxconn), as a production server sets it:
        // a burst of new connections from the gateway must not meet SYN drops and the
        // one-second retransmission that follows, which would measure the sink, not Hookline.
        let (bound, address) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("bench-sink".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("sink runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpSocket::new_v4()
                    .and_then(|socket| {
                        socket.bind("127.0.0.1:0".parse().expect("an address"))?;
                        socket.listen(SINK_BACKLOG)
                    })
                    .expect("sink listener");
                let _ = bound.send(listener.local_addr().expect("sink address"));
                let _ = axum::serve(listener, app).await;
            });
        })?;
        let url = format!("http://{}", address.recv()?);
        Ok(Sink { url, arrivals })
    }

    pub fn path(&self, delay_ms: u64, status: u16) -> String {
        format!("{}/s/{delay_ms}/{status}", self.url)
    }

    /// Like `path`, but arrivals are recorded by the payload's `id` field rather than the
    /// `webhook-id` header (messages whose Hookline id the load generator never sees).
    pub fn payload_path(&self, delay_ms: u64, status: u16) -> String {
        format!("{}/p/{delay_ms}/{status}", self.url)
    }
}

/// Records one arrival under `id`, answers after `delay_ms` with `status`.
async fn answer(arrivals: Arc<Arrivals>, id: Option<String>, delay_ms: u64, status: u16) -> StatusCode {
    let now = Instant::now();
    let current = arrivals.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    arrivals.in_flight_max.fetch_max(current, Ordering::SeqCst);
    if let Some(id) = id {
        arrivals.by_id.lock().unwrap().entry(id).or_default().push(now);
    }
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    arrivals.in_flight.fetch_sub(1, Ordering::SeqCst);
    arrivals.total.fetch_add(1, Ordering::SeqCst);
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}
