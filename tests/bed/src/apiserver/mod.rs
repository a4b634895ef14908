//! A fake Kubernetes API server, in memory, over plain HTTP.
//!
//! It honours what kube-runtime relies on (see `fake-apiserver-contract.md`): LIST and WATCH
//! with replay from a resourceVersion, bookmarks, in-stream `410 Expired`, `/status`
//! subresources, every PATCH flavour including server-side apply, finalizers, and `Status`
//! errors. It also serves enough for a real `kubectl`: discovery, OpenAPI documents, server-side
//! `Table`s built from printer columns, and a `core/v1` view of `events.k8s.io/v1` Events.
//!
//! Custom resources are pruned, defaulted and validated with [`crate::schema::validate`],
//! including CEL rules.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let server = testbed::apiserver::FakeApiServer::start().await?;
//! let client = server.client()?;
//! # drop(client); Ok(()) }
//! ```

mod crd;
mod discovery;
mod error;
mod events;
mod handlers;
mod patch;
mod selectors;
mod store;
mod table;
mod watch;

#[cfg(test)]
mod kubectl_tests;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use tokio::sync::watch as tokio_watch;

use store::Store;

/// State shared by the request handlers.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Carries the latest resourceVersion; watchers wake up on changes.
    changes: tokio_watch::Sender<u64>,
    /// Set to `true` on shutdown; open watches end.
    shutdown: tokio_watch::Sender<bool>,
    bookmark_interval: Mutex<Duration>,
}

impl Shared {
    fn new() -> Self {
        let store = Store::new();
        let rv = store.rv;
        Self {
            store: Mutex::new(store),
            changes: tokio_watch::channel(rv).0,
            shutdown: tokio_watch::channel(false).0,
            bookmark_interval: Mutex::new(Duration::from_secs(5)),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        match self.store.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Wakes the watchers up (call after a write, without holding the lock).
    pub(crate) fn notify(&self) {
        let rv = self.lock().rv;
        self.changes.send_replace(rv);
    }

    pub(crate) fn bookmark_interval(&self) -> Duration {
        match self.bookmark_interval.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }
}

/// The fake API server. Stops when dropped or on [`FakeApiServer::shutdown`].
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").field("addr", &self.addr).finish()
    }
}

impl FakeApiServer {
    /// Starts on `127.0.0.1` with a free port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr` (port 0 picks a free port). Must be called inside a Tokio runtime.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the fake API server to {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new());
        let app = axum::Router::new().fallback(handlers::handle).with_state(shared.clone());
        let mut stop = shared.shutdown.subscribe();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "fake API server stopped");
            }
        });
        Ok(Self { addr, shared, task: Some(task) })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An explicit client configuration (no kubeconfig, no proxy from the environment), with
    /// default namespace `default`.
    pub fn client_config(&self) -> kube::Config {
        let uri: http::Uri = match self.url().parse() {
            Ok(u) => u,
            Err(_) => http::Uri::from_static("http://127.0.0.1"),
        };
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".to_string();
        config.proxy_url = None;
        config.read_timeout = Some(Duration::from_secs(300));
        config
    }

    /// A `kube::Client` for this server.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        kube::Client::try_from(self.client_config()).context("building a kube client")
    }

    /// Writes a kubeconfig (plain HTTP, no auth) that a real `kubectl` can use.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {url}\n\
             users:\n- name: testbed\n  user: {{}}\ncontexts:\n- name: testbed\n  context:\n    \
             cluster: testbed\n    user: testbed\n    namespace: default\ncurrent-context: testbed\n\
             preferences: {{}}\n",
            url = self.url()
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Installs (or updates) a CRD, as `kubectl apply` of it would; its kind is servable at once.
    pub fn install_crd(&self, crd: &CustomResourceDefinition) -> anyhow::Result<()> {
        let value = serde_json::to_value(crd)?;
        handlers::install_crd(&self.shared, value).map_err(|e| anyhow::anyhow!(e.message))
    }

    /// Keeps only the last `n` events per resource type for watch replay: watching from an
    /// older resourceVersion gets an in-stream `410 Expired`.
    pub fn set_watch_log_retention(&self, n: usize) {
        self.shared.lock().set_retention(n);
    }

    /// How often open watches that allow bookmarks get a BOOKMARK (default 5 s).
    pub fn set_bookmark_interval(&self, every: Duration) {
        if let Ok(mut g) = self.shared.bookmark_interval.lock() {
            *g = every;
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Stops serving: open watches end, the listener closes.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
