//! One error type for the controllers; each variant has a stable category used as metric label and
//! event reason.

use crate::aws::AwsError;

/// Why a reconcile failed (as opposed to a tenant condition, which is not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An AWS call failed.
    #[error("{0}")]
    Aws(#[from] AwsError),
    /// Serialization of our own types failed.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The object lacks something the API server always sets.
    #[error("object is missing {0}")]
    MissingField(&'static str),
    /// The observe batcher could not send.
    #[error("observe batch: {0}")]
    Batch(String),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// A request (annotation, subcommand) that cannot be carried out.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Keeping the leader Lease failed.
    #[error("leader lease: {0}")]
    Lease(String),
    /// Another replica took the leader Lease: this one stopped its controllers.
    #[error("the leader lease went to another replica")]
    LeadershipLost,
}

impl From<kube_lease_manager::LeaseManagerError> for Error {
    fn from(e: kube_lease_manager::LeaseManagerError) -> Self {
        Error::Lease(e.to_string())
    }
}

impl Error {
    /// Stable CamelCase category: metric label and event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) if self.is_forbidden() => "Forbidden",
            Error::Kube(_) => "KubeApiError",
            Error::Aws(AwsError::Throttled(_)) => "AwsThrottled",
            Error::Aws(AwsError::AccessDenied(_)) => "AwsAccessDenied",
            Error::Aws(_) => "AwsError",
            Error::Serialization(_) => "SerializationError",
            Error::MissingField(_) => "MissingField",
            Error::Finalizer(_) => "FinalizerError",
            Error::Batch(_) => "ObserveBatchFailed",
            Error::InvalidRequest(_) => "InvalidRequest",
            Error::Lease(_) => "LeaseError",
            Error::LeadershipLost => "LeadershipLost",
        }
    }

    /// Whether the API server refused the request (HTTP 403: RBAC).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 403)
    }

    /// Whether the error is AWS throttling (backed off longer, never a tenant failure).
    pub fn is_throttled(&self) -> bool {
        matches!(self, Error::Aws(AwsError::Throttled(_)))
    }
}
