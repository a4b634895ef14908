//! A tenant revision: everything the host needs to run the container but the image's digest, as
//! one SecureString under the tenant's own Parameter Store prefix (`<root>/<slug>/revision`,
//! overwritten when it changes); the digest travels in the command, the same for every host of a
//! batch. A rollout that changes only the digest writes no parameter at all.
//!
//! The value is a line format the host agent parses without a shell: every user-controlled field is
//! base64, decoded into a single argv element. Ids are HMACs keyed by the operator, so neither the
//! base id (in the value, and the first half of the revision id) nor the env revision (shown in
//! status) is a plain hash of secret values. The revision id is the base id followed by the first
//! 32 hex digits of the digest: the host computes the same from the value and the command.

use crate::crd::{ContainerSpec, SmokeCheck, SmokeMethod, Strategy};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;

/// SSM's limit for an advanced-tier parameter value.
pub const MAX_VALUE_BYTES: usize = 8192;

/// How the revision is rolled onto the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// Strategy.
    pub strategy: Strategy,
    /// Health timeout in seconds.
    pub health_timeout_secs: u64,
    /// Health path (the policy's, else the container's).
    pub health_path: String,
    /// How long the previous slot stays warm (blue/green).
    pub keep_warm_secs: u64,
    /// HTTP checks by path on the new slot's local port, after the health check.
    pub smoke_checks: Vec<SmokeCheck>,
}

/// A revision ready to be stored.
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredRevision {
    /// Revision id (64 hex): the base id, then the first 32 hex digits of the digest.
    pub id: String,
    /// Base id (HMAC of the value, 32 hex): what the parameter holds.
    pub base: String,
    /// The image digest the command carries.
    pub digest: String,
    /// HMAC of the env (32 hex), shown in status and on the container's label.
    pub env_revision: String,
    /// The parameter value. Holds secret values: never log it.
    pub value: String,
}

impl std::fmt::Debug for DesiredRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredRevision")
            .field("id", &self.id)
            .field("base", &self.base)
            .field("digest", &self.digest)
            .field("env_revision", &self.env_revision)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Why a revision cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RevisionError {
    /// The value exceeds what one parameter holds.
    #[error("the revision is {0} bytes; one parameter holds at most {MAX_VALUE_BYTES}")]
    TooLarge(usize),
    /// An env name that cannot be an environment variable.
    #[error("env name {0:?} is not a valid variable name")]
    InvalidEnvName(String),
    /// An env value no process environment can carry (a NUL byte ends a C string: the value would
    /// arrive cut or altered). The value itself is never part of the message.
    #[error("env {0:?}: its value holds a NUL byte, which no process environment can carry")]
    InvalidEnvValue(String),
    /// A smoke check's bearer names a key the tenant's env does not have.
    #[error("smoke check {0:?} takes its bearer from env key {1:?}, which the tenant's env does not have")]
    SmokeBearerMissing(String, String),
    /// A digest that is not `sha256:` and 64 lowercase hex digits.
    #[error("digest {0:?} is not sha256: and 64 lowercase hex digits")]
    InvalidDigest(String),
    /// A smoke check that is not a plain name and path (the CRD schema already refuses these).
    #[error("smoke check {0:?} is not a DNS-label name with a path on the slot's own port")]
    InvalidSmokeCheck(String),
}

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    // HMAC accepts keys of any length; an empty key is still a keyed construction.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    for p in parts {
        mac.update(&(p.len() as u64).to_le_bytes());
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())[..32].to_string()
}

fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && k.len() <= 128
}

/// The env revision alone (HMAC over the sorted env).
pub fn env_revision(key: &[u8], env: &BTreeMap<String, String>) -> String {
    let mut parts: Vec<&[u8]> = vec![b"env"];
    for (k, v) in env {
        parts.push(k.as_bytes());
        parts.push(v.as_bytes());
    }
    hmac_hex(key, &parts)
}

/// A path the host agent accepts for a smoke check: starts with one `/`, then only URL path and
/// query characters (no `#`, no whitespace, no brackets, no backslash), so curl can only ever reach
/// `http://<host address>:<slot port><path>`. Mirrors the CRD schema and the agent's own check.
pub fn valid_smoke_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.starts_with("//")
        && p.len() <= 1024
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~!$&'()*+,;=:@%/?-".contains(&b))
}

fn valid_smoke_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

/// The `smoke` lines: `smoke <b64 name> <GET|HEAD> <status> <b64 path> <b64 bearer env key | ->`.
/// The bearer's value is not repeated: the agent takes it from the revision's own `env` line.
fn smoke_lines(checks: &[SmokeCheck], env: &BTreeMap<String, String>) -> Result<Vec<String>, RevisionError> {
    let e = |s: &str| B64.encode(s.as_bytes());
    checks
        .iter()
        .map(|c| {
            if !valid_smoke_name(&c.name) || !valid_smoke_path(&c.path) || !(100..=599).contains(&c.expect_status) {
                return Err(RevisionError::InvalidSmokeCheck(c.name.clone()));
            }
            let bearer = match &c.bearer_env {
                Some(k) if !env.contains_key(k) => {
                    return Err(RevisionError::SmokeBearerMissing(c.name.clone(), k.clone()));
                }
                Some(k) => e(k),
                None => "-".into(),
            };
            let method = match c.method {
                SmokeMethod::Get => "GET",
                SmokeMethod::Head => "HEAD",
            };
            Ok(format!("smoke {} {method} {} {} {bearer}", e(&c.name), c.expect_status, e(&c.path)))
        })
        .collect()
}

/// The login for the image's registry, carried in the revision (a SecureString) to the host.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryLogin {
    /// Registry host (`ghcr.io`, `registry:5000`): the host of the image, nothing else.
    pub host: String,
    /// User name.
    pub username: String,
    /// Password or token. Never logged.
    pub password: String,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin").field("host", &self.host).field("username", &self.username).finish()
    }
}

/// What a revision may carry besides the container spec and env.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extras<'a> {
    /// Names of the env taken over from an adopted hand-run container (see [`build_with_import`]).
    pub imported_env_names: Option<&'a [String]>,
    /// Login for the image's registry.
    pub registry_login: Option<&'a RegistryLogin>,
}

/// The registry host of an image reference (`docker.io` when it names none).
pub fn registry_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// Builds the revision for `image@digest` with this env.
pub fn build(
    key: &[u8],
    container: &ContainerSpec,
    image: &str,
    digest: &str,
    env: &BTreeMap<String, String>,
    rollout: &Rollout,
) -> Result<DesiredRevision, RevisionError> {
    build_with_import(key, container, image, digest, env, Extras::default(), rollout)
}

/// Builds the revision of an adopted tenant: the env taken over from its hand-run container (held
/// by the host's write-once `imported-env` parameter; the operator knows only the names) comes
/// first, `env` overrides it. The env revision covers the names and the fact of the import; the
/// values, which the operator never sees, are fixed because the parameter is written once.
pub fn build_with_import(
    key: &[u8],
    container: &ContainerSpec,
    image: &str,
    digest: &str,
    env: &BTreeMap<String, String>,
    extras: Extras<'_>,
    rollout: &Rollout,
) -> Result<DesiredRevision, RevisionError> {
    let imported_env_names = extras.imported_env_names;
    if let Some(bad) = env.keys().find(|k| !valid_env_name(k)) {
        return Err(RevisionError::InvalidEnvName(bad.clone()));
    }
    if let Some(bad) = imported_env_names.and_then(|n| n.iter().find(|k| !valid_env_name(k))) {
        return Err(RevisionError::InvalidEnvName(bad.clone()));
    }
    if let Some((bad, _)) = env.iter().find(|(_, v)| v.contains('\0')) {
        return Err(RevisionError::InvalidEnvValue(bad.clone()));
    }
    let digest_hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .ok_or_else(|| RevisionError::InvalidDigest(digest.to_string()))?;
    let e = |s: &str| B64.encode(s.as_bytes());
    let env_rev = match imported_env_names {
        None => env_revision(key, env),
        Some(names) => {
            let mut parts: Vec<&[u8]> = vec![b"env+imported"];
            for n in names {
                parts.push(n.as_bytes());
            }
            parts.push(b"own");
            for (k, v) in env {
                parts.push(k.as_bytes());
                parts.push(v.as_bytes());
            }
            hmac_hex(key, &parts)
        }
    };
    let mut lines = vec![
        "tenant-operator-revision v2".to_string(),
        format!("image {}", e(image)),
        format!("envrev {env_rev}"),
        format!("name {}", container.name),
        format!("ports {} {} {}", container.ports.blue, container.ports.green, container.ports.routing),
        format!("cport {}", container.container_port),
        format!("health {}", e(&rollout.health_path)),
        format!("timeout {}", rollout.health_timeout_secs),
        format!(
            "strategy {}",
            match rollout.strategy {
                Strategy::InPlace => "inplace",
                Strategy::BlueGreen => "bluegreen",
            }
        ),
        format!("keepwarm {}", rollout.keep_warm_secs),
        format!("restart {}", container.restart_policy.as_docker()),
        format!("dockersock {}", u8::from(container.mount_docker_socket)),
    ];
    if let Some(n) = &container.network {
        lines.push(format!("network {}", e(n)));
    }
    for v in &container.volumes {
        lines.push(format!(
            "vol {} {} {}",
            e(&v.host_path),
            e(&v.container_path),
            if v.read_only { "ro" } else { "rw" }
        ));
    }
    for (k, v) in &container.labels {
        lines.push(format!("label {} {}", e(k), e(v)));
    }
    for h in &container.extra_hosts {
        lines.push(format!("host {} {}", e(&h.hostname), e(&h.ip)));
    }
    if imported_env_names.is_some() {
        lines.push("importedenv 1".to_string());
    }
    if let Some(l) = extras.registry_login {
        lines.push(format!("login {} {} {}", e(&l.host), e(&l.username), e(&l.password)));
    }
    for (k, v) in env {
        lines.push(format!("env {} {}", e(k), e(v)));
    }
    // Part of the value, so part of the id: a change of the checks is a new revision.
    lines.extend(smoke_lines(&rollout.smoke_checks, env)?);
    let content = lines.join("\n") + "\n";
    let base = hmac_hex(key, &[b"revision", content.as_bytes()]);
    // The base id closes the value: the host names what it applied by it.
    let value = format!("{content}base {base}\n");
    if value.len() > MAX_VALUE_BYTES {
        return Err(RevisionError::TooLarge(value.len()));
    }
    let id = format!("{base}{}", &digest_hex[..32]);
    Ok(DesiredRevision { id, base, digest: digest.to_string(), env_revision: env_rev, value })
}

/// Name of the parameter an adopted host writes its hand-run container's env to (once).
pub fn imported_env_parameter(root: &str, slug: &str) -> String {
    format!("{}/{}/imported-env", root.trim_end_matches('/'), slug)
}

/// Name of the tenant's revision parameter (one per tenant, overwritten when the base changes).
pub fn parameter_name(root: &str, slug: &str) -> String {
    format!("{}/{}/revision", root.trim_end_matches('/'), slug)
}

/// The base id within a revision id.
pub fn base_of(revision_id: &str) -> &str {
    revision_id.get(..32).unwrap_or(revision_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout() -> Rollout {
        Rollout {
            strategy: Strategy::InPlace,
            health_timeout_secs: 60,
            health_path: "/health".into(),
            keep_warm_secs: 600,
            smoke_checks: Vec::new(),
        }
    }

    fn check(name: &str, path: &str, status: i32, bearer: Option<&str>) -> SmokeCheck {
        SmokeCheck {
            name: name.into(),
            path: path.into(),
            method: SmokeMethod::Get,
            expect_status: status,
            bearer_env: bearer.map(Into::into),
        }
    }

    fn decode(s: &str) -> String {
        String::from_utf8(B64.decode(s).unwrap()).unwrap()
    }

    #[test]
    fn smoke_checks_are_encoded_and_part_of_the_id() {
        let c = ContainerSpec::default();
        let mut env = BTreeMap::new();
        env.insert("API_TOKEN".to_string(), "bearer-value-1".to_string());
        let plain = build(b"k", &c, "r/app", D, &env, &rollout()).unwrap();
        assert!(!plain.value.contains("\nsmoke "), "no checks, no lines (ids of existing revisions stay)");
        let mut r = rollout();
        r.smoke_checks = vec![
            check("api", "/api/orgs?limit=1", 200, Some("API_TOKEN")),
            SmokeCheck { method: SmokeMethod::Head, ..check("liveness", "/api/orgs", 401, None) },
        ];
        let with = build(b"k", &c, "r/app", D, &env, &r).unwrap();
        assert_ne!(with.id, plain.id, "the checks are part of the revision id");
        assert_eq!(with.env_revision, plain.env_revision, "the env revision is the env's alone");
        let smoke: Vec<Vec<&str>> =
            with.value.lines().filter(|l| l.starts_with("smoke ")).map(|l| l.split(' ').collect()).collect();
        assert_eq!(smoke.len(), 2);
        assert_eq!(decode(smoke[0][1]), "api");
        assert_eq!(smoke[0][2..4], ["GET", "200"]);
        assert_eq!(decode(smoke[0][4]), "/api/orgs?limit=1");
        assert_eq!(decode(smoke[0][5]), "API_TOKEN");
        assert_eq!(smoke[1][2..4], ["HEAD", "401"]);
        assert_eq!(smoke[1][5], "-");
        // The bearer's value appears once only (its env line), never in a smoke line.
        assert_eq!(with.value.matches(&B64.encode("bearer-value-1")).count(), 1);
        // A different expected status: a different revision.
        r.smoke_checks[0].expect_status = 204;
        assert_ne!(build(b"k", &c, "r/app", D, &env, &r).unwrap().id, with.id);
    }

    #[test]
    fn smoke_checks_reach_only_a_path_and_need_their_bearer() {
        let c = ContainerSpec::default();
        let env = BTreeMap::new();
        let mut r = rollout();
        r.smoke_checks = vec![check("api", "/x", 200, Some("NOPE"))];
        assert_eq!(
            build(b"k", &c, "r/app", D, &env, &r),
            Err(RevisionError::SmokeBearerMissing("api".into(), "NOPE".into()))
        );
        for bad in ["http://evil/", "//evil.example/x", "x", "/a b", "/a#b", "/a\\b", "/a\nHost: x", "/{a}", ""] {
            assert!(!valid_smoke_path(bad), "{bad:?}");
            r.smoke_checks = vec![check("api", bad, 200, None)];
            assert_eq!(build(b"k", &c, "r/app", D, &env, &r), Err(RevisionError::InvalidSmokeCheck("api".into())));
        }
        for good in ["/", "/health", "/api/orgs?x=1&y=%20", "/@evil.example"] {
            assert!(valid_smoke_path(good), "{good:?}");
        }
        r.smoke_checks = vec![check("Bad_Name", "/", 200, None)];
        assert!(build(b"k", &c, "r/app", D, &env, &r).is_err());
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn ids_are_keyed_stable_and_change_with_content() {
        let c = ContainerSpec::default();
        let mut env = BTreeMap::new();
        env.insert("SECRET".to_string(), "hunter2".to_string());
        let a = build(b"k1", &c, "r/app", D, &env, &rollout()).unwrap();
        let b = build(b"k1", &c, "r/app", D, &env, &rollout()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.id.len(), 64);
        assert_eq!(a.id, format!("{}{}", a.base, &D[7..39]), "the base id, then the digest's first 32 hex digits");
        assert!(a.value.ends_with(&format!("\nbase {}\n", a.base)));
        assert!(!a.value.contains(&D[7..]), "the digest travels in the command, not in the value");
        // Another digest: another revision, the same stored value (nothing to write).
        let d2 = format!("sha256:{}", "f".repeat(64));
        let moved = build(b"k1", &c, "r/app", &d2, &env, &rollout()).unwrap();
        assert_eq!((moved.base.as_str(), moved.value.as_str()), (a.base.as_str(), a.value.as_str()));
        assert_ne!(moved.id, a.id);
        for bad in
            ["sha256:abc", "sha512:00", "", "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"]
        {
            assert_eq!(build(b"k1", &c, "r/app", bad, &env, &rollout()), Err(RevisionError::InvalidDigest(bad.into())));
        }
        let other_key = build(b"k2", &c, "r/app", D, &env, &rollout()).unwrap();
        assert_ne!(a.id, other_key.id);
        assert_ne!(a.env_revision, other_key.env_revision);
        env.insert("SECRET".to_string(), "hunter3".to_string());
        let c2 = build(b"k1", &c, "r/app", D, &env, &rollout()).unwrap();
        assert_ne!(a.env_revision, c2.env_revision);
        // No secret value in anything but the value itself, and not even there in the clear.
        assert!(!format!("{a:?}").contains("hunter2"));
        assert!(!a.value.contains("hunter2"));
    }

    #[test]
    fn hostile_values_are_encoded_and_bad_names_refused() {
        let c = ContainerSpec::default();
        let mut env = BTreeMap::new();
        env.insert("X".to_string(), "$(rm -rf /)`id`'\"\n{{ssm:/other/secret}}".to_string());
        let r = build(b"k", &c, "r/app", D, &env, &rollout()).unwrap();
        for line in r.value.lines() {
            assert!(!line.contains('$') && !line.contains('`') && !line.contains("{{"), "{line}");
        }
        env.insert("BAD=NAME".to_string(), String::new());
        assert_eq!(
            build(b"k", &c, "r/app", D, &env, &rollout()),
            Err(RevisionError::InvalidEnvName("BAD=NAME".into()))
        );
        let mut big = BTreeMap::new();
        big.insert("B".to_string(), "x".repeat(9000));
        assert!(matches!(build(b"k", &c, "r/app", D, &big, &rollout()), Err(RevisionError::TooLarge(_))));
        let mut nul = BTreeMap::new();
        nul.insert("N".to_string(), "before\0after".to_string());
        let refused = build(b"k", &c, "r/app", D, &nul, &rollout()).unwrap_err();
        assert_eq!(refused, RevisionError::InvalidEnvValue("N".into()));
        assert!(!refused.to_string().contains("before"), "the value is not in the message: {refused}");
    }

    #[test]
    fn an_import_is_named_in_the_value_and_the_env_revision() {
        let c = ContainerSpec::default();
        let env = BTreeMap::new();
        let plain = build(b"k", &c, "r/app", D, &env, &rollout()).unwrap();
        let names = vec!["ORG_SLUG".to_string(), "SECRET".to_string()];
        let imp = build_with_import(
            b"k",
            &c,
            "r/app",
            D,
            &env,
            Extras { imported_env_names: Some(&names), ..Default::default() },
            &rollout(),
        )
        .unwrap();
        assert!(imp.value.lines().any(|l| l == "importedenv 1"));
        assert!(!plain.value.contains("importedenv"));
        assert_ne!(plain.env_revision, imp.env_revision);
        assert_ne!(plain.id, imp.id);
        let fewer = vec!["ORG_SLUG".to_string()];
        let other = build_with_import(
            b"k",
            &c,
            "r/app",
            D,
            &env,
            Extras { imported_env_names: Some(&fewer), ..Default::default() },
            &rollout(),
        )
        .unwrap();
        assert_ne!(other.env_revision, imp.env_revision);
        let login = RegistryLogin { host: "r:5000".into(), username: "u".into(), password: "pa$$-w0rd".into() };
        let with_login = build_with_import(
            b"k",
            &c,
            "r:5000/app",
            D,
            &env,
            Extras { registry_login: Some(&login), ..Default::default() },
            &rollout(),
        )
        .unwrap();
        assert!(!with_login.value.contains("pa$$-w0rd") && !format!("{login:?}").contains("pa$$"));
        assert_eq!(with_login.env_revision, plain.env_revision, "a login is no env change");
        assert_eq!(registry_host("r:5000/app"), "r:5000");
        assert_eq!(registry_host("library/app"), "docker.io");
        let bad = vec!["A=B".to_string()];
        assert!(
            build_with_import(
                b"k",
                &c,
                "r/app",
                D,
                &env,
                Extras { imported_env_names: Some(&bad), ..Default::default() },
                &rollout()
            )
            .is_err()
        );
    }
}
