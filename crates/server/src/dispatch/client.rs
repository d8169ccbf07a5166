//! The outbound HTTP client. Every address it connects to passes the address rules at
//! connect time: names through a guarded resolver, IP literals before the request, so DNS
//! rebinding cannot reach a private network. Redirects are never followed.

use bytes::Bytes;
use hookline_core::classify::{parse_retry_after, Outcome};
use hookline_core::ssrf::AddressPolicy;
use hookline_core::UnixMs;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The resolver refused every address of a name.
#[derive(Debug, thiserror::Error)]
#[error("every resolved address is refused by the address rules")]
struct Blocked;

struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = found.filter(|a| policy.check_ip(a.ip()).is_ok()).collect();
            if allowed.is_empty() {
                return Err(Box::new(Blocked) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

pub struct DeliveryClient {
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
    timeout: Duration,
    response_bytes_max: usize,
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
        let policy = Arc::new(policy);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver { policy: policy.clone() }))
            .connect_timeout(Duration::from_millis(connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .user_agent(concat!("Hookline/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client configuration is valid");
        DeliveryClient { http, policy, timeout: Duration::from_millis(request_timeout_ms), response_bytes_max }
    }

    /// POSTs `body` to `url`; never fails, it reports what happened.
    pub async fn post(&self, url: &str, headers: &[(String, String)], body: Bytes, now: UnixMs) -> Sent {
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, self.exchange(url, headers, body, now)).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let (outcome, status_code, response_excerpt) = match result {
            Ok(answer) => answer,
            Err(_) => (Outcome::Timeout, 0, String::new()),
        };
        Sent { outcome, status_code, response_excerpt, duration_ms }
    }

    async fn exchange(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
        now: UnixMs,
    ) -> (Outcome, u16, String) {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return (Outcome::Other, 0, "invalid URL".into());
        };
        let literal = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            if let Err(reason) = self.policy.check_ip(ip) {
                return (Outcome::BlockedAddress, 0, format!("address refused: {reason}"));
            }
        }
        let mut request = self.http.post(parsed).body(body);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return (error_outcome(&e), 0, short_error(&e)),
        };
        let status = response.status().as_u16();
        let retry_after_ms = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now));
        let mut excerpt = Vec::new();
        while excerpt.len() < self.response_bytes_max {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(self.response_bytes_max - excerpt.len())])
                }
                _ => break,
            }
        }
        (Outcome::Response { status, retry_after_ms }, status, String::from_utf8_lossy(&excerpt).into_owned())
    }
}

fn error_outcome(e: &reqwest::Error) -> Outcome {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<Blocked>() {
            return Outcome::BlockedAddress;
        }
        source = err.source();
    }
    if e.is_timeout() {
        Outcome::Timeout
    } else if e.is_connect() {
        Outcome::Connect
    } else {
        Outcome::Other
    }
}

/// The error chain as one line, without the URL (it may carry tokens in its query).
fn short_error(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        parts.push(err.to_string());
        source = err.source();
    }
    if parts.is_empty() {
        "request failed".into()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn free_closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}
