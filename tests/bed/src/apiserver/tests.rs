//! Tests of the fake API server: a real `kube::Client` wherever possible, raw HTTP for the
//! details of the watch stream, tables and discovery. One module per contract point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::FakeApiServer;

/// A small CRD with a status subresource, printer columns and CEL rules.
pub(crate) fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.example.com"},
        "spec": {
            "group": "test.example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                      "listKind": "WidgetList", "shortNames": ["wd"], "categories": ["all"]},
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Ready", "type": "string",
                     "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}
                ],
                "schema": {"openAPIV3Schema": widget_schema()}
            }]
        }
    })
}

fn widget_schema() -> Value {
    let spec = json!({
        "type": "object",
        "required": ["size"],
        "x-kubernetes-validations": [
            {"rule": "self.size <= 10 || self.mode == 'big'",
             "message": "size above 10 needs mode big", "fieldPath": ".size"},
            {"rule": "!has(oldSelf.color) || self.color == oldSelf.color",
             "message": "color is immutable", "reason": "FieldValueForbidden"}
        ],
        "properties": {
            "size": {"type": "integer", "minimum": 0},
            "mode": {"type": "string", "enum": ["small", "big"], "default": "small"},
            "color": {"type": "string", "pattern": "^[a-z]+$"},
            "owner": {"type": "string"},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}}
        }
    });
    let condition = json!({
        "type": "object",
        "properties": {"type": {"type": "string"}, "status": {"type": "string"},
                       "reason": {"type": "string"}, "message": {"type": "string"},
                       "lastTransitionTime": {"type": "string", "format": "date-time"}}
    });
    let status = json!({
        "type": "object",
        "properties": {
            "phase": {"type": "string"},
            "conditions": {"type": "array", "items": condition}
        }
    });
    json!({
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status
        }
    })
}

async fn server_with_crd() -> (FakeApiServer, kube::Client, Api<DynamicObject>) {
    let server = FakeApiServer::start().await.unwrap();
    let crd: CustomResourceDefinition = serde_json::from_value(widget_crd()).unwrap();
    server.install_crd(&crd).unwrap();
    let client = server.client().unwrap();
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("test.example.com", "v1", "Widget"), "widgets");
    let api = Api::namespaced_with(client.clone(), "default", &ar);
    (server, client, api)
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "test.example.com/v1", "kind": "Widget",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

fn api_err(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cm(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})).unwrap()
}

/// A minimal HTTP/1.1 client: returns status, headers and the de-chunked body. The request
/// ends when the server closes the response (watches with `timeoutSeconds`).
pub(crate) async fn raw(
    server: &FakeApiServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf))
        .await
        .expect("response within 30s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    (status, head.to_string(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn lines(body: &str) -> Vec<Value> {
    body.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

mod list_and_selectors {
    use super::*;

    #[tokio::test]
    async fn list_has_string_rv_items_and_selectors() {
        let server = FakeApiServer::start().await.unwrap();
        let client = server.client().unwrap();
        let other: Api<Namespace> = Api::all(client.clone());
        other
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap())
            .await
            .unwrap();
        let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
        cms.create(&PostParams::default(), &cm("a", json!({"app": "web", "tier": "canary"}))).await.unwrap();
        cms.create(&PostParams::default(), &cm("b", json!({"app": "web", "tier": "production"}))).await.unwrap();
        cms.create(&PostParams::default(), &cm("c", json!({"app": "db"}))).await.unwrap();
        let others: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
        others.create(&PostParams::default(), &cm("d", json!({"app": "web"}))).await.unwrap();

        let names = |l: kube::core::ObjectList<ConfigMap>| {
            let mut v: Vec<String> = l.items.into_iter().map(|c| c.metadata.name.unwrap()).collect();
            v.sort();
            v
        };
        let all = cms.list(&ListParams::default()).await.unwrap();
        assert!(all.metadata.resource_version.as_deref().is_some_and(|rv| rv.parse::<u64>().is_ok()));
        assert_eq!(names(all), ["a", "b", "c"]);
        let q = |s: &str| ListParams::default().labels(s);
        assert_eq!(names(cms.list(&q("app=web")).await.unwrap()), ["a", "b"]);
        assert_eq!(names(cms.list(&q("tier in (canary)")).await.unwrap()), ["a"]);
        assert_eq!(names(cms.list(&q("tier notin (canary)")).await.unwrap()), ["b", "c"]);
        assert_eq!(names(cms.list(&q("!tier")).await.unwrap()), ["c"]);
        assert_eq!(names(cms.list(&q("tier,app!=db")).await.unwrap()), ["a", "b"]);
        let f = ListParams::default().fields("metadata.name=b");
        assert_eq!(names(cms.list(&f).await.unwrap()), ["b"]);
        let everywhere: Api<ConfigMap> = Api::all(client.clone());
        assert_eq!(names(everywhere.list(&q("app=web")).await.unwrap()), ["a", "b", "d"]);
        let f = ListParams::default().fields("metadata.namespace=other");
        assert_eq!(names(everywhere.list(&f).await.unwrap()), ["d"]);

        // Namespaces `default` and `kube-system` exist from the start.
        let ns: Api<Namespace> = Api::all(client);
        ns.get("default").await.unwrap();
        ns.get("kube-system").await.unwrap();
    }
}

mod create {
    use super::*;

    #[tokio::test]
    async fn create_sets_server_fields_and_rejects_duplicates() {
        let (_server, _client, api) = server_with_crd().await;
        let mut w = widget("one", json!({"size": 1}));
        w.data["status"] = json!({"phase": "Faked"});
        let created = api.create(&PostParams::default(), &w).await.unwrap();
        let meta = &created.metadata;
        assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
        let ts = serde_json::to_value(&meta.creation_timestamp).unwrap();
        assert!(ts.as_str().unwrap().ends_with('Z'), "{ts}");
        assert_eq!(meta.generation, Some(1));
        assert!(created.data.get("status").is_none(), "status is dropped on create");
        assert_eq!(created.data["spec"]["mode"], "small", "defaulted");

        let err = api_err(api.create(&PostParams::default(), &w).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));

        let mut g = widget("", json!({"size": 2}));
        g.metadata.name = None;
        g.metadata.generate_name = Some("gen-".into());
        let a = api.create(&PostParams::default(), &g).await.unwrap();
        let b = api.create(&PostParams::default(), &g).await.unwrap();
        assert!(a.metadata.name.as_deref().unwrap().starts_with("gen-"));
        assert_ne!(a.metadata.name, b.metadata.name);

        // Re-created objects get a new uid.
        api.delete("one", &DeleteParams::default()).await.unwrap();
        let again = api.create(&PostParams::default(), &w).await.unwrap();
        assert_ne!(again.metadata.uid, created.metadata.uid);
    }
}

mod replace {
    use super::*;

    #[tokio::test]
    async fn replace_checks_resource_version() {
        let server = FakeApiServer::start().await.unwrap();
        let cms: Api<ConfigMap> = Api::default_namespaced(server.client().unwrap());
        let created = cms.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap();
        let mut next = created.clone();
        next.data = Some([("k".to_string(), "w".to_string())].into());
        let replaced = cms.replace("a", &PostParams::default(), &next).await.unwrap();
        assert_ne!(replaced.metadata.resource_version, created.metadata.resource_version);
        let err = api_err(cms.replace("a", &PostParams::default(), &next).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
        let mut missing = next.clone();
        missing.metadata.name = Some("nope".into());
        let err = api_err(cms.replace("nope", &PostParams::default(), &missing).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    }
}

mod status_and_generation {
    use super::*;

    #[tokio::test]
    async fn status_subresource_and_generation() {
        let (_server, _client, api) = server_with_crd().await;
        api.create(&PostParams::default(), &widget("w", json!({"size": 1}))).await.unwrap();
        let status = json!({"status": {"phase": "Ready"}, "spec": {"size": 9}});
        let after = api.patch_status("w", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
        assert_eq!(after.data["status"]["phase"], "Ready");
        assert_eq!(after.data["spec"]["size"], 1, "status writes keep spec");
        assert_eq!(after.metadata.generation, Some(1));

        // Main resource writes keep the stored status; metadata-only changes keep generation.
        let p = json!({"metadata": {"labels": {"x": "y"}}, "status": {"phase": "Lost"}});
        let after = api.patch("w", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap();
        assert_eq!(after.data["status"]["phase"], "Ready");
        assert_eq!(after.metadata.generation, Some(1));
        let p = json!({"spec": {"size": 2}});
        let after = api.patch("w", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap();
        assert_eq!(after.metadata.generation, Some(2));
        // A no-op write does not bump the resourceVersion.
        let same = api.patch("w", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap();
        assert_eq!(same.metadata.resource_version, after.metadata.resource_version);

        // Replace on /status.
        let mut obj = api.get_status("w").await.unwrap();
        obj.data["status"] = json!({"phase": "Replaced"});
        let replaced = api.replace_status("w", &PostParams::default(), &obj).await.unwrap();
        assert_eq!(replaced.data["status"]["phase"], "Replaced");
    }
}

mod patches {
    use super::*;

    #[tokio::test]
    async fn merge_and_json_patch() {
        let (_server, _client, api) = server_with_crd().await;
        api.create(&PostParams::default(), &widget("w", json!({"size": 1, "owner": "me"}))).await.unwrap();
        let p = json!({"spec": {"owner": null, "tags": {"a": "b"}}});
        let w = api.patch("w", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap();
        assert!(w.data["spec"].get("owner").is_none());
        assert_eq!(w.data["spec"]["tags"]["a"], "b");

        // test of a missing path against null passes; a failed test is 422.
        let jp: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}
        ]))
        .unwrap();
        let w = api.patch("w", &PatchParams::default(), &Patch::<()>::Json(jp)).await.unwrap();
        assert_eq!(w.metadata.finalizers, Some(vec!["x/y".to_string()]));
        let jp: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/spec/size", "value": 5}
        ]))
        .unwrap();
        let err = api_err(api.patch("w", &PatchParams::default(), &Patch::<()>::Json(jp)).await.unwrap_err());
        assert_eq!(err.code, 422);
        // An emptied finalizer list is stored as absent.
        let jp: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": ["x/y"]},
            {"op": "replace", "path": "/metadata/finalizers", "value": []}
        ]))
        .unwrap();
        let w = api.patch("w", &PatchParams::default(), &Patch::<()>::Json(jp)).await.unwrap();
        assert_eq!(w.metadata.finalizers, None);

        // A resourceVersion in a patch is a precondition.
        let p = json!({"metadata": {"resourceVersion": "1"}, "spec": {"size": 3}});
        let err = api_err(api.patch("w", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
        let p = json!({"metadata": {"resourceVersion": w.metadata.resource_version}, "spec": {"size": 3}});
        api.patch("w", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap();

        // Missing objects: 404.
        let err = api_err(api.patch("nope", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap_err());
        assert_eq!(err.code, 404);
    }

    #[tokio::test]
    async fn strategic_merge_is_415_for_custom_resources_and_merge_for_builtins() {
        let (server, client, api) = server_with_crd().await;
        api.create(&PostParams::default(), &widget("w", json!({"size": 1}))).await.unwrap();
        let p = json!({"spec": {"size": 2}});
        let err = api_err(api.patch("w", &PatchParams::default(), &Patch::Strategic(&p)).await.unwrap_err());
        assert_eq!(err.code, 415);
        let leases: Api<Lease> = Api::default_namespaced(client);
        leases
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}})).unwrap(),
            )
            .await
            .unwrap();
        let p = json!({"spec": {"holderIdentity": "b", "leaseDurationSeconds": 15}});
        let l = leases.patch("l", &PatchParams::default(), &Patch::Strategic(&p)).await.unwrap();
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("b"));
        drop(server);
    }

    #[tokio::test]
    async fn server_side_apply() {
        let (_server, _client, api) = server_with_crd().await;
        let cfg = |spec: Value| {
            json!({"apiVersion": "test.example.com/v1", "kind": "Widget",
                                       "metadata": {"name": "w"}, "spec": spec})
        };
        // fieldManager is required.
        let err =
            api_err(api.patch("w", &PatchParams::default(), &Patch::Apply(cfg(json!({"size": 1})))).await.unwrap_err());
        assert_eq!(err.code, 422);
        // Creates when missing.
        let a = PatchParams::apply("alice");
        let w = api.patch("w", &a, &Patch::Apply(cfg(json!({"size": 1, "owner": "alice"})))).await.unwrap();
        assert_eq!(w.data["spec"]["owner"], "alice");
        let managers: Vec<String> = w.metadata.managed_fields.unwrap().into_iter().filter_map(|m| m.manager).collect();
        assert_eq!(managers, ["alice"]);
        // Same manager re-applying is fine; a different value from another manager conflicts.
        api.patch("w", &a, &Patch::Apply(cfg(json!({"size": 2, "owner": "alice"})))).await.unwrap();
        let b = PatchParams::apply("bob");
        let err = api.patch("w", &b, &Patch::Apply(cfg(json!({"owner": "bob"})))).await.unwrap_err();
        let kube::Error::Api(status) = err else { panic!("{err:?}") };
        assert_eq!(status.code, 409);
        let causes = status.details.unwrap().causes;
        assert_eq!(causes[0].reason, "FieldManagerConflict");
        assert_eq!(causes[0].field, ".spec.owner");
        // Same value: shared ownership, no conflict.
        api.patch("w", &b, &Patch::Apply(cfg(json!({"size": 2})))).await.unwrap();
        // Forced.
        let w =
            api.patch("w", &b.clone().force(), &Patch::Apply(cfg(json!({"size": 2, "owner": "bob"})))).await.unwrap();
        assert_eq!(w.data["spec"]["owner"], "bob");
        // Alice stops applying owner: bob still owns it, it stays.
        let w = api.patch("w", &a, &Patch::Apply(cfg(json!({"size": 2})))).await.unwrap();
        assert_eq!(w.data["spec"]["owner"], "bob");
        // A resourceVersion in an apply is a precondition.
        let mut stale = cfg(json!({"size": 2}));
        stale["metadata"]["resourceVersion"] = json!("1");
        let err = api_err(api.patch("w", &a, &Patch::Apply(stale)).await.unwrap_err());
        assert_eq!(err.code, 409);
        // Status apply.
        let st = json!({"apiVersion": "test.example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                        "status": {"phase": "Applied"}});
        let w = api.patch_status("w", &PatchParams::apply("ctl"), &Patch::Apply(st)).await.unwrap();
        assert_eq!(w.data["status"]["phase"], "Applied");
        assert_eq!(w.data["spec"]["size"], 2);
    }
}

mod finalizers {
    use super::*;

    #[tokio::test]
    async fn delete_with_finalizers() {
        let (_server, _client, api) = server_with_crd().await;
        let mut w = widget("w", json!({"size": 1}));
        w.metadata.finalizers = Some(vec!["test/f".into()]);
        api.create(&PostParams::default(), &w).await.unwrap();
        let rv0 = api.get("w").await.unwrap().metadata.resource_version;
        let deleted = api.delete("w", &DeleteParams::default()).await.unwrap();
        let obj = deleted.left().expect("object returned while finalizers remain");
        let ts = obj.metadata.deletion_timestamp.clone().expect("deletionTimestamp set");
        assert_ne!(obj.metadata.resource_version, rv0);
        // Deleting again keeps the first deletionTimestamp.
        let again = api.delete("w", &DeleteParams::default()).await.unwrap().left().unwrap();
        assert_eq!(again.metadata.deletion_timestamp, Some(ts));
        // Adding a finalizer while being deleted: 422.
        let p = json!({"metadata": {"finalizers": ["test/f", "test/g"]}});
        let err = api_err(api.patch("w", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap_err());
        assert_eq!(err.code, 422);
        // Emptying finalizers removes it.
        let p = json!({"metadata": {"finalizers": null}});
        api.patch("w", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap();
        let err = api_err(api.get("w").await.unwrap_err());
        assert_eq!(err.code, 404);
    }

    #[tokio::test]
    async fn kube_runtime_finalizer_helper() {
        use kube::runtime::controller::Action;
        use kube::runtime::finalizer::{Event as FEvent, finalizer};
        use std::sync::Arc;
        let (_server, _client, api) = server_with_crd().await;
        let obj = api.create(&PostParams::default(), &widget("w", json!({"size": 1}))).await.unwrap();
        // First call: adds the finalizer (JSON patch with `test` null on a missing path).
        let r = finalizer(&api, "test.example.com/cleanup", Arc::new(obj), |_e| async {
            Ok::<_, std::convert::Infallible>(Action::await_change())
        })
        .await;
        assert!(r.is_ok(), "{r:?}");
        let obj = api.get("w").await.unwrap();
        assert_eq!(obj.metadata.finalizers.as_deref(), Some(&["test.example.com/cleanup".to_string()][..]));
        let obj = api.get("w").await.unwrap();
        let r = finalizer(&api, "test.example.com/cleanup", Arc::new(obj), |e| async move {
            assert!(matches!(e, FEvent::Apply(_)));
            Ok::<_, std::convert::Infallible>(Action::await_change())
        })
        .await;
        assert!(r.is_ok());
        api.delete("w", &DeleteParams::default()).await.unwrap();
        let obj = api.get("w").await.unwrap();
        let r = finalizer(&api, "test.example.com/cleanup", Arc::new(obj), |e| async move {
            assert!(matches!(e, FEvent::Cleanup(_)));
            Ok::<_, std::convert::Infallible>(Action::await_change())
        })
        .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(api_err(api.get("w").await.unwrap_err()).code, 404);
    }
}

mod errors {
    use super::*;

    #[tokio::test]
    async fn errors_are_status_objects_with_the_same_code() {
        let server = FakeApiServer::start().await.unwrap();
        let (code, _, body) = raw(&server, "GET", "/api/v1/namespaces/default/secrets/nope", &[], None).await;
        assert_eq!(code, 404);
        let s: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "secrets \"nope\" not found");
        let secrets: Api<Secret> = Api::default_namespaced(server.client().unwrap());
        let err = api_err(secrets.get("nope").await.unwrap_err());
        assert_eq!(err.code, 404);
    }
}

mod validation {
    use super::*;

    #[tokio::test]
    async fn invalid_custom_resources_are_422_naming_the_field() {
        let (_server, _client, api) = server_with_crd().await;
        let err = api.create(&PostParams::default(), &widget("w", json!({"size": 11}))).await.unwrap_err();
        let kube::Error::Api(status) = err else { panic!("{err:?}") };
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
        let causes = status.details.unwrap().causes;
        assert_eq!(causes[0].field, "spec.size");
        assert!(
            status.message.starts_with("Widget.test.example.com \"w\" is invalid: spec.size: "),
            "{}",
            status.message
        );
        assert!(status.message.contains("size above 10 needs mode big"));

        let err =
            api.create(&PostParams::default(), &widget("w", json!({"size": 1, "color": "Red!"}))).await.unwrap_err();
        let kube::Error::Api(status) = err else { panic!("{err:?}") };
        assert_eq!(status.details.unwrap().causes[0].field, "spec.color");
        assert!(status.message.contains("spec.color in body should match '^[a-z]+$'"), "{}", status.message);

        let err = api.create(&PostParams::default(), &widget("w", json!({}))).await.unwrap_err();
        let kube::Error::Api(status) = err else { panic!("{err:?}") };
        assert_eq!(status.details.unwrap().causes[0].field, "spec.size");

        // Pruning of unknown fields, transition rules against the stored object.
        let w = api
            .create(&PostParams::default(), &widget("w", json!({"size": 1, "color": "red", "junk": 1})))
            .await
            .unwrap();
        assert!(w.data["spec"].get("junk").is_none());
        let p = json!({"spec": {"color": "blue"}});
        let err = api.patch("w", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap_err();
        let kube::Error::Api(status) = err else { panic!("{err:?}") };
        assert_eq!(status.code, 422);
        assert!(status.message.contains("color is immutable"));
    }
}

mod watch {
    use super::*;

    #[tokio::test]
    async fn kube_runtime_watcher_sees_changes() {
        use kube::runtime::watcher;
        let server = FakeApiServer::start().await.unwrap();
        let cms: Api<ConfigMap> = Api::default_namespaced(server.client().unwrap());
        cms.create(&PostParams::default(), &cm("before", json!({"app": "x"}))).await.unwrap();
        let mut stream = watcher(cms.clone(), watcher::Config::default().labels("app=x")).boxed();
        let mut seen = Vec::new();
        let writer = {
            let cms = cms.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                cms.create(&PostParams::default(), &cm("after", json!({"app": "x"}))).await.unwrap();
                cms.create(&PostParams::default(), &cm("other", json!({"app": "y"}))).await.unwrap();
                cms.delete("before", &DeleteParams::default()).await.unwrap();
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, stream.try_next()).await.map(|r| r.unwrap()) {
            match ev {
                watcher::Event::InitApply(c) => seen.push(format!("init {}", c.metadata.name.unwrap())),
                watcher::Event::Apply(c) => seen.push(format!("apply {}", c.metadata.name.unwrap())),
                watcher::Event::Delete(c) => seen.push(format!("delete {}", c.metadata.name.unwrap())),
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
            if seen.len() == 3 {
                break;
            }
        }
        writer.await.unwrap();
        assert_eq!(seen, ["init before", "apply after", "delete before"]);
    }

    #[tokio::test]
    async fn metadata_watcher_works() {
        use kube::core::PartialObjectMeta;
        use kube::runtime::watcher;
        let server = FakeApiServer::start().await.unwrap();
        let cms: Api<ConfigMap> = Api::default_namespaced(server.client().unwrap());
        cms.create(&PostParams::default(), &cm("m", json!({}))).await.unwrap();
        let metas: Api<PartialObjectMeta<ConfigMap>> = Api::default_namespaced(server.client().unwrap());
        let mut stream = watcher(metas, watcher::Config::default()).boxed();
        let ev = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let watcher::Event::InitApply(m) = stream.try_next().await.unwrap().unwrap() {
                    return m;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(ev.metadata.name.as_deref(), Some("m"));
    }

    #[tokio::test]
    async fn raw_stream_replay_bookmarks_and_timeout() {
        let server = FakeApiServer::start().await.unwrap();
        let cms: Api<ConfigMap> = Api::default_namespaced(server.client().unwrap());
        let a = cms.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap();
        let rv_a = a.metadata.resource_version.clone().unwrap();
        cms.create(&PostParams::default(), &cm("b", json!({}))).await.unwrap();
        cms.delete("a", &DeleteParams::default()).await.unwrap();
        let path = format!(
            "/api/v1/namespaces/default/configmaps?&watch=true&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion={rv_a}"
        );
        let started = std::time::Instant::now();
        let (code, head, body) = raw(&server, "GET", &path, &[], None).await;
        assert!(started.elapsed() >= Duration::from_millis(900), "closed at timeoutSeconds");
        assert_eq!(code, 200);
        assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"));
        assert!(!head.to_ascii_lowercase().contains("content-encoding"));
        assert!(body.lines().all(|l| !l.contains("\n  ")), "compact lines");
        let events = lines(&body);
        let kinds: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e["type"].as_str().unwrap(), e["object"]["metadata"]["name"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(&kinds[..2], [("ADDED", "b"), ("DELETED", "a")]);
        let bookmark = events.iter().find(|e| e["type"] == "BOOKMARK").expect("a bookmark");
        assert_eq!(bookmark["object"]["kind"], "ConfigMap");
        assert_eq!(bookmark["object"]["apiVersion"], "v1");
        assert!(bookmark["object"]["metadata"]["resourceVersion"].is_string());
        // Every RV is a decimal string.
        for e in &events {
            let rv = e["object"]["metadata"]["resourceVersion"].as_str().unwrap();
            rv.parse::<u64>().unwrap();
        }
    }

    #[tokio::test]
    async fn raw_stream_live_events_are_flushed() {
        let server = FakeApiServer::start().await.unwrap();
        let cms: Api<ConfigMap> = Api::default_namespaced(server.client().unwrap());
        let rv = cms.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let req = format!(
            "GET /api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv} HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        cms.create(&PostParams::default(), &cm("live", json!({}))).await.unwrap();
        let mut got = String::new();
        let mut buf = [0u8; 4096];
        tokio::time::timeout(Duration::from_secs(5), async {
            while !got.contains("\"live\"") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
        .await
        .expect("the event arrives while the stream stays open");
        assert!(got.contains("{\"object\":") || got.contains("{\"type\":\"ADDED\""), "{got}");
    }

    #[tokio::test]
    async fn too_old_resource_version_is_an_in_stream_410() {
        let server = FakeApiServer::start().await.unwrap();
        server.set_watch_log_retention(2);
        let cms: Api<ConfigMap> = Api::default_namespaced(server.client().unwrap());
        let first = cms.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap();
        for n in ["b", "c", "d"] {
            cms.create(&PostParams::default(), &cm(n, json!({}))).await.unwrap();
        }
        let rv = first.metadata.resource_version.unwrap();
        let path = format!("/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=5&resourceVersion={rv}");
        let (code, _, body) = raw(&server, "GET", &path, &[], None).await;
        assert_eq!(code, 200, "HTTP 200, the error is in the stream");
        let events = lines(&body);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["type"], "ERROR");
        assert_eq!(events[0]["object"]["code"], 410);
        assert_eq!(events[0]["object"]["reason"], "Expired");

        // kube's watcher recovers by re-listing.
        use kube::runtime::watcher;
        let mut s = watcher(cms, watcher::Config::default()).boxed();
        let ev = tokio::time::timeout(Duration::from_secs(5), s.try_next()).await.unwrap().unwrap();
        assert!(matches!(ev, Some(watcher::Event::Init)));
    }

    #[tokio::test]
    async fn streaming_list_initial_events() {
        use kube::runtime::watcher;
        let server = FakeApiServer::start().await.unwrap();
        let cms: Api<ConfigMap> = Api::default_namespaced(server.client().unwrap());
        cms.create(&PostParams::default(), &cm("s", json!({}))).await.unwrap();
        let mut s = watcher(cms, watcher::Config::default().streaming_lists()).boxed();
        let mut names = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.try_next().await.unwrap().unwrap() {
                    watcher::Event::InitApply(c) => names.push(c.metadata.name.unwrap()),
                    watcher::Event::InitDone => break,
                    _ => {}
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(names, ["s"]);
    }
}

mod events_and_leases {
    use super::*;

    #[tokio::test]
    async fn recorder_series_and_core_view() {
        use kube::Resource as _;
        use kube::runtime::events::{Event as REvent, EventType, Recorder};
        let (_server, client, api) = server_with_crd().await;
        let w = api.create(&PostParams::default(), &widget("w", json!({"size": 1}))).await.unwrap();
        let recorder = Recorder::new(client.clone(), "widget-controller".into());
        let ev = REvent {
            type_: EventType::Normal,
            reason: "Resized".into(),
            note: Some("size is 1".into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let reference = w.object_ref(&ApiResource::erase::<DynamicObject>(&ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("test.example.com", "v1", "Widget"),
            "widgets",
        )));
        recorder.publish(&ev, &reference).await.unwrap();
        recorder.publish(&ev, &reference).await.unwrap();
        let events: Api<Event> = Api::default_namespaced(client.clone());
        let list = events.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        assert_eq!(list.items[0].series.as_ref().map(|s| s.count), Some(2));

        let core: Api<CoreEvent> = Api::default_namespaced(client);
        let uid = w.metadata.uid.clone().unwrap();
        let lp = ListParams::default().fields(&format!(
            "involvedObject.name=w,involvedObject.namespace=default,involvedObject.kind=Widget,involvedObject.uid={uid}"
        ));
        let list = core.list(&lp).await.unwrap();
        assert_eq!(list.items.len(), 1);
        let e = &list.items[0];
        assert_eq!(e.message.as_deref(), Some("size is 1"));
        assert_eq!(e.reason.as_deref(), Some("Resized"));
        assert_eq!(e.count, Some(2));
        assert!(e.last_timestamp.is_some() && e.first_timestamp.is_some());
        let none = core.list(&ListParams::default().fields("involvedObject.name=other")).await.unwrap();
        assert!(none.items.is_empty());
    }

    #[tokio::test]
    async fn lease_create_and_patch() {
        let server = FakeApiServer::start().await.unwrap();
        let leases: Api<Lease> = Api::namespaced(server.client().unwrap(), "kube-system");
        let l: Lease = serde_json::from_value(json!({"metadata": {"name": "leader"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15,
                     "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z"}}))
        .unwrap();
        leases.create(&PostParams::default(), &l).await.unwrap();
        let p = json!({"spec": {"renewTime": "2026-01-01T00:00:05.000000Z"}});
        let got = leases.patch("leader", &PatchParams::default(), &Patch::Merge(&p)).await.unwrap();
        assert_eq!(got.spec.as_ref().unwrap().holder_identity.as_deref(), Some("a"));
        let apply = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                           "metadata": {"name": "leader"}, "spec": {"holderIdentity": "b"}});
        let err = leases.patch("leader", &PatchParams::apply("other"), &Patch::Apply(&apply)).await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409), "{err:?}");
        let got = leases.patch("leader", &PatchParams::apply("other").force(), &Patch::Apply(&apply)).await.unwrap();
        assert_eq!(got.spec.unwrap().holder_identity.as_deref(), Some("b"));
    }
}

mod crds {
    use super::*;

    #[tokio::test]
    async fn crd_via_api_makes_the_kind_servable_and_delete_removes_it() {
        let server = FakeApiServer::start().await.unwrap();
        let client = server.client().unwrap();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd: CustomResourceDefinition = serde_json::from_value(widget_crd()).unwrap();
        let created = crds.create(&PostParams::default(), &crd).await.unwrap();
        let conds = created.status.unwrap().conditions.unwrap();
        assert!(conds.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        let (code, _, body) = raw(&server, "GET", "/apis/test.example.com/v1", &[], None).await;
        assert_eq!(code, 200);
        let list: Value = serde_json::from_str(&body).unwrap();
        let names: Vec<&str> =
            list["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["widgets", "widgets/status"]);
        assert_eq!(list["resources"][0]["shortNames"], json!(["wd"]));
        crds.delete("widgets.test.example.com", &DeleteParams::default()).await.unwrap();
        let (code, _, _) = raw(&server, "GET", "/apis/test.example.com/v1/namespaces/default/widgets", &[], None).await;
        assert_eq!(code, 404);
        // A bad CRD is rejected.
        let mut bad = widget_crd();
        bad["metadata"]["name"] = json!("wrong");
        let bad: CustomResourceDefinition = serde_json::from_value(bad).unwrap();
        let err = api_err(crds.create(&PostParams::default(), &bad).await.unwrap_err());
        assert_eq!(err.code, 422);
    }
}

mod kubectl_facing {
    use super::*;

    #[tokio::test]
    async fn discovery_documents() {
        let (server, _client, _api) = server_with_crd().await;
        let get = |p: &'static str| {
            let server = &server;
            async move {
                let (code, _, body) = raw(server, "GET", p, &[], None).await;
                assert_eq!(code, 200, "{p}");
                serde_json::from_str::<Value>(&body).unwrap()
            }
        };
        assert_eq!(get("/api").await["versions"], json!(["v1"]));
        let groups = get("/apis").await;
        let names: Vec<&str> =
            groups["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
        for g in ["apiextensions.k8s.io", "coordination.k8s.io", "events.k8s.io", "test.example.com"] {
            assert!(names.contains(&g), "{g}");
        }
        assert_eq!(get("/apis/test.example.com").await["preferredVersion"]["version"], "v1");
        let core = get("/api/v1").await;
        assert!(core["resources"].as_array().unwrap().iter().any(|r| r["name"] == "secrets"));
        assert_eq!(get("/version").await["major"], "1");
        let v3 = get("/openapi/v3").await;
        assert!(v3["paths"]["apis/test.example.com/v1"]["serverRelativeURL"].is_string());
        let doc = get("/openapi/v3/apis/test.example.com/v1").await;
        assert!(doc["components"]["schemas"]["com.example.test.v1.Widget"].is_object());
    }

    #[tokio::test]
    async fn tables_use_printer_columns() {
        let (server, _client, api) = server_with_crd().await;
        api.create(&PostParams::default(), &widget("w", json!({"size": 4}))).await.unwrap();
        let st = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        api.patch_status("w", &PatchParams::default(), &Patch::Merge(&st)).await.unwrap();
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        let (code, _, body) =
            raw(&server, "GET", "/apis/test.example.com/v1/namespaces/default/widgets", &[("Accept", accept)], None)
                .await;
        assert_eq!(code, 200);
        let t: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(t["kind"], "Table");
        let cols: Vec<&str> =
            t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(cols, ["Name", "Size", "Ready", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "w");
        assert_eq!(cells[1], 4);
        assert_eq!(cells[2], "True");
        assert!(cells[3].as_str().unwrap().ends_with('s'));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        // One object as a table too.
        let (code, _, body) =
            raw(&server, "GET", "/apis/test.example.com/v1/namespaces/default/widgets/w", &[("Accept", accept)], None)
                .await;
        assert_eq!(code, 200);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["rows"].as_array().unwrap().len(), 1);
        // Watch as table.
        let (_, _, body) = raw(
            &server,
            "GET",
            "/apis/test.example.com/v1/namespaces/default/widgets?watch=true&timeoutSeconds=1",
            &[("Accept", accept)],
            None,
        )
        .await;
        let evs = lines(&body);
        assert_eq!(evs[0]["type"], "ADDED");
        assert_eq!(evs[0]["object"]["kind"], "Table");
    }
}
