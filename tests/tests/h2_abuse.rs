//! HTTP/2 abuse with hand-made frames: floods and resets a well-behaved client library would never
//! send. Each test checks that the gateway answers with GOAWAY or stays bounded, that the upstream
//! sees a bounded number of requests, and (for floods) that another client keeps being served.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_tests::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal without indexing" with an indexed name (static table index < 15).
fn literal(index: u8, value: &str) -> Vec<u8> {
    let mut b = vec![index];
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// HPACK literal without indexing, new name.
fn literal_new(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0u8, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// A header block for `POST /v1/chat/completions` with the test key.
fn request_block(extra: &[u8]) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
    b.extend(literal(0x04, "/v1/chat/completions")); // :path
    b.extend(literal(0x01, "gw")); // :authority
    b.extend(literal_new(
        "authorization",
        &format!("Bearer {CLIENT_KEY}"),
    ));
    b.extend(literal_new("x-mock-head-delay-ms", "500"));
    b.extend_from_slice(extra);
    b
}

async fn open(gw: &TestGateway) -> TcpStream {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    tcp
}

/// Reads the server's frames until `stop` returns `Some` for one (its answer is returned), the
/// connection closes, or `within` passes (`None`). `stop` sees (type, stream id, payload).
async fn read_frames<T>(
    tcp: &mut TcpStream,
    within: Duration,
    mut stop: impl FnMut(u8, u32, &[u8]) -> Option<T>,
) -> Option<T> {
    let mut buf = Vec::new();
    let deadline = Instant::now() + within;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = (usize::from(buf[at]) << 16)
                | (usize::from(buf[at + 1]) << 8)
                | usize::from(buf[at + 2]);
            if buf.len() < at + 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]);
            if let Some(answer) = stop(buf[at + 3], stream, &buf[at + 9..at + 9 + len]) {
                return Some(answer);
            }
            at += 9 + len;
        }
        buf.drain(..at);
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The error code of the first GOAWAY the server sends within `within`, if any.
async fn read_until_goaway(tcp: &mut TcpStream, within: Duration) -> Option<u32> {
    read_frames(tcp, within, |kind, _, p| {
        (kind == GOAWAY && p.len() >= 8).then(|| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
    })
    .await
}

/// p99 latency of `n` sequential `/health` requests over HTTP/1.
async fn p99(gw: &TestGateway, n: usize) -> Duration {
    let c = client();
    let mut times = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let r = c.get(gw.url("/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        times.push(start.elapsed());
    }
    times.sort();
    times[(n * 99 / 100).min(n - 1)]
}

async fn setup() -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_yaml(&[mock.url()], "")).await;
    (mock, gw)
}

#[tokio::test]
async fn rapid_reset_before_accept_gets_goaway() {
    let (mock, gw) = setup().await;
    let mut tcp = open(&gw).await;
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block(&[]),
        ));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let _ = tcp.write_all(&burst).await;
    let code = read_until_goaway(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(code, Some(0xb), "expected GOAWAY(ENHANCE_YOUR_CALM)");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        mock.requests() < 200,
        "{} reached the upstream",
        mock.requests()
    );
}

#[tokio::test]
async fn continuation_floods_get_goaway() {
    let (mock, gw) = setup().await;
    let mut tcp = open(&gw).await;
    let _ = tcp
        .write_all(&frame(HEADERS, END_STREAM, 1, &request_block(&[])))
        .await;
    let block = literal_new("x-flood", "0123456789abcdef");
    let mut flood = Vec::new();
    for _ in 0..20_000 {
        flood.extend(frame(CONTINUATION, 0, 1, &block));
    }
    let writer = tokio::spawn(async move {
        let _ = tcp.write_all(&flood).await;
        tcp
    });
    let mut tcp = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the gateway stopped reading but did not close")
        .unwrap();
    let start = Instant::now();
    let goaway = read_until_goaway(&mut tcp, Duration::from_secs(3)).await;
    assert!(
        goaway.is_some() || start.elapsed() < Duration::from_secs(3),
        "neither GOAWAY nor close"
    );
    assert_eq!(mock.requests(), 0);
}

/// Sends `frames` as fast as the gateway reads them for `secs`, while another client's p99 is
/// measured; returns (baseline p99, p99 under the flood).
async fn under_flood(gw: &TestGateway, one: Vec<u8>) -> (Duration, Duration) {
    let base = p99(gw, 100).await;
    let mut tcp = open(gw).await;
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    let flood = tokio::spawn(async move {
        let start = Instant::now();
        let mut sent = 0usize;
        while start.elapsed() < Duration::from_secs(3) {
            match tokio::time::timeout(Duration::from_millis(200), tcp.write_all(&batch)).await {
                Ok(Ok(())) => sent += 1000,
                Ok(Err(_)) => break, // closed by the gateway
                Err(_) => {}         // the gateway stopped reading: bounded
            }
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = p99(gw, 100).await;
    let sent = flood.await.unwrap();
    eprintln!("another client's p99: {base:?} alone, {during:?} under a flood of {sent} frames");
    (base, during)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_floods_are_bounded_and_other_clients_stay_fast() {
    let (_mock, gw) = setup().await;
    let (base, during) = under_flood(&gw, frame(PING, 0, 0, &[7; 8])).await;
    assert!(
        during <= base * 2 + Duration::from_millis(25),
        "p99 {base:?} → {during:?} under a PING flood"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_floods_are_bounded_and_other_clients_stay_fast() {
    let (_mock, gw) = setup().await;
    let (base, during) = under_flood(&gw, frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])).await;
    assert!(
        during <= base * 2 + Duration::from_millis(25),
        "p99 {base:?} → {during:?} under a SETTINGS flood"
    );
}

/// RFC 9113 §8.1.1: a malformed request is a stream error; other streams carry on.
#[tokio::test]
async fn a_malformed_request_does_not_cut_other_streams() {
    let (mock, gw) = setup().await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    // Stream 1: a stream that takes ~1 s.
    let resp = h2_chat_stream(&mut h2, gw.addr, 10, 100).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Meanwhile a malformed request on the same connection, written by hand: `content-length`
    // that contradicts the body (RFC 9113 §8.1.1 malformed).
    let bad = http::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("content-length", "1000")
        .body(())
        .unwrap();
    let mut h2b = h2.clone().ready().await.unwrap();
    if let Ok((bad_resp, mut bad_body)) = h2b.send_request(bad, false) {
        let _ = bad_body.send_data(bytes::Bytes::from_static(b"{}"), true);
        let _ = tokio::time::timeout(Duration::from_secs(3), bad_resp).await;
    }
    // Stream 1 still completes.
    let mut data = resp.into_body();
    let mut got = 0;
    while let Some(chunk) = data.data().await {
        let chunk = chunk.expect("the in-flight stream was cut");
        got += chunk.len();
        let _ = data.flow_control().release_capacity(chunk.len());
    }
    assert!(got > 0);
    assert!(!conn.is_finished(), "the connection was closed");
    assert_eq!(mock.completed(), 1);
}

/// The same with a malformed header written by hand (an upper-case name, which RFC 9113 §8.2.1
/// makes malformed): the bad stream should be reset and the stream in flight answered. The `h2`
/// crate under hyper fails the header block's decoding instead and answers GOAWAY(PROTOCOL_ERROR),
/// a connection error that cuts every stream (Envoy had the same default; envoy#20575). Kept as
/// the known gap it is (docs/limits.md); run with `--ignored` to see it.
#[tokio::test]
#[ignore = "h2 treats an invalid header name as a connection error; see docs/limits.md"]
async fn a_malformed_header_resets_its_stream_only() {
    let (_mock, gw) = setup().await;
    let mut tcp = open(&gw).await;
    // Stream 1: answered after ~500 ms (the mock's head delay).
    tcp.write_all(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block(&[]),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let bad = request_block(&literal_new("X-Bad", "1"));
    tcp.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &bad))
        .await
        .unwrap();
    // Read frames: stream 1's response HEADERS must come, and no GOAWAY before it.
    let answered = read_frames(
        &mut tcp,
        Duration::from_secs(5),
        |kind, stream, _| match kind {
            GOAWAY => panic!("GOAWAY before stream 1 was answered"),
            HEADERS if stream == 1 => Some(()),
            _ => None,
        },
    )
    .await
    .is_some();
    assert!(answered, "stream 1 was never answered");
}

/// `timeouts.http2_keepalive`: a peer that sends nothing for the interval gets a PING, and one
/// that does not answer it within `http2_keepalive_timeout` is closed as dead, its exchange
/// cancelled upstream (here: a request whose answer would take 20 s).
#[tokio::test]
async fn a_silent_peer_gets_a_ping_and_is_closed_when_it_never_answers() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_yaml(
        &[mock.url()],
        "  timeouts: {http2_keepalive: 1s, http2_keepalive_timeout: 1s}",
    ))
    .await;
    let mut tcp = open(&gw).await;
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.extend(literal(0x04, "/v1/chat/completions"));
    block.extend(literal(0x01, "gw"));
    block.extend(literal_new(
        "authorization",
        &format!("Bearer {CLIENT_KEY}"),
    ));
    block.extend(literal_new("x-mock-head-delay-ms", "20000"));
    tcp.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await
        .unwrap();
    let sent = Instant::now();
    let mut pings = Vec::new();
    let ended = read_frames(&mut tcp, Duration::from_secs(15), |kind, _, _| {
        if kind == PING {
            pings.push(sent.elapsed());
        }
        None::<()>
    })
    .await;
    let closed_after = sent.elapsed();
    assert!(ended.is_none());
    assert!(
        closed_after < Duration::from_secs(10),
        "still open after {closed_after:?} (pings at {pings:?})"
    );
    // The first PING comes about one interval after the client's last frame; the close, one
    // timeout after that. (Lower bounds only: a loaded machine may be late, never early.)
    assert!(!pings.is_empty(), "closed without a PING");
    assert!(pings[0] >= Duration::from_millis(700), "{pings:?}");
    assert!(
        closed_after >= pings[0] + Duration::from_millis(700),
        "{closed_after:?} {pings:?}"
    );
    assert_eq!(mock.requests(), 1);
    assert!(
        eventually(Duration::from_secs(5), || mock.cancelled() == 1).await,
        "the exchange of the dead peer was not cancelled upstream"
    );
}

/// The same settings do not harm a client that answers PINGs: it can stay silent for longer than
/// the interval and timeout together while its answer is on the way.
#[tokio::test]
async fn a_silent_peer_that_answers_pings_stays_connected() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_yaml(
        &[mock.url()],
        "  timeouts: {http2_keepalive: 1s, http2_keepalive_timeout: 1s}",
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    // Events 2.5 s apart: the client sends nothing in between but PONGs (the `h2` crate
    // answers PINGs by itself).
    let resp = h2_chat_stream(&mut h2, gw.addr, 2, 2500).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the stream was cut");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&text).contains("[DONE]"));
    assert!(!conn.is_finished(), "the connection was closed");
    assert_eq!(mock.completed(), 1);
}

/// RFC 9113 §8.3.1: a request needs an authority. HTTP/2 with neither `:authority` nor `Host` is
/// refused (400, nothing upstream); `Host` alone is enough.
#[tokio::test]
async fn http2_without_authority_needs_a_host() {
    let (mock, gw) = setup().await;
    let mut tcp = open(&gw).await;
    let status_of = |id: u32| {
        move |kind: u8, stream: u32, p: &[u8]| {
            // The first byte of the response block: `:status` from HPACK's static table
            // (0x88 = 200, 0x8c = 400), as hyper's encoder sends it.
            (kind == HEADERS && stream == id).then(|| p.first().copied())
        }
    };
    let mut models = vec![0x82, 0x86]; // :method GET, :scheme http
    models.extend(literal(0x04, "/v1/models"));
    models.extend(literal_new(
        "authorization",
        &format!("Bearer {CLIENT_KEY}"),
    ));
    tcp.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &models))
        .await
        .unwrap();
    let first = read_frames(&mut tcp, Duration::from_secs(5), status_of(1)).await;
    assert_eq!(first, Some(Some(0x8c)), "no authority at all: 400");
    assert_eq!(mock.requests(), 0);

    models.extend(literal_new("host", "gw.example"));
    tcp.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &models))
        .await
        .unwrap();
    let second = read_frames(&mut tcp, Duration::from_secs(5), status_of(3)).await;
    assert_eq!(second, Some(Some(0x88)), "Host stands in for :authority");
    assert_eq!(mock.requests(), 1);
}

/// 500 HTTP/2 streams whose client never opens its flow-control window (five connections of
/// 100): the gateway stops reading their upstream answers (nothing can be sent), so another
/// client's streamed requests stay about as fast as without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_streams_do_not_slow_other_clients() {
    let (mock, gw) = setup().await;
    let chat_p99 = |n: usize| {
        let url = gw.url("/v1/chat/completions");
        async move {
            let mut times = Vec::new();
            for _ in 0..n {
                let start = Instant::now();
                let r = stream_at(&url, 5, 0).await;
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
                times.push(start.elapsed());
            }
            times.sort();
            times[(n * 99 / 100).min(n - 1)]
        }
    };
    let _warm = chat_p99(20).await;
    let base = chat_p99(100).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        let (mut h2, conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(conn);
        for _ in 0..100 {
            h2 = h2.ready().await.unwrap();
            // 3000 events 20 ms apart: a minute's stream, longer than the test.
            held.push(h2_chat_stream(&mut h2, gw.addr, 3000, 20));
        }
    }
    assert!(
        eventually(Duration::from_secs(20), || mock.requests()
            >= 20 + 100 + 500)
        .await,
        "the 500 streams did not all reach the upstream: {}",
        mock.requests()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = chat_p99(100).await;
    eprintln!("another client's p99: {base:?} alone, {during:?} beside 500 zero-window streams");
    assert!(
        during <= base * 3 + Duration::from_millis(25),
        "p99 {base:?} → {during:?} beside 500 zero-window streams"
    );
    assert_eq!(
        mock.completed(),
        20 + 100 + 100,
        "a zero-window stream ran to its end"
    );
}
