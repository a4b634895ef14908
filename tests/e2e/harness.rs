//! The test bed for end-to-end tests: the real control plane (one per test binary, each test in a
//! namespace of its own) + moto + registry + fleet simulator, and the real controllers running
//! in-process against them with the rights the chart grants (its ServiceAccount's token).

use anyhow::Context as _;
use kube::api::{Api, PostParams};
use std::sync::Arc;
use std::time::Duration;
use tenant_operator::controller::{self, Context, Settings};
use tenant_operator::crd::Tenant;
use tenant_operator::metrics::Metrics;
use testbed::controlplane::ControlPlane;
use testbed::stack::Stack;

/// Everything one test needs.
pub struct Bed {
    /// The control plane this test binary shares.
    pub cp: &'static ControlPlane,
    /// This test's namespace (created for it; its controllers watch only it).
    pub ns: String,
    pub stack: Stack,
    /// The admin (what the test itself writes, as a user would).
    pub client: kube::Client,
    /// The operator's identity: the chart's ServiceAccount, with the chart's RBAC.
    pub operator_client: kube::Client,
    pub metrics: Arc<Metrics>,
    /// The registry webhook listener (serves for the bed's lifetime, with or without controllers).
    #[allow(dead_code)]
    pub webhook: std::net::SocketAddr,
    /// The running controllers' context (fault points live there).
    pub ctx: Option<Arc<Context>>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    controllers: Option<tokio::task::JoinHandle<()>>,
}

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
        Bed::start_in(&format!("e2e-{}", uuid_like())).await
    }

    /// Starts the bed only, in a namespace of this name (it must not exist yet).
    pub async fn start_in(ns: &str) -> anyhow::Result<Bed> {
        Bed::start_on(ControlPlane::shared().await.context("the control plane")?, ns).await
    }

    /// Starts the bed only, on a control plane of the test's own.
    pub async fn start_on(cp: &'static ControlPlane, ns: &str) -> anyhow::Result<Bed> {
        tenant_operator::registry::install_crypto_provider();
        // Operator logs go to the test's output (shown for failing tests, or with --nocapture).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,kube=warn,aws=warn"))
            .with_test_writer()
            .try_init();
        let operator_client = cp.operator_client().await.context("installing the operator (crds/, chart)")?;
        let client = cp.admin_client().await?;
        let stack = Stack::start().await.context("test bed stack")?;
        let ns = ns.to_string();
        let webhook = tenant_operator::webhook::serve(
            ([127, 0, 0, 1], 0).into(),
            operator_client.clone(),
            std::future::pending(),
        )
        .await?;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        namespaces
            .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?)
            .await?;
        Ok(Bed {
            cp,
            ns,
            stack,
            client,
            operator_client,
            metrics: Arc::new(Metrics::default()),
            webhook,
            ctx: None,
            stop: None,
            controllers: None,
        })
    }

    /// [`test_settings`], watching only this test's namespace.
    pub fn settings(&self) -> Settings {
        Settings { watch_namespace: Some(self.ns.clone()), ..test_settings() }
    }

    /// A context for controllers of this test: the operator's client, this namespace only.
    pub fn context(
        &self,
        aws: Arc<dyn tenant_operator::aws::Aws>,
        mut settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Context {
        settings.watch_namespace.get_or_insert_with(|| self.ns.clone());
        Context::new(self.operator_client.clone(), aws, settings, metrics)
    }

    /// Starts the controllers (again, after `stop_controllers`, to simulate a restart).
    pub async fn start_controllers(&mut self, settings: Settings) {
        // As `run` does: every AWS call counted in the metrics (calls, errors by class).
        let aws = tenant_operator::aws::counting::Counting::new(
            testbed::demo::sdk_for(&self.stack).await,
            Some(self.metrics.clone()),
        );
        let ctx = Arc::new(self.context(Arc::new(aws), settings, self.metrics.clone()));
        let (tx, rx) = tokio::sync::watch::channel(false);
        self.ctx = Some(ctx.clone());
        self.stop = Some(tx);
        let resolver = self.resolver();
        self.controllers = Some(tokio::spawn(controller::run_all(ctx, resolver, rx)));
    }

    /// The registry resolver of an operator pointed at this bed (its registry is plain HTTP).
    pub fn resolver(&self) -> Arc<tenant_operator::registry::OciResolver> {
        Arc::new(
            tenant_operator::registry::OciResolver::new(tenant_operator::registry::RegistrySettings::new(
                vec![],
                vec![self.stack.registry.clone()],
                vec![],
            ))
            .expect("registry client"),
        )
    }

    /// Stops the controllers, as a killed operator would stop.
    pub async fn stop_controllers(&mut self) {
        if let Some(h) = self.controllers.take() {
            h.abort();
            let _ = h.await;
        }
        self.stop = None;
    }

    /// Reconciles by the bed's controllers of `controller` so far, whatever their result: the
    /// positive signal that a controller looked again.
    pub fn reconciles(&self, controller: &str) -> u64 {
        let want = format!("controller=\"{controller}\"");
        let text = self.metrics.encode();
        let counts = text.lines().filter(|l| l.starts_with("tenant_operator_reconciles_total{") && l.contains(&want));
        counts.filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok()).sum::<f64>() as u64
    }

    /// Waits (bounded) until `controller` has reconciled `more` times since it had `since`.
    pub async fn reconciled_again(&self, controller: &str, since: u64, more: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.reconciles(controller) < since + more {
            assert!(tokio::time::Instant::now() < deadline, "{controller}: not {more} reconciles after {since}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn tenants(&self) -> Api<Tenant> {
        Api::namespaced(self.client.clone(), &self.ns)
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
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.ns);
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

/// A short random suffix for names that must not collide between tests.
pub fn uuid_like() -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{:x}{seq}", n ^ std::process::id().rotate_left(16))
}

/// The condition's (status, reason), if present.
pub fn cond(t: &Tenant, type_: &str) -> Option<(String, String)> {
    t.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
}
