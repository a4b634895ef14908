//! Everything a tenant controls, generated: env keys and values, slugs and the host's org file,
//! through the real revision encoding (`revision::build`) and the real host agent's functions under
//! real bash (`agent-harness.sh` runs `read_org`, `fetch_revision`, `load_revision` and
//! `start_slot` as they are in `host-agent.sh`, with `aws` and `docker` recording what they were
//! asked). Judged by definitions of our own, not the implementation's:
//! - the container gets exactly the env the tenant declared, byte for byte, as the docker CLI reads
//!   an `--env-file` and its own environment; or the revision is refused before it reaches a host
//!   (an env name that is not a POSIX name, a value no environment can hold); or the host refuses
//!   to start it, only for a multi-line value under a name that is not an ordinary one;
//! - a host reads parameters only under the org its org file names, and only when that file holds
//!   one DNS label (and at most a newline after it);
//! - nothing executes: a marker file that any injection would create never appears.
//!
//! `AGENT_PROPS_CASES` (default 10,000) and `AGENT_PROPS_SEED` (printed; pass it back to replay).

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tenant_operator::crd::ContainerSpec;
use tenant_operator::host::document::AGENT_SCRIPT;
use tenant_operator::host::revision::{self, RevisionError, Rollout};

const PARAM_ROOT: &str = "/tenant-operator";
const IMAGE: &str = "registry.example:5000/platform-tenant";
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const SHARDS: usize = 2;
/// Names an app may well use for a multi-line value (a PEM, a config): the host must pass these.
const ORDINARY: [&str; 6] = ["APP_CONFIG", "DATABASE_URL", "GREETING", "motd", "PEM_BUNDLE", "TLS_CERT"];
/// Names that mean something to bash, the agent, the docker CLI or the dynamic loader.
const LOADED: [&str; 24] = [
    "PATH",
    "LD_PRELOAD",
    "IFS",
    "BASH_ENV",
    "ENV",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "HOME",
    "_",
    "UID",
    "SHELLOPTS",
    "PS4",
    "TMPDIR",
    "BASHOPTS",
    "LC_ALL",
    "ORG",
    "ROOT",
    "WORK",
    "STATE",
    "R_IMAGE",
    "RUN_ARGS",
    "key",
    "value",
    "args",
];

/// One generated case: what the tenant declares and what the host's org file holds.
#[derive(Clone, Debug)]
struct Case {
    env: BTreeMap<String, String>,
    slug: String,
    org_file: Vec<u8>,
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => "[A-Za-z_][A-Za-z0-9_]{0,15}",
        3 => proptest::sample::select(&LOADED[..]).prop_map(str::to_string),
        3 => proptest::sample::select(&ORDINARY[..]).prop_map(str::to_string),
        1 => "\\PC{0,12}",
        1 => "[ -~]{0,12}",
    ]
}

fn value(marker: String) -> impl Strategy<Value = String> {
    let m = marker;
    let injections = vec![
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("'; touch {m}; '"),
        format!("\"; touch {m}; \""),
        format!("x\ntouch {m}\n"),
        format!("${{IFS}}touch${{IFS}}{m}"),
        format!("a=b\nLD_PRELOAD={m}"),
        format!("\r\n$(touch {m})\r"),
        format!("{{{{ssm:/tenant-operator/x}}}}$(touch {m})"),
        "%s%n%x\\\\\\".to_string(),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_string(),
        " leading and trailing ".to_string(),
        "#not a comment".to_string(),
        "=".to_string(),
        String::new(),
    ];
    prop_oneof![
        4 => "\\PC{0,40}",
        3 => "[\\x00-\\x7f]{0,40}",
        1 => "[\\x00-\\x20\\x7f\\u{85}\\u{2028}\\u{feff}]{0,8}",
        3 => proptest::sample::select(injections),
    ]
}

fn org_file(slug: String) -> impl Strategy<Value = Vec<u8>> {
    let s = slug.clone();
    prop_oneof![
        6 => Just(format!("{slug}\n").into_bytes()),
        2 => Just(s.into_bytes()),
        1 => "[a-z0-9]{1,10}\n".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..70),
        1 => "[a-z0-9\\-\\n\\x00. /]{0,66}".prop_map(String::into_bytes),
    ]
}

fn case(marker: String) -> impl Strategy<Value = Case> {
    let slug = prop_oneof![
        8 => "[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?",
        1 => "[a-z0-9]{63,64}",
        1 => "[ -~]{0,20}",
    ];
    (proptest::collection::btree_map(key(), value(marker), 0..6), slug).prop_flat_map(|(env, slug)| {
        org_file(slug.clone()).prop_map(move |org| Case { env: env.clone(), slug: slug.clone(), org_file: org })
    })
}

/// A POSIX environment variable name (our definition, not the operator's).
fn posix_name(k: &str) -> bool {
    let mut c = k.chars();
    matches!(c.next(), Some(f) if f == '_' || f.is_ascii_alphabetic())
        && c.all(|x| x == '_' || x.is_ascii_alphanumeric())
}

/// The org an org file names: one RFC 1123 DNS label, optionally followed by one newline.
fn org_of(file: &[u8]) -> Option<String> {
    let label = file.strip_suffix(b"\n").unwrap_or(file);
    let ok = !label.is_empty()
        && label.len() <= 63
        && label.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && label[0] != b'-'
        && label[label.len() - 1] != b'-';
    ok.then(|| String::from_utf8_lossy(label).into_owned())
}

/// The docker CLI's `--env-file` rules: KEY=VALUE a line, read verbatim to the end of the line (a
/// CR before the LF dropped); blank lines and `#` comments skipped; a UTF-8 BOM at the start dropped.
fn docker_env_file(data: &[u8]) -> Result<Vec<(String, String)>, String> {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    let mut out = Vec::new();
    for raw in data.split(|b| *b == b'\n') {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|_| format!("invalid utf8 in env file: {raw:?}"))?;
        let line = line.trim_start_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| format!("env file line without '=': {line:?}"))?;
        if k.chars().any(char::is_whitespace) || k.is_empty() {
            return Err(format!("bad variable in env file: {k:?}"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn nul_split(data: &[u8]) -> Vec<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = data.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
    if parts.last().is_some_and(Vec::is_empty) {
        parts.pop();
    }
    parts
}

/// The env a container started with these recorded arguments gets: the env file's lines, then each
/// `-e KEY` from the CLI's own environment.
fn container_env(dir: &Path) -> Result<BTreeMap<String, String>, String> {
    let args: Vec<String> = nul_split(&std::fs::read(dir.join("docker-args")).unwrap())
        .into_iter()
        .map(|a| String::from_utf8(a).unwrap())
        .collect();
    let cli_env: BTreeMap<Vec<u8>, Vec<u8>> = nul_split(&std::fs::read(dir.join("docker-env")).unwrap())
        .into_iter()
        .filter_map(|kv| {
            let eq = kv.iter().position(|b| *b == b'=')?;
            Some((kv[..eq].to_vec(), kv[eq + 1..].to_vec()))
        })
        .collect();
    if args.last().map(String::as_str) != Some(&format!("{IMAGE}@{DIGEST}")) {
        return Err(format!("docker run of {:?}", args.last()));
    }
    let mut env = BTreeMap::new();
    let mut i = 1;
    while i < args.len() - 1 {
        match args[i].as_str() {
            "-d" => i += 1,
            "--env-file" => {
                for (k, v) in docker_env_file(&std::fs::read(dir.join("docker-envfile")).unwrap())? {
                    env.insert(k, v);
                }
                i += 2;
            }
            "-e" => {
                let k = &args[i + 1];
                if k.contains('=') {
                    return Err(format!("a value in docker's argv: {k:?}"));
                }
                if let Some(v) = cli_env.get(k.as_bytes()) {
                    env.insert(k.clone(), String::from_utf8(v.clone()).map_err(|e| e.to_string())?);
                }
                i += 2;
            }
            _ => i += 2,
        }
    }
    Ok(env)
}

/// The agent's functions and patterns, as they are in its text: a function is `name() {` at the
/// start of a line up to the first line that is `}`, or the one line `name() { ...; }`.
fn agent_lib(names: &[&str]) -> String {
    let lines: Vec<&str> = AGENT_SCRIPT.lines().collect();
    let mut out: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            l.split_once('=')
                .is_some_and(|(n, _)| n.ends_with("_RE") && n.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        })
        .collect();
    assert!(out.len() >= 5, "host-agent.sh: no *_RE patterns found");
    for name in names {
        let head = format!("{name}() {{");
        let start =
            lines.iter().position(|l| l.starts_with(&head)).unwrap_or_else(|| panic!("host-agent.sh has no {head}"));
        if lines[start].trim_end() != head {
            assert!(lines[start].trim_end().ends_with('}'), "{name}: {}", lines[start]);
            out.push(lines[start]);
        } else {
            let len = lines[start..].iter().position(|l| *l == "}").unwrap_or_else(|| panic!("{name} never ends"));
            out.extend(&lines[start..=start + len]);
        }
    }
    out.join("\n") + "\n"
}

fn seed() -> u64 {
    std::env::var("AGENT_PROPS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    })
}

fn rollout() -> Rollout {
    Rollout {
        strategy: tenant_operator::crd::Strategy::BlueGreen,
        health_timeout_secs: 30,
        health_path: "/health".into(),
        keep_warm_secs: 600,
        smoke_checks: Vec::new(),
    }
}

#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    refused_names: usize,
    refused_values: usize,
    delivered: usize,
    host_refused_multiline: usize,
    no_org: usize,
    other_org: usize,
    env_values: usize,
}

#[test]
fn generated_env_sets_keys_and_slugs_arrive_byte_for_byte_or_are_refused_and_nothing_executes() {
    let n: usize = std::env::var("AGENT_PROPS_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let seed = seed();
    eprintln!("agent properties: {n} cases, AGENT_PROPS_SEED={seed}");
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("injected");
    let lib = tmp.path().join("lib.sh");
    let names = [
        "log",
        "read_org",
        "b64d",
        "fetch_revision",
        "load_revision",
        "adopted_id",
        "imported_env_lines",
        "slot_port",
        "slot_container",
        "multiline_unsafe",
        "start_slot",
    ];
    std::fs::write(&lib, agent_lib(&names)).unwrap();

    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let strategy = case(marker.display().to_string());
    let key = b"agent-properties-key";
    let mut tally = Tally::default();
    let mut hosts: Vec<(PathBuf, Case, revision::DesiredRevision)> = Vec::new();
    for i in 0..n {
        let c = strategy.new_tree(&mut runner).unwrap().current();
        tally.cases += 1;
        tally.env_values += c.env.len();
        match revision::build(key, &ContainerSpec::default(), IMAGE, DIGEST, &c.env, &rollout()) {
            Err(RevisionError::InvalidEnvName(k)) => {
                assert!(!posix_name(&k) && c.env.contains_key(&k), "refused {k:?}, a POSIX name: {c:?}");
                tally.refused_names += 1;
            }
            Err(RevisionError::InvalidEnvValue(k)) => {
                assert!(c.env.get(&k).is_some_and(|v| v.contains('\0')), "refused {k:?}'s value: {c:?}");
                tally.refused_values += 1;
            }
            Err(e) => panic!("case {i} refused for {e}: {c:?}"),
            Ok(rev) => {
                assert!(c.env.keys().all(|k| posix_name(k)), "case {i}: a revision with a bad name: {c:?}");
                assert!(c.env.values().all(|v| !v.contains('\0')), "case {i}: a revision with a NUL byte: {c:?}");
                let dir = tmp.path().join(format!("shard{}", i % SHARDS)).join(format!("{i:06}"));
                // The host's file system: its org file, the agent's state and work directories.
                let host = dir.join("host");
                for d in ["etc/tenant-operator", "var/lib/tenant-operator", "work"] {
                    std::fs::create_dir_all(host.join(d)).unwrap();
                }
                std::fs::write(host.join("etc/tenant-operator/org"), &c.org_file).unwrap();
                std::fs::write(dir.join("param"), revision::parameter_name(PARAM_ROOT, &c.slug)).unwrap();
                std::fs::write(dir.join("value"), &rev.value).unwrap();
                std::fs::write(dir.join("digest"), DIGEST).unwrap();
                hosts.push((dir, c, rev));
            }
        }
    }

    // The hosts, in shards run side by side.
    let harness = testbed::stack::repo_root().join("tests/e2e/agent-harness.sh");
    let shells: Vec<std::process::Child> = (0..SHARDS)
        .map(|s| {
            let shard = tmp.path().join(format!("shard{s}"));
            std::fs::create_dir_all(&shard).unwrap();
            std::process::Command::new("bash").arg(&harness).arg(&lib).arg(&shard).spawn().expect("bash")
        })
        .collect();
    for mut sh in shells {
        assert!(sh.wait().unwrap().success(), "the harness failed");
    }

    for (dir, c, rev) in &hosts {
        let read = |f: &str| std::fs::read(dir.join(f)).ok();
        let outcome = String::from_utf8(read("outcome").unwrap_or_default()).unwrap();
        let org = org_of(&c.org_file);
        assert_eq!(
            String::from_utf8_lossy(&read("read-org").unwrap()),
            org.clone().unwrap_or_default(),
            "the org read from {:?}",
            String::from_utf8_lossy(&c.org_file)
        );
        let Some(org) = org else {
            assert!(read("aws-name").is_none(), "a host with no org asked for a parameter: {c:?}");
            assert_eq!(outcome.trim(), "fetch-failed");
            tally.no_org += 1;
            continue;
        };
        let asked = String::from_utf8(read("aws-name").expect("a host with an org asked for nothing")).unwrap();
        assert_eq!(asked, format!("{PARAM_ROOT}/{org}/revision"), "{c:?}");
        if org != c.slug {
            assert_eq!(outcome.trim(), "fetch-failed", "{c:?}");
            assert!(read("docker-args").is_none());
            tally.other_org += 1;
            continue;
        }
        let multiline: Vec<&String> = c.env.iter().filter(|(_, v)| v.contains(['\n', '\r'])).map(|(k, _)| k).collect();
        if outcome.trim() == "start 0" {
            let got = container_env(dir).unwrap_or_else(|e| panic!("{}: {e}: {c:?}", dir.display()));
            assert_eq!(got, c.env, "{}: the container's env differs from the tenant's", dir.display());
            let applied = String::from_utf8(read("applied").unwrap_or_default()).unwrap();
            assert_eq!(applied, rev.id, "the host names the revision it applies as the operator does");
            tally.delivered += 1;
        } else {
            assert!(outcome.starts_with("start "), "{}: {outcome}: {c:?}", dir.display());
            assert!(read("docker-args").is_none(), "a refused start still ran docker: {c:?}");
            assert!(
                multiline.iter().any(|k| !ORDINARY.contains(&k.as_str())),
                "{}: the host refused an env with no multi-line value under an unusual name: {c:?}",
                dir.display()
            );
            tally.host_refused_multiline += 1;
        }
    }
    assert!(!marker.exists(), "an injection ran: {} exists", marker.display());
    // The generator reached every branch (else the properties above proved little).
    assert!(tally.refused_names > 0 && tally.delivered > n / 4 && tally.no_org > 0 && tally.other_org > 0, "{tally:?}");
    assert!(tally.host_refused_multiline > 0 && tally.refused_values > 0, "{tally:?}");
    eprintln!("agent properties: {tally:?} in {:.1} s (seed {seed})", started.elapsed().as_secs_f64());
}
