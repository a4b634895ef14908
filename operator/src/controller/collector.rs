//! Command results collected per command, not per tenant.
//!
//! Every tenant following a command asks the collector for its own invocation. The collector lists
//! the command's invocations (ListCommandInvocations, 50 a page) at most once per `ttl` and answers
//! every tenant of the command from that one listing: the 50 tenants of one observe batch cost one
//! call per round, not 50. A finished invocation is final and answered from memory until it is
//! forgotten. Only an output longer than the listing carries (2,500 characters) is read again, for
//! that one instance, with GetCommandInvocation.

use crate::aws::{Aws, AwsError, AwsScope, Invocation, ListedInvocation};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an untouched command is remembered.
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Listing {
    fetched: Option<Instant>,
    by_instance: BTreeMap<String, ListedInvocation>,
}

struct Slot {
    listing: tokio::sync::Mutex<Listing>,
    touched: Mutex<Instant>,
}

/// The shared collector.
pub struct Collector {
    ttl: Duration,
    slots: Mutex<HashMap<(AwsScope, String), Arc<Slot>>>,
}

impl Collector {
    /// A collector that lists one command at most once per `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Collector { ttl, slots: Mutex::new(HashMap::new()) }
    }

    fn slot(&self, scope: &AwsScope, command_id: &str) -> Arc<Slot> {
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, s| now.duration_since(*s.touched.lock().unwrap_or_else(|e| e.into_inner())) < FORGET_AFTER);
        let slot = slots
            .entry((scope.clone(), command_id.to_string()))
            .or_insert_with(|| Arc::new(Slot { listing: Default::default(), touched: Mutex::new(now) }))
            .clone();
        *slot.touched.lock().unwrap_or_else(|e| e.into_inner()) = now;
        slot
    }

    /// `instance`'s invocation of `command_id` (`None` while SSM lists none for it).
    pub async fn invocation(
        &self,
        aws: &dyn Aws,
        scope: &AwsScope,
        command_id: &str,
        instance: &str,
    ) -> Result<Option<Invocation>, AwsError> {
        let slot = self.slot(scope, command_id);
        // One listing at a time per command: the others wait for it and read its answer.
        let mut listing = slot.listing.lock().await;
        let known_final = listing.by_instance.get(instance).is_some_and(|l| l.invocation.status.is_final());
        let fresh = listing.fetched.is_some_and(|t| t.elapsed() < self.ttl);
        if !known_final && !fresh {
            let listed = aws.command_invocations(scope, command_id).await?;
            for l in listed {
                // A final answer never changes; keep the one already read in full.
                let keep = listing.by_instance.get(&l.instance).is_some_and(|old| old.invocation.status.is_final());
                if !keep {
                    listing.by_instance.insert(l.instance.clone(), l);
                }
            }
            listing.fetched = Some(Instant::now());
        }
        let Some(listed) = listing.by_instance.get(instance).cloned() else { return Ok(None) };
        if listed.complete || !listed.invocation.status.is_final() {
            return Ok(Some(listed.invocation));
        }
        // Cut by the listing's limit: the whole output from GetCommandInvocation, once.
        let whole = aws.invocation(scope, command_id, instance).await?;
        if let Some(inv) = &whole {
            listing.by_instance.insert(
                instance.to_string(),
                ListedInvocation { instance: instance.to_string(), invocation: inv.clone(), complete: true },
            );
        }
        Ok(whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::InvocationStatus;
    use crate::aws::counting::Counting;
    use crate::aws::fake::Fleet;

    /// One command on three instances: a short report, one with stderr, one too long to list.
    fn fleet(long: &str) -> Counting<Fleet> {
        let outputs = [("i-1", "{\"a\":1}"), ("i-2", "{\"a\":2}\n----------ERROR-------\nwarning: x"), ("i-3", long)]
            .into_iter()
            .map(|(i, o)| (i.to_string(), o.to_string()))
            .collect();
        let status = Mutex::new(Some(InvocationStatus::InProgress));
        Counting::new(Fleet { status, outputs, ..Fleet::default() }, None)
    }

    #[tokio::test]
    async fn the_tenants_of_one_command_share_one_listing_per_round_and_a_final_answer_is_kept() {
        let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(3000));
        let aws = fleet(&long);
        let c = Collector::new(Duration::from_secs(3600));
        let scope = AwsScope::default();
        for i in ["i-1", "i-2", "i-3", "i-1"] {
            let inv = c.invocation(&aws, &scope, "cmd", i).await.unwrap().unwrap();
            assert_eq!(inv.status, InvocationStatus::InProgress);
        }
        assert_eq!(aws.snapshot(), BTreeMap::from([("ListCommandInvocations".to_string(), 1)]));
        assert_eq!(c.invocation(&aws, &scope, "cmd", "i-9").await.unwrap(), None);

        // Finished: a new round lists again (the ttl is long, so only because of a new collector).
        *aws.inner().status.lock().unwrap() = Some(InvocationStatus::Success);
        let c = Collector::new(Duration::ZERO);
        let one = c.invocation(&aws, &scope, "cmd", "i-1").await.unwrap().unwrap();
        assert_eq!((one.status, one.stdout.as_str()), (InvocationStatus::Success, "{\"a\":1}"));
        // stderr after SSM's marker is not stdout.
        let two = c.invocation(&aws, &scope, "cmd", "i-2").await.unwrap().unwrap();
        assert_eq!((two.stdout.as_str(), two.stderr.as_str()), ("{\"a\":2}", "warning: x"));
        // Cut at 2,500 characters: read whole, once.
        let three = c.invocation(&aws, &scope, "cmd", "i-3").await.unwrap().unwrap();
        assert_eq!(three.stdout, long);
        let three_again = c.invocation(&aws, &scope, "cmd", "i-3").await.unwrap().unwrap();
        assert_eq!(three_again.stdout, long);
        // Final answers are not listed again, even with a ttl of zero.
        c.invocation(&aws, &scope, "cmd", "i-1").await.unwrap();
        let calls = aws.snapshot();
        assert_eq!(calls.get("GetCommandInvocation"), Some(&1), "{calls:?}");
        // One listing per collector: the second one's first call found all three final.
        assert_eq!(calls.get("ListCommandInvocations"), Some(&2), "{calls:?}");
    }
}
