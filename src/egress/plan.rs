//! The rewrite plan: which places of a request hold values to tokenize
//! (the route's selected fields and query parameters, and what the scan
//! flags when the route tokenizes unselected PII), built from the parsed
//! body in one walk. The engine tokenizes the plan's items; the
//! [`Rewrite`](super::rewrite::Rewrite) splices the tokens into the places.

use std::collections::BTreeSet;

use super::body::{Body, Kind};
use super::refusal::{Problem, Refusal};
use super::scan::{self, Elsewhere, Wanted};
use super::Route;
use crate::config::UnselectedPii;
use crate::payload::path::{self, Matcher};
use crate::payload::records::Subjects;
use crate::payload::splice::{self, FormPair, Leaf, Span};
use crate::payload::{self, PayloadError};
use crate::pii::Pii;
use crate::vault::TokenizeItem;

/// Where a value to tokenize sits.
#[derive(Debug, Clone)]
pub enum Place {
    /// A JSON scalar.
    Json {
        /// Its JSON pointer.
        pointer: String,
        /// Its bytes, quotes included.
        span: Span,
    },
    /// A JSON member name.
    JsonKey {
        /// The member's JSON pointer.
        pointer: String,
        /// The name's bytes, quotes included.
        span: Span,
    },
    /// A form value, by pair index.
    FormValue(usize),
    /// A form field name, by pair index.
    FormName(usize),
    /// A query parameter's value, by pair index.
    QueryValue(usize),
    /// A query parameter's name, by pair index.
    QueryName(usize),
}

/// A field a rule selected: its place and its text.
struct Field {
    rule: usize,
    pointer: String,
    value: Pii,
    /// A JSON value's kind and bytes.
    at: Option<(Leaf, Span)>,
}

/// The places to rewrite and the values to tokenize, one item per place.
pub struct RewritePlan {
    /// Where each item goes.
    pub places: Vec<Place>,
    /// What the engine tokenizes, in the order of `places`.
    pub items: Vec<TokenizeItem>,
    /// A form body's pairs (none for JSON).
    pub form: Vec<FormPair>,
    /// The query string's pairs.
    pub query: Vec<FormPair>,
    /// Places the scan flagged.
    pub findings: usize,
    /// Why the forward is noted in its record, if it is.
    pub note: Option<&'static str>,
}

impl RewritePlan {
    /// Parses `body`, selects the route's fields in it and in `query`, and
    /// scans everything else; applies the route's `unselected_pii` policy.
    pub fn build(
        route: &Route,
        body: &Body,
        query: &[u8],
        request_id: &str,
    ) -> Result<Self, Refusal> {
        let spec = &route.spec;
        let bytes = body.bytes();
        let refused = |error: PayloadError| {
            let problem = if matches!(error, PayloadError::NotScalar(_)) {
                Problem::Unprocessable
            } else {
                Problem::Invalid
            };
            Refusal::new(problem, error.to_string(), "malformed_body")
        };
        let not_a_value = |error: PayloadError| {
            Refusal::new(
                Problem::Unprocessable,
                error.to_string(),
                "selected_field_not_a_value",
            )
        };
        let selectors: Vec<&payload::Selector> =
            spec.fields.iter().map(|rule| &rule.selector).collect();
        // A JSON body whose rules are all plain paths is checked, then
        // walked once for its fields and its findings, without a parsed
        // document (a route that names each record's subject reads it from
        // the document).
        let steps = (body.kind == Kind::Json && spec.subject.is_none())
            .then(|| path::plain(&selectors))
            .flatten();
        let matcher = steps.as_ref().map(|steps| Matcher::new(bytes, steps));
        let (fields, json, subjects) = match matcher {
            Some(matcher) => {
                payload::check_strict(bytes, spec.max_depth).map_err(refused)?;
                let mut walked = scan::walk_json(bytes, Wanted::Steps(matcher));
                let matched =
                    std::mem::replace(&mut walked.matched, Ok(Vec::new())).map_err(|pointer| {
                        not_a_value(PayloadError::not_scalar(&selectors, &pointer))
                    })?;
                let fields: Vec<Field> = matched
                    .into_iter()
                    .map(|found| Field {
                        rule: found.rule,
                        value: Pii::new(found.text(bytes).into_owned()),
                        at: found.leaf.map(|leaf| (leaf, found.span)),
                        pointer: found.pointer,
                    })
                    .collect();
                (fields, Some(walked), None)
            }
            None => {
                let document = match body.kind {
                    Kind::Form => payload::parse_form(bytes),
                    Kind::Json => payload::parse_strict(bytes, spec.max_depth),
                }
                .map_err(refused)?;
                let selected = payload::select(&document, &selectors).map_err(not_a_value)?;
                // The customer of each record, when the route names where
                // it is.
                let subjects = spec
                    .subject
                    .as_ref()
                    .map(|selector| Subjects::find(&document, selector));
                drop(document);
                // One walk over a JSON body: the spans of the selected
                // values, and the findings in everything else.
                let json = (body.kind == Kind::Json).then(|| {
                    let pointers: Vec<&str> = selected.iter().map(|f| f.pointer.as_str()).collect();
                    scan::walk_json(bytes, Wanted::Pointers(&pointers))
                });
                let fields = selected
                    .into_iter()
                    .enumerate()
                    .map(|(index, field)| Field {
                        rule: field.rule,
                        pointer: field.pointer,
                        value: field.value,
                        at: json.as_ref().and_then(|walked| walked.spans[index]),
                    })
                    .collect();
                (fields, json, subjects)
            }
        };
        let form = match body.kind {
            Kind::Form => splice::form_pairs(bytes),
            Kind::Json => Vec::new(),
        };
        let query_pairs = splice::form_pairs(query);
        let mut plan = Self {
            places: Vec::new(),
            items: Vec::new(),
            form,
            query: query_pairs,
            findings: 0,
            note: None,
        };
        let subject_at = |place: &Place| -> Option<Pii> {
            let subjects = subjects.as_ref()?;
            let subject = match place {
                Place::Json { pointer, .. } | Place::JsonKey { pointer, .. } => {
                    subjects.of(pointer)
                }
                _ => subjects.of_document(),
            };
            subject.map(|s| Pii::new(s.expose().to_owned()))
        };
        let mut selected_form = BTreeSet::new();
        for field in fields {
            let class = spec.fields[field.rule].class.clone();
            let (place, value, number) = if body.kind == Kind::Json {
                let Some((leaf, span)) = field.at else {
                    continue;
                };
                let place = Place::Json {
                    pointer: field.pointer,
                    span,
                };
                // A number's digits as written (serde_json would round a
                // big one).
                match leaf {
                    Leaf::Number => (
                        place,
                        Pii::new(
                            String::from_utf8_lossy(&bytes[span.start..span.end]).into_owned(),
                        ),
                        true,
                    ),
                    _ => (place, field.value, false),
                }
            } else {
                let name = unescape_pointer(&field.pointer);
                let Some(index) = plan.form.iter().position(|p| p.name == name) else {
                    continue;
                };
                selected_form.insert(field.pointer);
                (Place::FormValue(index), field.value, false)
            };
            plan.add(place, class, value, number, &subject_at);
        }
        let mut selected_query = BTreeSet::new();
        for index in 0..plan.query.len() {
            let pair = &plan.query[index];
            if let Some(rule) = spec.query_fields.iter().find(|r| r.name == pair.name) {
                selected_query.insert(index);
                let value = scan::decoded_value(query, pair);
                plan.add(
                    Place::QueryValue(index),
                    rule.class.clone(),
                    value,
                    false,
                    &subject_at,
                );
            }
        }

        // Everything else that could hold personal data.
        let findings = scan::findings(
            json,
            Elsewhere {
                body: bytes,
                form: (body.kind == Kind::Form).then_some(plan.form.as_slice()),
                selected_form: &selected_form,
                query,
                query_pairs: &plan.query,
                selected_query: &selected_query,
            },
        );
        plan.findings = findings.len();
        for (place, detectors, _) in &findings {
            let detectors: Vec<&str> = detectors.iter().map(|d| d.as_str()).collect();
            tracing::warn!(request_id, route = %spec.name, path = %plan.describe(route, place), detectors = ?detectors, mode = ?spec.unselected_pii, "PII found in a field no rule selects");
        }
        if findings.is_empty() {
            return Ok(plan);
        }
        match spec.unselected_pii {
            UnselectedPii::Block => {
                let paths: Vec<String> = findings
                    .iter()
                    .map(|(place, _, _)| plan.describe(route, place))
                    .collect();
                Err(Refusal::new(
                    Problem::Unprocessable,
                    format!(
                        "personal data in fields no rule selects: {}",
                        paths.join(", ")
                    ),
                    "unselected_pii",
                ))
            }
            UnselectedPii::Tokenize => {
                let class = spec.unselected_class.clone().unwrap_or_default();
                for (place, _, value) in findings {
                    plan.add(place, class.clone(), value, false, &subject_at);
                }
                Ok(plan)
            }
            UnselectedPii::Report => {
                plan.note = Some("unselected_pii_reported");
                Ok(plan)
            }
        }
    }

    fn add(
        &mut self,
        place: Place,
        class: String,
        value: Pii,
        number: bool,
        subject_at: &impl Fn(&Place) -> Option<Pii>,
    ) {
        let subject = subject_at(&place);
        self.places.push(place);
        self.items.push(TokenizeItem {
            class,
            value,
            subject,
            number,
        });
    }

    /// The place of item `index`, fit for a log line or an error.
    pub fn describe_item(&self, route: &Route, index: usize) -> String {
        self.places
            .get(index)
            .map(|place| self.describe(route, place))
            .unwrap_or_default()
    }

    /// A place fit for a log line or an error: configured names as they
    /// are, every other name `*`.
    fn describe(&self, route: &Route, place: &Place) -> String {
        // A parameter name is shown only when a query rule names it.
        let query_name = |index: &usize| -> String {
            self.query
                .get(*index)
                .map(|pair| &pair.name)
                .filter(|name| route.spec.query_fields.iter().any(|r| &r.name == *name))
                .cloned()
                .unwrap_or_else(|| "*".to_owned())
        };
        match place {
            Place::Json { pointer, .. } => route.names.safe_pointer(pointer),
            Place::JsonKey { pointer, .. } => {
                format!("{} (member name)", route.names.safe_pointer(pointer))
            }
            Place::FormValue(index) | Place::FormName(index) => {
                let name = self
                    .form
                    .get(*index)
                    .map(|p| scan::form_pointer(&p.name))
                    .unwrap_or_default();
                let shown = route.names.safe_pointer(&name);
                if matches!(place, Place::FormName(_)) {
                    format!("{shown} (field name)")
                } else {
                    shown
                }
            }
            Place::QueryValue(index) => format!("query parameter {}", query_name(index)),
            Place::QueryName(index) => format!("query parameter {} (name)", query_name(index)),
        }
    }
}

/// A JSON pointer's single member name, unescaped (form bodies).
fn unescape_pointer(pointer: &str) -> String {
    pointer
        .trim_start_matches('/')
        .replace("~1", "/")
        .replace("~0", "~")
}
