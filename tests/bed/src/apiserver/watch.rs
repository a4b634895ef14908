//! WATCH streams: replay from a resourceVersion out of the type's event log, then live events;
//! BOOKMARKs; in-stream `410 Expired`; closed at `timeoutSeconds`. One compact JSON object per
//! line, each sent as its own chunk as soon as it is produced.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use super::error::ApiError;
use super::handlers::{DEFAULT_WATCH_TIMEOUT, Shape, Target, matches, present, selectors};
use super::selectors::{FieldSelector, LabelSelector};
use super::table;

/// A watch request.
pub(crate) struct Params {
    target: Target,
    labels: LabelSelector,
    fields: FieldSelector,
    /// `None`: start with the current state as ADDED events.
    since: Option<u64>,
    timeout: Duration,
    bookmarks: bool,
    send_initial: bool,
    shape: Shape,
}

impl Params {
    pub(crate) fn from_query(target: Target, query: &HashMap<String, String>, shape: Shape) -> Result<Self, ApiError> {
        let (labels, fields) = selectors(query)?;
        let q = |k: &str| query.get(k).map(String::as_str);
        let since = match q("resourceVersion") {
            None | Some("") | Some("0") => None,
            Some(rv) => {
                Some(rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?)
            }
        };
        let timeout = q("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_WATCH_TIMEOUT);
        Ok(Self {
            target,
            labels,
            fields,
            since,
            timeout,
            bookmarks: q("allowWatchBookmarks") == Some("true"),
            send_initial: q("sendInitialEvents") == Some("true"),
            shape,
        })
    }
}

type Tx = mpsc::Sender<Result<Bytes, Infallible>>;

/// Starts the stream.
pub(crate) fn serve(shared: Arc<Shared>, p: Params) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    tokio::spawn(run(shared, p, tx));
    let mut resp = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

struct Encoder {
    target: Target,
    shape: Shape,
    headers_sent: bool,
}

impl Encoder {
    fn line(&mut self, ty: &str, obj: Value) -> Bytes {
        let obj = match (self.shape, ty) {
            (Shape::Table, "ADDED" | "MODIFIED" | "DELETED") => {
                let rv = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("").to_string();
                let t = table::to_table(&self.target.rt, &self.target.version, &[obj], !self.headers_sent, &rv);
                self.headers_sent = true;
                t
            }
            (Shape::Metadata, "ADDED" | "MODIFIED" | "DELETED") => json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadata",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            }),
            _ => obj,
        };
        let mut bytes = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
        bytes.push(b'\n');
        Bytes::from(bytes)
    }

    fn bookmark(&mut self, rv: u64, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({
            "kind": self.target.rt.kind,
            "apiVersion": self.target.rt.api_version(&self.target.version),
            "metadata": metadata,
        });
        self.line("BOOKMARK", obj)
    }
}

async fn send(tx: &Tx, b: Bytes) -> bool {
    tx.send(Ok(b)).await.is_ok()
}

/// What one pass over the log produced.
enum Batch {
    Events(Vec<(&'static str, Value)>, u64),
    Expired(u64, u64),
}

fn collect(shared: &Shared, p: &Params, last: u64) -> Batch {
    let st = shared.lock();
    let rt = &p.target.rt;
    let ns = p.target.ns.as_deref();
    let mut out = Vec::new();
    if let Some(log) = st.logs.get(&rt.storage) {
        if last < log.compacted_through {
            return Batch::Expired(last, log.compacted_through);
        }
        for e in log.entries.iter().filter(|e| e.rv > last) {
            let obj = present(rt, &p.target.version, &e.obj);
            let now_in = matches(&obj, ns, &p.labels, &p.fields);
            let was_in = e
                .prev
                .as_ref()
                .map(|prev| present(rt, &p.target.version, prev))
                .is_some_and(|prev| matches(&prev, ns, &p.labels, &p.fields));
            let ty = match (e.kind, was_in, now_in) {
                ("DELETED", true, _) => Some("DELETED"),
                ("DELETED", false, _) => None,
                (_, false, true) => Some("ADDED"),
                (_, true, true) => Some("MODIFIED"),
                (_, true, false) => Some("DELETED"),
                (_, false, false) => None,
            };
            if let Some(ty) = ty {
                out.push((ty, obj));
            }
        }
    }
    Batch::Events(out, st.rv)
}

async fn run(shared: Arc<Shared>, p: Params, tx: Tx) {
    let deadline = Instant::now() + p.timeout;
    let mut changes = shared.changes.subscribe();
    let mut stop = shared.shutdown.subscribe();
    let mut enc = Encoder { target: p.target.clone(), shape: p.shape, headers_sent: false };
    let mut last = match p.since {
        Some(rv) => rv,
        None => {
            let (initial, rv) = {
                let st = shared.lock();
                let items = super::handlers::select(
                    &st,
                    &p.target.rt,
                    &p.target.version,
                    p.target.ns.as_deref(),
                    &p.labels,
                    &p.fields,
                );
                (items, st.rv)
            };
            for obj in initial {
                let line = enc.line("ADDED", obj);
                if !send(&tx, line).await {
                    return;
                }
            }
            if p.send_initial && p.bookmarks {
                let line = enc.bookmark(rv, true);
                if !send(&tx, line).await {
                    return;
                }
            }
            rv
        }
    };
    let interval = shared.bookmark_interval();
    let mut next_bookmark = if p.bookmarks { Instant::now() } else { deadline };
    loop {
        changes.borrow_and_update();
        match collect(&shared, &p, last) {
            Batch::Expired(asked, oldest) => {
                let status = ApiError::expired(format!("too old resource version: {asked} ({oldest})")).status();
                let line = enc.line("ERROR", status);
                let _ = send(&tx, line).await;
                return;
            }
            Batch::Events(events, rv) => {
                for (ty, obj) in events {
                    let line = enc.line(ty, obj);
                    if !send(&tx, line).await {
                        return;
                    }
                }
                last = last.max(rv);
            }
        }
        if p.bookmarks && Instant::now() >= next_bookmark {
            let line = enc.bookmark(last, false);
            if !send(&tx, line).await {
                return;
            }
            next_bookmark = Instant::now() + interval;
        }
        let wake = next_bookmark.min(deadline);
        tokio::select! {
            r = changes.changed() => { if r.is_err() { return; } }
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= deadline { return; }
            }
            _ = stop.wait_for(|s| *s) => { return; }
            _ = tx.closed() => { return; }
        }
    }
}
