//! The outbound HTTP client. Every address it connects to passes the address rules at
//! connect time: names through a guarded resolver, IP literals before the request, so DNS
//! rebinding cannot reach a private network. Redirects are never followed.

use super::http1::{self, Failure};
use bytes::Bytes;
use hookline_core::classify::{parse_retry_after, Outcome};
use hookline_core::ssrf::AddressPolicy;
use hookline_core::UnixMs;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::rustls;

/// Idle connections kept in all: a gateway sending to many hosts must keep file
/// descriptors for its in-flight deliveries. One origin may hold all of them while no other
/// origin needs room (a burst to a platform hosting many merchants' endpoints); a
/// connection returned to a full pool takes the place of the oldest one of the origin
/// holding the most, so no origin is shut out. A fixed share per origin (1,024) closed
/// thousands of connections after each burst to one host, and opened them again for the
/// next: `fanout` 1.2x deliveries/s without it (bench/README.md).
const IDLE_MAX: usize = 4096;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the pool looks for idle connections that expired or that their server closed.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Exchanges one origin runs at once before a request that finds no idle connection to it
/// waits for one to come back rather than opening another, while the origin answers
/// quickly. A burst of thousands of deliveries to one host (a fan-out to many endpoints on
/// one platform) then reuses about this many connections instead of opening one per
/// delivery: `fanout` 1.25-1.33x deliveries/s (bench/README.md).
const ORIGIN_SHARE: usize = 1024;
/// How often the requests waiting for connections to an origin are looked at (`watch_stalls`).
/// An origin whose quickest recent exchange took longer than this is not held to its share:
/// more connections are how a slow endpoint gets more done.
const STALL: Duration = Duration::from_millis(100);
/// A request waits for a connection to come back only while the connections coming back
/// would reach it within this many looks (1 s), and never longer than that.
const WAIT_LOOKS: u32 = 10;
/// The quickest exchange is kept per window of this length, this one and the one before.
const QUICKEST_WINDOW: Duration = Duration::from_secs(1);
/// How soon after a request began to go out on a reused connection a close without an
/// answer is taken for the server closing the idle connection (a round trip and the
/// request's own sending), and the request sent again on a fresh one. A close later than
/// this came after the server read the request, maybe acted on it: it is a failed attempt,
/// retried on the schedule, not sent again at once.
const STALE_CLOSE_WINDOW: Duration = Duration::from_secs(1);
/// Name lookups running at once. Each holds a blocking thread (the system resolver) for as
/// long as the resolver tries, and the delivery runtime shares its blocking threads with
/// the SQLite store's reads: a domain whose name servers never answer, given many
/// endpoints, took them all.
const LOOKUPS_MAX: usize = 64;
static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(LOOKUPS_MAX);

const USER_AGENT: &str = concat!("Hookline/", env!("CARGO_PKG_VERSION"));

/// A connection to an endpoint, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether TLS holds bytes decrypted and not read, after a complete response: something
    /// the server sent unasked, which the next request on this connection would read as
    /// its answer (the idle check looks at the socket only).
    fn holds_unread(&mut self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(tls) => match tls.get_mut().1.process_new_packets() {
                Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
                Err(_) => true,
            },
        }
    }

    /// Whether an idle connection can carry a request: the server has neither closed it nor
    /// sent anything unasked (a TLS close_notify, a stray response).
    fn is_idle_open(&self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(self.tcp().poll_peek(&mut cx, &mut buf), Poll::Pending)
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Keep-alive connections waiting for their next request, by origin.
struct Pool {
    /// Oldest first.
    idle: HashMap<String, VecDeque<(Stream, Instant)>>,
    /// Connections in `idle`, all origins together.
    count: usize,
    max: usize,
    swept: Option<Instant>,
    /// Per origin: exchanges running and requests waiting for a connection to come back.
    demand: HashMap<String, Demand>,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool { idle: HashMap::new(), count: 0, max: IDLE_MAX, swept: None, demand: HashMap::new() }
    }
}

/// What one origin is asked for beyond its idle connections.
#[derive(Default)]
struct Demand {
    /// Exchanges running on the origin's connections, or opening one.
    running: usize,
    /// Requests waiting for a connection to come back, oldest first, with when each began.
    waiting: VecDeque<(Instant, oneshot::Sender<Stream>)>,
    /// Connections that came back since the watcher last looked.
    returns: usize,
    /// The quickest exchange that gave its connection back in the current window (which
    /// started at `window`) and in the one before: the origin's own time to answer, which the
    /// queueing of a busy gateway lengthens for most exchanges but not for all.
    quickest: Duration,
    quickest_before: Duration,
    window: Option<Instant>,
    /// Whether a watcher runs for the waiting requests (`watch_stalls`).
    watched: bool,
}

impl Demand {
    /// Whether every exchange that gave its connection back over the last one or two windows
    /// took longer than `stall`: more connections are then how the origin gets more done, so
    /// no request waits for one to come back.
    fn slow(&self, stall: Duration) -> bool {
        self.window.is_some() && self.quickest.min(self.quickest_before) > stall
    }

    /// A connection came back `now` from an exchange that took `took`.
    fn answered_in(&mut self, now: Instant, took: Duration) {
        self.returns += 1;
        match self.window.map(|start| now.duration_since(start)) {
            Some(age) if age < QUICKEST_WINDOW => self.quickest = self.quickest.min(took),
            age => {
                // The window before counts only if it ended just now.
                let recent = age.is_some_and(|age| age < 2 * QUICKEST_WINDOW);
                self.quickest_before = if recent { self.quickest } else { Duration::MAX };
                self.quickest = took;
                self.window = Some(now);
            }
        }
    }

    /// One look of the watcher (`watch_stalls`) at the requests waiting: those the
    /// connections that came back since the last look would not reach within `WAIT_LOOKS`
    /// looks (the newest), those waiting longer than that, and all when the origin is slow,
    /// open their own. Returns whether any still waits.
    fn look(&mut self, stall: Duration) -> bool {
        self.waiting.retain(|(_, waiter)| !waiter.is_closed());
        let reach = if self.slow(stall) { 0 } else { self.returns * WAIT_LOOKS as usize };
        self.returns = 0;
        // Dropped, a waiting request's sender wakes it to connect.
        while self.waiting.front().is_some_and(|(since, _)| since.elapsed() >= stall * WAIT_LOOKS) {
            self.waiting.pop_front();
        }
        self.waiting.truncate(reach);
        !self.waiting.is_empty()
    }

    /// Lets the oldest waiting request open its own connection (dropped, its sender wakes it).
    fn release_oldest(&mut self) {
        while let Some((_, waiter)) = self.waiting.pop_front() {
            if !waiter.is_closed() {
                break;
            }
        }
    }
}

impl Pool {
    /// The most recently used open connection to `origin`.
    fn take(&mut self, origin: &str) -> Option<Stream> {
        self.sweep();
        let list = self.idle.get_mut(origin)?;
        let mut found = None;
        while let Some((stream, since)) = list.pop_back() {
            self.count -= 1;
            if since.elapsed() < IDLE_TIMEOUT && stream.is_idle_open() {
                found = Some(stream);
                break;
            }
        }
        if list.is_empty() {
            self.idle.remove(origin);
        }
        found
    }

    /// Counts an exchange to `origin` as running from now, before its connection is taken or
    /// opened, so a burst cannot open past the origin's share while its connects are under
    /// way.
    fn start(&mut self, origin: &str) {
        match self.demand.get_mut(origin) {
            Some(demand) => demand.running += 1,
            None => {
                self.demand.insert(origin.to_owned(), Demand { running: 1, ..Demand::default() });
            }
        }
    }

    /// An exchange to `origin` ended without giving its connection back: the oldest waiting
    /// request opens one in its place.
    fn finish(&mut self, origin: &str) {
        if let Some(demand) = self.demand.get_mut(origin) {
            demand.running = demand.running.saturating_sub(1);
            demand.release_oldest();
        }
    }

    /// Whether a request to `origin` that found no idle connection waits for one to come
    /// back: the origin runs its share of exchanges and answers quickly.
    fn must_wait(&self, origin: &str, share: usize, stall: Duration) -> bool {
        self.demand.get(origin).is_some_and(|demand| demand.running >= share && !demand.slow(stall))
    }

    /// Gives back the connection of an exchange to `origin` sent at `sent_at`: to the oldest
    /// request waiting for one (its exchange runs on), or to the pool. Returns the connection
    /// it displaced from a full pool, for the caller to close once the pool is unlocked.
    fn give_back(&mut self, origin: &str, mut stream: Stream, sent_at: Instant) -> Option<Stream> {
        if let Some(demand) = self.demand.get_mut(origin) {
            let now = Instant::now();
            demand.answered_in(now, now.saturating_duration_since(sent_at));
            while let Some((_, waiter)) = demand.waiting.pop_front() {
                match waiter.send(stream) {
                    Ok(()) => return None,
                    Err(back) => stream = back,
                }
            }
            demand.running = demand.running.saturating_sub(1);
        }
        self.put(origin, stream)
    }

    /// Keeps `stream` for its next request. Returns the connection it displaced from a full
    /// pool, for the caller to close once the pool is unlocked.
    fn put(&mut self, origin: &str, stream: Stream) -> Option<Stream> {
        let displaced = if self.count >= self.max { self.displace() } else { None };
        if self.count < self.max {
            match self.idle.get_mut(origin) {
                Some(list) => list.push_back((stream, Instant::now())),
                None => {
                    self.idle.insert(origin.to_owned(), VecDeque::from([(stream, Instant::now())]));
                }
            }
            self.count += 1;
        }
        displaced
    }

    /// Takes out the oldest idle connection of the origin holding the most. The scan runs
    /// only when room is needed (a full pool, or a connection to open beyond the budget),
    /// over the origins in the pool (an origin's list emptied here stays until the next
    /// sweep), and costs less than a connection closed and opened again.
    fn displace(&mut self) -> Option<Stream> {
        let list = self.idle.values_mut().max_by_key(|list| list.len())?;
        let (stream, _) = list.pop_front()?;
        self.count -= 1;
        Some(stream)
    }

    /// Closes expired idle connections, including those of origins no longer sent to, and
    /// those their server has closed (merchants' servers often close idle connections after
    /// 5-75 s; kept, each would hold a descriptor until it expired here).
    fn sweep(&mut self) {
        if self.swept.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
            return;
        }
        self.swept = Some(Instant::now());
        self.idle.retain(|_, list| {
            list.retain(|(stream, since)| since.elapsed() < IDLE_TIMEOUT && stream.is_idle_open());
            !list.is_empty()
        });
        self.count = self.idle.values().map(VecDeque::len).sum();
        self.demand.retain(|_, demand| demand.running > 0 || demand.watched);
    }
}

/// The pool, locked. After a panic while it was locked (none is known), its counts may be
/// off by what that step left undone, yet deliveries go on, rather than every later one
/// panicking on the poisoned lock, and a guard dropped while a task unwinds does not panic
/// again and abort the process. The first such lock is logged as an error.
fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|poisoned| {
        static LOGGED: std::sync::Once = std::sync::Once::new();
        LOGGED.call_once(|| tracing::error!("the delivery client's pool lock was poisoned by a panic; going on"));
        poisoned.into_inner()
    })
}

/// One exchange counted as running while it lives (its future may be dropped at a timeout).
struct Running<'a>(&'a AtomicUsize);

impl<'a> Running<'a> {
    fn enter(count: &'a AtomicUsize) -> Running<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Running(count)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An exchange counted as running on its origin until it ends, however it ends (its future
/// may be dropped at a timeout); one whose connection is given back ends in
/// `Pool::give_back` instead.
struct OnOrigin<'a> {
    pool: &'a Mutex<Pool>,
    origin: &'a str,
    counted: bool,
}

impl Drop for OnOrigin<'_> {
    fn drop(&mut self) {
        if self.counted {
            lock(self.pool).finish(self.origin);
        }
    }
}

/// A request waiting for a connection to come back. Dropped at a timeout just after one was
/// handed to it, it ends that connection's exchange, which `Pool::give_back` kept counted.
struct Waiting<'a> {
    receiver: oneshot::Receiver<Stream>,
    pool: &'a Mutex<Pool>,
    origin: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.receiver.close();
        if self.receiver.try_recv().is_ok() {
            lock(self.pool).finish(self.origin);
        }
    }
}

/// Why no response came back, before it is classified.
enum Problem {
    Blocked(String),
    Connect(String),
    Other(String),
}

pub struct DeliveryClient {
    policy: AddressPolicy,
    timeout: Duration,
    connect_timeout: Duration,
    response_bytes_max: usize,
    pool: Arc<Mutex<Pool>>,
    /// `ORIGIN_SHARE` and `STALL`, or others in tests.
    origin_share: usize,
    stall: Duration,
    /// Exchanges running now, each on a connection of its own.
    running: AtomicUsize,
    /// Connections open at most, running and idle together: `delivery.max_in_flight`, the
    /// share of the open-file limit deliveries were given (`settings::sized_for`).
    open_max: usize,
    /// Built on first use, so a gateway that only delivers over plain HTTP in development
    /// never pays for the root store.
    tls: OnceLock<tokio_rustls::TlsConnector>,
}

/// What one attempt produced.
pub struct Sent {
    pub outcome: Outcome,
    pub status_code: u16,
    pub response_excerpt: String,
    pub duration_ms: u64,
}

impl DeliveryClient {
    pub fn new(
        policy: AddressPolicy,
        request_timeout_ms: u64,
        connect_timeout_ms: u64,
        response_bytes_max: usize,
        open_max: usize,
    ) -> DeliveryClient {
        DeliveryClient {
            policy,
            timeout: Duration::from_millis(request_timeout_ms),
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            response_bytes_max,
            pool: Arc::default(),
            origin_share: ORIGIN_SHARE,
            stall: STALL,
            running: AtomicUsize::new(0),
            open_max,
            tls: OnceLock::new(),
        }
    }

    /// Trusts `roots` instead of Mozilla's (tests, with their own certificate authority).
    #[cfg(test)]
    fn trusting(self, roots: rustls::RootCertStore) -> DeliveryClient {
        let _ = self.tls.set(tls_connector(roots));
        self
    }

    #[cfg(test)]
    fn sharing(self, origin_share: usize, stall: Duration) -> DeliveryClient {
        DeliveryClient { origin_share, stall, ..self }
    }

    /// Lets go of idle connections that expired or that their server closed (at most once
    /// per 30 s). Taking a connection does this too; the engine's heartbeat calls it so that
    /// a gateway with nothing to send lets them go as well.
    pub fn sweep_idle(&self) {
        lock(&self.pool).sweep();
    }

    /// POSTs `body` to `url`; never fails, it reports what happened.
    pub async fn post(&self, url: &str, headers: &[(String, String)], body: Bytes, now: UnixMs) -> Sent {
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, self.exchange(url, headers, body)).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let (outcome, status_code, response_excerpt) = match result {
            Ok(Ok(response)) => {
                let retry_after_ms = response.retry_after.as_deref().and_then(|v| parse_retry_after(v, now));
                let excerpt = String::from_utf8_lossy(&response.excerpt).into_owned();
                (Outcome::Response { status: response.status, retry_after_ms }, response.status, excerpt)
            }
            Ok(Err(Problem::Blocked(why))) => (Outcome::BlockedAddress, 0, format!("address refused: {why}")),
            Ok(Err(Problem::Connect(why))) => (Outcome::Connect, 0, why),
            Ok(Err(Problem::Other(why))) => (Outcome::Other, 0, why),
            Err(_) => (Outcome::Timeout, 0, String::new()),
        };
        Sent { outcome, status_code, response_excerpt, duration_ms }
    }

    async fn exchange(&self, url: &str, headers: &[(String, String)], body: Bytes) -> Result<http1::Response, Problem> {
        let parsed = url::Url::parse(url).map_err(|_| Problem::Other("invalid URL".into()))?;
        let https = match parsed.scheme() {
            "https" => true,
            // Checked at each send, not only when the endpoint was saved: one saved in dev
            // mode, or while `network.allow_http` was on, went on receiving payloads,
            // signatures and credentials in the clear after either was turned off.
            "http" if self.policy.allow_plain_http => false,
            "http" => {
                let why = "plain http is not allowed (https only, unless network.allow_http is set)";
                return Err(Problem::Blocked(why.into()));
            }
            _ => return Err(Problem::Other("the URL is neither http nor https".into())),
        };
        let (Some(host), Some(port)) = (parsed.host(), parsed.port_or_known_default()) else {
            return Err(Problem::Other("the URL has no host".into()));
        };
        let host_header = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let origin = &format!("{}://{host}:{port}", parsed.scheme());
        let path = &parsed[url::Position::BeforePath..url::Position::AfterQuery];
        let path = if path.is_empty() { "/" } else { path };
        let head = http1::request_head(path, &host_header, USER_AGENT, headers, body.len()).map_err(Problem::Other)?;
        let mut running = Some(Running::enter(&self.running));
        let (pooled, waiting, displaced) = {
            let mut pool = lock(&self.pool);
            let pooled = pool.take(origin);
            let waiting = match pooled {
                None if pool.must_wait(origin, self.origin_share, self.stall) => {
                    let (sender, receiver) = oneshot::channel();
                    let demand = pool.demand.get_mut(origin).expect("counted");
                    demand.waiting.push_back((Instant::now(), sender));
                    let watch = !std::mem::replace(&mut demand.watched, true);
                    if watch {
                        demand.returns = 0;
                    }
                    Some((receiver, watch))
                }
                _ => None,
            };
            let displaced = match (&pooled, &waiting) {
                (Some(_), _) => {
                    pool.start(origin);
                    None
                }
                (None, None) => self.opening(&mut pool, origin),
                (None, Some(_)) => None,
            };
            (pooled, waiting, displaced)
        };
        drop(displaced);
        let mut on_origin = OnOrigin { pool: &self.pool, origin, counted: waiting.is_none() };
        let mut reused = pooled.is_some();
        let pooled = match waiting {
            None => pooled,
            Some((receiver, watch)) => {
                // Not counted as running while it waits: it holds no descriptor.
                drop(running.take());
                // Boxed: most exchanges never wait, and would carry this state otherwise.
                let handed = Box::pin(self.wait_for_connection(origin, receiver, watch)).await;
                running = Some(Running::enter(&self.running));
                on_origin.counted = true;
                if handed.is_none() {
                    // Let go: opens its own.
                    let displaced = self.opening(&mut lock(&self.pool), origin);
                    drop(displaced);
                }
                reused = handed.is_some();
                handed
            }
        };
        let mut stream = match pooled {
            Some(stream) => stream,
            // Boxed, as is the reconnect below: a connect (with TLS) is about 800 bytes of state
            // that every exchange on a pooled connection would carry otherwise.
            None => Box::pin(self.connect(&host, port, https)).await?,
        };
        let mut sent_at = Instant::now();
        let mut answer = http1::exchange(&mut stream, &head, &body, self.response_bytes_max).await;
        let closed_at_once = sent_at.elapsed() < STALE_CLOSE_WINDOW;
        if reused && closed_at_once && matches!(answer, Err(Failure::ClosedBeforeResponse(_))) {
            // The server closed the idle connection as the request went out: once more on a
            // fresh one (delivery is at least once; this is what every HTTP client does).
            stream = Box::pin(self.connect(&host, port, https)).await?;
            sent_at = Instant::now();
            answer = http1::exchange(&mut stream, &head, &body, self.response_bytes_max).await;
        }
        match answer {
            Ok(response) => {
                if response.reusable && !stream.holds_unread() {
                    // Idle from here on: counted once, in the pool, not also as running.
                    drop(running);
                    on_origin.counted = false;
                    let displaced = lock(&self.pool).give_back(origin, stream, sent_at);
                    drop(displaced);
                }
                Ok(response)
            }
            Err(Failure::ClosedBeforeResponse(e)) => Err(Problem::Other(format!("connection closed: {e}"))),
            Err(Failure::Protocol(why)) => Err(Problem::Other(why)),
        }
    }

    /// Waits for a connection to `origin` to come back (counted as running, `Pool::give_back`),
    /// or for the watcher or an exchange that ended to let this request open its own (`None`).
    async fn wait_for_connection(
        &self,
        origin: &str,
        receiver: oneshot::Receiver<Stream>,
        watch: bool,
    ) -> Option<Stream> {
        if watch {
            tokio::spawn(watch_stalls(self.pool.clone(), origin.to_owned(), self.stall));
        }
        let mut waiting = Waiting { receiver, pool: &self.pool, origin };
        (&mut waiting.receiver).await.ok()
    }

    /// A request to `origin` opens a connection: it counts as running there from now, and an
    /// idle connection makes room when running and idle connections together would exceed
    /// the descriptors deliveries were given (returned, to be closed once the pool is
    /// unlocked).
    fn opening(&self, pool: &mut Pool, origin: &str) -> Option<Stream> {
        pool.start(origin);
        let over = self.running.load(Ordering::Relaxed) + pool.count > self.open_max;
        if over {
            pool.displace()
        } else {
            None
        }
    }

    /// Connects to the first address the rules allow, checked at connect time so a name
    /// cannot be re-pointed at a private address after the endpoint was saved.
    async fn connect(&self, host: &url::Host<&str>, port: u16, https: bool) -> Result<Stream, Problem> {
        let tcp = connect_allowed(&self.policy, host, port, self.connect_timeout, |address| async move {
            TcpStream::connect(address).await.map_err(|e| e.to_string())
        })
        .await
        .map_err(|unreached| match unreached {
            Unreached::Blocked(reason) => Problem::Blocked(reason),
            Unreached::Connect(why) => Problem::Connect(why),
            // Nothing took the connection (a dropped SYN, a full backlog, a dead address):
            // unreachable, as a refusal is, so such an endpoint is paced.
            Unreached::Timeout => Problem::Connect("connect timed out".into()),
        })?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Stream::Plain(tcp));
        }
        // Within the connect timeout too: a front end that takes the connection and never
        // answers the handshake held the attempt for the whole request timeout.
        match tokio::time::timeout(self.connect_timeout, self.tls_handshake(host, tcp)).await {
            Ok(handshaken) => handshaken,
            Err(_) => Err(Problem::Connect("TLS: the handshake timed out".into())),
        }
    }

    async fn tls_handshake(&self, host: &url::Host<&str>, tcp: TcpStream) -> Result<Stream, Problem> {
        let name = match host {
            url::Host::Domain(name) => rustls::pki_types::ServerName::try_from(name.to_string())
                .map_err(|_| Problem::Other("the host is not a valid TLS name".into()))?,
            url::Host::Ipv4(ip) => rustls::pki_types::ServerName::IpAddress(IpAddr::V4(*ip).into()),
            url::Host::Ipv6(ip) => rustls::pki_types::ServerName::IpAddress(IpAddr::V6(*ip).into()),
        };
        let connector = self
            .tls
            .get_or_init(|| tls_connector(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }));
        let tls = connector.connect(name, tcp).await.map_err(|e| Problem::Connect(format!("TLS: {e}")))?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// Looks at the requests waiting for a connection to `origin` every `stall`
/// (`Demand::look`) until none waits. A slow endpoint's burst, which gives nothing back,
/// goes out one look late at most.
async fn watch_stalls(pool: Arc<Mutex<Pool>>, origin: String, stall: Duration) {
    loop {
        tokio::time::sleep(stall).await;
        let mut pool = lock(&pool);
        let Some(demand) = pool.demand.get_mut(&origin) else { return };
        if !demand.look(stall) {
            demand.watched = false;
            return;
        }
    }
}

/// Resolves `name` with the system resolver on a blocking thread, at most `LOOKUPS_MAX` at
/// once (a lookup holds its place until the resolver returns, even past `timeout`), and
/// waits `timeout` at most, the wait for a place included.
async fn lookup(name: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, Unreached> {
    let name = name.to_owned();
    let resolved = async move {
        let place = LOOKUPS.acquire().await.expect("the lookup semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            let _place = place;
            std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), port)).map(Vec::from_iter)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    };
    match tokio::time::timeout(timeout, resolved).await {
        Ok(Ok(addresses)) => Ok(addresses),
        Ok(Err(e)) => Err(Unreached::Connect(format!("resolving the host: {e}"))),
        Err(_) => Err(Unreached::Connect("resolving the host timed out".into())),
    }
}

/// Why no address the rules allow took a connection.
pub enum Unreached {
    /// Every resolved address is refused by the rules (the first reason).
    Blocked(String),
    /// The last allowed address failed to connect.
    Connect(String),
    Timeout,
}

/// Resolves `host` and calls `connect` on each address the address rules allow, in order,
/// each within `timeout`: the first connection made, or why none was. Every resolved
/// address is checked here, at connect time, and `connect` is given the checked address
/// (never the name): HTTP endpoints and queue destinations both connect through this.
pub async fn connect_allowed<S, T, F, Fut>(
    policy: &AddressPolicy,
    host: &url::Host<S>,
    port: u16,
    timeout: Duration,
    mut connect: F,
) -> Result<T, Unreached>
where
    S: AsRef<str>,
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let addresses: Vec<SocketAddr> = match host {
        url::Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(*ip), port)],
        url::Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(*ip), port)],
        url::Host::Domain(name) => lookup(name.as_ref(), port, timeout).await?,
    };
    let mut refusal = None;
    let mut last_error = None;
    for address in addresses {
        if let Err(reason) = policy.check_ip(address.ip()) {
            refusal.get_or_insert(reason.to_string());
            continue;
        }
        match tokio::time::timeout(timeout, connect(address)).await {
            Ok(Ok(connected)) => return Ok(connected),
            Ok(Err(why)) => last_error = Some(Unreached::Connect(why)),
            Err(_) => last_error = Some(Unreached::Timeout),
        }
    }
    Err(match (last_error, refusal) {
        (Some(error), _) => error,
        (None, Some(reason)) => Unreached::Blocked(reason),
        (None, None) => Unreached::Connect("the host has no address".into()),
    })
}

/// The TLS client configuration: rustls with ring, HTTP/1.1 offered by ALPN.
fn tls_connector(roots: rustls::RootCertStore) -> tokio_rustls::TlsConnector {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[cfg(test)]
mod tests;
