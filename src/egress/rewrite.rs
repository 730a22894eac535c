//! The rewrite: tokens spliced into the places the plan found, so that
//! every other byte of the body and the query string reaches the platform
//! exactly as the backend wrote it. No document is re-serialized.

use super::body::Body;
use super::plan::{Place, RewritePlan};
use crate::payload::splice::{self, Span};

/// What goes upstream.
pub struct Outgoing {
    /// The body, encoded as it came (gzip stays gzip).
    pub body: Vec<u8>,
    /// The query string, with tokens spliced in.
    pub query: String,
}

/// The splice of one plan's tokens.
pub struct Rewrite<'a> {
    plan: &'a RewritePlan,
}

impl<'a> Rewrite<'a> {
    /// The rewrite of `plan`.
    pub fn of(plan: &'a RewritePlan) -> Self {
        Self { plan }
    }

    /// Splices `tokens` (one per planned place, in order) into `body` and
    /// `query`. A body with nothing to change goes out as it came,
    /// compressed or not.
    pub fn apply(self, body: Body, query: &[u8], tokens: &[String]) -> std::io::Result<Outgoing> {
        let mut body_edits: Vec<(Span, Vec<u8>)> = Vec::new();
        let mut query_edits: Vec<(Span, Vec<u8>)> = Vec::new();
        for (place, token) in self.plan.places.iter().zip(tokens) {
            // Which bytes, and where the pair of a form or query place is.
            let (pairs, name) = match place {
                Place::Json { span, .. } | Place::JsonKey { span, .. } => {
                    body_edits.push((*span, splice::json_string(token)));
                    continue;
                }
                Place::FormValue(index) => (pair(&self.plan.form, *index)?, false),
                Place::FormName(index) => (pair(&self.plan.form, *index)?, true),
                Place::QueryValue(index) => (pair(&self.plan.query, *index)?, false),
                Place::QueryName(index) => (pair(&self.plan.query, *index)?, true),
            };
            let span = if name {
                pairs.name_span
            } else {
                pairs.value_span
            };
            let edits = match place {
                Place::QueryValue(_) | Place::QueryName(_) => &mut query_edits,
                _ => &mut body_edits,
            };
            edits.push((span, splice::form_encode(token)));
        }
        let query = if query_edits.is_empty() {
            String::from_utf8_lossy(query).into_owned()
        } else {
            String::from_utf8_lossy(&splice::splice(query, query_edits)).into_owned()
        };
        let body = if body_edits.is_empty() {
            body.into_raw().to_vec()
        } else {
            let spliced = splice::splice(body.bytes(), body_edits);
            body.encode(spliced)?
        };
        Ok(Outgoing { body, query })
    }
}

/// A planned pair; its absence (a plan from another body) fails the
/// rewrite rather than forward a value unreplaced.
fn pair(pairs: &[splice::FormPair], index: usize) -> std::io::Result<&splice::FormPair> {
    pairs
        .get(index)
        .ok_or_else(|| std::io::Error::other("a planned place is missing"))
}
