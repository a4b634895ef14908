//! Which Tenant claims which instance, kept from the Tenant controller's own watch: the rival-claim
//! check reads it instead of listing every Tenant of the cluster in each reconcile (a LIST per
//! reconcile is O(N²) API work a resync).
//!
//! A Tenant claims the instance its `spec.instance.id` names, the one its `status.instanceId`
//! records, and its org (slug and region). Of two Tenants with a claim in common the older wins
//! (creation time, then namespace and name): the younger one is told which Tenant holds it.
//!
//! [`Claims`] is plain data with synchronous updates, tested without an API server; [`Index`]
//! shares it between the watch (which feeds it [`watcher::Event`]s) and the reconciles, and says
//! when it has seen a whole list: before that, a rival may simply not be in it yet.

use crate::crd::Tenant;
use kube::ResourceExt;
use kube::runtime::watcher;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// An org: its slug and its region.
pub type Org = (String, Option<String>);
/// The Tenants that claim one thing, oldest first (with their uids).
type Holders = BTreeSet<(Claimant, String)>;

/// Who claims: ordered by age (creation time, then namespace and name), oldest first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claimant {
    /// Creation time (RFC 3339; `None` sorts first, as an object the server has not dated).
    pub created: Option<jiff::Timestamp>,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for Claimant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One Tenant's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Its uid (what tells it apart from a Tenant of the same name created again).
    pub uid: String,
    /// Who it is.
    pub who: Claimant,
    /// Instances it names or holds (spec.instance.id, status.instanceId).
    pub instances: BTreeSet<String>,
    /// Its org.
    pub org: Org,
}

impl Claim {
    /// The claims of a Tenant as the watch delivered it (`None`: it has no uid yet).
    pub fn of(t: &Tenant) -> Option<Claim> {
        let instances =
            t.spec.instance.id.iter().chain(t.status.as_ref().and_then(|s| s.instance_id.as_ref())).cloned().collect();
        Some(Claim {
            uid: t.uid()?,
            who: Claimant {
                created: t.metadata.creation_timestamp.as_ref().map(|c| c.0),
                namespace: t.namespace().unwrap_or_default(),
                name: t.name_any(),
            },
            instances,
            org: (t.spec.slug.clone(), t.spec.instance.region.clone()),
        })
    }
}

/// Every Tenant's claims, by instance and by org.
#[derive(Debug, Default)]
pub struct Claims {
    by_uid: HashMap<String, Claim>,
    by_instance: HashMap<String, Holders>,
    by_org: HashMap<Org, Holders>,
}

impl Claims {
    /// Records a Tenant's claims (replacing what it claimed before).
    pub fn upsert(&mut self, claim: Claim) {
        self.remove(&claim.uid);
        let key = (claim.who.clone(), claim.uid.clone());
        for i in &claim.instances {
            self.by_instance.entry(i.clone()).or_default().insert(key.clone());
        }
        self.by_org.entry(claim.org.clone()).or_default().insert(key);
        self.by_uid.insert(claim.uid.clone(), claim);
    }

    /// Forgets a Tenant.
    pub fn remove(&mut self, uid: &str) {
        let Some(old) = self.by_uid.remove(uid) else { return };
        let key = (old.who, old.uid);
        for i in &old.instances {
            if let Some(set) = self.by_instance.get_mut(i) {
                set.remove(&key);
                if set.is_empty() {
                    self.by_instance.remove(i);
                }
            }
        }
        if let Some(set) = self.by_org.get_mut(&old.org) {
            set.remove(&key);
            if set.is_empty() {
                self.by_org.remove(&old.org);
            }
        }
    }

    /// The oldest other Tenant, older than `me`, that claims `instance` or `me`'s org.
    pub fn rival(&self, me: &Claim, instance: &str) -> Option<&Claimant> {
        let by_instance = self.by_instance.get(instance).into_iter().flatten();
        let by_org = self.by_org.get(&me.org).into_iter().flatten();
        by_instance.chain(by_org).filter(|(who, uid)| *uid != me.uid && *who < me.who).map(|(who, _)| who).min()
    }

    /// How many Tenants are indexed.
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    /// No Tenant indexed.
    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }
}

/// [`Claims`] fed by a Tenant watch, shared with the reconciles.
#[derive(Clone, Debug, Default)]
pub struct Index {
    inner: Arc<RwLock<State>>,
    ready: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Default)]
struct State {
    live: Claims,
    /// A (re)list under way: its claims, swapped in whole once it is done.
    relist: Option<Claims>,
    /// A whole list has been seen.
    ready: bool,
}

impl Index {
    /// Takes one watch event into the index.
    pub fn observe(&self, event: &watcher::Event<Tenant>) {
        let mut s = match self.inner.write() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        match event {
            watcher::Event::Apply(t) => {
                if let Some(c) = Claim::of(t) {
                    s.live.upsert(c);
                }
            }
            watcher::Event::Delete(t) => {
                if let Some(uid) = t.uid() {
                    s.live.remove(&uid);
                }
            }
            watcher::Event::Init => s.relist = Some(Claims::default()),
            watcher::Event::InitApply(t) => {
                if let (Some(relist), Some(c)) = (s.relist.as_mut(), Claim::of(t)) {
                    relist.upsert(c);
                }
            }
            watcher::Event::InitDone => {
                if let Some(fresh) = s.relist.take() {
                    s.live = fresh;
                }
                s.ready = true;
                drop(s);
                self.ready.notify_waiters();
            }
        }
    }

    /// The rival of `tenant` for `instance` (see [`Claims::rival`]), once a whole list has been
    /// seen: until then a rival might not be indexed yet, so this waits for it.
    pub async fn rival(&self, tenant: &Tenant, instance: &str) -> Option<Claimant> {
        let me = Claim::of(tenant)?;
        loop {
            let notified = self.ready.notified();
            {
                let s = match self.inner.read() {
                    Ok(s) => s,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if s.ready {
                    return s.live.rival(&me, instance).cloned();
                }
            }
            notified.await;
        }
    }

    /// How many Tenants the live index holds.
    pub fn len(&self) -> usize {
        match self.inner.read() {
            Ok(s) => s.live.len(),
            Err(poisoned) => poisoned.into_inner().live.len(),
        }
    }

    /// The live index holds no Tenant.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tenant(
        ns: &str,
        name: &str,
        uid: &str,
        created: &str,
        slug: &str,
        id: Option<&str>,
        held: Option<&str>,
    ) -> Tenant {
        let mut t: Tenant = serde_json::from_value(json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "namespace": ns, "uid": uid, "creationTimestamp": created},
            "spec": {"slug": slug, "channel": "stable", "instance": {"region": "eu-west-1"}},
        }))
        .expect("a tenant");
        t.spec.instance.id = id.map(str::to_string);
        if let Some(h) = held {
            t.status = Some(crate::crd::TenantStatus { instance_id: Some(h.into()), ..Default::default() });
        }
        t
    }

    fn claims(ts: &[&Tenant]) -> Claims {
        let mut c = Claims::default();
        for t in ts {
            c.upsert(Claim::of(t).expect("a uid"));
        }
        c
    }

    fn rival(c: &Claims, t: &Tenant, instance: &str) -> Option<String> {
        c.rival(&Claim::of(t).expect("a uid"), instance).map(ToString::to_string)
    }

    #[test]
    fn the_oldest_claim_on_an_instance_or_an_org_wins_and_names_the_holder() {
        let old = tenant("a", "old", "u1", "2026-01-01T00:00:00Z", "acme", Some("i-1"), None);
        let young = tenant("b", "young", "u2", "2026-02-01T00:00:00Z", "other", Some("i-1"), None);
        let holder = tenant("a", "holder", "u3", "2025-12-01T00:00:00Z", "third", None, Some("i-9"));
        let same_org = tenant("c", "dup", "u4", "2026-03-01T00:00:00Z", "acme", None, None);
        let c = claims(&[&old, &young, &holder, &same_org]);
        // By spec.instance.id: the younger one is told who holds it; the older one has no rival.
        assert_eq!(rival(&c, &young, "i-1").as_deref(), Some("a/old"));
        assert_eq!(rival(&c, &old, "i-1"), None);
        // By status.instanceId: the instance another Tenant found by tags and holds.
        assert_eq!(rival(&c, &old, "i-9").as_deref(), Some("a/holder"));
        // By org (same slug and region), whatever the instance.
        assert_eq!(rival(&c, &same_org, "i-5").as_deref(), Some("a/old"));
        // The same org in another region is another org.
        let elsewhere = {
            let mut t = tenant("c", "eu2", "u5", "2026-04-01T00:00:00Z", "acme", None, None);
            t.spec.instance.region = Some("eu-central-1".into());
            t
        };
        assert_eq!(rival(&claims(&[&old, &elsewhere]), &elsewhere, "i-7"), None);
    }

    #[test]
    fn same_age_goes_by_namespace_then_name_and_a_tenant_is_never_its_own_rival() {
        let a = tenant("x", "a", "u1", "2026-01-01T00:00:00Z", "s1", Some("i-1"), None);
        let b = tenant("x", "b", "u2", "2026-01-01T00:00:00Z", "s2", Some("i-1"), None);
        let c = claims(&[&a, &b]);
        assert_eq!(rival(&c, &b, "i-1").as_deref(), Some("x/a"));
        assert_eq!(rival(&c, &a, "i-1"), None);
        assert_eq!(rival(&claims(&[&a]), &a, "i-1"), None);
    }

    #[test]
    fn a_changed_or_deleted_tenant_gives_up_what_it_claimed() {
        let old = tenant("a", "old", "u1", "2026-01-01T00:00:00Z", "acme", Some("i-1"), None);
        let young = tenant("b", "young", "u2", "2026-02-01T00:00:00Z", "other", Some("i-1"), None);
        let mut c = claims(&[&old, &young]);
        // The older one now names another instance: i-1 is free.
        let moved = tenant("a", "old", "u1", "2026-01-01T00:00:00Z", "acme", Some("i-2"), None);
        c.upsert(Claim::of(&moved).expect("uid"));
        assert_eq!(rival(&c, &young, "i-1"), None);
        // ... and the instance it names now is its own.
        assert_eq!(rival(&c, &young, "i-2").as_deref(), Some("a/old"));
        c.remove("u1");
        assert_eq!(c.len(), 1);
        assert!(!c.by_instance.contains_key("i-2") && c.by_org.len() == 1, "nothing left behind: {c:?}");
        c.remove("u2");
        assert!(c.is_empty() && c.by_instance.is_empty() && c.by_org.is_empty());
    }

    #[tokio::test]
    async fn the_index_answers_once_a_whole_list_is_seen_and_a_relist_replaces_it_whole() {
        let old = tenant("a", "old", "u1", "2026-01-01T00:00:00Z", "acme", Some("i-1"), None);
        let young = tenant("b", "young", "u2", "2026-02-01T00:00:00Z", "other", Some("i-1"), None);
        let index = Index::default();
        index.observe(&watcher::Event::Init);
        index.observe(&watcher::Event::InitApply(young.clone()));
        // The list is not done: the older claim may still come, so the answer waits.
        let waiting = tokio::spawn({
            let (index, young) = (index.clone(), young.clone());
            async move { index.rival(&young, "i-1").await }
        });
        index.observe(&watcher::Event::InitApply(old.clone()));
        assert!(!waiting.is_finished());
        index.observe(&watcher::Event::InitDone);
        assert_eq!(waiting.await.expect("joined").map(|c| c.to_string()).as_deref(), Some("a/old"));
        // A relist without `old` (deleted while the watch was away) drops it once the list is done.
        index.observe(&watcher::Event::Init);
        index.observe(&watcher::Event::InitApply(young.clone()));
        assert_eq!(index.rival(&young, "i-1").await.map(|c| c.to_string()).as_deref(), Some("a/old"));
        index.observe(&watcher::Event::InitDone);
        assert_eq!(index.rival(&young, "i-1").await, None);
        assert_eq!(index.len(), 1);
        // Live events after the list.
        index.observe(&watcher::Event::Apply(old.clone()));
        assert_eq!(index.rival(&young, "i-1").await.map(|c| c.to_string()).as_deref(), Some("a/old"));
        index.observe(&watcher::Event::Delete(old));
        assert_eq!(index.rival(&young, "i-1").await, None);
    }
}
