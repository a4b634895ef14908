//! The demo: `cargo run -p testbed --bin tenant-operator-demo -- [--kubeconfig PATH] [--seconds N]`.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tenant_operator::registry::install_crypto_provider();
    tenant_operator::telemetry::init();
    testbed::demo::run(testbed::demo::DemoArgs::parse()).await
}
