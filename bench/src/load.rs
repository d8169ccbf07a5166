//! The load generator's HTTP client: one HTTP/1.1 keep-alive connection per worker and
//! target, each request written from a prepared path and headers.
//!
//! The generator shares the machine's cores with the gateway it measures, so what it spends
//! on each request is taken from the gateway. A general client (reqwest) parses the URL,
//! checks out a pooled connection and clones its connector on every request; on two cores
//! that cost as much CPU as the gateway's own work on each request (a profile of `inbound`).
//! hyper's connection API does none of that.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// A URL split once into what each request needs.
#[derive(Clone, Debug)]
pub struct Url {
    /// `host:port`, for the connection and the `Host` header.
    authority: String,
    path: String,
}

impl Url {
    /// Splits an `http://host:port/path` URL (the harness only talks plain HTTP).
    pub fn parse(url: &str) -> anyhow::Result<Url> {
        let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("not an http:// URL: {url}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Ok(Url { authority: authority.to_owned(), path: path.to_owned() })
    }
}

/// One keep-alive connection, opened on first use and again after it fails.
pub struct Conn {
    url: Url,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(url: Url) -> Conn {
        Conn { url, sender: None }
    }

    async fn ready(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if let Some(sender) = &mut self.sender {
            if sender.ready().await.is_ok() {
                return Ok(self.sender.as_mut().expect("just checked"));
            }
            self.sender = None;
        }
        let stream = tokio::net::TcpStream::connect(&self.url.authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(self.sender.insert(sender))
    }

    /// POSTs `body` with `headers` (and a JSON content type); the answer's status and body.
    pub async fn post(&mut self, headers: &[(String, String)], body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let mut request = hyper::Request::post(self.url.path.as_str())
            .header(hyper::header::HOST, self.url.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Full::new(body))?;
        let answer = async {
            let response = self.ready().await?.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        }
        .await;
        if answer.is_err() {
            // The connection may be half-used; the next request opens a new one.
            self.sender = None;
        }
        answer
    }
}
