//! Command results collected per command, and commands watched per scope, not per tenant.
//!
//! Every tenant following a command asks the collector for its own invocation. Two listings answer
//! them all:
//! - **How far each command has got**: one ListCommands per scope covers every command of the
//!   operator's document sent since the oldest one a tenant is following: a page of 50 commands,
//!   whatever the number of hosts behind them. It is made at most once per `ttl` (the poll
//!   interval), and less often as the youngest command followed ages: every tenth of its age, at
//!   most every 10 s. While
//!   a scope has a single command followed, that command is listed instead (as cheap, and it
//!   tells each host's state).
//! - **Each host's result**: a command's invocations (ListCommandInvocations with their output, 50
//!   a page) are listed once the sweep shows every one of them final, or when the last listing is
//!   [`RELIST_AFTER`] old (to answer the hosts that finished, and see which ones a long command
//!   still waits for). A batch of 50 hosts costs one listing in all. A host that finished early
//!   reads "in progress" until its batch is done: its batch is not done before that anyway.
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
use std::time::Duration;
// Tokio's clock: the same as std's in production, and a paused one in the fleet model's test.
use tokio::time::Instant;

/// How long an untouched command is remembered.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// A command not yet done everywhere is listed again after this long: the hosts that finished
/// are answered, and a host still `Pending` (its agent away) is seen as such.
pub const RELIST_AFTER: Duration = Duration::from_secs(60);

/// How far before the oldest followed command the sweep's window opens (clock skew, and the
/// filter's whole seconds).
const SWEEP_SLACK: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Listing {
    fetched: Option<Instant>,
    by_instance: BTreeMap<String, ListedInvocation>,
}

impl Listing {
    /// Invocations final in the last listing.
    fn completed(&self) -> u32 {
        let finals = self.by_instance.values().filter(|l| l.invocation.status.is_final()).count();
        u32::try_from(finals).unwrap_or(u32::MAX)
    }
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

/// The longest wait between two sweeps of a scope.
const SWEEP_AT_MOST: Duration = Duration::from_secs(10);

/// The commands of a scope followed lately and not known to be done.
#[derive(Default)]
struct Followed {
    count: usize,
    /// When the oldest was sent.
    oldest: Option<Timestamp>,
    /// How long the collector has known the youngest.
    youngest: Option<Duration>,
}

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
    sweep_at_most: Duration,
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
            sweep_at_most: SWEEP_AT_MOST,
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
    fn followed(&self, scope: &AwsScope) -> Followed {
        let active = self.ttl * 3 + Duration::from_secs(2);
        let slots = lock(&self.slots);
        let mut f = Followed::default();
        for ((s, _), slot) in slots.iter() {
            if s != scope || slot.done.load(Ordering::Relaxed) || lock(&slot.touched).elapsed() >= active {
                continue;
            }
            let sent = *lock(&slot.sent);
            let age = slot.known.elapsed();
            f.count += 1;
            f.oldest = Some(f.oldest.map_or(sent, |o| o.min(sent)));
            f.youngest = Some(f.youngest.map_or(age, |y| y.min(age)));
        }
        f
    }

    /// How often the scope is swept: every `ttl` while its youngest command is young, then every
    /// tenth of that command's age (so a command is seen done at most 10% of its run time late,
    /// within the rollout's 1.10x of its theoretical minimum), at most every [`SWEEP_AT_MOST`].
    fn sweep_every(&self, followed: &Followed) -> Duration {
        let tenth = followed.youngest.unwrap_or_default() / 10;
        tenth.min(self.sweep_at_most).max(self.ttl)
    }

    /// How far `command_id` has got as of the scope's latest sweep, sweeping first when the last
    /// one is old ([`Collector::sweep_every`]). With a single command followed, listing it is as
    /// cheap as a sweep and tells more: no sweep. Also says how often the scope is swept now (a
    /// command listed on its own is listed as often).
    async fn progress(&self, aws: &dyn Aws, scope: &AwsScope, command_id: &str) -> Result<(Sweep, Duration), AwsError> {
        let board = lock(&self.boards).entry(scope.clone()).or_default().clone();
        let mut board = board.lock().await;
        let followed = self.followed(scope);
        let every = self.sweep_every(&followed);
        if board.swept.is_none_or(|t| t.elapsed() >= every) {
            let Some(oldest) = followed.oldest.filter(|_| followed.count >= MIN_SWEPT) else {
                board.progress.clear();
                board.swept = None;
                return Ok((Sweep::Skipped, every));
            };
            let slack = jiff::SignedDuration::try_from(SWEEP_SLACK).unwrap_or_default();
            let since = oldest.checked_sub(slack).unwrap_or(oldest);
            let listed = aws.commands_since(scope, DOCUMENT_NAME, since).await?;
            board.progress = listed.into_iter().map(|p| (p.id.clone(), p)).collect();
            board.swept = Some(Instant::now());
        }
        let sweep = match (board.progress.get(command_id), board.swept) {
            (Some(p), _) => Sweep::Shows(p.clone()),
            (None, Some(at)) => Sweep::Missing(at),
            (None, None) => Sweep::Skipped,
        };
        Ok((sweep, every))
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
            let (sweep, every) = self.progress(aws, scope, command_id).await?;
            // One listing at a time per command: the others wait for it and read its answer.
            let mut listing = slot.listing.lock().await;
            if !known_final(&listing) {
                let since_listed = listing.fetched.unwrap_or(slot.known).elapsed();
                let list = match &sweep {
                    Sweep::Shows(p) => {
                        (p.completed >= p.targets && p.completed > listing.completed())
                            || since_listed >= self.relist_after
                    }
                    // Swept before the command was known: the next sweep will show it.
                    Sweep::Missing(swept) if *swept <= slot.known && listing.fetched.is_none() => false,
                    Sweep::Missing(_) | Sweep::Skipped => listing.fetched.is_none_or(|t| t.elapsed() >= every),
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
                    let finals = listing.completed() as usize;
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
        let mut c = Collector::new(Duration::ZERO);
        c.sweep_at_most = Duration::ZERO;
        // A single command followed is listed, not swept.
        c.invocation(&aws, &scope, "other", "i-1", sent).await.unwrap().unwrap();
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 1)]));

        // Two followed, running everywhere: the sweep answers, nothing is listed.
        for i in ["i-1", "i-2", "i-3", "i-1"] {
            let inv = c.invocation(&aws, &scope, COMMAND, i, sent).await.unwrap().unwrap();
            assert_eq!(inv.status, InvocationStatus::InProgress);
        }
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 1), ("ListCommands", 4)]));

        // One host done: still "in progress" for all, from the sweep; nothing listed until the
        // command is done everywhere (or RELIST_AFTER passed).
        aws.inner().per_instance.lock().unwrap().insert("i-2".into(), InvocationStatus::Success);
        let two = c.invocation(&aws, &scope, COMMAND, "i-2", sent).await.unwrap().unwrap();
        assert_eq!(two.status, InvocationStatus::InProgress);
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 1), ("ListCommands", 5)]));

        // All done: one listing, every host answered from it; the output cut at 2,500 characters
        // read whole, once; a final answer not asked about again.
        *aws.inner().status.lock().unwrap() = Some(InvocationStatus::Success);
        let one = c.invocation(&aws, &scope, COMMAND, "i-1", sent).await.unwrap().unwrap();
        assert_eq!((one.status, one.stdout.as_str()), (InvocationStatus::Success, "{\"a\":1}"));
        let two = c.invocation(&aws, &scope, COMMAND, "i-2", sent).await.unwrap().unwrap();
        assert_eq!((two.stdout.as_str(), two.stderr.as_str()), ("{\"a\":2}", "warning: x"));
        for _ in 0..2 {
            let three = c.invocation(&aws, &scope, COMMAND, "i-3", sent).await.unwrap().unwrap();
            assert_eq!(three.stdout, long);
        }
        assert_eq!(
            calls(&aws),
            counts(&[("GetCommandInvocation", 1), ("ListCommandInvocations", 2), ("ListCommands", 6)])
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
        c.sweep_at_most = Duration::ZERO;
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
        let mut c = Collector::new(Duration::ZERO);
        c.sweep_at_most = Duration::ZERO;
        c.invocation(&aws, &scope, "before", "i-1", Timestamp::now()).await.unwrap();
        // The next observe's command is the only one followed: listed, not swept.
        c.invocation(&aws, &scope, COMMAND, "i-1", Timestamp::now()).await.unwrap();
        assert_eq!(calls(&aws), counts(&[("ListCommandInvocations", 2)]));
    }

    /// A command of the model: when it went out (wall clock and tokio's), and each host with
    /// how long after that it is done.
    type ModelCommand = (Timestamp, Instant, Vec<(String, Duration)>);

    /// A fleet in a model: commands whose hosts each finish a fixed time after the send, on
    /// tokio's (paused) clock, and the pages SSM would answer each listing with.
    struct Model {
        start: Instant,
        wall: Timestamp,
        commands: Mutex<HashMap<String, ModelCommand>>,
        pages: Mutex<BTreeMap<&'static str, u64>>,
    }

    impl Model {
        /// The model's wall clock: the start's, moved on by tokio's clock.
        fn now(&self) -> Timestamp {
            let run = jiff::SignedDuration::try_from(self.start.elapsed()).unwrap();
            self.wall.checked_add(run).unwrap()
        }
        fn page(&self, op: &'static str, items: usize) {
            *lock(&self.pages).entry(op).or_default() += items.div_ceil(50).max(1) as u64;
        }
        fn status(sent: Instant, after: Duration) -> InvocationStatus {
            if sent.elapsed() >= after { InvocationStatus::Success } else { InvocationStatus::InProgress }
        }
    }

    #[async_trait::async_trait]
    impl Aws for Model {
        async fn describe_instances(
            &self,
            _: &AwsScope,
            _: &crate::aws::InstanceQuery,
        ) -> Result<Vec<crate::aws::InstanceInfo>, AwsError> {
            unreachable!()
        }
        async fn ping(&self, _: &AwsScope, _: &[String]) -> Result<BTreeMap<String, crate::aws::Ping>, AwsError> {
            unreachable!()
        }
        async fn ensure_document(&self, _: &AwsScope, _: &str, _: &str) -> Result<String, AwsError> {
            unreachable!()
        }
        async fn send_command(&self, _: &AwsScope, _: &crate::aws::SendCommand) -> Result<String, AwsError> {
            unreachable!()
        }
        async fn find_command(&self, _: &AwsScope, _: &str, _: &str) -> Result<Option<String>, AwsError> {
            unreachable!()
        }
        async fn commands_since(
            &self,
            _: &AwsScope,
            _: &str,
            since: Timestamp,
        ) -> Result<Vec<CommandProgress>, AwsError> {
            let out: Vec<CommandProgress> = lock(&self.commands)
                .iter()
                .filter(|(_, (at, _, _))| *at >= since)
                .map(|(id, (_, sent, hosts))| {
                    let completed = hosts.iter().filter(|(_, after)| Self::status(*sent, *after).is_final()).count();
                    CommandProgress {
                        id: id.clone(),
                        status: if completed == hosts.len() {
                            InvocationStatus::Success
                        } else {
                            InvocationStatus::InProgress
                        },
                        targets: hosts.len() as u32,
                        completed: completed as u32,
                    }
                })
                .collect();
            self.page("ListCommands", out.len());
            Ok(out)
        }
        async fn invocation(&self, _: &AwsScope, _: &str, _: &str) -> Result<Option<Invocation>, AwsError> {
            unreachable!("every report fits the listing")
        }
        async fn command_invocations(&self, _: &AwsScope, id: &str) -> Result<Vec<ListedInvocation>, AwsError> {
            let commands = lock(&self.commands);
            let (_, sent, hosts) = commands.get(id).expect("a command the model sent");
            self.page("ListCommandInvocations", hosts.len());
            Ok(hosts
                .iter()
                .map(|(i, after)| ListedInvocation::from_listing(i.clone(), Self::status(*sent, *after), "{}"))
                .collect())
        }
        async fn put_secure_parameter(&self, _: &AwsScope, _: &str, _: &str) -> Result<(), AwsError> {
            unreachable!()
        }
        async fn list_parameters(&self, _: &AwsScope, _: &str) -> Result<Vec<String>, AwsError> {
            unreachable!()
        }
        async fn delete_parameters(&self, _: &AwsScope, _: &[String]) -> Result<(), AwsError> {
            unreachable!()
        }
    }

    /// 10,000 hosts roll in waves of 500 (maxConcurrency 5%): ten commands of 50 at a time, each
    /// host done 20 to 40 s after its command went out (one in a hundred, a straggler, after 90 s),
    /// every tenant asking for its result every 2 s (the default poll). The figures are the pages
    /// SSM would answer, per tenant (`cargo test -p tenant-operator --lib ten_thousand --
    /// --nocapture` prints them).
    #[tokio::test(start_paused = true)]
    async fn ten_thousand_hosts_cost_under_a_tenth_of_a_call_each_to_follow() {
        const WAVES: usize = 20;
        const COMMANDS: usize = 10;
        const HOSTS: usize = 50;
        let poll = Duration::from_secs(2);
        let model = Arc::new(Model {
            start: Instant::now(),
            wall: Timestamp::now(),
            commands: Mutex::default(),
            pages: Mutex::default(),
        });
        let collector = Arc::new(Collector::new(poll));
        let scope = AwsScope::default();
        let mut seed: u64 = 7;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        let mut answered = 0usize;
        for wave in 0..WAVES {
            let mut followers = tokio::task::JoinSet::new();
            for k in 0..COMMANDS {
                let id = format!("cmd-{wave}-{k}");
                let hosts: Vec<(String, Duration)> = (0..HOSTS)
                    .map(|h| {
                        let r = next();
                        let after = if r % 100 == 0 { 90 } else { 20 + r % 21 };
                        (format!("i-{wave}-{k}-{h}"), Duration::from_secs(after))
                    })
                    .collect();
                let sent = model.now();
                lock(&model.commands).insert(id.clone(), (sent, Instant::now(), hosts.clone()));
                for (instance, _) in hosts {
                    let (model, collector, scope, id) = (model.clone(), collector.clone(), scope.clone(), id.clone());
                    followers.spawn(async move {
                        loop {
                            let inv = collector.invocation(&*model, &scope, &id, &instance, sent).await.unwrap();
                            if inv.is_some_and(|i| i.status.is_final()) {
                                return;
                            }
                            tokio::time::sleep(poll).await;
                        }
                    });
                }
            }
            while followers.join_next().await.transpose().unwrap().is_some() {
                answered += 1;
            }
        }
        let tenants = (WAVES * COMMANDS * HOSTS) as f64;
        assert_eq!(answered, WAVES * COMMANDS * HOSTS);
        let pages = lock(&model.pages).clone();
        let total: u64 = pages.values().sum();
        println!(
            "{} hosts, {:.0} s of simulated rollout: {:.4} calls per tenant to follow their commands",
            tenants,
            model.start.elapsed().as_secs_f64(),
            total as f64 / tenants
        );
        for (op, n) in &pages {
            println!("    {op:<24} {n:>6} pages  {:.4} per tenant", *n as f64 / tenants);
        }
        // Measured 0.072 (278 listings: one per command, and one more at 60 s for each of the 77
        // commands with a straggler; 441 sweeps over 1,880 s instead of 940 at every poll). The
        // bound is a guard against a collector that lists per tenant or sweeps per poll (0.14).
        assert!(total as f64 / tenants <= 0.08, "{pages:?}");
    }
}
