//! The host agent's report: one compact JSON line on stdout.

use crate::crd::{HostObservation, ImportedContainer, Slot, SlotObservation};
use serde::Deserialize;

/// What the agent printed, as sent.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HostReport {
    /// Report format version.
    pub v: u32,
    /// Agent (document) version.
    pub agent: String,
    /// The action that ran.
    pub action: String,
    /// Revision the command carried.
    #[serde(default)]
    pub revision: String,
    /// `ok` or `error` (then `detail` says why).
    pub status: String,
    /// Short machine-readable detail (`bad-revision`, `health-failed`, ...).
    #[serde(default)]
    pub detail: String,
    /// The org slug the host believes it serves.
    #[serde(default)]
    pub org: String,
    /// An applied-revision marker exists.
    #[serde(default)]
    pub managed: bool,
    /// Last applied revision.
    #[serde(default)]
    pub applied: String,
    /// Active slot (empty when none).
    #[serde(default)]
    pub active: String,
    /// Per slot.
    pub slots: ReportSlots,
    /// Running containers the operator did not start.
    #[serde(default)]
    pub unmanaged_containers: u32,
    /// The cron auto-updater: `active`, `disabled`, `absent` (empty from older agents).
    #[serde(default)]
    pub cron: String,
    /// The blue slot is an adopted hand-run container.
    #[serde(default)]
    pub adopted: bool,
    /// `inspect-legacy`: the hand-run container (names only; checked again before use).
    #[serde(default)]
    pub legacy: Option<ImportedContainer>,
}

/// Both slots.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ReportSlots {
    /// Blue.
    pub blue: Option<ReportSlot>,
    /// Green.
    pub green: Option<ReportSlot>,
}

/// One slot.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReportSlot {
    /// Container name.
    pub container: String,
    /// The process runs.
    pub running: bool,
    /// Digest label (`invalid` when the label was tampered with).
    pub digest: String,
    /// Env revision label.
    pub env_revision: String,
    /// `healthy`, `unhealthy`, `unknown`.
    pub health: String,
}

/// Why a report could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// stdout had no JSON line.
    #[error("the host printed no report")]
    Empty,
    /// The line did not parse.
    #[error("the host's report does not parse: {0}")]
    Malformed(String),
}

impl HostReport {
    /// Parses the last non-empty line of stdout (the agent prints exactly one).
    pub fn parse(stdout: &str) -> Result<HostReport, ReportError> {
        let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).ok_or(ReportError::Empty)?;
        serde_json::from_str(line.trim()).map_err(|e| ReportError::Malformed(e.to_string()))
    }

    /// The active slot, if the host names one.
    pub fn active_slot(&self) -> Option<Slot> {
        match self.active.as_str() {
            "blue" => Some(Slot::Blue),
            "green" => Some(Slot::Green),
            _ => None,
        }
    }

    /// The slot that serves: the active one, or for a host without a router the only running slot.
    pub fn serving_slot(&self) -> Option<(Slot, &ReportSlot)> {
        if let Some(s) = self.active_slot() {
            return self.slot(s).map(|r| (s, r));
        }
        [Slot::Blue, Slot::Green].into_iter().find_map(|s| self.slot(s).filter(|r| r.running).map(|r| (s, r)))
    }

    /// One slot's report.
    pub fn slot(&self, slot: Slot) -> Option<&ReportSlot> {
        match slot {
            Slot::Blue => self.slots.blue.as_ref(),
            Slot::Green => self.slots.green.as_ref(),
        }
    }

    /// The status view of this report.
    pub fn to_observation(&self, observed_at: String) -> HostObservation {
        let conv = |s: &ReportSlot| SlotObservation {
            container: non_empty(&s.container),
            digest: non_empty(&s.digest),
            env_revision: non_empty(&s.env_revision),
            running: s.running,
            health: non_empty(&s.health),
        };
        HostObservation {
            active_slot: self.serving_slot().map(|(s, _)| s),
            blue: self.slots.blue.as_ref().map(conv),
            green: self.slots.green.as_ref().map(conv),
            applied_revision: non_empty(&self.applied),
            managed: self.managed,
            unmanaged_containers: self.unmanaged_containers,
            cron: match self.cron.as_str() {
                "active" | "disabled" | "absent" => Some(self.cron.clone()),
                _ => None,
            },
            adopted: self.adopted,
            observed_at: Some(observed_at),
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    if s.is_empty() { None } else { Some(s.to_string()) }
}

/// Whether `d` is `sha256:` and 64 lower-case hex digits.
pub fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
}

/// `sha256:0123456789abcdef...` → `0123456789ab`.
pub fn short_digest(digest: &str) -> String {
    digest.strip_prefix("sha256:").unwrap_or(digest).chars().take(12).collect()
}

/// Whether a failed apply's detail says the host rolled back: `<failure>-rolled-back` for a start or
/// health failure, `smoke-failed:<check>:rolled-back` for a smoke check (a check's name is a DNS
/// label, so it can hold `-rolled-back` but never `:`).
pub fn rolled_back(detail: &str) -> bool {
    detail.ends_with(":rolled-back") || (detail.ends_with("-rolled-back") && !detail.contains(':'))
}

/// How far a command got, as SSM tells it (`StatusDetails`, not only `Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The host ran it to the end (successfully or not).
    Ran,
    /// It ran on the host and ran out of time there (`ExecutionTimedOut`).
    TimedOut,
    /// It never reached the host (`DeliveryTimedOut`, `Undeliverable`, a terminated instance).
    NotDelivered,
}

/// How a command that changes the host ended, as its history records it (`status.history[].result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandResult {
    /// The agent reported `ok`.
    Succeeded,
    /// The agent reported an error and put back what ran before.
    RolledBack,
    /// The agent reported an error.
    Failed,
    /// It ran out of time on the host: what the host runs now is not known from it.
    TimedOut,
    /// It ran, but its report cannot be read (garbled, or cut at SSM's output limit).
    ReportUnreadable,
    /// It never reached the host: nothing changed there.
    NotDelivered,
}

impl CommandResult {
    /// Every result, for parsing.
    const ALL: [CommandResult; 6] =
        [Self::Succeeded, Self::RolledBack, Self::Failed, Self::TimedOut, Self::ReportUnreadable, Self::NotDelivered];

    /// As written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "Succeeded",
            Self::RolledBack => "RolledBack",
            Self::Failed => "Failed",
            Self::TimedOut => "TimedOut",
            Self::ReportUnreadable => "ReportUnreadable",
            Self::NotDelivered => "NotDelivered",
        }
    }

    /// Reads what [`CommandResult::as_str`] wrote.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The host ran it (or may have) and it did not succeed: the revision is not tried again until
    /// it changes, and in a rollout it counts against `maxErrors`. A command that never reached
    /// the host is not a failure: the host is unreachable, and the command is sent again.
    pub fn is_failure(self) -> bool {
        !matches!(self, Self::Succeeded | Self::NotDelivered)
    }

    /// The conditions' reason while this is the last word on the desired revision.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Succeeded => "Converged",
            Self::RolledBack => "RolledBack",
            Self::Failed => "ApplyFailed",
            Self::TimedOut => "CommandTimedOut",
            Self::ReportUnreadable => "ReportUnreadable",
            Self::NotDelivered => "CommandNotDelivered",
        }
    }
}

/// How a command ended, from how far it got and what its stdout says; and the message for history.
pub fn command_result(delivery: Delivery, report: Result<&HostReport, &ReportError>) -> (CommandResult, String) {
    match (delivery, report) {
        (Delivery::NotDelivered, _) => (CommandResult::NotDelivered, "the command never reached the host".into()),
        (_, Ok(r)) if r.status == "ok" => (CommandResult::Succeeded, r.detail.clone()),
        (_, Ok(r)) if rolled_back(&r.detail) => (CommandResult::RolledBack, r.detail.clone()),
        (Delivery::TimedOut, _) => (CommandResult::TimedOut, "the command ran out of time on the host".into()),
        (Delivery::Ran, Ok(r)) => (CommandResult::Failed, r.detail.clone()),
        (Delivery::Ran, Err(e)) => (CommandResult::ReportUnreadable, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_never_reached_the_host_is_no_failure_and_each_ending_has_its_reason() {
        let report = |status: &str, detail: &str| {
            let line = format!(
                "{{\"v\":1,\"agent\":\"a\",\"action\":\"apply\",\"status\":\"{status}\",\"detail\":\"{detail}\",\"slots\":{{\"blue\":null,\"green\":null}}}}"
            );
            HostReport::parse(&line).expect("a report")
        };
        let ok = report("ok", "applied");
        let failed = report("error", "health-failed");
        let back = report("error", "health-failed:rolled-back");
        let garbled = HostReport::parse("\u{fffd}\u{fffd} not json");
        let cases = [
            (
                Delivery::NotDelivered,
                Err(&ReportError::Empty),
                CommandResult::NotDelivered,
                false,
                "CommandNotDelivered",
            ),
            (Delivery::Ran, Ok(&ok), CommandResult::Succeeded, false, "Converged"),
            (Delivery::Ran, Ok(&failed), CommandResult::Failed, true, "ApplyFailed"),
            (Delivery::Ran, Ok(&back), CommandResult::RolledBack, true, "RolledBack"),
            (Delivery::TimedOut, Err(&ReportError::Empty), CommandResult::TimedOut, true, "CommandTimedOut"),
            (Delivery::Ran, garbled.as_ref(), CommandResult::ReportUnreadable, true, "ReportUnreadable"),
            (Delivery::Ran, Err(&ReportError::Empty), CommandResult::ReportUnreadable, true, "ReportUnreadable"),
        ];
        for (delivery, rep, want, failure, reason) in cases {
            let (got, _) = command_result(delivery, rep);
            assert_eq!(got, want, "{delivery:?} {rep:?}");
            assert_eq!(got.is_failure(), failure, "{got:?}");
            assert_eq!(got.reason(), reason);
            assert_eq!(CommandResult::parse(got.as_str()), Some(got));
        }
        assert_eq!(CommandResult::parse("Exploded"), None);
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_the_agent_line_and_finds_the_serving_slot() {
        let out = format!(
            "noise before\n{{\"v\":1,\"agent\":\"3\",\"action\":\"observe\",\"revision\":\"\",\"status\":\"ok\",\"detail\":\"\",\"org\":\"acme\",\"managed\":false,\"applied\":\"\",\"active\":\"\",\"slots\":{{\"blue\":{{\"container\":\"app-blue\",\"running\":true,\"digest\":\"{D}\",\"envRevision\":\"\",\"health\":\"healthy\"}},\"green\":null}},\"unmanagedContainers\":0}}\n"
        );
        let r = HostReport::parse(&out).unwrap();
        assert_eq!(r.org, "acme");
        let (slot, s) = r.serving_slot().unwrap();
        assert_eq!(slot, Slot::Blue);
        assert_eq!(s.digest, D);
        let o = r.to_observation("2026-01-01T00:00:00Z".into());
        assert_eq!(o.active_slot, Some(Slot::Blue));
        assert_eq!(o.blue.unwrap().env_revision, None);
        assert_eq!(short_digest(D), "0123456789ab");
    }

    #[test]
    fn rejects_empty_and_garbage() {
        assert_eq!(HostReport::parse("\n\n"), Err(ReportError::Empty));
        assert!(matches!(HostReport::parse("{not json"), Err(ReportError::Malformed(_))));
    }

    #[test]
    fn rollbacks_are_told_apart_from_check_names() {
        assert!(rolled_back("health-failed-rolled-back"));
        assert!(rolled_back("smoke-failed:api:rolled-back"));
        assert!(rolled_back("smoke-failed:x-rolled-back:rolled-back"));
        assert!(!rolled_back("smoke-failed:x-rolled-back"));
        assert!(!rolled_back("health-failed"));
    }
}
