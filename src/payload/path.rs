//! Selecting fields while a body is walked, without a parsed document.
//!
//! Most selectors are a plain path: `$.d[*].profileData.Email`. Such a
//! selector compiles to [`Steps`] (member names, non-negative indices and
//! wildcards), and a [`Matcher`] fed by [`splice::walk`](super::splice::walk)
//! finds what it selects: the same places, in the same order and with the
//! same refusals as [`select`](super::select) on the parsed document, which
//! stays the way for every other selector (`..name`, slices, unions,
//! negative indices, names with escapes).

use std::cmp::Ordering;

use super::splice::{unquote, walk as walk_body, Leaf, Span, Visit};
use super::Selector;

/// The deepest path compiled (a bit per step marks wildcards that met a
/// member name).
const MAX_STEPS: usize = 64;

/// A plain selector's steps from the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(Vec<Step>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A member, by its name escaped as a JSON pointer segment.
    Name(String),
    /// An array element.
    Index(usize),
    /// Every member or element.
    Any,
}

impl Steps {
    /// The steps of `text` when it is a plain path of `.name`, `['name']`,
    /// `["name"]`, `.*`, `[*]` and `[N]`; `None` for anything else (or
    /// anything this reading is not sure to read as RFC 9535 does).
    pub fn compile(text: &str) -> Option<Self> {
        let mut rest = text.strip_prefix('$')?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            let (step, after) = if let Some(after) = rest.strip_prefix('.') {
                if let Some(after) = after.strip_prefix('*') {
                    (Step::Any, after)
                } else {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    let name = &after[..end];
                    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                        return None;
                    }
                    (Step::Name(name.to_owned()), &after[end..])
                }
            } else {
                let inner = rest.strip_prefix('[')?;
                let end = inner.find(']')?;
                let (selector, after) = (&inner[..end], &inner[end + 1..]);
                (bracketed(selector)?, after)
            };
            steps.push(step);
            rest = after;
        }
        (steps.len() <= MAX_STEPS).then_some(Self(steps))
    }

    /// Whether step `depth` takes the segment `segment` (an array index
    /// when `array`).
    fn takes(&self, depth: usize, segment: &str, array: bool) -> bool {
        match self.0.get(depth) {
            None => false,
            Some(Step::Any) => true,
            Some(Step::Name(name)) => !array && segment == name,
            Some(Step::Index(index)) => array && segment.parse::<usize>().ok() == Some(*index),
        }
    }

    /// The wildcards that met a member name on a path whose segments are
    /// array indices where `arrays` says so, a bit per step.
    fn names(&self, arrays: impl Iterator<Item = bool>) -> u64 {
        self.0
            .iter()
            .zip(arrays)
            .enumerate()
            .filter(|(_, (step, array))| **step == Step::Any && !*array)
            .fold(0, |names, (depth, _)| names | 1 << depth)
    }
}

/// The steps of rules that are all plain paths, at most [`MAX_RULES`] of
/// them: what a [`Matcher`] follows.
pub struct Plain<'a>(Vec<&'a Steps>);

/// The steps of every one of `selectors`, when each is a plain path and
/// there are at most [`MAX_RULES`] of them.
pub fn plain<'a>(selectors: &[&'a Selector]) -> Option<Plain<'a>> {
    if selectors.len() > MAX_RULES {
        return None;
    }
    selectors
        .iter()
        .map(|selector| selector.steps())
        .collect::<Option<_>>()
        .map(Plain)
}

/// The one selector inside `[...]`, when it is plain.
fn bracketed(selector: &str) -> Option<Step> {
    if selector == "*" {
        return Some(Step::Any);
    }
    let quoted = selector
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| selector.strip_prefix('"').and_then(|s| s.strip_suffix('"')));
    if let Some(name) = quoted {
        // No escapes, no quotes and no control characters: the name is
        // the text between the quotes.
        let plain = !name.contains(['\\', '\'', '"']) && !name.chars().any(char::is_control);
        return plain.then(|| Step::Name(name.replace('~', "~0").replace('/', "~1")));
    }
    let canonical = selector.bytes().all(|b| b.is_ascii_digit())
        && !selector.is_empty()
        && (selector == "0" || !selector.starts_with('0'));
    canonical
        .then(|| selector.parse::<usize>().ok())
        .flatten()
        .map(Step::Index)
}

/// A place a rule selected during a walk.
#[derive(Debug, Clone)]
pub struct Match {
    /// The first rule that selects it.
    pub rule: usize,
    /// Its JSON pointer.
    pub pointer: String,
    /// The scalar's kind; `None` for an object or array (refused).
    pub leaf: Option<Leaf>,
    /// Its bytes (a string's with the quotes).
    pub span: Span,
    /// The wildcards that met a member name, a bit per step.
    names: u64,
}

/// The most rules a matcher follows (a bit each).
pub const MAX_RULES: usize = 64;

/// Tracks where a walk is, and collects what the rules select.
pub struct Matcher<'a> {
    body: &'a [u8],
    rules: &'a [&'a Steps],
    /// For each open object or array: whether its segments are array
    /// indices, and the rules whose steps its path follows so far.
    open: Vec<(bool, u64)>,
    matches: Vec<Match>,
}

impl<'a> Matcher<'a> {
    /// A matcher for `rules` (in order: a place two rules select belongs to
    /// the first) over `body`.
    pub fn new(body: &'a [u8], rules: &'a Plain<'a>) -> Self {
        Self {
            body,
            rules: &rules.0,
            open: Vec::new(),
            matches: Vec::new(),
        }
    }

    /// The rules whose steps the place at `pointer` (a child of the last
    /// open object or array, or the root) follows.
    fn following(&self, pointer: &str) -> u64 {
        let Some(&(array, parent)) = self.open.last() else {
            return match self.rules.len() {
                0 => 0,
                n => u64::MAX >> (64 - n),
            };
        };
        if parent == 0 {
            return 0;
        }
        let depth = self.open.len() - 1;
        let segment = pointer.rfind('/').map_or("", |at| &pointer[at + 1..]);
        let mut following = 0;
        let mut rest = parent;
        while rest != 0 {
            let rule = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            if self.rules[rule].takes(depth, segment, array) {
                following |= 1 << rule;
            }
        }
        following
    }

    /// The first rule whose steps end at the place (`following` them, at
    /// the current depth).
    fn selecting(&self, following: u64) -> Option<usize> {
        let depth = self.open.len();
        let mut rest = following;
        while rest != 0 {
            let rule = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            if self.rules[rule].0.len() == depth {
                return Some(rule);
            }
        }
        None
    }

    fn record(&mut self, rule: usize, pointer: &str, leaf: Option<Leaf>, span: Span) {
        let names = self.rules[rule].names(self.open.iter().map(|(array, _)| *array));
        self.matches.push(Match {
            rule,
            pointer: pointer.to_owned(),
            leaf,
            span,
            names,
        });
    }

    /// An object or array starts at `pointer`.
    pub fn enter(&mut self, pointer: &str, array: bool, start: usize) {
        let following = self.following(pointer);
        if let Some(rule) = self.selecting(following) {
            self.record(rule, pointer, None, Span { start, end: start });
        }
        self.open.push((array, following));
    }

    /// The object or array entered last ends.
    pub fn leave(&mut self) {
        self.open.pop();
    }

    /// A scalar at `pointer`: true when a rule selects it (`null` is left
    /// alone, as `select` leaves it).
    pub fn leaf(&mut self, pointer: &str, leaf: Leaf, span: Span) -> bool {
        let following = self.following(pointer);
        if following == 0 {
            return false;
        }
        if leaf == Leaf::Literal && &self.body[span.start..span.end] == b"null" {
            return false;
        }
        let Some(rule) = self.selecting(following) else {
            return false;
        };
        self.record(rule, pointer, Some(leaf), span);
        true
    }

    /// The selected places in `select`'s order (by rule; within a rule,
    /// array elements by index and members by name), or the pointer of the
    /// first object or array a rule selects.
    pub fn finish(self) -> Result<Vec<Match>, String> {
        let mut matches = self.matches;
        // In document order already; that is a rule's order too unless a
        // wildcard met member names (taken by name, not as written).
        matches.sort_by_key(|m| m.rule);
        for group in matches.chunk_by_mut(|a, b| a.rule == b.rule) {
            if group.iter().any(|m| m.names != 0) {
                group.sort_by(path_order);
            }
        }
        if let Some(container) = matches.iter().find(|m| m.leaf.is_none()) {
            return Err(container.pointer.clone());
        }
        Ok(matches)
    }
}

/// What `rules` select in `body` (which [`check_strict`](super::check_strict)
/// accepted), in `select`'s order, or the pointer of the first object or
/// array they select.
pub fn select(body: &[u8], rules: &Plain) -> Result<Vec<Match>, String> {
    struct Walk<'a>(Matcher<'a>);
    impl Visit for Walk<'_> {
        fn leaf(&mut self, pointer: &str, leaf: Leaf, span: Span) {
            self.0.leaf(pointer, leaf, span);
        }
        fn key(&mut self, _pointer: &str, _span: Span) {}
        fn enter(&mut self, pointer: &str, array: bool, start: usize) {
            self.0.enter(pointer, array, start);
        }
        fn leave(&mut self) {
            self.0.leave();
        }
    }
    let mut walk = Walk(Matcher::new(body, rules));
    walk_body(body, &mut walk);
    walk.0.finish()
}

impl Match {
    /// The selected text: a string's decoded, a number's digits as
    /// written, `true` or `false`.
    pub fn text<'b>(&self, body: &'b [u8]) -> std::borrow::Cow<'b, str> {
        let bytes = &body[self.span.start..self.span.end];
        match self.leaf {
            Some(Leaf::String) => unquote(bytes),
            _ => String::from_utf8_lossy(bytes),
        }
    }
}

/// The order a parsed document yields two places of one rule in: at the
/// first segment where they differ (children of one node), elements by
/// index and members by name.
fn path_order(a: &Match, b: &Match) -> Ordering {
    let segments = a.pointer.split('/').zip(b.pointer.split('/')).skip(1);
    for (depth, (x, y)) in segments.enumerate() {
        if x == y {
            continue;
        }
        let named = depth < MAX_STEPS && a.names & (1 << depth) != 0;
        return if named {
            unescape(x).cmp(&unescape(y))
        } else {
            let index = |s: &str| s.parse::<usize>().unwrap_or(usize::MAX);
            index(x).cmp(&index(y))
        };
    }
    a.span.start.cmp(&b.span.start)
}

/// A JSON pointer segment's member name.
fn unescape(segment: &str) -> std::borrow::Cow<'_, str> {
    if segment.contains('~') {
        segment.replace("~1", "/").replace("~0", "~").into()
    } else {
        segment.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{self, KnownNames, Selector};

    /// (pointer, rule, text unless a number, was a number)
    type Found = Vec<(String, usize, Option<String>, bool)>;

    fn by_walk(body: &[u8], selectors: &[&Selector]) -> Result<Found, String> {
        let steps = plain(selectors).expect("plain selectors");
        let names = KnownNames::of(selectors.iter().copied());
        let matches = select(body, &steps).map_err(|p| names.safe_pointer(&p))?;
        Ok(matches
            .iter()
            .map(|m| {
                let number = m.leaf == Some(Leaf::Number);
                let text = (!number).then(|| m.text(body).into_owned());
                (m.pointer.clone(), m.rule, text, number)
            })
            .collect())
    }

    fn by_document(body: &[u8], selectors: &[&Selector]) -> Result<Found, String> {
        let document = payload::parse_strict(body, 32).expect("valid JSON");
        match payload::select(&document, selectors) {
            Ok(selected) => Ok(selected
                .into_iter()
                .map(|f| {
                    let text = (!f.was_number).then(|| f.value.expose().to_owned());
                    (f.pointer, f.rule, text, f.was_number)
                })
                .collect()),
            Err(payload::PayloadError::NotScalar(pointer)) => Err(pointer),
            Err(other) => panic!("unexpected {other}"),
        }
    }

    fn same(body: &str, selectors: &[&str]) {
        let selectors: Vec<Selector> = selectors
            .iter()
            .map(|s| Selector::parse(s).expect("selector"))
            .collect();
        let selectors: Vec<&Selector> = selectors.iter().collect();
        assert_eq!(
            by_walk(body.as_bytes(), &selectors),
            by_document(body.as_bytes(), &selectors),
            "{body} with {selectors:?}"
        );
    }

    #[test]
    fn plain_paths_compile_and_others_do_not() {
        for plain in [
            "$",
            "$.d[*].profileData.Email",
            "$.*",
            "$[0]['Delivery Email']",
            "$[\"a/b~c\"][10]",
            "$._x1",
        ] {
            assert!(Steps::compile(plain).is_some(), "{plain}");
        }
        for other in [
            "$..email",
            "$[-1]",
            "$[0:2]",
            "$['a','b']",
            "$[01]",
            "$['a\\'b']",
            "$.Émail",
            "$ .a",
            "$[ 0 ]",
            "$.1a",
            "a.b",
            "$[?@.a]",
        ] {
            assert!(Steps::compile(other).is_none(), "{other}");
        }
    }

    #[test]
    fn a_walk_selects_what_the_parsed_document_does() {
        let upload = r#"{"d":[{"identity":"u1","type":"profile","profileData":{"Email":"a@example.com","Phone":14155550100,"Name":null,"Flag":true}},{"identity":"u2","profileData":{"Email":"b@example.com","Phone":"+14155550101","Name":"Bo"}}]}"#;
        same(
            upload,
            &[
                "$.d[*].identity",
                "$.d[*].profileData.Email",
                "$.d[*].profileData.Phone",
                "$.d[*].profileData.Name",
                "$.d[*].profileData.Flag",
            ],
        );
        // Members by name, not as written; elements by index.
        same(r#"{"b":1,"a":"x","10":"y","9":"z"}"#, &["$.*"]);
        same(
            r#"{"x":{"b":"1","a":"2"},"y":[{"b":"3"},{"a":"4"}]}"#,
            &["$.*.*"],
        );
        same(
            r#"{"x":{"b":"1","a":"2"},"y":[{"b":"3"},{"a":"4"}]}"#,
            &["$.*[*]", "$.y[1].a"],
        );
        // A place two rules select belongs to the first.
        same(r#"{"a":["p","q"]}"#, &["$.a[1]", "$.a[*]"]);
        // Escaped names, and names with `/` and `~`.
        same(
            r#"{"E\u006dail":"e","x/y":"s","t~":"t"}"#,
            &["$.Email", "$['x/y']", "$['t~']"],
        );
        // Objects and arrays are refused; the first one in rule order.
        same(r#"{"a":{"b":1},"c":[1]}"#, &["$.c", "$.a"]);
        same(r#"{"a":{"b":1},"c":[1]}"#, &["$.a.b", "$.*"]);
        // The root, and a scalar root.
        same(r#"{"a":1}"#, &["$"]);
        same(r#""just text""#, &["$"]);
        same(r#"[1,"two",null,false]"#, &["$[*]", "$[3]"]);
        // An index is not a member name, and a member name is not an index.
        same(r#"{"0":"k","a":["e"]}"#, &["$[0]", "$.a['0']", "$['0']"]);
    }

    #[test]
    fn no_rules_select_nothing_and_too_many_are_not_followed() {
        let none = plain(&[]).expect("no rules are plain");
        assert_eq!(select(br#"{"a":[1]}"#, &none).map(|m| m.len()), Ok(0));
        let any = Selector::parse("$.*").expect("a selector");
        let rules = vec![&any; MAX_RULES + 1];
        assert!(plain(&rules).is_none());
        let most = plain(&rules[..MAX_RULES]).expect("as many as a matcher follows");
        assert!(select(br#"{"a":1}"#, &most).is_ok());
    }

    #[test]
    fn random_documents_select_alike() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        const KEYS: [&str; 7] = ["a", "b", "10", "9", "E\\u006dail", "x/y", "t~"];
        fn value(next: &mut impl FnMut(u64) -> u64, depth: u32, out: &mut String) {
            let pick = if depth >= 3 { 2 + next(5) } else { next(7) };
            match pick {
                0 => {
                    out.push('{');
                    let mut keys: Vec<&str> = KEYS.to_vec();
                    for i in 0..next(4) {
                        let key = keys.remove(next(keys.len() as u64) as usize);
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(&format!("\"{key}\":"));
                        value(next, depth + 1, out);
                    }
                    out.push('}');
                }
                1 => {
                    out.push('[');
                    for i in 0..next(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        value(next, depth + 1, out);
                    }
                    out.push(']');
                }
                2 => out.push_str(&format!("\"s{}\"", next(100))),
                3 => out.push_str(["1", "-2.5e3", "12345678901234567890"][next(3) as usize]),
                4 => out.push_str(["true", "false"][next(2) as usize]),
                5 => out.push_str("null"),
                _ => out.push_str("\"a\\u00e9\""),
            }
        }
        const SELECTORS: [&str; 18] = [
            "$",
            "$.a",
            "$.*",
            "$[*]",
            "$.a[*]",
            "$.*.b",
            "$[0]",
            "$[1].a",
            "$['x/y']",
            "$['t~']",
            "$.Email",
            "$.*.*",
            "$[*][*]",
            "$['10']",
            "$.a[0]",
            "$[*].Email",
            "$.*[1]",
            "$.b.*.a",
        ];
        for _ in 0..3000 {
            let mut body = String::new();
            value(&mut next, 0, &mut body);
            let rules: Vec<&str> = (0..1 + next(3))
                .map(|_| SELECTORS[next(SELECTORS.len() as u64) as usize])
                .collect();
            same(&body, &rules);
        }
    }
}
