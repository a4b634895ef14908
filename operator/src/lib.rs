//! tenant-operator: keeps a fleet of single-tenant EC2 hosts on the right image.
//!
//! The crate is split the way linkerd2's policy-controller is: pure decisions with no Kubernetes or
//! AWS dependency (`core`), the API types (`crd`), and thin adapters around them.

pub mod adopt;
pub mod aws;
pub mod controller;
pub mod core;
pub mod crd;
pub mod dashboard;
pub mod host;
pub mod kubeclient;
pub mod metrics;
pub mod plugin;
pub mod registry;
pub mod telemetry;
pub mod webhook;
