//! The HTTP server loop. Hookline runs its own accept loop on hyper-util so the transport
//! limits are its own to set: connections at once, header count and bytes, and how long a
//! client may take to send its request head and its body (a slowloris defence).
//!
//! HTTP/1.1 only. hyper's header-read timeout is an HTTP/1 setting: with hyper-util's
//! automatic version detection, its first read (to tell HTTP/1 from HTTP/2) had no timer,
//! so a connection that sent nothing held its slot for ever, and one that opened HTTP/2
//! escaped the head limits altogether.

use axum::Router;
use hyper::server::conn::http1::Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

/// Transport limits; see the `[server]` section of the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub headers_max: usize,
    pub header_bytes_max: usize,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// How long shutdown waits for open requests to finish.
    pub drain_ms: u64,
}

/// hyper refuses a read buffer smaller than this.
const BUFFER_BYTES_MIN: usize = 8_192;

/// hyper's own limit on head bytes is this many times the configured one: heads over the
/// configured limits get a JSON 431 (`head_too_large`), and hyper's bodiless 431 only
/// bounds the memory a head can take.
const HEAD_BACKSTOP_FACTOR: usize = 4;

/// hyper parses headers into a vector of `max_headers` slots, initialized for every
/// request and kept inline up to this many; a larger count costs a heap allocation and
/// the initialization of every slot per request (1,500 instructions at 256), so its count
/// limit is one over the configured one (answered in JSON here) or this, whichever is more.
const HYPER_INLINE_HEADERS: usize = 100;

/// Connections the kernel completes and queues before they are accepted; it caps this at
/// `net.core.somaxconn` (4,096 on current Linux). tokio's `bind` asks for 128: a burst of
/// publishers or a provider's retry storm beyond that meets dropped SYNs and a one-second
/// retransmission instead of an answer.
const LISTEN_BACKLOG: u32 = 4_096;

/// A JSON 431 for a request head over `headers_max` headers or `header_bytes_max` bytes,
/// counted as sent: request line, each `name: value` line, the blank line.
fn head_too_large<B>(request: &hyper::Request<B>, limits: &Limits) -> Option<axum::response::Response> {
    let headers = request.headers();
    // The whole target, its scheme and host too when sent in absolute form
    // (`GET http://host/path`): counting its path alone let a head of any size under the
    // backstop through.
    let uri = request.uri();
    let origin =
        uri.scheme_str().map_or(0, |s| s.len() + "://".len()) + uri.authority().map_or(0, |a| a.as_str().len());
    let target = origin + uri.path_and_query().map_or(1, |target| target.as_str().len());
    let line = request.method().as_str().len() + target + "  HTTP/1.1\r\n".len();
    let bytes = line + headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>() + 2;
    let over = headers.len() > limits.headers_max || bytes > limits.header_bytes_max;
    over.then(|| {
        let error = crate::error::ApiError::HeadTooLarge {
            headers_max: limits.headers_max,
            bytes_max: limits.header_bytes_max,
        };
        axum::response::IntoResponse::into_response(error)
    })
}

/// Binds the API listener with a deep accept queue.
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and lets
/// open requests finish for up to `limits.drain_ms`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_headers((limits.headers_max + 1).max(HYPER_INLINE_HEADERS))
        .max_buf_size((limits.header_bytes_max * HEAD_BACKSTOP_FACTOR).max(BUFFER_BYTES_MIN));
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
        let app = app.clone();
        let body_time = Duration::from_millis(limits.body_read_timeout_ms);
        // Checked here, before routing, at the cost of a header walk: a tower layer on the
        // router cost a boxed clone of the route per request (7,000 instructions a publish).
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let refused = head_too_large(&request, &limits);
            let request = request.map(|body| Deadline::new(body, body_time));
            let routed = TowerToHyperService::new(app.clone());
            async move {
                match refused {
                    Some(answer) => Ok(answer),
                    None => hyper::service::Service::call(&routed, request).await,
                }
            }
        });
        let stream = WriteDeadline::new(stream, Duration::from_millis(limits.write_timeout_ms));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_millis(limits.drain_ms), graceful.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 300 clients connect while nothing accepts: with tokio's backlog of 128 the rest would
    /// wait on SYN retransmissions; with ours every handshake completes.
    #[tokio::test]
    async fn a_burst_beyond_tokios_backlog_is_queued_not_dropped() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..300 {
            connects.spawn(tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(address)));
        }
        let mut open = Vec::new();
        while let Some(result) = connects.join_next().await {
            if let Ok(Ok(stream)) = result.unwrap() {
                open.push(stream);
            }
        }
        // The kernel caps the queue at somaxconn (4,096 by default since Linux 5.4).
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|v| v.trim().parse().ok());
        assert_eq!(open.len(), cap.map_or(300, |cap: usize| 300.min(cap + 1)));
        drop(listener);
    }
}

/// A connection whose writes fail (`TimedOut`) once one has waited `limit` for the client to
/// take bytes, which closes the connection: a client that stops reading (its pipelined
/// requests' answers filling the socket's buffers) otherwise held it, and its slot, for
/// good, the head and body timeouts never starting. The clock runs only while a write
/// waits; every write that goes through stops it.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> WriteDeadline<S> {
        WriteDeadline { inner, limit, timer: None }
    }

    /// `polled`, with the clock stopped when it is ready and started (or checked) when not.
    fn within<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read its answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.within(cx, polled)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.within(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.within(cx, polled)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_shutdown(cx);
        self.within(cx, polled)
    }
}

/// A request body that fails with [`BodyTimedOut`] if it has not ended `limit` after the
/// server first had to wait for it: a client dribbling a body would otherwise hold its
/// connection, and its slot, for good. The clock starts then, not at the head, so time the
/// server takes before reading is not the client's; and a body all there at once (a
/// publish's usually is) never makes a timer.
pub struct Deadline<B> {
    inner: B,
    limit: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Deadline<B> {
    fn new(inner: B, limit: Duration) -> Deadline<B> {
        Deadline { inner, limit, timer: None }
    }
}

/// The error a body read past its deadline ends with (answered 408 `request_timeout`).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

impl<B> hyper::body::Body for Deadline<B>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, axum::BoxError>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let limit = this.limit;
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
