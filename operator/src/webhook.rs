//! The registry webhook: `POST /webhook/<namespace>/<channel>` makes the channel resolve its tag now.
//!
//! The caller authenticates with the channel's own token (`spec.webhook.tokenSecretRef`, a Secret in
//! the channel's namespace), sent as `Authorization: Bearer <token>` or `X-Webhook-Token: <token>`
//! and compared in constant time. The body is capped ([`MAX_BODY_BYTES`], 413 beyond) and never read
//! for meaning: a call only triggers a resolve, it never carries a digest the operator trusts.
//!
//! The trigger is an annotation ([`RESOLVE_REQUEST_ANNOTATION`]) written on the channel. Any replica
//! can serve the webhook (leader or not); the channel controller of the leader sees the change
//! through its watch and resolves at once when the annotation differs from the one its last resolve
//! saw (see `controller::channel`). Nothing else on the channel changes.
//!
//! Answers: 202 resolve requested; 401 token missing or wrong (or the token Secret is missing or
//! empty: no token can match); 404 malformed names, no such channel, or a channel without a webhook;
//! 413 body too large; 503 the API server could not be asked (or too many calls are being checked
//! at once, [`MAX_CONCURRENT_LOOKUPS`]). No answer says more than its status.

use crate::crd::ImageChannel;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

/// Largest body accepted; the body is read (so the connection stays usable) but never interpreted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Annotation the webhook writes on the channel: a fresh value asks for a resolve now.
pub const RESOLVE_REQUEST_ANNOTATION: &str = "fleet.molecule.ai/resolve-requested-at";
/// Header carrying the token when `Authorization` is not used.
pub const TOKEN_HEADER: &str = "x-webhook-token";
/// Field manager of the annotation.
pub const WEBHOOK_MANAGER: &str = "tenant-operator-webhook";
/// Calls being checked against the API server at once; beyond, 503 at once (a flood of calls with
/// made-up tokens must not become a flood of API requests).
pub const MAX_CONCURRENT_LOOKUPS: usize = 16;
/// How long one call may take with the API server.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
struct WebhookState {
    client: kube::Client,
    lookups: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The webhook's routes (only `POST /webhook/{namespace}/{channel}`).
pub fn router(client: kube::Client) -> Router {
    Router::new()
        .route("/webhook/{namespace}/{channel}", axum::routing::post(hook))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(WebhookState {
            client,
            lookups: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS)),
        })
}

/// Binds `addr` and serves the webhook in the background until `shutdown` resolves; returns the
/// bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(client);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            warn!(error = %e, "webhook listener stopped");
        }
    });
    info!(addr = %bound, "registry webhook listening");
    Ok(bound)
}

/// A Kubernetes object name (DNS subdomain, at most 253 characters).
fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A namespace name (DNS label).
fn valid_namespace(s: &str) -> bool {
    valid_name(s, 63) && !s.contains('.')
}

/// The token the caller presented: `Authorization: Bearer <token>` first, else `X-Webhook-Token`.
fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        let (scheme, rest) = v.split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
    });
    bearer.or_else(|| headers.get(TOKEN_HEADER).map(|v| v.as_bytes())).map(|t| t.trim_ascii()).filter(|t| !t.is_empty())
}

/// Constant-time comparison of the presented token with the expected one. Both are hashed first so
/// neither the content nor the length of the expected token shows in the timing; an empty expected
/// token never matches.
fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    let expected = expected.trim_ascii();
    if expected.is_empty() {
        return false;
    }
    let a = Sha256::digest(presented);
    let b = Sha256::digest(expected);
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

async fn hook(
    State(state): State<WebhookState>,
    Path((namespace, channel)): Path<(String, String)>,
    headers: HeaderMap,
    // Read (and capped by `DefaultBodyLimit`: 413 beyond) but never interpreted.
    _body: Bytes,
) -> StatusCode {
    if !valid_namespace(&namespace) || !valid_name(&channel, 253) {
        return StatusCode::NOT_FOUND;
    }
    let Some(token) = presented_token(&headers) else {
        return StatusCode::UNAUTHORIZED;
    };
    let Ok(_permit) = state.lookups.try_acquire() else {
        warn!(namespace, channel, "webhook: too many calls at once; refused");
        return StatusCode::SERVICE_UNAVAILABLE;
    };
    let work = authorize_and_request(&state.client, &namespace, &channel, token);
    match tokio::time::timeout(LOOKUP_TIMEOUT, work).await {
        Ok(Ok(code)) => code,
        Err(_) => {
            warn!(namespace, channel, "webhook: the API server did not answer in time");
            StatusCode::SERVICE_UNAVAILABLE
        }
        Ok(Err(e)) => {
            warn!(namespace, channel, error = %e, "webhook: the API server could not be asked");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

async fn authorize_and_request(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    token: &[u8],
) -> Result<StatusCode, kube::Error> {
    let channels: Api<ImageChannel> = Api::namespaced(client.clone(), namespace);
    let Some(channel) = channels.get_opt(name).await? else {
        return Ok(StatusCode::NOT_FOUND);
    };
    let Some(hook) = channel.spec.webhook.as_ref() else {
        return Ok(StatusCode::NOT_FOUND);
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let expected = secrets
        .get_opt(&hook.token_secret_ref.name)
        .await?
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(&hook.token_secret_ref.key));
    let Some(expected) = expected else {
        warn!(namespace, channel = name, "webhook: the token Secret or its key is missing; refused");
        return Ok(StatusCode::UNAUTHORIZED);
    };
    if !token_matches(token, &expected.0) {
        warn!(namespace, channel = name, "webhook: wrong token; refused");
        return Ok(StatusCode::UNAUTHORIZED);
    }
    let stamp = jiff::Timestamp::now().to_string();
    let patch = json!({"metadata": {"annotations": {RESOLVE_REQUEST_ANNOTATION: stamp}}});
    channels.patch(name, &PatchParams::apply(WEBHOOK_MANAGER), &Patch::Merge(&patch)).await?;
    info!(namespace, channel = name, "webhook: resolve requested");
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn tokens_come_from_either_header() {
        assert_eq!(presented_token(&headers(&[("authorization", "Bearer abc")])), Some(&b"abc"[..]));
        assert_eq!(presented_token(&headers(&[("authorization", "bearer  abc ")])), Some(&b"abc"[..]));
        assert_eq!(presented_token(&headers(&[("x-webhook-token", "xyz")])), Some(&b"xyz"[..]));
        assert_eq!(presented_token(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(presented_token(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(presented_token(&headers(&[])), None);
    }

    #[test]
    fn tokens_match_only_exactly_and_never_empty() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(token_matches(b"s3cret", b"s3cret\n"));
        assert!(!token_matches(b"s3cret", b"s3cre"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"", b""));
        assert!(!token_matches(b"x", b"  "));
    }

    #[test]
    fn names_are_validated_before_any_lookup() {
        assert!(valid_namespace("fleet"));
        assert!(!valid_namespace("a.b"));
        assert!(!valid_namespace("Fleet"));
        assert!(valid_name("stable.v1", 253));
        assert!(!valid_name("..", 253));
        assert!(!valid_name("-a", 253));
        assert!(!valid_name("a/b", 253));
        assert!(!valid_name(&"a".repeat(254), 253));
    }

    /// A stand-in API server that never answers, and how many requests reached it.
    fn silent_api_server() -> (kube::Client, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = asked.clone();
        let service = tower::service_fn(move |_req: axum::http::Request<kube::client::Body>| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            futures::future::pending::<Result<axum::http::Response<kube::client::Body>, std::convert::Infallible>>()
        });
        (kube::Client::new(service, "default"), asked)
    }

    async fn call(app: &Router, method: &str, path: &str, headers: &[(Vec<u8>, Vec<u8>)], body: Vec<u8>) -> StatusCode {
        use tower::ServiceExt;
        let mut req = axum::http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(k.as_slice(), v.as_slice());
        }
        let req = req.body(axum::body::Body::from(body)).expect("a request");
        app.clone().oneshot(req).await.map(|r| r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Every byte but the unreserved ones percent-encoded: the path carries any segment as sent.
    fn encoded(segment: &[u8]) -> String {
        segment
            .iter()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (*b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]
        /// Hostile paths, headers and bodies: a plain refusal, never a panic, a 5xx or an accepted
        /// call, and not one request to the API server, unless the names are a namespace and a
        /// channel name and a token was presented (those would be looked up: not generated here).
        #[test]
        fn hostile_paths_headers_and_bodies_are_refused_without_asking_the_api_server(
            method in proptest::sample::select(vec!["POST", "GET", "PUT", "DELETE", "OPTIONS"]),
            ns in proptest::prop_oneof![
                proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..80),
                "[a-zA-Z0-9./%-]{0,70}".prop_map(String::into_bytes),
                proptest::sample::select(vec!["..", ".", "..%2F..", "fleet/x", "FLEET", "a\u{0}b", "a.b"]).prop_map(|s| s.as_bytes().to_vec()),
                Just(vec![b'x'; 64]),
            ],
            channel in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..300),
            extra_segment in proptest::option::of("[a-z]{1,5}"),
            token in proptest::option::of(proptest::prop_oneof![
                proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..100),
                "Bearer [ -~]{0,40}".prop_map(String::into_bytes),
            ]),
            header_name in proptest::sample::select(vec!["authorization", "x-webhook-token", "x-other"]),
            big_body in proptest::bool::weighted(0.1),
        ) {
            let ns_text = String::from_utf8(ns.clone()).ok();
            let ch_text = String::from_utf8(channel.clone()).ok();
            let names_valid = ns_text.as_deref().is_some_and(valid_namespace)
                && ch_text.as_deref().is_some_and(|c| valid_name(c, 253))
                && extra_segment.is_none();
            let token_sent = token.is_some() && header_name != "x-other";
            proptest::prop_assume!(!(names_valid && token_sent && method == "POST"));
            let mut path = format!("/webhook/{}/{}", encoded(&ns), encoded(&channel));
            if let Some(x) = &extra_segment {
                path = format!("{path}/{x}");
            }
            let headers: Vec<(Vec<u8>, Vec<u8>)> = token
                .iter()
                .filter(|t| axum::http::HeaderValue::from_bytes(t).is_ok())
                .map(|t| (header_name.as_bytes().to_vec(), t.clone()))
                .collect();
            let body = if big_body { vec![b'{'; MAX_BODY_BYTES + 1] } else { b"{\"events\":[]}".to_vec() };
            let (status, asked) = runtime().block_on(async {
                // The client's buffer task needs the runtime: made inside it.
                let (client, asked) = silent_api_server();
                let status = call(&router(client), method, &path, &headers, body).await;
                (status, asked.load(std::sync::atomic::Ordering::SeqCst))
            });
            proptest::prop_assert!(
                [400, 401, 404, 405, 413].contains(&status.as_u16()),
                "{method} {path}: {status}"
            );
            proptest::prop_assert_eq!(asked, 0, "{} {}", method, path);
        }
    }

    #[test]
    fn calls_beyond_the_cap_are_refused_at_once_and_never_reach_the_api_server() {
        runtime().block_on(async {
            let (client, asked) = silent_api_server();
            let app = router(client);
            let token = vec![(b"authorization".to_vec(), b"Bearer made-up".to_vec())];
            let path = "/webhook/fleet/stable";
            let mut held = Vec::new();
            for _ in 0..MAX_CONCURRENT_LOOKUPS {
                let (app, token) = (app.clone(), token.clone());
                held.push(tokio::spawn(async move { call(&app, "POST", path, &token, Vec::new()).await }));
            }
            // Every permitted call is with the API server (which does not answer).
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while asked.load(std::sync::atomic::Ordering::SeqCst) < MAX_CONCURRENT_LOOKUPS {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} calls reached the API server",
                    asked.load(std::sync::atomic::Ordering::SeqCst)
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            // One more: refused at once, and it asked nothing.
            let refused =
                tokio::time::timeout(std::time::Duration::from_secs(5), call(&app, "POST", path, &token, Vec::new()))
                    .await
                    .expect("a call beyond the cap waited");
            assert_eq!(refused, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), MAX_CONCURRENT_LOOKUPS);
            // The held calls end (their callers went away): their permits come back.
            for h in &held {
                h.abort();
            }
            for h in held {
                let _ = h.await;
            }
            let again = tokio::spawn({
                let (app, token) = (app.clone(), token.clone());
                async move { call(&app, "POST", path, &token, Vec::new()).await }
            });
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while asked.load(std::sync::atomic::Ordering::SeqCst) <= MAX_CONCURRENT_LOOKUPS {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a call after the others ended never reached the API server"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            again.abort();
        });
    }
}
