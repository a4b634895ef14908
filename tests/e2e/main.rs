//! End-to-end tests: one binary, so the link step is paid once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod adopt;
mod agent;
mod apifaults;
mod apply;
mod bench;
mod bluegreen;
mod budget;
mod channel;
mod chaos;
mod chart;
mod controlplane;
mod crash;
mod dashboard;
mod drift;
mod failover;
mod gitops;
mod harness;
mod hostile;
mod iam;
mod image;
mod kubectl;
mod leader;
mod manifests;
mod notify;
mod observability;
mod plugin;
mod rbac;
mod rollout;
mod slice;
mod smoke;
mod ssm_faults;
mod webhook;
