//! The test bed for end-to-end tests: fake API server + moto + registry + fleet simulator, and the
//! real controllers running in-process against them.

use anyhow::Context as _;
use kube::api::{Api, PostParams};
use std::sync::Arc;
use std::time::Duration;
use tenant_operator::controller::{self, Context, Settings};
use tenant_operator::crd::Tenant;
use tenant_operator::metrics::Metrics;
use testbed::apiserver::FakeApiServer;
use testbed::stack::Stack;

/// Everything one test needs.
pub struct Bed {
    /// Kept alive for the test's duration (the kubectl tests also use its URL).
    #[allow(dead_code)]
    pub server: FakeApiServer,
    pub stack: Stack,
    pub client: kube::Client,
    pub metrics: Arc<Metrics>,
    /// The registry webhook listener (serves for the bed's lifetime, with or without controllers).
    #[allow(dead_code)]
    pub webhook: std::net::SocketAddr,
    /// The running controllers' context (fault points live there).
    pub ctx: Option<Arc<Context>>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    controllers: Option<tokio::task::JoinHandle<()>>,
}

pub const NS: &str = "fleet";

/// Fast settings for tests.
pub fn test_settings() -> Settings {
    Settings {
        observe_interval: Duration::from_secs(3),
        poll_interval: Duration::from_millis(300),
        env_hmac_key: b"e2e-test-key".to_vec(),
        ..Default::default()
    }
}

impl Bed {
    /// Starts the bed and the controllers.
    pub async fn start() -> anyhow::Result<Bed> {
        let mut bed = Bed::start_without_controllers().await?;
        bed.start_controllers(test_settings()).await;
        Ok(bed)
    }

    /// Starts the bed only.
    pub async fn start_without_controllers() -> anyhow::Result<Bed> {
        tenant_operator::registry::install_crypto_provider();
        // Operator logs go to the test's output (shown for failing tests, or with --nocapture).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,kube=warn,aws=warn"))
            .with_test_writer()
            .try_init();
        let stack = Stack::start().await.context("test bed stack")?;
        let server = FakeApiServer::start().await?;
        for (_, crd) in tenant_operator::crd::all_crds() {
            server.install_crd(&crd)?;
        }
        let client = server.client()?;
        let webhook =
            tenant_operator::webhook::serve(([127, 0, 0, 1], 0).into(), client.clone(), std::future::pending()).await?;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        namespaces
            .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": NS}}))?)
            .await?;
        Ok(Bed {
            server,
            stack,
            client,
            metrics: Arc::new(Metrics::default()),
            webhook,
            ctx: None,
            stop: None,
            controllers: None,
        })
    }

    /// Starts the controllers (again, after `stop_controllers`, to simulate a restart).
    pub async fn start_controllers(&mut self, settings: Settings) {
        let aws = tenant_operator::demo::sdk_for(&self.stack).await;
        let ctx = Arc::new(Context::new(self.client.clone(), Arc::new(aws), settings, self.metrics.clone()));
        let (tx, rx) = tokio::sync::watch::channel(false);
        self.ctx = Some(ctx.clone());
        self.stop = Some(tx);
        let resolver = Arc::new(
            tenant_operator::registry::OciResolver::new(tenant_operator::registry::RegistrySettings::new(
                vec![],
                vec![self.stack.registry.clone()],
                vec![],
            ))
            .expect("registry client"),
        );
        self.controllers = Some(tokio::spawn(controller::run_all(ctx, resolver, rx)));
    }

    /// Stops the controllers, as a killed operator would stop.
    pub async fn stop_controllers(&mut self) {
        if let Some(h) = self.controllers.take() {
            h.abort();
            let _ = h.await;
        }
        self.stop = None;
    }

    pub fn tenants(&self) -> Api<Tenant> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Applies a manifest given as JSON.
    pub async fn create<K>(&self, value: serde_json::Value) -> anyhow::Result<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), NS);
        let obj: K = serde_json::from_value(value)?;
        Ok(api.create(&PostParams::default(), &obj).await?)
    }

    /// Waits until `pred` holds for the tenant, or fails with its last status.
    pub async fn wait_tenant(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Tenant) -> bool,
    ) -> anyhow::Result<Tenant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let t = self.tenants().get(name).await?;
            if pred(&t) {
                return Ok(t);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "tenant {name}: timed out waiting for {what}; status: {}",
                    serde_json::to_string_pretty(&t.status)?
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(h) = self.controllers.take() {
            h.abort();
        }
    }
}

/// The condition's (status, reason), if present.
pub fn cond(t: &Tenant, type_: &str) -> Option<(String, String)> {
    t.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
}
