//! The Helm chart `charts/tenant-operator`: its CRDs are copies of `crds/`, and a real helm lints and
//! renders it into the kinds we expect, with least-privilege RBAC and a hardened Deployment.
//!
//! helm is `$TESTBED_HELM` or `.testbed/bin/helm` (installed by `scripts/helm`, which
//! scripts/bootstrap calls); without it the test fails.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/tenant-operator")
}

fn yaml_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            out.insert(path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap());
        }
    }
    out
}

#[test]
fn chart_crds_are_copies_of_the_generated_crds() {
    let generated = yaml_files(&repo_root().join("crds"));
    let chart = yaml_files(&chart_dir().join("crds"));
    assert!(!generated.is_empty());
    let fix = "cp crds/*.yaml charts/tenant-operator/crds/";
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "charts/tenant-operator/crds/ must hold exactly the files of crds/ (fix: rm charts/tenant-operator/crds/*.yaml; {fix})"
    );
    for (name, bytes) in &generated {
        assert!(chart[name] == *bytes, "charts/tenant-operator/crds/{name} differs from crds/{name} (fix: {fix})");
    }
}

/// The real helm: `$TESTBED_HELM` or `.testbed/bin/helm` (scripts/helm). A missing helm fails the test.
fn find_helm() -> PathBuf {
    if let Ok(p) = std::env::var("TESTBED_HELM") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return p;
        }
    }
    let p = repo_root().join(".testbed/bin/helm");
    assert!(p.is_file(), "no helm at $TESTBED_HELM or {} (scripts/helm installs it)", p.display());
    p
}

fn helm(bin: &Path, home: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(bin)
        .args(args)
        // Offline and hermetic: no repositories, caches or plugins from the user's home.
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("helm runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "helm {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Every non-empty YAML document of a rendered stream, as JSON values.
fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("rendered chart is not valid YAML: {e}\n{text}"));
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs.iter().map(|d| d["kind"].as_str().unwrap_or("?").to_string()).collect();
    k.sort();
    k
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

#[test]
fn helm_lints_and_renders_the_chart() {
    let bin = find_helm();
    let home = tempfile::tempdir().unwrap();
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();

    helm(&bin, home.path(), &["lint", "--strict", chart]);
    helm(&bin, home.path(), &["lint", "--strict", chart, "--set", "serviceMonitor.enabled=true"]);

    // Defaults: no ServiceMonitor, CRDs only with --include-crds.
    let base = ["template", "fleet-ops", chart, "--namespace", "ops", "--kube-version", "1.29.0"];
    let docs = documents(&helm(&bin, home.path(), &base));
    assert_eq!(
        kinds(&docs),
        ["ClusterRole", "ClusterRoleBinding", "Deployment", "Role", "RoleBinding", "Service", "ServiceAccount"]
    );
    let mut with_crds = base.to_vec();
    with_crds.push("--include-crds");
    let docs_crds = documents(&helm(&bin, home.path(), &with_crds));
    let crd_names: Vec<&str> = docs_crds
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert_eq!(crd_names.len(), 3, "{crd_names:?}");
    for plural in ["tenants", "imagechannels", "rolloutpolicies"] {
        assert!(crd_names.contains(&format!("{plural}.fleet.molecule.ai").as_str()), "{crd_names:?}");
    }

    // Deployment: `run` with the values' arguments, the HMAC key from a Secret, hardened.
    let dep = one(&docs, "Deployment");
    assert_eq!(dep["metadata"]["namespace"], "ops");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args = strings(&c["args"]);
    assert_eq!(args[0], "run", "{args:?}");
    for want in
        ["--region=us-east-1", "--hmac-key-file=/etc/tenant-operator/hmac/hmac.key", "--metrics-addr=0.0.0.0:9090"]
    {
        assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
    }
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert_eq!(strings(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(c["resources"]["limits"]["memory"].is_string());
    let secret_volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["secret"].is_object()).unwrap();
    assert_eq!(secret_volume["secret"]["secretName"], "tenant-operator-hmac");
    assert_eq!(pod["serviceAccountName"], one(&docs, "ServiceAccount")["metadata"]["name"]);
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    assert_eq!(one(&docs, "Service")["spec"]["ports"][0]["targetPort"], "metrics");
    // Webhook listener and leader election (POD_NAME / POD_NAMESPACE from the downward API).
    for want in ["--webhook-addr=0.0.0.0:9443", "--leader-elect=true", "--lease-name=fleet-ops-tenant-operator"] {
        assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
    }
    assert_eq!(c["ports"][1]["name"], "webhook");
    assert!(args.iter().any(|a| a == "--log-format=json"), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--watch-namespace")), "every namespace by default: {args:?}");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    let env: Vec<&str> = c["env"].as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"), "{env:?}");
    let mut hook = base.to_vec();
    hook.extend(["--set", "webhook.service.enabled=true"]);
    let hook_docs = documents(&helm(&bin, home.path(), &hook));
    let services: Vec<&Value> = hook_docs.iter().filter(|d| d["kind"] == "Service").collect();
    assert_eq!(services.len(), 2);
    assert!(services.iter().any(|s| s["spec"]["ports"][0]["targetPort"] == "webhook"));

    // ClusterRole: least privilege.
    let role = one(&docs, "ClusterRole");
    let rules = role["rules"].as_array().unwrap();
    let mut granted: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for rule in rules {
        let verbs = strings(&rule["verbs"]);
        for group in strings(&rule["apiGroups"]) {
            for res in strings(&rule["resources"]) {
                assert!(group != "*" && res != "*" && !verbs.iter().any(|v| v == "*"), "wildcard in {rule}");
                granted.entry((group.clone(), res)).or_default().extend(verbs.iter().cloned());
            }
        }
    }
    let g = |group: &str, res: &str| granted.get(&(group.to_string(), res.to_string())).cloned().unwrap_or_default();
    for kind in ["tenants", "imagechannels", "rolloutpolicies"] {
        let verbs = g("fleet.molecule.ai", kind);
        for v in ["get", "list", "watch", "patch"] {
            assert!(verbs.iter().any(|x| x == v), "{kind}: {v} missing ({verbs:?})");
        }
        assert!(!verbs.iter().any(|x| x == "create" || x == "delete"), "{kind}: {verbs:?}");
        assert!(g("fleet.molecule.ai", &format!("{kind}/status")).iter().any(|x| x == "patch"));
        assert!(!g("fleet.molecule.ai", &format!("{kind}/finalizers")).is_empty());
    }
    let mut secret_verbs = g("", "secrets");
    secret_verbs.sort();
    assert_eq!(secret_verbs, ["get", "list", "watch"]);
    assert!(g("", "events").iter().any(|v| v == "create"));
    assert!(g("events.k8s.io", "events").iter().any(|v| v == "create"));
    assert!(!granted.keys().any(|(grp, _)| grp == "coordination.k8s.io"), "leases belong in a namespaced Role");
    let lease_role = one(&docs, "Role");
    assert_eq!(lease_role["metadata"]["namespace"], "ops");
    assert_eq!(strings(&lease_role["rules"][0]["resources"]), ["leases"]);

    // IRSA annotation from values; registries from values.
    let mut irsa = base.to_vec();
    irsa.extend([
        "--set",
        "serviceAccount.roleArn=arn:aws:iam::111122223333:role/tenant-operator",
        "--set",
        "operator.allowedRegistries={ghcr.io,registry.example.com}",
        "--set",
        "operator.insecureRegistries={127.0.0.1:5000}",
    ]);
    let docs = documents(&helm(&bin, home.path(), &irsa));
    assert_eq!(
        one(&docs, "ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::111122223333:role/tenant-operator"
    );
    let args = strings(&one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    for want in
        ["--allowed-registry=ghcr.io", "--allowed-registry=registry.example.com", "--insecure-registry=127.0.0.1:5000"]
    {
        assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
    }

    // ServiceMonitor: only when enabled and the API is served.
    let mut enabled = base.to_vec();
    enabled.extend(["--set", "serviceMonitor.enabled=true"]);
    let docs = documents(&helm(&bin, home.path(), &enabled));
    assert!(!kinds(&docs).contains(&"ServiceMonitor".to_string()), "ServiceMonitor without monitoring.coreos.com/v1");
    enabled.extend(["-a", "monitoring.coreos.com/v1"]);
    let docs = documents(&helm(&bin, home.path(), &enabled));
    let sm = one(&docs, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    let mut available_only = base.to_vec();
    available_only.extend(["-a", "monitoring.coreos.com/v1"]);
    let docs = documents(&helm(&bin, home.path(), &available_only));
    assert!(!kinds(&docs).contains(&"ServiceMonitor".to_string()), "ServiceMonitor though disabled in values");
}

#[test]
fn the_charts_app_version_is_the_crate_version() {
    let chart = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let app = chart.lines().find_map(|l| l.strip_prefix("appVersion:")).expect("appVersion in Chart.yaml");
    assert_eq!(
        app.trim().trim_matches('"'),
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion must be the crate version"
    );
}

/// The PrometheusRule and the dashboard ConfigMap ship exactly the files promtool and
/// tests/observability check: charts/tenant-operator/files/prometheus-rules.yaml (its groups) and
/// the dashboard, which is also deploy/grafana/fleet-dashboard.json.
#[test]
fn the_prometheus_rule_and_the_dashboard_are_the_checked_files() {
    let bin = find_helm();
    let home = tempfile::tempdir().unwrap();
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let base = ["template", "t", chart, "--namespace", "ops"];
    helm(&bin, home.path(), &["lint", "--strict", chart, "--set", "prometheusRule.enabled=true"]);

    let rules_file = std::fs::read_to_string(chart_dir().join("files/prometheus-rules.yaml")).unwrap();
    let rules: Value = serde_yaml_ng::from_str(&rules_file).unwrap();
    assert!(rules["groups"].as_array().is_some_and(|g| !g.is_empty()), "{rules}");
    let mut args = base.to_vec();
    args.extend(["--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=kps"]);
    let docs = documents(&helm(&bin, home.path(), &args));
    assert!(!kinds(&docs).contains(&"PrometheusRule".to_string()), "PrometheusRule without monitoring.coreos.com/v1");
    args.extend(["--api-versions", "monitoring.coreos.com/v1"]);
    let docs = documents(&helm(&bin, home.path(), &args));
    let pr = one(&docs, "PrometheusRule");
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pr["metadata"]["namespace"], "ops");
    assert_eq!(pr["metadata"]["labels"]["release"], "kps");
    assert_eq!(
        pr["spec"]["groups"], rules["groups"],
        "the PrometheusRule's groups are not files/prometheus-rules.yaml's"
    );
    // The alert texts keep Prometheus' own templates (helm does not render the file).
    assert!(pr.to_string().contains("{{ $labels.policy }}"), "{pr}");
    let mut off = base.to_vec();
    off.extend(["--api-versions", "monitoring.coreos.com/v1"]);
    assert!(!kinds(&documents(&helm(&bin, home.path(), &off))).contains(&"PrometheusRule".to_string()));

    let shipped = std::fs::read(repo_root().join("deploy/grafana/fleet-dashboard.json")).unwrap();
    let copy = std::fs::read(chart_dir().join("files/fleet-dashboard.json")).unwrap();
    assert!(
        shipped == copy,
        "charts/tenant-operator/files/fleet-dashboard.json differs from deploy/grafana/fleet-dashboard.json \
         (fix: cp deploy/grafana/fleet-dashboard.json charts/tenant-operator/files/)"
    );
    let mut args = base.to_vec();
    args.extend(["--set", "grafanaDashboard.enabled=true", "--set", "grafanaDashboard.namespace=monitoring"]);
    let docs = documents(&helm(&bin, home.path(), &args));
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "t-tenant-operator-dashboard");
    let cm = cm.unwrap_or_else(|| panic!("no dashboard ConfigMap in {:?}", kinds(&docs)));
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let rendered: Value = serde_json::from_str(cm["data"]["tenant-operator-fleet.json"].as_str().unwrap()).unwrap();
    assert_eq!(rendered, serde_json::from_slice::<Value>(&shipped).unwrap());
    let docs = documents(&helm(&bin, home.path(), &base));
    assert!(!docs.iter().any(|d| d["kind"] == "ConfigMap"), "a dashboard ConfigMap though disabled");
}
