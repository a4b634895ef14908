//! Per-tenant AWS questions answered in batches: requests that arrive within a short window are
//! grouped by AWS scope and answered by one call per group of up to [`MAX_BATCH`]. Instance
//! lookups (DescribeInstances) and agent pings (DescribeInstanceInformation) go through here, so
//! a rollout batch of 50 tenants costs one call of each, not 50.

use super::Error;
use crate::aws::{Aws, AwsError, AwsScope, InstanceInfo, InstanceQuery, Ping};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most requests answered by one call (SSM takes 50 instance ids per filter; EC2 200 values).
pub const MAX_BATCH: usize = 50;

type Answer<A> = Result<A, AwsError>;
type Handler<Q, A> =
    Arc<dyn Fn(AwsScope, Vec<Q>) -> Pin<Box<dyn Future<Output = Vec<Answer<A>>> + Send>> + Send + Sync>;

struct Request<Q, A> {
    scope: AwsScope,
    query: Q,
    reply: oneshot::Sender<Answer<A>>,
}

/// Handle to one batching task.
pub struct Batcher<Q, A> {
    tx: mpsc::Sender<Request<Q, A>>,
}

impl<Q, A> Clone for Batcher<Q, A> {
    fn clone(&self) -> Self {
        Batcher { tx: self.tx.clone() }
    }
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// Starts the task: `handle` answers one group (same scope, at most [`MAX_BATCH`] queries), one
    /// answer per query, in order.
    pub fn start(window: Duration, handle: Handler<Q, A>) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(rx, window, handle));
        Batcher { tx }
    }

    /// Asks, and waits for the batch's answer.
    pub async fn ask(&self, scope: &AwsScope, query: Q) -> Result<A, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { scope: scope.clone(), query, reply })
            .await
            .map_err(|_| Error::Batch("a batcher stopped".into()))?;
        Ok(rx.await.map_err(|_| Error::Batch("a batcher dropped a request".into()))??)
    }
}

async fn run<Q, A>(mut rx: mpsc::Receiver<Request<Q, A>>, window: Duration, handle: Handler<Q, A>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < MAX_BATCH * 4 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                _ => break,
            }
        }
        let mut by_scope: BTreeMap<AwsScope, Vec<Request<Q, A>>> = BTreeMap::new();
        for r in batch {
            by_scope.entry(r.scope.clone()).or_default().push(r);
        }
        for (scope, mut requests) in by_scope {
            while !requests.is_empty() {
                let rest = requests.split_off(requests.len().min(MAX_BATCH));
                let (queries, replies): (Vec<Q>, Vec<_>) = requests.into_iter().map(|r| (r.query, r.reply)).unzip();
                let answers = handle(scope.clone(), queries).await;
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
                requests = rest;
            }
        }
    }
}

/// Pings answered by one DescribeInstanceInformation per group.
pub fn pings(aws: Arc<dyn Aws>, window: Duration) -> Batcher<String, Ping> {
    Batcher::start(
        window,
        Arc::new(move |scope, ids: Vec<String>| {
            let aws = aws.clone();
            Box::pin(async move {
                let mut distinct = ids.clone();
                distinct.sort();
                distinct.dedup();
                match aws.ping(&scope, &distinct).await {
                    Ok(found) => ids.iter().map(|i| Ok(found.get(i).copied().unwrap_or(Ping::Unknown))).collect(),
                    Err(e) => ids.iter().map(|_| Err(e.clone())).collect(),
                }
            })
        }),
    )
}

/// Instance lookups answered by one DescribeInstances per group and shape: queries by id share
/// one call, queries by the same tag keys another (each key with every value asked for); each
/// query then gets exactly the instances it matches.
pub fn lookups(aws: Arc<dyn Aws>, window: Duration) -> Batcher<InstanceQuery, Vec<InstanceInfo>> {
    Batcher::start(
        window,
        Arc::new(move |scope, queries: Vec<InstanceQuery>| {
            let aws = aws.clone();
            Box::pin(async move {
                let mut shapes: BTreeMap<(bool, Vec<String>), InstanceQuery> = BTreeMap::new();
                for q in &queries {
                    let merged = shapes.entry(q.shape()).or_default();
                    merged.merge(q);
                }
                let mut found: BTreeMap<(bool, Vec<String>), Answer<Vec<InstanceInfo>>> = BTreeMap::new();
                for (shape, merged) in shapes {
                    found.insert(shape, aws.describe_instances(&scope, &merged).await);
                }
                queries
                    .iter()
                    .map(|q| match &found[&q.shape()] {
                        Ok(all) => Ok(all.iter().filter(|i| q.matches(i)).cloned().collect()),
                        Err(e) => Err(e.clone()),
                    })
                    .collect()
            })
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::counting::Counting;
    use crate::aws::fake::Fleet;

    fn host(id: &str, org: &str, env: &str) -> InstanceInfo {
        InstanceInfo {
            id: id.into(),
            state: "running".into(),
            tags: BTreeMap::from([("org".to_string(), org.to_string()), ("env".to_string(), env.to_string())]),
        }
    }

    fn by_org(org: &str) -> InstanceQuery {
        InstanceQuery { ids: vec![], tags: BTreeMap::from([("org".to_string(), vec![org.to_string()])]) }
    }

    #[tokio::test]
    async fn a_hundred_lookups_and_pings_in_one_window_cost_a_few_calls_and_each_gets_its_own_answer() {
        let mut hosts: Vec<InstanceInfo> =
            (0..100).map(|n| host(&format!("i-{n}"), &format!("o{n}"), "prod")).collect();
        // Two instances for one org: that tenant's answer is ambiguous, and nobody else's is.
        hosts.push(host("i-extra", "o5", "prod"));
        let offline = (1..10).map(|n| format!("i-{n}7")).chain(["i-7".to_string()]).collect();
        let aws: Arc<Counting<Fleet>> = Arc::new(Counting::new(Fleet { hosts, offline, ..Fleet::default() }, None));
        let lookups = lookups(aws.clone(), Duration::from_millis(200));
        let pings = pings(aws.clone(), Duration::from_millis(200));
        let scope = AwsScope::default();
        let mut asks = Vec::new();
        for n in 0..100 {
            let q = match n % 3 {
                0 => InstanceQuery { ids: vec![format!("i-{n}")], tags: BTreeMap::new() },
                1 => by_org(&format!("o{n}")),
                _ => {
                    let mut q = by_org(&format!("o{n}"));
                    q.tags.insert("env".into(), vec![if n == 8 { "staging" } else { "prod" }.into()]);
                    q
                }
            };
            let (lookups, pings, scope) = (lookups.clone(), pings.clone(), scope.clone());
            asks.push(tokio::spawn(async move {
                let found = lookups.ask(&scope, q).await.unwrap();
                let ping = pings.ask(&scope, format!("i-{n}")).await.unwrap();
                (n, found.into_iter().map(|i| i.id).collect::<Vec<_>>(), ping)
            }));
        }
        for a in asks {
            let (n, found, ping) = a.await.unwrap();
            let want: Vec<String> = match n {
                5 => vec!["i-5".into(), "i-extra".into()],
                8 => vec![],
                _ => vec![format!("i-{n}")],
            };
            assert_eq!(found, want, "tenant {n}");
            assert_eq!(ping, if n % 10 == 7 { Ping::ConnectionLost } else { Ping::Online }, "tenant {n}");
        }
        let calls = aws.snapshot();
        // 3 shapes (ids; org; org+env) in groups of at most 50 of 100: at most 2 calls per shape.
        let describes = calls["DescribeInstances"];
        assert!((3..=6).contains(&describes), "{calls:?}");
        assert!((2..=4).contains(&calls["DescribeInstanceInformation"]), "{calls:?}");
    }
}
