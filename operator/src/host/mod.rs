//! The host side: the operator's SSM Command document and the desired state it reads.

pub mod document;
pub mod revision;
