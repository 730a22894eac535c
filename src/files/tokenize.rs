//! `file tokenize`: every selected cell becomes its token; rows that cannot
//! be tokenized are rejected whole and reported without their values.

use std::io::{BufRead, Write};

use super::rows::{Format, Next, Row, Rows};
use super::{csv, ColumnRule, Counts, FileError};
use crate::payload::splice;
use crate::pii::Pii;
use crate::vault::{FileTokenizeRun, TokenizeItem, Tokenized, VaultError};

/// What to tokenize and how.
pub struct Job<'a> {
    /// The input's format.
    pub format: Format,
    /// The columns (or selectors) to tokenize, with their classes.
    pub rules: &'a [ColumnRule],
    /// The column (or selector) naming each row's customer.
    pub subject: Option<&'a str>,
    /// Rows per engine call.
    pub batch_rows: usize,
    /// Stop once more rows than this are rejected.
    pub max_rejects: Option<u64>,
    /// The counts an interrupted run saved: its records are skipped (they
    /// are in the output already).
    pub resume: Option<Counts>,
}

/// Where a run's batches go: each batch's bytes (whole rows, in order), and
/// the counts once the batch is out. A batch is handed over only after its
/// tokens are durably committed.
pub type Output<'a> = dyn FnMut(&[u8], &Counts) -> std::io::Result<()> + 'a;

/// One row waiting for its batch's tokens, or bytes to copy.
enum Waiting {
    Copy(Vec<u8>),
    Row {
        row: Row,
        /// Its items: `items[first..first + row.cells.len()]`.
        first: usize,
    },
}

/// The rows read for one engine call, and where the input stood after
/// them.
#[derive(Default)]
struct Batch {
    waiting: Vec<Waiting>,
    items: Vec<TokenizeItem>,
    position: Position,
    /// The input ended with this batch.
    last: bool,
}

/// Where the input stood after a batch, with the rows rejected while
/// reading it (reported when the batch is settled, so the report and the
/// counts move batch by batch).
#[derive(Default)]
struct Position {
    rejects: Vec<(u64, String)>,
    records: u64,
    input_bytes: u64,
}

/// Tokenizes `input` into `output`, rejects into `rejects` (`row,reason`
/// lines). `stop` is asked between rows; when it answers true the run ends
/// with [`FileError::Interrupted`] after the last whole batch.
///
/// While the engine tokenizes a batch, the batch before is written and the
/// next one read, so parsing, writing and the engine's work overlap;
/// batches are settled (reported, written, counted) one after the other,
/// in input order.
pub fn run<R: BufRead>(
    vault: &FileTokenizeRun<'_>,
    handle: &tokio::runtime::Handle,
    job: &Job<'_>,
    input: R,
    output: &mut Output<'_>,
    rejects: &mut dyn Write,
    stop: &dyn Fn() -> bool,
) -> Result<Counts, FileError> {
    let mut rows = Rows::new(job.format, input, job.rules, job.subject)?;
    let mut counts = job.resume.clone().unwrap_or_default();
    let skip = counts.records;
    while rows.records() < skip {
        if matches!(rows.next()?, Next::End) {
            break;
        }
    }
    if rows.records() != skip || rows.consumed() != counts.input_bytes {
        return Err(FileError::Header(
            "the input is not the one the interrupted run read; run again without --resume"
                .to_owned(),
        ));
    }
    let mut batch = read_batch(vault, job, &mut rows, stop)?;
    // The batch before, tokenized: it is written while the engine works on
    // the next one.
    let mut ready: Option<(Batch, Vec<Tokenized>)> = None;
    loop {
        let position = std::mem::take(&mut batch.position);
        // A batch whose read rejects stop the run is not tokenized: the
        // run's record must count every token the run created.
        let stops = over_limit(job, counts.rejected + position.rejects.len() as u64).is_some();
        let (tokens, next) = if batch.last || batch.items.is_empty() || stops {
            settle(job, ready.take(), position, &mut counts, rejects, output)?;
            if batch.last {
                let tokens = tokenize_batch(vault, handle, job, &mut batch, &mut counts, rejects)?;
                (tokens, None)
            } else {
                (Vec::new(), Some(read_batch(vault, job, &mut rows, stop)))
            }
        } else {
            let (tokens, next) = handle.block_on(async {
                tokio::join!(vault.tokenize(&batch.items), async {
                    settle(job, ready.take(), position, &mut counts, rejects, output)?;
                    Ok::<_, FileError>(read_batch(vault, job, &mut rows, stop))
                })
            });
            let next = next?;
            let tokens = match tokens {
                Ok(tokens) => tokens,
                // A refused item: settled again on its own, row by row.
                Err(VaultError::Item { .. }) => {
                    tokenize_batch(vault, handle, job, &mut batch, &mut counts, rejects)?
                }
                Err(error) => return Err(error.into()),
            };
            (tokens, Some(next))
        };
        match next {
            Some(Ok(next)) => {
                ready = Some((batch, tokens));
                batch = next;
            }
            // The run ends after this batch: its rows are written before
            // the end (or the interruption) is reported.
            Some(Err(error)) => {
                write_batch(job, batch, &tokens, &mut counts, output)?;
                return Err(error);
            }
            None => {
                write_batch(job, batch, &tokens, &mut counts, output)?;
                return Ok(counts);
            }
        }
    }
}

/// Settles everything before a batch's tokens, in input order: the batch
/// before is written (with the counts as they stood after it, which its
/// checkpoint keeps), then this batch's read rejects are reported, and the
/// counts move to where the input stands after it.
fn settle(
    job: &Job<'_>,
    ready: Option<(Batch, Vec<Tokenized>)>,
    position: Position,
    counts: &mut Counts,
    rejects: &mut dyn Write,
    output: &mut Output<'_>,
) -> Result<(), FileError> {
    if let Some((batch, tokens)) = ready {
        write_batch(job, batch, &tokens, counts, output)?;
    }
    for (number, reason) in position.rejects {
        reject(counts, job, rejects, number, &reason)?;
    }
    counts.records = position.records;
    counts.input_bytes = position.input_bytes;
    Ok(())
}

/// Reads up to a batch of rows, checking each selected cell; a cell that
/// fails its class rejects its row.
fn read_batch<R: BufRead>(
    vault: &FileTokenizeRun<'_>,
    job: &Job<'_>,
    rows: &mut Rows<R>,
    stop: &dyn Fn() -> bool,
) -> Result<Batch, FileError> {
    let mut batch = Batch::default();
    let mut rows_read = 0;
    while rows_read < job.batch_rows {
        if stop() {
            return Err(FileError::Interrupted);
        }
        match rows.next()? {
            Next::End => {
                if rows.records() == 0 {
                    return Err(FileError::Header(
                        "the input is empty (a CSV file starts with its header row)".to_owned(),
                    ));
                }
                batch.last = true;
                break;
            }
            Next::Copy(bytes) | Next::Header(bytes, _) => batch.waiting.push(Waiting::Copy(bytes)),
            Next::Reject(number, reason) => batch.position.rejects.push((number, reason)),
            Next::Row(row) => {
                let first = batch.items.len();
                let mut problem = None;
                for cell in &row.cells {
                    let class = &job.rules[cell.rule].class;
                    match vault.check(class, cell.text.expose(), cell.number) {
                        Ok(normalized) => batch.items.push(TokenizeItem {
                            class: class.clone(),
                            value: normalized,
                            subject: row.subject.as_ref().map(copy),
                            number: false,
                        }),
                        Err(error) => {
                            problem = Some(format!(
                                "{} ({class}): {error}",
                                describe(job.format, &job.rules[cell.rule].column)
                            ));
                            break;
                        }
                    }
                }
                match problem {
                    Some(reason) => {
                        batch.items.truncate(first);
                        batch.position.rejects.push((row.number, reason));
                    }
                    None => {
                        batch.waiting.push(Waiting::Row { row, first });
                        rows_read += 1;
                    }
                }
            }
        }
    }
    batch.position.records = rows.records();
    batch.position.input_bytes = rows.consumed();
    Ok(batch)
}

/// Tokenizes the batch's items in one engine call. An item the engine
/// refuses rejects its row, and the call is made again without it.
fn tokenize_batch(
    vault: &FileTokenizeRun<'_>,
    handle: &tokio::runtime::Handle,
    job: &Job<'_>,
    batch: &mut Batch,
    counts: &mut Counts,
    rejects: &mut dyn Write,
) -> Result<Vec<Tokenized>, FileError> {
    loop {
        if batch.items.is_empty() {
            return Ok(Vec::new());
        }
        match handle.block_on(vault.tokenize(&batch.items)) {
            Ok(tokens) => return Ok(tokens),
            Err(VaultError::Item { index, problem }) => {
                let (at, number, first, len) = batch
                    .waiting
                    .iter()
                    .enumerate()
                    .find_map(|(at, waiting)| match waiting {
                        Waiting::Row { row, first }
                            if (*first..*first + row.cells.len()).contains(&index) =>
                        {
                            Some((at, row.number, *first, row.cells.len()))
                        }
                        _ => None,
                    })
                    .ok_or(VaultError::Item { index, problem })?;
                batch.waiting.remove(at);
                batch.items.drain(first..first + len);
                for waiting in &mut batch.waiting[at..] {
                    if let Waiting::Row { first: later, .. } = waiting {
                        *later -= len;
                    }
                }
                reject(counts, job, rejects, number, &problem.to_string())?;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Hands the batch's rows over with their tokens spliced in.
fn write_batch(
    job: &Job<'_>,
    batch: Batch,
    tokens: &[Tokenized],
    counts: &mut Counts,
    output: &mut Output<'_>,
) -> Result<(), FileError> {
    let mut bytes = Vec::new();
    for waiting in batch.waiting {
        match waiting {
            Waiting::Copy(copied) => bytes.extend_from_slice(&copied),
            Waiting::Row { row, first } => {
                let edits = row
                    .cells
                    .iter()
                    .zip(&tokens[first..first + row.cells.len()])
                    .map(|(cell, token)| {
                        let token = match job.format {
                            Format::Csv => csv::cell(&token.token).into_owned(),
                            Format::Jsonl => splice::json_string(&token.token),
                        };
                        (cell.span, token)
                    })
                    .collect();
                bytes.extend_from_slice(&splice::splice(&row.bytes, edits));
                counts.rows += 1;
            }
        }
    }
    for token in tokens {
        if token.created {
            counts.created += 1;
        } else {
            counts.reused += 1;
        }
    }
    output(&bytes, counts).map_err(FileError::Output)
}

fn reject(
    counts: &mut Counts,
    job: &Job<'_>,
    rejects: &mut dyn Write,
    number: u64,
    reason: &str,
) -> Result<(), FileError> {
    super::report_reject(counts, rejects, number, reason)?;
    match over_limit(job, counts.rejected) {
        Some(limit) => Err(FileError::TooManyRejects(limit)),
        None => Ok(()),
    }
}

/// The `--max-rejects` limit when `rejected` rows pass it (the run stops).
fn over_limit(job: &Job<'_>, rejected: u64) -> Option<u64> {
    job.max_rejects.filter(|&limit| rejected > limit)
}

/// How a reject names a rule's column.
pub(super) fn describe(format: Format, column: &str) -> String {
    match format {
        Format::Csv => format!("column {column}"),
        Format::Jsonl => format!("field {column}"),
    }
}

fn copy(pii: &Pii) -> Pii {
    Pii::new(pii.expose().to_owned())
}
