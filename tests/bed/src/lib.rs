//! The test bed: the real Kubernetes control plane built from Go modules, and the stand-ins the
//! operator talks to (moto, the OCI registry, the fleet simulator).

pub mod apiserver;
pub mod controlplane;
pub mod demo;
pub mod schema;
pub mod stack;
pub mod warden;
