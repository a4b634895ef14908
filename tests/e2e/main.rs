//! End-to-end tests: one binary, so the link step is paid once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;
mod apply;
mod slice;
mod manifests;
