//! The registry webhook: a call with the channel's token makes the channel resolve at once (its
//! interval is an hour), a wrong or missing token is refused and changes nothing, an oversized body
//! is refused, and unknown channels or channels without a webhook are not found.

use crate::harness::Bed;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};
use tenant_operator::crd::ImageChannel;

const TOKEN: &str = "wh-token-3f9a7c1e5b";

fn digest(c: &ImageChannel) -> Option<String> {
    c.status.as_ref()?.digest.clone()
}

async fn channel_digest(api: &Api<ImageChannel>, name: &str) -> Option<String> {
    digest(&api.get(name).await.unwrap())
}

/// Polls (every 20 ms) until the channel's digest is `want`; the time from `since`, or `None` after `limit`.
async fn digest_becomes(
    api: &Api<ImageChannel>,
    name: &str,
    want: &str,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    while since.elapsed() < limit {
        if channel_digest(api, name).await.as_deref() == Some(want) {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_triggers_a_resolve_within_a_second_and_refuses_bad_tokens() {
    let bed = Bed::start().await.unwrap();
    let reg = bed.stack.registry.clone();
    let v1 = bed.stack.push_image("hooked", "latest", &[("sim.version", "1")], false).await.unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(bed.client.clone(), &bed.ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "hook-token", "namespace": bed.ns},
                "stringData": {"token": TOKEN},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let spec = |webhook: bool| {
        let mut s = json!({"image": format!("{reg}/hooked"), "tag": "latest", "interval": "1h"});
        if webhook {
            s["webhook"] = json!({"tokenSecretRef": {"name": "hook-token", "key": "token"}});
        }
        s
    };
    for (name, webhook) in [("hooked", true), ("plain", false)] {
        bed.create::<ImageChannel>(json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1",
            "kind": "ImageChannel",
            "metadata": {"name": name, "namespace": bed.ns},
            "spec": spec(webhook),
        }))
        .await
        .unwrap();
    }
    let api: Api<ImageChannel> = Api::namespaced(bed.client.clone(), &bed.ns);
    for name in ["hooked", "plain"] {
        assert!(
            digest_becomes(&api, name, &v1, Instant::now(), Duration::from_secs(30)).await.is_some(),
            "{name}: first resolve"
        );
    }

    // The tag moves; with a one-hour interval nothing would notice for an hour.
    let v2 = bed.stack.push_image("hooked", "latest", &[("sim.version", "2")], false).await.unwrap();
    assert_ne!(v1, v2);
    let http = reqwest::Client::new();
    let url = |ns: &str, ch: &str| format!("http://{}/webhook/{ns}/{ch}", bed.webhook);
    let call = |u: String, token: Option<(&'static str, String)>, body: Vec<u8>| {
        let mut req = http.post(u).body(body);
        if let Some((h, v)) = token {
            req = req.header(h, v);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let bearer = |t: &str| Some(("authorization", format!("Bearer {t}")));
    let payload = br#"{"events":[{"action":"push","target":{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}}]}"#.to_vec();

    // Refused, and nothing changes: no token, a wrong one (either header), a prefix of the right
    // one, the right token for a channel without a webhook, unknown channels, hostile names.
    assert_eq!(call(url(&bed.ns, "hooked"), None, payload.clone()).await, 401);
    assert_eq!(call(url(&bed.ns, "hooked"), bearer("wrong"), payload.clone()).await, 401);
    assert_eq!(call(url(&bed.ns, "hooked"), bearer(&TOKEN[..TOKEN.len() - 1]), payload.clone()).await, 401);
    assert_eq!(call(url(&bed.ns, "hooked"), Some(("x-webhook-token", "nope".into())), payload.clone()).await, 401);
    assert_eq!(call(url(&bed.ns, "plain"), bearer(TOKEN), payload.clone()).await, 404);
    assert_eq!(call(url(&bed.ns, "no-such-channel"), bearer(TOKEN), payload.clone()).await, 404);
    assert_eq!(call(url("other", "hooked"), bearer(TOKEN), payload.clone()).await, 404);
    assert_eq!(call(url("FLEET", "..%2Fhooked"), bearer(TOKEN), payload.clone()).await, 404);
    // Over the 64 KiB cap, even with the right token.
    assert_eq!(call(url(&bed.ns, "hooked"), bearer(TOKEN), vec![b'x'; 64 * 1024 + 1]).await, 413);
    // A GET is not the webhook.
    assert_eq!(http.get(url(&bed.ns, "hooked")).send().await.unwrap().status().as_u16(), 405);
    // Each refusal was answered after the handler ended: an accepted call writes the request
    // annotation before it answers 202, so nothing of a refused one can land later.
    assert_eq!(channel_digest(&api, "hooked").await, Some(v1.clone()), "a refused call changed the channel");
    assert_eq!(channel_digest(&api, "plain").await, Some(v1.clone()));
    let c = api.get("hooked").await.unwrap();
    assert!(
        !c.metadata.annotations.unwrap_or_default().contains_key(tenant_operator::webhook::RESOLVE_REQUEST_ANNOTATION),
        "a refused call wrote the request annotation"
    );

    // The right token: the channel follows the tag within a second of the call. The body's digest
    // (all zeros) is never trusted.
    let t0 = Instant::now();
    assert_eq!(call(url(&bed.ns, "hooked"), bearer(TOKEN), payload.clone()).await, 202);
    let took = digest_becomes(&api, "hooked", &v2, t0, Duration::from_secs(10)).await;
    eprintln!("webhook call -> status.digest changed in {took:?}");
    let took = took.expect("the webhook did not trigger a resolve");
    assert!(took <= Duration::from_secs(1), "the resolve took {took:?} after the webhook call");
    assert_eq!(channel_digest(&api, "plain").await, Some(v1.clone()), "the other channel moved");

    // Again through X-Webhook-Token, after the tag moved once more.
    let v3 = bed.stack.push_image("hooked", "latest", &[("sim.version", "3")], false).await.unwrap();
    let t0 = Instant::now();
    assert_eq!(call(url(&bed.ns, "hooked"), Some(("x-webhook-token", TOKEN.into())), Vec::new()).await, 202);
    let took = digest_becomes(&api, "hooked", &v3, t0, Duration::from_secs(10)).await;
    eprintln!("webhook call (X-Webhook-Token) -> status.digest changed in {took:?}");
    assert!(took.is_some_and(|t| t <= Duration::from_secs(1)), "second webhook call: {took:?}");
    let history = api.get("hooked").await.unwrap().status.unwrap().history;
    assert_eq!(history.iter().map(|h| h.digest.clone()).collect::<Vec<_>>(), vec![v3, v2, v1]);
}
