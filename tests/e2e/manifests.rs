//! The manifests users copy and the ones they get wrong.
//!
//! * every fleet object in `examples/` passes the schema the CRDs are generated with (structural
//!   checks and CEL rules, as the API server runs them), loses no field to pruning, and
//!   deserializes into the operator's Rust type with the same defaults;
//! * every file in `tests/bad-input/` is rejected, at the field and with the message its header
//!   names (`# expect-field:`, `# expect-message:`, `# transition: true` for an old/new pair);
//! * valid objects do pass, so a rejection means something.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use serde::Deserialize;
use serde_json::{Value, json};
use tenant_operator::crd::{GROUP, ImageChannel, RolloutPolicy, Tenant, TenantSpec, Tier, VERSION, all_crds};
use testbed::schema::{FieldError, validate};

/// `apiVersion` of every fleet kind.
fn fleet_api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

fn repo_root() -> PathBuf {
    // This crate lives in `<repo>/tests`.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The served version's `openAPIV3Schema` of each fleet kind, by kind.
fn schemas() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (file, crd) in all_crds() {
        let version = crd
            .spec
            .versions
            .iter()
            .find(|v| v.name == VERSION)
            .unwrap_or_else(|| panic!("{file}: no version {VERSION}"));
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap_or_else(|| panic!("{file}: no openAPIV3Schema"));
        out.insert(crd.spec.names.kind.clone(), serde_json::to_value(schema).expect("schema serializes"));
    }
    assert_eq!(
        out.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ImageChannel", "RolloutPolicy", "Tenant"],
        "all_crds() should define the three fleet kinds"
    );
    out
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

fn show(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
}

/// Validates a fleet object like the API server would (create when `old` is `None`).
fn check(schemas: &BTreeMap<String, Value>, doc: &Value, old: Option<&Value>) -> Result<Value, Vec<FieldError>> {
    let kind = kind_of(doc);
    let Some(schema) = schemas.get(kind) else {
        return Err(vec![FieldError {
            field: "kind".into(),
            message: format!("no CRD for kind {kind:?}"),
            reason: "NotFound".into(),
        }]);
    };
    validate(schema, doc, old)
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
    let (a, b) =
        (serde_json::to_value(&a).map_err(|e| e.to_string())?, serde_json::to_value(&b).map_err(|e| e.to_string())?);
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
fn examples_pass_the_crd_schemas_and_deserialize() {
    let schemas = schemas();
    let docs = example_documents();
    let mut problems = Vec::new();
    let mut fleet_objects = 0;
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
        let defaulted = match check(&schemas, doc, None) {
            Ok(v) => v,
            Err(errors) => {
                problems.push(format!("{what}: rejected: {}", show(&errors)));
                continue;
            }
        };
        let mut dropped = Vec::new();
        pruned_paths(doc, &defaulted, "", &mut dropped);
        if !dropped.is_empty() {
            problems.push(format!("{what}: unknown fields (pruned): {}", dropped.join(", ")));
        }
        let rust = match kind_of(doc) {
            "Tenant" => same_in_rust::<Tenant>(doc, &defaulted),
            "ImageChannel" => same_in_rust::<ImageChannel>(doc, &defaulted),
            "RolloutPolicy" => same_in_rust::<RolloutPolicy>(doc, &defaulted),
            other => Err(format!("no Rust type for {other}")),
        };
        if let Err(e) = rust {
            problems.push(format!("{what}: {e}"));
        }
    }
    assert!(problems.is_empty(), "{} problem(s) in examples/:\n{}", problems.len(), problems.join("\n"));
    assert!(fleet_objects >= 6, "examples/ holds only {fleet_objects} fleet objects");
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

/// Checks one bad-input file; `Err` says why it does not do its job.
fn check_bad_input(schemas: &BTreeMap<String, Value>, text: &str) -> Result<(), String> {
    let exp = expectation(text);
    let (Some(field), Some(message)) = (&exp.field, &exp.message) else {
        return Err("header lacks `# expect-field:` or `# expect-message:`".into());
    };
    let docs = documents(text)?;
    for d in &docs {
        if !is_fleet(d) || !schemas.contains_key(kind_of(d)) {
            return Err(format!(
                "document of kind {:?} / apiVersion {:?} is not a fleet object",
                kind_of(d),
                d.get("apiVersion")
            ));
        }
    }
    let (doc, old) = match (exp.transition, docs.as_slice()) {
        (false, [doc]) => (doc, None),
        (true, [old, new]) => {
            // The stored object is valid, and so is the new one on its own: only the
            // transition may be refused.
            check(schemas, old, None).map_err(|e| format!("the old document is itself invalid: {}", show(&e)))?;
            check(schemas, new, None)
                .map_err(|e| format!("the new document is invalid even as a create: {}", show(&e)))?;
            (new, Some(old))
        }
        (false, docs) => {
            return Err(format!("{} documents; a bad input holds exactly one", docs.len()));
        }
        (true, docs) => {
            return Err(format!("{} documents; a transition holds exactly two (old, new)", docs.len()));
        }
    };
    let errors = match check(schemas, doc, old) {
        Ok(_) => return Err("ACCEPTED, but should be rejected".into()),
        Err(errors) => errors,
    };
    let hit = errors.iter().any(|e| field_matches(&e.field, field) && e.message.contains(message.as_str()));
    if !hit {
        return Err(format!("rejected, but not at {field:?} with a message containing {message:?}: {}", show(&errors)));
    }
    // One defect per file: every error is about the expected field.
    let stray: Vec<_> = errors.iter().filter(|e| !field_matches(&e.field, field)).cloned().collect();
    if !stray.is_empty() {
        return Err(format!("also rejected for other fields (a bad input should hold one defect): {}", show(&stray)));
    }
    Ok(())
}

#[test]
fn bad_inputs_are_rejected_at_the_expected_field() {
    let schemas = schemas();
    let dir = repo_root().join("tests/bad-input");
    let files = yaml_files(&dir);
    let mut failures = Vec::new();
    let mut kinds = BTreeMap::<String, usize>::new();
    let mut transitions = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        if let Err(why) = check_bad_input(&schemas, &text) {
            failures.push(format!("tests/bad-input/{name}: {why}"));
        }
        if expectation(&text).transition {
            transitions += 1;
        }
        if let Ok(docs) = documents(&text)
            && let Some(d) = docs.first()
        {
            *kinds.entry(kind_of(d).to_string()).or_default() += 1;
        }
    }
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

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": fleet_api_version(),
        "kind": kind,
        "metadata": {"name": name, "namespace": "fleet"},
        "spec": spec,
    })
}

/// Valid objects pass, and breaking them is noticed, by the structural checks and by CEL: the
/// bad-input test cannot pass because the validator rejects everything (or nothing).
#[test]
fn valid_objects_pass_and_their_broken_twins_do_not() {
    let schemas = schemas();
    let tenant = object(
        "Tenant",
        "acme",
        json!({"slug": "acme", "instance": {"id": "i-0123456789abcdef0"}, "channel": "stable",
               "container": {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}}),
    );
    let channel = object(
        "ImageChannel",
        "staging",
        json!({"image": "registry.example.com/molecule/platform-tenant", "tag": "staging"}),
    );
    let promoted = object(
        "ImageChannel",
        "stable",
        json!({"image": "registry.example.com/molecule/platform-tenant", "promoteFrom": "staging"}),
    );
    let policy = object(
        "RolloutPolicy",
        "blue-green",
        json!({"strategy": "BlueGreen", "maxConcurrency": "25%",
               "smokeChecks": [{"name": "health", "path": "/health", "expectStatus": 200}]}),
    );
    let empty_policy = object("RolloutPolicy", "defaults", json!({}));
    for obj in [&tenant, &channel, &promoted, &policy, &empty_policy] {
        let out = check(&schemas, obj, None)
            .unwrap_or_else(|e| panic!("valid {} {} rejected: {}", kind_of(obj), name_of(obj), show(&e)));
        assert_eq!(out["spec"]["tier"].is_null(), kind_of(obj) != "Tenant");
    }
    // Defaults come from the schema, as the API server fills them.
    let out = check(&schemas, &empty_policy, None).unwrap();
    assert_eq!(out["spec"]["strategy"], "InPlace");
    assert_eq!(out["spec"]["maxConcurrency"], 1);
    assert_eq!(out["spec"]["stagger"], "30s");
    assert_eq!(out["spec"]["canary"]["minCanaries"], 1);
    let soak: tenant_operator::crd::Duration = serde_json::from_value(out["spec"]["canary"]["soak"].clone()).unwrap();
    assert_eq!(soak.as_std(), std::time::Duration::from_secs(30 * 60));
    // An explicit null of a defaulted field is pruned and defaulted (not kept as null, which the
    // operator could not deserialize).
    let null_policy = object("RolloutPolicy", "nulls", json!({"maxConcurrency": null}));
    let out = check(&schemas, &null_policy, None).unwrap_or_else(|e| panic!("{}", show(&e)));
    assert_eq!(out["spec"]["maxConcurrency"], 1);
    serde_json::from_value::<RolloutPolicy>(out).expect("defaulted policy deserializes");
    // An update that keeps the slug is fine.
    let mut retiered = tenant.clone();
    retiered["spec"]["tier"] = json!("canary");
    check(&schemas, &retiered, Some(&tenant)).expect("changing the tier is allowed");

    // A Rust-built object passes too (what the operator itself would write).
    let built = Tenant::new(
        "globex",
        serde_json::from_value::<TenantSpec>(json!({
            "slug": "globex", "instance": {"tags": {"role": "tenant-host"}}, "channel": "stable"
        }))
        .unwrap(),
    );
    let mut built = serde_json::to_value(&built).unwrap();
    built["metadata"]["namespace"] = json!("fleet");
    check(&schemas, &built, None).unwrap_or_else(|e| panic!("Rust-built tenant: {}", show(&e)));

    // Broken twins: one structural defect, one CEL defect, one transition.
    let mut upper = tenant.clone();
    upper["spec"]["slug"] = json!("Acme");
    let errs = check(&schemas, &upper, None).expect_err("uppercase slug");
    assert!(errs.iter().any(|e| e.field == "spec.slug"), "{errs:?}");
    let mut dup = tenant.clone();
    dup["spec"]["container"]["env"][1]["name"] = json!("A");
    let errs = check(&schemas, &dup, None).expect_err("duplicate env: CEL must run");
    assert!(errs.iter().any(|e| e.message.contains("unique")), "{errs:?}");
    let mut both = promoted.clone();
    both["spec"]["tag"] = json!("latest");
    check(&schemas, &both, None).expect_err("tag and promoteFrom");
    let mut renamed = tenant.clone();
    renamed["spec"]["slug"] = json!("acme2");
    check(&schemas, &renamed, None).expect("a new slug is fine on create");
    check(&schemas, &renamed, Some(&tenant)).expect_err("but not on update");
}
