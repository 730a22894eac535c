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
