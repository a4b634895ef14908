//! The manifests users copy and the ones they get wrong, sent through the real kubectl to the real
//! kube-apiserver (the test bed's control plane) with `crds/` installed as a user installs them:
//!
//! * every object in `examples/` is accepted by `kubectl apply --server-side --validate=strict`
//!   without a warning, loses no field, and the stored (server-defaulted) object deserializes into
//!   the operator's Rust type with the same value as the object as written;
//! * every file in `tests/bad-input/` is refused by the server, at the field and with the message its
//!   header names (`# expect-field:`, `# expect-message:`, `# transition: true` for an old/new
//!   pair), and by nothing else (one defect per file);
//! * valid objects do pass, so a refusal means something.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams, ValidationDirective};
use kube::discovery::ApiResource;
use serde::Deserialize;
use serde_json::{Value, json};
use tenant_operator::crd::{GROUP, ImageChannel, RolloutPolicy, Tenant, TenantSpec, Tier, VERSION};
use testbed::controlplane::ControlPlane;

/// `apiVersion` of every fleet kind.
fn fleet_api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

fn repo_root() -> PathBuf {
    // This crate lives in `<repo>/tests`.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}
/// `*.yaml` files of a directory, sorted by name (the order `kubectl apply -f dir/` uses).
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
}

/// The non-empty documents of a YAML stream, as JSON values.
fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        let doc = Value::deserialize(de).map_err(|e| format!("not YAML: {e}"))?;
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    Ok(docs)
}

fn kind_of(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or("")
}

fn name_of(doc: &Value) -> &str {
    doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

fn is_fleet(doc: &Value) -> bool {
    doc.get("apiVersion").and_then(Value::as_str) == Some(fleet_api_version().as_str())
}

/// Paths present in `input` but missing in `pruned` (the API server dropped them silently;
/// `kubectl apply` with strict field validation refuses them).
fn pruned_paths(input: &Value, pruned: &Value, path: &str, out: &mut Vec<String>) {
    match (input, pruned) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    Some(w) => pruned_paths(v, w, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                pruned_paths(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Deserializes the object as written and as defaulted by the schema: both must work, and both
/// must give the same Rust value (the serde defaults and the schema defaults agree).
fn same_in_rust<K>(raw: &Value, defaulted: &Value) -> Result<(), String>
where
    K: serde::de::DeserializeOwned + serde::Serialize,
{
    let a: K = serde_json::from_value(raw.clone()).map_err(|e| format!("as written: {e}"))?;
    let b: K = serde_json::from_value(defaulted.clone()).map_err(|e| format!("as defaulted: {e}"))?;
    // The spec: the stored object's metadata is the server's.
    let (a, b) = (
        serde_json::to_value(&a).map_err(|e| e.to_string())?["spec"].clone(),
        serde_json::to_value(&b).map_err(|e| e.to_string())?["spec"].clone(),
    );
    if a != b {
        return Err(format!("serde defaults differ from schema defaults:\n  serde:  {a}\n  schema: {b}"));
    }
    Ok(())
}

/// Every document of `examples/*.yaml`, with the file it came from.
fn example_documents() -> Vec<(String, Value)> {
    let dir = repo_root().join("examples");
    let mut out = Vec::new();
    for file in yaml_files(&dir) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        let docs = documents(&text).unwrap_or_else(|e| panic!("examples/{name}: {e}"));
        assert!(!docs.is_empty(), "examples/{name} has no document");
        out.extend(docs.into_iter().map(|d| (name.clone(), d)));
    }
    out
}

#[test]
fn examples_cover_the_fleet_shapes_and_refer_to_what_exists() {
    let docs = example_documents();
    let objects = |kind: &str| -> Vec<&Value> { docs.iter().map(|(_, d)| d).filter(|d| kind_of(d) == kind).collect() };
    let tenants: Vec<Tenant> =
        objects("Tenant").into_iter().map(|d| serde_json::from_value(d.clone()).unwrap()).collect();
    let channels: Vec<ImageChannel> =
        objects("ImageChannel").into_iter().map(|d| serde_json::from_value(d.clone()).unwrap()).collect();
    let policies: Vec<RolloutPolicy> =
        objects("RolloutPolicy").into_iter().map(|d| serde_json::from_value(d.clone()).unwrap()).collect();
    let secrets: Vec<Secret> =
        objects("Secret").into_iter().map(|d| serde_json::from_value(d.clone()).unwrap()).collect();

    // The shapes a user looks for.
    let canaries = tenants.iter().filter(|t| t.spec.tier == Tier::Canary);
    assert!(canaries.count() >= 1, "no canary tenant in examples/");
    let production =
        tenants.iter().filter(|t| t.spec.tier == Tier::Production && t.spec.pinned_digest.is_none()).count();
    assert!(production >= 2, "fewer than 2 production tenants in examples/");
    assert!(tenants.iter().any(|t| t.spec.pinned_digest.is_some()), "no pinned (held) tenant in examples/");
    assert!(tenants.iter().any(|t| t.spec.instance.tags.is_some()), "no tenant selecting its instance by tags");
    assert!(tenants.iter().any(|t| t.spec.instance.id.is_some()), "no tenant selecting its instance by id");
    assert!(channels.iter().any(|c| c.spec.promote_from.is_some()), "no promoted channel in examples/");
    assert!(channels.iter().any(|c| c.spec.tag.is_some()), "no channel following a tag");
    assert!(!policies.is_empty(), "no RolloutPolicy in examples/");
    assert!(tenants.iter().any(|t| !t.spec.container.env_from.is_empty()), "no tenant uses envFrom");

    // The first file creates the namespace; everything else lives in it.
    let (first_file, first) = &docs[0];
    assert_eq!(kind_of(first), "Namespace", "examples/{first_file} should create the namespace first");
    let ns = name_of(first);
    let mut problems = Vec::new();
    for (file, d) in docs.iter().skip(1) {
        let got = d.pointer("/metadata/namespace").and_then(Value::as_str);
        if got != Some(ns) {
            problems.push(format!(
                "examples/{file}: {} {:?} is in namespace {got:?}, not {ns:?}",
                kind_of(d),
                name_of(d)
            ));
        }
    }

    // Names refer to objects in the examples.
    let channel_names: BTreeSet<_> = channels.iter().map(|c| c.metadata.name.clone().unwrap_or_default()).collect();
    let policy_by_name: BTreeMap<_, _> =
        policies.iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), p)).collect();
    let secret_keys: BTreeMap<String, BTreeSet<String>> = secrets
        .iter()
        .map(|s| {
            let mut keys: BTreeSet<String> = s.string_data.iter().flat_map(|m| m.keys().cloned()).collect();
            keys.extend(s.data.iter().flat_map(|m| m.keys().cloned()));
            (s.metadata.name.clone().unwrap_or_default(), keys)
        })
        .collect();
    for c in &channels {
        if let Some(from) = &c.spec.promote_from
            && !channel_names.contains(from)
        {
            problems.push(format!("channel {:?} promotes from unknown channel {from:?}", c.metadata.name));
        }
    }
    for (name, keys) in &secret_keys {
        for k in keys {
            if !valid_env_name(k) {
                problems.push(format!("Secret {name:?}: key {k:?} is not a valid env var name"));
            }
        }
    }
    for s in &secrets {
        for (k, v) in s.string_data.iter().flatten() {
            if !v.contains("REPLACE-ME") {
                problems.push(format!(
                    "Secret {:?}: value of {k:?} is not a clearly marked placeholder (REPLACE-ME)",
                    s.metadata.name
                ));
            }
        }
    }
    for t in &tenants {
        let tn = t.metadata.name.clone().unwrap_or_default();
        let spec: &TenantSpec = &t.spec;
        if !channel_names.contains(&spec.channel) {
            problems.push(format!("tenant {tn:?} follows unknown channel {:?}", spec.channel));
        }
        // The env a tenant's container gets: plain env plus every key of its Secrets.
        let mut env: BTreeSet<String> = spec.container.env.iter().map(|e| e.name.clone()).collect();
        for from in &spec.container.env_from {
            match secret_keys.get(&from.secret_ref.name) {
                Some(keys) => {
                    env.extend(keys.iter().map(|k| format!("{}{k}", from.prefix.clone().unwrap_or_default())))
                }
                None if from.optional => {}
                None => {
                    problems.push(format!("tenant {tn:?} takes env from unknown Secret {:?}", from.secret_ref.name))
                }
            }
        }
        if let Some(p) = &spec.rollout_policy {
            match policy_by_name.get(p) {
                None => problems.push(format!("tenant {tn:?} names unknown policy {p:?}")),
                Some(policy) => {
                    for sc in &policy.spec.smoke_checks {
                        if let Some(b) = &sc.bearer_env
                            && !env.contains(b)
                        {
                            problems.push(format!(
                                "tenant {tn:?}: smoke check {:?} of policy {p:?} needs env {b:?}, which the tenant does not have",
                                sc.name
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{} problem(s) in examples/:\n{}", problems.len(), problems.join("\n"));
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`, the env var names the Tenant schema accepts.
fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The header of a bad-input file.
#[derive(Debug, Default)]
struct Expectation {
    field: Option<String>,
    message: Option<String>,
    transition: bool,
}

fn expectation(text: &str) -> Expectation {
    let mut exp = Expectation::default();
    for line in text.lines() {
        let Some(comment) = line.strip_prefix('#') else {
            continue;
        };
        let comment = comment.trim();
        if let Some(v) = comment.strip_prefix("expect-field:") {
            exp.field = Some(v.trim().to_string());
        } else if let Some(v) = comment.strip_prefix("expect-message:") {
            exp.message = Some(v.trim().to_string());
        } else if let Some(v) = comment.strip_prefix("transition:") {
            exp.transition = v.trim() == "true";
        }
    }
    exp
}

/// Whether an error is at the expected field. The field may come out with a leading `.` (a CEL
/// rule's `fieldPath` on the root), or name a sub-field of the expected one.
fn field_matches(got: &str, want: &str) -> bool {
    let got = got.trim_start_matches('.');
    got == want || got.starts_with(&format!("{want}.")) || got.starts_with(&format!("{want}["))
}

/// A field error as the server reports it (a cause of its `Invalid` status).
#[derive(Clone, Debug)]
struct FieldError {
    field: String,
    message: String,
}

fn show(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
}

/// The control plane with `crds/` installed, an admin client, an admin kubeconfig, and a fresh
/// namespace.
struct Server {
    client: kube::Client,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let cp = ControlPlane::shared().await.expect("the control plane");
        cp.install_operator().await.expect("crds/ installed");
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        cp.write_kubeconfig(&kubeconfig).unwrap();
        Server { client: cp.admin_client().await.unwrap(), kubeconfig, _dir: dir }
    }

    async fn namespace(&self, prefix: &str) -> String {
        let ns = format!("{prefix}-{}", crate::harness::uuid_like());
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
            .await
            .unwrap();
        ns
    }

    /// The real kubectl, the manifest on stdin; (success, stdout, stderr).
    async fn kubectl(&self, args: &[&str], manifest: &Value) -> (bool, String, String) {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(testbed::stack::venv_bin("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .args(["-f", "-"])
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl runs (scripts/bootstrap installs it)");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(serde_json::to_string(manifest).unwrap().as_bytes()).await.unwrap();
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn dynamic(&self, doc: &Value) -> Api<DynamicObject> {
        let kind = kind_of(doc);
        let plural = plural(kind);
        let ar = ApiResource {
            group: GROUP.into(),
            version: VERSION.into(),
            api_version: fleet_api_version(),
            kind: kind.into(),
            plural,
        };
        let ns = doc.pointer("/metadata/namespace").and_then(Value::as_str).expect("namespaced");
        Api::namespaced_with(self.client.clone(), ns, &ar)
    }

    fn plural_path(&self, doc: &Value) -> String {
        let ns = doc.pointer("/metadata/namespace").and_then(Value::as_str).expect("namespaced");
        format!("/apis/{GROUP}/{VERSION}/namespaces/{ns}/{}", plural(kind_of(doc)))
    }

    /// A create (POST) with strict field validation, as `kubectl create/apply --validate=strict`
    /// sends it; with `dry_run` nothing is stored. The stored object, or the server's field errors.
    async fn create(&self, doc: &Value, dry_run: bool) -> Result<Value, Vec<FieldError>> {
        let doc = &without_nulls(doc);
        let query = if dry_run { "?dryRun=All&fieldValidation=Strict" } else { "?fieldValidation=Strict" };
        let req = http::Request::post(format!("{}{query}", self.plural_path(doc)))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(doc).unwrap())
            .unwrap();
        causes(self.client.request::<Value>(req).await, doc)
    }

    /// An update (PUT of the stored object with `doc`'s spec), strict, dry run.
    async fn update(&self, doc: &Value) -> Result<Value, Vec<FieldError>> {
        let url = format!("{}/{}", self.plural_path(doc), name_of(doc));
        let get = http::Request::get(&url).body(Vec::new()).unwrap();
        let mut stored: Value = self.client.request(get).await.expect("the stored object");
        stored["spec"] = doc["spec"].clone();
        let req = http::Request::put(format!("{url}?dryRun=All&fieldValidation=Strict"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&stored).unwrap())
            .unwrap();
        causes(self.client.request::<Value>(req).await, doc)
    }

    /// Server-side apply, strict, dry run (what `kubectl apply --server-side` sends).
    async fn server_side_apply(&self, doc: &Value) -> Result<Value, String> {
        let params = PatchParams {
            dry_run: true,
            force: true,
            field_manager: Some("manifests-test".into()),
            field_validation: Some(ValidationDirective::Strict),
        };
        self.dynamic(doc)
            .patch(name_of(doc), &params, &Patch::Apply(doc))
            .await
            .map(|o| serde_json::to_value(o).unwrap())
            .map_err(|e| e.to_string())
    }
}

/// The server's answer as the stored object or its field errors. The note the server adds when
/// schema errors kept it from running the CEL rules is not a defect of its own and is left out.
fn causes(res: Result<Value, kube::Error>, doc: &Value) -> Result<Value, Vec<FieldError>> {
    match res {
        Ok(obj) => Ok(obj),
        Err(kube::Error::Api(status)) => {
            let causes = status.details.as_ref().map(|d| d.causes.clone()).unwrap_or_default();
            if causes.is_empty() {
                // Strict decoding names the field in the message only.
                let field = status
                    .message
                    .split("unknown field \"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_default()
                    .to_string();
                return Err(vec![FieldError { field, message: status.message.clone() }]);
            }
            Err(causes
                .into_iter()
                .filter(|c| {
                    !(matches!(c.field.as_str(), "" | "<nil>")
                        && c.message.contains("some validation rules were not checked"))
                })
                .map(|c| FieldError { field: c.field, message: c.message })
                .collect())
        }
        Err(e) => panic!("sending {} {}: {e}", kind_of(doc), name_of(doc)),
    }
}

/// The resource name of a fleet kind, from the CRDs the operator generates.
fn plural(kind: &str) -> String {
    tenant_operator::crd::all_crds()
        .into_iter()
        .find(|(_, crd)| crd.spec.names.kind == kind)
        .map(|(_, crd)| crd.spec.names.plural)
        .unwrap_or_else(|| panic!("not a fleet kind: {kind}"))
}

/// `doc` without its null fields: kubectl drops them before it sends an object.
fn without_nulls(doc: &Value) -> Value {
    match doc {
        Value::Object(m) => {
            Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// A copy of `doc` in namespace `ns`.
fn in_namespace(doc: &Value, ns: &str) -> Value {
    let mut d = doc.clone();
    if d.get("metadata").is_some() {
        d["metadata"]["namespace"] = json!(ns);
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_apply_strictly_to_the_real_server_and_deserialize() {
    let server = Server::start().await;
    let ns = server.namespace("examples").await;
    let docs = example_documents();
    let mut problems = Vec::new();
    let mut fleet_objects = 0;
    // The namespace document stays out (the test's own namespace stands in for it); everything
    // else goes through the real kubectl, as `kubectl apply --server-side --validate=strict -f examples/`.
    let objects: Vec<Value> =
        docs.iter().filter(|(_, d)| kind_of(d) != "Namespace").map(|(_, d)| in_namespace(d, &ns)).collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let (ok, out, err) = server.kubectl(&["apply", "--validate=strict", "-n", &ns], &list).await;
    assert!(ok, "kubectl apply of examples/ failed:\n{out}\n{err}");
    assert!(!err.to_lowercase().contains("warning"), "kubectl apply of examples/ warned:\n{err}");
    // Server-side apply takes them too (list-map keys, field ownership).
    let fresh = server.namespace("examples-ssa").await;
    let objects: Vec<Value> =
        docs.iter().filter(|(_, d)| kind_of(d) != "Namespace").map(|(_, d)| in_namespace(d, &fresh)).collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let (ok, out, err) =
        server.kubectl(&["apply", "--server-side", "--dry-run=server", "--validate=strict", "-n", &fresh], &list).await;
    assert!(ok, "kubectl apply --server-side of examples/ failed:\n{out}\n{err}");
    assert!(!err.to_lowercase().contains("warning"), "kubectl apply --server-side of examples/ warned:\n{err}");
    for (file, doc) in &docs {
        let what = format!("examples/{file}: {} {:?}", kind_of(doc), name_of(doc));
        if !is_fleet(doc) {
            let parsed = match kind_of(doc) {
                "Namespace" => serde_json::from_value::<Namespace>(doc.clone()).map(drop),
                "Secret" => serde_json::from_value::<Secret>(doc.clone()).map(drop),
                other => {
                    problems.push(format!("{what}: unexpected kind {other:?} in the examples"));
                    continue;
                }
            };
            if let Err(e) = parsed {
                problems.push(format!("{what}: {e}"));
            }
            continue;
        }
        fleet_objects += 1;
        let doc = in_namespace(doc, &ns);
        let stored = serde_json::to_value(server.dynamic(&doc).get(name_of(&doc)).await.unwrap()).unwrap();
        let mut dropped = Vec::new();
        pruned_paths(&doc, &stored, "", &mut dropped);
        if !dropped.is_empty() {
            problems.push(format!("{what}: fields the server did not keep: {}", dropped.join(", ")));
        }
        let rust = match kind_of(&doc) {
            "Tenant" => same_in_rust::<Tenant>(&doc, &stored),
            "ImageChannel" => same_in_rust::<ImageChannel>(&doc, &stored),
            "RolloutPolicy" => same_in_rust::<RolloutPolicy>(&doc, &stored),
            other => Err(format!("no Rust type for {other}")),
        };
        if let Err(e) = rust {
            problems.push(format!("{what}: {e}"));
        }
    }
    assert!(problems.is_empty(), "{} problem(s) in examples/:\n{}", problems.len(), problems.join("\n"));
    assert!(fleet_objects >= 6, "examples/ holds only {fleet_objects} fleet objects");
}

/// Checks one bad-input file against the server; `Err` says why it does not do its job.
async fn check_bad_input(server: &Server, text: &str) -> Result<(), String> {
    let exp = expectation(text);
    let (Some(field), Some(message)) = (&exp.field, &exp.message) else {
        return Err("header lacks `# expect-field:` or `# expect-message:`".into());
    };
    let docs = documents(text)?;
    for d in &docs {
        if !is_fleet(d) || !matches!(kind_of(d), "Tenant" | "ImageChannel" | "RolloutPolicy") {
            return Err(format!(
                "document of kind {:?} / apiVersion {:?} is not a fleet object",
                kind_of(d),
                d.get("apiVersion")
            ));
        }
    }
    let ns = server.namespace("bad-input").await;
    let doc = match (exp.transition, docs.as_slice()) {
        (false, [doc]) => in_namespace(doc, &ns),
        (true, [old, new]) => {
            // The new document is valid on its own (a create elsewhere), and so is the stored one:
            // only the transition may be refused.
            let elsewhere = server.namespace("bad-input-new").await;
            server
                .create(&in_namespace(new, &elsewhere), true)
                .await
                .map_err(|e| format!("the new document is invalid even as a create: {}", show(&e)))?;
            server
                .create(&in_namespace(old, &ns), false)
                .await
                .map_err(|e| format!("the old document is itself invalid: {}", show(&e)))?;
            in_namespace(new, &ns)
        }
        (false, docs) => return Err(format!("{} documents; a bad input holds exactly one", docs.len())),
        (true, docs) => return Err(format!("{} documents; a transition holds exactly two (old, new)", docs.len())),
    };
    // What the user sees: the real kubectl, strict validation, the server deciding (dry run).
    let (ok, out, err) = server.kubectl(&["apply", "--dry-run=server", "--validate=strict"], &doc).await;
    if ok {
        return Err(format!("ACCEPTED by kubectl, but should be refused: {out}"));
    }
    if !err.contains(field.as_str()) || !err.contains(message.as_str()) {
        return Err(format!("kubectl refused it, but its message names no {field:?} / {message:?}: {err}"));
    }
    // The same request's causes, field by field.
    let sent = if exp.transition { server.update(&doc).await } else { server.create(&doc, true).await };
    let errors = match sent {
        Ok(_) => return Err("ACCEPTED by the API, but should be refused".into()),
        Err(errors) => errors,
    };
    let hit = errors.iter().any(|e| field_matches(&e.field, field) && e.message.contains(message.as_str()));
    if !hit {
        return Err(format!("refused, but not at {field:?} with a message containing {message:?}: {}", show(&errors)));
    }
    let stray: Vec<_> = errors.iter().filter(|e| !field_matches(&e.field, field)).cloned().collect();
    if !stray.is_empty() {
        return Err(format!("also refused for other fields (a bad input should hold one defect): {}", show(&stray)));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_by_the_real_server_at_the_expected_field() {
    let server = Server::start().await;
    let dir = repo_root().join("tests/bad-input");
    let files = yaml_files(&dir);
    let mut kinds = BTreeMap::<String, usize>::new();
    let mut transitions = 0;
    let mut texts = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        if expectation(&text).transition {
            transitions += 1;
        }
        if let Ok(docs) = documents(&text)
            && let Some(d) = docs.first()
        {
            *kinds.entry(kind_of(d).to_string()).or_default() += 1;
        }
        texts.push((name, text));
    }
    let server = &server;
    let mut failures: Vec<String> = futures::stream::iter(texts)
        .map(|(name, text)| async move {
            check_bad_input(server, &text).await.err().map(|why| format!("tests/bad-input/{name}: {why}"))
        })
        .buffer_unordered(4)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs do not fail as they should:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    assert!(files.len() >= 30, "only {} files in tests/bad-input/", files.len());
    assert!(transitions >= 1, "no transition case in tests/bad-input/");
    for kind in ["Tenant", "ImageChannel", "RolloutPolicy"] {
        assert!(kinds.get(kind).copied().unwrap_or(0) >= 3, "too few bad inputs of kind {kind}: {kinds:?}");
    }
}

fn object(ns: &str, kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": fleet_api_version(),
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// Valid objects pass, and breaking them is noticed, by the structural checks and by CEL: the
/// bad-input test cannot pass because the server refuses everything (or nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_objects_pass_and_their_broken_twins_do_not() {
    let server = Server::start().await;
    let ns = server.namespace("twins").await;
    let check = |doc: Value| {
        let server = &server;
        async move { server.create(&doc, true).await }
    };
    let tenant = object(
        &ns,
        "Tenant",
        "acme",
        json!({"slug": "acme", "instance": {"id": "i-0123456789abcdef0"}, "channel": "stable",
               "container": {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}}),
    );
    let channel = object(
        &ns,
        "ImageChannel",
        "staging",
        json!({"image": "registry.example.com/molecule/platform-tenant", "tag": "staging"}),
    );
    let promoted = object(
        &ns,
        "ImageChannel",
        "stable",
        json!({"image": "registry.example.com/molecule/platform-tenant", "promoteFrom": "staging"}),
    );
    let policy = object(
        &ns,
        "RolloutPolicy",
        "blue-green",
        json!({"strategy": "BlueGreen", "maxConcurrency": "25%",
               "smokeChecks": [{"name": "health", "path": "/health", "expectStatus": 200}]}),
    );
    let empty_policy = object(&ns, "RolloutPolicy", "defaults", json!({}));
    for obj in [&tenant, &channel, &promoted, &policy, &empty_policy] {
        let out = check(obj.clone())
            .await
            .unwrap_or_else(|e| panic!("valid {} {} rejected: {}", kind_of(obj), name_of(obj), show(&e)));
        assert_eq!(out["spec"]["tier"].is_null(), kind_of(obj) != "Tenant");
    }
    // Defaults come from the schema, as the API server fills them.
    let out = check(empty_policy.clone()).await.unwrap();
    assert_eq!(out["spec"]["strategy"], "InPlace");
    assert_eq!(out["spec"]["maxConcurrency"], 1);
    assert_eq!(out["spec"]["stagger"], "30s");
    assert_eq!(out["spec"]["canary"]["minCanaries"], 1);
    let soak: tenant_operator::crd::Duration = serde_json::from_value(out["spec"]["canary"]["soak"].clone()).unwrap();
    assert_eq!(soak.as_std(), std::time::Duration::from_secs(30 * 60));
    // An explicit null of a defaulted field is pruned and defaulted (not kept as null, which the
    // operator could not deserialize).
    let null_policy = object(&ns, "RolloutPolicy", "nulls", json!({"maxConcurrency": null}));
    let out = check(null_policy).await.unwrap_or_else(|e| panic!("{}", show(&e)));
    assert_eq!(out["spec"]["maxConcurrency"], 1);
    serde_json::from_value::<RolloutPolicy>(out).expect("defaulted policy deserializes");
    // A misspelled field is refused under strict validation (not silently pruned).
    let mut typo = tenant.clone();
    typo["spec"]["chanel"] = json!("stable");
    let errs = check(typo).await.expect_err("a misspelled field");
    assert!(errs.iter().any(|e| e.message.contains("chanel")), "{errs:?}");
    // An update that keeps the slug is fine.
    server.create(&tenant, false).await.unwrap_or_else(|e| panic!("creating the tenant: {}", show(&e)));
    let mut retiered = tenant.clone();
    retiered["spec"]["tier"] = json!("canary");
    server.update(&retiered).await.expect("changing the tier is allowed");
    // Server-side apply keys the env list by name.
    server.server_side_apply(&retiered).await.expect("server-side apply of a valid tenant");

    // A Rust-built object passes too (what the operator itself would write).
    let built = Tenant::new(
        "globex",
        serde_json::from_value::<TenantSpec>(json!({
            "slug": "globex", "instance": {"tags": {"role": "tenant-host"}}, "channel": "stable"
        }))
        .unwrap(),
    );
    let mut built = serde_json::to_value(&built).unwrap();
    built["metadata"]["namespace"] = json!(ns);
    check(built).await.unwrap_or_else(|e| panic!("Rust-built tenant: {}", show(&e)));

    // Broken twins: one structural defect, one CEL defect, one transition.
    let mut upper = tenant.clone();
    upper["spec"]["slug"] = json!("Acme");
    upper["metadata"]["name"] = json!("acme-upper");
    let errs = check(upper).await.expect_err("uppercase slug");
    assert!(errs.iter().any(|e| e.field == "spec.slug"), "{errs:?}");
    let mut dup = tenant.clone();
    dup["spec"]["container"]["env"][1]["name"] = json!("A");
    dup["metadata"]["name"] = json!("acme-dup");
    let errs = check(dup.clone()).await.expect_err("duplicate env: the list map refuses it");
    assert!(
        errs.iter().any(|e| e.field == "spec.container.env[1]" && e.message.contains("Duplicate value")),
        "{errs:?}"
    );
    let err = server.server_side_apply(&dup).await.expect_err("duplicate env under server-side apply");
    assert!(err.contains("duplicate entries for key"), "{err}");
    let mut traversal = tenant.clone();
    traversal["spec"]["container"]["volumes"] = json!([{"hostPath": "/srv/../etc", "containerPath": "/data"}]);
    traversal["metadata"]["name"] = json!("acme-dotdot");
    let errs = check(traversal).await.expect_err("'..' in a path: CEL must run");
    assert!(errs.iter().any(|e| e.message.contains("may not contain '..'")), "{errs:?}");
    let mut both = promoted.clone();
    both["spec"]["tag"] = json!("latest");
    check(both).await.expect_err("tag and promoteFrom");
    let mut renamed = tenant.clone();
    renamed["spec"]["slug"] = json!("acme2");
    let mut fresh = renamed.clone();
    fresh["metadata"]["name"] = json!("acme-new");
    check(fresh).await.expect("a new slug is fine on create");
    server.update(&renamed).await.expect_err("but not on update");
}
