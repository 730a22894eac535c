//! Payloads: strict JSON parsing, field selectors (a JSONPath subset, RFC
//! 9535 through `serde_json_path`), rewriting selected fields in place, and
//! the detectors of unselected PII.

pub mod detect;
pub mod path;
pub mod records;
pub mod splice;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use serde_json_path::JsonPath;

use crate::pii::Pii;

/// A compiled field selector: `$`, `.name`, `['name with spaces']`, `[*]`,
/// `[N]`, `..name`.
pub struct Selector {
    text: String,
    path: JsonPath,
    /// The same selector as plain steps, when it is one (matched during a
    /// walk of the bytes, without a parsed document).
    steps: Option<path::Steps>,
}

impl Selector {
    /// Compiles a selector; the error says what is wrong, for the config
    /// problem that names the route and rule.
    pub fn parse(text: &str) -> Result<Self, String> {
        // Only the documented forms: no filter expressions (`[?…]`), whose
        // nesting serde_json_path parses in exponential time (a 130-byte
        // selector did not finish in 14 s: found by the `selector` fuzz
        // target), and nothing longer than any field path needs.
        if text.len() > MAX_SELECTOR_BYTES {
            return Err(format!(
                "a selector longer than {MAX_SELECTOR_BYTES} bytes is not accepted"
            ));
        }
        if has_filter(text) {
            return Err(format!(
                "`{text}` is not a valid selector: filter expressions ([?...]) are not supported"
            ));
        }
        // serde_json_path 0.7 panics (an `unreachable!` on nom's
        // `Incomplete`) on some unfinished text, such as `$['0\u`: found by
        // the `selector` fuzz target. A selector it cannot finish reading is
        // not a valid selector, not a crash of `config check`.
        let parsed = std::panic::catch_unwind(|| JsonPath::parse(text))
            .map_err(|_| format!("`{text}` is not a valid selector: it ends too early"))?;
        let path = parsed.map_err(|error| format!("`{text}` is not a valid selector: {error}"))?;
        Ok(Self {
            text: text.to_owned(),
            path,
            steps: path::Steps::compile(text),
        })
    }

    /// The selector as plain steps, when it is one.
    pub fn steps(&self) -> Option<&path::Steps> {
        self.steps.as_ref()
    }

    /// The selector as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The member names the selector spells out (`.name`, `['name']`,
    /// `..name`): names from the configuration, which a log line may show.
    pub fn member_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = self.text.as_str();
        while let Some(at) = rest.find(['.', '[']) {
            let after = &rest[at + 1..];
            if rest.as_bytes()[at] == b'.' {
                let after = after.trim_start_matches('.');
                let end = after
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                if end > 0 {
                    names.push(after[..end].to_owned());
                }
                rest = &after[end..];
            } else if let Some(quoted) = after.strip_prefix('\'') {
                let end = quoted.find('\'').unwrap_or(quoted.len());
                names.push(quoted[..end].to_owned());
                rest = &quoted[(end + 1).min(quoted.len())..];
            } else {
                rest = after;
            }
        }
        names
    }
}

/// The longest selector accepted.
const MAX_SELECTOR_BYTES: usize = 512;

/// True when `text` has a `?` outside quoted names: a filter expression.
fn has_filter(text: &str) -> bool {
    let mut quote = None;
    let mut escaped = false;
    for c in text.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' => return true,
            None => {}
        }
    }
    false
}

/// Member names a log line or error message may show: those the
/// configuration's selectors spell out. Every other member name is the
/// caller's text (an email used as a key, a key holding a newline and a fake
/// log line) and is shown as `*`.
#[derive(Debug, Clone, Default)]
pub struct KnownNames(BTreeSet<String>);

impl KnownNames {
    /// The names `selectors` spell out.
    pub fn of<'a>(selectors: impl IntoIterator<Item = &'a Selector>) -> Self {
        Self(
            selectors
                .into_iter()
                .flat_map(Selector::member_names)
                .collect(),
        )
    }

    /// A JSON pointer fit for a log line or an error message: array indices
    /// and configured names as they are, every other segment `*`.
    pub fn safe_pointer(&self, pointer: &str) -> String {
        pointer
            .split('/')
            .enumerate()
            .map(|(i, segment)| {
                let name = segment.replace("~1", "/").replace("~0", "~");
                let index = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
                if i == 0 || index || self.0.contains(&name) {
                    segment
                } else {
                    "*"
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({})", self.text)
    }
}

/// Why a payload is refused. No variant carries content from the payload
/// except JSON pointers of positions (which are field names of the API, not
/// values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The body is not UTF-8.
    #[error("body is not valid UTF-8")]
    NotUtf8,
    /// The body is not JSON.
    #[error("body is not valid JSON (line {line}, column {column})")]
    Malformed {
        /// Line of the error.
        line: usize,
        /// Column of the error.
        column: usize,
    },
    /// An object has the same key twice: which one would the platform use?
    #[error("an object has a duplicate key (line {line}, column {column})")]
    DuplicateKey {
        /// Line of the error.
        line: usize,
        /// Column of the error.
        column: usize,
    },
    /// Nested deeper than the route allows.
    #[error("body is nested deeper than {0} levels")]
    TooDeep(usize),
    /// A selected field holds an object or array.
    #[error("selected field {0} holds an object or array, not a value")]
    NotScalar(String),
}

impl PayloadError {
    /// `pointer`, which one of `selectors` selected, holds an object or
    /// array; the error names it with the selectors' names only.
    pub fn not_scalar(selectors: &[&Selector], pointer: &str) -> Self {
        Self::NotScalar(KnownNames::of(selectors.iter().copied()).safe_pointer(pointer))
    }
}

/// Parses JSON strictly: UTF-8, no duplicate keys, at most `max_depth`
/// levels of nesting.
pub fn parse_strict(body: &[u8], max_depth: usize) -> Result<Value, PayloadError> {
    strictly(
        body,
        max_depth,
        StrictValue {
            depth: 0,
            max_depth,
        },
    )
}

/// Checks a body as [`parse_strict`] does, with the same errors, and builds
/// nothing: for a body whose fields are found by walking its bytes.
pub fn check_strict(body: &[u8], max_depth: usize) -> Result<(), PayloadError> {
    strictly(
        body,
        max_depth,
        StrictCheck {
            depth: 0,
            max_depth,
        },
    )
}

fn strictly<T>(
    body: &[u8],
    max_depth: usize,
    seed: impl for<'de> DeserializeSeed<'de, Value = T>,
) -> Result<T, PayloadError> {
    if std::str::from_utf8(body).is_err() {
        return Err(PayloadError::NotUtf8);
    }
    // serde_json also stops at 128 levels on its own; routes allow less.
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = seed.deserialize(&mut deserializer).map_err(|error| {
        let (line, column) = (error.line(), error.column());
        let text = error.to_string();
        if text.starts_with(DUPLICATE) {
            PayloadError::DuplicateKey { line, column }
        } else if text.starts_with(TOO_DEEP) || text.starts_with("recursion limit exceeded") {
            PayloadError::TooDeep(max_depth)
        } else {
            PayloadError::Malformed { line, column }
        }
    })?;
    deserializer
        .end()
        .map_err(|error| PayloadError::Malformed {
            line: error.line(),
            column: error.column(),
        })?;
    Ok(value)
}

const DUPLICATE: &str = "duplicate key";
const TOO_DEEP: &str = "nesting too deep";

struct StrictValue {
    depth: usize,
    max_depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.depth + 1;
        if depth > self.max_depth {
            return Err(A::Error::custom(TOO_DEEP));
        }
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue {
            depth,
            max_depth: self.max_depth,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.depth + 1;
        if depth > self.max_depth {
            return Err(A::Error::custom(TOO_DEEP));
        }
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(A::Error::custom(DUPLICATE));
            }
            let value = map.next_value_seed(StrictValue {
                depth,
                max_depth: self.max_depth,
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// [`StrictValue`]'s checks, building nothing.
struct StrictCheck {
    depth: usize,
    max_depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictCheck {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictCheck {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        match v.is_finite() {
            true => Ok(()),
            false => Err(E::custom("number out of range")),
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > self.max_depth {
            return Err(A::Error::custom(TOO_DEEP));
        }
        while seq
            .next_element_seed(StrictCheck {
                depth,
                max_depth: self.max_depth,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > self.max_depth {
            return Err(A::Error::custom(TOO_DEEP));
        }
        let mut names = Names::default();
        while let Some(name) = map.next_key_seed(NameSeed)? {
            if !names.insert(name) {
                return Err(A::Error::custom(DUPLICATE));
            }
            map.next_value_seed(StrictCheck {
                depth,
                max_depth: self.max_depth,
            })?;
        }
        Ok(())
    }
}

/// An object's member names so far: a list while it is short, a set after.
#[derive(Default)]
struct Names<'de> {
    few: Vec<Cow<'de, str>>,
    many: std::collections::HashSet<Cow<'de, str>>,
}

impl<'de> Names<'de> {
    const FEW: usize = 16;

    /// Adds `name`; false when the object already has it.
    fn insert(&mut self, name: Cow<'de, str>) -> bool {
        if self.many.is_empty() && self.few.len() < Self::FEW {
            if self.few.contains(&name) {
                return false;
            }
            self.few.push(name);
            return true;
        }
        if self.many.is_empty() {
            self.many.extend(self.few.drain(..));
        }
        self.many.insert(name)
    }
}

/// A member name, borrowed from the body when it has no escapes.
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Parses an `application/x-www-form-urlencoded` body into a JSON object of
/// its fields, so that the same selectors (`$.Email`, `$['Delivery Email']`)
/// apply. A field given twice is refused, as a duplicate JSON key is.
pub fn parse_form(body: &[u8]) -> Result<Value, PayloadError> {
    if std::str::from_utf8(body).is_err() {
        return Err(PayloadError::NotUtf8);
    }
    let mut object = Map::new();
    for (name, value) in form_urlencoded::parse(body) {
        if object
            .insert(name.into_owned(), Value::String(value.into_owned()))
            .is_some()
        {
            return Err(PayloadError::DuplicateKey { line: 1, column: 0 });
        }
    }
    Ok(Value::Object(object))
}

/// One selected field: where it is, the class to tokenize it as, its text.
#[derive(Debug)]
pub struct Selected {
    /// JSON pointer of the field.
    pub pointer: String,
    /// Index of the rule that selected it.
    pub rule: usize,
    /// The field's text (a number's digits for a JSON number).
    pub value: Pii,
    /// True when the field held a JSON number.
    pub was_number: bool,
}

/// Applies `selectors` (in order; a field selected twice keeps the first
/// rule) and returns the selected fields. `null` fields are left alone;
/// objects and arrays are refused.
pub fn select(document: &Value, selectors: &[&Selector]) -> Result<Vec<Selected>, PayloadError> {
    let mut seen = BTreeSet::new();
    let mut selected = Vec::new();
    for (rule, selector) in selectors.iter().enumerate() {
        for node in selector.path.query_located(document) {
            let pointer = node.location().to_json_pointer();
            if !seen.insert(pointer.clone()) {
                continue;
            }
            let (value, was_number) = match node.node() {
                Value::Null => continue,
                Value::String(text) => (text.clone(), false),
                Value::Number(number) => (number.to_string(), true),
                Value::Bool(flag) => (flag.to_string(), false),
                Value::Object(_) | Value::Array(_) => {
                    return Err(PayloadError::not_scalar(selectors, &pointer));
                }
            };
            selected.push(Selected {
                pointer,
                rule,
                value: Pii::new(value),
                was_number,
            });
        }
    }
    Ok(selected)
}

/// Writes `replacement` as a string at `pointer`.
pub fn replace(document: &mut Value, pointer: &str, replacement: String) -> bool {
    match document.pointer_mut(pointer) {
        Some(slot) => {
            *slot = Value::String(replacement);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_refuses_what_the_parse_refuses() {
        let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
        let bodies: [&[u8]; 11] = [
            br#"{"a": [1, {"b": "c"}]}"#,
            br#"{"a": 1, "a": 2}"#,
            br#"{"a": 1, "\u0061": 2}"#,
            b"[[[[1]]]]",
            br#"{"a": "#,
            b"{\"a\": \"\xff\"}",
            b"{} {}",
            br#"{"a": "\ud800"}"#,
            br#"[1e999]"#,
            deep.as_bytes(),
            br#"{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k17":17,"k3":3}"#,
        ];
        for body in bodies {
            for depth in [3, 64] {
                assert_eq!(
                    check_strict(body, depth),
                    parse_strict(body, depth).map(|_| ()),
                    "{}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        assert_eq!(
            check_strict(bodies[10], 8),
            Err(PayloadError::DuplicateKey {
                line: 1,
                column: 147
            })
        );
    }

    #[test]
    fn strict_parsing() {
        assert!(parse_strict(br#"{"a": [1, {"b": "c"}]}"#, 8).is_ok());
        assert!(matches!(
            parse_strict(br#"{"a": 1, "a": 2}"#, 8),
            Err(PayloadError::DuplicateKey { .. })
        ));
        assert_eq!(parse_strict(b"[[[[1]]]]", 3), Err(PayloadError::TooDeep(3)));
        assert!(matches!(
            parse_strict(br#"{"a": "#, 8),
            Err(PayloadError::Malformed { .. })
        ));
        assert_eq!(
            parse_strict(b"{\"a\": \"\xff\"}", 8),
            Err(PayloadError::NotUtf8)
        );
        assert!(matches!(
            parse_strict(b"{} {}", 8),
            Err(PayloadError::Malformed { .. })
        ));
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert_eq!(
            parse_strict(deep.as_bytes(), 64),
            Err(PayloadError::TooDeep(64))
        );
    }

    #[test]
    fn filters_and_overlong_selectors_are_refused_at_once() {
        // The input the `selector` fuzz target found: it did not finish
        // parsing in 14 s.
        let nested = "$.e[?$.u[?$.e[?($.e[?$.e[?$.e[?(($.e[?$.e[?$.e[?($.e.e[?$.u[?$.e[?($.e[?$.e[?$.e[?(($.e[?$.e[?$.e[?($.e[?$.e[?$.epko[?$.e[?$.epkof";
        assert!(Selector::parse(nested).err().unwrap().contains("filter"));
        assert!(Selector::parse("$.d[?(@.x)]").is_err());
        assert!(Selector::parse(&format!("$.{}", "a".repeat(600))).is_err());
        assert!(
            Selector::parse("$['what?'].x").is_ok(),
            "a ? inside a quoted name"
        );
        assert!(Selector::parse("$.d[*]['Contact (home)']").is_ok());
    }

    #[test]
    fn an_unfinished_selector_is_refused_not_a_panic() {
        // The input the `selector` fuzz target found.
        let error = Selector::parse("$['0\\u").err().unwrap();
        assert!(error.contains("not a valid selector"), "{error}");
    }

    #[test]
    fn selection_and_replacement() {
        let mut doc: Value = serde_json::from_str(
            r#"{"d": [{"identity": "C1", "profileData": {"Email": "a@b.c", "Phone": 447700900537, "Name": null}},
                      {"identity": "C2", "evtData": {"Delivery Email": "x@y.z"}}]}"#,
        )
        .unwrap();
        let rules = [
            Selector::parse("$.d[*].profileData.Email").unwrap(),
            Selector::parse("$.d[*].profileData.Phone").unwrap(),
            Selector::parse("$.d[*].profileData.Name").unwrap(),
            Selector::parse("$..['Delivery Email']").unwrap(),
            Selector::parse("$..Email").unwrap(),
        ];
        let refs: Vec<&Selector> = rules.iter().collect();
        let selected = select(&doc, &refs).unwrap();
        let found: Vec<(&str, usize, &str, bool)> = selected
            .iter()
            .map(|s| (s.pointer.as_str(), s.rule, s.value.expose(), s.was_number))
            .collect();
        assert_eq!(
            found,
            vec![
                ("/d/0/profileData/Email", 0, "a@b.c", false),
                ("/d/0/profileData/Phone", 1, "447700900537", true),
                ("/d/1/evtData/Delivery Email", 3, "x@y.z", false),
            ]
        );
        assert!(replace(
            &mut doc,
            "/d/0/profileData/Phone",
            "+440000000000".into()
        ));
        assert_eq!(doc["d"][0]["profileData"]["Phone"], "+440000000000");
        let object = Selector::parse("$.d[0].profileData").unwrap();
        assert!(matches!(
            select(&doc, &[&object]),
            Err(PayloadError::NotScalar(_))
        ));
        assert!(Selector::parse("$.d[").is_err());
        let rules = [
            Selector::parse("$.d[*].profiles.*.Phone").unwrap(),
            Selector::parse("$..evtData['Delivery Email']").unwrap(),
            Selector::parse("$['a/b']").unwrap(),
        ];
        assert_eq!(
            rules[0].member_names(),
            ["d", "profiles", "Phone"].map(String::from)
        );
        let names = KnownNames::of(&rules);
        assert_eq!(
            names.safe_pointer("/d/0/profiles/alice@example.com/Phone"),
            "/d/0/profiles/*/Phone"
        );
        assert_eq!(
            names.safe_pointer("/d/1/evtData/Delivery Email"),
            "/d/1/evtData/Delivery Email"
        );
        // A caller's key that would forge a log line, and one that merely is
        // not configured, are both masked; configured names with escapes stay.
        assert_eq!(
            names.safe_pointer("/d/2/x\n2026-12-01T00:00:00Z ERROR forged/Nickname"),
            "/d/2/*/*"
        );
        assert_eq!(names.safe_pointer("/a~1b"), "/a~1b");
    }
}
