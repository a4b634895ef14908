//! One error type for the controllers; each variant has a stable category used as metric label and
//! event reason.

use crate::aws::AwsError;
use std::time::Duration;

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
    /// A batcher (observes, lookups, pings) stopped before it answered.
    #[error("batch: {0}")]
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
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "KubeConflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 429 => "KubeThrottled",
            Error::Kube(kube::Error::Api(s)) if s.code >= 500 => "KubeUnavailable",
            Error::Kube(kube::Error::HyperError(_) | kube::Error::Service(_)) => "KubeUnreachable",
            Error::Kube(_) => "KubeApiError",
            Error::Aws(AwsError::Throttled(_)) => "AwsThrottled",
            Error::Aws(AwsError::AccessDenied(_)) => "AwsAccessDenied",
            Error::Aws(_) => "AwsError",
            Error::Serialization(_) => "SerializationError",
            Error::MissingField(_) => "MissingField",
            Error::Finalizer(_) => "FinalizerError",
            Error::Batch(_) => "BatchFailed",
            Error::InvalidRequest(_) => "InvalidRequest",
            Error::Lease(_) => "LeaseError",
            Error::LeadershipLost => "LeadershipLost",
        }
    }

    /// As an AWS error, for what answers many tenants at once (a batch's outcome).
    pub fn into_aws(self) -> AwsError {
        match self {
            Error::Aws(aws) => aws,
            other => AwsError::Other(other.to_string()),
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

    /// How long a controller waits before it tries an object again after this error, before
    /// jitter (see [`Error::retry_after`]): a conflict is someone else's newer write, read it at
    /// once; throttling, from the API server or AWS, is answered by waiting longer.
    pub fn backoff(&self) -> Duration {
        match self.category() {
            "KubeConflict" => Duration::from_secs(1),
            "KubeThrottled" => Duration::from_secs(10),
            "AwsThrottled" => Duration::from_secs(20),
            _ => Duration::from_secs(5),
        }
    }

    /// [`Error::backoff`] plus up to as much again at random, so objects that failed together are
    /// not all tried again at the same instant.
    pub fn retry_after(&self) -> Duration {
        let base = self.backoff();
        base + base.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> Error {
        Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            ..Default::default()
        })))
    }

    #[test]
    fn api_server_answers_are_told_apart_by_what_the_caller_should_do() {
        let cases = [
            (api(403, "Forbidden"), "Forbidden", 5),
            (api(409, "Conflict"), "KubeConflict", 1),
            (api(429, "TooManyRequests"), "KubeThrottled", 10),
            (api(500, "InternalError"), "KubeUnavailable", 5),
            (api(503, "ServiceUnavailable"), "KubeUnavailable", 5),
            (api(404, "NotFound"), "KubeApiError", 5),
            (api(422, "Invalid"), "KubeApiError", 5),
            (Error::Aws(AwsError::Throttled("Rate exceeded".into())), "AwsThrottled", 20),
        ];
        for (err, category, secs) in cases {
            assert_eq!(err.category(), category, "{err}");
            assert_eq!(err.backoff(), Duration::from_secs(secs), "{err}");
            let after = err.retry_after();
            assert!(after >= err.backoff() && after <= 2 * err.backoff(), "{err}: {after:?}");
        }
    }
}
