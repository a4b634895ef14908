//! The real Kubernetes control plane for the tests and the demo: etcd, kube-apiserver and
//! kube-controller-manager, built from pinned Go modules by `scripts/controlplane` (called from
//! `scripts/bootstrap`) and started here on loopback, each with its own temporary directory.
//!
//! * kube-apiserver serves TLS with a CA made for this run (`ca.crt`), authenticates static tokens
//!   (`admin`, in `system:masters`, plus the users named in [`USERS`]) and ServiceAccount tokens it
//!   issues itself (TokenRequest), and authorizes with RBAC;
//! * kube-controller-manager runs the namespace, garbage-collector and ServiceAccount controllers, so
//!   a deleted namespace goes away and ownerReferences cascade;
//! * every process carries [`crate::warden`]'s marker, so nothing outlives the process that started
//!   the control plane (a test binary or the demo), however it ends.
//!
//! One control plane serves a whole test binary ([`ControlPlane::shared`]); tests isolate themselves
//! by namespace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use crate::stack::{free_port, repo_root};

/// Static users besides `admin` (token = `<name>-token`), none in any group but
/// `system:authenticated`: tests bind them to roles of their own.
pub const USERS: &[&str] = &["alice", "bob", "viewer"];

/// A running control plane. Its processes stop when the process that started it exits
/// ([`crate::warden`]) or when it is dropped.
pub struct ControlPlane {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA that signed the API server's serving certificate (PEM).
    pub ca_pem: Vec<u8>,
    /// The admin's bearer token (group `system:masters`).
    pub admin_token: String,
    /// This control plane's directory (certificates, logs, etcd data, the audit log).
    pub dir: PathBuf,
    /// How long the control plane took to answer `/readyz`, from the first process start.
    pub start_time: Duration,
    /// etcd, kube-apiserver, kube-controller-manager (the API server is replaced by a restart).
    children: std::sync::Mutex<Vec<Child>>,
    /// kube-apiserver's arguments, to start it again on the same port and etcd.
    api_args: Vec<String>,
    operator: tokio::sync::OnceCell<String>,
}

/// The namespace the chart is installed into (its ServiceAccount, the leader-election Role).
pub const OPERATOR_NAMESPACE: &str = "tenant-operator";
/// The chart's release name (and so its ServiceAccount's name).
pub const RELEASE: &str = "tenant-operator";

static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();

/// The directory of the control-plane binaries (a link made by `scripts/controlplane`).
pub fn bin_dir() -> PathBuf {
    repo_root().join(".testbed/controlplane")
}

impl ControlPlane {
    /// The control plane of this process, started on first use.
    pub async fn shared() -> Result<&'static ControlPlane> {
        SHARED.get_or_try_init(ControlPlane::start).await
    }

    /// Bootstraps if needed (the first build of the control plane takes a while), then starts etcd,
    /// kube-apiserver and kube-controller-manager and waits until the API server is ready.
    pub async fn start() -> Result<ControlPlane> {
        tokio::task::spawn_blocking(crate::stack::bootstrap).await.context("bootstrap task")??;
        crate::warden::ensure()?;
        let started = Instant::now();
        let root = repo_root();
        let dir = crate::stack::new_run_dir(&root, "cp")?;
        let bins = bin_dir();
        for b in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            if !bins.join(b).is_file() {
                bail!("{} is missing: scripts/controlplane builds it", bins.join(b).display());
            }
        }
        let pki = dir.join("pki");
        fs::create_dir_all(&pki)?;
        make_pki(&pki)?;
        let admin_token = "admin-token".to_string();
        let mut tokens = format!("{admin_token},admin,admin,system:masters\n");
        for u in USERS {
            tokens.push_str(&format!("{u}-token,{u},{u}\n"));
        }
        fs::write(pki.join("tokens.csv"), tokens)?;
        fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY)?;

        let mut cp = ControlPlane {
            url: String::new(),
            ca_pem: fs::read(pki.join("ca.crt"))?,
            admin_token,
            dir: dir.clone(),
            start_time: Duration::ZERO,
            children: std::sync::Mutex::new(Vec::new()),
            api_args: Vec::new(),
            operator: tokio::sync::OnceCell::new(),
        };

        let etcd_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd = Command::new(bins.join("etcd"));
        etcd.arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--name", "testbed", "--log-level", "warn", "--unsafe-no-fsync"])
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg("--listen-peer-urls=http://127.0.0.1:0")
            .arg("--quota-backend-bytes=8589934592");
        cp.children.get_mut().unwrap_or_else(|e| e.into_inner()).push(spawn(etcd, &dir, "etcd")?);

        let port = free_port()?;
        cp.url = format!("https://127.0.0.1:{port}");
        let p = |f: &str| pki.join(f).display().to_string();
        let api_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer=https://127.0.0.1:{port}"),
            format!("--service-account-key-file={}", p("sa.key")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            // A loopback advertise address cannot be the `kubernetes` Service endpoint.
            "--endpoint-reconciler-type=none".into(),
            format!("--audit-policy-file={}", dir.join("audit-policy.yaml").display()),
            format!("--audit-log-path={}", dir.join("audit.log").display()),
            "--audit-log-format=json".into(),
            "--audit-log-mode=batch".into(),
            "--audit-log-batch-max-wait=1s".into(),
            "--v=0".into(),
        ];
        cp.api_args = api_args;
        let api = cp.start_apiserver("kube-apiserver")?;
        cp.children.get_mut().unwrap_or_else(|e| e.into_inner()).push(api);
        cp.wait_ready(Duration::from_secs(120)).await?;

        let admin_kubeconfig = dir.join("admin.kubeconfig");
        cp.write_kubeconfig(&admin_kubeconfig)?;
        let mut kcm = Command::new(bins.join("kube-controller-manager"));
        kcm.arg(format!("--kubeconfig={}", admin_kubeconfig.display()))
            .arg(format!("--authentication-kubeconfig={}", admin_kubeconfig.display()))
            .arg(format!("--authorization-kubeconfig={}", admin_kubeconfig.display()))
            .arg(
                "--controllers=namespace-controller,garbage-collector-controller,\
                 serviceaccount-controller,serviceaccount-token-controller,clusterrole-aggregation-controller",
            )
            .arg(format!("--service-account-private-key-file={}", p("sa.key")))
            .arg(format!("--root-ca-file={}", p("ca.crt")))
            .args(["--leader-elect=false", "--use-service-account-credentials=false"])
            .args(["--bind-address=127.0.0.1", "--secure-port=0"])
            .arg("--concurrent-gc-syncs=5")
            .arg("--v=0");
        cp.children.get_mut().unwrap_or_else(|e| e.into_inner()).push(spawn(kcm, &dir, "kube-controller-manager")?);
        cp.start_time = started.elapsed();
        Ok(cp)
    }

    fn start_apiserver(&self, log: &str) -> Result<Child> {
        let mut api = Command::new(bin_dir().join("kube-apiserver"));
        api.args(&self.api_args);
        spawn(api, &self.dir, log)
    }

    /// Waits until `/readyz` answers, failing early if etcd or the API server exited.
    async fn wait_ready(&self, within: Duration) -> Result<()> {
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem)?)
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let deadline = Instant::now() + within;
        loop {
            let ready = http
                .get(format!("{}/readyz", self.url))
                .bearer_auth(&self.admin_token)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            {
                let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
                for (child, name) in children.iter_mut().zip(["etcd", "kube-apiserver"]) {
                    if let Ok(Some(status)) = child.try_wait() {
                        bail!("{name} exited ({status}); see the logs in {}", self.dir.display());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("kube-apiserver not ready within {within:?}; see the logs in {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills kube-apiserver (SIGKILL, as a crashed or evicted one ends) and starts it again on
    /// the same port, etcd and certificates; returns once it is ready, with how long it was gone.
    /// (Only for a control plane of a test's own: every client of it loses the server meanwhile.)
    pub async fn restart_apiserver(&self, restarts: u32) -> Result<Duration> {
        let down = Instant::now();
        {
            let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
            let old = children.get_mut(1).context("no kube-apiserver")?;
            old.kill()?;
            old.wait()?;
            let new = self.start_apiserver(&format!("kube-apiserver-{restarts}"))?;
            children[1] = new;
        }
        self.wait_ready(Duration::from_secs(120)).await?;
        Ok(down.elapsed())
    }

    /// Stops every process of this control plane (one a test started for itself; the shared one
    /// lives as long as the test binary).
    pub fn stop(&self) {
        for child in self.children.lock().unwrap_or_else(|e| e.into_inner()).iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client configuration authenticating with a bearer token (a ServiceAccount's).
    pub async fn config_with_token(&self, token: &str) -> Result<kube::Config> {
        let kubeconfig: kube::config::Kubeconfig = serde_json::from_str(&self.kubeconfig_with("token", token))?;
        Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?)
    }

    /// A kubeconfig for a static user: `admin` or one of [`USERS`].
    pub fn kubeconfig_yaml(&self, user: &str) -> String {
        let token = if user == "admin" { self.admin_token.clone() } else { format!("{user}-token") };
        self.kubeconfig_with(user, &token)
    }

    /// A kubeconfig that authenticates as `name` with a bearer token.
    pub fn kubeconfig_with(&self, name: &str, token: &str) -> String {
        let ca = base64_std(&self.ca_pem);
        let config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "testbed", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": name}}],
            "current-context": "testbed",
        });
        serde_json::to_string_pretty(&config).unwrap_or_default()
    }

    /// Writes the admin's kubeconfig to `path` (mode 0600).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        self.write_kubeconfig_for(path, "admin")
    }

    /// Writes a kubeconfig for a static `user` (see [`ControlPlane::kubeconfig_yaml`]) to `path`
    /// (mode 0600).
    pub fn write_kubeconfig_for(&self, path: &Path, user: &str) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(self.kubeconfig_yaml(user).as_bytes())?;
        Ok(())
    }

    /// A client for the admin.
    pub async fn admin_client(&self) -> Result<kube::Client> {
        self.client_for("admin").await
    }

    /// A client for a static user: `admin` or one of [`USERS`].
    pub async fn client_for(&self, user: &str) -> Result<kube::Client> {
        self.client_from(&self.kubeconfig_yaml(user)).await
    }

    /// A client authenticating with a bearer token (a ServiceAccount's).
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client> {
        self.client_from(&self.kubeconfig_with("token", token)).await
    }

    async fn client_from(&self, kubeconfig: &str) -> Result<kube::Client> {
        let kubeconfig: kube::config::Kubeconfig = serde_json::from_str(kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?;
        kube::Client::try_from(config).map_err(|e| anyhow!("building a client for {}: {e}", self.url))
    }

    /// Installs the operator the way a user does, once: `kubectl apply` of `crds/` (waiting until
    /// they are Established), then the chart rendered by the real helm (`helm template`, release
    /// [`RELEASE`] in [`OPERATOR_NAMESPACE`]: its ServiceAccount, RBAC, Services and Deployment).
    /// Returns a token the API server issued for the chart's ServiceAccount (TokenRequest), so the
    /// operator runs with exactly the rights the chart grants.
    pub async fn install_operator(&self) -> Result<&str> {
        self.operator.get_or_try_init(|| self.install()).await.map(String::as_str)
    }

    async fn install(&self) -> Result<String> {
        let root = repo_root();
        let kubeconfig = self.dir.join("admin.kubeconfig");
        let crds = root.join("crds");
        // A real cluster accepts crds/ as they are: no warning either.
        let applied = kubectl_output(
            &kubeconfig,
            &["apply", "--server-side", "--field-manager=testbed", "-f"],
            Some(&crds),
            None,
        )
        .await?;
        if applied.1.contains("Warning") {
            bail!("kubectl apply of crds/ warned: {}", applied.1);
        }
        kubectl(&kubeconfig, &["wait", "--for=condition=Established", "--timeout=60s", "-f"], Some(&crds), None)
            .await?;
        let helm = root.join(".testbed/bin/helm");
        let home = self.dir.join("helm");
        let rendered = tokio::process::Command::new(&helm)
            .args(["template", RELEASE])
            .arg(root.join("charts/tenant-operator"))
            .args(["--namespace", OPERATOR_NAMESPACE, "--kube-version", KUBE_VERSION])
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", helm.display()))?;
        if !rendered.status.success() {
            bail!("helm template failed: {}", String::from_utf8_lossy(&rendered.stderr));
        }
        let ns = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{{\"name\":\"{OPERATOR_NAMESPACE}\"}}}}"
        );
        kubectl(&kubeconfig, &["apply", "-f", "-"], None, Some(ns.as_bytes())).await?;
        kubectl(&kubeconfig, &["apply", "-n", OPERATOR_NAMESPACE, "-f", "-"], None, Some(&rendered.stdout)).await?;
        let token =
            kubectl(&kubeconfig, &["create", "token", RELEASE, "-n", OPERATOR_NAMESPACE, "--duration=48h"], None, None)
                .await?;
        Ok(token.trim().to_string())
    }

    /// A client with the rights the chart grants the operator (see [`ControlPlane::install_operator`]).
    pub async fn operator_client(&self) -> Result<kube::Client> {
        let token = self.install_operator().await?.to_string();
        self.client_with_token(&token).await
    }

    /// The kube-apiserver's audit log (JSON lines; writes by user, see the policy).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in self.children.get_mut().unwrap_or_else(|e| e.into_inner()).iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Records who wrote what (metadata only: Secret bodies never reach the log); reads are left out.
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    verbs: ["get", "list", "watch"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets"]
  - level: Metadata
"#;

/// The Kubernetes version of the control plane (`scripts/controlplane` stamps it into the binaries).
pub const KUBE_VERSION: &str = "1.37.2";

/// Runs the test bed's kubectl with `kubeconfig`; `path` is appended to `args`, `stdin` fed in.
/// Returns stdout; fails with kubectl's stderr.
pub async fn kubectl(kubeconfig: &Path, args: &[&str], path: Option<&Path>, stdin: Option<&[u8]>) -> Result<String> {
    Ok(kubectl_output(kubeconfig, args, path, stdin).await?.0)
}

/// As [`kubectl`], returning (stdout, stderr) of a successful run.
pub async fn kubectl_output(
    kubeconfig: &Path,
    args: &[&str],
    path: Option<&Path>,
    stdin: Option<&[u8]>,
) -> Result<(String, String)> {
    use tokio::io::AsyncWriteExt;
    let bin = crate::stack::venv_bin("kubectl");
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    if let Some(p) = path {
        cmd.arg(p);
    }
    cmd.env_remove("KUBECONFIG")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("running {}", bin.display()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).await?;
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .map_err(|_| anyhow!("kubectl {args:?} did not finish within 120 s"))??;
    if !out.status.success() {
        bail!("kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Result<Child> {
    let log = fs::File::create(dir.join(format!("{name}.log")))?;
    let err = log.try_clone()?;
    crate::warden::mark(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("starting {name}"))
}

/// A CA, the API server's serving certificate (127.0.0.1 and localhost) and the ServiceAccount
/// signing key, made with the `openssl` command.
fn make_pki(pki: &Path) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(pki)
            .stdin(Stdio::null())
            .output()
            .context("running openssl (scripts/bootstrap installs it)")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    fs::write(
        pki.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=testbed-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "apiserver.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])?;
    run(&["genrsa", "-out", "sa.key", "2048"])?;
    Ok(())
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
