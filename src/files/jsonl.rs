//! JSON Lines: one JSON document per line, its fields chosen with the route
//! selector syntax (`$.profileData.Email`). Each line is parsed strictly,
//! as an egress body is, and tokens are spliced into the selected values'
//! spans, so every other byte of the line is kept.

use std::io::BufRead;

use crate::payload::path;
use crate::payload::splice::{self, Leaf, Span, Visit};
use crate::payload::{self, records::Subjects, PayloadError, Selector};
use crate::pii::Pii;

/// Deepest nesting a line may have.
pub const MAX_DEPTH: usize = 64;

/// Reads lines (each with its `\n`, when it has one) of at most a given
/// length.
pub struct LineReader<R> {
    input: R,
    max_line: usize,
    consumed: u64,
}

/// A line longer than the limit.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The input could not be read.
    #[error("cannot read the input: {0}")]
    Io(#[from] std::io::Error),
    /// A line is longer than the limit.
    #[error("line {line} is longer than {limit} bytes")]
    TooLong {
        /// The line's number (from 1).
        line: u64,
        /// The limit.
        limit: usize,
    },
}

impl<R: BufRead> LineReader<R> {
    /// A reader refusing lines longer than `max_line` bytes.
    pub fn new(input: R, max_line: usize) -> Self {
        Self {
            input,
            max_line,
            consumed: 0,
        }
    }

    /// Bytes of input consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Reads the next line into `line`; false at the end of the input.
    /// `number` is the line's number, for the error.
    pub fn next_line(&mut self, line: &mut Vec<u8>, number: u64) -> Result<bool, LineError> {
        line.clear();
        loop {
            let buffer = self.input.fill_buf()?;
            if buffer.is_empty() {
                return Ok(!line.is_empty());
            }
            let (take, done) = match buffer.iter().position(|&b| b == b'\n') {
                Some(at) => (at + 1, true),
                None => (buffer.len(), false),
            };
            line.extend_from_slice(&buffer[..take]);
            self.input.consume(take);
            self.consumed += take as u64;
            if line.len() > self.max_line {
                return Err(LineError::TooLong {
                    line: number,
                    limit: self.max_line,
                });
            }
            if done {
                return Ok(true);
            }
        }
    }
}

/// A selected value of one line.
pub struct Found {
    /// Index of the rule that selected it.
    pub rule: usize,
    /// Its text (a number's digits as written).
    pub value: Pii,
    /// It was a JSON number.
    pub number: bool,
    /// Its bytes in the line (quotes included).
    pub span: Span,
}

/// The selected values of one line, and its subject.
pub struct Located {
    /// In the order the rules select them.
    pub found: Vec<Found>,
    /// The customer the line belongs to, when a subject selector is given.
    pub subject: Option<Pii>,
}

/// Parses `line` (without its line ending) and finds what `rules` select.
/// When every rule is a plain path and no subject is asked for, the line
/// is checked and walked once, without a parsed document, as an egress
/// body is (`payload::path`).
pub fn locate(
    line: &[u8],
    rules: &[&Selector],
    subject: Option<&Selector>,
) -> Result<Located, PayloadError> {
    if let Some(steps) = subject.is_none().then(|| path::plain(rules)).flatten() {
        payload::check_strict(line, MAX_DEPTH)?;
        let matched = path::select(line, &steps)
            .map_err(|pointer| PayloadError::not_scalar(rules, &pointer))?;
        let found = matched
            .into_iter()
            .filter_map(|found| {
                let leaf = found.leaf?;
                Some(Found {
                    rule: found.rule,
                    value: Pii::new(found.text(line).into_owned()),
                    number: leaf == Leaf::Number,
                    span: found.span,
                })
            })
            .collect();
        return Ok(Located {
            found,
            subject: None,
        });
    }
    let document = payload::parse_strict(line, MAX_DEPTH)?;
    let selected = payload::select(&document, rules)?;
    let subject = subject.and_then(|selector| {
        Subjects::find(&document, selector)
            .of_document()
            .map(|s| Pii::new(s.expose().to_owned()))
    });
    let pointers: Vec<&str> = selected.iter().map(|s| s.pointer.as_str()).collect();
    let spans = spans_of(line, &pointers);
    let found = selected
        .into_iter()
        .zip(spans)
        .filter_map(|(selected, span)| {
            let (leaf, span) = span?;
            // A number's digits as written (serde_json would round a big one).
            let value = match leaf {
                Leaf::Number => {
                    Pii::new(String::from_utf8_lossy(&line[span.start..span.end]).into_owned())
                }
                _ => selected.value,
            };
            Some(Found {
                rule: selected.rule,
                value,
                number: selected.was_number,
                span,
            })
        })
        .collect();
    Ok(Located { found, subject })
}

/// The span of each of `pointers` in a body `parse_strict` accepted.
fn spans_of(body: &[u8], pointers: &[&str]) -> Vec<Option<(Leaf, Span)>> {
    struct Wanted<'a> {
        pointers: &'a [&'a str],
        spans: Vec<Option<(Leaf, Span)>>,
    }
    impl Visit for Wanted<'_> {
        fn leaf(&mut self, pointer: &str, leaf: Leaf, span: Span) {
            if let Some(index) = self.pointers.iter().position(|p| *p == pointer) {
                self.spans[index] = Some((leaf, span));
            }
        }
        fn key(&mut self, _pointer: &str, _span: Span) {}
    }
    let mut wanted = Wanted {
        pointers,
        spans: vec![None; pointers.len()],
    };
    splice::walk(body, &mut wanted);
    wanted.spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_strings_and_numbers_with_their_spans() {
        let line = br#"{"identity":"u1","p":{"Email":"a@example.com","Phone":919000700001},"n":1}"#;
        let email = Selector::parse("$.p.Email").unwrap();
        let phone = Selector::parse("$.p.Phone").unwrap();
        let who = Selector::parse("$.identity").unwrap();
        let located = locate(line, &[&email, &phone], Some(&who)).unwrap();
        assert_eq!(located.found.len(), 2);
        let text = |f: &Found| std::str::from_utf8(&line[f.span.start..f.span.end]).unwrap();
        assert_eq!(text(&located.found[0]), "\"a@example.com\"");
        assert_eq!(located.found[0].value.expose(), "a@example.com");
        assert_eq!(text(&located.found[1]), "919000700001");
        assert!(located.found[1].number);
        assert_eq!(located.subject.unwrap().expose(), "u1");
    }

    #[test]
    fn a_line_is_located_alike_walked_and_parsed() {
        // Without a subject the line is walked; with one it is parsed.
        let rules =
            ["$.p.Email", "$.p.Phone", "$.tags[*]", "$.p.*"].map(|s| Selector::parse(s).unwrap());
        let rules: Vec<&Selector> = rules.iter().collect();
        let who = Selector::parse("$.identity").unwrap();
        let summary = |located: Result<Located, PayloadError>| {
            located.map(|l| {
                l.found
                    .iter()
                    .map(|f| (f.rule, f.value.expose().to_owned(), f.number, f.span))
                    .collect::<Vec<_>>()
            })
        };
        for line in [
            &br#"{"identity":"u1","p":{"Phone":919000700001,"Email":"a@example.com","Age":null,"Vip":true},"tags":["x",2.50]}"#[..],
            br#"{"p":{"Email":{"nested":1}}}"#,
            br#"{"p":{"Email":"a","Email":"b"}}"#,
            br#"{"p": "#,
            br#"{"tags":[]} x"#,
        ] {
            assert_eq!(
                summary(locate(line, &rules, None)),
                summary(locate(line, &rules, Some(&who))),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn lines_are_bounded() {
        let input = b"{}\n{\"a\":\"0123456789\"}\n";
        let mut reader = LineReader::new(&input[..], 8);
        let mut line = Vec::new();
        assert!(reader.next_line(&mut line, 1).unwrap());
        assert_eq!(line, b"{}\n");
        assert!(matches!(
            reader.next_line(&mut line, 2),
            Err(LineError::TooLong { line: 2, .. })
        ));
    }
}
