//! An HTTP proxy between a client and the real kube-apiserver that misbehaves when told to, the
//! way an API server under load, behind a flaky load balancer or in the middle of an upgrade does:
//!
//! * `409 Conflict` on status writes (`PATCH`/`PUT` of a `/status` subresource);
//! * `429 Too Many Requests` (with `Retry-After`) and `503`/`500` on any request;
//! * watch streams cut in the middle, and watches answered with the `410 Gone` ERROR event the
//!   API server sends when the resourceVersion asked for has been compacted away;
//! * connections closed with no answer at all, before the request reaches the API server or after
//!   it was carried out there;
//! * latency added to every request.
//!
//! Everything else passes through untouched: the client's own bearer token goes to the API server
//! (so the audit log still names the client), and answers (watch streams included) stream back
//! as they come. The client speaks plain HTTP to the proxy on loopback; the proxy speaks TLS to
//! the API server, verifying it with the control plane's CA.

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use futures::StreamExt as _;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A misbehaviour the proxy can put in place of the API server's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// `409 Conflict`: "the object has been modified".
    Conflict,
    /// `429 Too Many Requests` with `Retry-After: 1`.
    TooManyRequests,
    /// `503 Service Unavailable`.
    Unavailable,
    /// `500 Internal Server Error`.
    InternalError,
    /// A watch answered with one `ERROR` event carrying `410 Gone` (reason `Expired`), then closed.
    Gone,
    /// The connection closes with no answer; the request never reached the API server.
    Reset,
    /// The request goes to the API server (a write is carried out), then the connection closes
    /// before its answer comes back: the client cannot tell whether it happened.
    LostAnswer,
}

/// Which requests a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requests {
    /// Every request.
    Any,
    /// `PATCH` or `PUT` of a `/status` subresource.
    StatusWrites,
    /// Writes of any kind (`POST`, `PUT`, `PATCH`, `DELETE`).
    Writes,
    /// Watches (`?watch=true`).
    Watches,
}

impl Requests {
    fn matches(self, method: &Method, path: &str, watch: bool) -> bool {
        let write = matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
        match self {
            Requests::Any => true,
            Requests::StatusWrites => (*method == Method::PATCH || *method == Method::PUT) && path.ends_with("/status"),
            Requests::Writes => write,
            Requests::Watches => watch,
        }
    }
}

struct Rule {
    fault: Fault,
    on: Requests,
    /// Every how many matching requests the fault hits (1: each one).
    every: u32,
    /// Matching requests met so far.
    seen: u32,
    remaining: u32,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    latency: Duration,
    injected: BTreeMap<Fault, u64>,
    forwarded: u64,
    watches: u64,
}

struct Shared {
    state: Mutex<State>,
    upstream: kube::Client,
    cut: watch::Sender<u64>,
}

/// The proxy; it stops when dropped.
pub struct ApiFaults {
    /// Where clients connect (plain HTTP).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiFaults {
    /// Proxies 127.0.0.1:<free port> to the API server at `url` (https), trusting `ca_pem`.
    pub async fn start(url: &str, ca_pem: &[u8]) -> Result<ApiFaults> {
        let ca = std::str::from_utf8(ca_pem).context("the CA is PEM")?;
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "upstream",
            "clusters": [{"name": "upstream", "cluster": {
                "server": url,
                "certificate-authority-data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca)}}],
            "contexts": [{"name": "upstream", "context": {"cluster": "upstream", "user": "nobody"}}],
            "users": [{"name": "nobody", "user": {}}],
        });
        let kubeconfig: kube::config::Kubeconfig = serde_json::from_value(kubeconfig)?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?;
        // Watches are long: the client's own timeouts govern them, not the proxy's.
        config.read_timeout = None;
        let upstream = kube::Client::try_from(config).map_err(|e| anyhow!("a client for {url}: {e}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(0u64);
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), upstream, cut });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, s.clone()));
            }
        });
        Ok(ApiFaults { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client configuration for the proxy, authenticating with `token` (a ServiceAccount's).
    pub async fn config_with_token(&self, token: &str) -> Result<kube::Config> {
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "faulty",
            "clusters": [{"name": "faulty", "cluster": {"server": self.url()}}],
            "contexts": [{"name": "faulty", "context": {"cluster": "faulty", "user": "token"}}],
            "users": [{"name": "token", "user": {"token": token}}],
        });
        let kubeconfig: kube::config::Kubeconfig = serde_json::from_value(kubeconfig)?;
        Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?)
    }

    /// Answers the next `times` requests matching `on` with `fault` instead of the API server's
    /// answer (rules apply in the order given; each request meets at most one).
    pub fn inject(&self, fault: Fault, on: Requests, times: u32) {
        self.inject_every(fault, on, 1, times);
    }

    /// Answers every `every`-th request matching `on` with `fault`, `times` times in all: faults
    /// spread over whatever the client does next instead of a burst at once.
    pub fn inject_every(&self, fault: Fault, on: Requests, every: u32, times: u32) {
        self.lock().rules.push(Rule { fault, on, every: every.max(1), seen: 0, remaining: times });
    }

    /// Drops every rule not served yet.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// Delays every request by `latency` before it goes on (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Ends every watch stream open now, abruptly (the client sees its stream break).
    pub fn cut_watches(&self) {
        self.shared.cut.send_modify(|e| *e += 1);
    }

    /// How many requests met `fault` so far.
    pub fn injected(&self, fault: Fault) -> u64 {
        self.lock().injected.get(&fault).copied().unwrap_or(0)
    }

    /// Whether every injected fault has been served.
    pub fn all_served(&self) -> bool {
        self.lock().rules.iter().all(|r| r.remaining == 0)
    }

    /// Requests passed on to the API server so far.
    pub fn forwarded(&self) -> u64 {
        self.lock().forwarded
    }

    /// Watches passed on to the API server so far (a positive signal that clients watch again).
    pub fn watches(&self) -> u64 {
        self.lock().watches
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ApiFaults {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One client connection: HTTP/1.1, until the client closes it or a `Reset` closes it unanswered.
async fn serve(sock: tokio::net::TcpStream, shared: Arc<Shared>) {
    let (reset, mut resets) = mpsc::channel::<()>(1);
    let svc = hyper::service::service_fn(move |req| handle(shared.clone(), reset.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(sock), svc);
    tokio::select! {
        _ = conn => {}
        // Dropping the connection closes the socket with the request unanswered.
        _ = resets.recv() => {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    reset: mpsc::Sender<()>,
    req: Request<Incoming>,
) -> std::result::Result<Response<ProxyBody>, Infallible> {
    let path = req.uri().path().to_string();
    let watch = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let (fault, latency) = {
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut fault = None;
        for r in st.rules.iter_mut().filter(|r| r.remaining > 0 && r.on.matches(req.method(), &path, watch)) {
            r.seen += 1;
            if fault.is_none() && r.seen % r.every == 0 {
                r.remaining -= 1;
                fault = Some(r.fault);
            }
        }
        match fault {
            Some(f) => *st.injected.entry(f).or_default() += 1,
            None => {
                st.forwarded += 1;
                st.watches += u64::from(watch);
            }
        }
        (fault, st.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let answer = match fault {
        None => return Ok(forward(&shared, req, watch).await),
        Some(Fault::Reset) => {
            let _ = reset.send(()).await;
            return Ok(std::future::pending().await);
        }
        Some(Fault::LostAnswer) => {
            // Read the answer whole (the write is done), then close without passing it on.
            let answer = forward(&shared, req, false).await;
            let _ = answer.into_body().collect().await;
            let _ = reset.send(()).await;
            return Ok(std::future::pending().await);
        }
        Some(Fault::Conflict) => status(
            StatusCode::CONFLICT,
            "Conflict",
            "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
        ),
        Some(Fault::TooManyRequests) => {
            let mut r =
                status(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "too many requests, please try again later");
            r.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            r
        }
        Some(Fault::Unavailable) => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ),
        Some(Fault::InternalError) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "an error on the server prevented the request from succeeding",
        ),
        Some(Fault::Gone) if watch => {
            let event = serde_json::json!({"type": "ERROR", "object": status_body(410, "Expired",
                "too old resource version: 1 (2)")});
            let mut line = event.to_string().into_bytes();
            line.push(b'\n');
            json_response(StatusCode::OK, line)
        }
        Some(Fault::Gone) => status(StatusCode::GONE, "Expired", "the resourceVersion asked for is too old"),
    };
    Ok(answer)
}

fn status_body(code: u16, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<ProxyBody> {
    json_response(code, status_body(code.as_u16(), reason, message).to_string().into_bytes())
}

fn json_response(code: StatusCode, body: Vec<u8>) -> Response<ProxyBody> {
    let mut r =
        Response::new(Full::new(Bytes::from(body)).map_err(|e: Infallible| -> BoxError { match e {} }).boxed_unsync());
    *r.status_mut() = code;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// Headers that belong to one hop (RFC 9110 7.6.1) or that the next hop sets itself.
fn hop_by_hop(name: &http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

async fn forward(shared: &Shared, req: Request<Incoming>, watch: bool) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &format!("reading the request: {e}")),
    };
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut up = Request::builder().method(parts.method.clone()).uri(target);
    for (name, value) in parts.headers.iter().filter(|(n, _)| !hop_by_hop(n)) {
        up = up.header(name, value);
    }
    let up = match up.body(kube::client::Body::from(body)) {
        Ok(r) => r,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &format!("the request: {e}")),
    };
    let resp = match shared.upstream.send(up).await {
        Ok(r) => r,
        Err(e) => {
            return status(StatusCode::BAD_GATEWAY, "InternalError", &format!("the API server did not answer: {e}"));
        }
    };
    let (mut parts, body) = resp.into_parts();
    let headers = std::mem::take(&mut parts.headers);
    let mut name = None;
    for (n, v) in headers {
        name = n.or(name);
        if let Some(n) = name.as_ref().filter(|n| !hop_by_hop(n)) {
            parts.headers.append(n.clone(), v);
        }
    }
    let frames = http_body_util::BodyStream::new(body).map(|f| f.map_err(|e| -> BoxError { Box::new(e) }));
    let body: ProxyBody = if watch {
        let mut cut = shared.cut.subscribe();
        cut.borrow_and_update();
        let frames: futures::stream::BoxStream<'static, std::result::Result<Frame<Bytes>, BoxError>> = frames.boxed();
        let stream = futures::stream::unfold(Some((frames, cut)), |st| async move {
            let (mut frames, mut cut) = st?;
            tokio::select! {
                f = frames.next() => f.map(|f| (f, Some((frames, cut)))),
                _ = cut.changed() => Some((Err::<Frame<Bytes>, BoxError>("the watch was cut".into()), None)),
            }
        });
        BodyExt::boxed_unsync(StreamBody::new(stream))
    } else {
        BodyExt::boxed_unsync(StreamBody::new(frames))
    };
    Response::from_parts(parts, body)
}
