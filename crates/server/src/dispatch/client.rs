//! The outbound HTTP client. Every address it connects to passes the address rules at
//! connect time: names through a guarded resolver, IP literals before the request, so DNS
//! rebinding cannot reach a private network. Redirects are never followed.

use super::http1::{self, Failure};
use bytes::Bytes;
use hookline_core::classify::{parse_retry_after, Outcome};
use hookline_core::ssrf::AddressPolicy;
use hookline_core::UnixMs;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Idle connections kept per origin.
const IDLE_PER_ORIGIN_MAX: usize = 1024;
/// Idle connections kept in all: a gateway sending to many hosts must keep file
/// descriptors for its in-flight deliveries.
const IDLE_MAX: usize = 4096;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the pool looks for expired idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

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
    idle: HashMap<String, Vec<(Stream, Instant)>>,
    /// Connections in `idle`, all origins together.
    count: usize,
    per_origin_max: usize,
    total_max: usize,
    swept: Option<Instant>,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool { idle: HashMap::new(), count: 0, per_origin_max: IDLE_PER_ORIGIN_MAX, total_max: IDLE_MAX, swept: None }
    }
}

impl Pool {
    /// The most recently used open connection to `origin`.
    fn take(&mut self, origin: &str) -> Option<Stream> {
        self.sweep();
        let list = self.idle.get_mut(origin)?;
        let mut found = None;
        while let Some((stream, since)) = list.pop() {
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

    fn put(&mut self, origin: String, stream: Stream) {
        if self.count >= self.total_max {
            return;
        }
        let list = self.idle.entry(origin).or_default();
        if list.len() < self.per_origin_max {
            list.push((stream, Instant::now()));
            self.count += 1;
        }
    }

    /// Closes expired idle connections, including those of origins no longer sent to.
    fn sweep(&mut self) {
        if self.swept.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
            return;
        }
        self.swept = Some(Instant::now());
        self.idle.retain(|_, list| {
            list.retain(|(_, since)| since.elapsed() < IDLE_TIMEOUT);
            !list.is_empty()
        });
        self.count = self.idle.values().map(Vec::len).sum();
    }
}

/// Why no response came back, before it is classified.
enum Problem {
    Blocked(String),
    Connect(String),
    ConnectTimeout,
    Other(String),
}

pub struct DeliveryClient {
    policy: AddressPolicy,
    timeout: Duration,
    connect_timeout: Duration,
    response_bytes_max: usize,
    pool: Mutex<Pool>,
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
    ) -> DeliveryClient {
        DeliveryClient {
            policy,
            timeout: Duration::from_millis(request_timeout_ms),
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            response_bytes_max,
            pool: Mutex::default(),
            tls: OnceLock::new(),
        }
    }

    /// Trusts `roots` instead of Mozilla's (tests, with their own certificate authority).
    #[cfg(test)]
    fn trusting(self, roots: rustls::RootCertStore) -> DeliveryClient {
        let _ = self.tls.set(tls_connector(roots));
        self
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
            Ok(Err(Problem::ConnectTimeout)) => (Outcome::Timeout, 0, "connect timed out".into()),
            Ok(Err(Problem::Other(why))) => (Outcome::Other, 0, why),
            Err(_) => (Outcome::Timeout, 0, String::new()),
        };
        Sent { outcome, status_code, response_excerpt, duration_ms }
    }

    async fn exchange(&self, url: &str, headers: &[(String, String)], body: Bytes) -> Result<http1::Response, Problem> {
        let parsed = url::Url::parse(url).map_err(|_| Problem::Other("invalid URL".into()))?;
        let https = match parsed.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(Problem::Other("the URL is neither http nor https".into())),
        };
        let (Some(host), Some(port)) = (parsed.host(), parsed.port_or_known_default()) else {
            return Err(Problem::Other("the URL has no host".into()));
        };
        let host_header = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let origin = format!("{}://{host}:{port}", parsed.scheme());
        let path = &parsed[url::Position::BeforePath..url::Position::AfterQuery];
        let path = if path.is_empty() { "/" } else { path };
        let head = http1::request_head(path, &host_header, USER_AGENT, headers, body.len()).map_err(Problem::Other)?;
        let pooled = self.pool.lock().expect("pool lock").take(&origin);
        let reused = pooled.is_some();
        let mut stream = match pooled {
            Some(stream) => stream,
            None => self.connect(&host, port, https).await?,
        };
        let mut answer = http1::exchange(&mut stream, head.clone(), &body, self.response_bytes_max).await;
        if reused && matches!(answer, Err(Failure::ClosedBeforeResponse(_))) {
            // The server closed the idle connection as the request went out: once more on a
            // fresh one (delivery is at least once; this is what every HTTP client does).
            stream = self.connect(&host, port, https).await?;
            answer = http1::exchange(&mut stream, head, &body, self.response_bytes_max).await;
        }
        match answer {
            Ok(response) => {
                if response.reusable {
                    self.pool.lock().expect("pool lock").put(origin, stream);
                }
                Ok(response)
            }
            Err(Failure::ClosedBeforeResponse(e)) => Err(Problem::Other(format!("connection closed: {e}"))),
            Err(Failure::Protocol(why)) => Err(Problem::Other(why)),
        }
    }

    /// Connects to the first address the rules allow, checked at connect time so a name
    /// cannot be re-pointed at a private address after the endpoint was saved.
    async fn connect(&self, host: &url::Host<&str>, port: u16, https: bool) -> Result<Stream, Problem> {
        let addresses: Vec<SocketAddr> = match host {
            url::Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(*ip), port)],
            url::Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(*ip), port)],
            url::Host::Domain(name) => tokio::net::lookup_host((*name, port))
                .await
                .map_err(|e| Problem::Connect(format!("resolving the host: {e}")))?
                .collect(),
        };
        let mut refusal = None;
        let mut last_error = None;
        for address in addresses {
            if let Err(reason) = self.policy.check_ip(address.ip()) {
                refusal.get_or_insert(reason.to_string());
                continue;
            }
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address)).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    return if https { self.tls_handshake(host, tcp).await } else { Ok(Stream::Plain(tcp)) };
                }
                Ok(Err(e)) => last_error = Some(Problem::Connect(e.to_string())),
                Err(_) => last_error = Some(Problem::ConnectTimeout),
            }
        }
        Err(match (last_error, refusal) {
            (Some(error), _) => error,
            (None, Some(reason)) => Problem::Blocked(reason),
            (None, None) => Problem::Connect("the host has no address".into()),
        })
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
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-line HTTP server on 127.0.0.1 that answers every request with `answer`.
    async fn serve(answer: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    fn client(policy: AddressPolicy) -> DeliveryClient {
        DeliveryClient::new(policy, 5_000, 1_000, 64)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

    #[tokio::test]
    async fn names_and_literals_resolving_to_loopback_are_refused_at_connect_time() {
        let port = serve(OK).await;
        let strict = client(AddressPolicy::default());
        for url in [
            format!("http://localhost:{port}/"),
            format!("http://127.0.0.1:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
        ] {
            let sent = strict.post(&url, &[], Bytes::from_static(b"{}"), 0).await;
            assert_eq!(sent.outcome, Outcome::BlockedAddress, "{url}");
        }
        let allowed = client(AddressPolicy { allow: vec!["127.0.0.0/8".parse().unwrap()], ..Default::default() });
        let sent = allowed.post(&format!("http://localhost:{port}/"), &[], Bytes::from_static(b"{}"), 0).await;
        assert_eq!(sent.outcome, Outcome::Response { status: 200, retry_after_ms: None });
        assert_eq!(sent.response_excerpt, "ok");
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_bodies_are_capped() {
        let dev = AddressPolicy { allow_all_private: true, allow_plain_http: true, ..Default::default() };
        let redirect = serve(
            "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        let sent = client(dev.clone()).post(&format!("http://127.0.0.1:{redirect}/"), &[], Bytes::new(), 0).await;
        assert_eq!(sent.outcome, Outcome::Response { status: 302, retry_after_ms: None });
        let big = serve("HTTP/1.1 500 Oops\r\nretry-after: 7\r\nconnection: close\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx").await;
        let sent = client(dev).post(&format!("http://127.0.0.1:{big}/"), &[], Bytes::new(), 0).await;
        assert_eq!(sent.outcome, Outcome::Response { status: 500, retry_after_ms: Some(7_000) });
        assert_eq!(sent.response_excerpt.len(), 64, "the excerpt is capped");
    }

    #[tokio::test]
    async fn a_refused_connection_and_a_silent_server_are_classified() {
        let dev = AddressPolicy { allow_all_private: true, allow_plain_http: true, ..Default::default() };
        let closed = free_closed_port();
        let sent = client(dev.clone()).post(&format!("http://127.0.0.1:{closed}/"), &[], Bytes::new(), 0).await;
        assert_eq!(sent.outcome, Outcome::Connect);
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let quick = DeliveryClient::new(dev, 200, 1_000, 64);
        let sent = quick.post(&format!("http://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
        assert_eq!(sent.outcome, Outcome::Timeout);
        drop(silent);
    }

    /// A keep-alive server: answers each request on a connection with `OK_KEPT`, closing the
    /// connection after `answers_per_connection` answers (silently: no `connection: close`),
    /// or, with `drop_unanswered`, reading the next request and closing without an answer.
    /// Returns its port and a count of accepted connections.
    async fn keep_alive(answers_per_connection: usize, drop_unanswered: bool) -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    for _ in 0..answers_per_connection {
                        if socket.read(&mut buffer).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let _ = socket.write_all(OK_KEPT.as_bytes()).await;
                    }
                    if drop_unanswered {
                        let _ = socket.read(&mut buffer).await;
                    }
                });
            }
        });
        (port, accepted)
    }

    const OK_KEPT: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn dev() -> AddressPolicy {
        AddressPolicy { allow_all_private: true, allow_plain_http: true, ..Default::default() }
    }

    #[tokio::test]
    async fn connections_are_kept_alive_and_reused() {
        let (port, accepted) = keep_alive(usize::MAX, false).await;
        let client = client(dev());
        for _ in 0..5 {
            let sent = client.post(&format!("http://127.0.0.1:{port}/a"), &[], Bytes::from_static(b"{}"), 0).await;
            assert_eq!(sent.outcome, Outcome::Response { status: 200, retry_after_ms: None });
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "five requests on one connection");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_used() {
        let (port, accepted) = keep_alive(1, false).await;
        let client = client(dev());
        for _ in 0..3 {
            let sent = client.post(&format!("http://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
            assert_eq!(sent.outcome, Outcome::Response { status: 200, retry_after_ms: None });
            // Give the server's close time to arrive, as an idle timeout would.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_request_lost_on_a_reused_connection_goes_again_on_a_fresh_one() {
        // The server takes the second request of each connection and closes without an
        // answer, as a server does when its idle timeout races the request.
        let (port, accepted) = keep_alive(1, true).await;
        let client = client(dev());
        for _ in 0..3 {
            let sent = client.post(&format!("http://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
            assert_eq!(sent.outcome, Outcome::Response { status: 200, retry_after_ms: None });
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "each retry went on a fresh connection");
    }

    #[tokio::test]
    async fn https_to_a_server_without_tls_is_a_connect_failure() {
        let port = serve(OK).await;
        let sent = client(dev()).post(&format!("https://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
        assert_eq!(sent.outcome, Outcome::Connect);
        assert!(sent.response_excerpt.starts_with("TLS"), "{}", sent.response_excerpt);
    }

    /// A TLS server for `localhost` under a fresh certificate authority, answering every
    /// request on a kept-alive connection. Returns its port, the authority as a root store,
    /// the count of accepted connections and the ALPN protocols clients asked for.
    async fn tls_server() -> (u16, rustls::RootCertStore, Arc<AtomicUsize>, Arc<Mutex<Vec<Vec<u8>>>>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key_der)
                .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let alpn = Arc::new(Mutex::new(Vec::new()));
        let (counter, offered) = (accepted.clone(), alpn.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (acceptor, offered) = (acceptor.clone(), offered.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else { return };
                    offered.lock().unwrap().extend(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
                    let mut buffer = [0u8; 4096];
                    while tls.read(&mut buffer).await.unwrap_or(0) > 0 {
                        let _ = tls.write_all(OK_KEPT.as_bytes()).await;
                    }
                });
            }
        });
        (port, roots, accepted, alpn)
    }

    #[tokio::test]
    async fn https_deliveries_verify_the_certificate_and_keep_the_connection() {
        let (port, roots, accepted, alpn) = tls_server().await;
        let allowed = AddressPolicy { allow: vec!["127.0.0.0/8".parse().unwrap()], ..Default::default() };
        let trusting = DeliveryClient::new(allowed.clone(), 5_000, 1_000, 64).trusting(roots);
        for _ in 0..3 {
            let sent =
                trusting.post(&format!("https://localhost:{port}/hook"), &[], Bytes::from_static(b"{}"), 0).await;
            assert_eq!(
                sent.outcome,
                Outcome::Response { status: 200, retry_after_ms: None },
                "{}",
                sent.response_excerpt
            );
            assert_eq!(sent.response_excerpt, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "three requests on one TLS connection");
        assert_eq!(alpn.lock().unwrap().as_slice(), [b"http/1.1".to_vec()]);
        // Mozilla's roots do not know this authority; the name must match the certificate.
        let sent = client(allowed.clone()).post(&format!("https://localhost:{port}/"), &[], Bytes::new(), 0).await;
        assert_eq!(sent.outcome, Outcome::Connect);
        assert!(sent.response_excerpt.contains("certificate"), "{}", sent.response_excerpt);
        let (port, roots, _, _) = tls_server().await;
        let by_ip = DeliveryClient::new(allowed, 5_000, 1_000, 64).trusting(roots);
        let sent = by_ip.post(&format!("https://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
        assert_eq!(sent.outcome, Outcome::Connect, "the certificate names localhost, not 127.0.0.1");
    }

    /// Idle connections are kept up to the per-origin and the total caps, handed out most
    /// recent first, and one the server closed is never handed out.
    #[tokio::test]
    async fn the_pool_keeps_what_its_caps_allow_and_only_open_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut accepted = Vec::new();
        let mut pool = Pool { per_origin_max: 2, total_max: 3, ..Pool::default() };
        for origin in ["a", "a", "a", "b", "b"] {
            let stream = TcpStream::connect(address).await.unwrap();
            accepted.push(listener.accept().await.unwrap().0);
            pool.put(origin.to_owned(), Stream::Plain(stream));
        }
        assert_eq!(
            (pool.idle["a"].len(), pool.idle["b"].len(), pool.count),
            (2, 1, 3),
            "caps of 2 per origin, 3 in all"
        );
        let newest = pool.idle["a"][1].0.tcp().local_addr().unwrap();
        assert_eq!(pool.take("a").unwrap().tcp().local_addr().unwrap(), newest, "most recent first");
        // The server closes the other connection of `a`: the pool drops it instead.
        drop(accepted.remove(0));
        pool.idle["a"][0].0.tcp().readable().await.unwrap();
        assert!(pool.take("a").is_none());
        assert!(!pool.idle.contains_key("a"));
        assert_eq!(pool.count, 1);
        assert!(pool.take("b").is_some());
        assert_eq!(pool.count, 0);
    }

    fn free_closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}
