//! The rows of a file, in either format, with the cells its column rules
//! select: the one reader both directions share.

use std::io::BufRead;

use zeroize::Zeroizing;

use super::csv::{CsvReader, RawRecord};
use super::jsonl::{self, LineReader};
use super::{FileError, MAX_ROW_BYTES};
use crate::payload::splice::Span;
use crate::payload::Selector;
use crate::pii::Pii;

/// A bulk file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// CSV (RFC 4180) with a header row; rules name columns.
    Csv,
    /// JSON Lines; rules are selectors (`$.profileData.Email`).
    Jsonl,
}

impl Format {
    /// The format a file name says (`.csv`, `.jsonl`, `.ndjson`, before any
    /// `.gz`, `.pgp`, `.gpg` or `.asc`).
    pub fn of_name(name: &str) -> Option<Self> {
        let mut name = name.to_ascii_lowercase();
        for suffix in [".pgp", ".gpg", ".asc", ".gz"] {
            if let Some(stripped) = name.strip_suffix(suffix) {
                name = stripped.to_owned();
            }
        }
        if name.ends_with(".csv") {
            Some(Self::Csv)
        } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
            Some(Self::Jsonl)
        } else {
            None
        }
    }

    /// The name recorded in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Jsonl => "jsonl",
        }
    }
}

/// One column rule: a CSV column name or a JSON Lines selector, and the
/// class its values are tokenized as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRule {
    /// The column's name (CSV) or selector (JSON Lines).
    pub column: String,
    /// The data class.
    pub class: String,
}

impl ColumnRule {
    /// Parses `Email=email,Phone=phone` (the last `=` of each part splits
    /// it, so a selector may hold one).
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        let rules: Vec<Self> = text
            .split(',')
            .map(|part| {
                let (column, class) = part.rsplit_once('=').ok_or_else(|| {
                    "each column rule is COLUMN=CLASS (for example Email=email)".to_owned()
                })?;
                let (column, class) = (column.trim(), class.trim());
                if column.is_empty() || class.is_empty() {
                    return Err("a column rule has an empty column or class".to_owned());
                }
                Ok(Self {
                    column: column.to_owned(),
                    class: class.to_owned(),
                })
            })
            .collect::<Result<_, _>>()?;
        for (i, rule) in rules.iter().enumerate() {
            if rules[..i].iter().any(|r| r.column == rule.column) {
                return Err(format!("column `{}` has two rules", rule.column));
            }
        }
        Ok(rules)
    }
}

/// A selected cell of a row.
pub struct Cell {
    /// The rule that selected it.
    pub rule: usize,
    /// Its text (decoded).
    pub text: Pii,
    /// It was a JSON number.
    pub number: bool,
    /// Its bytes in the row.
    pub span: Span,
}

/// A row to rewrite.
pub struct Row {
    /// Its number: the data row (CSV, from 1 after the header) or the line
    /// (JSON Lines, from 1).
    pub number: u64,
    /// Its bytes as read, line ending included.
    pub bytes: Zeroizing<Vec<u8>>,
    /// The selected cells (empty JSON Lines fields and nulls are skipped).
    pub cells: Vec<Cell>,
    /// The customer the row belongs to.
    pub subject: Option<Pii>,
}

/// What comes next in the file.
pub enum Next {
    /// A row with cells to rewrite.
    Row(Row),
    /// A row that cannot be read as the rules need: its number and why
    /// (never a value).
    Reject(u64, String),
    /// The CSV header: its bytes, and where its last field ends (where a
    /// column can be added).
    Header(Vec<u8>, usize),
    /// Bytes copied as they are (a blank line, the end).
    Copy(Vec<u8>),
    /// The end of the input.
    End,
}

enum Reader<R> {
    Csv {
        reader: Box<CsvReader<R>>,
        record: RawRecord,
        /// Field index of each rule, once the header is read.
        fields: Vec<usize>,
        subject: Option<usize>,
        width: usize,
    },
    Lines {
        reader: LineReader<R>,
        line: Zeroizing<Vec<u8>>,
        selectors: Vec<Selector>,
        subject: Option<Selector>,
    },
}

/// The rows of one input.
pub struct Rows<R> {
    reader: Reader<R>,
    rules: Vec<ColumnRule>,
    subject_column: Option<String>,
    /// Records (CSV, the header included) or lines read.
    records: u64,
    ended: bool,
}

impl<R: BufRead> Rows<R> {
    /// Rows of `input` in `format`, selected by `rules`, each row's subject
    /// in `subject` (a column or a selector).
    pub fn new(
        format: Format,
        input: R,
        rules: &[ColumnRule],
        subject: Option<&str>,
    ) -> Result<Self, FileError> {
        let reader = match format {
            Format::Csv => Reader::Csv {
                reader: Box::new(CsvReader::new(input, MAX_ROW_BYTES)),
                record: RawRecord::default(),
                fields: Vec::new(),
                subject: None,
                width: 0,
            },
            Format::Jsonl => {
                let selector = |text: &str| {
                    Selector::parse(text).map_err(|error| {
                        FileError::Header(format!("`{text}` is not a selector: {error}"))
                    })
                };
                Reader::Lines {
                    reader: LineReader::new(input, MAX_ROW_BYTES),
                    line: Zeroizing::new(Vec::new()),
                    selectors: rules
                        .iter()
                        .map(|rule| selector(&rule.column))
                        .collect::<Result<_, _>>()?,
                    subject: subject.map(selector).transpose()?,
                }
            }
        };
        Ok(Self {
            reader,
            rules: rules.to_vec(),
            subject_column: subject.map(str::to_owned),
            records: 0,
            ended: false,
        })
    }

    /// Records (CSV, the header included) or lines read so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes of input read so far.
    pub fn consumed(&self) -> u64 {
        match &self.reader {
            Reader::Csv { reader, .. } => reader.consumed(),
            Reader::Lines { reader, .. } => reader.consumed(),
        }
    }

    /// The next row, reject, bytes to copy, or the end.
    pub fn next(&mut self) -> Result<Next, FileError> {
        if self.ended {
            return Ok(Next::End);
        }
        match &mut self.reader {
            Reader::Csv {
                reader,
                record,
                fields,
                subject,
                width,
            } => {
                if !reader.next_record(record)? {
                    self.ended = true;
                    let trailer = reader.trailer().to_vec();
                    return Ok(if trailer.is_empty() {
                        Next::End
                    } else {
                        Next::Copy(trailer)
                    });
                }
                self.records += 1;
                if self.records == 1 {
                    let (found, at) = header(record, &self.rules, self.subject_column.as_deref())?;
                    *fields = found;
                    *subject = at;
                    *width = record.len();
                    let end = record.spans.last().map_or(0, |span| span.end);
                    return Ok(Next::Header(record.bytes.clone(), end));
                }
                let number = self.records - 1;
                if record.len() != *width {
                    return Ok(Next::Reject(
                        number,
                        format!("has {} fields; the header has {width}", record.len()),
                    ));
                }
                let text = |index: usize| {
                    std::str::from_utf8(record.field(index))
                        .map(|text| Pii::new(text.to_owned()))
                        .map_err(|_| format!("column {} is not UTF-8", index + 1))
                };
                let mut cells = Vec::with_capacity(fields.len());
                for (rule, &index) in fields.iter().enumerate() {
                    let text = match text(index) {
                        Ok(text) => text,
                        Err(reason) => return Ok(Next::Reject(number, reason)),
                    };
                    cells.push(Cell {
                        rule,
                        text,
                        number: false,
                        span: record.spans[index],
                    });
                }
                let subject = match subject.map(text) {
                    Some(Err(reason)) => return Ok(Next::Reject(number, reason)),
                    Some(Ok(s)) if s.expose().trim().is_empty() => None,
                    Some(Ok(s)) => Some(s),
                    None => None,
                };
                Ok(Next::Row(Row {
                    number,
                    bytes: Zeroizing::new(record.bytes.clone()),
                    cells,
                    subject,
                }))
            }
            Reader::Lines {
                reader,
                line,
                selectors,
                subject,
            } => {
                let number = self.records + 1;
                if !reader.next_line(line, number)? {
                    self.ended = true;
                    return Ok(Next::End);
                }
                self.records = number;
                let body = line.strip_suffix(b"\n").unwrap_or(line);
                let body = body.strip_suffix(b"\r").unwrap_or(body);
                if body.iter().all(u8::is_ascii_whitespace) {
                    return Ok(Next::Copy(line.to_vec()));
                }
                let rules: Vec<&Selector> = selectors.iter().collect();
                let located = match jsonl::locate(body, &rules, subject.as_ref()) {
                    Ok(located) => located,
                    Err(error) => return Ok(Next::Reject(number, error.to_string())),
                };
                let cells = located
                    .found
                    .into_iter()
                    .map(|found| Cell {
                        rule: found.rule,
                        text: found.value,
                        number: found.number,
                        span: found.span,
                    })
                    .collect();
                Ok(Next::Row(Row {
                    number,
                    bytes: Zeroizing::new(line.to_vec()),
                    cells,
                    subject: located.subject,
                }))
            }
        }
    }
}

/// The field index of each rule's column and of the subject column, from
/// the header record.
fn header(
    record: &RawRecord,
    rules: &[ColumnRule],
    subject: Option<&str>,
) -> Result<(Vec<usize>, Option<usize>), FileError> {
    let names: Vec<&[u8]> = (0..record.len()).map(|i| record.field(i)).collect();
    let find = |column: &str| -> Result<usize, FileError> {
        let mut at = names
            .iter()
            .enumerate()
            .filter(|(_, name)| **name == column.as_bytes())
            .map(|(i, _)| i);
        match (at.next(), at.next()) {
            (Some(i), None) => Ok(i),
            (Some(_), Some(_)) => Err(FileError::Header(format!(
                "column `{column}` appears twice in the header"
            ))),
            (None, _) => Err(FileError::Header(format!(
                "the header has no column `{column}`"
            ))),
        }
    };
    let fields = rules
        .iter()
        .map(|rule| find(&rule.column))
        .collect::<Result<Vec<_>, _>>()?;
    let subject = subject.map(find).transpose()?;
    Ok((fields, subject))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        let rules = ColumnRule::parse_list("Email=email, $.a['x=y']=phone").unwrap();
        assert_eq!(rules[0].column, "Email");
        assert_eq!(rules[1].column, "$.a['x=y']");
        assert_eq!(rules[1].class, "phone");
        assert!(ColumnRule::parse_list("Email").is_err());
        assert!(ColumnRule::parse_list("Email=email,Email=phone").is_err());
    }

    #[test]
    fn formats_by_name() {
        assert_eq!(Format::of_name("export.CSV.gz"), Some(Format::Csv));
        assert_eq!(Format::of_name("a.jsonl.gz.pgp"), Some(Format::Jsonl));
        assert_eq!(Format::of_name("a.txt"), None);
    }
}
