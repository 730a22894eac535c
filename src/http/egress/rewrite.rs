//! The request side of a route: decode the body, find the selected fields
//! and every other place that holds personal data (string and number
//! values, member names, form names, query parameters), tokenize, and splice
//! the tokens into the original bytes, so that everything else reaches the
//! platform exactly as the backend wrote it.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};

use actix_web::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use actix_web::{web, HttpRequest};

use super::{Route, FORM, MAX_UPSTREAM_TOKEN_BYTES};
use crate::audit::{Action, Context, Outcome};
use crate::config::UnselectedPii;
use crate::http::api::read_body;
use crate::http::context::RequestId;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::AppState;
use crate::normalize::Normalization;
use crate::payload::records::Subjects;
use crate::payload::splice::{self, FormPair, Leaf, Span, Visit};
use crate::payload::{self, detect, PayloadError};
use crate::pii::Pii;
use crate::vault::{TokenizeItem, VaultError};

/// A refusal: the answer, and the audit reason when the refusal is not
/// already on the record.
pub(super) type Refusal = (ApiError, Option<&'static str>);

/// What goes upstream.
pub(super) struct Prepared {
    /// The body: the original bytes with tokens spliced in (re-compressed
    /// when it came gzip-encoded and something changed).
    pub body: Vec<u8>,
    /// The body is gzip-encoded.
    pub gzip: bool,
    /// The query string, with tokens spliced in.
    pub query: String,
    /// The forward record was committed with the tokenization.
    pub forward_recorded: bool,
}

/// Where a value to tokenize sits.
#[derive(Debug, Clone)]
enum Place {
    /// A JSON scalar.
    Json {
        pointer: String,
        span: Span,
    },
    /// A JSON member name.
    JsonKey {
        pointer: String,
        span: Span,
    },
    /// A form value or name, by pair index.
    FormValue(usize),
    FormName(usize),
    /// A query parameter's value or name, by pair index.
    QueryValue(usize),
    QueryName(usize),
}

/// What kind of body, and for a form where its pairs are.
enum Body {
    Json,
    Form(Vec<FormPair>),
}

/// Reads, checks and tokenizes the request; see [`Prepared`].
pub(super) async fn prepare(
    state: &AppState,
    route: &Route,
    caller: &crate::policy::Caller,
    context: &Context,
    req: &HttpRequest,
    payload: web::Payload,
    id: &RequestId,
) -> Result<Prepared, Refusal> {
    let refuse = |code: ErrorCode, message: String, reason: &'static str| {
        (ApiError::new(code, message, id), Some(reason))
    };
    let (raw, body, gzip, form) = read(state, route, req, payload, id).await?;
    let document = if form {
        payload::parse_form(&body)
    } else {
        payload::parse_strict(&body, route.spec.max_depth)
    }
    .map_err(|error| {
        let code = if matches!(error, PayloadError::NotScalar(_)) {
            ErrorCode::Unprocessable
        } else {
            ErrorCode::InvalidRequest
        };
        refuse(code, error.to_string(), "malformed_body")
    })?;
    let layout = if form {
        Body::Form(splice::form_pairs(&body))
    } else {
        Body::Json
    };
    let query = req.query_string().as_bytes();
    let query_pairs = splice::form_pairs(query);

    // The selected fields, in the body and in the query string.
    let selectors: Vec<&payload::Selector> = route
        .spec
        .fields
        .iter()
        .map(|rule| &rule.selector)
        .collect();
    let selected = payload::select(&document, &selectors).map_err(|error| {
        refuse(
            ErrorCode::Unprocessable,
            error.to_string(),
            "selected_field_not_a_value",
        )
    })?;
    // The customer of each record, when the route names where it is.
    let subjects = route
        .spec
        .subject
        .as_ref()
        .map(|selector| Subjects::find(&document, selector));
    let subject_at = |place: &Place| -> Option<Pii> {
        let subjects = subjects.as_ref()?;
        let subject = match place {
            Place::Json { pointer, .. } | Place::JsonKey { pointer, .. } => subjects.of(pointer),
            _ => subjects.of_document(),
        };
        subject.map(|s| Pii::new(s.expose().to_owned()))
    };
    let namespace = &route.spec.namespace;
    let e164 = |class: &str| {
        state
            .vault
            .namespace_spec(namespace)
            .and_then(|ns| ns.classes.get(class))
            .is_some_and(|c| c.normalize == Normalization::E164)
    };
    // One walk over a JSON body: the spans of the selected values, and the
    // findings in everything else.
    let json_walk = match layout {
        Body::Json => {
            let pointers: Vec<&str> = selected.iter().map(|f| f.pointer.as_str()).collect();
            Some(JsonWalk::run(&body, &pointers))
        }
        Body::Form(_) => None,
    };
    let mut places: Vec<Place> = Vec::with_capacity(selected.len());
    let mut items: Vec<TokenizeItem> = Vec::with_capacity(selected.len());
    let mut skip = BTreeSet::new();
    for (index, field) in selected.into_iter().enumerate() {
        let class = route.spec.fields[field.rule].class.clone();
        let (place, text) = match (&layout, &json_walk) {
            (Body::Json, Some(walked)) => {
                let Some((leaf, span)) = walked.spans[index] else {
                    continue;
                };
                // A number's digits as written (serde_json would round a
                // big one).
                let text = match leaf {
                    Leaf::Number => Pii::new(written(&body, span)),
                    _ => field.value,
                };
                (
                    Place::Json {
                        pointer: field.pointer.clone(),
                        span,
                    },
                    text,
                )
            }
            (Body::Form(pairs), _) => {
                let name = unescape_pointer(&field.pointer);
                let Some(index) = pairs.iter().position(|p| p.name == name) else {
                    continue;
                };
                (Place::FormValue(index), field.value)
            }
            _ => continue,
        };
        // Phones sent as JSON numbers carry no `+`: the digits are the
        // international number.
        let value = if field.was_number && e164(&class) {
            Pii::new(format!("+{}", text.expose()))
        } else {
            text
        };
        skip.insert(field.pointer);
        let subject = subject_at(&place);
        places.push(place);
        items.push(TokenizeItem {
            class,
            value,
            subject,
        });
    }
    let mut query_selected = BTreeSet::new();
    for (index, pair) in query_pairs.iter().enumerate() {
        if let Some(rule) = route.spec.query_fields.iter().find(|r| r.name == pair.name) {
            query_selected.insert(index);
            let place = Place::QueryValue(index);
            let subject = subject_at(&place);
            places.push(place);
            items.push(TokenizeItem {
                class: rule.class.clone(),
                value: decoded_value(query, pair),
                subject,
            });
        }
    }

    // Everything else that could hold personal data.
    let findings = scan(
        &body,
        json_walk,
        &layout,
        &skip,
        query,
        &query_pairs,
        &query_selected,
    );
    for (place, detectors, _) in &findings {
        let detectors: Vec<&str> = detectors.iter().map(|d| d.as_str()).collect();
        tracing::warn!(request_id = %id, route = %route.spec.name, path = %describe(route, &layout, &query_pairs, place), detectors = ?detectors, mode = ?route.spec.unselected_pii, "PII found in a field no rule selects");
    }
    if !findings.is_empty() {
        match route.spec.unselected_pii {
            UnselectedPii::Block => {
                let paths: Vec<String> = findings
                    .iter()
                    .map(|(place, _, _)| describe(route, &layout, &query_pairs, place))
                    .collect();
                return Err(refuse(
                    ErrorCode::Unprocessable,
                    format!(
                        "personal data in fields no rule selects: {}",
                        paths.join(", ")
                    ),
                    "unselected_pii",
                ));
            }
            UnselectedPii::Tokenize => {
                let class = route.spec.unselected_class.clone().unwrap_or_default();
                for (place, _, value) in findings {
                    let subject = subject_at(&place);
                    places.push(place);
                    items.push(TokenizeItem {
                        class: class.clone(),
                        value,
                        subject,
                    });
                }
            }
            UnselectedPii::Report => {
                let mut record = context
                    .record(Action::Forward, Outcome::Ok)
                    .namespace(namespace)
                    .reason("unselected_pii_reported");
                record.item_count = findings.len() as u64;
                state
                    .vault
                    .record(vec![record])
                    .await
                    .map_err(|error| (ApiError::from_vault(error, id), None))?;
            }
        }
    }

    let mut tokens = Vec::new();
    let forward_recorded = !items.is_empty();
    if forward_recorded {
        let forward = context
            .record(Action::Forward, Outcome::Ok)
            .namespace(namespace);
        tokens = state
            .vault
            .tokenize_and_record(context, caller, namespace, items, vec![forward])
            .await
            .map_err(|error| {
                let api = match &error {
                    VaultError::Item { index, problem } => ApiError::new(
                        ErrorCode::Unprocessable,
                        format!(
                            "field {} cannot be tokenized: {problem}",
                            places
                                .get(*index)
                                .map(|p| describe(route, &layout, &query_pairs, p))
                                .unwrap_or_default()
                        ),
                        id,
                    ),
                    _ => ApiError::from_vault(error, id),
                };
                // The engine has recorded the failure itself.
                (api, None)
            })?
            .into_iter()
            .map(|t| t.token)
            .collect();
    }

    // Splice the tokens in; every other byte stays as it came.
    let mut body_edits = Vec::new();
    let mut query_edits = Vec::new();
    for (place, token) in places.iter().zip(&tokens) {
        if token.len() > MAX_UPSTREAM_TOKEN_BYTES {
            return Err(refuse(
                ErrorCode::Unprocessable,
                format!(
                    "the token for {} exceeds {MAX_UPSTREAM_TOKEN_BYTES} bytes",
                    describe(route, &layout, &query_pairs, place)
                ),
                "token_too_long",
            ));
        }
        let edit = match (place, &layout) {
            (Place::Json { span, .. }, Body::Json) | (Place::JsonKey { span, .. }, Body::Json) => {
                Some((*span, splice::json_string(token)))
            }
            (Place::FormValue(index), Body::Form(pairs)) => pairs
                .get(*index)
                .map(|pair| (pair.value_span, splice::form_encode(token))),
            (Place::FormName(index), Body::Form(pairs)) => pairs
                .get(*index)
                .map(|pair| (pair.name_span, splice::form_encode(token))),
            (Place::QueryValue(index), _) => {
                let pair = &query_pairs[*index];
                query_edits.push((pair.value_span, splice::form_encode(token)));
                continue;
            }
            (Place::QueryName(index), _) => {
                let pair = &query_pairs[*index];
                query_edits.push((pair.name_span, splice::form_encode(token)));
                continue;
            }
            _ => None,
        };
        let Some(edit) = edit else {
            return Err(refuse(
                ErrorCode::Unprocessable,
                format!(
                    "field {} vanished",
                    describe(route, &layout, &query_pairs, place)
                ),
                "rewrite_failed",
            ));
        };
        body_edits.push(edit);
    }
    let query = String::from_utf8_lossy(&splice::splice(query, query_edits)).into_owned();
    let out = if body_edits.is_empty() {
        // Nothing to change: the bytes as they came, compressed or not.
        drop(body);
        raw.to_vec()
    } else {
        let spliced = splice::splice(&body, body_edits);
        drop(body);
        if gzip {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder
                .write_all(&spliced)
                .and_then(|_| encoder.finish())
                .map_err(|_| refuse(ErrorCode::Internal, "internal error".into(), "gzip_failed"))?
        } else {
            spliced
        }
    };
    Ok(Prepared {
        body: out,
        gzip,
        query,
        forward_recorded,
    })
}

/// The body as received, the body to parse (gunzipped), whether it was
/// gzip, and whether it is a form.
async fn read(
    state: &AppState,
    route: &Route,
    req: &HttpRequest,
    payload: web::Payload,
    id: &RequestId,
) -> Result<
    (
        zeroize::Zeroizing<Vec<u8>>,
        zeroize::Zeroizing<Vec<u8>>,
        bool,
        bool,
    ),
    Refusal,
> {
    let refuse = |code: ErrorCode, message: String, reason: &'static str| {
        (ApiError::new(code, message, id), Some(reason))
    };
    let mime = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !route.spec.content_types.contains(&mime) {
        return Err(refuse(
            ErrorCode::UnsupportedMediaType,
            format!(
                "this route takes {} bodies",
                route.spec.content_types.join(" or ")
            ),
            "unsupported_media_type",
        ));
    }
    let raw = read_body(state, req, payload, id)
        .await
        .map_err(|error| (error, Some("body_rejected")))?;
    let gzip = match req
        .headers()
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") => false,
        Some(encoding) if encoding.eq_ignore_ascii_case("gzip") => true,
        Some(_) => {
            return Err(refuse(
                ErrorCode::UnsupportedMediaType,
                "only gzip content encoding is accepted".into(),
                "unsupported_encoding",
            ))
        }
    };
    if !gzip {
        let body = zeroize::Zeroizing::new(raw.to_vec());
        return Ok((raw, body, false, mime == FORM));
    }
    let limit = state.limits.max_body_bytes;
    let mut decoded = zeroize::Zeroizing::new(Vec::new());
    let read = flate2::read::GzDecoder::new(raw.as_slice())
        .take(limit as u64 + 1)
        .read_to_end(&mut decoded);
    if read.is_err() {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            "the gzip body does not decode".into(),
            "malformed_body",
        ));
    }
    if decoded.len() > limit {
        return Err(refuse(
            ErrorCode::PayloadTooLarge,
            format!("the decoded body is larger than {limit} bytes"),
            "body_too_large",
        ));
    }
    Ok((raw, decoded, true, mime == FORM))
}

type Finding = (Place, Vec<detect::Detector>, Pii);

/// One walk over a JSON body: where the selected values are, and what the
/// detectors flag everywhere else (string values, numbers as written,
/// member names). Nothing is allocated for a place that is neither.
struct JsonWalk<'a> {
    body: &'a [u8],
    wanted: HashMap<&'a str, usize>,
    spans: Vec<Option<(Leaf, Span)>>,
    findings: Vec<(usize, Finding)>,
}

/// What a [`JsonWalk`] found, by then free of the borrows it walked with.
struct JsonFound {
    /// The span of each selected value, in the order of the selection.
    spans: Vec<Option<(Leaf, Span)>>,
    /// Flagged places, with their offset (for document order).
    findings: Vec<(usize, Finding)>,
}

impl<'a> JsonWalk<'a> {
    fn run(body: &'a [u8], selected: &[&'a str]) -> JsonFound {
        let mut walk = Self {
            body,
            wanted: selected.iter().enumerate().map(|(i, p)| (*p, i)).collect(),
            spans: vec![None; selected.len()],
            findings: Vec::new(),
        };
        splice::walk(body, &mut walk);
        JsonFound {
            spans: walk.spans,
            findings: walk.findings,
        }
    }
}

impl Visit for JsonWalk<'_> {
    fn leaf(&mut self, pointer: &str, leaf: Leaf, span: Span) {
        if let Some(&index) = self.wanted.get(pointer) {
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
            self.findings
                .push((span.start, (place, found, Pii::new(text.into_owned()))));
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
            self.findings
                .push((span.start, (place, found, Pii::new(name.into_owned()))));
        }
    }
}

/// Every unselected place that a detector flags: in a JSON body (found by
/// the walk); form names and values; query names and values.
fn scan(
    body: &[u8],
    json_walk: Option<JsonFound>,
    layout: &Body,
    skip: &BTreeSet<String>,
    query: &[u8],
    query_pairs: &[FormPair],
    query_selected: &BTreeSet<usize>,
) -> Vec<Finding> {
    let mut findings: Vec<(usize, Finding)> = json_walk.map(|w| w.findings).unwrap_or_default();
    let mut flag = |order: usize, place: Place, text: String, detectors: Vec<detect::Detector>| {
        if !detectors.is_empty() {
            findings.push((order, (place, detectors, Pii::new(text))));
        }
    };
    if let Body::Form(pairs) = layout {
        for (index, pair) in pairs.iter().enumerate() {
            let found = detect::scan(&pair.name);
            flag(
                pair.name_span.start,
                Place::FormName(index),
                pair.name.clone(),
                found,
            );
            let pointer = format!("/{}", pair.name.replace('~', "~0").replace('/', "~1"));
            if !skip.contains(&pointer) {
                let value = decoded_value(body, pair);
                let found = detect::scan(value.expose());
                flag(
                    pair.value_span.start,
                    Place::FormValue(index),
                    value.expose().to_owned(),
                    found,
                );
            }
        }
    }
    // After the body, in query order.
    let base = body.len() + 1;
    for (index, pair) in query_pairs.iter().enumerate() {
        let found = detect::scan(&pair.name);
        flag(
            base + pair.name_span.start,
            Place::QueryName(index),
            pair.name.clone(),
            found,
        );
        if !query_selected.contains(&index) {
            let value = decoded_value(query, pair);
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

/// The bytes of `span` as text.
fn written(body: &[u8], span: Span) -> String {
    String::from_utf8_lossy(&body[span.start..span.end]).into_owned()
}

/// A form or query pair's decoded value.
fn decoded_value(bytes: &[u8], pair: &FormPair) -> Pii {
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

/// A JSON pointer's single member name, unescaped (form bodies).
fn unescape_pointer(pointer: &str) -> String {
    pointer
        .trim_start_matches('/')
        .replace("~1", "/")
        .replace("~0", "~")
}

/// A place fit for a log line or an error: configured names as they are,
/// every other name `*`.
fn describe(route: &Route, layout: &Body, query: &[FormPair], place: &Place) -> String {
    // A parameter name is shown only when a query rule names it.
    let query_name = |index: &usize| -> String {
        query
            .get(*index)
            .map(|pair| &pair.name)
            .filter(|name| route.spec.query_fields.iter().any(|r| &r.name == *name))
            .cloned()
            .unwrap_or_else(|| "*".to_owned())
    };
    match (place, layout) {
        (Place::Json { pointer, .. }, _) => route.names.safe_pointer(pointer),
        (Place::JsonKey { pointer, .. }, _) => {
            format!("{} (member name)", route.names.safe_pointer(pointer))
        }
        (Place::FormValue(index), Body::Form(pairs))
        | (Place::FormName(index), Body::Form(pairs)) => {
            let name = pairs
                .get(*index)
                .map(|p| format!("/{}", p.name.replace('~', "~0").replace('/', "~1")))
                .unwrap_or_default();
            let shown = route.names.safe_pointer(&name);
            if matches!(place, Place::FormName(_)) {
                format!("{shown} (field name)")
            } else {
                shown
            }
        }
        (Place::QueryValue(index), _) => format!("query parameter {}", query_name(index)),
        (Place::QueryName(index), _) => format!("query parameter {} (name)", query_name(index)),
        _ => "*".to_owned(),
    }
}
