//! Tests of the HTTP/1.1 exchange over an in-memory duplex stream.

use super::*;

/// Runs one exchange against `answer`, given in pieces written one by one.
async fn exchange_with(pieces: &[&[u8]], excerpt_max: usize) -> (Result<Response, Failure>, Vec<u8>) {
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
    let server_task = tokio::spawn(async move {
        let mut request = vec![0u8; 4096];
        let n = server.read(&mut request).await.unwrap();
        for piece in pieces {
            // The client may stop reading (a head or body too large): then writes fail.
            let _ = server.write_all(&piece).await;
            let _ = server.flush().await;
            tokio::task::yield_now().await;
        }
        request.truncate(n);
        request
    });
    let head = request_head("/hook?x=1", "example.com", "Hookline/test", &[("x-a".into(), "1".into())], 2).unwrap();
    let result = exchange(&mut client, &head, &Bytes::from_static(b"{}"), excerpt_max).await;
    drop(client);
    (result, server_task.await.unwrap())
}

#[tokio::test]
async fn the_request_is_framed_by_hookline() {
    let (result, request) = exchange_with(&[b"HTTP/1.1 204 No Content\r\n\r\n"], 64).await;
    assert_eq!(
        String::from_utf8(request).unwrap(),
        "POST /hook?x=1 HTTP/1.1\r\nhost: example.com\r\nuser-agent: Hookline/test\r\ncontent-length: 2\r\n\
         x-a: 1\r\n\r\n{}"
    );
    let response = result.unwrap();
    assert_eq!((response.status, response.reusable), (204, true));
    let refused = request_head("/", "h", "ua", &[("x-a".into(), "1\r\nx-b: 2".into())], 0);
    assert!(refused.is_err(), "a header value cannot split the head");
    let framing = request_head("/", "h", "ua", &[("Content-Length".into(), "99".into())], 0).unwrap();
    assert!(!String::from_utf8(framing).unwrap().contains("99"), "framing headers are Hookline's");
}

#[tokio::test]
async fn bodies_are_read_by_length_chunks_or_close() {
    let cases: &[(&[&[u8]], u16, &str, bool)] = &[
        (&[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel", b"lo"], 200, "hel", true),
        (
            &[
                b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n",
                b"3;x=y\r\ncde\r\n0\r\nt: 1\r\n\r\n",
            ],
            201,
            "abc",
            true,
        ),
        (&[b"HTTP/1.1 500 Oops\r\nretry-after: 7\r\n\r\nbody until close"], 500, "bod", false),
        (&[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"], 202, "", true),
        (&[b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"], 200, "ok", false),
        (&[b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"], 200, "ok", false),
        (&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA"], 200, "ok", false),
        (
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
            200,
            "ok",
            false,
        ),
        (&[b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"], 101, "", false),
    ];
    for (pieces, status, excerpt, reusable) in cases {
        let (result, _) = exchange_with(pieces, 3).await;
        let response = result.unwrap_or_else(|e| panic!("{pieces:?}: {e:?}"));
        assert_eq!(response.status, *status, "{pieces:?}");
        assert_eq!(String::from_utf8(response.excerpt).unwrap(), *excerpt, "{pieces:?}");
        assert_eq!(response.reusable, *reusable, "{pieces:?}");
    }
    let (result, _) = exchange_with(&[b"HTTP/1.1 503 Busy\r\nRetry-After: 30\r\ncontent-length: 0\r\n\r\n"], 3).await;
    assert_eq!(result.unwrap().retry_after.as_deref(), Some("30"));
}

#[tokio::test]
async fn broken_responses_are_errors_and_silence_is_told_apart() {
    let (result, _) = exchange_with(&[], 64).await;
    assert!(matches!(result, Err(Failure::ClosedBeforeResponse(_))), "{result:?}");
    for broken in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXX",
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-le",
    ] {
        let (result, _) = exchange_with(&[broken], 64).await;
        assert!(matches!(result, Err(Failure::Protocol(_))), "{:?}: {result:?}", String::from_utf8_lossy(broken));
    }
    let huge = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(HEAD_BYTES_MAX));
    let (result, _) = exchange_with(&[huge.as_bytes()], 64).await;
    assert!(matches!(result, Err(Failure::Protocol(ref m)) if m.contains("too large")), "{result:?}");
}

#[tokio::test]
async fn a_body_too_large_to_drain_leaves_the_connection_unusable() {
    let body = "x".repeat(DRAIN_BYTES_MAX as usize + 10_000);
    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    let (result, _) = exchange_with(&[answer.as_bytes()], 8).await;
    let response = result.unwrap();
    assert_eq!((response.excerpt.len(), response.reusable), (8, false));
}

#[test]
fn header_checks_agree_with_the_http_crate() {
    // Every character, alone and inside a name and a value: the hand-written checks accept
    // exactly what `http::HeaderName` and `http::HeaderValue` accept.
    for c in (0u32..=0x7f).chain([0xa0, 0xe9, 0x2603]).filter_map(char::from_u32) {
        for name in [format!("{c}"), format!("x-{c}-y")] {
            let http = axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok();
            assert_eq!(super::valid_header_name(&name), http, "name {name:?}");
        }
        for value in [format!("{c}"), format!("a{c}b")] {
            let http = axum::http::HeaderValue::from_str(&value).is_ok();
            assert_eq!(super::valid_header_value(&value), http, "value {value:?}");
        }
    }
    assert!(!super::valid_header_name(""));
    assert!(super::valid_header_value(""));
}

/// A server that answers before reading the whole request and closes (a 413 for a body
/// too large, as Go's server does past 256 KiB unread): the write fails, and the answer is
/// read all the same; it was an error without a status (so a 410 never disabled anything).
#[tokio::test]
async fn an_answer_sent_before_the_request_was_read_is_kept() {
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    let server_task = tokio::spawn(async move {
        let mut request = vec![0u8; 4096];
        let _ = server.read(&mut request).await.unwrap();
        let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        server.write_all(answer).await.unwrap();
        drop(server);
    });
    let body = Bytes::from(vec![b'x'; 1 << 20]);
    let head = request_head("/hook", "example.com", "Hookline/test", &[], body.len()).unwrap();
    let response = exchange(&mut client, &head, &body, 64).await.unwrap();
    assert_eq!((response.status, response.reusable), (413, false));
    server_task.await.unwrap();
}

/// A response head near the 64 KiB limit, then a body that is slow to come: the read
/// buffer grew a chunk at a time (doubling made it 128 KiB), and is small again for the
/// body's wait (it was kept at its largest for the whole attempt, per delivery).
#[tokio::test]
async fn a_large_head_does_not_keep_a_large_buffer() {
    let (mut client, mut server) = tokio::io::duplex(8 * 1024);
    let head = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 5\r\n\r\nhe", "b".repeat(65_000));
    tokio::spawn(async move {
        // A piece at a time, as a slow server sends it.
        for piece in head.as_bytes().chunks(700) {
            server.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        std::future::pending::<()>().await;
    });
    let mut reader = Reader { stream: &mut client, buf: Vec::new(), start: 0 };
    let parsed = reader.head().await.unwrap();
    assert_eq!(parsed.status, 200);
    assert!(reader.buf.capacity() <= HELD_AFTER_HEAD_MAX, "{}", reader.buf.capacity());
    assert_eq!(reader.available(), b"he");
}
