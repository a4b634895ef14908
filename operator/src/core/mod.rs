//! Pure decisions over plain data: no Kubernetes client, no AWS, no clock of their own.
//!
//! Everything here takes the time as an argument so that tests run on a fixed clock.

pub mod adoption;
pub mod channel;
pub mod conditions;
pub mod notify;
pub mod report;
pub mod rollout;
pub mod tenant;
