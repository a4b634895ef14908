//! The ImageChannel controller against the real OCI registry of the test bed: tags resolve to the
//! manifest (or index) digest, a moved tag moves the channel, a missing tag keeps the last good
//! digest, a pin wins, and a registry off the allowlist is never contacted. Private registries for
//! real: docker-registry with htpasswd auth and with a token realm; credentials go to the registry
//! and its allowed realm only.

use crate::harness::Bed;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tenant_operator::controller::channel;
use tenant_operator::crd::ImageChannel;
use tenant_operator::registry::{OciResolver, RegistrySettings, Resolve, install_crypto_provider};

/// The channel controller running in-process; stopped when dropped.
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// Starts the channel controller with the bed's registry as the only allowed (and plain-HTTP) one.
async fn start_channels(bed: &Bed) -> Running {
    let registry = bed.stack.registry.clone();
    start_channels_with(bed, RegistrySettings::new(vec![registry.clone()], vec![registry], vec![])).await
}

/// Starts the channel controller with these registry settings (the chart's `registry.*` values).
async fn start_channels_with(bed: &Bed, settings: RegistrySettings) -> Running {
    install_crypto_provider();
    let aws = testbed::demo::sdk_for(&bed.stack).await;
    let ctx = Arc::new(bed.context(Arc::new(aws), bed.settings(), bed.metrics.clone()));
    let resolver: Arc<dyn Resolve> = Arc::new(OciResolver::new(settings).unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(channel::run(ctx, resolver, async move {
        let _ = rx.await;
    }));
    Running { stop: Some(tx), task }
}

fn channels(bed: &Bed) -> Api<ImageChannel> {
    Api::namespaced(bed.client.clone(), &bed.ns)
}

async fn create_channel(bed: &Bed, name: &str, spec: serde_json::Value) -> ImageChannel {
    bed.create::<ImageChannel>(json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1",
        "kind": "ImageChannel",
        "metadata": {"name": name, "namespace": bed.ns},
        "spec": spec,
    }))
    .await
    .unwrap()
}

fn cond(c: &ImageChannel, type_: &str) -> Option<(String, String)> {
    c.status.as_ref()?.conditions.iter().find(|x| x.type_ == type_).map(|x| (x.status.clone(), x.reason.clone()))
}

fn digest(c: &ImageChannel) -> Option<String> {
    c.status.as_ref()?.digest.clone()
}

async fn wait_channel(bed: &Bed, name: &str, what: &str, pred: impl Fn(&ImageChannel) -> bool) -> ImageChannel {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = channels(bed).get(name).await.unwrap();
        if pred(&c) {
            return c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "channel {name}: timed out waiting for {what}; status: {}",
            serde_json::to_string_pretty(&c.status).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ready(reason: &str) -> Option<(String, String)> {
    Some(("True".into(), reason.into()))
}

fn not_ready(reason: &str) -> Option<(String, String)> {
    Some(("False".into(), reason.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_follows_the_tag() {
    let bed = Bed::start_without_controllers().await.unwrap();
    let reg = bed.stack.registry.clone();
    let single = bed.stack.push_image("chan-single", "latest", &[("sim.version", "1")], false).await.unwrap();
    let index = bed.stack.push_image("chan-multi", "latest", &[("sim.version", "1")], true).await.unwrap();
    let _running = start_channels(&bed).await;

    create_channel(&bed, "single", json!({"image": format!("{reg}/chan-single"), "tag": "latest", "interval": "2s"}))
        .await;
    create_channel(&bed, "multi", json!({"image": format!("{reg}/chan-multi"), "tag": "latest", "interval": "2s"}))
        .await;

    let s = wait_channel(&bed, "single", "the pushed digest", |c| digest(c).as_deref() == Some(single.as_str())).await;
    assert_eq!(cond(&s, "Ready"), ready("Resolved"));
    assert_eq!(cond(&s, "Stalled").map(|c| c.0), Some("False".into()));
    let st = s.status.clone().unwrap();
    assert_eq!(st.short.as_deref(), Some(&single["sha256:".len().."sha256:".len() + 12]));
    assert_eq!(st.history.len(), 1);
    assert!(st.last_resolved_at.is_some());

    // A multi-arch tag: the index digest, never one platform's manifest.
    let m = wait_channel(&bed, "multi", "the index digest", |c| digest(c).as_deref() == Some(index.as_str())).await;
    assert_eq!(cond(&m, "Ready"), ready("Resolved"));

    // The tag moves: the channel follows at its next interval and the history grows.
    let v2 = bed.stack.push_image("chan-single", "v2", &[("sim.version", "2")], false).await.unwrap();
    assert_ne!(v2, single);
    let moved = bed.stack.tag_image("chan-single", "v2", "latest").await.unwrap();
    assert_eq!(moved, v2);
    let s = wait_channel(&bed, "single", "the moved tag", |c| digest(c).as_deref() == Some(v2.as_str())).await;
    let history: Vec<String> = s.status.as_ref().unwrap().history.iter().map(|h| h.digest.clone()).collect();
    assert_eq!(history, vec![v2.clone(), single.clone()]);

    // A tag that does not exist: TagNotFound, and the last good digest stays in force.
    channels(&bed)
        .patch("single", &PatchParams::default(), &Patch::Merge(json!({"spec": {"tag": "no-such-tag"}})))
        .await
        .unwrap();
    let s = wait_channel(&bed, "single", "TagNotFound", |c| cond(c, "Ready") == not_ready("TagNotFound")).await;
    assert_eq!(digest(&s), Some(v2.clone()));
    assert_eq!(cond(&s, "Stalled").map(|c| c.0), Some("False".into()));
    assert_eq!(s.status.as_ref().unwrap().history.len(), 2);

    // A new channel on a missing tag has no digest at all.
    create_channel(&bed, "missing", json!({"image": format!("{reg}/chan-single"), "tag": "nope", "interval": "2s"}))
        .await;
    let c = wait_channel(&bed, "missing", "TagNotFound", |c| cond(c, "Ready") == not_ready("TagNotFound")).await;
    assert_eq!(digest(&c), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_pin_wins_and_the_allowlist_holds() {
    let bed = Bed::start_without_controllers().await.unwrap();
    let reg = bed.stack.registry.clone();
    let latest = bed.stack.push_image("chan-pin", "latest", &[("sim.version", "1")], false).await.unwrap();
    let old = bed.stack.push_image("chan-pin", "old", &[("sim.version", "0")], false).await.unwrap();

    // A "registry" that is not on the allowlist: it counts every connection made to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bogus = listener.local_addr().unwrap();
    let contacted = Arc::new(AtomicUsize::new(0));
    let counter = contacted.clone();
    let accept = tokio::spawn(async move {
        while let Ok((_sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    let _running = start_channels(&bed).await;

    // Pinned: the pin is in force, the tag is not followed.
    create_channel(
        &bed,
        "pinned",
        json!({"image": format!("{reg}/chan-pin"), "tag": "latest", "pinnedDigest": old, "interval": "2s"}),
    )
    .await;
    let p = wait_channel(&bed, "pinned", "the pin", |c| cond(c, "Ready") == ready("Pinned")).await;
    assert_eq!(digest(&p), Some(old.clone()));
    // Unpinned: the tag is followed again.
    channels(&bed)
        .patch("pinned", &PatchParams::default(), &Patch::Merge(json!({"spec": {"pinnedDigest": null}})))
        .await
        .unwrap();
    let p = wait_channel(&bed, "pinned", "the tag after unpinning", |c| digest(c).as_deref() == Some(latest.as_str()))
        .await;
    assert_eq!(cond(&p, "Ready"), ready("Resolved"));

    // Off the allowlist: refused with a condition, stalled, and no connection is ever made.
    create_channel(
        &bed,
        "elsewhere",
        json!({"image": format!("127.0.0.1:{}/chan-pin", bogus.port()), "tag": "latest", "interval": "2s"}),
    )
    .await;
    let e =
        wait_channel(&bed, "elsewhere", "RegistryNotAllowed", |c| cond(c, "Ready") == not_ready("RegistryNotAllowed"))
            .await;
    assert_eq!(cond(&e, "Stalled"), ready("RegistryNotAllowed"));
    assert_eq!(digest(&e), None);
    // Three more rounds of both channels (each requeued every 2 s) tried it again.
    bed.reconciled_again("channel", bed.reconciles("channel"), 6).await;
    assert_eq!(contacted.load(Ordering::SeqCst), 0, "the registry off the allowlist was contacted");
    accept.abort();
}

/// A `kubernetes.io/dockerconfigjson` Secret with one entry.
async fn pull_secret(bed: &Bed, name: &str, host: &str, user: &str, password: &str) {
    let doc = json!({"auths": {host: {"username": user, "password": password}}}).to_string();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": name, "namespace": bed.ns},
        "stringData": {".dockerconfigjson": doc},
    });
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(bed.client.clone(), &bed.ns);
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&secret)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_registries_with_basic_and_token_auth_and_credentials_only_where_allowed() {
    let bed = Bed::start_without_controllers().await.unwrap();
    let v1 = bed.stack.push_image("chan-priv", "latest", &[("sim.version", "1")], false).await.unwrap();
    // The real docker-registry, three more times over the same storage: basic auth (htpasswd);
    // token auth with a realm the operator is told about; token auth naming a realm it is not
    // (a trap, on another host name) as its realm.
    let basic = bed.stack.basic_auth_registry("alice", "alice-pass").await.unwrap();
    let realm = bed.stack.token_realm("bob", "bob-pass").await.unwrap();
    let token = bed
        .stack
        .token_auth_registry(&format!("http://{}/token", realm.addr), &realm.dir.join("realm.crt"))
        .await
        .unwrap();
    let trap = bed.stack.trap().await.unwrap();
    let trap_realm = format!("localhost:{}", trap.addr.rsplit_once(':').unwrap().1);
    let trapped = bed
        .stack
        .token_auth_registry(&format!("http://{trap_realm}/token"), &realm.dir.join("realm.crt"))
        .await
        .unwrap();
    let registries = vec![basic.addr.clone(), token.addr.clone(), trapped.addr.clone()];
    let mut insecure = registries.clone();
    insecure.extend([realm.addr.clone(), trap_realm.clone()]);
    let _running =
        start_channels_with(&bed, RegistrySettings::new(registries, insecure, vec![realm.addr.clone()])).await;

    pull_secret(&bed, "basic-creds", &basic.addr, "alice", "alice-pass").await;
    pull_secret(&bed, "token-creds", &token.addr, "bob", "bob-pass").await;
    pull_secret(&bed, "trap-creds", &trapped.addr, "bob", "bob-pass").await;
    let spec = |reg: &str, secret: Option<&str>| {
        let mut s = json!({"image": format!("{reg}/chan-priv"), "tag": "latest", "interval": "1s"});
        if let Some(secret) = secret {
            s["pullSecret"] = json!({"name": secret});
        }
        s
    };
    create_channel(&bed, "basic", spec(&basic.addr, Some("basic-creds"))).await;
    create_channel(&bed, "anonymous", spec(&basic.addr, None)).await;
    create_channel(&bed, "token", spec(&token.addr, Some("token-creds"))).await;
    create_channel(&bed, "trapped", spec(&trapped.addr, Some("trap-creds"))).await;

    // Basic auth: resolved with the Secret's credentials; without them, Unauthorized.
    let b = wait_channel(&bed, "basic", "v1 through basic auth", |c| digest(c).as_deref() == Some(v1.as_str())).await;
    assert_eq!(cond(&b, "Ready"), ready("Resolved"));
    let a = wait_channel(&bed, "anonymous", "Unauthorized", |c| cond(c, "Ready") == not_ready("Unauthorized")).await;
    assert_eq!(digest(&a), None);
    // Token auth: the realm the operator was told about got the credentials, and they were right.
    let t = wait_channel(&bed, "token", "v1 through a token", |c| digest(c).as_deref() == Some(v1.as_str())).await;
    assert_eq!(cond(&t, "Ready"), ready("Resolved"));
    let asked = realm.requests();
    assert!(!asked.is_empty() && asked.iter().all(|r| r["authorization"] == "Basic" && r["credentials_ok"] == true));
    assert!(asked.iter().all(|r| r["query"]["scope"] == json!(["repository:chan-priv:pull"])), "{asked:?}");
    // A realm it was not told about: refused before anything is sent to it.
    let x =
        wait_channel(&bed, "trapped", "RegistryNotAllowed", |c| cond(c, "Ready") == not_ready("RegistryNotAllowed"))
            .await;
    assert_eq!(digest(&x), None);
    let msg = &x.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().message;
    assert!(msg.contains(&trap_realm) && msg.contains("credentials not sent"), "{msg}");

    // Bad credentials (the Secret rotated to a wrong password) while the tag moves: Unauthorized,
    // and the last good digest stays in force. Put right, the channel moves on.
    pull_secret(&bed, "basic-creds", &basic.addr, "alice", "wr0ng-pass").await;
    let v2 = bed.stack.push_image("chan-priv", "latest", &[("sim.version", "2")], false).await.unwrap();
    let b = wait_channel(&bed, "basic", "Unauthorized", |c| cond(c, "Ready") == not_ready("Unauthorized")).await;
    assert_eq!(digest(&b), Some(v1.clone()));
    let t = wait_channel(&bed, "token", "v2 through a token", |c| digest(c).as_deref() == Some(v2.as_str())).await;
    assert_eq!(cond(&t, "Ready"), ready("Resolved"));
    pull_secret(&bed, "basic-creds", &basic.addr, "alice", "alice-pass").await;
    wait_channel(&bed, "basic", "v2 with the credentials put right", |c| {
        digest(c).as_deref() == Some(v2.as_str()) && cond(c, "Ready") == ready("Resolved")
    })
    .await;

    // The trap saw nothing at all, for the whole run, and no condition carries a credential.
    assert_eq!(trap.requests(), Vec::<serde_json::Value>::new());
    for name in ["basic", "anonymous", "token", "trapped"] {
        let c = channels(&bed).get(name).await.unwrap();
        let text = serde_json::to_string(&c.status).unwrap();
        for needle in ["alice-pass", "bob-pass", "wr0ng-pass"] {
            assert!(!text.contains(needle), "{name}: {text}");
        }
    }
}
