//! TLS termination: ALPN h2 and http/1.1, minimum version, and certificate reload from disk.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use tollgate_tests::*;

async fn start_tls(
    dir: &std::path::Path,
    cert: &TestCert,
    min_version: &str,
) -> (MockUpstream, TestGateway) {
    start_tls_with(dir, cert, min_version, "").await
}

/// [`start_tls`] with more `server:` settings (`extra`, indented as under `server:`).
async fn start_tls_with(
    dir: &std::path::Path,
    cert: &TestCert,
    min_version: &str,
    extra: &str,
) -> (MockUpstream, TestGateway) {
    let (cert_path, key_path) = cert.write(dir);
    let mock = MockUpstream::start().await;
    let extra = format!(
        "  tls:\n    cert: {}\n    key: {}\n    min_version: \"{min_version}\"\n{extra}",
        cert_path.display(),
        key_path.display()
    );
    let gw = TestGateway::start(&config_yaml(&[mock.url()], &extra)).await;
    (mock, gw)
}

fn https_client(cert: &TestCert, http1_only: bool) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(cert.cert_pem.as_bytes()).unwrap();
    let b = reqwest::Client::builder()
        .add_root_certificate(root)
        .use_rustls_tls();
    let b = if http1_only { b.http1_only() } else { b };
    b.build().unwrap()
}

/// Handshakes with raw rustls and returns the leaf certificate the server presented.
async fn presented_cert(
    addr: std::net::SocketAddr,
    trust: &[&TestCert],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in trust {
        roots.add(CertificateDer::from(c.cert_der.clone())).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = handshake(addr, config).await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

/// A TLS connection to `addr` (as `localhost`), or why the handshake failed.
async fn handshake(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())
}

fn trusting(cert: &TestCert) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert_der.clone()))
        .unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[tokio::test]
async fn serves_http2_and_http1_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate();
    let (mock, gw) = start_tls(dir.path(), &cert, "1.2").await;
    let url = format!("https://localhost:{}/v1/chat/completions", gw.addr.port());
    for (http1_only, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let resp = https_client(&cert, http1_only)
            .post(&url)
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), version);
    }
    assert_eq!(mock.last_headers()["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn min_version_1_3_refuses_tls_1_2_clients() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate();
    let (_mock, gw) = start_tls(dir.path(), &cert, "1.3").await;
    assert!(
        presented_cert(gw.addr, &[&cert], &[&rustls::version::TLS12])
            .await
            .is_err()
    );
    assert!(
        presented_cert(gw.addr, &[&cert], &[&rustls::version::TLS13])
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn renewed_certificate_is_served_without_a_restart_and_open_connections_survive() {
    let dir = tempfile::tempdir().unwrap();
    let old = TestCert::generate();
    let (_mock, gw) = start_tls(dir.path(), &old, "1.2").await;
    assert_eq!(
        presented_cert(gw.addr, &[&old], &[&rustls::version::TLS13])
            .await
            .unwrap(),
        old.cert_der
    );

    // A keep-alive connection opened before the renewal.
    let client = https_client(&old, true);
    let url = format!("https://localhost:{}/v1/chat/completions", gw.addr.port());
    let send = || {
        client
            .post(&url)
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(false))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);

    let new = TestCert::generate();
    new.write(dir.path());
    let mut served = Vec::new();
    for _ in 0..50 {
        served = presented_cert(gw.addr, &[&old, &new], &[&rustls::version::TLS13])
            .await
            .unwrap();
        if served == new.cert_der {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served, new.cert_der,
        "renewed certificate not served within 2.5 s"
    );
    assert!(cert_reloads(&gw, "ok").await >= 1);
    // The old connection is still usable (reqwest reuses it; a new handshake would fail to verify
    // against the old root only).
    assert_eq!(send().await.unwrap().status(), 200);
}

/// `tollgate_tls_certificate_reloads_total{result}` on the gateway's `/metrics`.
async fn cert_reloads(gw: &TestGateway, result: &str) -> u64 {
    let text = gw.metrics().await;
    let series = format!("tollgate_tls_certificate_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn a_broken_renewal_keeps_the_current_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate();
    let (_mock, gw) = start_tls(dir.path(), &cert, "1.2").await;
    assert_eq!(cert_reloads(&gw, "failed").await, 0);
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    // The watcher saw the change and refused the file (not merely: nothing happened yet).
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            cert_reloads(&gw, "failed").await >= 1
        })
        .await,
        "the broken certificate was never tried"
    );
    assert_eq!(cert_reloads(&gw, "ok").await, 0);
    assert_eq!(
        presented_cert(gw.addr, &[&cert], &[&rustls::version::TLS13])
            .await
            .unwrap(),
        cert.cert_der
    );
}

/// A client that opens a connection and never finishes the TLS handshake is closed at
/// `timeouts.tls_handshake`, not before and not much after.
#[tokio::test]
async fn a_silent_tls_client_is_closed_at_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate();
    let (_mock, gw) = start_tls_with(
        dir.path(),
        &cert,
        "1.2",
        "  timeouts:\n    tls_handshake: 400ms\n",
    )
    .await;
    for partial in [&b""[..], &[0x16, 0x03, 0x01, 0x00, 0x40, 0x01][..]] {
        // Nothing at all, then the first bytes of a ClientHello and no more.
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, partial)
            .await
            .unwrap();
        let start = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("still open after 5 s")
            .unwrap_or(0);
        let waited = start.elapsed();
        assert_eq!(n, 0, "the server wrote something: {:?}", &buf[..n]);
        assert!(
            waited >= Duration::from_millis(350) && waited < Duration::from_secs(2),
            "closed after {waited:?}, expected about 400 ms ({partial:?})"
        );
    }
    // A real client still gets through.
    assert_eq!(
        presented_cert(gw.addr, &[&cert], &[&rustls::version::TLS13])
            .await
            .unwrap(),
        cert.cert_der
    );
}

/// Over TLS, every answer carries `Strict-Transport-Security` (the default value), the gateway's
/// own errors and `/health` included; plain HTTP never does (edge.rs).
#[tokio::test]
async fn hsts_is_sent_on_every_answer_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate();
    let (_mock, gw) = start_tls_with(
        dir.path(),
        &cert,
        "1.2",
        "  response_headers:\n    hsts: max-age=63072000; includeSubDomains\n",
    )
    .await;
    let base = format!("https://localhost:{}", gw.addr.port());
    let c = https_client(&cert, false);
    let answers = [
        c.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap(),
        c.post(format!("{base}/v1/chat/completions"))
            .json(&chat_body(false))
            .send()
            .await
            .unwrap(),
        c.get(format!("{base}/nowhere")).send().await.unwrap(),
        c.get(format!("{base}/health")).send().await.unwrap(),
    ];
    for (r, status) in answers.iter().zip([200, 401, 404, 200]) {
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(
            r.headers()["strict-transport-security"],
            "max-age=63072000; includeSubDomains",
            "{status}"
        );
    }
}

/// `max_connections_per_ip` holds over TLS too: a connection past the cap is closed before any
/// handshake work (no 429 body can be written without one), and the held ones keep working.
#[tokio::test]
async fn the_per_address_cap_holds_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate();
    let (_mock, gw) =
        start_tls_with(dir.path(), &cert, "1.2", "  max_connections_per_ip: 2\n").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut held = Vec::new();
    for _ in 0..2 {
        let tls = handshake(gw.addr, trusting(&cert)).await;
        held.push(tls.expect("a connection within the cap completes its handshake"));
    }
    let third = handshake(gw.addr, trusting(&cert)).await;
    assert!(
        third.is_err(),
        "the third connection from one address got a handshake"
    );
    let s = &mut held[1];
    s.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}
