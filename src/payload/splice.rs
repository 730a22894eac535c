//! Byte-exact rewriting: where each value and member name sits in the
//! original body, so that tokens are spliced into those spans and every
//! other byte (numbers as written, key order, whitespace, escapes) goes out
//! as it came in.
//!
//! The layout scanner runs only on a body that `parse_strict` accepted
//! (valid UTF-8 JSON, no duplicate keys, bounded depth), so it can be a
//! small, trusting scanner; it still never indexes past the end.

use std::collections::HashMap;

/// A byte range `start..end` of the original body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// The kind of a scalar leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// A string (the span includes the quotes).
    String,
    /// A number, as written.
    Number,
    /// `true`, `false` or `null`.
    Literal,
}

/// One object member name: the pointer of the member it names, and the span
/// of the name (with its quotes).
#[derive(Debug, Clone)]
pub struct Key {
    /// JSON pointer of the member.
    pub pointer: String,
    /// Span of the quoted name.
    pub span: Span,
}

/// Where every scalar and every member name of a JSON body is.
#[derive(Debug, Default)]
pub struct Layout {
    /// Scalar leaves by JSON pointer (RFC 6901, as `serde_json_path` writes
    /// them).
    pub leaves: HashMap<String, (Leaf, Span)>,
    /// Every member name, in document order.
    pub keys: Vec<Key>,
}

impl Layout {
    /// Scans a body that `parse_strict` accepted.
    pub fn scan(body: &[u8]) -> Self {
        struct Collect(Layout);
        impl Visit for Collect {
            fn leaf(&mut self, pointer: &str, leaf: Leaf, span: Span) {
                self.0.leaves.insert(pointer.to_owned(), (leaf, span));
            }
            fn key(&mut self, pointer: &str, span: Span) {
                self.0.keys.push(Key {
                    pointer: pointer.to_owned(),
                    span,
                });
            }
        }
        let mut collect = Collect(Layout::default());
        walk(body, &mut collect);
        collect.0
    }
}

/// What [`walk`] reports, with the JSON pointer of the place (valid only
/// during the call: it is one buffer, reused).
pub trait Visit {
    /// A scalar value.
    fn leaf(&mut self, pointer: &str, leaf: Leaf, span: Span);
    /// A member name; `pointer` is the member's.
    fn key(&mut self, pointer: &str, span: Span);
    /// An object (`array` false) or array starts at byte `start`; the
    /// segments that follow, until [`leave`](Visit::leave), are its
    /// members' names or its elements' indices.
    fn enter(&mut self, _pointer: &str, _array: bool, _start: usize) {}
    /// The object or array entered last ends.
    fn leave(&mut self) {}
}

/// Walks a body that `parse_strict` accepted, reporting every scalar and
/// member name with its span, in document order, allocating nothing per
/// place (one pointer buffer is grown and cut as the walk goes).
pub fn walk(body: &[u8], visit: &mut impl Visit) {
    let mut scanner = Scanner {
        bytes: body,
        pos: 0,
        pointer: String::new(),
        visit,
    };
    scanner.value();
}

struct Scanner<'a, V> {
    bytes: &'a [u8],
    pos: usize,
    pointer: String,
    visit: &'a mut V,
}

impl<V: Visit> Scanner<'_, V> {
    fn peek(&self) -> u8 {
        self.bytes.get(self.pos).copied().unwrap_or(0)
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn value(&mut self) {
        self.whitespace();
        let start = self.pos;
        let leaf = match self.peek() {
            open @ (b'{' | b'[') => {
                self.visit.enter(&self.pointer, open == b'[', start);
                if open == b'{' {
                    self.object();
                } else {
                    self.array();
                }
                self.visit.leave();
                return;
            }
            b'"' => {
                self.string();
                Leaf::String
            }
            b't' | b'f' | b'n' => {
                while self.peek().is_ascii_alphabetic() {
                    self.pos += 1;
                }
                Leaf::Literal
            }
            _ => {
                while matches!(self.peek(), b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    self.pos += 1;
                }
                Leaf::Number
            }
        };
        let span = Span {
            start,
            end: self.pos,
        };
        self.visit.leaf(&self.pointer, leaf, span);
    }

    /// Consumes a string, quotes included.
    fn string(&mut self) {
        self.pos += 1;
        while self.pos < self.bytes.len() {
            match self.bytes[self.pos] {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Appends a member name to the pointer, escaped as RFC 6901 says.
    fn push_name(&mut self, quoted: Span) {
        let raw = &self.bytes[quoted.start + 1..quoted.end.saturating_sub(1).max(quoted.start + 1)];
        self.pointer.push('/');
        match std::str::from_utf8(raw) {
            Ok(name) if !raw.iter().any(|b| matches!(b, b'\\' | b'~' | b'/')) => {
                self.pointer.push_str(name)
            }
            _ => {
                let name = unquote(&self.bytes[quoted.start..quoted.end]);
                self.pointer
                    .push_str(&name.replace('~', "~0").replace('/', "~1"));
            }
        }
    }

    fn object(&mut self) {
        self.pos += 1;
        let base = self.pointer.len();
        loop {
            self.whitespace();
            match self.peek() {
                b'}' => {
                    self.pos += 1;
                    return;
                }
                b',' => {
                    self.pos += 1;
                    continue;
                }
                b'"' => {}
                // Only a body parse_strict accepted gets here.
                _ => return,
            }
            let start = self.pos;
            self.string();
            let span = Span {
                start,
                end: self.pos,
            };
            self.push_name(span);
            self.visit.key(&self.pointer, span);
            self.whitespace();
            if self.peek() == b':' {
                self.pos += 1;
            }
            let before = self.pos;
            self.value();
            self.pointer.truncate(base);
            if self.pos == before {
                return;
            }
        }
    }

    fn array(&mut self) {
        self.pos += 1;
        let base = self.pointer.len();
        let mut index = 0usize;
        loop {
            self.whitespace();
            match self.peek() {
                b']' => {
                    self.pos += 1;
                    return;
                }
                b',' => {
                    self.pos += 1;
                    continue;
                }
                0 => return,
                _ => {}
            }
            self.pointer.push('/');
            // Invariant: writing to a String cannot fail.
            std::fmt::Write::write_fmt(&mut self.pointer, format_args!("{index}"))
                .expect("write to String");
            let before = self.pos;
            self.value();
            self.pointer.truncate(base);
            index += 1;
            // Never loop on bytes that are not JSON (only a body that
            // parse_strict accepted gets here, but stay total anyway).
            if self.pos == before {
                return;
            }
        }
    }
}

/// The text of a quoted JSON string (escapes decoded), borrowed when it
/// has no escapes.
pub fn unquote(quoted: &[u8]) -> std::borrow::Cow<'_, str> {
    let inner = &quoted[1.min(quoted.len())..quoted.len().saturating_sub(1).max(1)];
    if !inner.contains(&b'\\') {
        return String::from_utf8_lossy(inner);
    }
    std::borrow::Cow::Owned(serde_json::from_slice::<String>(quoted).unwrap_or_default())
}

/// `body` with each span replaced by its bytes; spans must not overlap.
pub fn splice(body: &[u8], mut edits: Vec<(Span, Vec<u8>)>) -> Vec<u8> {
    edits.sort_by_key(|(span, _)| span.start);
    let added: usize = edits.iter().map(|(_, bytes)| bytes.len()).sum();
    let mut out = Vec::with_capacity(body.len() + added);
    let mut at = 0;
    for (span, bytes) in edits {
        out.extend_from_slice(&body[at..span.start]);
        out.extend_from_slice(&bytes);
        at = span.end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

/// A JSON string literal of `text`.
pub fn json_string(text: &str) -> Vec<u8> {
    // Invariant: a string always serializes.
    serde_json::to_vec(text).expect("a string serializes")
}

/// One `name=value` pair of a form body, as spans of the original bytes.
#[derive(Debug, Clone)]
pub struct FormPair {
    /// The decoded name.
    pub name: String,
    /// The encoded name's span.
    pub name_span: Span,
    /// The encoded value's span (empty when there is no `=`).
    pub value_span: Span,
}

/// The pairs of a form body (or a query string), in order.
pub fn form_pairs(body: &[u8]) -> Vec<FormPair> {
    let mut pairs = Vec::new();
    let mut start = 0;
    while start <= body.len() {
        let end = body[start..]
            .iter()
            .position(|b| *b == b'&')
            .map_or(body.len(), |i| start + i);
        if end > start {
            let pair = &body[start..end];
            let (name_end, value_start) = match pair.iter().position(|b| *b == b'=') {
                Some(eq) => (start + eq, start + eq + 1),
                None => (end, end),
            };
            let name = form_urlencoded::parse(&body[start..name_end])
                .next()
                .map(|(name, _)| name.into_owned())
                .unwrap_or_default();
            pairs.push(FormPair {
                name,
                name_span: Span {
                    start,
                    end: name_end,
                },
                value_span: Span {
                    start: value_start,
                    end,
                },
            });
        }
        start = end + 1;
    }
    pairs
}

/// The form encoding of `text`.
pub fn form_encode(text: &str) -> Vec<u8> {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_locate_leaves_and_keys_exactly() {
        let body = br#" { "a" : [ 1e2 , -0, "x\"y" ], "b~/c": {"d": true}, "\u0065": null } "#;
        let layout = Layout::scan(body);
        let text = |pointer: &str| {
            let (_, span) = layout.leaves[pointer];
            std::str::from_utf8(&body[span.start..span.end]).unwrap()
        };
        assert_eq!(text("/a/0"), "1e2");
        assert_eq!(text("/a/1"), "-0");
        assert_eq!(text("/a/2"), r#""x\"y""#);
        assert_eq!(text("/b~0~1c/d"), "true");
        assert_eq!(text("/e"), "null");
        let names: Vec<&str> = layout.keys.iter().map(|k| k.pointer.as_str()).collect();
        assert_eq!(names, ["/a", "/b~0~1c", "/b~0~1c/d", "/e"]);
        let spliced = splice(body, vec![(layout.leaves["/a/0"].1, json_string("TKN"))]);
        assert_eq!(
            spliced,
            br#" { "a" : [ "TKN" , -0, "x\"y" ], "b~/c": {"d": true}, "\u0065": null } "#
        );
    }

    #[test]
    fn form_pairs_keep_their_bytes() {
        let body = b"b=1&email=a%40b.example&&flag&x=%2B1+2";
        let pairs = form_pairs(body);
        let names: Vec<&str> = pairs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "email", "flag", "x"]);
        let email = &pairs[1];
        assert_eq!(
            &body[email.value_span.start..email.value_span.end],
            b"a%40b.example"
        );
        let out = splice(body, vec![(email.value_span, form_encode("t@k.invalid"))]);
        assert_eq!(out, b"b=1&email=t%40k.invalid&&flag&x=%2B1+2");
    }

    mod property {
        use proptest::prelude::*;
        use serde_json::Value;

        use super::super::*;

        fn whitespace() -> impl Strategy<Value = &'static str> {
            prop_oneof![Just(""), Just(" "), Just("\n  "), Just("\t"), Just("\r\n")]
        }

        fn number() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("-0".to_owned()),
                Just("1e2".to_owned()),
                Just("1E+2".to_owned()),
                Just("123456789012345678901234567890".to_owned()),
                Just("919000700001".to_owned()),
                any::<i64>().prop_map(|n| n.to_string()),
                (any::<u32>(), 0u32..1000, -20i32..20).prop_map(|(a, b, e)| format!("{a}.{b}e{e}")),
            ]
        }

        fn string() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-zA-Z0-9 @.+/~-]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
                proptest::collection::vec(
                    prop_oneof![
                        Just('"'),
                        Just('\\'),
                        Just('\n'),
                        Just('é'),
                        Just('😀'),
                        Just('a')
                    ],
                    0..6
                )
                .prop_map(
                    |chars| serde_json::to_string(&chars.into_iter().collect::<String>()).unwrap()
                ),
                Just(r#""\u0041\u00e9\ud83d\ude00""#.to_owned()),
            ]
        }

        fn document() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                number(),
                string(),
                Just("true".to_owned()),
                Just("false".to_owned()),
                Just("null".to_owned()),
            ];
            leaf.prop_recursive(4, 48, 5, |inner| {
                prop_oneof![
                    proptest::collection::vec((inner.clone(), whitespace()), 0..5).prop_map(
                        |items| {
                            let items: Vec<String> =
                                items.iter().map(|(v, w)| format!("{w}{v}{w}")).collect();
                            format!("[{}]", items.join(","))
                        }
                    ),
                    proptest::collection::vec(("[a-z/~]{0,3}", inner, whitespace()), 0..5)
                        .prop_map(|members| {
                            // Unique names, in whatever order they came.
                            let members: Vec<String> = members
                                .iter()
                                .enumerate()
                                .map(|(i, (key, value, w))| {
                                    let name = serde_json::to_string(&format!("{key}{i}")).unwrap();
                                    format!("{w}{name}{w}:{w}{value}{w}")
                                })
                                .collect();
                            format!("{{{}}}", members.join(","))
                        }),
                ]
            })
        }

        /// Every scalar's JSON pointer in a parsed value.
        fn leaves(value: &Value, pointer: String, out: &mut Vec<String>) {
            match value {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        leaves(item, format!("{pointer}/{i}"), out);
                    }
                }
                Value::Object(members) => {
                    for (name, item) in members {
                        let escaped = name.replace('~', "~0").replace('/', "~1");
                        leaves(item, format!("{pointer}/{escaped}"), out);
                    }
                }
                _ => out.push(pointer),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn splicing_changes_only_the_selected_values(
                (outer, text) in (whitespace(), document()),
                mask in proptest::collection::vec(any::<bool>(), 64),
            ) {
                let body = format!("{outer}{text}{outer}").into_bytes();
                let parsed = crate::payload::parse_strict(&body, 100);
                prop_assume!(parsed.is_ok());
                let mut expected = parsed.unwrap();
                let mut pointers = Vec::new();
                leaves(&expected, String::new(), &mut pointers);
                let layout = Layout::scan(&body);
                let mut edits = Vec::new();
                for (i, pointer) in pointers.iter().enumerate() {
                    let (_, span) = layout.leaves[pointer];
                    // Each span holds exactly the value at its pointer.
                    let at: Value = serde_json::from_slice(&body[span.start..span.end]).unwrap();
                    prop_assert_eq!(&at, expected.pointer(pointer).unwrap());
                    if mask.get(i).copied().unwrap_or(false) {
                        let token = format!("TKN_{i}");
                        edits.push((span, json_string(&token)));
                        *expected.pointer_mut(pointer).unwrap() = Value::String(token);
                    }
                }
                let spans: Vec<Span> = edits.iter().map(|(span, _)| *span).collect();
                let out = splice(&body, edits);
                // The output parses, and equals the input with only the
                // selected values replaced.
                let reparsed: Value = serde_json::from_slice(&out).unwrap();
                prop_assert_eq!(reparsed, expected);
                // Every byte outside the selected spans is unchanged.
                let mut sorted = spans.clone();
                sorted.sort_by_key(|s| s.start);
                let (mut at, mut out_at) = (0usize, 0usize);
                for span in sorted {
                    let kept = span.start - at;
                    prop_assert_eq!(&out[out_at..out_at + kept], &body[at..span.start]);
                    out_at += kept;
                    // Skip the token the span became.
                    let token_len = out[out_at..].iter().skip(1).position(|b| *b == b'"').unwrap() + 2;
                    out_at += token_len;
                    at = span.end;
                }
                prop_assert_eq!(&out[out_at..], &body[at..]);
            }
        }
    }
}
