//! The test mock upstream as a standalone server, for the benchmark: `mock-upstream 127.0.0.1:9000`.

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let addr = addr.parse().expect("usage: mock-upstream HOST:PORT");
    let mock = tollgate_tests::MockUpstream::start_on(addr).await;
    eprintln!("mock upstream listening on {}", mock.addr);
    let _ = tokio::signal::ctrl_c().await;
}
