//! Hostile input: env values that would execute or resolve if anything on the way parsed them, slugs
//! that are not DNS labels, two Tenants claiming one instance, and secret values that must never
//! appear in commands, events or host logs.

use crate::apply::{channel_at, container_env, secret, tenant_json};
use crate::harness::{Bed, cond};
use futures::StreamExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tenant_operator::crd::Tenant;
use testbed::demo::launch_managed;
use testbed::stack::{HostState, venv_bin};

pub fn converged(t: &Tenant) -> bool {
    cond(t, "Ready").is_some_and(|c| c.0 == "True" && c.1 == "Converged")
}

/// A token unique to this test run, so marker files of parallel runs never collide.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{tag}{}x{}", std::process::id(), nanos % 1_000_000_000)
}

/// The real `aws` CLI aimed at the bed (SSM through the simulator, which forwards to moto).
pub fn aws_cli(bed: &Bed, args: &[&str]) -> Value {
    let out = std::process::Command::new(venv_bin("aws"))
        .envs(bed.stack.aws_env())
        .env("AWS_PAGER", "")
        .args(args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Parameter names under a path (recursive), as Parameter Store reports them.
pub fn parameters_under(bed: &Bed, path: &str) -> Vec<String> {
    let v = aws_cli(bed, &["ssm", "get-parameters-by-path", "--path", path, "--recursive"]);
    v["Parameters"].as_array().unwrap().iter().map(|p| p["Name"].as_str().unwrap().to_string()).collect()
}

/// Runs the host's own `docker` (the simulator's shim) as an admin on that host would.
pub fn host_docker(bed: &Bed, instance: &str, args: &[&str]) -> std::process::Output {
    let sandbox = bed.stack.host_dir(instance);
    let bin = bed.stack.workdir.join("bin");
    let out = std::process::Command::new(bin.join("docker"))
        .env_clear()
        .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()))
        .env("HOME", sandbox.join("root"))
        .env("LANG", "C.UTF-8")
        .env("TENANT_HOST_ROOT", &sandbox)
        .env("TENANT_HOST_ADDR", bed.stack.host_addr(instance))
        .current_dir(&sandbox)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker {args:?} on {instance}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every state of every Tenant in the namespace, as a watch delivers them (each write is seen,
/// unlike polling, which can miss a short-lived `inFlight`).
/// The watch stops with the log (not only with the runtime: a failed test's bed goes first).
pub struct TenantLog(Arc<Mutex<Vec<Tenant>>>, tokio::task::AbortHandle);

impl Drop for TenantLog {
    fn drop(&mut self) {
        self.1.abort();
    }
}

impl TenantLog {
    pub fn start(bed: &Bed) -> TenantLog {
        let seen_all = Arc::new(Mutex::new(Vec::new()));
        let api: Api<Tenant> = Api::namespaced(bed.client.clone(), &bed.ns);
        let seen = seen_all.clone();
        let task = tokio::spawn(async move {
            use kube::runtime::WatchStreamExt;
            let mut stream =
                kube::runtime::watcher(api, kube::runtime::watcher::Config::default()).default_backoff().boxed();
            while let Some(ev) = stream.next().await {
                if let Ok(kube::runtime::watcher::Event::Apply(t) | kube::runtime::watcher::Event::InitApply(t)) = ev {
                    seen.lock().unwrap().push(t);
                }
            }
        });
        TenantLog(seen_all, task.abort_handle())
    }

    pub fn of(&self, name: &str) -> Vec<Tenant> {
        self.0.lock().unwrap().iter().filter(|t| t.metadata.name.as_deref() == Some(name)).cloned().collect()
    }

    /// Every intent token the tenant ever wrote.
    pub fn tokens(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .of(name)
            .iter()
            .filter_map(|t| t.status.as_ref()?.in_flight.as_ref().map(|f| f.intent_token.clone()))
            .collect();
        out.dedup();
        out
    }

    /// Every (type, status, reason) the tenant's conditions ever showed.
    pub fn conditions(&self, name: &str) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for t in self.of(name) {
            for c in t.status.iter().flat_map(|s| s.conditions.iter()) {
                let row = (c.type_.clone(), c.status.clone(), c.reason.clone());
                if !out.contains(&row) {
                    out.push(row);
                }
            }
        }
        out
    }
}

/// The token of a command's comment (`tenant-operator intent=<token>`, `... observe=<token>`).
pub fn comment_token(record: &Value) -> String {
    record["comment"].as_str().unwrap_or_default().rsplit('=').next().unwrap_or_default().to_string()
}

/// The command's action parameter.
pub fn action_of(record: &Value) -> String {
    let a = &record["parameters"]["action"];
    a.get(0).unwrap_or(a).as_str().unwrap_or_default().to_string()
}

pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            files_under(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_env_values_arrive_byte_for_byte_and_nothing_executes_or_resolves() {
    let bed = Bed::start().await.unwrap();
    let digest = bed.stack.push_image("platform-tenant", "staging", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "staging", &digest).await;
    // A parameter the command's sender could read: if a value ever travelled in a command
    // parameter, SSM (the simulator does the same) would substitute it.
    let resolved = unique("resolved-other-secret-");
    aws_cli(
        &bed,
        &["ssm", "put-parameter", "--name", "/tenant-operator/other/secret", "--type", "String", "--value", &resolved],
    );

    let mark = unique("pwned-");
    let m = |n: &str| format!("/tmp/{mark}-{n}");
    let long_key = format!("K{}", "_9".repeat(63) + "Z"); // 128 characters, the longest name allowed
    assert_eq!(long_key.len(), 128);
    let hostile: Vec<(String, String)> = vec![
        ("SUBST".into(), format!("$(touch {})", m("subst"))),
        ("BACKTICK".into(), format!("`touch {}`", m("backtick"))),
        ("QUOTES".into(), format!("it's \"quoted\" '$(touch {})' \"$(touch {})\"", m("sq"), m("dq"))),
        ("NEWLINE_MID".into(), format!("line one\nline two; touch {}\nKEY=injected", m("nl"))),
        ("NEWLINE_END".into(), "ends with a newline\n".into()),
        ("NEWLINES_ONLY".into(), "\n\n".into()),
        ("BACKSLASH_END".into(), "trailing backslash\\".into()),
        ("SSM_REF".into(), "{{ssm:/tenant-operator/other/secret}}".into()),
        ("SSM_REF_SPACED".into(), "{{ ssm:/tenant-operator/other/secret }}".into()),
        ("UNICODE".into(), "ünïcødé — 日本語 🚀 \u{200b}zero-width".into()),
        ("EQUALS".into(), "a=b==c".into()),
        ("EMPTY".into(), String::new()),
        ("SPACES".into(), "  leading and trailing\t ".into()),
        ("HASH".into(), "# not a comment".into()),
        ("DASHES".into(), "-e OTHER=1 --privileged".into()),
        ("PRINTF".into(), "%s%n%x\\n\\0".into()),
        ("REL_SUBST".into(), format!("$(touch {mark}-relative)")),
        ("_".into(), "underscore only".into()),
        ("_9".into(), "underscore digit".into()),
        ("lower_Mixed9".into(), "mixed case".into()),
        (long_key.clone(), "the longest key".into()),
        // Names that mean something to the host's shell or to the docker CLI: they must reach the
        // container and change nothing on the host.
        ("PATH".into(), "/nonexistent".into()),
        ("HOME".into(), "/nowhere".into()),
        ("DOCKER_HOST".into(), "tcp://203.0.113.1:2375".into()),
        ("TENANT_HOST_ROOT".into(), "/elsewhere".into()),
        ("LD_LIBRARY_PATH".into(), "/nonexistent/lib".into()),
        ("UID".into(), "0".into()),
        ("IFS".into(), "x".into()),
        ("SHELLOPTS".into(), "xtrace".into()),
        ("BASH_ENV".into(), format!("/tmp/{mark}-bash-env")),
        ("RANDOM".into(), "4".into()),
        ("MULTI_DOLLAR".into(), format!("a\n$(touch {})\n`touch {}`", m("ml1"), m("ml2"))),
    ];
    let secret_values: Vec<(String, String)> = hostile
        .iter()
        .map(|(k, v)| {
            // Keys keep their edge: the 128-character one stays 128 characters.
            let key = if k.len() == 128 { format!("S{}", &k[1..]) } else { format!("S_{}", k.trim_start_matches('_')) };
            (key, v.clone())
        })
        .collect();
    let secret_refs: Vec<(&str, &str)> = secret_values.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    secret(&bed, "hostile-env", &secret_refs).await;

    let id = launch_managed(&bed.stack, "hostile", &[], HostState::Fresh).await.unwrap();
    // A value with a line break can only reach docker through the CLI's own environment: under a
    // name that would change the CLI it is refused on the host, and nothing starts.
    let id2 = launch_managed(&bed.stack, "hostile-two", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json(
        "hostile-two",
        &id2,
        json!({"container": {"env": [{"name": "TENANT_HOST_ROOT", "value": format!("/tmp/{mark}-root\n")}]}}),
    ))
    .await
    .unwrap();
    let env: Vec<Value> = hostile.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    bed.create::<Tenant>(tenant_json(
        "hostile",
        &id,
        json!({"container": {"env": env, "envFrom": [{"secretRef": {"name": "hostile-env"}}]}}),
    ))
    .await
    .unwrap();
    bed.wait_tenant("hostile", Duration::from_secs(90), "Ready=True Converged", converged).await.unwrap();

    let t2 = bed
        .wait_tenant("hostile-two", Duration::from_secs(60), "the refused apply", |t| {
            cond(t, "Ready").is_some_and(|c| c.1 == "ApplyFailed")
        })
        .await
        .unwrap();
    let h = &t2.status.as_ref().unwrap().history[0];
    assert_eq!(h.message.as_deref(), Some("start-failed"), "{h:?}");
    assert!(container_env(&bed, &id2, "blue").is_none(), "a container started on hostile-two");

    // Byte for byte in the running process.
    let got = container_env(&bed, &id, "blue").expect("container env");
    for (k, v) in hostile.iter().chain(secret_values.iter()) {
        assert_eq!(
            got.get(k).map(|b| String::from_utf8_lossy(b).into_owned()),
            Some(v.clone()),
            "env {k} did not arrive byte for byte"
        );
    }
    // Nothing injected as a variable of its own.
    assert!(!got.contains_key("OTHER") && !got.contains_key("KEY"), "a value became a variable");
    // The reference arrived as text, never resolved.
    for (k, v) in &got {
        assert!(!contains(v, resolved.as_bytes()), "{k} was resolved from Parameter Store");
    }

    // Nothing executed: no marker anywhere (the real /tmp, the whole test bed, the host sandbox),
    // once the agent has run on the host once more after the apply (an observe).
    let finished = |t: &Value| {
        t.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["instance_id"].as_str() == Some(id.as_str()) && !r["end"].is_null())
            .count()
    };
    let ran = finished(&bed.stack.timeline().await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while finished(&bed.stack.timeline().await.unwrap()) <= ran {
        assert!(tokio::time::Instant::now() < deadline, "the host was not observed again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tmp_hits: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&mark))
        .map(|e| e.path())
        .collect();
    assert!(tmp_hits.is_empty(), "a value executed: {tmp_hits:?}");
    let mut files = Vec::new();
    files_under(&bed.stack.workdir, &mut files);
    let bed_hits: Vec<_> = files.iter().filter(|p| p.to_string_lossy().contains(&mark)).collect();
    assert!(bed_hits.is_empty(), "a value executed in the bed: {bed_hits:?}");
    assert!(bed.stack.host_dir(&id).join("var/lib/docker-sim").is_dir(), "the host sandbox is where we think");

    // The commands carried only `action` and `digest`, with safe values.
    let timeline = bed.stack.timeline().await.unwrap();
    let records = timeline.as_array().unwrap();
    assert!(records.iter().any(|r| action_of(r) == "apply"));
    for r in records {
        let params = r["parameters"].as_object().unwrap();
        for (name, value) in params {
            assert!(name == "action" || name == "digest", "unexpected parameter {name}: {r}");
            let values: Vec<&str> = match value {
                Value::Array(a) => a.iter().map(|x| x.as_str().unwrap()).collect(),
                Value::String(s) => vec![s.as_str()],
                other => panic!("parameter {name} is {other}"),
            };
            for v in values {
                let ok = if name == "action" {
                    ["observe", "apply", "switch", "prune"].contains(&v)
                } else {
                    v.is_empty()
                        || v.strip_prefix("sha256:").is_some_and(|h| {
                            h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                        })
                };
                assert!(ok, "parameter {name}={v:?} is not a safe value");
            }
        }
        assert!(!r.to_string().contains(&mark) && !r.to_string().contains("ssm:"), "a value in a command: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slug_that_is_not_a_dns_label_is_refused_by_the_api_server() {
    let bed = Bed::start_without_controllers().await.unwrap();
    for slug in ["a;rm -rf /", "$(id)", "UPPER", "-lead", "a/../b", "a\nb", ""] {
        let mut t = tenant_json("evil", "i-0123456789abcdef0", json!({}));
        t["spec"]["slug"] = json!(slug);
        match bed.create::<Tenant>(t).await {
            Ok(_) => panic!("slug {slug:?} was accepted"),
            Err(e) => match e.downcast_ref::<kube::Error>() {
                Some(kube::Error::Api(s)) => assert_eq!(s.code, 422, "slug {slug:?}: {s:?}"),
                other => panic!("slug {slug:?}: unexpected error {other:?} ({e})"),
            },
        }
    }
    let tenants: Api<Tenant> = Api::namespaced(bed.client.clone(), &bed.ns);
    assert!(tenants.list(&ListParams::default()).await.unwrap().items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newer_of_two_tenants_claiming_one_instance_is_stalled_and_never_sends() {
    let bed = Bed::start().await.unwrap();
    let log = TenantLog::start(&bed);
    let digest = bed.stack.push_image("platform-tenant", "staging", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "staging", &digest).await;
    let id = launch_managed(&bed.stack, "claim", &[], HostState::Fresh).await.unwrap();
    // "older" sorts after "newer": only creation order may decide.
    let mut older = tenant_json("older", &id, json!({}));
    older["spec"]["slug"] = json!("claim");
    bed.create::<Tenant>(older).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut newer = tenant_json("newer", &id, json!({"container": {"env": [{"name": "WHO", "value": "newer"}]}}));
    newer["spec"]["slug"] = json!("claim");
    bed.create::<Tenant>(newer).await.unwrap();

    let t = bed
        .wait_tenant("newer", Duration::from_secs(60), "Stalled=True InstanceClaimed", |t| {
            cond(t, "Stalled") == Some(("True".into(), "InstanceClaimed".into()))
        })
        .await
        .unwrap();
    assert_eq!(cond(&t, "Ready"), Some(("False".into(), "InstanceClaimed".into())));
    let msg = t.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Stalled").unwrap().message.clone();
    assert!(msg.contains("older"), "{msg}");
    bed.wait_tenant("older", Duration::from_secs(90), "Ready=True Converged", converged).await.unwrap();
    // A few observe cycles more, with both reconciling.
    bed.reconciled_again("tenant", bed.reconciles("tenant"), 6).await;
    let t = bed.tenants().get("newer").await.unwrap();
    assert_eq!(cond(&t, "Stalled"), Some(("True".into(), "InstanceClaimed".into())));
    let st = t.status.clone().unwrap_or_default();
    assert!(st.in_flight.is_none() && st.observed.is_none() && st.history.is_empty(), "{st:?}");

    assert!(log.tokens("newer").is_empty(), "the newer tenant wrote an intent: {:?}", log.tokens("newer"));
    for t in log.of("newer") {
        let st = t.status.unwrap_or_default();
        assert!(st.observed.is_none() && st.history.is_empty() && st.instance_id.is_none(), "{st:?}");
    }
    let older_tokens = log.tokens("older");
    let timeline = bed.stack.timeline().await.unwrap();
    let records = timeline.as_array().unwrap();
    let applies: Vec<_> = records.iter().filter(|r| action_of(r) == "apply").collect();
    assert_eq!(applies.len(), 1, "{timeline}");
    for r in applies {
        // Each apply carries the intent the older tenant wrote before sending it.
        assert!(older_tokens.contains(&comment_token(r)), "an apply not from the older tenant: {r}");
    }
    let env = container_env(&bed, &id, "blue").expect("container env");
    assert!(!env.contains_key("WHO"), "the newer tenant's env reached the host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_value_in_commands_events_or_host_logs() {
    let bed = Bed::start().await.unwrap();
    let v1 = bed.stack.push_image("platform-tenant", "v1", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "staging", &v1).await;
    let s1 = unique("sv-one-");
    let s2 = unique("sv-two-");
    let plain = unique("plain-but-private-");
    secret(&bed, "lima-env", &[("MOLECULE_CP_SHARED_SECRET", &s1)]).await;
    let id = launch_managed(&bed.stack, "lima", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json(
        "lima",
        &id,
        json!({"container": {"env": [{"name": "PLAIN_PRIVATE", "value": plain}],
                             "envFrom": [{"secretRef": {"name": "lima-env"}}]}}),
    ))
    .await
    .unwrap();
    bed.wait_tenant("lima", Duration::from_secs(90), "Ready=True Converged", converged).await.unwrap();
    // A rotation (a second revision) and a failing revision (a rollback writes more logs).
    secret(&bed, "lima-env", &[("MOLECULE_CP_SHARED_SECRET", &s2)]).await;
    bed.wait_tenant("lima", Duration::from_secs(90), "the rotated secret converged", |t| {
        converged(t)
            && container_env(&bed, &id, "blue")
                .is_some_and(|e| e.get("MOLECULE_CP_SHARED_SECRET").map(Vec::as_slice) == Some(s2.as_bytes()))
    })
    .await
    .unwrap();
    let bad = bed
        .stack
        .push_image("platform-tenant", "v2", &[("sim.health", "healthy"), ("sim.requires-env", "NOT_THERE")], false)
        .await
        .unwrap();
    let policy: tenant_operator::crd::RolloutPolicy = serde_json::from_value(json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": "fast", "namespace": bed.ns},
        "spec": {"strategy": "InPlace", "healthCheck": {"timeout": "3s"}, "canary": {"minCanaries": 0, "soak": "0s"}}
    }))
    .unwrap();
    Api::<tenant_operator::crd::RolloutPolicy>::namespaced(bed.client.clone(), &bed.ns)
        .create(&Default::default(), &policy)
        .await
        .unwrap();
    bed.tenants()
        .patch(
            "lima",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"rolloutPolicy": "fast"}})),
        )
        .await
        .unwrap();
    channel_at(&bed, "staging", &bad).await;
    // The failed apply is in the history (the coordinator then sends the tenant back).
    bed.wait_tenant("lima", Duration::from_secs(90), "a rollback", |t| {
        t.status.as_ref().is_some_and(|s| s.history.iter().any(|h| h.result != "Succeeded"))
    })
    .await
    .unwrap();

    let needles: Vec<String> =
        [&s1, &s2, &plain].iter().flat_map(|s| [s.to_string(), b64(s), b64(&format!("{s}\n"))]).collect();
    let find = |what: &str, hay: &[u8]| {
        for n in &needles {
            assert!(!contains(hay, n.as_bytes()), "{n:?} found in {what}");
        }
    };

    // Events, both APIs, every namespace.
    let ev1: Api<k8s_openapi::api::events::v1::Event> = Api::all(bed.client.clone());
    let ev1 = ev1.list(&ListParams::default()).await.unwrap();
    assert!(!ev1.items.is_empty(), "no events recorded at all: the scan would prove nothing");
    find("events.k8s.io/v1 events", serde_json::to_string(&ev1.items).unwrap().as_bytes());
    let ev0: Api<k8s_openapi::api::core::v1::Event> = Api::all(bed.client.clone());
    if let Ok(list) = ev0.list(&ListParams::default()).await {
        find("core/v1 events", serde_json::to_string(&list.items).unwrap().as_bytes());
    }
    // Status and command text.
    let t = bed.tenants().get("lima").await.unwrap();
    find("tenant status", serde_json::to_string(&t.status).unwrap().as_bytes());
    find("the command timeline", bed.stack.timeline().await.unwrap().to_string().as_bytes());
    // Command output as SSM keeps it.
    let inv = aws_cli(&bed, &["ssm", "list-command-invocations", "--details", "--instance-id", &id]);
    assert!(!inv["CommandInvocations"].as_array().unwrap().is_empty());
    find("command invocations", inv.to_string().as_bytes());
    // Every file of the bed: simulator, moto and registry logs, the host's agent log, docker-sim's
    // commands.log and container logs, scripts SSM rendered. Only the container's own config (its Env,
    // as docker keeps it) may hold the values.
    let mut files = Vec::new();
    files_under(&bed.stack.workdir, &mut files);
    let mut scanned = 0;
    let mut logs = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&bed.stack.workdir).unwrap().to_string_lossy().into_owned();
        if rel.contains("var/lib/docker-sim/containers/") && rel.ends_with("/config.json") {
            continue;
        }
        let Ok(bytes) = std::fs::read(f) else { continue };
        find(&rel, &bytes);
        scanned += 1;
        if rel.ends_with(".log") {
            logs.insert(rel, bytes.len());
        }
    }
    for must in ["fleetsim.log", "var/log/tenant-operator/agent.log", "var/lib/docker-sim/commands.log"] {
        assert!(logs.keys().any(|k| k.ends_with(must)), "{must} was not scanned: {logs:?}");
    }
    // The host kept no revision file (mode-0600, removed after `docker run`).
    let state = bed.stack.host_dir(&id).join("var/lib/tenant-operator");
    let mut left = Vec::new();
    files_under(&state, &mut left);
    assert!(
        left.iter().all(|p| !p.to_string_lossy().contains("rev.") && !p.ends_with("desired")),
        "revision files left on the host: {left:?}"
    );
    assert!(scanned > 5, "scanned only {scanned} files");
}
