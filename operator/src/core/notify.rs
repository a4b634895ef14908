//! Rollout notifications: which events a rollout step produced, which event each sink gets next,
//! what happens after an attempt, and the bodies sent. Pure, on a clock given by the caller.
//!
//! The coordinator records events in the policy's status (`status.events`) in the same write as
//! the transition they describe; the notifier delivers them from there. Per sink, deliveries go
//! oldest first, one at a time. An attempt is recorded (`Sending`) before the request leaves, so
//! an operator that stops mid-request finds it on restart and does not send it again: each event
//! reaches each sink at most once. An attempt that failed is retried with exponential backoff, up
//! to [`MAX_ATTEMPTS`]; a sink that refuses an event for good (4xx other than 408 and 429) is not
//! asked again.

use super::rollout::Note;
use crate::crd::{
    Attempt, AttemptState, Delivery, DeliveryResult, EVENTS_KEPT, EventTenant, NotificationFormat, NotificationSink,
    RolloutEvent, RolloutEventType, RolloutStatus, SinkStatus,
};
use jiff::Timestamp;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Attempts per event and sink before the notifier gives up on it.
pub const MAX_ATTEMPTS: i32 = 10;
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The event type a rollout note stands for, if it is one users are told about.
pub fn event_type(reason: &str) -> Option<RolloutEventType> {
    Some(match reason {
        "RolloutStarted" => RolloutEventType::Started,
        "CanaryGatePassed" => RolloutEventType::GatePassed,
        "RolloutHalted" => RolloutEventType::Halted,
        "RolloutAborted" => RolloutEventType::Aborted,
        "RolloutComplete" => RolloutEventType::Complete,
        "EmergencyRollout" => RolloutEventType::Emergency,
        _ => return None,
    })
}

/// The events of one rollout step: one per note that is an event, on the step's record.
/// `why(tenant)` says why a failed tenant failed (its Ready condition), for a halt.
pub fn events_of(
    namespace: &str,
    policy: &str,
    record: &RolloutStatus,
    notes: &[Note],
    why: impl Fn(&str) -> String,
    now: &Timestamp,
) -> Vec<RolloutEvent> {
    let at = now.to_string();
    notes
        .iter()
        .filter_map(|n| event_type(n.reason).map(|t| (t, n)))
        .map(|(type_, note)| {
            let tenants = match type_ {
                RolloutEventType::Halted => record
                    .failed_tenants
                    .iter()
                    .map(|name| EventTenant { name: name.clone(), reason: why(name) })
                    .collect(),
                RolloutEventType::GatePassed => record
                    .gate_tenants
                    .iter()
                    .map(|name| EventTenant { name: name.clone(), reason: String::new() })
                    .collect(),
                _ => Vec::new(),
            };
            let key = format!("{namespace}/{policy}/{}/{}/{type_:?}/{at}", record.channel, record.digest);
            RolloutEvent {
                id: hex::encode(&Sha256::digest(key.as_bytes())[..10]),
                type_,
                channel: record.channel.clone(),
                digest: record.digest.clone(),
                at: at.clone(),
                message: note.message.clone(),
                tenants,
            }
        })
        .collect()
}

/// The recorded events with the new ones appended, the newest [`EVENTS_KEPT`] kept.
pub fn append(old: &[RolloutEvent], new: Vec<RolloutEvent>) -> Vec<RolloutEvent> {
    let mut all: Vec<RolloutEvent> = old.to_vec();
    all.extend(new);
    let drop = all.len().saturating_sub(EVENTS_KEPT);
    all.split_off(drop)
}

/// What to do for one sink now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to send.
    Idle,
    /// The next attempt waits this long.
    Wait(Duration),
    /// Record the attempt (the returned status), then send this event.
    Send(RolloutEvent),
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The sink answered 2xx.
    Delivered,
    /// Worth another attempt (connection refused, timeout, 408, 429, 5xx); why, never the URL.
    Retry(String),
    /// The sink refused it for good (another 4xx, a redirect).
    Refused(String),
}

/// The sink's status brought up to date and what to do next. `since` is when events start to
/// count for a sink seen for the first time. An attempt found `Sending` was cut short by a stop: it
/// ends `Unknown` and is not sent again.
pub fn plan(
    sink: &NotificationSink,
    status: Option<&SinkStatus>,
    events: &[RolloutEvent],
    since: &Timestamp,
    now: &Timestamp,
) -> (SinkStatus, Step) {
    let mut s = status.cloned().unwrap_or_else(|| SinkStatus {
        sink: sink.name.clone(),
        since: since.to_string(),
        deliveries: Vec::new(),
        current: None,
        problem: None,
    });
    // Deliveries of events no longer recorded can never be asked for again.
    s.deliveries.retain(|d| events.iter().any(|e| e.id == d.id));
    if let Some(c) = s.current.take() {
        match c.state {
            AttemptState::Sending => {
                s.deliveries.push(ended(&c.id, DeliveryResult::Unknown, c.attempts, now));
            }
            AttemptState::Retrying if events.iter().any(|e| e.id == c.id) => s.current = Some(c),
            AttemptState::Retrying => {}
        }
    }
    let start = s.since.parse::<Timestamp>().unwrap_or(*since);
    let wanted = |e: &RolloutEvent| sink.events.is_empty() || sink.events.contains(&e.type_);
    let after_since = |e: &RolloutEvent| e.at.parse::<Timestamp>().is_ok_and(|at| at >= start);
    let next = match &s.current {
        Some(c) => events.iter().find(|e| e.id == c.id),
        None => events.iter().find(|e| wanted(e) && after_since(e) && !s.deliveries.iter().any(|d| d.id == e.id)),
    };
    let Some(event) = next.cloned() else {
        return (s, Step::Idle);
    };
    if let Some(when) =
        s.current.as_ref().and_then(|c| c.next_attempt_at.as_deref()).and_then(|t| t.parse::<Timestamp>().ok())
        && when > *now
    {
        let wait = Duration::try_from(when.duration_since(*now)).unwrap_or_default();
        return (s, Step::Wait(wait));
    }
    let attempts = s.current.as_ref().map_or(0, |c| c.attempts) + 1;
    let last_error = s.current.as_ref().and_then(|c| c.last_error.clone());
    s.current = Some(Attempt {
        id: event.id.clone(),
        attempts,
        state: AttemptState::Sending,
        last_error,
        next_attempt_at: None,
    });
    (s, Step::Send(event))
}

/// The sink's status after the attempt under way ended so.
pub fn after(mut s: SinkStatus, outcome: &Outcome, base: Duration, now: &Timestamp) -> SinkStatus {
    let Some(mut c) = s.current.take() else {
        return s;
    };
    match outcome {
        Outcome::Delivered => s.deliveries.push(ended(&c.id, DeliveryResult::Delivered, c.attempts, now)),
        Outcome::Refused(_) => s.deliveries.push(ended(&c.id, DeliveryResult::GaveUp, c.attempts, now)),
        Outcome::Retry(_) if c.attempts >= MAX_ATTEMPTS => {
            s.deliveries.push(ended(&c.id, DeliveryResult::GaveUp, c.attempts, now));
        }
        Outcome::Retry(why) => {
            let wait = backoff(c.attempts, base);
            let next = now.checked_add(jiff::SignedDuration::try_from(wait).unwrap_or_default()).unwrap_or(*now);
            c.state = AttemptState::Retrying;
            c.last_error = Some(why.clone());
            c.next_attempt_at = Some(next.to_string());
            s.current = Some(c);
        }
    }
    s
}

/// The wait after the n-th failed attempt: base, 2·base, 4·base, … at most [`MAX_BACKOFF`].
pub fn backoff(attempts: i32, base: Duration) -> Duration {
    let n = u32::try_from(attempts.max(1) - 1).unwrap_or(0).min(16);
    base.saturating_mul(1 << n).min(MAX_BACKOFF)
}

/// The outcome of an HTTP answer.
pub fn outcome_of_status(code: u16) -> Outcome {
    match code {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Retry(format!("HTTP {code}")),
        300..=399 => Outcome::Refused(format!("HTTP {code}: redirects are not followed")),
        _ => Outcome::Refused(format!("HTTP {code}")),
    }
}

fn ended(id: &str, result: DeliveryResult, attempts: i32, now: &Timestamp) -> Delivery {
    Delivery { id: id.to_string(), result, attempts, at: now.to_string() }
}

/// The body sent for an event. Nothing in it comes from a Secret: names, digests, phases, and the
/// reasons of conditions.
pub fn body(format: NotificationFormat, namespace: &str, policy: &str, e: &RolloutEvent) -> Value {
    match format {
        NotificationFormat::Generic => json!({
            "id": e.id,
            "type": e.type_,
            "namespace": namespace,
            "policy": policy,
            "channel": e.channel,
            "digest": e.digest,
            "at": e.at,
            "message": e.message,
            "tenants": e.tenants,
        }),
        NotificationFormat::Slack => {
            let title = match e.type_ {
                RolloutEventType::Started => "Rollout started",
                RolloutEventType::GatePassed => "Canary gate passed",
                RolloutEventType::Halted => "Rollout halted",
                RolloutEventType::Aborted => "Rollout aborted",
                RolloutEventType::Complete => "Rollout complete",
                RolloutEventType::Emergency => "Emergency rollout",
            };
            let short = e.digest.strip_prefix("sha256:").map_or(e.digest.as_str(), |h| &h[..h.len().min(12)]);
            let text = format!(
                "{title}: {}/{} channel {} @ {short}",
                slack_escape(namespace),
                slack_escape(policy),
                slack_escape(&e.channel)
            );
            let mut detail = slack_escape(&e.message);
            for t in &e.tenants {
                detail.push_str(&format!("\n• `{}`", slack_escape(&t.name)));
                if !t.reason.is_empty() {
                    detail.push_str(&format!(": {}", slack_escape(&t.reason)));
                }
            }
            json!({
                "text": text,
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{text}*")}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": detail}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("event {} at {}", e.id, e.at)}]},
                ],
            })
        }
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped (a `<...>` is a link or a mention).
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SecretKeyRef;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sink(events: Vec<RolloutEventType>) -> NotificationSink {
        NotificationSink {
            name: "ops".into(),
            format: NotificationFormat::Generic,
            url_secret_ref: SecretKeyRef { name: "hooks".into(), key: "ops".into() },
            events,
        }
    }

    fn ev(id: &str, type_: RolloutEventType, at: &str) -> RolloutEvent {
        RolloutEvent {
            id: id.into(),
            type_,
            channel: "stable".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            at: at.into(),
            message: String::new(),
            tenants: Vec::new(),
        }
    }

    const T0: &str = "2026-12-03T10:00:00Z";

    #[test]
    fn events_come_only_from_notes_that_are_events_and_name_the_failed_tenants_of_a_halt() {
        let record = RolloutStatus {
            channel: "stable".into(),
            digest: "sha256:d".into(),
            failed_tenants: vec!["acme".into(), "globex".into()],
            ..Default::default()
        };
        let notes = vec![
            Note { warning: true, reason: "TenantFailed", message: "acme failed".into() },
            Note { warning: true, reason: "RolloutHalted", message: "halted".into() },
        ];
        let got = events_of("fleet", "prod", &record, &notes, |n| format!("{n}: health check failed"), &t(T0));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].type_, RolloutEventType::Halted);
        assert_eq!(got[0].at, "2026-12-03T10:00:00Z");
        assert_eq!(
            got[0].tenants,
            vec![
                EventTenant { name: "acme".into(), reason: "acme: health check failed".into() },
                EventTenant { name: "globex".into(), reason: "globex: health check failed".into() },
            ]
        );
        assert_eq!(got[0].id.len(), 20);
        // The same transition in another policy is another event.
        let other = events_of("fleet", "staging", &record, &notes, |_| String::new(), &t(T0));
        assert_ne!(other[0].id, got[0].id);
    }

    #[test]
    fn the_outbox_keeps_the_newest_events() {
        let old: Vec<RolloutEvent> =
            (0..EVENTS_KEPT).map(|i| ev(&i.to_string(), RolloutEventType::Started, T0)).collect();
        let all = append(&old, vec![ev("new", RolloutEventType::Complete, T0)]);
        assert_eq!(all.len(), EVENTS_KEPT);
        assert_eq!(all[0].id, "1");
        assert_eq!(all.last().unwrap().id, "new");
    }

    #[test]
    fn a_sink_gets_the_oldest_wanted_event_not_yet_delivered_and_nothing_from_before_it_existed() {
        let events = vec![
            ev("old", RolloutEventType::Started, "2026-12-03T09:00:00Z"),
            ev("a", RolloutEventType::Started, "2026-12-03T10:00:01Z"),
            ev("b", RolloutEventType::GatePassed, "2026-12-03T10:00:02Z"),
            ev("c", RolloutEventType::Halted, "2026-12-03T10:00:03Z"),
        ];
        let now = t("2026-12-03T10:00:05Z");
        let (s, step) = plan(&sink(vec![]), None, &events, &t(T0), &now);
        assert_eq!(step, Step::Send(events[1].clone()));
        assert_eq!(s.since, T0);
        let c = s.current.clone().unwrap();
        assert_eq!((c.id.as_str(), c.attempts, c.state), ("a", 1, AttemptState::Sending));
        let s = after(s, &Outcome::Delivered, Duration::from_secs(2), &now);
        assert_eq!(s.deliveries[0].result, DeliveryResult::Delivered);
        let (_, step) = plan(&sink(vec![]), Some(&s), &events, &t(T0), &now);
        assert_eq!(step, Step::Send(events[2].clone()));
        // A sink that only wants halts skips the rest.
        let (_, step) = plan(&sink(vec![RolloutEventType::Halted]), Some(&s), &events, &t(T0), &now);
        assert_eq!(step, Step::Send(events[3].clone()));
    }

    #[test]
    fn a_failed_attempt_waits_with_backoff_then_goes_again_and_gives_up_after_the_last() {
        let events = vec![ev("a", RolloutEventType::Halted, "2026-12-03T10:00:01Z")];
        let base = Duration::from_secs(2);
        let mut now = t("2026-12-03T10:00:02Z");
        let (mut s, mut step) = plan(&sink(vec![]), None, &events, &t(T0), &now);
        let mut waits = Vec::new();
        for attempt in 1..=MAX_ATTEMPTS {
            assert_eq!(step, Step::Send(events[0].clone()), "attempt {attempt}");
            assert_eq!(s.current.as_ref().unwrap().attempts, attempt);
            s = after(s, &Outcome::Retry("connection refused".into()), base, &now);
            if attempt == MAX_ATTEMPTS {
                break;
            }
            let c = s.current.clone().unwrap();
            assert_eq!((c.state, c.last_error.as_deref()), (AttemptState::Retrying, Some("connection refused")));
            let (s2, wait) = plan(&sink(vec![]), Some(&s), &events, &t(T0), &now);
            let Step::Wait(w) = wait else { panic!("{wait:?}") };
            waits.push(w.as_secs());
            now = now.checked_add(jiff::SignedDuration::try_from(w).unwrap()).unwrap();
            (s, step) = plan(&sink(vec![]), Some(&s2), &events, &t(T0), &now);
        }
        assert_eq!(waits, vec![2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert!(s.current.is_none());
        assert_eq!(s.deliveries[0].result, DeliveryResult::GaveUp);
        assert_eq!(s.deliveries[0].attempts, MAX_ATTEMPTS);
        let (_, step) = plan(&sink(vec![]), Some(&s), &events, &t(T0), &now);
        assert_eq!(step, Step::Idle);
    }

    #[test]
    fn an_attempt_cut_short_by_a_stop_is_never_sent_again() {
        let events = vec![
            ev("a", RolloutEventType::Started, "2026-12-03T10:00:01Z"),
            ev("b", RolloutEventType::Complete, "2026-12-03T10:00:02Z"),
        ];
        let now = t("2026-12-03T10:00:03Z");
        let (s, _) = plan(&sink(vec![]), None, &events, &t(T0), &now);
        // The process stopped here: the recorded status says Sending.
        let (s, step) = plan(&sink(vec![]), Some(&s), &events, &t(T0), &now);
        assert_eq!(s.deliveries[0].id, "a");
        assert_eq!(s.deliveries[0].result, DeliveryResult::Unknown);
        assert_eq!(step, Step::Send(events[1].clone()));
    }

    #[test]
    fn a_refusal_is_final_and_deliveries_of_dropped_events_are_forgotten() {
        let events = vec![ev("a", RolloutEventType::Started, "2026-12-03T10:00:01Z")];
        let now = t("2026-12-03T10:00:03Z");
        let (s, _) = plan(&sink(vec![]), None, &events, &t(T0), &now);
        let s = after(s, &outcome_of_status(404), Duration::from_secs(2), &now);
        assert_eq!(s.deliveries[0].result, DeliveryResult::GaveUp);
        let (s, step) = plan(&sink(vec![]), Some(&s), &[], &t(T0), &now);
        assert_eq!(step, Step::Idle);
        assert!(s.deliveries.is_empty());
    }

    #[test]
    fn http_answers_are_sorted_by_what_to_do() {
        assert_eq!(outcome_of_status(204), Outcome::Delivered);
        for code in [408, 429, 500, 503] {
            assert!(matches!(outcome_of_status(code), Outcome::Retry(_)), "{code}");
        }
        for code in [301, 400, 403, 404, 410] {
            assert!(matches!(outcome_of_status(code), Outcome::Refused(_)), "{code}");
        }
    }

    #[test]
    fn bodies_carry_the_event_and_slack_text_is_escaped() {
        let mut e = ev("a", RolloutEventType::Halted, T0);
        e.message = "2 failed <here> & more".into();
        e.tenants = vec![EventTenant { name: "acme".into(), reason: "HealthCheckFailed".into() }];
        let g = body(NotificationFormat::Generic, "fleet", "prod", &e);
        assert_eq!(g["type"], "Halted");
        assert_eq!(g["policy"], "prod");
        assert_eq!(g["tenants"][0]["name"], "acme");
        let s = body(NotificationFormat::Slack, "fleet", "prod", &e);
        assert_eq!(s["text"], "Rollout halted: fleet/prod channel stable @ aaaaaaaaaaaa");
        let detail = s["blocks"][1]["text"]["text"].as_str().unwrap();
        assert_eq!(detail, "2 failed &lt;here&gt; &amp; more\n• `acme`: HealthCheckFailed");
    }
}
