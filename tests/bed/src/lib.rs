//! The test bed: a fake Kubernetes API server and the stand-ins the operator talks to.

pub mod apiserver;
pub mod schema;
pub mod stack;
