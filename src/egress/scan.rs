//! The PII scan: every place a route's rules do not select that a detector
//! flags (string values, numbers as written and member names in a JSON
//! body; form names and values; query names and values), in document order.

use std::collections::{BTreeSet, HashMap};

use super::plan::Place;
use crate::payload::detect::{self, Detector};
use crate::payload::path::{Match, Matcher};
use crate::payload::splice::{self, FormPair, Leaf, Span, Visit};
use crate::pii::Pii;

/// A flagged place: where, which detectors, and its text.
pub(super) type Finding = (Place, Vec<Detector>, Pii);

/// One walk over a JSON body: where the selected values are, and what the
/// detectors flag everywhere else. Nothing is allocated for a place that is
/// neither.
struct JsonWalk<'a> {
    body: &'a [u8],
    wanted: HashMap<&'a str, usize>,
    spans: Vec<Option<(Leaf, Span)>>,
    /// Selects by the rules' steps as it goes (instead of `wanted`).
    matcher: Option<Matcher<'a>>,
    findings: Vec<(usize, Finding)>,
}

/// What the walk selects.
pub(super) enum Wanted<'a> {
    /// The places a selection on the parsed document found, by pointer.
    Pointers(&'a [&'a str]),
    /// Whatever the rules' plain steps select.
    Steps(Matcher<'a>),
}

/// What a JSON walk found.
pub(super) struct JsonFound {
    /// The span of each selected pointer, in the order given.
    pub spans: Vec<Option<(Leaf, Span)>>,
    /// What the steps selected, in `select`'s order, or the pointer of an
    /// object or array they selected.
    pub matched: Result<Vec<Match>, String>,
    /// Flagged places, with their offset (for document order).
    findings: Vec<(usize, Finding)>,
}

/// Walks `body` once for the `wanted` places and the findings.
pub(super) fn walk_json<'a>(body: &'a [u8], wanted: Wanted<'a>) -> JsonFound {
    let (pointers, matcher) = match wanted {
        Wanted::Pointers(pointers) => (pointers, None),
        Wanted::Steps(matcher) => (&[][..], Some(matcher)),
    };
    let mut walk = JsonWalk {
        body,
        wanted: pointers.iter().enumerate().map(|(i, p)| (*p, i)).collect(),
        spans: vec![None; pointers.len()],
        matcher,
        findings: Vec::new(),
    };
    splice::walk(body, &mut walk);
    JsonFound {
        spans: walk.spans,
        matched: walk.matcher.map_or(Ok(Vec::new()), Matcher::finish),
        findings: walk.findings,
    }
}

impl JsonWalk<'_> {
    /// Records `text` at `place` when a detector flags it.
    fn flag(
        &mut self,
        place: Place,
        span: Span,
        text: std::borrow::Cow<'_, str>,
        found: Vec<Detector>,
    ) {
        if !found.is_empty() {
            self.findings
                .push((span.start, (place, found, Pii::new(text.into_owned()))));
        }
    }
}

impl Visit for JsonWalk<'_> {
    fn leaf(&mut self, pointer: &str, leaf: Leaf, span: Span) {
        if let Some(matcher) = &mut self.matcher {
            if matcher.leaf(pointer, leaf, span) {
                return;
            }
        } else if let Some(&index) = self.wanted.get(pointer) {
            self.spans[index] = Some((leaf, span));
            return;
        }
        let bytes = &self.body[span.start..span.end];
        let (text, found) = match leaf {
            Leaf::String => {
                let text = splice::unquote(bytes);
                let found = detect::scan(&text);
                (text, found)
            }
            Leaf::Number => {
                let text = String::from_utf8_lossy(bytes);
                let found = detect::scan_number(&text);
                (text, found)
            }
            Leaf::Literal => return,
        };
        if !found.is_empty() {
            let place = Place::Json {
                pointer: pointer.to_owned(),
                span,
            };
            self.flag(place, span, text, found);
        }
    }

    fn enter(&mut self, pointer: &str, array: bool, start: usize) {
        if let Some(matcher) = &mut self.matcher {
            matcher.enter(pointer, array, start);
        }
    }

    fn leave(&mut self) {
        if let Some(matcher) = &mut self.matcher {
            matcher.leave();
        }
    }

    fn key(&mut self, pointer: &str, span: Span) {
        let name = splice::unquote(&self.body[span.start..span.end]);
        let found = detect::scan(&name);
        if !found.is_empty() {
            let place = Place::JsonKey {
                pointer: pointer.to_owned(),
                span,
            };
            self.flag(place, span, name, found);
        }
    }
}

/// Where the scan looks besides a JSON body.
pub(super) struct Elsewhere<'a> {
    /// The body's bytes (a form's pairs are spans of them).
    pub body: &'a [u8],
    /// A form body's pairs.
    pub form: Option<&'a [FormPair]>,
    /// Form fields the rules select (JSON pointers).
    pub selected_form: &'a BTreeSet<String>,
    /// The query string and its pairs.
    pub query: &'a [u8],
    pub query_pairs: &'a [FormPair],
    /// Query pairs the rules select, by index.
    pub selected_query: &'a BTreeSet<usize>,
}

/// Every flagged place, in document order: the JSON walk's findings, then
/// form names and values, then the query string's.
pub(super) fn findings(json: Option<JsonFound>, at: Elsewhere<'_>) -> Vec<Finding> {
    let mut findings: Vec<(usize, Finding)> = json.map(|w| w.findings).unwrap_or_default();
    let mut flag = |order: usize, place: Place, text: String, detectors: Vec<Detector>| {
        if !detectors.is_empty() {
            findings.push((order, (place, detectors, Pii::new(text))));
        }
    };
    for (index, pair) in at.form.unwrap_or_default().iter().enumerate() {
        let found = detect::scan(&pair.name);
        flag(
            pair.name_span.start,
            Place::FormName(index),
            pair.name.clone(),
            found,
        );
        if !at.selected_form.contains(&form_pointer(&pair.name)) {
            let value = decoded_value(at.body, pair);
            let found = detect::scan(value.expose());
            flag(
                pair.value_span.start,
                Place::FormValue(index),
                value.expose().to_owned(),
                found,
            );
        }
    }
    // After the body, in query order.
    let base = at.body.len() + 1;
    for (index, pair) in at.query_pairs.iter().enumerate() {
        let found = detect::scan(&pair.name);
        flag(
            base + pair.name_span.start,
            Place::QueryName(index),
            pair.name.clone(),
            found,
        );
        if !at.selected_query.contains(&index) {
            let value = decoded_value(at.query, pair);
            let found = detect::scan(value.expose());
            flag(
                base + pair.value_span.start,
                Place::QueryValue(index),
                value.expose().to_owned(),
                found,
            );
        }
    }
    findings.sort_by_key(|(order, _)| *order);
    findings.into_iter().map(|(_, finding)| finding).collect()
}

/// The JSON pointer a form field's name selects as (`$.Email` is `/Email`).
pub(super) fn form_pointer(name: &str) -> String {
    format!("/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// A form or query pair's decoded value.
pub(super) fn decoded_value(bytes: &[u8], pair: &FormPair) -> Pii {
    let encoded = &bytes[pair.value_span.start..pair.value_span.end];
    let mut with_name = b"v=".to_vec();
    with_name.extend_from_slice(encoded);
    Pii::new(
        form_urlencoded::parse(&with_name)
            .next()
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default(),
    )
}
