//! Logging and the metrics endpoint.

use crate::metrics::Metrics;
use std::sync::Arc;

/// Logs as text to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,aws=warn,hyper=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Serves `/metrics` (Prometheus text format) and `/healthz` in the background.
pub async fn serve_metrics(addr: std::net::SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    use axum::{Router, routing::get};
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.encode() }))
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}
