//! Tests of the delivery client against real sockets: keep-alive, address rules, TLS.

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
    DeliveryClient::new(policy, 5_000, 1_000, 64, 1_000)
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

#[tokio::test]
async fn names_and_literals_resolving_to_loopback_are_refused_at_connect_time() {
    let port = serve(OK).await;
    let strict = client(AddressPolicy { allow_plain_http: true, ..Default::default() });
    for url in [
        format!("http://localhost:{port}/"),
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ] {
        let sent = strict.post(&url, &[], Bytes::from_static(b"{}"), 0).await;
        assert_eq!(sent.outcome, Outcome::BlockedAddress, "{url}");
    }
    let allowed = client(AddressPolicy {
        allow: vec!["127.0.0.0/8".parse().unwrap()],
        allow_plain_http: true,
        ..Default::default()
    });
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
    let quick = DeliveryClient::new(dev, 200, 1_000, 64, 1_000);
    let sent = quick.post(&format!("http://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
    assert_eq!(sent.outcome, Outcome::Timeout);
    assert_eq!(quick.running.load(Ordering::SeqCst), 0, "an exchange cut off by its timeout no longer counts");
    drop(silent);
}

#[tokio::test]
async fn a_connection_nobody_takes_is_unreachable_not_a_timeout() {
    // A listener whose backlog is full drops further connection attempts unanswered, as a
    // firewalled host or a dead address does.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let address = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    let full = (0..16).any(|_| match std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
        Ok(stream) => {
            queued.push(stream);
            false
        }
        Err(_) => true,
    });
    assert!(full, "the listener's backlog filled");
    let quick = DeliveryClient::new(dev(), 5_000, 300, 64, 1_000);
    let sent = quick.post(&format!("http://{address}/"), &[], Bytes::new(), 0).await;
    assert_eq!(sent.outcome, Outcome::Connect, "{}", sent.response_excerpt);
    assert_eq!(sent.response_excerpt, "connect timed out");
    assert!(hookline_core::classify::unreachable(&sent.outcome), "counted toward pacing the endpoint");
}

/// An endpoint that answers a large request after reading its start, and closes (unread
/// bytes make the kernel reset the connection): the answer counts, a 410 as a 410.
#[tokio::test]
async fn an_answer_before_the_whole_request_counts() {
    let port = serve("HTTP/1.1 410 Gone\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    let body = Bytes::from(vec![b'x'; 4 << 20]);
    let sent = client(dev()).post(&format!("http://127.0.0.1:{port}/"), &[], body, 0).await;
    assert_eq!(sent.outcome, Outcome::Response { status: 410, retry_after_ms: None }, "{}", sent.response_excerpt);
}

/// A keep-alive server's port, the connections it accepted, and the paths it was asked for
/// in the order the requests came.
struct KeptAlive {
    port: u16,
    accepted: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

/// A keep-alive server: answers each request on a connection with `OK_KEPT` after `delay`,
/// closing the connection after `answers_per_connection` answers (silently: no
/// `connection: close`), or, with `drop_unanswered`, reading the next request and closing
/// without an answer.
async fn keep_alive(answers_per_connection: usize, drop_unanswered: bool, delay: Duration) -> KeptAlive {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server =
        KeptAlive { port: listener.local_addr().unwrap().port(), accepted: Arc::default(), paths: Arc::default() };
    let (accepted, paths) = (server.accepted.clone(), server.paths.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let paths = paths.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                for _ in 0..answers_per_connection {
                    let read = socket.read(&mut buffer).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    let head = String::from_utf8_lossy(&buffer[..read]);
                    paths.lock().unwrap().push(head.split(' ').nth(1).unwrap_or_default().to_owned());
                    tokio::time::sleep(delay).await;
                    let _ = socket.write_all(OK_KEPT.as_bytes()).await;
                }
                if drop_unanswered {
                    let _ = socket.read(&mut buffer).await;
                }
            });
        }
    });
    server
}

const OK_KEPT: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn dev() -> AddressPolicy {
    AddressPolicy { allow_all_private: true, allow_plain_http: true, ..Default::default() }
}

#[tokio::test]
async fn connections_are_kept_alive_and_reused() {
    let KeptAlive { port, accepted, .. } = keep_alive(usize::MAX, false, Duration::ZERO).await;
    let client = client(dev());
    for _ in 0..5 {
        let sent = client.post(&format!("http://127.0.0.1:{port}/a"), &[], Bytes::from_static(b"{}"), 0).await;
        assert_eq!(sent.outcome, Outcome::Response { status: 200, retry_after_ms: None });
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "five requests on one connection");
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_not_used() {
    let KeptAlive { port, accepted, .. } = keep_alive(1, false, Duration::ZERO).await;
    let client = client(dev());
    for _ in 0..3 {
        let sent = client.post(&format!("http://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
        assert_eq!(sent.outcome, Outcome::Response { status: 200, retry_after_ms: None });
        // Give the server's close time to arrive, as an idle timeout would.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// The sweep the engine's heartbeat runs, with no delivery taking a connection: it lets go
/// of an idle connection its server closed and keeps an open one, at most once per
/// `SWEEP_EVERY`.
#[tokio::test]
async fn the_idle_sweep_lets_go_of_connections_their_server_closed() {
    let closing = keep_alive(1, false, Duration::ZERO).await;
    let open = keep_alive(usize::MAX, false, Duration::ZERO).await;
    let client = client(dev());
    for port in [closing.port, open.port] {
        let sent = client.post(&format!("http://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
        assert_eq!(sent.outcome, Outcome::Response { status: 200, retry_after_ms: None });
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while lock(&client.pool).idle.values().flatten().all(|(stream, _)| stream.is_idle_open()) {
        assert!(Instant::now() < deadline, "the server never closed its connection");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.sweep_idle();
    assert_eq!(lock(&client.pool).count, 2, "the last take swept just now: none again before SWEEP_EVERY");
    lock(&client.pool).swept = Instant::now().checked_sub(SWEEP_EVERY);
    client.sweep_idle();
    let pool = lock(&client.pool);
    let origins: Vec<&String> = pool.idle.keys().collect();
    assert_eq!(pool.count, 1);
    assert_eq!(origins, [&format!("http://127.0.0.1:{}", open.port)], "the open connection is kept");
}

#[tokio::test]
async fn a_request_lost_on_a_reused_connection_goes_again_on_a_fresh_one() {
    // The server takes the second request of each connection and closes without an
    // answer, as a server does when its idle timeout races the request.
    let KeptAlive { port, accepted, .. } = keep_alive(1, true, Duration::ZERO).await;
    let client = client(dev());
    for _ in 0..3 {
        let sent = client.post(&format!("http://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
        assert_eq!(sent.outcome, Outcome::Response { status: 200, retry_after_ms: None });
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "each retry went on a fresh connection");
}

/// A request that a server read and then closed on without an answer, a while later, is a
/// failed attempt, not sent again at once on a fresh connection: the server may have acted
/// on it (a handler that crashed after its work, a proxy's reset).
#[tokio::test]
async fn a_request_closed_on_after_a_while_is_not_sent_again_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while socket.read(&mut buffer).await.unwrap_or(0) > 0 {
                    // The first request of the test is answered; the second is closed on
                    // after 1.5 s; a third (sent again) would be answered.
                    if counted.fetch_add(1, Ordering::SeqCst) == 1 {
                        tokio::time::sleep(Duration::from_millis(1_500)).await;
                        return;
                    }
                    let _ = socket.write_all(OK_KEPT.as_bytes()).await;
                }
            });
        }
    });
    let client = client(dev());
    let url = format!("http://127.0.0.1:{port}/");
    let first = client.post(&url, &[], Bytes::new(), 0).await;
    assert_eq!(first.outcome, Outcome::Response { status: 200, retry_after_ms: None });
    let second = client.post(&url, &[], Bytes::new(), 0).await;
    assert_eq!(second.outcome, Outcome::Other, "{}", second.response_excerpt);
    assert_eq!(requests.load(Ordering::SeqCst), 2, "not sent again");
}

/// Plain http is refused at each send unless the rules allow it, whatever the endpoint was
/// saved under (dev mode, or `network.allow_http` since turned off).
#[tokio::test]
async fn plain_http_is_refused_when_the_rules_no_longer_allow_it() {
    let port = serve(OK).await;
    let https_only = client(AddressPolicy { allow_all_private: true, ..Default::default() });
    let sent = https_only.post(&format!("http://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
    assert_eq!(sent.outcome, Outcome::BlockedAddress);
    assert!(sent.response_excerpt.contains("plain http"), "{}", sent.response_excerpt);
}

/// A TLS front end that takes the connection and never answers the handshake is a connect
/// failure within the connect timeout, not a request held for the whole request timeout.
#[tokio::test]
async fn a_handshake_nobody_answers_fails_within_the_connect_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let quick_connect = DeliveryClient::new(dev(), 30_000, 300, 64, 1_000);
    let started = Instant::now();
    let sent = quick_connect.post(&format!("https://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
    assert_eq!(sent.outcome, Outcome::Connect, "{}", sent.response_excerpt);
    assert!(sent.response_excerpt.contains("handshake timed out"), "{}", sent.response_excerpt);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    drop(silent);
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
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
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
    let trusting = DeliveryClient::new(allowed.clone(), 5_000, 1_000, 64, 1_000).trusting(roots);
    for _ in 0..3 {
        let sent = trusting.post(&format!("https://localhost:{port}/hook"), &[], Bytes::from_static(b"{}"), 0).await;
        assert_eq!(sent.outcome, Outcome::Response { status: 200, retry_after_ms: None }, "{}", sent.response_excerpt);
        assert_eq!(sent.response_excerpt, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "three requests on one TLS connection");
    assert_eq!(alpn.lock().unwrap().as_slice(), [b"http/1.1".to_vec()]);
    // Mozilla's roots do not know this authority; the name must match the certificate.
    let sent = client(allowed.clone()).post(&format!("https://localhost:{port}/"), &[], Bytes::new(), 0).await;
    assert_eq!(sent.outcome, Outcome::Connect);
    assert!(sent.response_excerpt.contains("certificate"), "{}", sent.response_excerpt);
    let (port, roots, _, _) = tls_server().await;
    let by_ip = DeliveryClient::new(allowed, 5_000, 1_000, 64, 1_000).trusting(roots);
    let sent = by_ip.post(&format!("https://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
    assert_eq!(sent.outcome, Outcome::Connect, "the certificate names localhost, not 127.0.0.1");
}

/// Idle connections are kept up to the pool's size, one origin alone may fill it, a
/// connection returned to a full pool displaces the oldest of the origin holding the most,
/// connections are handed out most recent first, and one the server closed never is.
#[tokio::test]
async fn the_pool_shares_its_room_and_hands_out_only_open_connections() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut accepted = Vec::new();
    let mut pool = Pool { max: 3, ..Pool::default() };
    let mut local = Vec::new();
    let mut displaced = Vec::new();
    for origin in ["a", "a", "a", "b", "b"] {
        let stream = TcpStream::connect(address).await.unwrap();
        local.push(stream.local_addr().unwrap());
        accepted.push(listener.accept().await.unwrap().0);
        displaced.extend(pool.put(origin, Stream::Plain(stream)).map(|s| s.tcp().local_addr().unwrap()));
    }
    assert_eq!(displaced, [local[0], local[1]], "a's two oldest made room for b's");
    let held = |pool: &Pool, origin: &str| pool.idle.get(origin).map_or(0, VecDeque::len);
    assert_eq!((held(&pool, "a"), held(&pool, "b"), pool.count), (1, 2, 3));
    // One more of b's: b holds the most now, so its own oldest makes room.
    let stream = TcpStream::connect(address).await.unwrap();
    accepted.push(listener.accept().await.unwrap().0);
    let sixth = stream.local_addr().unwrap();
    let out = pool.put("b", Stream::Plain(stream)).map(|s| s.tcp().local_addr().unwrap());
    assert_eq!(out, Some(local[3]));
    assert_eq!((held(&pool, "a"), held(&pool, "b"), pool.count), (1, 2, 3));
    assert_eq!(pool.take("b").unwrap().tcp().local_addr().unwrap(), sixth, "most recent first");
    // The server closes a's connection: the pool drops it instead of handing it out.
    drop(accepted.remove(2));
    pool.idle["a"][0].0.tcp().readable().await.unwrap();
    assert!(pool.take("a").is_none());
    assert!(!pool.idle.contains_key("a"));
    assert_eq!(pool.count, 1);
    assert_eq!(pool.take("b").unwrap().tcp().local_addr().unwrap(), local[4]);
    assert_eq!(pool.count, 0);
}

/// Running and idle connections together stay within the client's budget of descriptors:
/// a request that must open a connection first closes an idle one when the budget is spent.
#[tokio::test]
async fn idle_connections_make_room_for_a_new_one_within_the_budget() {
    let client = DeliveryClient::new(dev(), 5_000, 1_000, 64, 2);
    let mut accepted = Vec::new();
    for _ in 0..3 {
        let KeptAlive { port, accepted: count, .. } = keep_alive(usize::MAX, false, Duration::ZERO).await;
        let sent = client.post(&format!("http://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await;
        assert_eq!(sent.outcome, Outcome::Response { status: 200, retry_after_ms: None });
        accepted.push(count);
        assert!(client.pool.lock().unwrap().count <= 2, "more connections open than the budget of 2");
    }
    assert_eq!(client.pool.lock().unwrap().count, 2, "the third origin's connection took an idle one's place");
    assert_eq!(client.running.load(Ordering::SeqCst), 0);
    assert!(accepted.iter().all(|count| count.load(Ordering::SeqCst) == 1));
}

/// The periodic sweep closes idle connections their server has closed, not only old ones.
#[tokio::test]
async fn the_sweep_closes_connections_the_server_closed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut pool = Pool::default();
    let mut accepted = Vec::new();
    for origin in ["a", "b", "b"] {
        let stream = TcpStream::connect(address).await.unwrap();
        accepted.push(listener.accept().await.unwrap().0);
        assert!(pool.put(origin, Stream::Plain(stream)).is_none());
    }
    let kept = pool.idle["b"][1].0.tcp().local_addr().unwrap();
    drop(accepted.remove(0));
    drop(accepted.remove(0));
    pool.idle["a"][0].0.tcp().readable().await.unwrap();
    pool.idle["b"][0].0.tcp().readable().await.unwrap();
    pool.swept = None;
    pool.sweep();
    assert!(!pool.idle.contains_key("a"));
    assert_eq!(pool.count, 1);
    assert_eq!(pool.idle["b"][0].0.tcp().local_addr().unwrap(), kept);
}

/// Sends `count` requests to `port` at once; all must be answered 200.
async fn burst(client: &Arc<DeliveryClient>, port: u16, count: usize) {
    let sends: Vec<_> = (0..count)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.post(&format!("http://127.0.0.1:{port}/"), &[], Bytes::new(), 0).await })
        })
        .collect();
    for send in sends {
        assert_eq!(send.await.unwrap().outcome, Outcome::Response { status: 200, retry_after_ms: None });
    }
}

/// A burst to an origin that answers quickly reuses the origin's share of connections: the
/// requests beyond it wait for a connection to come back rather than opening their own.
#[tokio::test]
async fn a_burst_to_a_quick_origin_reuses_its_share_of_connections() {
    let KeptAlive { port, accepted, .. } = keep_alive(usize::MAX, false, Duration::from_millis(5)).await;
    // A stall far longer than the exchanges, so a slow test machine cannot trip it.
    let client = Arc::new(client(dev()).sharing(2, Duration::from_secs(30)));
    burst(&client, port, 12).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "twelve requests on the share of two connections");
    let pool = client.pool.lock().unwrap();
    assert_eq!(pool.demand.values().map(|d| d.running).sum::<usize>(), 0, "every exchange ended");
    assert_eq!(pool.count, 2);
}

/// When no connection comes back within the stall, every waiting request opens its own: a
/// slow endpoint's burst is all in flight, not sent a share at a time.
#[tokio::test]
async fn requests_to_an_origin_that_gives_nothing_back_open_their_own() {
    let KeptAlive { port, accepted, .. } = keep_alive(usize::MAX, false, Duration::from_secs(2)).await;
    let client = Arc::new(client(dev()).sharing(2, Duration::from_millis(50)));
    burst(&client, port, 6).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 6, "each request had a connection of its own");
}

/// An origin whose every recent exchange took longer than the stall is not held to its
/// share; one that answered quickly is.
#[tokio::test]
async fn only_an_origin_that_answers_quickly_is_held_to_its_share() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall = Duration::from_millis(100);
    let mut pool = Pool::default();
    let mut accepted = Vec::new();
    for (origin, took) in [("quick", Duration::from_millis(5)), ("slow", Duration::from_millis(400))] {
        pool.start(origin);
        assert!(pool.must_wait(origin, 1, stall), "{origin}: nothing known yet, the share holds");
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        accepted.push(listener.accept().await.unwrap().0);
        assert!(pool.give_back(origin, Stream::Plain(stream), Instant::now() - took).is_none());
        assert_eq!(pool.demand[origin].running, 0);
        pool.start(origin);
    }
    assert!(pool.must_wait("quick", 1, stall));
    assert!(!pool.must_wait("slow", 1, stall));
}

/// A connection handed to a waiting request stays counted as running on its origin; if that
/// request is dropped (its timeout) before it takes the connection, the count comes down.
#[tokio::test]
async fn a_waiting_request_dropped_after_a_handover_ends_that_exchange() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pool = Mutex::new(Pool::default());
    let (sender, receiver) = oneshot::channel();
    let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    {
        let mut pool = pool.lock().unwrap();
        pool.start("a");
        pool.demand.get_mut("a").unwrap().waiting.push_back((Instant::now(), sender));
        assert!(pool.give_back("a", Stream::Plain(stream), Instant::now()).is_none());
        assert_eq!((pool.demand["a"].running, pool.count), (1, 0), "handed over, not pooled");
    }
    drop(Waiting { receiver, pool: &pool, origin: "a" });
    assert_eq!(pool.lock().unwrap().demand["a"].running, 0);
}

/// An exchange that ends without giving its connection back (an error, a timeout, a server
/// that closes after each answer) lets the oldest waiting request open one in its place.
#[tokio::test]
async fn an_exchange_that_keeps_its_connection_lets_the_oldest_waiting_request_open_one() {
    let mut pool = Pool::default();
    pool.start("a");
    let (older, mut older_receiver) = oneshot::channel();
    let (newer, mut newer_receiver) = oneshot::channel();
    let waiting = &mut pool.demand.get_mut("a").unwrap().waiting;
    waiting.push_back((Instant::now(), older));
    waiting.push_back((Instant::now(), newer));
    pool.finish("a");
    assert!(matches!(older_receiver.try_recv(), Err(oneshot::error::TryRecvError::Closed)), "let go");
    assert!(matches!(newer_receiver.try_recv(), Err(oneshot::error::TryRecvError::Empty)), "still waits");
    assert_eq!(pool.demand["a"].running, 0);
}

/// Each look of the watcher keeps waiting only the requests the connections that came back
/// meanwhile would reach within `WAIT_LOOKS` looks (the oldest first), and none that waited
/// longer than that or, when nothing came back, any at all.
#[tokio::test]
async fn the_watcher_lets_go_the_requests_returns_would_not_reach_soon() {
    let stall = Duration::from_millis(100);
    let mut demand = Demand::default();
    let mut receivers: Vec<_> = (0..25)
        .map(|_| {
            let (sender, receiver) = oneshot::channel::<Stream>();
            demand.waiting.push_back((Instant::now(), sender));
            receiver
        })
        .collect();
    let let_go = |receivers: &mut Vec<oneshot::Receiver<Stream>>| {
        receivers
            .iter_mut()
            .map(|r| matches!(r.try_recv(), Err(oneshot::error::TryRecvError::Closed)))
            .collect::<Vec<_>>()
    };
    // Two came back since the last look: twenty are within reach, the five newest are not.
    demand.returns = 2;
    assert!(demand.look(stall));
    assert_eq!(let_go(&mut receivers), [vec![false; 20], vec![true; 5]].concat());
    // One waiting longer than WAIT_LOOKS looks goes whatever comes back.
    demand.waiting[0].0 = Instant::now() - stall * WAIT_LOOKS;
    demand.returns = 100;
    assert!(demand.look(stall));
    assert_eq!(demand.waiting.len(), 19);
    // Nothing came back: all go.
    assert!(!demand.look(stall));
    assert!(let_go(&mut receivers).iter().all(|gone| *gone));
}

/// However an exchange ends, it stops counting against its origin's share.
#[tokio::test]
async fn every_way_an_exchange_ends_gives_its_place_in_the_share_back() {
    let closing = serve(OK).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let quick = DeliveryClient::new(dev(), 200, 1_000, 64, 1_000);
    for url in [
        format!("http://127.0.0.1:{closing}/"),
        format!("http://127.0.0.1:{}/", free_closed_port()),
        format!("http://127.0.0.1:{}/", silent.local_addr().unwrap().port()),
    ] {
        quick.post(&url, &[], Bytes::new(), 0).await;
        let pool = quick.pool.lock().unwrap();
        assert_eq!(pool.demand.values().map(|d| d.running).sum::<usize>(), 0, "{url}");
    }
}

/// Requests waiting for a connection get the connections that come back in the order they
/// began to wait.
#[tokio::test]
async fn connections_come_back_to_waiting_requests_oldest_first() {
    let KeptAlive { port, paths, .. } = keep_alive(usize::MAX, false, Duration::from_millis(30)).await;
    let client = Arc::new(client(dev()).sharing(1, Duration::from_secs(30)));
    let mut sends = Vec::new();
    for path in ["first", "second", "third", "fourth"] {
        let client = client.clone();
        let url = format!("http://127.0.0.1:{port}/{path}");
        sends.push(tokio::spawn(async move { client.post(&url, &[], Bytes::new(), 0).await }));
        // Each request in turn reaches the pool before the next is sent.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for send in sends {
        assert_eq!(send.await.unwrap().outcome, Outcome::Response { status: 200, retry_after_ms: None });
    }
    assert_eq!(*paths.lock().unwrap(), ["/first", "/second", "/third", "/fourth"]);
}

fn free_closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A panic while the pool was locked poisons its mutex; the client goes on delivering (and
/// keeping connections) rather than panicking on every later request.
#[tokio::test]
async fn a_poisoned_pool_keeps_delivering() {
    let KeptAlive { port, accepted, .. } = keep_alive(usize::MAX, false, Duration::ZERO).await;
    let client = client(dev());
    let pool = client.pool.clone();
    let panicked = std::thread::spawn(move || {
        let _locked = pool.lock().unwrap();
        panic!("a panic while the pool is locked");
    })
    .join();
    assert!(panicked.is_err() && client.pool.is_poisoned());
    for _ in 0..3 {
        let sent = client.post(&format!("http://127.0.0.1:{port}/a"), &[], Bytes::from_static(b"{}"), 0).await;
        assert_eq!(sent.outcome, Outcome::Response { status: 200, retry_after_ms: None });
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the connection is still kept and reused");
}
