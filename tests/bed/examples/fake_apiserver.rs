//! Runs the fake API server until interrupted: `cargo run -p testbed --example fake_apiserver --
//! [ADDR] [KUBECONFIG]` (defaults: `127.0.0.1:0`, `./testbed.kubeconfig`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:0").parse()?;
    let kubeconfig = args.next().unwrap_or_else(|| "testbed.kubeconfig".to_string());
    let server = testbed::apiserver::FakeApiServer::start_on(addr).await?;
    server.write_kubeconfig(std::path::Path::new(&kubeconfig))?;
    println!("fake API server on {} (kubeconfig {kubeconfig})", server.url());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
