//! `tenant-operator adopt --dry-run`: per tenant, what an adoption would import and change.
//!
//! It reads only the Tenants: the operator inspects every hand-run host read-only (also while
//! `spec.adoption` is `Disabled`) and keeps what it saw in `status.adoption.imported`, so the preview
//! touches neither AWS nor the hosts. Env values are never known here, only their names.

use crate::core::adoption;
use crate::core::report::short_digest;
use crate::crd::{AdoptionMode, Tenant};
use crate::host::document::DocumentConstants;
use crate::host::revision;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use std::fmt::Write;

/// The preview of one tenant (several lines, no trailing newline). Pure.
pub fn preview(t: &Tenant, param_root: &str) -> String {
    let mut out = String::new();
    let ns = t.namespace().unwrap_or_default();
    let st = t.status.clone().unwrap_or_default();
    let instance = st.instance_id.clone().unwrap_or_else(|| "(instance not found yet)".into());
    let _ = write!(out, "{ns}/{}  instance {instance}  spec.adoption: {:?}", t.name_any(), t.spec.adoption);
    let a = st.adoption.as_ref();
    let obs = st.observed.as_ref();
    if adoption::adopted(a) {
        let at = a.and_then(|a| a.adopted_at.clone()).unwrap_or_default();
        let _ = write!(out, "\n  adopted at {at}; nothing would change");
        return out;
    }
    let Some(obs) = obs else {
        let _ = write!(out, "\n  no report from the host yet");
        return out;
    };
    if !adoption::hand_run(obs) {
        let what = if obs.managed { "managed by the operator" } else { "no hand-run container" };
        let _ = write!(out, "\n  {what}; nothing to adopt");
        return out;
    }
    let Some(imp) = a.and_then(|a| a.imported.as_ref()) else {
        let why = a.and_then(|a| a.failure.clone()).unwrap_or_else(|| "not inspected yet".into());
        let _ = write!(out, "\n  hand-run host, {why}");
        return out;
    };
    let verdict = match t.spec.adoption {
        AdoptionMode::Adopt => "being adopted",
        AdoptionMode::Disabled => "would be adopted once spec.adoption is Adopt",
        AdoptionMode::Release => "left alone (spec.adoption is Release)",
    };
    let _ = write!(out, "\n  hand-run container {}: {verdict}", imp.container);
    let _ = write!(out, "\n  image        {}@{}", imp.image, imp.digest);
    let _ = write!(
        out,
        "\n  env names    {} (values stay on the host; it writes them to {})",
        if imp.env_names.is_empty() { "(none)".to_string() } else { imp.env_names.join(", ") },
        revision::imported_env_parameter(param_root, &t.spec.slug)
    );
    let ports: Vec<String> = imp.ports.iter().map(|p| format!("{}->{}", p.host, p.container)).collect();
    let vols: Vec<String> = imp
        .volumes
        .iter()
        .map(|v| format!("{}:{}{}", v.host_path, v.container_path, if v.read_only { ":ro" } else { "" }))
        .collect();
    let hosts: Vec<String> = imp.extra_hosts.iter().map(|h| format!("{}:{}", h.hostname, h.ip)).collect();
    let labels: Vec<String> = imp.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = write!(
        out,
        "\n  run options  ports {}; volumes {}; network {}; restart {}; extra hosts {}; labels {}; docker socket {}",
        list(&ports),
        list(&vols),
        imp.network,
        imp.restart_policy,
        list(&hosts),
        list(&labels),
        if imp.mount_docker_socket { "mounted" } else { "not mounted" }
    );
    let cron = obs.cron.clone().unwrap_or_else(|| "unknown".into());
    let _ = write!(out, "\n  cron         {cron} -> disabled (moved aside; spec.adoption: Release puts it back)");
    if let Some((reason, msg)) = adoption::problem(imp, &t.spec.container) {
        let _ = write!(out, "\n  BLOCKED      {reason}: {msg}");
        return out;
    }
    let c = adoption::merged_container(&t.spec.container, imp);
    let _ = write!(
        out,
        "\n  slots        the container keeps serving as the blue slot on {}; green {}, router {}",
        c.ports.blue, c.ports.green, c.ports.routing
    );
    match st.target.as_ref() {
        Some(target)
            if target.digest == imp.digest
                && t.spec.container.env.is_empty()
                && t.spec.container.env_from.is_empty() =>
        {
            let _ = write!(out, "\n  first apply  none: the target is the running digest");
        }
        Some(target) => {
            let _ = write!(
                out,
                "\n  first apply  {} -> {} with the imported options and env{}",
                short_digest(&imp.digest),
                short_digest(&target.digest),
                if t.spec.container.env.is_empty() && t.spec.container.env_from.is_empty() {
                    ""
                } else {
                    " plus spec.container env"
                }
            );
        }
        None => {
            let _ = write!(out, "\n  first apply  waits for a target from the tenant's channel");
        }
    }
    out
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "(none)".into() } else { items.join(", ") }
}

/// The preview of every Tenant in `namespace` (all namespaces when `None`). Changes nothing.
pub async fn dry_run(client: kube::Client, namespace: Option<&str>) -> Result<String, kube::Error> {
    let api: Api<Tenant> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let root = DocumentConstants::default().param_root;
    let mut tenants = api.list(&ListParams::default()).await?.items;
    tenants.sort_by_key(|t| (t.namespace(), t.name_any()));
    Ok(tenants.iter().map(|t| preview(t, &root)).collect::<Vec<_>>().join("\n\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AdoptionStatus, HostObservation, ImportedContainer, ImportedPort, TenantStatus};

    #[test]
    fn names_what_would_be_imported_without_any_value() {
        let mut t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": "fleet"},
            "spec": {"slug": "acme", "instance": {"id": "i-0123456789abcdef0"}, "channel": "staging"}
        }))
        .unwrap();
        t.status = Some(TenantStatus {
            observed: Some(HostObservation {
                unmanaged_containers: 1,
                cron: Some("active".into()),
                ..Default::default()
            }),
            adoption: Some(AdoptionStatus {
                imported: Some(ImportedContainer {
                    container: "molecule-tenant".into(),
                    image: "r/platform-tenant".into(),
                    digest: format!("sha256:{}", "a".repeat(64)),
                    env_names: vec!["SECRET".into()],
                    ports: vec![ImportedPort { host: 8080, container: 8080 }],
                    network: "bridge".into(),
                    restart_policy: "unless-stopped".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let p = preview(&t, "/tenant-operator");
        assert!(p.contains("would be adopted once spec.adoption is Adopt"), "{p}");
        assert!(p.contains("env names    SECRET"), "{p}");
        assert!(p.contains("/tenant-operator/acme/imported-env"), "{p}");
        assert!(p.contains("cron         active -> disabled"), "{p}");
        assert!(p.contains("waits for a target"), "{p}");
    }
}
