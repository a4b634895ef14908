//! The `tenant-operator` binary: a thin `main` over the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tenant_operator::aws::sdk::{AwsSettings, SdkAws};
use tenant_operator::controller::{self, Context, Settings};
use tenant_operator::metrics::Metrics;

#[derive(Parser)]
#[command(name = "tenant-operator", version, about = "Keeps a fleet of single-tenant EC2 hosts on the right image")]
struct Cli {
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
    Run(RunArgs),
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
    /// A local demo: fake API server, simulated fleet, real controllers. No cluster, no AWS.
    #[cfg(feature = "demo")]
    Demo(tenant_operator::demo::DemoArgs),
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
    /// How often an idle host is observed, e.g. `5m`.
    #[arg(long, default_value = "5m")]
    observe_interval: String,
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
    /// Address of the metrics endpoint.
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_addr: std::net::SocketAddr,
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    Ok(tenant_operator::crd::Duration::parse(s).map_err(|e| anyhow::anyhow!("bad duration {s:?}: {e}"))?.as_std())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tenant_operator::registry::install_crypto_provider();
    tenant_operator::telemetry::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir: None } => {
            print!("{}", tenant_operator::crd::all_crds_yaml()?);
        }
        Command::Crd { out_dir: Some(dir) } => {
            for (file, crd) in tenant_operator::crd::all_crds() {
                std::fs::write(dir.join(file), tenant_operator::crd::crd_yaml(&crd)?)?;
            }
        }
        Command::Run(args) => run(args).await?,
        Command::Adopt { dry_run, namespace } => {
            if !dry_run {
                anyhow::bail!(
                    "adoption is `spec.adoption: Adopt` on the Tenant; `tenant-operator adopt --dry-run` shows what it would do"
                );
            }
            let client = kube::Client::try_default().await?;
            print!("{}", tenant_operator::adopt::dry_run(client, namespace.as_deref()).await?);
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => tenant_operator::demo::run(args).await?,
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
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
    let settings =
        Settings { observe_interval: parse_duration(&args.observe_interval)?, env_hmac_key, ..Default::default() };
    let metrics = Arc::new(Metrics::default());
    tenant_operator::telemetry::serve_metrics(args.metrics_addr, metrics.clone()).await?;
    let resolver: Arc<dyn tenant_operator::registry::Resolve> =
        Arc::new(tenant_operator::registry::OciResolver::new(tenant_operator::registry::RegistrySettings::new(
            args.allowed_registry,
            args.insecure_registry,
            args.registry_token_realm,
        ))?);
    let ctx = Arc::new(Context::new(client, Arc::new(aws), settings, metrics));
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    controller::run_all(ctx, resolver, rx).await;
    Ok(())
}
