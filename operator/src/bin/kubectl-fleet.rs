//! `kubectl fleet`: a kubectl plugin (kubectl finds `kubectl-fleet` on PATH) for the fleet kinds,
//! acting with the user's kubeconfig and RBAC, never the operator's.

use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use tenant_operator::crd::{ImageChannel, RolloutPolicy, Tenant};
use tenant_operator::dashboard;
use tenant_operator::plugin::{self, Action, Style};

const EXIT_HELP: &str = "Exit codes: 0 done; 1 failed (API or network); 2 bad usage; 3 not found; \
4 forbidden by your RBAC; 5 not confirmed (undo without --yes and no terminal to ask).";

const EXAMPLES: &str = "Examples:
  kubectl fleet status -n fleet --watch          # every policy's rollouts, live
  kubectl fleet get tenants -n fleet -o wide     # desired vs running digest, slot, drift
  kubectl fleet pause default -n fleet           # no new batch starts
  kubectl fleet hold acme -n fleet               # pin acme to what it runs now
  kubectl fleet undo stable -n fleet --to 2      # pin the channel to its previous digest
  kubectl fleet dashboard -n fleet               # the fleet in your browser at http://127.0.0.1:3100/";

#[derive(Parser)]
#[command(name = "kubectl fleet", version, about = "Rollouts of tenant-operator's fleet, at a glance and by hand",
          after_help = format!("{EXAMPLES}\n\n{EXIT_HELP}"))]
struct Cli {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Path of the kubeconfig (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Kubeconfig context.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Wide,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Cmd {
    /// Policies → rollouts (channel@digest, phase, progress per tier, soak, ETA) → tenants by state.
    Status {
        /// Only this RolloutPolicy.
        policy: Option<String>,
        /// Print again on every change, until interrupted.
        #[arg(short, long)]
        watch: bool,
        /// json or yaml: the policies as the API server has them.
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Tenants with their desired and running digest, slot and Ready reason.
    Get {
        /// `tenants` (or `tenant`, `tn`).
        #[arg(value_parser = ["tenants", "tenant", "tn"])]
        kind: String,
        /// wide, json or yaml.
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// A tenant's applies or a channel's digests: `tenant/NAME`, `channel/NAME`, or a name.
    History {
        what: String,
        /// json or yaml.
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// promote, pause, resume, abort, retry, emergency, hold, release, suspend, unsuspend.
    #[command(flatten)]
    Act(Action),
    /// Pin a channel to an earlier digest of its history (shows who moves, then asks).
    Undo {
        channel: String,
        /// Entry of `history channel/NAME` (1 is the current digest, 2 the one before).
        #[arg(long, default_value_t = 2)]
        to: usize,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// A web page on 127.0.0.1 showing the fleet live, acting with your kubeconfig's rights.
    Dashboard {
        /// Port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 3100)]
        port: u16,
        /// No buttons: the page only reads.
        #[arg(long)]
        read_only: bool,
    },
}

/// An error with the exit code it ends the process with.
struct Failure(u8, String);

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 404 => Failure(3, s.message.clone()),
            kube::Error::Api(s) if s.code == 403 => Failure(4, s.message.clone()),
            _ => Failure(1, e.to_string()),
        }
    }
}

impl From<tenant_operator::controller::Error> for Failure {
    fn from(e: tenant_operator::controller::Error) -> Self {
        match e {
            tenant_operator::controller::Error::Kube(k) => k.into(),
            other => Failure(1, other.to_string()),
        }
    }
}

fn style() -> Style {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    if std::io::stdout().is_terminal() && !no_color { Style::colour() } else { Style::plain() }
}

fn print_as<T: serde::Serialize>(value: &T, output: Output) -> Result<(), Failure> {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value).map_err(|e| Failure(1, e.to_string()))? + "\n",
        _ => serde_yaml_ng::to_string(value).map_err(|e| Failure(1, e.to_string()))?,
    };
    print!("{text}");
    Ok(())
}

fn list_of<K: serde::Serialize>(items: &[K]) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

async fn client(cli: &Cli) -> Result<kube::Client, Failure> {
    let options = kube::config::KubeConfigOptions { context: cli.context.clone(), ..Default::default() };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| Failure(1, e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await.map_err(|e| Failure(1, e.to_string()))?
        }
        None if cli.context.is_some() => {
            kube::Config::from_kubeconfig(&options).await.map_err(|e| Failure(1, e.to_string()))?
        }
        None => kube::Config::infer().await.map_err(|e| Failure(1, e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| Failure(1, e.to_string()))
}

async fn status(
    client: &kube::Client,
    ns: &str,
    only: Option<&str>,
    watch: bool,
    output: Option<Output>,
) -> Result<(), Failure> {
    let policies: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), ns);
    let pick = |mut ps: Vec<RolloutPolicy>| -> Result<Vec<RolloutPolicy>, Failure> {
        if let Some(name) = only {
            ps.retain(|p| p.metadata.name.as_deref() == Some(name));
            if ps.is_empty() {
                return Err(Failure(3, format!("rolloutpolicy {name} not found in {ns}")));
            }
        }
        Ok(ps)
    };
    if !watch {
        let ps = pick(policies.list(&ListParams::default()).await?.items)?;
        if let Some(o) = output.filter(|o| *o != Output::Wide) {
            return print_as(&list_of(&ps), o);
        }
        let ts = tenants.list(&ListParams::default()).await?.items;
        print!("{}", plugin::status_tree(&ps, &ts, jiff::Timestamp::now(), style()));
        return Ok(());
    }
    // One watch per kind (reflector stores), re-rendered on every change: no polling.
    let (pstore, pwriter) = kube::runtime::reflector::store();
    let (tstore, twriter) = kube::runtime::reflector::store();
    let pstream = watcher(policies, watcher::Config::default()).default_backoff().reflect(pwriter).touched_objects();
    let tstream = watcher(tenants, watcher::Config::default()).default_backoff().reflect(twriter).touched_objects();
    let mut events =
        std::pin::pin!(futures::stream::select(pstream.map(|r| r.map(drop)), tstream.map(|r| r.map(drop))));
    let terminal = std::io::stdout().is_terminal();
    let mut last = String::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Err(e)) => eprintln!("watch: {e}"),
                None => return Ok(()),
                Some(Ok(())) => {}
            },
            _ = tick.tick() => {}, // soak countdowns move without an event
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let mut ps: Vec<RolloutPolicy> = pstore.state().iter().map(|p| (**p).clone()).collect();
        ps.sort_by_key(|p| p.metadata.name.clone());
        if let Some(name) = only {
            ps.retain(|p| p.metadata.name.as_deref() == Some(name));
        }
        let mut ts: Vec<Tenant> = tstore.state().iter().map(|t| (**t).clone()).collect();
        ts.sort_by_key(|t| t.metadata.name.clone());
        let now = plugin::status_tree(&ps, &ts, jiff::Timestamp::now(), style());
        if now != last && !ps.is_empty() {
            if terminal {
                print!("\u{1b}[2J\u{1b}[H");
            } else {
                println!("--- {}", jiff::Timestamp::now());
            }
            print!("{now}");
            let _ = std::io::stdout().flush();
            last = now;
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let client = client(&cli).await?;
    let ns = cli.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    let channels: Api<ImageChannel> = Api::namespaced(client.clone(), &ns);
    let merge = |v: serde_json::Value| Patch::Merge(v);
    let pp = PatchParams::default();
    match cli.command {
        Cmd::Status { policy, watch, output } => status(&client, &ns, policy.as_deref(), watch, output).await?,
        Cmd::Get { output, .. } => {
            let mut ts = tenants.list(&ListParams::default()).await?.items;
            ts.sort_by_key(|t| t.metadata.name.clone());
            match output {
                Some(o @ (Output::Json | Output::Yaml)) => print_as(&list_of(&ts), o)?,
                o => {
                    let wide = o == Some(Output::Wide);
                    let rows: Vec<Vec<String>> = ts.iter().map(|t| plugin::tenant_row(t, wide)).collect();
                    print!("{}", plugin::table(&plugin::tenant_header(wide), &rows));
                }
            }
        }
        Cmd::History { what, output } => {
            let (kind, name) = what.split_once('/').unwrap_or(("", what.as_str()));
            let tenant = match kind {
                "tenant" | "tenants" | "tn" | "" => tenants.get_opt(name).await?,
                _ => None,
            };
            let channel = match (kind, &tenant) {
                ("channel" | "imagechannel" | "imagechannels" | "ich", _) | ("", None) => {
                    channels.get_opt(name).await?
                }
                _ => None,
            };
            match (tenant, channel, output) {
                (Some(t), _, Some(o)) => print_as(&t.status.unwrap_or_default().history, o)?,
                (Some(t), _, None) => print!("{}", plugin::tenant_history(&t)),
                (None, Some(c), Some(o)) => print_as(&plugin::channel_entries(&c), o)?,
                (None, Some(c), None) => print!("{}", plugin::channel_history(&c)),
                (None, None, _) => return Err(Failure(3, format!("no tenant or channel {what} in {ns}"))),
            }
        }
        Cmd::Act(action) => act(&client, &ns, action).await?,
        Cmd::Dashboard { port, read_only } => {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let options = dashboard::Options { namespace: ns.clone(), read_only };
            let served = dashboard::serve(addr, client.clone(), options, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| Failure(1, format!("cannot listen on {addr}: {e}")))?;
            println!("dashboard: http://{}/", served.addr);
            let _ = std::io::stdout().flush();
            served.done.await.map_err(|e| Failure(1, e.to_string()))?;
        }
        Cmd::Undo { channel, to, yes } => {
            let c = channels.get(&channel).await?;
            let ts = tenants.list(&ListParams::default()).await?.items;
            let plan = plugin::undo_plan(&c, &ts, to).map_err(|e| Failure(1, e))?;
            println!("imagechannel/{channel} would be pinned to {} (history #{to})", plan.digest);
            match plan.moves.as_slice() {
                [] => println!("no tenant moves"),
                names => println!("{} tenant(s) would move: {}", names.len(), names.join(", ")),
            }
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(Failure(5, "not confirmed: give --yes (no terminal to ask)".into()));
                }
                print!("Proceed? [y/N] ");
                let _ = std::io::stdout().flush();
                let mut answer = String::new();
                let _ = std::io::stdin().read_line(&mut answer);
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return Err(Failure(5, "not confirmed".into()));
                }
            }
            channels.patch(&channel, &pp, &merge(json!({"spec": {"pinnedDigest": plan.digest}}))).await?;
            println!(
                "imagechannel/{channel} pinned to {} (remove spec.pinnedDigest to follow its source again)",
                plan.digest
            );
        }
    }
    Ok(())
}

async fn act(client: &kube::Client, ns: &str, action: Action) -> Result<(), Failure> {
    println!("{}", plugin::perform(client, ns, &action).await?);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tenant_operator::registry::install_crypto_provider();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}
