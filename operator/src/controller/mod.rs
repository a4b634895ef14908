//! Controllers: thin adapters between the Kubernetes API, AWS and the pure decisions in `core`.

pub mod batch;
pub mod channel;
pub mod claims;
pub mod collector;
pub mod coordinator;
pub mod dispatch;
pub mod error;
pub mod leader;
pub mod notifier;
pub mod observer;
pub mod tenant;

pub use error::Error;

use crate::aws::{Aws, AwsScope};
use crate::host::document::{self, DocumentConstants};
use crate::metrics::Metrics;
use kube::runtime::events::Reporter;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Field manager for everything the Tenant controller writes.
pub const MANAGER: &str = "tenant-operator";
/// Field manager of the rollout coordinator (it owns `status.target` only).
pub const COORDINATOR_MANAGER: &str = "tenant-operator-coordinator";
/// Field manager of the notifier (it owns `RolloutPolicy.status.notifications` only).
pub const NOTIFIER_MANAGER: &str = "tenant-operator-notifier";
/// Finalizer that removes a tenant's parameters when it is deleted.
pub const FINALIZER: &str = "fleet.molecule.ai/parameters";

/// Operator settings (flags of `tenant-operator run`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Tag that marks an instance as managed by the operator (value `true`).
    pub managed_tag: String,
    /// Tag whose value is the org slug.
    pub org_tag: String,
    /// How often an idle host is observed (jitter of up to a fifth is added).
    pub observe_interval: Duration,
    /// How often an in-flight command is polled.
    pub poll_interval: Duration,
    /// Constants of the SSM document.
    pub document: DocumentConstants,
    /// Key of the HMAC that produces env revisions.
    pub env_hmac_key: Vec<u8>,
    /// Applies kept in status.
    pub history_limit: usize,
    /// How long an observe waits for others to share its command.
    pub observe_batch_window: Duration,
    /// How long an instance lookup or a ping waits for others to share its AWS call.
    pub lookup_batch_window: Duration,
    /// Watch and reconcile only this namespace (`--watch-namespace`); `None`: the whole cluster.
    pub watch_namespace: Option<String>,
    /// This replica's name (`--pod-name`): the events' reporting instance.
    pub instance: Option<String>,
    /// The wait after a notification's first failed attempt (doubling after each, at most 5 min).
    pub notify_retry_base: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            managed_tag: "fleet.molecule.ai/managed".into(),
            org_tag: "fleet.molecule.ai/org".into(),
            observe_interval: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            document: DocumentConstants::default(),
            env_hmac_key: Vec::new(),
            history_limit: 10,
            observe_batch_window: Duration::from_millis(250),
            lookup_batch_window: Duration::from_millis(50),
            watch_namespace: None,
            instance: None,
            notify_retry_base: Duration::from_secs(2),
        }
    }
}

/// Places where a test can make the operator stop as if it were killed there.
#[derive(Debug, Default)]
pub struct FaultPoints {
    /// Stop (the reconcile never returns) right after the intent is written, before SendCommand.
    pub crash_after_intent: std::sync::atomic::AtomicBool,
    /// Stop right after SendCommand, before its id is recorded.
    pub crash_after_send: std::sync::atomic::AtomicBool,
}

/// What every reconcile shares.
pub struct Context {
    /// Kubernetes client.
    pub client: kube::Client,
    /// AWS.
    pub aws: Arc<dyn Aws>,
    /// Settings.
    pub settings: Settings,
    /// Who writes events.
    pub reporter: Reporter,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Fault points for crash tests (never set in production).
    pub faults: FaultPoints,
    /// Which Tenant claims which instance, kept by the Tenant controller's watch.
    pub claims: claims::Index,
    /// Command results, listed per command and shared by the tenants that follow it.
    pub collector: collector::Collector,
    /// Batches instance lookups (started on first use).
    lookups: std::sync::OnceLock<batch::Batcher<crate::aws::InstanceQuery, Vec<crate::aws::InstanceInfo>>>,
    /// Batches agent pings (started on first use).
    pings: std::sync::OnceLock<batch::Batcher<String, crate::aws::Ping>>,
    /// Batches applies and adoptions of one digest (started on first use).
    dispatcher: std::sync::OnceLock<Arc<dispatch::Dispatcher>>,
    /// Batches observe commands (set by [`Context::new`]).
    pub observer: std::sync::OnceLock<observer::Observer>,
    /// The resourceVersion each Tenant's last status write returned, by (namespace, name): a
    /// watched copy at that version holds our own last write.
    written: std::sync::Mutex<HashMap<(String, String), String>>,
    /// Document version ensured per AWS scope (created/updated once per scope and process).
    documents: Mutex<HashMap<AwsScope, String>>,
    /// Every RolloutPolicy watched, kept by one watch ([`run_all`] runs it): tenant reconciles
    /// read their policy here instead of a GET each.
    policies: kube::runtime::reflector::Store<crate::crd::RolloutPolicy>,
    policies_writer: std::sync::Mutex<Option<kube::runtime::reflector::store::Writer<crate::crd::RolloutPolicy>>>,
    /// The policy store holds a complete list (its watch is running and has listed once).
    policies_ready: std::sync::atomic::AtomicBool,
    /// The Tenant controller's cache, while it runs: the coordinator decides from it (with
    /// [`Context::targets_written`] over it) instead of a LIST per pass.
    tenants: std::sync::Mutex<Option<kube::runtime::reflector::Store<crate::crd::Tenant>>>,
    /// Each target the coordinator wrote, by (namespace, name), until the cache shows it.
    targets_written: std::sync::Mutex<HashMap<(String, String), crate::crd::Revision>>,
}

impl Context {
    /// A context.
    pub fn new(client: kube::Client, aws: Arc<dyn Aws>, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let instance = settings.instance.clone();
        // One listing per command per poll interval, however many tenants follow it.
        let collector = collector::Collector::new(settings.poll_interval);
        let (policies, writer) = kube::runtime::reflector::store();
        Context {
            client,
            aws,
            settings,
            reporter: Reporter { controller: MANAGER.into(), instance },
            metrics,
            faults: FaultPoints::default(),
            claims: claims::Index::default(),
            collector,
            lookups: std::sync::OnceLock::new(),
            dispatcher: std::sync::OnceLock::new(),
            pings: std::sync::OnceLock::new(),
            observer: std::sync::OnceLock::new(),
            written: std::sync::Mutex::new(HashMap::new()),
            documents: Mutex::new(HashMap::new()),
            policies,
            policies_writer: std::sync::Mutex::new(Some(writer)),
            policies_ready: std::sync::atomic::AtomicBool::new(false),
            tenants: std::sync::Mutex::new(None),
            targets_written: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Shares (or, with `None`, withdraws) the Tenant controller's cache.
    pub fn share_tenants(&self, store: Option<kube::runtime::reflector::Store<crate::crd::Tenant>>) {
        *self.tenants.lock().unwrap_or_else(|e| e.into_inner()) = store;
    }

    /// The Tenants of `ns` as the coordinator must see them: the shared cache once it holds a
    /// complete list (a LIST otherwise), each with the target the coordinator itself wrote last
    /// where the cache does not show it yet. Only the coordinator writes targets, so its own last
    /// write is the truth: a cache behind it can never make a moving tenant look idle and let a
    /// second batch in.
    pub async fn tenants_of(&self, ns: &str) -> Result<Vec<crate::crd::Tenant>, Error> {
        use futures::FutureExt as _;
        use kube::ResourceExt as _;
        let store = self.tenants.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let cached = store.filter(|s| s.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok()));
        let mut tenants: Vec<crate::crd::Tenant> = match cached {
            Some(store) => {
                store.state().iter().filter(|t| t.namespace().as_deref() == Some(ns)).map(|t| (**t).clone()).collect()
            }
            None => {
                let api: kube::Api<crate::crd::Tenant> = kube::Api::namespaced(self.client.clone(), ns);
                api.list(&kube::api::ListParams::default()).await?.items
            }
        };
        let mut written = self.targets_written.lock().unwrap_or_else(|e| e.into_inner());
        coordinator::overlay_written(ns, &mut tenants, &mut written);
        Ok(tenants)
    }

    /// Remembers a target the coordinator wrote.
    pub fn target_written(&self, ns: &str, tenant: &str, target: &crate::crd::Revision) {
        let mut written = self.targets_written.lock().unwrap_or_else(|e| e.into_inner());
        written.insert((ns.to_string(), tenant.to_string()), target.clone());
    }

    /// A RolloutPolicy, from the shared store once it holds a complete list (a GET before that,
    /// or when its watch is not running).
    pub async fn policy(&self, ns: &str, name: &str) -> Result<Option<Arc<crate::crd::RolloutPolicy>>, Error> {
        if self.policies_ready.load(std::sync::atomic::Ordering::SeqCst) {
            let key = kube::runtime::reflector::ObjectRef::new(name).within(ns);
            return Ok(self.policies.get(&key));
        }
        let api: kube::Api<crate::crd::RolloutPolicy> = kube::Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?.map(Arc::new))
    }

    /// Keeps the policy store until `shutdown` resolves (once per context; a second call returns).
    async fn keep_policies(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        use futures::StreamExt as _;
        use kube::ResourceExt as _;
        use kube::runtime::WatchStreamExt as _;
        let Some(writer) = self.policies_writer.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let ready = {
            let ctx = self.clone();
            async move {
                if ctx.policies.wait_until_ready().await.is_ok() {
                    ctx.policies_ready.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                std::future::pending::<()>().await;
            }
        };
        let stream = kube::runtime::watcher(
            self.watched::<crate::crd::RolloutPolicy>(),
            kube::runtime::watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .modify(|p| p.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(|_| async {});
        tokio::select! {
            () = stream => {}
            () = ready => {}
            () = shutdown => {}
        }
        // Gone with the watch: reads go back to the API server.
        self.policies_ready.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// The API of a kind across what this operator watches: one namespace or the whole cluster.
    pub fn watched<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match &self.settings.watch_namespace {
            Some(ns) => kube::Api::namespaced(self.client.clone(), ns),
            None => kube::Api::all(self.client.clone()),
        }
    }

    /// The observe batcher, started on first use.
    pub fn observer(self: &Arc<Self>) -> observer::Observer {
        self.observer
            .get_or_init(|| observer::Observer::start(Arc::downgrade(self), self.settings.observe_batch_window))
            .clone()
    }

    /// Records the resourceVersion a Tenant status write returned (`None`: forget it).
    pub fn wrote(&self, ns: &str, name: &str, resource_version: Option<String>) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ns.to_string(), name.to_string());
        match resource_version {
            Some(rv) => w.insert(key, rv),
            None => w.remove(&key),
        };
    }

    /// The resourceVersion of a Tenant's last status write by this process.
    pub fn last_written(&self, ns: &str, name: &str) -> Option<String> {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).get(&(ns.to_string(), name.to_string())).cloned()
    }

    /// The apply batcher, started on first use.
    pub fn dispatcher(self: &Arc<Self>) -> Arc<dispatch::Dispatcher> {
        self.dispatcher
            .get_or_init(|| dispatch::Dispatcher::new(Arc::downgrade(self), self.settings.observe_batch_window))
            .clone()
    }

    /// The instance-lookup batcher, started on first use.
    pub fn lookups(&self) -> batch::Batcher<crate::aws::InstanceQuery, Vec<crate::aws::InstanceInfo>> {
        self.lookups.get_or_init(|| batch::lookups(self.aws.clone(), self.settings.lookup_batch_window)).clone()
    }

    /// The ping batcher, started on first use.
    pub fn pings(&self) -> batch::Batcher<String, crate::aws::Ping> {
        self.pings.get_or_init(|| batch::pings(self.aws.clone(), self.settings.lookup_batch_window)).clone()
    }

    /// Sends the operator's document to `instances`: `action`, with `digest` (empty unless the
    /// action applies a revision), `comment` carrying the command's token. Every command the
    /// operator sends is built here.
    pub async fn send_document(
        &self,
        scope: &AwsScope,
        action: &str,
        digest: &str,
        instances: Vec<String>,
        comment: String,
    ) -> Result<String, Error> {
        let cmd = crate::aws::SendCommand {
            document: document::DOCUMENT_NAME.to_string(),
            document_version: self.document_version(scope).await?,
            instances,
            parameters: std::collections::BTreeMap::from([
                ("action".to_string(), action.to_string()),
                ("digest".to_string(), digest.to_string()),
            ]),
            comment,
            timeout_seconds: 600,
        };
        Ok(self.aws.send_command(scope, &cmd).await?)
    }

    /// The document version to run in this scope, creating or updating the document first.
    pub async fn document_version(&self, scope: &AwsScope) -> Result<String, Error> {
        let mut docs = self.documents.lock().await;
        if let Some(v) = docs.get(scope) {
            return Ok(v.clone());
        }
        let v = self
            .aws
            .ensure_document(scope, document::DOCUMENT_NAME, &document::content(&self.settings.document))
            .await?;
        docs.insert(scope.clone(), v.clone());
        Ok(v)
    }
}

/// Runs every controller until `shutdown` resolves.
pub async fn run_all(
    ctx: Arc<Context>,
    resolver: Arc<dyn crate::registry::Resolve>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tokio::join!(
        ctx.clone().keep_policies(wait(shutdown.clone())),
        tenant::run(ctx.clone(), wait(shutdown.clone())),
        coordinator::run(ctx.clone(), wait(shutdown.clone()), wait(shutdown.clone())),
        channel::run(ctx.clone(), resolver, wait(shutdown.clone())),
        notifier::run(ctx.clone(), wait(shutdown.clone())),
    );
}
