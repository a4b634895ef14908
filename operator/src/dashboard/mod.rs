//! `kubectl fleet dashboard`: a web page on 127.0.0.1 that shows the fleet live and acts on it
//! with the user's own kubeconfig (the Argo Rollouts model: every viewer sees and does only what
//! their RBAC allows, which is why it runs on the user's machine and not inside the operator).
//!
//! One watch per kind (Tenants, RolloutPolicies, ImageChannels, Events) feeds shared stores; the
//! page reads aggregates of them ([`view`]) and is told of changes over server-sent events, so an
//! open page or a refresh costs the API server nothing. Objects are trimmed as they arrive:
//! managedFields and annotations dropped, env values blanked, so no secret is even held.
//!
//! Safety of the local server: only `Host: 127.0.0.1:<port>` or `localhost:<port>` is served (a
//! DNS-rebinding page gets 421); writes need the page's CSRF token, a same-origin `Origin`, and a
//! JSON body; abort and emergency need `confirm: true`; `--read-only` refuses every write. Every
//! answer carries a strict Content-Security-Policy; the assets are compiled in (no CDN, no font).

pub mod view;

use crate::crd::{ImageChannel, RolloutPolicy, Tenant};
use crate::plugin::{self, Action};
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::Event;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq as _;

/// The page.
const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../../assets/dashboard/app.css");
const FAVICON_SVG: &str = include_str!("../../assets/dashboard/favicon.svg");

/// Nothing but the page's own files: no inline script or style, no other origin, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The header the page sends its token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// At most this many change notices a second reach a page (changes in between are coalesced).
const NOTICE_INTERVAL: Duration = Duration::from_millis(250);

/// How the dashboard runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The namespace it shows and acts in.
    pub namespace: String,
    /// Refuse every write; the page shows no buttons.
    pub read_only: bool,
}

/// The shared stores.
#[derive(Clone)]
struct Stores {
    tenants: Store<Tenant>,
    policies: Store<RolloutPolicy>,
    channels: Store<ImageChannel>,
    events: Store<Event>,
}

struct Shared {
    client: kube::Client,
    options: Options,
    stores: Stores,
    samples: Mutex<view::Samples>,
    /// `kind → message` for each watch that is failing now.
    problems: Mutex<BTreeMap<&'static str, String>>,
    changes: tokio::sync::watch::Sender<u64>,
    /// Watches that have listed once, or failed to (each counted once).
    settled: tokio::sync::watch::Sender<usize>,
    csrf: String,
    /// `Host` values served (`127.0.0.1:<port>`, `localhost:<port>`); set once bound.
    hosts: Vec<String>,
}

type AppState = Arc<Shared>;

/// A running dashboard.
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Ends when the server stops (after `shutdown`).
    pub done: tokio::task::JoinHandle<()>,
}

/// Blanks what must never reach the page or even the store: env values, annotations (the
/// last-applied configuration holds the whole spec), managedFields.
fn trim_tenant(t: &mut Tenant) {
    t.managed_fields_mut().clear();
    t.annotations_mut().clear();
    for e in &mut t.spec.container.env {
        e.value.clear();
    }
}

fn trim_meta<K: Resource>(k: &mut K) {
    k.managed_fields_mut().clear();
    k.annotations_mut().clear();
}

/// Watches `api` into a store, recording each failure as a problem and each change as a notice.
fn watch<K>(
    api: Api<K>,
    kind: &'static str,
    config: watcher::Config,
    trim: fn(&mut K),
    shared: std::sync::Weak<Shared>,
    writer: reflector::store::Writer<K>,
    mut on_apply: impl FnMut(&Shared, &K) + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let stream = watcher(api, config).default_backoff().modify(trim).reflect(writer);
    async move {
        let mut stream = std::pin::pin!(stream);
        let mut settled = false;
        while let Some(ev) = stream.next().await {
            let Some(shared) = shared.upgrade() else { return };
            if !settled && matches!(ev, Ok(watcher::Event::InitDone) | Err(_)) {
                settled = true;
                shared.settled.send_modify(|n| *n += 1);
            }
            match ev {
                Ok(ev) => {
                    shared.problems.lock().map(|mut p| p.remove(kind)).ok();
                    if let watcher::Event::Apply(k) | watcher::Event::InitApply(k) = &ev {
                        on_apply(&shared, k);
                    }
                    if !matches!(ev, watcher::Event::InitApply(_)) {
                        shared.changes.send_modify(|n| *n += 1);
                    }
                }
                Err(e) => {
                    let message = match &e {
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => {
                            format!("{} ({})", s.message, s.code)
                        }
                        other => other.to_string(),
                    };
                    shared.problems.lock().map(|mut p| p.insert(kind, message)).ok();
                    shared.changes.send_modify(|n| *n += 1);
                }
            }
        }
    }
}

/// The watches of [`serve`]: tenants, policies, channels, events.
const WATCHES: usize = 4;
/// The longest [`serve`] waits for the watches' first lists before it answers anyway.
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Binds `addr` (a loopback address) and serves the dashboard until `shutdown` resolves, once its
/// watches have listed.
pub async fn serve(
    addr: SocketAddr,
    client: kube::Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<Served> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the dashboard listens on loopback only"));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let ns = options.namespace.clone();
    let (treader, twriter) = reflector::store();
    let (preader, pwriter) = reflector::store();
    let (creader, cwriter) = reflector::store();
    let (ereader, ewriter) = reflector::store();
    let csrf = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let shared = Arc::new(Shared {
        client: client.clone(),
        options,
        stores: Stores { tenants: treader, policies: preader, channels: creader, events: ereader },
        samples: Mutex::new(view::Samples::default()),
        problems: Mutex::new(BTreeMap::new()),
        changes: tokio::sync::watch::channel(0).0,
        settled: tokio::sync::watch::channel(0).0,
        csrf,
        hosts: vec![format!("127.0.0.1:{}", bound.port()), format!("localhost:{}", bound.port())],
    });
    let weak = Arc::downgrade(&shared);
    let config = watcher::Config::default();
    let watches = futures::future::join4(
        watch(
            Api::<Tenant>::namespaced(client.clone(), &ns),
            "tenants",
            config.clone(),
            trim_tenant,
            weak.clone(),
            twriter,
            |s, t| {
                if let Ok(mut samples) = s.samples.lock() {
                    samples.record(t);
                }
            },
        ),
        watch(
            Api::<RolloutPolicy>::namespaced(client.clone(), &ns),
            "rolloutpolicies",
            config.clone(),
            trim_meta,
            weak.clone(),
            pwriter,
            |_, _| {},
        ),
        watch(
            Api::<ImageChannel>::namespaced(client.clone(), &ns),
            "imagechannels",
            config.clone(),
            trim_meta,
            weak.clone(),
            cwriter,
            |_, _| {},
        ),
        watch(Api::<Event>::namespaced(client, &ns), "events", config, trim_meta, weak, ewriter, |_, _| {}),
    );
    let mut settled = shared.settled.subscribe();
    let app = router(shared);
    let watching = tokio::spawn(watches);
    // Served once every watch has listed (or failed to, which the page shows): a page opened
    // before would find an empty fleet, or no such policy.
    let _ = tokio::time::timeout(SYNC_WAIT, settled.wait_for(|n| *n >= WATCHES)).await;
    let done = tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
        watching.abort();
    });
    Ok(Served { addr: bound, done })
}

fn router(shared: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/favicon.svg", get(|| async { asset("image/svg+xml", FAVICON_SVG) }))
        .route("/api/summary", get(summary))
        .route("/api/tenants", get(tenants))
        .route("/api/tenants/{name}", get(tenant))
        .route("/api/policies/{name}", get(policy))
        .route("/api/channels/{name}", get(channel))
        .route("/api/stream", get(stream))
        .route("/api/actions", post(act))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Every answer: only for our own Host, with the security headers.
async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let mut res = if s.hosts.iter().any(|h| h == host) {
        next.run(req).await
    } else {
        (StatusCode::MISDIRECTED_REQUEST, "this dashboard answers only at its own loopback address").into_response()
    };
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    res
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index(State(s): State<AppState>) -> Response {
    let page = INDEX_HTML
        .replace("{{csrf}}", &s.csrf)
        .replace("{{namespace}}", &html_escape(&s.options.namespace))
        .replace("{{readonly}}", if s.options.read_only { "true" } else { "false" });
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

fn problems(s: &Shared) -> Vec<String> {
    s.problems.lock().map(|p| p.iter().map(|(k, v)| format!("{k}: {v}")).collect()).unwrap_or_default()
}

async fn summary(State(s): State<AppState>) -> Response {
    let (ts, ps, cs) = (s.stores.tenants.state(), s.stores.policies.state(), s.stores.channels.state());
    let ts: Vec<&Tenant> = ts.iter().map(|t| &**t).collect();
    let ps: Vec<&RolloutPolicy> = ps.iter().map(|p| &**p).collect();
    let cs: Vec<&ImageChannel> = cs.iter().map(|c| &**c).collect();
    let now = jiff::Timestamp::now();
    axum::Json(view::summary(&s.options.namespace, s.options.read_only, &ts, &ps, &cs, problems(&s), now))
        .into_response()
}

async fn tenants(State(s): State<AppState>, Query(f): Query<view::Filter>) -> Response {
    let ts = s.stores.tenants.state();
    axum::Json(view::tenants_page(ts.iter().map(|t| &**t), &f)).into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({"error": format!("{what} not found")}))).into_response()
}

async fn tenant(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(t) = s.stores.tenants.state().into_iter().find(|t| t.name_any() == name) else {
        return not_found(&format!("tenant {name}"));
    };
    let events = s.stores.events.state();
    axum::Json(view::tenant(&t, events.iter().map(|e| &**e))).into_response()
}

async fn policy(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(p) = s.stores.policies.state().into_iter().find(|p| p.name_any() == name) else {
        return not_found(&format!("rolloutpolicy {name}"));
    };
    let ts = s.stores.tenants.state();
    let ts: Vec<&Tenant> = ts.iter().map(|t| &**t).collect();
    let detail = match s.samples.lock() {
        Ok(samples) => view::policy(&p, &ts, &samples, jiff::Timestamp::now()),
        Err(_) => view::policy(&p, &ts, &view::Samples::default(), jiff::Timestamp::now()),
    };
    axum::Json(detail).into_response()
}

async fn channel(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(c) = s.stores.channels.state().into_iter().find(|c| c.name_any() == name) else {
        return not_found(&format!("imagechannel {name}"));
    };
    let ts = s.stores.tenants.state();
    let ts: Vec<&Tenant> = ts.iter().map(|t| &**t).collect();
    let events = s.stores.events.state();
    axum::Json(view::channel(&c, &ts, events.iter().map(|e| &**e))).into_response()
}

/// Server-sent events: `change` with a counter each time a store changed (at most every
/// [`NOTICE_INTERVAL`]); the page then reads what it shows again, from the stores.
async fn stream(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.changes.subscribe();
    let notices = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first {
            rx.changed().await.ok()?;
            tokio::time::sleep(NOTICE_INTERVAL).await;
        }
        let n = *rx.borrow_and_update();
        Some((Ok(SseEvent::default().event("change").data(n.to_string())), (rx, false)))
    });
    Sse::new(notices).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A write from the page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionRequest {
    action: Action,
    #[serde(default)]
    confirm: bool,
}

fn refuse(code: StatusCode, message: impl Into<String>) -> Response {
    (code, axum::Json(json!({"error": message.into(), "code": code.as_u16()}))).into_response()
}

async fn act(State(s): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if s.options.read_only {
        return refuse(StatusCode::FORBIDDEN, "this dashboard is read-only (--read-only)");
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).unwrap_or_default();
    if !s.hosts.iter().any(|h| origin == format!("http://{h}")) {
        return refuse(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    let token = headers.get(CSRF_HEADER).map(|t| t.as_bytes()).unwrap_or_default();
    if !bool::from(token.ct_eq(s.csrf.as_bytes())) {
        return refuse(StatusCode::FORBIDDEN, "missing or wrong CSRF token: reload the page");
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !json_body {
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the body must be application/json");
    }
    let req: ActionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("not an action: {e}")),
    };
    if req.action.needs_confirmation() && !req.confirm {
        return refuse(StatusCode::BAD_REQUEST, "this action needs confirm: true");
    }
    match plugin::perform(&s.client, &s.options.namespace, &req.action).await {
        Ok(message) => (StatusCode::OK, axum::Json(json!({"message": message}))).into_response(),
        Err(crate::controller::Error::Kube(kube::Error::Api(e))) => {
            let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::BAD_GATEWAY);
            refuse(code, format!("the API server said {} {}: {}", e.code, e.reason, e.message))
        }
        Err(crate::controller::Error::InvalidRequest(m)) => refuse(StatusCode::BAD_REQUEST, m),
        Err(e) => refuse(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}
