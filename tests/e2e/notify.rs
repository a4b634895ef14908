//! Rollout notifications end to end: real rollouts on the real control plane tell local webhook
//! receivers (a generic JSON one and a Slack-format one) what happened, each event once per sink:
//! through a receiver that is down and comes back, through an operator stopped in the middle of a
//! request, and through a restart. What the receivers got is the truth the test checks.

use crate::apply::{secret, tenant_json};
use crate::harness::{Bed, test_settings};
use crate::rollout::{all_on, event_reasons, follow_tag, policy, record, wait_policy};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kube::api::Api;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tenant_operator::core::rollout::phase;
use tenant_operator::crd::{AttemptState, DeliveryResult, RolloutPolicy, SinkStatus, Tenant};
use testbed::demo::launch_managed;
use testbed::stack::HostState;
use tokio::net::TcpListener;

const REPO: &str = "platform-tenant";
/// The secret part of each sink's URL: it must never show up in status, events or logs.
const GENERIC_TOKEN: &str = "T0GENERIC-7f3a9c";
const SLACK_TOKEN: &str = "T0SLACK-b81e44";
/// A secret env value of every tenant: it must never reach a receiver.
const ENV_SECRET: &str = "env-s3cr3t-4d1e";

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Got {
    id: String,
    event: String,
    body: Value,
}

/// An event type to hold, and where to say that it was.
type Hold = Option<(String, tokio::sync::mpsc::UnboundedSender<String>)>;

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    /// Hold (never answer) the first request of this event type, and say so on `held`.
    hold: Arc<Mutex<Hold>>,
}

impl Receiver {
    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let got = Got {
        id: h("x-tenant-operator-delivery"),
        event: h("x-tenant-operator-event"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    r.got.lock().unwrap().push(got.clone());
    let held = {
        let mut hold = r.hold.lock().unwrap();
        match hold.as_ref() {
            Some((event, tx)) if *event == got.event => {
                let _ = tx.send(got.id.clone());
                hold.take();
                true
            }
            _ => false,
        }
    };
    if held {
        std::future::pending::<()>().await;
    }
    StatusCode::NO_CONTENT
}

/// Serves `r` on `listener` at `/hooks/<token>` only (anything else is a 404).
fn serve(listener: TcpListener, token: &str, r: Receiver) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new().route(&format!("/hooks/{token}"), post(receive)).with_state(r);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

async fn policy_now(bed: &Bed) -> RolloutPolicy {
    Api::<RolloutPolicy>::namespaced(bed.client.clone(), &bed.ns).get("notified").await.unwrap()
}

fn sink<'a>(p: &'a RolloutPolicy, name: &str) -> Option<&'a SinkStatus> {
    p.status.as_ref()?.notifications.iter().find(|s| s.sink == name)
}

/// Waits until `pred` holds for what a receiver got.
async fn wait_got(r: &Receiver, what: &str, timeout: Duration, pred: impl Fn(&[Got]) -> bool) {
    let deadline = Instant::now() + timeout;
    while !pred(&r.got()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}; got {:#?}", r.got());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn of_type(got: &[Got], event: &str) -> usize {
    got.iter().filter(|g| g.event == event).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_events_reach_each_sink_once_through_a_sink_outage_a_stop_mid_send_and_a_restart() {
    let mut bed = Bed::start().await.unwrap();
    let generic = Receiver::default();
    let slack = Receiver::default();
    let generic_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let generic_port = generic_listener.local_addr().unwrap().port();
    serve(generic_listener, GENERIC_TOKEN, generic.clone());
    // The Slack receiver is down at first: its port is free, nothing listens.
    let slack_port = testbed::stack::free_port().unwrap();
    secret(
        &bed,
        "hooks",
        &[
            ("generic", &format!("http://127.0.0.1:{generic_port}/hooks/{GENERIC_TOKEN}")),
            ("slack", &format!("http://127.0.0.1:{slack_port}/hooks/{SLACK_TOKEN}")),
        ],
    )
    .await;
    for (name, tier) in [("can-n", "canary"), ("prod-n1", "production"), ("prod-n2", "production")] {
        secret(&bed, &format!("{name}-env"), &[("API_TOKEN", ENV_SECRET)]).await;
        let id = launch_managed(&bed.stack, name, &[], HostState::Fresh).await.unwrap();
        bed.create::<Tenant>(tenant_json(
            name,
            &id,
            json!({"tier": tier, "channel": "staging", "rolloutPolicy": "notified",
                   "container": {"envFrom": [{"secretRef": {"name": format!("{name}-env")}}]}}),
        ))
        .await
        .unwrap();
    }
    policy(
        &bed,
        "notified",
        json!({"stagger": "0s", "maxConcurrency": 2, "healthCheck": {"timeout": "4s"},
        "canary": {"minCanaries": 1, "soak": "2s", "sampleInterval": "1s"},
        "notifications": [
            {"name": "ops", "urlSecretRef": {"name": "hooks", "key": "generic"}},
            {"name": "chat", "format": "Slack", "urlSecretRef": {"name": "hooks", "key": "slack"},
             "events": ["Halted", "Aborted", "Complete"]},
            {"name": "nowhere", "urlSecretRef": {"name": "no-such-secret", "key": "url"}},
        ]}),
    )
    .await;
    let all = ["can-n", "prod-n1", "prod-n2"];

    // v1 rolls all the way: Started, GatePassed, Complete reach the generic sink as they happen.
    let v1 = bed.stack.push_image(REPO, "staging", &[("sim.version", "1")], false).await.unwrap();
    follow_tag(&bed, "staging", "staging").await;
    all_on(&bed, &all, &v1, Duration::from_secs(120)).await;
    wait_got(&generic, "v1's three events", Duration::from_secs(60), |g| of_type(g, "Complete") == 1).await;
    let events: Vec<String> = generic.got().iter().map(|g| g.event.clone()).collect();
    assert_eq!(events, ["Started", "GatePassed", "Complete"]);
    let gate = &generic.got()[1].body;
    assert_eq!(gate["tenants"][0]["name"], "can-n", "{gate}");
    assert_eq!(gate["digest"], v1.as_str());
    assert_eq!(gate["policy"], "notified");
    assert_eq!(gate["namespace"], bed.ns.as_str());

    // Meanwhile the Slack sink is down: its Complete is being retried, the error says why. (Each
    // attempt is recorded as Sending before it goes out: wait for one seen between attempts.)
    let p = wait_policy(&bed, "notified", "retries to the sink that is down", Duration::from_secs(60), |p| {
        sink(p, "chat")
            .and_then(|s| s.current.as_ref())
            .is_some_and(|c| c.attempts >= 2 && c.state == AttemptState::Retrying)
    })
    .await;
    let chat = sink(&p, "chat").unwrap().current.clone().unwrap();
    assert_eq!(chat.state, AttemptState::Retrying);
    assert!(chat.last_error.as_deref().unwrap().contains("connection"), "{chat:?}");
    assert!(chat.next_attempt_at.is_some());
    // The sink whose Secret does not exist says so, and is never attempted.
    let nowhere = sink(&p, "nowhere").unwrap();
    assert_eq!(nowhere.problem.as_deref(), Some("Secret no-such-secret does not exist"));
    assert!(nowhere.current.is_none() && nowhere.deliveries.is_empty());

    // The Slack receiver comes up: the retry delivers v1's Complete, once.
    let slack_listener = TcpListener::bind(("127.0.0.1", slack_port)).await.unwrap();
    serve(slack_listener, SLACK_TOKEN, slack.clone());
    wait_got(&slack, "the retried Complete", Duration::from_secs(60), |g| !g.is_empty()).await;
    let first = slack.got()[0].clone();
    assert_eq!(first.event, "Complete");
    let text = first.body["text"].as_str().unwrap();
    assert!(text.starts_with(&format!("Rollout complete: {}/notified channel staging @ ", bed.ns)), "{text}");
    assert!(first.body["blocks"].as_array().is_some_and(|b| !b.is_empty()));
    wait_policy(&bed, "notified", "the Slack delivery recorded", Duration::from_secs(30), |p| {
        sink(p, "chat").is_some_and(|s| {
            s.current.is_none()
                && s.deliveries.iter().any(|d| d.id == first.id && d.result == DeliveryResult::Delivered)
        })
    })
    .await;

    // v2 fails on the canary: the halt names it and why. The generic receiver holds the Halted
    // request unanswered and the operator is stopped right then, with the request in the air.
    let (tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    *generic.hold.lock().unwrap() = Some(("Halted".into(), tx));
    let v2 = bed
        .stack
        .push_image(REPO, "staging", &[("sim.version", "2"), ("sim.health", "unhealthy")], false)
        .await
        .unwrap();
    let held_id =
        tokio::time::timeout(Duration::from_secs(120), held.recv()).await.expect("the halt was sent").unwrap();
    let p = policy_now(&bed).await;
    let c = sink(&p, "ops").unwrap().current.clone().unwrap();
    assert_eq!(
        (c.id.as_str(), c.state),
        (held_id.as_str(), AttemptState::Sending),
        "the attempt is recorded before it is sent"
    );
    // The Slack sink is not held up by the other one: its halt is delivered and recorded.
    wait_policy(&bed, "notified", "Slack's halt recorded while the other sink hangs", Duration::from_secs(8), |p| {
        sink(p, "chat")
            .is_some_and(|s| s.deliveries.iter().any(|d| d.id == held_id && d.result == DeliveryResult::Delivered))
    })
    .await;
    bed.stop_controllers().await;
    bed.start_controllers(test_settings()).await;
    // After the restart the attempt that was cut short ends Unknown and is not sent again.
    wait_policy(&bed, "notified", "the cut-short attempt settled", Duration::from_secs(60), |p| {
        sink(p, "ops")
            .is_some_and(|s| s.deliveries.iter().any(|d| d.id == held_id && d.result == DeliveryResult::Unknown))
    })
    .await;
    let halted = generic.got().into_iter().find(|g| g.id == held_id).unwrap();
    assert_eq!(halted.event, "Halted");
    assert_eq!(halted.body["digest"], v2.as_str());
    assert_eq!(halted.body["tenants"][0]["name"], "can-n", "{}", halted.body);
    assert!(!halted.body["tenants"][0]["reason"].as_str().unwrap().is_empty(), "{}", halted.body);
    let reasons: Vec<String> = event_reasons(&bed, "notified").await.into_iter().map(|e| e.0).collect();
    assert!(reasons.iter().any(|r| r == "NotificationUncertain"), "{reasons:?}");
    let slack_halt = slack.got().into_iter().find(|g| g.event == "Halted").unwrap();
    assert!(slack_halt.body["blocks"][1]["text"]["text"].as_str().unwrap().contains("`can-n`"), "{}", slack_halt.body);

    // Abort: both sinks hear of it.
    coordinator_request(&bed, "abort").await;
    wait_got(&generic, "the abort", Duration::from_secs(60), |g| of_type(g, "Aborted") == 1).await;
    wait_got(&slack, "the abort in Slack", Duration::from_secs(60), |g| of_type(g, "Aborted") == 1).await;
    all_on(&bed, &all, &v1, Duration::from_secs(120)).await;

    // v3 after another restart: a full rollout again, and nothing of before is sent twice.
    bed.stop_controllers().await;
    bed.start_controllers(test_settings()).await;
    let v3 = bed.stack.push_image(REPO, "staging", &[("sim.version", "3")], false).await.unwrap();
    all_on(&bed, &all, &v3, Duration::from_secs(120)).await;
    wait_policy(&bed, "notified", "v3 complete", Duration::from_secs(60), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v3 && r.phase == phase::COMPLETE)
    })
    .await;
    wait_got(&generic, "v3's Complete", Duration::from_secs(60), |g| of_type(g, "Complete") == 2).await;
    wait_got(&slack, "v3's Complete in Slack", Duration::from_secs(60), |g| of_type(g, "Complete") == 2).await;

    let generic_events: Vec<String> = generic.got().iter().map(|g| g.event.clone()).collect();
    assert_eq!(
        generic_events,
        ["Started", "GatePassed", "Complete", "Started", "Halted", "Aborted", "Started", "GatePassed", "Complete"]
    );
    let slack_events: Vec<String> = slack.got().iter().map(|g| g.event.clone()).collect();
    assert_eq!(slack_events, ["Complete", "Halted", "Aborted", "Complete"]);
    for r in [&generic, &slack] {
        let mut ids: Vec<String> = r.got().iter().map(|g| g.id.clone()).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "an event reached a sink twice: {:#?}", r.got());
    }
    // Every delivery is recorded as such.
    let p = policy_now(&bed).await;
    let status = p.status.clone().unwrap();
    for (name, r) in [("ops", &generic), ("chat", &slack)] {
        let s = sink(&p, name).unwrap();
        for g in r.got().iter().filter(|g| g.id != held_id) {
            assert!(
                s.deliveries.iter().any(|d| d.id == g.id && d.result == DeliveryResult::Delivered),
                "{name}: {g:?} not recorded in {s:?}"
            );
        }
    }

    // No secret anywhere it should not be: no env value in a body, no URL token in status or events.
    for g in generic.got().iter().chain(slack.got().iter()) {
        assert!(!g.body.to_string().contains(ENV_SECRET), "{}", g.body);
    }
    let written = serde_json::to_string(&status).unwrap();
    let events = format!("{:?}", event_messages(&bed).await);
    for token in [GENERIC_TOKEN, SLACK_TOKEN, ENV_SECRET] {
        assert!(!written.contains(token), "{token} in the policy's status");
        assert!(!events.contains(token), "{token} in an event");
    }
    // The metric counts what happened: 2 Completes per sink delivered, the cut-short halt unknown.
    let metrics = bed.metrics.encode();
    for series in [
        "tenant_operator_notifications_total{event=\"Complete\",result=\"delivered\"} 4",
        "tenant_operator_notifications_total{event=\"Halted\",result=\"unknown\"} 1",
        "tenant_operator_notifications_total{event=\"Halted\",result=\"delivered\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == series), "no {series} in:\n{metrics}");
    }
    // The policy's outbox holds what the receivers got (the coordinator's record).
    let recorded: Vec<String> = status.events.iter().map(|e| e.id.clone()).collect();
    for g in generic.got() {
        assert!(recorded.contains(&g.id), "{g:?} is not in status.events");
    }
}

async fn coordinator_request(bed: &Bed, verb: &str) {
    let token = tenant_operator::controller::coordinator::request(bed.client.clone(), &bed.ns, "notified", verb, None)
        .await
        .unwrap();
    wait_policy(bed, "notified", "the request acknowledged", Duration::from_secs(30), |p| {
        p.status.as_ref().is_some_and(|s| s.handled_requests.get(verb) == Some(&token))
    })
    .await;
}

async fn event_messages(bed: &Bed) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(bed.client.clone(), &bed.ns);
    api.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|e| e.note).collect()
}
