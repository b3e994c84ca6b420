//! [`HostError`]: what the host answers a client or an agent when it cannot do what was asked.
//! The api maps it to a `tonic::Status` in one place (`api::status`).

use crate::store::StoreError;

/// An error answered to a client or an agent.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No such task, agent or module.
    #[error("{0}")]
    NotFound(String),
    /// The caller's token does not allow this (another tenant named, another agent's id).
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// An uploaded module that admission refused.
    #[error("{}: {}", match .0.kind {
        corral_admission::RefusalKind::InvalidModule => "invalid module",
        corral_admission::RefusalKind::LinkError => "link error",
    }, .0.message)]
    Refused(corral_admission::Refused),
    /// The request cannot be done in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The host cannot take this now for want of a resource (its disk's free space).
    #[error("{0}")]
    Exhausted(String),
    /// The state store failed; nothing of the request was kept.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host is stopping, or reopening its state store after a failure.
    #[error("{0}")]
    Unavailable(String),
}
