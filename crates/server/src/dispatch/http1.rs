//! One HTTP/1.1 exchange on a connection the caller owns: write a POST, read the answer.
//!
//! Written here rather than taken from hyper's client because a webhook gateway holds
//! thousands of connections open to slow endpoints: hyper's client costs a connection task,
//! a 9 KiB request channel and two 8 KiB buffers per connection (a heap profile), where this
//! costs the delivery task's own state and a read buffer that starts at 1 KiB. Parsing is
//! `httparse`'s (hyper's parser); framing follows RFC 9112 section 6.

use bytes::{Buf, Bytes};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A response head larger than this is refused.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Headers a response head may have.
const HEADERS_MAX: usize = 100;
/// Body bytes read past the kept excerpt before giving up on the connection: draining lets
/// it be reused, but not at any price.
const DRAIN_BYTES_MAX: u64 = 64 * 1024;
/// The read buffer's first size and growth step.
const READ_CHUNK: usize = 1024;
/// The read buffer kept through a body's wait: a larger one (a large head) is let go.
const HELD_AFTER_HEAD_MAX: usize = 16 * 1024;

/// What went wrong, in the terms the caller acts on.
#[derive(Debug)]
pub enum Failure {
    /// The connection ended before any byte of a response: on a reused connection, the
    /// server most likely closed it while idle, and the request can go on a fresh one.
    ClosedBeforeResponse(io::Error),
    /// Anything else: a broken or malformed response, or an IO error mid-way.
    Protocol(String),
}

/// What came back.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<String>,
    pub excerpt: Vec<u8>,
    /// The response was read to its end and the server keeps the connection open.
    pub reusable: bool,
}

/// The request head for a POST of `body_len` bytes. Header names and values are checked
/// again here (the API checks them when they are saved) so nothing can split the head;
/// framing headers are Hookline's own.
pub fn request_head(
    path_and_query: &str,
    host: &str,
    user_agent: &str,
    headers: &[(String, String)],
    body_len: usize,
) -> Result<Vec<u8>, String> {
    let mut head = Vec::with_capacity(256 + headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>());
    head.extend_from_slice(b"POST ");
    head.extend_from_slice(path_and_query.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(host.as_bytes());
    head.extend_from_slice(b"\r\nuser-agent: ");
    head.extend_from_slice(user_agent.as_bytes());
    head.extend_from_slice(b"\r\ncontent-length: ");
    head.extend_from_slice(body_len.to_string().as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if !valid_header_name(name) || !valid_header_value(value) {
            return Err(format!("`{name}` is not a valid header"));
        }
        let framing = ["host", "content-length", "transfer-encoding", "connection", "user-agent"];
        if framing.iter().any(|f| name.eq_ignore_ascii_case(f)) {
            continue;
        }
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(head)
}

/// A header name is a token (RFC 9110 section 5.1); checked without building an
/// `http::HeaderName`, which copies every name it does not know.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value holds no control character but tab (what `http::HeaderValue` accepts:
/// nothing can end the line or the head early).
fn valid_header_value(value: &str) -> bool {
    value.bytes().all(|b| (b >= 32 && b != 127) || b == b'\t')
}

/// Sends `head` and `body` and reads the response, keeping at most `excerpt_max` body bytes.
pub async fn exchange<S>(stream: &mut S, head: &[u8], body: &Bytes, excerpt_max: usize) -> Result<Response, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Head and body go out together (one vectored write on a TCP stream), without copying.
    let mut request = Buf::chain(head, &body[..]);
    let sent = async {
        stream.write_all_buf(&mut request).await?;
        stream.flush().await
    };
    let written = sent.await;
    let mut reader = Reader { stream, buf: Vec::new(), start: 0 };
    let head = match written {
        Ok(()) => reader.head().await?,
        // A server may answer before it has read the whole request (a 413, 401 or 410 for
        // a large body) and close: the write fails, and the answer is there to be read.
        Err(e) => match reader.head().await {
            Ok(head) => Head { keep_alive: false, ..head },
            Err(_) => return Err(Failure::ClosedBeforeResponse(e)),
        },
    };
    let mut body = Excerpt { kept: Vec::new(), max: excerpt_max, seen: 0 };
    let complete = match head.framing {
        Framing::Empty => true,
        Framing::Length(length) => reader.fixed(length, &mut body).await?,
        Framing::Chunked => reader.chunked(&mut body).await?,
        Framing::UntilClose => {
            reader.until_close(&mut body).await?;
            false
        }
    };
    let leftover = reader.start < reader.buf.len();
    Ok(Response {
        status: head.status,
        retry_after: head.retry_after,
        excerpt: body.kept,
        reusable: complete && head.keep_alive && !leftover,
    })
}

/// A response body as it is read: its first `max` bytes kept, the rest only counted.
struct Excerpt {
    kept: Vec<u8>,
    max: usize,
    seen: u64,
}

impl Excerpt {
    /// Takes in `bytes`; false once more has been read than is worth draining.
    fn add(&mut self, bytes: &[u8]) -> bool {
        let room = self.max.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.seen += bytes.len() as u64;
        self.within_budget()
    }

    fn within_budget(&self) -> bool {
        self.seen <= self.max as u64 + DRAIN_BYTES_MAX
    }
}

enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    retry_after: Option<String>,
    keep_alive: bool,
    framing: Framing,
}

struct Reader<'a, S> {
    stream: &'a mut S,
    buf: Vec<u8>,
    /// Bytes before this were consumed.
    start: usize,
}

impl<S: AsyncRead + Unpin> Reader<'_, S> {
    fn available(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Reads more bytes; 0 at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.buf.len() == self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            // A chunk at a time, not doubling: a head of 64 KiB holds 65 KiB, not 128.
            self.buf.reserve_exact(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    async fn fill_or_fail(&mut self, what: &str) -> Result<(), Failure> {
        match self.fill().await {
            Ok(0) => Err(Failure::Protocol(format!("the connection closed in the middle of the {what}"))),
            Ok(_) => Ok(()),
            Err(e) => Err(Failure::Protocol(format!("reading the {what}: {e}"))),
        }
    }

    /// Reads the final response head, skipping interim (1xx) responses. A head is parsed
    /// only once its end may have come (an empty line): parsed after every read, a head
    /// trickled a byte at a time cost time growing with the square of its size. The buffer
    /// is made small again after it, for the body's wait.
    async fn head(&mut self) -> Result<Head, Failure> {
        let mut received_any = false;
        // Bytes of `available()` already looked at for an empty line.
        let mut looked: usize = 0;
        loop {
            let available = self.available();
            let fresh = &available[looked.saturating_sub(3)..];
            let may_end = fresh.windows(2).any(|w| w == b"\n\n") || fresh.windows(3).any(|w| w == b"\n\r\n");
            looked = available.len();
            let parsed = if may_end { parse_head(available)? } else { None };
            match parsed {
                Some((length, head)) => {
                    self.consume(length);
                    looked = 0;
                    if (100..200).contains(&head.status) && head.status != 101 {
                        continue;
                    }
                    if self.buf.capacity() > HELD_AFTER_HEAD_MAX {
                        let rest = self.available().to_vec();
                        (self.buf, self.start) = (rest, 0);
                    }
                    return Ok(head);
                }
                None => {
                    if self.available().len() >= HEAD_BYTES_MAX {
                        return Err(Failure::Protocol("the response head is too large".into()));
                    }
                    match self.fill().await {
                        Ok(0) if !received_any => {
                            return Err(Failure::ClosedBeforeResponse(io::ErrorKind::UnexpectedEof.into()))
                        }
                        Ok(0) => return Err(Failure::Protocol("the connection closed in the response head".into())),
                        Ok(_) => received_any = true,
                        Err(e) if !received_any => return Err(Failure::ClosedBeforeResponse(e)),
                        Err(e) => return Err(Failure::Protocol(format!("reading the response head: {e}"))),
                    }
                }
            }
        }
    }

    /// Reads `length` body bytes. False when the body was too large to drain.
    async fn fixed(&mut self, length: u64, body: &mut Excerpt) -> Result<bool, Failure> {
        let mut remaining = length;
        while remaining > 0 {
            if self.available().is_empty() {
                self.fill_or_fail("response body").await?;
            }
            let take = (self.available().len() as u64).min(remaining) as usize;
            let within_budget = body.add(&self.available()[..take]);
            self.consume(take);
            remaining -= take as u64;
            if !within_budget && remaining > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Reads a chunked body to its end. False when it was too large to drain.
    async fn chunked(&mut self, body: &mut Excerpt) -> Result<bool, Failure> {
        loop {
            let size = loop {
                match httparse::parse_chunk_size(self.available()) {
                    Ok(httparse::Status::Complete((length, size))) => {
                        self.consume(length);
                        break size;
                    }
                    Ok(httparse::Status::Partial) if self.available().len() < 4096 => {
                        self.fill_or_fail("chunk size").await?
                    }
                    _ => return Err(Failure::Protocol("malformed chunk size".into())),
                }
            };
            if size == 0 {
                return self.trailers().await.map(|_| true);
            }
            if !self.fixed(size, body).await? || !body.within_budget() {
                return Ok(false);
            }
            while self.available().len() < 2 {
                self.fill_or_fail("chunk").await?;
            }
            if &self.available()[..2] != b"\r\n" {
                return Err(Failure::Protocol("a chunk does not end with CRLF".into()));
            }
            self.consume(2);
        }
    }

    /// Skips the trailer section after the last chunk, up to its empty line.
    async fn trailers(&mut self) -> Result<(), Failure> {
        loop {
            match self.available().windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.consume(2);
                    return Ok(());
                }
                Some(end) => self.consume(end + 2),
                None if self.available().len() < 4096 => self.fill_or_fail("trailers").await?,
                None => return Err(Failure::Protocol("the trailers are too large".into())),
            }
        }
    }

    /// Reads until the server closes, up to the excerpt plus the drain limit.
    async fn until_close(&mut self, body: &mut Excerpt) -> Result<(), Failure> {
        loop {
            let available = self.available().len();
            let within_budget = body.add(&self.available()[..available]);
            self.consume(available);
            if !within_budget {
                return Ok(());
            }
            match self.fill().await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(Failure::Protocol(format!("reading the response body: {e}"))),
            }
        }
    }
}

/// Parses a response head at the start of `bytes`: its length and what it says, or `None`
/// while it is incomplete. Not async on purpose: the parser's header array (3 KiB) then
/// lives on the stack for the call, not in every delivery task's state.
fn parse_head(bytes: &[u8]) -> Result<Option<(usize, Head)>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(bytes).map_err(|e| Failure::Protocol(format!("malformed response head: {e}")))? {
        httparse::Status::Complete(length) => Ok(Some((length, read_head(&response)?))),
        httparse::Status::Partial => Ok(None),
    }
}

/// The parts of a response head the delivery needs, and the body's framing.
fn read_head(response: &httparse::Response) -> Result<Head, Failure> {
    let status = response.code.unwrap_or(0);
    let mut retry_after = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = response.version != Some(1);
    for header in response.headers.iter() {
        let value = || String::from_utf8_lossy(header.value);
        if header.name.eq_ignore_ascii_case("retry-after") {
            retry_after = Some(value().into_owned());
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = value().trim().parse::<u64>().map_err(|_| Failure::Protocol("bad content-length".into()))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(Failure::Protocol("conflicting content-length headers".into()));
            }
            length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value().rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                close = true;
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = value();
            if value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                close = true;
            } else if response.version == Some(0)
                && value.split(',').any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
            {
                close = false;
            }
        }
    }
    if chunked && length.is_some() {
        // Both framings: chunked wins, and the connection is not trusted with another request.
        close = true;
    }
    if status == 101 {
        // The server switched protocols; the connection no longer speaks HTTP/1.1.
        close = true;
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(length) = length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    Ok(Head { status, retry_after, keep_alive: !close, framing })
}

#[cfg(test)]
mod tests;
