//! CSV records as their raw bytes, with where each field sits in them, so
//! that a rewrite replaces only the selected cells and copies every other
//! byte (quoting, line endings, a byte-order mark) as it came. RFC 4180
//! parsing (quotes, doubled quotes, embedded newlines) is `csv_core`'s: this
//! file only keeps the bytes it consumed.

use std::io::BufRead;

use crate::payload::splice::Span;

/// One record: its bytes (with any line ending before it and its own
/// terminator), each field's span in them (quotes included) and each
/// field's decoded text.
#[derive(Debug, Default)]
pub struct RawRecord {
    /// The bytes, as read.
    pub bytes: Vec<u8>,
    /// Where each field sits in `bytes`.
    pub spans: Vec<Span>,
    /// Each field's decoded bytes, concatenated; field `i` ends at `ends[i]`.
    decoded: Vec<u8>,
    ends: Vec<usize>,
}

impl RawRecord {
    /// The decoded bytes of field `index` (quotes removed, `""` undone).
    pub fn field(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.decoded[start..self.ends[index]]
    }

    /// How many fields the record has.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True for a record with no field.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
        self.decoded.clear();
        self.ends.clear();
    }
}

/// Why a CSV input cannot be read on.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The input could not be read.
    #[error("cannot read the input: {0}")]
    Io(#[from] std::io::Error),
    /// A record is longer than the limit (an unclosed quote, most often).
    #[error("record {record} is longer than {limit} bytes (an unclosed quote?)")]
    TooLong {
        /// The record's number (the header is 0).
        record: u64,
        /// The limit.
        limit: usize,
    },
}

/// Reads raw records from a buffered input.
pub struct CsvReader<R> {
    input: R,
    core: csv_core::Reader,
    /// Records read so far.
    records: u64,
    max_record: usize,
    /// Bytes after the last record (a final line ending).
    trailer: Vec<u8>,
    /// Bytes read in all.
    consumed: u64,
    done: bool,
    /// Input has been handed to the parser (a byte-order mark is only
    /// looked for before).
    started: bool,
}

impl<R: BufRead> CsvReader<R> {
    /// A reader refusing records longer than `max_record` bytes.
    pub fn new(input: R, max_record: usize) -> Self {
        Self {
            input,
            core: csv_core::Reader::new(),
            records: 0,
            max_record,
            trailer: Vec::new(),
            consumed: 0,
            done: false,
            started: false,
        }
    }

    /// Bytes of input consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The bytes after the last record (empty until the end is reached).
    pub fn trailer(&self) -> &[u8] {
        &self.trailer
    }

    /// Reads the next record into `record`; false at the end of the input.
    pub fn next_record(&mut self, record: &mut RawRecord) -> Result<bool, CsvError> {
        record.clear();
        if self.done {
            return Ok(false);
        }
        let mut out = [0u8; 8192];
        let mut field_start = 0usize;
        loop {
            if !self.started {
                // A byte-order mark is kept in the record's bytes and not
                // parsed (the parser would take a buffer holding only the
                // mark for the end of the input).
                let buffer = self.input.fill_buf()?;
                if buffer.starts_with(b"\xEF\xBB\xBF") {
                    record.bytes.extend_from_slice(b"\xEF\xBB\xBF");
                    self.input.consume(3);
                    self.consumed += 3;
                }
                self.started = true;
            }
            let (result, nin, nout, at_eof) = {
                let buffer = self.input.fill_buf()?;
                let at_eof = buffer.is_empty();
                let (result, nin, nout) = self.core.read_field(buffer, &mut out);
                record.bytes.extend_from_slice(&buffer[..nin]);
                (result, nin, nout, at_eof)
            };
            self.input.consume(nin);
            self.consumed += nin as u64;
            record.decoded.extend_from_slice(&out[..nout]);
            if record.bytes.len() > self.max_record {
                return Err(CsvError::TooLong {
                    record: self.records,
                    limit: self.max_record,
                });
            }
            match result {
                csv_core::ReadFieldResult::InputEmpty | csv_core::ReadFieldResult::OutputFull => {}
                csv_core::ReadFieldResult::Field { record_end } => {
                    let bytes = &record.bytes;
                    let mut start = field_start;
                    if record.spans.is_empty() {
                        // A line ending left from the record before, blank
                        // lines, and a byte-order mark precede the record.
                        while start < bytes.len() && matches!(bytes[start], b'\r' | b'\n') {
                            start += 1;
                        }
                        if bytes[start..].starts_with(b"\xEF\xBB\xBF") {
                            start += 3;
                        }
                    }
                    let mut end = bytes.len();
                    let last = bytes.get(end.wrapping_sub(1)).copied();
                    let terminated = if record_end {
                        !at_eof && matches!(last, Some(b'\r' | b'\n'))
                    } else {
                        last == Some(b',')
                    };
                    if terminated {
                        end -= 1;
                    }
                    record.spans.push(Span {
                        start,
                        end: end.max(start),
                    });
                    record.ends.push(record.decoded.len());
                    field_start = bytes.len();
                    if record_end {
                        self.records += 1;
                        return Ok(true);
                    }
                }
                csv_core::ReadFieldResult::End => {
                    self.done = true;
                    self.trailer = std::mem::take(&mut record.bytes);
                    record.clear();
                    return Ok(false);
                }
            }
        }
    }
}

/// A token or value as a CSV cell: quoted when it holds a delimiter, a quote
/// or a line break (tokens never do; values may).
pub fn cell(text: &str) -> std::borrow::Cow<'_, [u8]> {
    if text
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
    {
        let mut quoted = Vec::with_capacity(text.len() + 2);
        quoted.push(b'"');
        for byte in text.bytes() {
            if byte == b'"' {
                quoted.push(b'"');
            }
            quoted.push(byte);
        }
        quoted.push(b'"');
        std::borrow::Cow::Owned(quoted)
    } else {
        std::borrow::Cow::Borrowed(text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each record's raw fields and decoded fields.
    type Fields = Vec<(Vec<String>, Vec<String>)>;

    fn records(input: &[u8]) -> (Fields, Vec<u8>) {
        let mut reader = CsvReader::new(std::io::BufReader::with_capacity(3, input), 1 << 20);
        let mut record = RawRecord::default();
        let mut all = Vec::new();
        let mut joined = Vec::new();
        while reader.next_record(&mut record).unwrap() {
            joined.extend_from_slice(&record.bytes);
            let raw = record
                .spans
                .iter()
                .map(|s| String::from_utf8_lossy(&record.bytes[s.start..s.end]).into_owned())
                .collect();
            let decoded = (0..record.len())
                .map(|i| String::from_utf8_lossy(record.field(i)).into_owned())
                .collect();
            all.push((raw, decoded));
        }
        joined.extend_from_slice(reader.trailer());
        assert_eq!(joined, input, "every byte is in a record or the trailer");
        (all, reader.trailer().to_vec())
    }

    #[test]
    fn spans_cover_quoted_and_multi_line_fields() {
        let input = b"\xEF\xBB\xBFa,b\r\nc,\"d\"\"x\ny\"\n\n\"e\",f";
        let (all, trailer) = records(input);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].0, ["a", "b"]);
        assert_eq!(all[0].1, ["a", "b"]);
        assert_eq!(all[1].0, ["c", "\"d\"\"x\ny\""]);
        assert_eq!(all[1].1, ["c", "d\"x\ny"]);
        assert_eq!(all[2].0, ["\"e\"", "f"]);
        assert_eq!(all[2].1, ["e", "f"]);
        assert!(trailer.is_empty());
    }

    #[test]
    fn empty_fields_and_a_final_line_ending() {
        let (all, trailer) = records(b"a,,\n,\"\",x\r\n");
        assert_eq!(all[0].0, ["a", "", ""]);
        assert_eq!(all[1].0, ["", "\"\"", "x"]);
        assert_eq!(all[1].1, ["", "", "x"]);
        // The CR ends the last record; the LF after it is left over.
        assert_eq!(trailer, b"\n");
    }

    #[test]
    fn a_record_over_the_limit_is_refused() {
        let input = b"a,\"unclosed\nb,c\nd,e\n".repeat(10);
        let mut reader = CsvReader::new(&input[..], 16);
        let mut record = RawRecord::default();
        assert!(matches!(
            reader.next_record(&mut record),
            Err(CsvError::TooLong { .. })
        ));
    }

    #[test]
    fn cells_are_quoted_only_when_needed() {
        assert_eq!(&*cell("tok_abc"), b"tok_abc");
        assert_eq!(&*cell("a,\"b\""), b"\"a,\"\"b\"\"\"");
    }
}
