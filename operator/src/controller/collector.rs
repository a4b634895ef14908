//! Command results collected per command, and commands watched per scope, not per tenant.
//!
//! Every tenant following a command asks the collector for its own invocation. Two listings answer
//! them all:
//! - **How far each command has got**: one ListCommands per scope at most once per `ttl` (the
//!   poll interval) covers every command of the operator's document sent since the oldest one a
//!   tenant is following: a page of 50 commands, whatever the number of hosts behind them. While
//!   a scope has a single command followed, that command is listed instead (as cheap, and it
//!   tells each host's state).
//! - **Each host's result**: a command's invocations (ListCommandInvocations with their output, 50
//!   a page) are listed only when that sweep shows more of them final than the last listing did,
//!   or when the last listing is [`RELIST_AFTER`] old (to see which hosts a long command still
//!   waits for). A batch of 50 hosts that finish together costs one listing in all.
//!
//! A finished invocation is final and answered from memory until the command is forgotten. Only an
//! output longer than the listing carries (2,500 characters) is read again, for that one instance,
//! with GetCommandInvocation. A command the sweep cannot see (sent before the window, or not yet
//! known to SSM when it swept after the tenant started following it) is listed on its own, at most
//! once per `ttl`.

use crate::aws::{Aws, AwsError, AwsScope, CommandProgress, Invocation, InvocationStatus, ListedInvocation};
use crate::host::document::DOCUMENT_NAME;
use jiff::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an untouched command is remembered.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// A command not yet final is listed again after this long even when no more of it is final.
pub const RELIST_AFTER: Duration = Duration::from_secs(30);

/// How far before the oldest followed command the sweep's window opens (clock skew, and the
/// filter's whole seconds).
const SWEEP_SLACK: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Listing {
    fetched: Option<Instant>,
    /// Final invocations in the last listing.
    completed: u32,
    by_instance: BTreeMap<String, ListedInvocation>,
}

struct Slot {
    listing: tokio::sync::Mutex<Listing>,
    /// When the collector first heard of the command.
    known: Instant,
    touched: Mutex<Instant>,
    /// The earliest time a follower says the command was sent.
    sent: Mutex<Timestamp>,
    /// Every invocation of it was final when last listed.
    done: AtomicBool,
}

/// Commands followed at once in a scope before they are swept rather than listed one by one.
const MIN_SWEPT: usize = 2;

/// What the scope's sweep says of one command.
enum Sweep {
    /// How far it has got.
    Shows(CommandProgress),
    /// Not among the commands the sweep made at this instant listed.
    Missing(Instant),
    /// No sweep (too few commands followed): list the command itself.
    Skipped,
}

/// One scope's sweep: how far each command had got when it was last listed.
#[derive(Default)]
struct Board {
    swept: Option<Instant>,
    progress: HashMap<String, CommandProgress>,
}

/// The shared collector.
pub struct Collector {
    ttl: Duration,
    relist_after: Duration,
    slots: Mutex<HashMap<(AwsScope, String), Arc<Slot>>>,
    boards: Mutex<HashMap<AwsScope, Arc<tokio::sync::Mutex<Board>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Collector {
    /// A collector that sweeps a scope, and lists a command it cannot see, at most once per `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Collector {
            ttl,
            relist_after: RELIST_AFTER,
            slots: Mutex::new(HashMap::new()),
            boards: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, scope: &AwsScope, command_id: &str, sent: Timestamp) -> Arc<Slot> {
        let now = Instant::now();
        let mut slots = lock(&self.slots);
        slots.retain(|_, s| now.duration_since(*lock(&s.touched)) < FORGET_AFTER);
        let slot = slots
            .entry((scope.clone(), command_id.to_string()))
            .or_insert_with(|| {
                Arc::new(Slot {
                    listing: Default::default(),
                    known: now,
                    touched: Mutex::new(now),
                    sent: Mutex::new(sent),
                    done: AtomicBool::new(false),
                })
            })
            .clone();
        *lock(&slot.touched) = now;
        let mut earliest = lock(&slot.sent);
        *earliest = (*earliest).min(sent);
        drop(earliest);
        slot
    }

    /// The commands of `scope` followed lately and not known to be done: how many, and when the
    /// oldest was sent.
    fn followed(&self, scope: &AwsScope) -> (usize, Option<Timestamp>) {
        let active = self.ttl * 3 + Duration::from_secs(2);
        let slots = lock(&self.slots);
        let sent: Vec<Timestamp> = slots
            .iter()
            .filter(|((s, _), slot)| {
                s == scope && !slot.done.load(Ordering::Relaxed) && lock(&slot.touched).elapsed() < active
            })
            .map(|(_, slot)| *lock(&slot.sent))
            .collect();
        (sent.len(), sent.into_iter().min())
    }

    /// How far `command_id` has got as of the scope's latest sweep, sweeping first when the last
    /// one is `ttl` old. With a single command followed, listing it is as cheap as a sweep and
    /// tells more: no sweep.
    async fn progress(&self, aws: &dyn Aws, scope: &AwsScope, command_id: &str) -> Result<Sweep, AwsError> {
        let board = lock(&self.boards).entry(scope.clone()).or_default().clone();
        let mut board = board.lock().await;
        if board.swept.is_none_or(|t| t.elapsed() >= self.ttl) {
            let (count, oldest) = self.followed(scope);
            let Some(oldest) = oldest.filter(|_| count >= MIN_SWEPT) else {
                board.progress.clear();
                board.swept = None;
                return Ok(Sweep::Skipped);
            };
            let slack = jiff::SignedDuration::try_from(SWEEP_SLACK).unwrap_or_default();
            let since = oldest.checked_sub(slack).unwrap_or(oldest);
            let listed = aws.commands_since(scope, DOCUMENT_NAME, since).await?;
            board.progress = listed.into_iter().map(|p| (p.id.clone(), p)).collect();
            board.swept = Some(Instant::now());
        }
        Ok(match (board.progress.get(command_id), board.swept) {
            (Some(p), _) => Sweep::Shows(p.clone()),
            (None, Some(at)) => Sweep::Missing(at),
            (None, None) => Sweep::Skipped,
        })
    }

    /// `instance`'s invocation of `command_id` (`None` while SSM lists none for it). `sent` is
    /// when the follower says the command was sent (its intent's time): the sweep's window opens
    /// before the oldest one.
    pub async fn invocation(
        &self,
        aws: &dyn Aws,
        scope: &AwsScope,
        command_id: &str,
        instance: &str,
        sent: Timestamp,
    ) -> Result<Option<Invocation>, AwsError> {
        let slot = self.slot(scope, command_id, sent);
        let known_final = |l: &Listing| l.by_instance.get(instance).is_some_and(|l| l.invocation.status.is_final());
        if !known_final(&*slot.listing.lock().await) {
            let sweep = self.progress(aws, scope, command_id).await?;
            // One listing at a time per command: the others wait for it and read its answer.
            let mut listing = slot.listing.lock().await;
            if !known_final(&listing) {
                let since_listed = listing.fetched.unwrap_or(slot.known).elapsed();
                let list = match &sweep {
                    Sweep::Shows(p) => p.completed > listing.completed || since_listed >= self.relist_after,
                    // Swept before the command was known: the next sweep will show it.
                    Sweep::Missing(swept) if *swept < slot.known && listing.fetched.is_none() => false,
                    Sweep::Missing(_) | Sweep::Skipped => listing.fetched.is_none_or(|t| t.elapsed() >= self.ttl),
                };
                if list {
                    let listed = aws.command_invocations(scope, command_id).await?;
                    for l in listed {
                        // A final answer never changes; keep the one already read in full.
                        let keep =
                            listing.by_instance.get(&l.instance).is_some_and(|old| old.invocation.status.is_final());
                        if !keep {
                            listing.by_instance.insert(l.instance.clone(), l);
                        }
                    }
                    let finals = listing.by_instance.values().filter(|l| l.invocation.status.is_final()).count();
                    listing.completed = u32::try_from(finals).unwrap_or(u32::MAX);
                    slot.done.store(finals > 0 && finals == listing.by_instance.len(), Ordering::Relaxed);
                    listing.fetched = Some(Instant::now());
                }
            }
            if !listing.by_instance.contains_key(instance) {
                // Not listed yet: the command's own state stands for the host's while it runs.
                let Sweep::Shows(p) = sweep else { return Ok(None) };
                if p.status.is_final() || listing.fetched.is_some() {
                    return Ok(None);
                }
                let status = match p.status {
                    InvocationStatus::Pending => InvocationStatus::Pending,
                    _ => InvocationStatus::InProgress,
                };
                return Ok(Some(Invocation { status, stdout: String::new(), stderr: String::new() }));
            }
        }
        let mut listing = slot.listing.lock().await;
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
    use crate::aws::counting::Counting;
    use crate::aws::fake::{COMMAND, Fleet};

    /// One command on three instances: a short report, one with stderr, one too long to list.
    fn fleet(long: &str) -> Counting<Fleet> {
        let outputs = [("i-1", "{\"a\":1}"), ("i-2", "{\"a\":2}\n----------ERROR-------\nwarning: x"), ("i-3", long)]
            .into_iter()
            .map(|(i, o)| (i.to_string(), o.to_string()))
            .collect();
        let status = Mutex::new(Some(InvocationStatus::InProgress));
        Counting::new(Fleet { status, outputs, ..Fleet::default() }, None)
    }

    fn calls(aws: &Counting<Fleet>) -> Vec<(String, u64)> {
        aws.snapshot().into_iter().collect()
    }

    fn counts(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[tokio::test]
    async fn a_command_is_listed_when_more_of_it_is_final_and_a_final_answer_is_kept() {
        let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(3000));
        let aws = fleet(&long);
        let scope = AwsScope::default();
        let sent = Timestamp::now();
        // A ttl of zero: every question sweeps again, so only the rule keeps listings down.
        let c = Collector::new(Duration::ZERO);
        // A single command followed is listed, not swept.
        c.invocation(&aws, &scope, "other", "i-1", sent).await.unwrap().unwrap();
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 1)]));

        // Two followed, running everywhere: the sweep answers, nothing is listed.
        for i in ["i-1", "i-2", "i-3", "i-1"] {
            let inv = c.invocation(&aws, &scope, COMMAND, i, sent).await.unwrap().unwrap();
            assert_eq!(inv.status, InvocationStatus::InProgress);
        }
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 1), ("ListCommands", 4)]));

        // One host done: the next question lists the command once; the others read that listing.
        aws.inner().per_instance.lock().unwrap().insert("i-2".into(), InvocationStatus::Success);
        let two = c.invocation(&aws, &scope, COMMAND, "i-2", sent).await.unwrap().unwrap();
        assert_eq!((two.stdout.as_str(), two.stderr.as_str()), ("{\"a\":2}", "warning: x"));
        assert_eq!(two.status, InvocationStatus::Success);
        let one = c.invocation(&aws, &scope, COMMAND, "i-1", sent).await.unwrap().unwrap();
        assert_eq!(one.status, InvocationStatus::InProgress);
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 2), ("ListCommands", 6)]));
        // A final answer is not asked about again: no sweep, no listing.
        c.invocation(&aws, &scope, COMMAND, "i-2", sent).await.unwrap();
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 2), ("ListCommands", 6)]));

        // All done: one listing more, and the output cut at 2,500 characters read whole, once.
        *aws.inner().status.lock().unwrap() = Some(InvocationStatus::Success);
        let one = c.invocation(&aws, &scope, COMMAND, "i-1", sent).await.unwrap().unwrap();
        assert_eq!((one.status, one.stdout.as_str()), (InvocationStatus::Success, "{\"a\":1}"));
        for _ in 0..2 {
            let three = c.invocation(&aws, &scope, COMMAND, "i-3", sent).await.unwrap().unwrap();
            assert_eq!(three.stdout, long);
        }
        assert_eq!(
            calls(&aws),
            counts(&[("GetCommandInvocation", 1), ("ListCommandInvocations", 3), ("ListCommands", 7)])
        );
        // An instance the command never had: none.
        assert_eq!(c.invocation(&aws, &scope, COMMAND, "i-9", sent).await.unwrap(), None);
    }

    #[tokio::test]
    async fn followers_of_one_scope_share_one_sweep_per_round() {
        let aws = fleet("{}");
        let scope = AwsScope::default();
        let c = Collector::new(Duration::from_secs(3600));
        c.invocation(&aws, &scope, "other", "i-1", Timestamp::now()).await.unwrap();
        for i in ["i-1", "i-2", "i-3"] {
            c.invocation(&aws, &scope, COMMAND, i, Timestamp::now()).await.unwrap().unwrap();
        }
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 1), ("ListCommands", 1)]));
    }

    #[tokio::test]
    async fn a_command_the_sweep_does_not_show_is_listed_on_its_own() {
        let aws = fleet("{}");
        let scope = AwsScope::default();
        let c = Collector::new(Duration::from_secs(3600));
        c.invocation(&aws, &scope, "a", "i-1", Timestamp::now()).await.unwrap();
        c.invocation(&aws, &scope, COMMAND, "i-1", Timestamp::now()).await.unwrap();
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 1), ("ListCommands", 1)]));
        // Swept before "other" was known: no answer yet, and nothing listed for it.
        assert_eq!(c.invocation(&aws, &scope, "other", "i-1", Timestamp::now()).await.unwrap(), None);
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 1), ("ListCommands", 1)]));
        // Swept after it was known and still not there: listed directly.
        let c = Collector::new(Duration::from_secs(3600));
        c.invocation(&aws, &scope, "a", "i-1", Timestamp::now()).await.unwrap();
        let inv = c.invocation(&aws, &scope, "other", "i-1", Timestamp::now()).await.unwrap().unwrap();
        assert_eq!(inv.status, InvocationStatus::InProgress);
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 3), ("ListCommands", 2)]));
    }

    #[tokio::test]
    async fn a_long_command_is_listed_again_to_see_which_hosts_it_waits_for() {
        let aws = fleet("{}");
        let scope = AwsScope::default();
        let mut c = Collector::new(Duration::ZERO);
        let sent = Timestamp::now();
        c.invocation(&aws, &scope, "other", "i-1", sent).await.unwrap();
        c.invocation(&aws, &scope, COMMAND, "i-1", sent).await.unwrap();
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 1), ("ListCommands", 1)]));
        aws.inner().per_instance.lock().unwrap().insert("i-1".into(), InvocationStatus::Pending);
        // As if RELIST_AFTER had passed since the collector heard of the command.
        c.relist_after = Duration::ZERO;
        let inv = c.invocation(&aws, &scope, COMMAND, "i-1", sent).await.unwrap().unwrap();
        assert_eq!(inv.status, InvocationStatus::Pending, "the host's own state, from a listing");
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 2), ("ListCommands", 2)]));
    }

    #[tokio::test]
    async fn a_command_done_everywhere_no_longer_counts_towards_a_sweep() {
        let aws = fleet("{}");
        *aws.inner().status.lock().unwrap() = Some(InvocationStatus::Success);
        let scope = AwsScope::default();
        let c = Collector::new(Duration::ZERO);
        c.invocation(&aws, &scope, "before", "i-1", Timestamp::now()).await.unwrap();
        // The next observe's command is the only one followed: listed, not swept.
        c.invocation(&aws, &scope, COMMAND, "i-1", Timestamp::now()).await.unwrap();
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 2)]));
    }
}
