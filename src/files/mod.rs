//! Bulk files: a customer export tokenized before it leaves, and a campaign
//! list detokenized at send time (`tokenvault file tokenize|detokenize`,
//! `POST /v1/files/tokenize`).
//!
//! A file streams through in bounded memory: rows are read, the selected
//! cells of a batch go to the engine in one call (one group commit), and the
//! batch is written out with tokens spliced into the cells' bytes, every
//! other byte copied as it came. A row that cannot be tokenized is rejected
//! whole and reported by number and reason, never by value.
//!
//! The reading and the splicing here are synchronous; the engine is called
//! through a tokio runtime handle, so the same code serves the command line
//! and the HTTP handler (on a blocking thread).

pub mod csv;
pub mod detokenize;
pub mod jsonl;
pub mod output;
pub mod pipe;
mod rows;
pub mod tokenize;

pub use rows::{ColumnRule, Format};

/// Longest CSV record or JSON line, in bytes.
pub const MAX_ROW_BYTES: usize = 1 << 20;
/// Rows per engine call, unless set.
pub const DEFAULT_BATCH_ROWS: u64 = 4096;

/// What a run has done so far; saved at every batch for `--resume`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Records (CSV, the header included) or lines read and settled.
    pub records: u64,
    /// Bytes of the (decompressed, decrypted) input those records span.
    pub input_bytes: u64,
    /// Rows written out.
    pub rows: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// Tokens created (tokenize), or values revealed (detokenize).
    pub created: u64,
    /// Tokens that existed already (tokenize), or cells withheld
    /// (detokenize).
    pub reused: u64,
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The input could not be read as CSV.
    #[error(transparent)]
    Csv(#[from] csv::CsvError),
    /// The input could not be read as JSON Lines.
    #[error(transparent)]
    Lines(#[from] jsonl::LineError),
    /// The output could not be written.
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    /// The engine refused or failed.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    /// The header lacks a column a rule names, or names it twice.
    #[error("{0}")]
    Header(String),
    /// More rows were rejected than allowed.
    #[error("more than {0} rows were rejected; the run stopped (see the reject report)")]
    TooManyRejects(u64),
    /// The run was interrupted (a signal, or the client went away).
    #[error("interrupted")]
    Interrupted,
}

/// Writes the reject report's header.
pub fn reject_header(report: &mut dyn std::io::Write) -> std::io::Result<()> {
    report.write_all(b"row,reason\n")
}

/// Counts a rejected row and writes its line (`row,reason`, never a value)
/// to the reject report.
pub(crate) fn report_reject(
    counts: &mut Counts,
    report: &mut dyn std::io::Write,
    number: u64,
    reason: &str,
) -> Result<(), FileError> {
    counts.rejected += 1;
    let line = format!("{number},{}\n", String::from_utf8_lossy(&csv::cell(reason)));
    report.write_all(line.as_bytes()).map_err(FileError::Output)
}

/// The audit record's facts of a tokenize run that read `sha256` in
/// `format`, with `rules`, and got as far as `counts`.
pub fn facts(
    sha256: String,
    format: Format,
    counts: &Counts,
    rules: &[ColumnRule],
) -> crate::audit::FileRun {
    crate::audit::FileRun {
        sha256,
        format: format.as_str().to_owned(),
        rows: counts.rows,
        rejected: counts.rejected,
        created: counts.created,
        reused: counts.reused,
        classes: rules.iter().map(|rule| rule.class.clone()).collect(),
    }
}

/// How a run that ended with `result` is recorded.
pub fn ended<T>(result: &Result<T, FileError>) -> crate::vault::Ended<'_> {
    use crate::vault::Ended;
    match result {
        Ok(_) => Ended::Completed,
        Err(FileError::Vault(error)) => Ended::Failed(error),
        Err(FileError::Interrupted) => Ended::Stopped("interrupted"),
        Err(FileError::TooManyRejects(_)) => Ended::Stopped("too_many_rejects"),
        Err(FileError::Output(_)) => Ended::Stopped("output_failed"),
        Err(_) => Ended::Stopped("input_unreadable"),
    }
}

/// `input`, gunzipped when it starts like gzip (a CSV or JSON file cannot
/// start with 0x1f 0x8b); several gzip members are read as one stream.
pub fn decompressed<'a>(
    mut input: Box<dyn std::io::BufRead + 'a>,
) -> std::io::Result<Box<dyn std::io::BufRead + 'a>> {
    let gzip = input.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(std::io::BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(input),
        ))
    } else {
        input
    })
}
