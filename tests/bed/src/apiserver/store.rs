//! The in-memory store: served resource types, objects, the global resourceVersion counter and
//! one event log per resource type (for watch replay).

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{Value, json};

/// Storage key of a resource type: `(group, plural)`.
pub(crate) type TypeKey = (String, String);

/// Object key inside a type: `(namespace, name)`; the namespace is empty for cluster-scoped kinds.
pub(crate) type ObjKey = (String, String);

/// How objects of a type are presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// Stored as they are served.
    Stored,
    /// Read-only `core/v1` Events converted from stored `events.k8s.io/v1` Events.
    CoreEvents,
}

/// One served version of a type.
#[derive(Clone, Debug)]
pub(crate) struct VersionInfo {
    pub name: String,
    /// `openAPIV3Schema` (custom resources only).
    pub schema: Option<Value>,
    /// `additionalPrinterColumns` as written in the CRD.
    pub printer_columns: Vec<Value>,
}

/// A servable resource type.
#[derive(Clone, Debug)]
pub(crate) struct ResourceType {
    pub group: String,
    pub versions: Vec<VersionInfo>,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// Defined by a CustomResourceDefinition.
    pub custom: bool,
    /// Maintains `metadata.generation`.
    pub generation: bool,
    pub view: View,
    /// Where the objects live (differs from `(group, plural)` for views).
    pub storage: TypeKey,
}

impl ResourceType {
    pub(crate) fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        short_names: &[&str],
    ) -> Self {
        Self {
            group: group.to_string(),
            versions: vec![VersionInfo { name: version.to_string(), schema: None, printer_columns: Vec::new() }],
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            short_names: short_names.iter().map(ToString::to_string).collect(),
            categories: Vec::new(),
            namespaced,
            status_subresource: false,
            custom: false,
            generation: false,
            view: View::Stored,
            storage: (group.to_string(), plural.to_string()),
        }
    }

    pub(crate) fn key(&self) -> TypeKey {
        (self.group.clone(), self.plural.clone())
    }

    pub(crate) fn version(&self, v: &str) -> Option<&VersionInfo> {
        self.versions.iter().find(|x| x.name == v)
    }

    pub(crate) fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_string() } else { format!("{}/{version}", self.group) }
    }

    /// `plural.group` (just `plural` in the core group), as error messages name resources.
    pub(crate) fn qualified_plural(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// `Kind.group` (just `Kind` in the core group), as Invalid errors name kinds.
    pub(crate) fn qualified_kind(&self) -> String {
        if self.group.is_empty() { self.kind.clone() } else { format!("{}.{}", self.kind, self.group) }
    }
}

/// One entry of a type's event log.
#[derive(Clone, Debug)]
pub(crate) struct LogEntry {
    pub rv: u64,
    pub kind: &'static str,
    pub obj: Value,
    /// The object before this change (for selector transitions in watches).
    pub prev: Option<Value>,
}

/// A type's event log; entries older than the retention are dropped.
#[derive(Debug, Default)]
pub(crate) struct EventLog {
    pub entries: VecDeque<LogEntry>,
    /// Highest resourceVersion dropped from the log: watching from an older one is `410 Expired`.
    pub compacted_through: u64,
}

/// Objects, logs and types.
#[derive(Debug)]
pub(crate) struct Store {
    pub rv: u64,
    pub types: BTreeMap<TypeKey, ResourceType>,
    pub objects: HashMap<TypeKey, BTreeMap<ObjKey, Value>>,
    pub logs: HashMap<TypeKey, EventLog>,
    pub retention: usize,
}

/// Default number of events kept per type.
pub(crate) const DEFAULT_RETENTION: usize = 10_000;

impl Store {
    pub(crate) fn new() -> Self {
        let mut store = Self {
            rv: 1,
            types: BTreeMap::new(),
            objects: HashMap::new(),
            logs: HashMap::new(),
            retention: DEFAULT_RETENTION,
        };
        let mut ns = ResourceType::builtin("", "v1", "Namespace", "namespaces", false, &["ns"]);
        ns.status_subresource = true;
        store.add_type(ns);
        store.add_type(ResourceType::builtin("", "v1", "Secret", "secrets", true, &[]));
        store.add_type(ResourceType::builtin("", "v1", "ConfigMap", "configmaps", true, &["cm"]));
        let mut ev = ResourceType::builtin("", "v1", "Event", "events", true, &["ev"]);
        ev.view = View::CoreEvents;
        ev.storage = ("events.k8s.io".to_string(), "events".to_string());
        store.add_type(ev);
        store.add_type(ResourceType::builtin("events.k8s.io", "v1", "Event", "events", true, &["ev"]));
        store.add_type(ResourceType::builtin("coordination.k8s.io", "v1", "Lease", "leases", true, &[]));
        let mut crd = ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
        );
        crd.status_subresource = true;
        crd.generation = true;
        crd.categories = vec!["api-extensions".to_string()];
        store.add_type(crd);
        for name in ["default", "kube-system", "kube-public"] {
            let obj = json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "uid": uuid::Uuid::new_v4().to_string(),
                             "creationTimestamp": now_rfc3339(),
                             "labels": {"kubernetes.io/metadata.name": name}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"}
            });
            store.put(&(String::new(), "namespaces".to_string()), (String::new(), name.to_string()), obj, None);
        }
        store
    }

    pub(crate) fn add_type(&mut self, rt: ResourceType) {
        self.types.insert(rt.key(), rt);
    }

    /// Finds a type by `(group, version, plural)`.
    pub(crate) fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types.get(&(group.to_string(), plural.to_string())).filter(|rt| rt.version(version).is_some()).cloned()
    }

    pub(crate) fn get(&self, storage: &TypeKey, key: &ObjKey) -> Option<&Value> {
        self.objects.get(storage).and_then(|m| m.get(key))
    }

    pub(crate) fn list(&self, storage: &TypeKey) -> Vec<Value> {
        self.objects.get(storage).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Stores `obj` (ADDED or MODIFIED) with a new resourceVersion; returns the stored object.
    pub(crate) fn put(&mut self, storage: &TypeKey, key: ObjKey, mut obj: Value, prev: Option<Value>) -> Value {
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".to_string(), Value::String(rv.to_string()));
        }
        let kind = if prev.is_some() { "MODIFIED" } else { "ADDED" };
        self.objects.entry(storage.clone()).or_default().insert(key, obj.clone());
        self.record(storage, rv, kind, obj.clone(), prev);
        obj
    }

    /// Removes an object (DELETED event); returns it with the deletion's resourceVersion.
    pub(crate) fn remove(&mut self, storage: &TypeKey, key: &ObjKey) -> Option<Value> {
        let mut obj = self.objects.get_mut(storage)?.remove(key)?;
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".to_string(), Value::String(rv.to_string()));
        }
        self.record(storage, rv, "DELETED", obj.clone(), Some(obj.clone()));
        Some(obj)
    }

    fn record(&mut self, storage: &TypeKey, rv: u64, kind: &'static str, obj: Value, prev: Option<Value>) {
        let log = self.logs.entry(storage.clone()).or_default();
        log.entries.push_back(LogEntry { rv, kind, obj, prev });
        trim(log, self.retention);
    }

    pub(crate) fn set_retention(&mut self, n: usize) {
        self.retention = n;
        for log in self.logs.values_mut() {
            trim(log, n);
        }
    }

    /// Drops a whole type's objects (CRD deletion); no events are sent.
    pub(crate) fn drop_objects(&mut self, storage: &TypeKey) {
        self.objects.remove(storage);
        if let Some(log) = self.logs.get_mut(storage) {
            log.compacted_through = self.rv;
            log.entries.clear();
        }
    }
}

fn trim(log: &mut EventLog, retention: usize) {
    while log.entries.len() > retention {
        if let Some(e) = log.entries.pop_front() {
            log.compacted_through = e.rv;
        }
    }
}

/// Now, RFC 3339 with seconds and `Z`, as Kubernetes writes timestamps.
pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
