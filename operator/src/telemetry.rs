//! Logging and the metrics endpoint.

use crate::metrics::Metrics;
use std::sync::Arc;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object a line (for log collectors).
    Json,
}

/// The filter when none is given.
pub const DEFAULT_FILTER: &str = "info,kube=warn,aws=warn,hyper=warn";

/// Logs as text to stderr, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]).
pub fn init() {
    init_with(LogFormat::Text, &std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_string()));
}

/// Logs to stderr in `format`, filtered by `filter` (EnvFilter syntax; the default on a bad one).
pub fn init_with(format: LogFormat, filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Serves `/metrics` (OpenMetrics or classic Prometheus text, by the `Accept` header), `/healthz` (the process answers) and `/readyz`
/// (200 once `ready` is set: the API server answered; 503 before) in the background.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    use axum::{Router, http::StatusCode, routing::get};
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| async move {
                let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok());
                let (content_type, body) = metrics.exposition(accept);
                ([(axum::http::header::CONTENT_TYPE, content_type)], body)
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.load(std::sync::atomic::Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}
