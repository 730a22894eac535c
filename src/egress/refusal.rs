//! Why a route refuses a request before anything is forwarded: a kind the
//! HTTP layer answers with, a message that names no value, and the fixed
//! reason the audit record carries.

use crate::audit::Outcome;
use crate::vault::AuditedRefusal;

/// The kind of refusal; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// 400: the body or path is malformed.
    Invalid,
    /// 403: the caller may not use the route this way.
    Forbidden,
    /// 413: the body is over its limit.
    TooLarge,
    /// 415: a content type or encoding the route does not take.
    UnsupportedMediaType,
    /// 422: the body parsed, but cannot be forwarded safely.
    Unprocessable,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind.
    pub problem: Problem,
    /// For the caller; names configured fields at most, never a value.
    pub message: String,
    /// For the audit record.
    pub reason: &'static str,
    /// The record's outcome: denied (a rule refused the caller) or error.
    pub outcome: Outcome,
}

impl Refusal {
    /// A refusal of `problem`, recorded as `reason`.
    pub fn new(problem: Problem, message: impl Into<String>, reason: &'static str) -> Self {
        Self {
            problem,
            message: message.into(),
            reason,
            outcome: Outcome::Error,
        }
    }

    /// A refusal by a rule about the caller, recorded as denied.
    pub fn denied(problem: Problem, message: impl Into<String>, reason: &'static str) -> Self {
        Self {
            outcome: Outcome::Denied,
            ..Self::new(problem, message, reason)
        }
    }
}

impl AuditedRefusal for Refusal {
    fn audit(&self) -> (Outcome, &'static str) {
        (self.outcome, self.reason)
    }
}
