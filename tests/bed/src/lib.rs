//! The test bed: the real Kubernetes control plane built from Go modules, the stand-ins the
//! operator talks to (moto, the OCI registry, the fleet simulator), and the demo built on them.

pub mod apifault;
pub mod controlplane;
pub mod demo;
pub mod partition;
pub mod stack;
pub mod warden;
