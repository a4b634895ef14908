//! The Kubernetes client the operator runs with: kube's own client stack, with every request
//! counted by verb, resource and answer (`tenant_operator_kube_requests_total`), each attempt on
//! its own. kube's retry of `429`/`503`/`504` (honouring `Retry-After`) sits outside the count, so
//! a request the API server throttled twice and then served counts three times: twice `429`,
//! once `200`.

use crate::metrics::{KubeRequestLabels, Metrics};
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use kube::client::{Body, ClientBuilder, retry::RetryPolicy};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::buffer::BufferLayer;
use tower::retry::RetryLayer;
use tower::{Layer, Service};

/// A client for `config` whose requests are counted in `metrics`.
pub fn client(mut config: kube::Config, metrics: Arc<Metrics>) -> Result<kube::Client, kube::Error> {
    // The same retry kube puts in by default, moved outside the count.
    config.default_retry = false;
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&Count { metrics })
        // The retry clones the service below it (kube's stack is boxed, not Clone).
        .with_layer(&BufferLayer::new(1024))
        .with_layer(&RetryLayer::new(RetryPolicy::server_retry()))
        .build())
}

/// A client for the configuration kube infers (in-cluster, or `KUBECONFIG`), counted.
pub async fn infer(metrics: Arc<Metrics>) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    client(config, metrics)
}

/// The labels of one request: its verb and resource from the method and path the way the API
/// server names them, and the answer.
pub fn labels(method: &Method, path_and_query: &str, code: Option<u16>) -> KubeRequestLabels {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // `/api/v1/...` or `/apis/<group>/<version>/...`; anything else (discovery, /version) is `other`.
    let rest: &[&str] = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => &[],
    };
    // A namespaced path names its namespace first (but `namespaces/<name>` alone is a Namespace).
    let rest = match rest {
        ["namespaces", _ns, r, tail @ ..] => {
            let mut v = vec![*r];
            v.extend(tail);
            v
        }
        other => other.to_vec(),
    };
    let resource = match rest.as_slice() {
        [] => String::new(),
        [r] | [r, _] => (*r).to_string(),
        [r, _, sub, ..] => format!("{r}/{sub}"),
    };
    let collection = rest.len() == 1;
    let watch = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = if resource.is_empty() {
        "other"
    } else {
        match *method {
            Method::GET if watch => "watch",
            Method::GET if collection => "list",
            Method::GET => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if collection => "deletecollection",
            Method::DELETE => "delete",
            _ => "other",
        }
    };
    KubeRequestLabels {
        verb: verb.into(),
        resource: if resource.is_empty() { "other".into() } else { resource },
        code: code.map_or_else(|| "error".into(), |c| c.to_string()),
    }
}

#[derive(Clone)]
struct Count {
    metrics: Arc<Metrics>,
}

impl<S> Layer<S> for Count {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, metrics: self.metrics.clone() }
    }
}

/// The service below the retry: counts each attempt when its answer (or failure) arrives.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<Request<Body>> for Counted<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let method = req.method().clone();
        let target = req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
        let metrics = self.metrics.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await;
            let code = res.as_ref().ok().map(|r| r.status().as_u16());
            metrics.kube_requests.get_or_create(&labels(&method, &target, code)).inc();
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: Method, path: &str) -> (String, String) {
        let l = labels(&method, path, Some(200));
        (l.verb, l.resource)
    }

    #[test]
    fn requests_are_named_the_way_the_api_server_names_them() {
        let t = "/apis/fleet.molecule.ai/v1alpha1/namespaces/prod/tenants";
        let cases = [
            (Method::GET, format!("{t}?labelSelector=a%3Db"), "list", "tenants"),
            (Method::GET, format!("{t}?watch=true&resourceVersion=5&allowWatchBookmarks=true"), "watch", "tenants"),
            (Method::GET, format!("{t}/acme"), "get", "tenants"),
            (Method::PATCH, format!("{t}/acme/status?fieldManager=x&force=true"), "patch", "tenants/status"),
            (Method::PUT, format!("{t}/acme/status"), "update", "tenants/status"),
            (Method::POST, t.to_string(), "create", "tenants"),
            (Method::DELETE, format!("{t}/acme"), "delete", "tenants"),
            (Method::DELETE, t.to_string(), "deletecollection", "tenants"),
            // cluster-wide lists and watches of namespaced kinds
            (Method::GET, "/apis/fleet.molecule.ai/v1alpha1/tenants?watch=1".into(), "watch", "tenants"),
            (Method::GET, "/api/v1/secrets".into(), "list", "secrets"),
            // the core group, and Namespaces themselves
            (Method::GET, "/api/v1/namespaces/prod/secrets/db".into(), "get", "secrets"),
            (Method::POST, "/api/v1/namespaces/prod/events".into(), "create", "events"),
            (Method::GET, "/api/v1/namespaces/prod".into(), "get", "namespaces"),
            (Method::GET, "/api/v1/namespaces".into(), "list", "namespaces"),
            (Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/op/leases/leader".into(), "update", "leases"),
            // discovery and the rest
            (Method::GET, "/version".into(), "other", "other"),
            (Method::GET, "/apis".into(), "other", "other"),
        ];
        for (method, path, verb, resource) in cases {
            assert_eq!(of(method, &path), (verb.to_string(), resource.to_string()), "{path}");
        }
    }

    #[test]
    fn no_answer_is_an_error_code() {
        assert_eq!(labels(&Method::GET, "/api/v1/namespaces/a/secrets/b", None).code, "error");
        assert_eq!(labels(&Method::GET, "/api/v1/namespaces/a/secrets/b", Some(429)).code, "429");
    }
}
