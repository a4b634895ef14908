//! The AWS side of the test bed: `moto_server` (EC2, Parameter Store), the real OCI registry
//! (Debian's `docker-registry`) and the fleet simulator (`tests/sim/fleetsim.py`, SSM Run Command
//! over simulated hosts), each on a free loopback port, all killed when the [`Stack`] is dropped.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use testbed::stack::{HostState, Stack};
//! let stack = Stack::start().await?;
//! let digest = stack.push_image("platform-tenant", "latest", &[("sim.health", "healthy")], false).await?;
//! let id = stack
//!     .launch_host("acme", &[("tenant-operator/managed", "true"), ("org", "acme")], HostState::Fresh)
//!     .await?;
//! // point the operator's AWS SDK at the stand-ins
//! for (k, v) in stack.aws_env() { println!("{k}={v}"); }
//! # let _ = (digest, id); Ok(()) }
//! ```

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// The region every stand-in answers for.
pub const REGION: &str = "us-east-1";

/// The repository root (two levels above this crate's manifest).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or(manifest)
}

/// The test bed's Python venv (created by `scripts/bootstrap`).
pub fn venv_bin(name: &str) -> PathBuf {
    repo_root().join(".testbed/venv/bin").join(name)
}

/// Runs `scripts/bootstrap` once per process (idempotent; quick when everything is installed).
pub fn bootstrap() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| run_bootstrap().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn run_bootstrap() -> Result<()> {
    let script = repo_root().join("scripts/bootstrap");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

/// What a simulated host runs when it is registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// Nothing: no container, no operator marker.
    Fresh,
    /// The pre-operator setup: a hand-started `molecule-tenant` container on :8080 running
    /// `<registry>/platform-tenant:latest` (push that tag before launching such a host).
    Legacy,
}

impl HostState {
    fn as_str(self) -> &'static str {
        match self {
            HostState::Fresh => "fresh",
            HostState::Legacy => "legacy",
        }
    }
}

static STACKS: AtomicU32 = AtomicU32::new(0);

/// moto + registry + fleet simulator on loopback. Dropping it stops them (and the simulated
/// hosts' containers).
pub struct Stack {
    /// moto_server (EC2, Parameter Store, STS): `http://127.0.0.1:PORT`.
    pub moto_url: String,
    /// The fleet simulator (SSM; forwards non-Run-Command SSM calls to moto): `http://127.0.0.1:PORT`.
    pub ssm_url: String,
    /// The OCI registry: `127.0.0.1:PORT` (plain HTTP).
    pub registry: String,
    /// This stack's directory: logs, registry storage, host sandboxes (`hosts/<instance-id>/`).
    pub workdir: PathBuf,
    http: reqwest::Client,
    hosts: Mutex<HashMap<String, String>>,
    ami: tokio::sync::OnceCell<String>,
    subnet: (u8, u8),
    next_host: AtomicU32,
    moto: Option<Child>,
    registry_proc: Option<Child>,
    fleetsim: Option<Child>,
}

impl Stack {
    /// Bootstraps if needed, then starts moto_server, docker-registry and the fleet simulator on
    /// free ports and waits until each answers.
    pub async fn start() -> Result<Stack> {
        tokio::task::spawn_blocking(bootstrap).await.context("bootstrap task")??;
        crate::warden::ensure()?;
        let root = repo_root();
        let workdir = new_run_dir(&root, "stack")?;
        let python = venv_bin("python");
        // Other crates in the workspace build reqwest with rustls and no provider of its own; the
        // process-wide provider must be there before any client is built ("already installed" is fine).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;

        // moto_server: it cannot pick its own port, so reserve one.
        let moto_port = free_port()?;
        let mut moto_cmd = Command::new(venv_bin("moto_server"));
        moto_cmd.args(["-H", "127.0.0.1", "-p", &moto_port.to_string()]);
        // moto's request recorder (off until `POST /moto-api/recorder/start-recording`) writes here,
        // not into the test's working directory.
        moto_cmd.env("MOTO_RECORDER_FILEPATH", workdir.join("moto-recording.jsonl"));
        let moto = spawn_logged(moto_cmd, &workdir, "moto")?;
        let moto_url = format!("http://127.0.0.1:{moto_port}");

        let mut reg_cmd = Command::new(&python);
        reg_cmd
            .arg(root.join("tests/sim/registry.py"))
            .args(["serve", "--port", "0", "--dir"])
            .arg(workdir.join("registry"));
        let mut registry_proc = spawn_logged_piped(reg_cmd, &workdir, "registry")?;
        let reg_port = wait_ready(&mut registry_proc, &workdir, "registry").await?;
        let registry = format!("127.0.0.1:{reg_port}");

        wait_http(&http, &format!("{moto_url}/moto-api/"), Duration::from_secs(60))
            .await
            .context("moto_server did not come up (see moto.log in the workdir)")?;

        let mut sim_cmd = Command::new(&python);
        sim_cmd
            .arg(root.join("tests/sim/fleetsim.py"))
            .args(["--port", "0", "--moto-url", &moto_url, "--registry-url"])
            .arg(format!("http://{registry}"))
            .arg("--workdir")
            .arg(&workdir);
        let mut fleetsim = spawn_logged_piped(sim_cmd, &workdir, "fleetsim")?;
        let sim_port = wait_ready(&mut fleetsim, &workdir, "fleetsim").await?;

        let seed = uuid::Uuid::new_v4().as_bytes().to_owned();
        let subnet = (seed[0] % 250 + 2, seed[1]);
        Ok(Stack {
            moto_url,
            ssm_url: format!("http://127.0.0.1:{sim_port}"),
            registry,
            workdir,
            http,
            hosts: Mutex::new(HashMap::new()),
            ami: tokio::sync::OnceCell::new(),
            subnet,
            next_host: AtomicU32::new(0),
            moto: Some(moto),
            registry_proc: Some(registry_proc),
            fleetsim: Some(fleetsim),
        })
    }

    /// Environment for an AWS SDK (or the `aws` CLI) aimed at this stack: EC2 (and anything else)
    /// at moto, SSM at the simulator, fixed region, dummy credentials.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.moto_url.as_str()),
            ("AWS_ENDPOINT_URL_EC2", self.moto_url.as_str()),
            ("AWS_ENDPOINT_URL_SSM", self.ssm_url.as_str()),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Runs an instance in moto with `tags`, registers it with the simulator at its own loopback
    /// address and writes the org slug to `<sandbox>/etc/tenant-operator/org`.
    pub async fn launch_host(&self, org_slug: &str, tags: &[(&str, &str)], state: HostState) -> Result<String> {
        self.launch_host_with(org_slug, tags, state, json!({})).await
    }

    /// As [`Stack::launch_host`], with extra fields for the simulator's `POST /_sim/hosts` (for a
    /// legacy host: `legacy_env`, `legacy_args`, `legacy_image`, `cron_interval_seconds`).
    pub async fn launch_host_with(
        &self,
        org_slug: &str,
        tags: &[(&str, &str)],
        state: HostState,
        extra: Value,
    ) -> Result<String> {
        let ami = self.ami.get_or_try_init(|| self.first_ami()).await?.clone();
        let mut form: Vec<(String, String)> = vec![
            ("Action".into(), "RunInstances".into()),
            ("Version".into(), "2016-11-15".into()),
            ("ImageId".into(), ami),
            ("InstanceType".into(), "t3.small".into()),
            ("MinCount".into(), "1".into()),
            ("MaxCount".into(), "1".into()),
        ];
        if !tags.is_empty() {
            form.push(("TagSpecification.1.ResourceType".into(), "instance".into()));
            for (i, (k, v)) in tags.iter().enumerate() {
                form.push((format!("TagSpecification.1.Tag.{}.Key", i + 1), (*k).to_string()));
                form.push((format!("TagSpecification.1.Tag.{}.Value", i + 1), (*v).to_string()));
            }
        }
        let body = self.ec2(&form).await?;
        let instance = xml_first(&body, "instanceId")
            .ok_or_else(|| anyhow!("RunInstances answered without an instanceId: {body}"))?;

        let n = self.next_host.fetch_add(1, Ordering::SeqCst);
        if n >= 250 * 250 {
            bail!("too many hosts in one stack");
        }
        let addr = format!("127.{}.{}.{}", self.subnet.0, (self.subnet.1 as u32 + n / 250) % 256, n % 250 + 2);
        let resp = self
            .http
            .post(format!("{}/_sim/hosts", self.ssm_url))
            .json(&{
                let mut body = json!({"instance_id": instance, "addr": addr, "state": state.as_str(), "org": org_slug});
                if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                    b.extend(e.clone());
                }
                body
            })
            .send()
            .await
            .context("registering the host with the simulator")?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("simulator refused host {instance}: {status} {text}");
        }
        let org_file = self.host_dir(&instance).join("etc/tenant-operator/org");
        if let Some(dir) = org_file.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&org_file, format!("{org_slug}\n"))?;
        self.hosts.lock().map_err(|_| anyhow!("hosts lock poisoned"))?.insert(instance.clone(), addr);
        Ok(instance)
    }

    /// Pushes a tiny image (labels drive the slot app's behaviour, see tests/sim/slot_app.py);
    /// with `multiarch`, an OCI index of linux/amd64 + linux/arm64. Returns the tag's digest.
    pub async fn push_image(&self, repo: &str, tag: &str, labels: &[(&str, &str)], multiarch: bool) -> Result<String> {
        let mut cmd = Command::new(venv_bin("python"));
        cmd.arg(repo_root().join("tests/sim/registry.py")).args([
            "push",
            "--registry",
            &self.registry,
            "--repo",
            repo,
            "--tag",
            tag,
        ]);
        for (k, v) in labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        if multiarch {
            cmd.arg("--multiarch");
        }
        let out = cmd.stdin(Stdio::null()).output().await.context("running registry.py push")?;
        if !out.status.success() {
            bail!("registry.py push failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !digest.starts_with("sha256:") {
            bail!("registry.py push printed {digest:?}, not a digest");
        }
        Ok(digest)
    }

    /// Moves `tag` to the manifest `src_ref` (a tag or digest) already in `repo`; returns the digest.
    pub async fn tag_image(&self, repo: &str, src_ref: &str, tag: &str) -> Result<String> {
        let out = Command::new(venv_bin("python"))
            .arg(repo_root().join("tests/sim/registry.py"))
            .args(["tag", "--registry", &self.registry, "--repo", repo, "--src-ref", src_ref, "--dst-tag", tag])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running registry.py tag")?;
        if !out.status.success() {
            bail!("registry.py tag failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Sets faults on a host: `{"agent_offline": bool, "delivery_delay_seconds": f64,
    /// "throttle_next": n, "fail_next_delivery": n, "unhealthy": bool}` (any subset).
    /// Stops the OCI registry (the registry going down); hosts keep running what they run.
    pub async fn stop_registry(&mut self) -> Result<()> {
        if let Some(mut child) = self.registry_proc.take() {
            child.start_kill().context("stopping the registry")?;
            child.wait().await.context("reaping the registry")?;
        }
        Ok(())
    }

    /// Another docker-registry serving this stack's registry storage (what is pushed to
    /// [`Stack::registry`] is there too) behind basic auth: one user, bcrypt htpasswd.
    pub async fn basic_auth_registry(&self, user: &str, password: &str) -> Result<Served> {
        self.serve_py("registry.py", "basic-registry", &["serve", "--port", "0", "--htpasswd", user, password], true)
            .await
    }

    /// Another docker-registry serving this stack's registry storage behind token auth: tokens
    /// from `realm` (its URL, any host), trusted by `realm_cert` (PEM).
    pub async fn token_auth_registry(&self, realm: &str, realm_cert: &Path) -> Result<Served> {
        let cert = realm_cert.display().to_string();
        let args = ["serve", "--port", "0", "--token-realm", realm, "--token-cert", &cert];
        self.serve_py("registry.py", "token-registry", &args, true).await
    }

    /// A token realm (`tests/sim/tokenrealm.py realm`) that gives tokens to `user`/`password`; its
    /// certificate is `<dir>/realm.crt`, what it was asked in [`Served::requests`].
    pub async fn token_realm(&self, user: &str, password: &str) -> Result<Served> {
        let args =
            ["realm", "--user", user, "--password", password, "--service", "test-registry", "--issuer", "test-realm"];
        self.serve_py("tokenrealm.py", "token-realm", &args, false).await
    }

    /// A listener that answers everything 401 and records who called ([`Served::requests`]).
    pub async fn trap(&self) -> Result<Served> {
        self.serve_py("tokenrealm.py", "trap", &["trap"], false).await
    }

    async fn serve_py(&self, script: &str, name: &str, args: &[&str], storage: bool) -> Result<Served> {
        let n = self.next_host.fetch_add(1, Ordering::SeqCst);
        let dir = self.workdir.join(format!("{name}-{n}"));
        fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(venv_bin("python"));
        cmd.arg(repo_root().join("tests/sim").join(script)).args(args).arg("--dir").arg(&dir);
        if storage {
            cmd.arg("--storage").arg(self.workdir.join("registry"));
        }
        let mut child = spawn_logged_piped(cmd, &self.workdir, &format!("{name}-{n}"))?;
        let port = wait_ready(&mut child, &self.workdir, &format!("{name}-{n}")).await?;
        Ok(Served { addr: format!("127.0.0.1:{port}"), dir, _child: child })
    }

    pub async fn set_fault(&self, instance: &str, fault: Value) -> Result<()> {
        self.sim_post(&format!("/_sim/hosts/{instance}/faults"), fault).await.map(|_| ())
    }

    /// Every invocation so far: instance, command id, comment, document version, parameters,
    /// requested/start/end (epoch seconds), status, status details.
    /// GETs a simulator control path (`/_sim/...`) and returns its JSON.
    pub async fn sim_get(&self, path: &str) -> Result<Value> {
        let res = self.http.get(format!("{}{path}", self.ssm_url)).send().await?;
        let status = res.status();
        let body: Value = res.json().await?;
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    pub async fn timeline(&self) -> Result<Value> {
        let resp =
            self.http.get(format!("{}/_sim/timeline", self.ssm_url)).send().await.context("GET /_sim/timeline")?;
        resp.error_for_status()?.json().await.context("decoding the timeline")
    }

    /// The simulator's view of one host (`GET /_sim/hosts/<id>`), its legacy cron included.
    pub async fn host_info(&self, instance: &str) -> Result<Value> {
        let resp = self.http.get(format!("{}/_sim/hosts/{instance}", self.ssm_url)).send().await.context("GET host")?;
        resp.error_for_status()?.json().await.context("decoding the host")
    }

    /// POSTs JSON to the simulator's admin API (`/_sim/...`) and returns its JSON answer.
    pub async fn sim_post(&self, path: &str, body: Value) -> Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.ssm_url))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST {path}: {status} {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {path}: decoding {text}"))
    }

    /// The host's sandbox: what the host sees as `/` (its `TENANT_HOST_ROOT`).
    pub fn host_dir(&self, instance: &str) -> PathBuf {
        self.workdir.join("hosts").join(instance)
    }

    /// The host's loopback address (its containers publish their ports there); empty if unknown.
    pub fn host_addr(&self, instance: &str) -> String {
        self.hosts.lock().ok().and_then(|h| h.get(instance).cloned()).unwrap_or_default()
    }

    /// moto builds a region's backend, with its default images, on first use; a DescribeImages
    /// that meets that build half done answers with no image (seen once under load in CI): ask
    /// again, a bounded number of times.
    async fn first_ami(&self) -> Result<String> {
        let mut body = String::new();
        for _ in 0..20 {
            body = self
                .ec2(&[("Action".into(), "DescribeImages".into()), ("Version".into(), "2016-11-15".into())])
                .await?;
            if let Some(id) = xml_first(&body, "imageId") {
                return Ok(id);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(anyhow!("moto DescribeImages returned no image, 20 times; the last answer: {body}"))
    }

    async fn ec2(&self, form: &[(String, String)]) -> Result<String> {
        let body: String =
            form.iter().map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v))).collect::<Vec<_>>().join("&");
        let resp = self
            .http
            .post(format!("{}/", self.moto_url))
            .header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
            // moto routes by the credential scope's service name; it does not check signatures.
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
            .body(body)
            .send()
            .await
            .context("calling moto EC2")?;
        let status = resp.status();
        let text = resp.text().await.context("reading moto's answer")?;
        if !status.is_success() {
            bail!("moto EC2 {status}: {text}");
        }
        Ok(text)
    }
}

/// A server the test bed started for one test; stopped when dropped.
pub struct Served {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its directory (a token realm's certificate: `realm.crt`).
    pub dir: PathBuf,
    _child: Child,
}

impl Served {
    /// The requests a token realm or a trap received, oldest first: `method`, `path`, `query`,
    /// `authorization` (the scheme only, or null), `credentials_ok` (a realm's verdict).
    pub fn requests(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.join("requests.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The simulator stops the hosts' containers on SIGTERM; give it a moment.
        if let Some(mut sim) = self.fleetsim.take() {
            if let Some(pid) = sim.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline {
                    if matches!(sim.try_wait(), Ok(Some(_))) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = sim.start_kill();
        }
        let mut others: Vec<Child> = [self.registry_proc.take(), self.moto.take()].into_iter().flatten().collect();
        for child in &mut others {
            let _ = child.start_kill();
        }
        // reap them, so no zombie outlives the stack
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !others.iter_mut().all(|c| matches!(c.try_wait(), Ok(Some(_)))) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A new directory under `.testbed/runs/` for one stack or control plane (older than a day: removed).
pub fn new_run_dir(root: &Path, what: &str) -> Result<PathBuf> {
    let n = STACKS.fetch_add(1, Ordering::SeqCst);
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let dir = root.join(".testbed/runs").join(format!("{millis}-{}-{what}-{n}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    prune_old_runs(&root.join(".testbed/runs"));
    Ok(dir)
}

/// A free loopback port (reserved and released: the caller binds it soon after).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("reserving a port")?;
    Ok(l.local_addr()?.port())
}

fn log_file(workdir: &Path, name: &str) -> Result<File> {
    let path = workdir.join(format!("{name}.log"));
    File::create(&path).with_context(|| format!("creating {}", path.display()))
}

fn spawn_logged(mut cmd: Command, workdir: &Path, name: &str) -> Result<Child> {
    let (k, v) = crate::warden::env()?;
    cmd.env(k, v);
    let log = log_file(workdir, name)?;
    let err = log.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

fn spawn_logged_piped(mut cmd: Command, workdir: &Path, name: &str) -> Result<Child> {
    let (k, v) = crate::warden::env()?;
    cmd.env(k, v);
    let log = log_file(workdir, &format!("{name}.stderr"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

/// Reads the child's stdout up to `READY <port>`; the rest of its stdout goes to `<name>.stdout.log`.
async fn wait_ready(child: &mut Child, workdir: &Path, name: &str) -> Result<u16> {
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("{name}: no stdout pipe"))?;
    let mut lines = BufReader::new(stdout).lines();
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(port) = line.strip_prefix("READY ") {
                return Ok::<_, anyhow::Error>(Some(port.trim().parse::<u16>()?));
            }
        }
        Ok(None)
    };
    let port = match tokio::time::timeout(Duration::from_secs(60), read).await {
        Ok(Ok(Some(port))) => port,
        Ok(Ok(None)) => bail!("{name} exited before READY (see {name}.stderr.log in {})", workdir.display()),
        Ok(Err(e)) => return Err(e.context(format!("{name}: reading READY"))),
        Err(_) => bail!("{name} not READY within 60 s (see {name}.stderr.log in {})", workdir.display()),
    };
    let path = workdir.join(format!("{name}.stdout.log"));
    tokio::spawn(async move {
        if let Ok(mut f) = tokio::fs::File::create(&path).await {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = f.write_all(line.as_bytes()).await;
                let _ = f.write_all(b"\n").await;
            }
        }
    });
    Ok(port)
}

async fn wait_http(http: &reqwest::Client, url: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match http.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(anyhow!(e)),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Removes run directories older than a day (each stack leaves its logs behind for debugging).
fn prune_old_runs(runs: &Path) {
    let Ok(entries) = fs::read_dir(runs) else { return };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(24 * 3600));
        if old {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn xml_first(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    Some(body[start..end].trim().to_string())
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_and_urlencode() {
        assert_eq!(xml_first("<a><imageId> ami-1 </imageId></a>", "imageId").as_deref(), Some("ami-1"));
        assert_eq!(url_encode("a b/c=d"), "a%20b%2Fc%3Dd");
    }

    /// Starts the whole stack, launches a host, runs a tiny document on it through the simulator.
    /// Needs the bootstrap (Python venv, docker-registry); takes a few seconds.
    #[tokio::test]
    async fn stack_end_to_end() -> Result<()> {
        let stack = Stack::start().await?;
        let digest = stack.push_image("platform-tenant", "latest", &[("sim.health", "healthy")], true).await?;
        assert!(digest.starts_with("sha256:"));
        let id = stack
            .launch_host("acme", &[("tenant-operator/managed", "true"), ("org", "acme")], HostState::Legacy)
            .await?;
        assert!(id.starts_with("i-"));
        let org = fs::read_to_string(stack.host_dir(&id).join("etc/tenant-operator/org"))?;
        assert_eq!(org.trim(), "acme");
        let addr = stack.host_addr(&id);
        assert!(addr.starts_with("127."));

        // the legacy container answers on the host's own address (once its app is listening)
        let url = format!("http://{addr}:8080/health");
        let deadline = Instant::now() + Duration::from_secs(10);
        let health: Value = loop {
            match stack.http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => break resp.json().await?,
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                other => bail!("{url} never answered: {other:?}"),
            }
        };
        assert_eq!(health["digest"], digest);

        // the instance is in moto with its tags
        let described = stack
            .ec2(&[
                ("Action".into(), "DescribeInstances".into()),
                ("Version".into(), "2016-11-15".into()),
                ("Filter.1.Name".into(), "tag:org".into()),
                ("Filter.1.Value.1".into(), "acme".into()),
            ])
            .await?;
        assert!(described.contains(&id), "{described}");

        // a document through the simulator's SSM JSON API
        let content = json!({
            "schemaVersion": "2.2",
            "parameters": {"rev": {"type": "String"}},
            "mainSteps": [{"action": "aws:runShellScript", "name": "apply",
                           "inputs": {"runCommand": ["echo rev={{ rev }} org=$(cat $TENANT_HOST_ROOT/etc/tenant-operator/org)"]}}]
        });
        ssm(
            &stack,
            "CreateDocument",
            json!({"Name": "bed-smoke", "DocumentType": "Command",
                                              "Content": content.to_string()}),
        )
        .await?;
        let sent = ssm(
            &stack,
            "SendCommand",
            json!({"DocumentName": "bed-smoke", "InstanceIds": [id],
                                                      "Comment": "token-1", "Parameters": {"rev": ["r1"]}}),
        )
        .await?;
        let cid = sent["Command"]["CommandId"].as_str().unwrap_or_default().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let inv = ssm(&stack, "GetCommandInvocation", json!({"CommandId": cid, "InstanceId": id})).await?;
            if inv["Status"] == "Success" {
                assert_eq!(inv["StandardOutputContent"], "rev=r1 org=acme\n");
                break;
            }
            assert!(Instant::now() < deadline, "command did not finish: {inv}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let timeline = stack.timeline().await?;
        assert_eq!(timeline[0]["comment"], "token-1");
        stack.set_fault(&id, json!({"agent_offline": true})).await?;
        let info = ssm(&stack, "DescribeInstanceInformation", json!({})).await?;
        assert_eq!(info["InstanceInformationList"][0]["PingStatus"], "ConnectionLost");
        Ok(())
    }

    async fn ssm(stack: &Stack, op: &str, body: Value) -> Result<Value> {
        let resp = stack
            .http
            .post(format!("{}/", stack.ssm_url))
            .header("X-Amz-Target", format!("AmazonSSM.{op}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() {
            bail!("{op}: {status} {v}");
        }
        Ok(v)
    }
}
