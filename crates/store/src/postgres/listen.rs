//! The `LISTEN` connection: one per node, outside the pool, turning notifications on
//! [`CHANNEL`] into [`Change`]s. After a lost connection it reconnects with backoff and
//! tells [`Change::Flush`], since notifications sent meanwhile are gone.

use super::{Server, CHANNEL};
use crate::Change;
use futures_util::{stream, StreamExt};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 5_000;

pub async fn run(server: Server, changes: broadcast::Sender<Change>) {
    let mut backoff_ms = BACKOFF_MIN_MS;
    let mut connected_before = false;
    loop {
        match listen_once(&server, &changes, &mut connected_before).await {
            Ok(()) => backoff_ms = BACKOFF_MIN_MS,
            Err(e) => {
                tracing::warn!(error = %e, retry_ms = backoff_ms, "change notifications: connection lost");
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
            }
        }
    }
}

/// Listens until the connection ends.
async fn listen_once(
    server: &Server,
    changes: &broadcast::Sender<Change>,
    connected_before: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = server.connect().await?;
    let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    // The connection must be polled for the LISTEN to complete.
    loop {
        tokio::select! {
            done = &mut listen => { done?; break; }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
    if *connected_before {
        let _ = changes.send(Change::Flush);
    }
    *connected_before = true;
    while let Some(message) = messages.next().await {
        if let AsyncMessage::Notification(note) = message? {
            if let Some(change) = parse(note.payload()) {
                let _ = changes.send(change);
            }
        }
    }
    Ok(())
}

fn parse(payload: &str) -> Option<Change> {
    Some(match payload {
        "sources" => Change::Sources,
        "tokens" => Change::Tokens,
        "due" => Change::Due,
        "flush" => Change::Flush,
        other => Change::App(other.strip_prefix("app:")?.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_table() {
        let cases = [
            ("app:app_1", Some(Change::App("app_1".into()))),
            ("sources", Some(Change::Sources)),
            ("tokens", Some(Change::Tokens)),
            ("due", Some(Change::Due)),
            ("flush", Some(Change::Flush)),
            ("nonsense", None),
        ];
        for (payload, expected) in cases {
            assert_eq!(parse(payload), expected, "{payload}");
        }
    }
}
