//! The `tenant-operator` binary: a thin `main` over the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tenant_operator::aws::sdk::{AwsSettings, SdkAws};
use tenant_operator::controller::leader::{self, LeaseSettings};
use tenant_operator::controller::{self, Context, Settings};
use tenant_operator::metrics::Metrics;

/// `<crate version> (<git revision>)`.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("TENANT_OPERATOR_REVISION"), ")");

#[derive(Parser)]
#[command(name = "tenant-operator", version = VERSION, about = "Keeps a fleet of single-tenant EC2 hosts on the right image")]
struct Cli {
    /// Log format on stderr: `text` (colour only on a terminal) or `json` (one object a line).
    #[arg(long, global = true, env = "TENANT_OPERATOR_LOG_FORMAT", default_value = "text")]
    log_format: tenant_operator::telemetry::LogFormat,
    /// Log filter (tracing's EnvFilter syntax, e.g. `info,tenant_operator=debug`).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info,kube=warn,aws=warn,hyper=warn")]
    log_filter: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (or write one file per kind into a directory).
    Crd {
        /// Write `<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Run the controllers against the cluster of the current kubeconfig / service account.
    Run(Box<RunArgs>),
    /// Ask a RolloutPolicy for something without editing its spec (a one-shot annotation that the
    /// coordinator acknowledges in status, so it acts once): promote (end the soak now), pause,
    /// resume, abort (moved tenants go back; the digest is rejected), retry, emergency.
    Rollout(RolloutArgs),
    /// Show, per tenant, what adopting its hand-run host would import and change (`--dry-run`).
    /// Adoption itself is `spec.adoption: Adopt` on the Tenant, so it is reviewed like any change.
    Adopt {
        /// Only show; required (nothing else is offered here).
        #[arg(long)]
        dry_run: bool,
        /// Namespace of the Tenants (all namespaces when absent).
        #[arg(long, short)]
        namespace: Option<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Default AWS region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    /// EC2 endpoint override (for stand-ins).
    #[arg(long, env = "TENANT_OPERATOR_EC2_ENDPOINT")]
    ec2_endpoint: Option<String>,
    /// SSM endpoint override (for stand-ins).
    #[arg(long, env = "TENANT_OPERATOR_SSM_ENDPOINT")]
    ssm_endpoint: Option<String>,
    /// Watch and reconcile only this namespace (default: every namespace).
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// How often an idle host is observed, e.g. `5m`.
    #[arg(long, default_value = "5m")]
    observe_interval: String,
    /// How often a command in flight is asked for its result, e.g. `2s`.
    #[arg(long, default_value = "2s")]
    poll_interval: String,
    /// The wait after a rollout notification's first failed attempt, e.g. `2s` (it doubles after
    /// each, at most 5m; 10 attempts).
    #[arg(long, default_value = "2s")]
    notify_retry_base: String,
    /// File holding the key of the env-revision HMAC.
    #[arg(long, env = "TENANT_OPERATOR_HMAC_KEY_FILE")]
    hmac_key_file: Option<PathBuf>,
    /// Registry hosts channels may resolve from (repeatable; empty: any).
    #[arg(long)]
    allowed_registry: Vec<String>,
    /// Registry hosts reached over plain HTTP (repeatable).
    #[arg(long)]
    insecure_registry: Vec<String>,
    /// Extra hosts trusted as token realms (repeatable).
    #[arg(long)]
    registry_token_realm: Vec<String>,
    /// EC2 DescribeInstances calls a second per AWS scope, `RATE` or `RATE/BURST` (EC2's
    /// published bucket for non-mutating actions by default).
    #[arg(long, default_value = "20/100")]
    aws_ec2_rate: String,
    /// Run Command calls a second per AWS scope (SendCommand, ListCommandInvocations, ...),
    /// `RATE` or `RATE/BURST`.
    #[arg(long, default_value = "10/20")]
    aws_run_command_rate: String,
    /// Parameter Store calls a second per AWS scope, `RATE` or `RATE/BURST` (the published
    /// standard throughput by default).
    #[arg(long, default_value = "40/40")]
    aws_parameter_rate: String,
    /// Address of the metrics endpoint.
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_addr: std::net::SocketAddr,
    /// Address of the registry webhook listener (plain HTTP; terminate TLS in front of it).
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_addr: std::net::SocketAddr,
    /// Run the controllers only while holding the leader Lease (`--leader-elect=false` for a single
    /// local process).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "tenant-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (default: the pod's namespace, else the client's).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Lease validity after the last renewal, in seconds (the longest a crashed leader blocks others).
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// This replica's name: the leader identity and the events' reporting instance (the pod's
    /// name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

#[derive(clap::Args)]
struct RolloutArgs {
    /// promote | pause | resume | abort | retry | emergency
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(controller::coordinator::VERBS))]
    request: String,
    /// The RolloutPolicy.
    policy: String,
    /// Its namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// emergency: the digest to apply to every tier at once (`sha256:...`).
    #[arg(long, required_if_eq("request", "emergency"))]
    digest: Option<String>,
    /// emergency: only the tenants of this channel.
    #[arg(long)]
    channel: Option<String>,
    /// emergency: really move every tier at once (refused without it).
    #[arg(long)]
    force: bool,
}

async fn rollout_request(args: RolloutArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let emergency = args.digest.map(|digest| tenant_operator::core::rollout::Emergency {
        digest,
        channel: args.channel,
        force: args.force,
    });
    let token =
        controller::coordinator::request(client, &args.namespace, &args.policy, &args.request, emergency.as_ref())
            .await?;
    println!(
        "requested {} on rolloutpolicy {}/{} (token {token}); it is acknowledged in status.handledRequests",
        args.request, args.namespace, args.policy
    );
    Ok(())
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    Ok(tenant_operator::crd::Duration::parse(s).map_err(|e| anyhow::anyhow!("bad duration {s:?}: {e}"))?.as_std())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tenant_operator::registry::install_crypto_provider();
    let cli = Cli::parse();
    tenant_operator::telemetry::init_with(cli.log_format, &cli.log_filter);
    match cli.command {
        Command::Crd { out_dir: None } => {
            print!("{}", tenant_operator::crd::all_crds_yaml()?);
        }
        Command::Crd { out_dir: Some(dir) } => {
            for (file, crd) in tenant_operator::crd::all_crds() {
                std::fs::write(dir.join(file), tenant_operator::crd::crd_yaml(&crd)?)?;
            }
        }
        Command::Run(args) => run(*args).await?,
        Command::Rollout(args) => rollout_request(args).await?,
        Command::Adopt { dry_run, namespace } => {
            if !dry_run {
                anyhow::bail!(
                    "adoption is `spec.adoption: Adopt` on the Tenant; `tenant-operator adopt --dry-run` shows what it would do"
                );
            }
            let client = kube::Client::try_default().await?;
            print!("{}", tenant_operator::adopt::dry_run(client, namespace.as_deref()).await?);
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let aws = SdkAws::new(AwsSettings {
        default_region: args.region,
        ec2_endpoint: args.ec2_endpoint,
        ssm_endpoint: args.ssm_endpoint,
        static_credentials: None,
    })
    .await;
    let env_hmac_key = match args.hmac_key_file {
        Some(path) => std::fs::read(path)?,
        None => anyhow::bail!("--hmac-key-file is required: env revisions are keyed by the operator"),
    };
    let settings = Settings {
        observe_interval: parse_duration(&args.observe_interval)?,
        poll_interval: parse_duration(&args.poll_interval)?,
        env_hmac_key,
        watch_namespace: args.watch_namespace.filter(|ns| !ns.is_empty()),
        instance: args.pod_name.clone(),
        notify_retry_base: parse_duration(&args.notify_retry_base)?,
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::default());
    // Every request to the API server counted (tenant_operator_kube_requests_total).
    let client = tenant_operator::kubeclient::infer(metrics.clone()).await?;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tenant_operator::telemetry::serve_metrics(args.metrics_addr, metrics.clone(), ready.clone()).await?;
    // Ready once the API server answered with these credentials.
    let version = client.apiserver_version().await?;
    tracing::info!(server = %version.git_version, "connected to the Kubernetes API");
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    // Every AWS call is counted by operation (`tenant_operator_aws_calls_total`), then waits for
    // its scope's token bucket.
    use tenant_operator::aws::limited::{Limited, Limits, Rate};
    let rate = |s: &str| Rate::parse(s).map_err(anyhow::Error::msg);
    let limits = Limits {
        ec2: rate(&args.aws_ec2_rate)?,
        run_command: rate(&args.aws_run_command_rate)?,
        parameters: rate(&args.aws_parameter_rate)?,
    };
    let aws = tenant_operator::aws::counting::Counting::new(Limited::new(aws, limits), Some(metrics.clone()));
    tenant_operator::webhook::serve(args.webhook_addr, client.clone(), std::future::pending()).await?;
    let resolver: Arc<dyn tenant_operator::registry::Resolve> =
        Arc::new(tenant_operator::registry::OciResolver::new(tenant_operator::registry::RegistrySettings::new(
            args.allowed_registry,
            args.insecure_registry,
            args.registry_token_realm,
        ))?);
    let ctx = Arc::new(Context::new(client.clone(), Arc::new(aws), settings, metrics));
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    if !args.leader_elect {
        controller::run_all(ctx, resolver, rx).await;
        return Ok(());
    }
    let namespace = args.lease_namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let base = args.pod_name.clone().or_else(|| std::env::var("HOSTNAME").ok());
    let mut lease = LeaseSettings::new(args.lease_name, namespace, leader::identity(base.as_deref()));
    lease.duration_secs = args.lease_duration_seconds.max(3);
    lease.grace_secs = (lease.duration_secs / 3).max(1);
    // Losing the Lease is an error exit: the pod restarts as a candidate.
    leader::run_while_leader(client, lease, rx, move |stop| controller::run_all(ctx, resolver, stop)).await?;
    Ok(())
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
