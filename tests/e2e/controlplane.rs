//! The control plane under the tests is a real one: kube-controller-manager's namespace and
//! garbage-collector controllers run, so a deleted namespace goes away with what it held and an
//! ownerReference cascades, as in a cluster.

use crate::harness::Bed;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};
use tenant_operator::crd::Tenant;

async fn gone<F, Fut>(what: &str, limit: Duration, exists: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while exists().await {
        assert!(t0.elapsed() < limit, "{what} still there after {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{what} gone after {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_references_cascade_and_a_deleted_namespace_goes_away() {
    let bed = Bed::start_without_controllers().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &bed.ns);
    let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap();
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let child: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "child", "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid.clone().unwrap()
    }]}}))
    .unwrap();
    cms.create(&PostParams::default(), &child).await.unwrap();
    cms.delete("owner", &DeleteParams::background()).await.unwrap();
    gone("the owned ConfigMap", Duration::from_secs(60), || async { cms.get_opt("child").await.unwrap().is_some() })
        .await;

    // A namespace with a Tenant in it: the namespace controller deletes the Tenant, then the
    // namespace. (No operator runs here, so no finalizer holds the Tenant.)
    bed.create::<Tenant>(crate::apply::tenant_json("doomed", "i-0123456789abcdef0", json!({}))).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(bed.client.clone());
    namespaces.delete(&bed.ns, &DeleteParams::default()).await.unwrap();
    gone("the namespace", Duration::from_secs(90), || async { namespaces.get_opt(&bed.ns).await.unwrap().is_some() })
        .await;
}
