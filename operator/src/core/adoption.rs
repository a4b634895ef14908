//! Adoption of hosts that today's fleet set up by hand (a container started by user-data and the
//! cron auto-updater), decided from plain data.
//!
//! The host reports the hand-run container (`inspect-legacy`, read-only); the operator checks every
//! value again here, builds the tenant's first revision from it and sends `adopt`, which takes the
//! container over without stopping it. Nothing is taken over unless `spec.adoption` is `Adopt`.

use super::report::is_digest;
use crate::crd::{
    AdoptionMode, AdoptionStatus, ContainerSpec, ExtraHost, HostObservation, ImportedContainer, RestartPolicy,
    VolumeMount,
};
use jiff::Timestamp;
use std::time::Duration;

/// What to send to the host for its adoption, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do for adoption.
    Nothing,
    /// Ask the host what its hand-run container runs (read-only).
    Inspect,
    /// Take the hand-run container over.
    Adopt,
    /// Hand the host back to its cron auto-updater.
    Release,
}

/// Inputs of the decision.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// Now.
    pub now: Timestamp,
    /// `spec.adoption`.
    pub mode: AdoptionMode,
    /// The last host report.
    pub observation: Option<&'a HostObservation>,
    /// `status.adoption`.
    pub adoption: Option<&'a AdoptionStatus>,
    /// How old a preview inspection may get before it is taken again.
    pub refresh: Duration,
}

/// A host that runs a container the operator did not start and carries no applied-revision marker.
pub fn hand_run(obs: &HostObservation) -> bool {
    !obs.managed && obs.unmanaged_containers > 0
}

/// Whether the operator adopted this host and has not handed it back.
pub fn adopted(adoption: Option<&AdoptionStatus>) -> bool {
    adoption.is_some_and(|a| a.revision.is_some())
}

fn older_than(at: Option<&str>, now: Timestamp, age: Duration) -> bool {
    match at.and_then(|t| t.parse::<Timestamp>().ok()) {
        Some(t) => Duration::try_from(now.duration_since(t)).unwrap_or_default() >= age,
        None => true,
    }
}

/// Decides the next adoption step.
pub fn step(input: &Input<'_>) -> Step {
    let Some(obs) = input.observation else { return Step::Nothing };
    let a = input.adoption;
    match input.mode {
        AdoptionMode::Disabled => {
            // `inspectedAt` is written on failure too, so a host that cannot be inspected is not
            // asked again before the preview would be refreshed anyway.
            if hand_run(obs) && a.is_none_or(|a| older_than(a.inspected_at.as_deref(), input.now, input.refresh)) {
                Step::Inspect
            } else {
                Step::Nothing
            }
        }
        AdoptionMode::Adopt => {
            if !hand_run(obs) {
                return Step::Nothing;
            }
            if let Some(after) = a.and_then(|a| a.retry_after.as_deref()).and_then(|t| t.parse::<Timestamp>().ok())
                && after > input.now
            {
                return Step::Nothing;
            }
            match a.and_then(|a| a.imported.as_ref()) {
                None => Step::Inspect,
                Some(_) => Step::Adopt,
            }
        }
        AdoptionMode::Release => {
            if adopted(a) && (obs.managed || obs.cron.as_deref() == Some("disabled")) {
                Step::Release
            } else {
                Step::Nothing
            }
        }
    }
}

fn is_path(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 512
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._/@+-".contains(c))
        && !s.split('/').any(|p| p == "..")
}

fn is_name(s: &str, max: usize, extra: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphanumeric())
        && s.len() <= max
        && cs.all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

fn is_env_name(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && s.len() <= 128
        && cs.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn is_ip(s: &str) -> bool {
    s == "host-gateway" || s.parse::<std::net::IpAddr>().is_ok()
}

fn restart(s: &str) -> Option<RestartPolicy> {
    match s {
        "no" => Some(RestartPolicy::No),
        "always" => Some(RestartPolicy::Always),
        "unless-stopped" => Some(RestartPolicy::UnlessStopped),
        "on-failure" => Some(RestartPolicy::OnFailure),
        _ => None,
    }
}

/// Why this report cannot be imported as it is (a stable reason and a message naming no value that
/// could be secret), checked against the tenant's container spec.
pub fn problem(imp: &ImportedContainer, spec: &ContainerSpec) -> Option<(&'static str, String)> {
    if !imp.dropped.is_empty() {
        return Some((
            "ImportIncomplete",
            format!("the host could not report these settings safely: {}", imp.dropped.join(", ")),
        ));
    }
    let bad = |what: &str| Some(("ImportInvalid", format!("the reported {what} is not valid")));
    if !is_digest(&imp.digest) {
        return bad("digest");
    }
    if !is_name(&imp.image, 255, "._:/-") {
        return bad("image");
    }
    if imp.env_names.iter().any(|n| !is_env_name(n)) || imp.env_names.len() > 256 {
        return bad("env names");
    }
    if imp.volumes.iter().any(|v| !is_path(&v.host_path) || !is_path(&v.container_path)) || imp.volumes.len() > 32 {
        return bad("volumes");
    }
    if !is_name(&imp.network, 64, "_.-") {
        return bad("network");
    }
    if restart(&imp.restart_policy).is_none() {
        return bad("restart policy");
    }
    if imp.extra_hosts.iter().any(|h| !is_name(&h.hostname, 253, "-.") || !is_ip(&h.ip)) || imp.extra_hosts.len() > 32 {
        return bad("extra hosts");
    }
    if imp.labels.len() > 64
        || imp.labels.iter().any(|(k, v)| {
            !is_name(k, 128, "._/-")
                || k.starts_with("fleet.molecule.ai/")
                || v.len() > 256
                || !v.chars().all(|c| c.is_ascii_alphanumeric() || "._:/@+= -".contains(c))
        })
    {
        return bad("labels");
    }
    let Some(port) = imp.ports.first() else {
        return Some(("NoPublishedPort", "the hand-run container publishes no TCP port".into()));
    };
    if !(1..=65535).contains(&port.host) || !(1..=65535).contains(&port.container) {
        return bad("port");
    }
    if port.host == spec.ports.green || port.host == spec.ports.routing {
        return Some((
            "PortConflict",
            format!(
                "the hand-run container serves on port {}, which spec.container.ports gives to the green slot or the router",
                port.host
            ),
        ));
    }
    None
}

/// The container spec the adopted host runs with: the imported run options under the spec's own
/// (the spec wins where it says something; lists are joined, the spec's entry winning on a clash).
pub fn merged_container(spec: &ContainerSpec, imp: &ImportedContainer) -> ContainerSpec {
    let mut c = spec.clone();
    if let Some(p) = imp.ports.first() {
        c.ports.blue = p.host;
        c.container_port = p.container;
    }
    if c.network.is_none() && imp.network != "bridge" && imp.network != "default" {
        c.network = Some(imp.network.clone());
    }
    if let Some(r) = restart(&imp.restart_policy) {
        c.restart_policy = r;
    }
    let mut volumes: Vec<VolumeMount> = imp
        .volumes
        .iter()
        .filter(|v| !spec.volumes.iter().any(|s| s.container_path == v.container_path))
        .cloned()
        .collect();
    volumes.extend(spec.volumes.iter().cloned());
    c.volumes = volumes;
    let mut hosts: Vec<ExtraHost> = imp
        .extra_hosts
        .iter()
        .filter(|h| !spec.extra_hosts.iter().any(|s| s.hostname == h.hostname))
        .cloned()
        .collect();
    hosts.extend(spec.extra_hosts.iter().cloned());
    c.extra_hosts = hosts;
    let mut labels = imp.labels.clone();
    labels.extend(spec.labels.clone());
    c.labels = labels;
    c.mount_docker_socket = spec.mount_docker_socket || imp.mount_docker_socket;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ImportedPort;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn imported() -> ImportedContainer {
        ImportedContainer {
            container: "molecule-tenant".into(),
            image: "127.0.0.1:5000/platform-tenant".into(),
            digest: D.into(),
            env_names: vec!["ORG_SLUG".into(), "SECRET".into()],
            ports: vec![ImportedPort { host: 8080, container: 8080 }],
            volumes: vec![VolumeMount { host_path: "/srv".into(), container_path: "/data".into(), read_only: false }],
            network: "bridge".into(),
            restart_policy: "always".into(),
            extra_hosts: vec![ExtraHost { hostname: "db".into(), ip: "10.0.0.5".into() }],
            labels: [("team".to_string(), "core".to_string())].into(),
            mount_docker_socket: true,
            dropped: vec![],
        }
    }

    fn obs(managed: bool, unmanaged: u32) -> HostObservation {
        HostObservation { managed, unmanaged_containers: unmanaged, ..Default::default() }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn off_only_inspects_adopt_inspects_then_adopts_release_hands_back() {
        let legacy = obs(false, 1);
        let mut a = AdoptionStatus::default();
        let mut input = Input {
            now: ts("2026-01-01T00:10:00Z"),
            mode: AdoptionMode::Disabled,
            observation: Some(&legacy),
            adoption: None,
            refresh: Duration::from_secs(300),
        };
        assert_eq!(step(&input), Step::Inspect);
        a.imported = Some(imported());
        a.inspected_at = Some("2026-01-01T00:09:00Z".into());
        input.adoption = Some(&a);
        assert_eq!(step(&input), Step::Nothing, "a fresh preview is kept; Disabled never adopts");
        input.now = ts("2026-01-01T00:20:00Z");
        assert_eq!(step(&input), Step::Inspect, "a stale preview is taken again");
        input.mode = AdoptionMode::Adopt;
        assert_eq!(step(&input), Step::Adopt);
        let mut failed = a.clone();
        failed.imported = None;
        failed.retry_after = Some("2026-01-01T00:21:00Z".into());
        input.adoption = Some(&failed);
        assert_eq!(step(&input), Step::Nothing, "a failed adopt waits");
        input.now = ts("2026-01-01T00:22:00Z");
        assert_eq!(step(&input), Step::Inspect, "then inspects again");
        // a managed host (fresh or adopted) needs nothing
        let managed = obs(true, 0);
        input.observation = Some(&managed);
        assert_eq!(step(&input), Step::Nothing);
        input.mode = AdoptionMode::Release;
        assert_eq!(step(&input), Step::Nothing, "never adopted: nothing to hand back");
        let mut adopted = a.clone();
        adopted.revision = Some("r0".into());
        input.adoption = Some(&adopted);
        assert_eq!(step(&input), Step::Release);
        input.observation = None;
        assert_eq!(step(&input), Step::Nothing);
    }

    #[test]
    fn imported_values_are_checked_again() {
        let spec = ContainerSpec::default();
        assert_eq!(problem(&imported(), &spec), None);
        let mut i = imported();
        i.dropped = vec!["volume".into()];
        assert_eq!(problem(&i, &spec).unwrap().0, "ImportIncomplete");
        for f in [
            |i: &mut ImportedContainer| i.digest = "sha256:zz".into(),
            |i: &mut ImportedContainer| i.env_names.push("A=B".into()),
            |i: &mut ImportedContainer| i.volumes[0].host_path = "/a/../etc".into(),
            |i: &mut ImportedContainer| i.network = "$(id)".into(),
            |i: &mut ImportedContainer| i.restart_policy = "sometimes".into(),
            |i: &mut ImportedContainer| i.extra_hosts[0].ip = "1.2.3.4; rm".into(),
            |i: &mut ImportedContainer| {
                i.labels.insert("fleet.molecule.ai/slot".into(), "blue".into());
            },
            |i: &mut ImportedContainer| i.ports[0].host = 0,
        ] {
            let mut i = imported();
            f(&mut i);
            assert_eq!(problem(&i, &spec).unwrap().0, "ImportInvalid", "{i:?}");
        }
        let mut i = imported();
        i.ports[0].host = 8081;
        assert_eq!(problem(&i, &spec).unwrap().0, "PortConflict");
        i.ports.clear();
        assert_eq!(problem(&i, &spec).unwrap().0, "NoPublishedPort");
    }

    #[test]
    fn the_spec_wins_over_imported_options() {
        let mut spec = ContainerSpec::default();
        spec.volumes.push(VolumeMount { host_path: "/mine".into(), container_path: "/data".into(), read_only: true });
        spec.labels.insert("team".into(), "platform".into());
        let mut imp = imported();
        imp.ports[0] = ImportedPort { host: 9000, container: 3000 };
        imp.network = "tenant-net".into();
        let c = merged_container(&spec, &imp);
        assert_eq!((c.ports.blue, c.container_port), (9000, 3000));
        assert_eq!(c.network.as_deref(), Some("tenant-net"));
        assert_eq!(c.restart_policy, RestartPolicy::Always);
        assert_eq!(c.volumes, spec.volumes);
        assert_eq!(c.labels["team"], "platform");
        assert_eq!(c.extra_hosts.len(), 1);
        assert!(c.mount_docker_socket);
    }
}
