//! End-to-end tests: one binary, so the link step is paid once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod apply;
mod channel;
mod crash;
mod harness;
mod manifests;
mod slice;
