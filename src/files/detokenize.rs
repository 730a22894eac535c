//! `file detokenize`: a campaign list's tokens back to values at send time,
//! for a client whose role may detokenize, for a stated purpose. Each batch
//! is one engine call, so each batch's audit record is durable before any
//! of its values is written, and consent and budgets apply to every token.
//!
//! A cell that is not revealed (consent withdrawn, no such token, a token of
//! another class, a stored row that fails authentication) is written empty,
//! and the row says why in a `tokenvault_reason` column (CSV) or member
//! (JSON Lines): `Email:consent_withdrawn;Phone:not_found`.

use std::io::{BufRead, Write};

use super::rows::{Format, Next, Row, Rows};
use super::tokenize::Output;
use super::{csv, ColumnRule, Counts, FileError};
use crate::audit::Context;
use crate::payload::splice::{self, Span};
use crate::policy::Caller;
use crate::vault::{Detokenized, Vault};

/// The column (CSV) or member (JSON Lines) that says why cells are empty.
pub const REASON_COLUMN: &str = "tokenvault_reason";

/// What to detokenize and for what.
pub struct Job<'a> {
    /// The input's format.
    pub format: Format,
    /// The token columns (or selectors), with the class each holds.
    pub rules: &'a [ColumnRule],
    /// The namespace of the tokens.
    pub namespace: &'a str,
    /// Why the values are needed.
    pub purpose: &'a str,
    /// Rows per engine call.
    pub batch_rows: usize,
}

enum Waiting {
    Copy(Vec<u8>),
    Row(Row),
}

/// Detokenizes `input` into `output`; unreadable rows go to `rejects`.
#[allow(clippy::too_many_arguments)]
pub fn run<R: BufRead>(
    vault: &Vault,
    context: &Context,
    caller: &Caller,
    handle: &tokio::runtime::Handle,
    job: &Job<'_>,
    input: R,
    output: &mut Output<'_>,
    rejects: &mut dyn Write,
    stop: &dyn Fn() -> bool,
) -> Result<Counts, FileError> {
    let mut rows = Rows::new(job.format, input, job.rules, None)?;
    let mut counts = Counts::default();
    let mut waiting = Vec::new();
    let mut pending_rows = 0;
    loop {
        if stop() {
            return Err(FileError::Interrupted);
        }
        let next = rows.next()?;
        let end = matches!(next, Next::End);
        match next {
            Next::End => {}
            Next::Header(mut bytes, at) => {
                bytes.splice(at..at, format!(",{REASON_COLUMN}").into_bytes());
                waiting.push(Waiting::Copy(bytes));
            }
            Next::Copy(bytes) => waiting.push(Waiting::Copy(bytes)),
            Next::Reject(number, reason) => {
                super::report_reject(&mut counts, rejects, number, &reason)?
            }
            Next::Row(row)
                if job.format == Format::Jsonl && closing_brace(&row.bytes).is_none() =>
            {
                super::report_reject(&mut counts, rejects, row.number, "not a JSON object")?;
            }
            Next::Row(row) => {
                waiting.push(Waiting::Row(row));
                pending_rows += 1;
            }
        }
        if end || pending_rows >= job.batch_rows {
            let bytes = reveal(
                vault,
                context,
                caller,
                handle,
                job,
                &mut waiting,
                &mut counts,
            )?;
            pending_rows = 0;
            counts.records = rows.records();
            counts.input_bytes = rows.consumed();
            output(&bytes, &counts).map_err(FileError::Output)?;
        }
        if end {
            return Ok(counts);
        }
    }
}

/// Reveals the waiting rows' tokens in one engine call and writes the rows.
fn reveal(
    vault: &Vault,
    context: &Context,
    caller: &Caller,
    handle: &tokio::runtime::Handle,
    job: &Job<'_>,
    waiting: &mut Vec<Waiting>,
    counts: &mut Counts,
) -> Result<zeroize::Zeroizing<Vec<u8>>, FileError> {
    let tokens: Vec<String> = waiting
        .iter()
        .filter_map(|w| match w {
            Waiting::Row(row) => Some(row),
            Waiting::Copy(_) => None,
        })
        .flat_map(|row| row.cells.iter())
        .filter(|cell| !cell.text.expose().is_empty())
        .map(|cell| cell.text.expose().to_owned())
        .collect();
    let mut answers = if tokens.is_empty() {
        Vec::new()
    } else {
        handle.block_on(vault.detokenize(context, caller, job.namespace, job.purpose, tokens))?
    }
    .into_iter();
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    for waiting in waiting.drain(..) {
        let row = match waiting {
            Waiting::Copy(copied) => {
                bytes.extend_from_slice(&copied);
                continue;
            }
            Waiting::Row(row) => row,
        };
        let mut edits: Vec<(Span, Vec<u8>)> = Vec::with_capacity(row.cells.len() + 1);
        let mut reasons = Vec::new();
        for cell in &row.cells {
            if cell.text.expose().is_empty() {
                continue;
            }
            let rule = &job.rules[cell.rule];
            // Invariant: one answer per non-empty cell, in order.
            let answer = answers.next().unwrap_or(Detokenized::NotFound);
            let (value, reason) = match answer {
                Detokenized::Value { class, value } if class == rule.class => (Some(value), None),
                Detokenized::Value { .. } | Detokenized::NotFound => (None, Some("not_found")),
                Detokenized::ConsentWithdrawn => (None, Some("consent_withdrawn")),
                Detokenized::Integrity => (None, Some("integrity_error")),
            };
            let text = value.as_ref().map_or("", |v| v.expose());
            let written = match job.format {
                Format::Csv => csv::cell(text).into_owned(),
                Format::Jsonl => splice::json_string(text),
            };
            edits.push((cell.span, written));
            match reason {
                Some(reason) => {
                    counts.reused += 1;
                    reasons.push(format!("{}:{reason}", rule.column));
                }
                None => counts.created += 1,
            }
        }
        let reason = reasons.join(";");
        match job.format {
            Format::Csv => {
                let at = row.cells.iter().map(|c| c.span.end).max().unwrap_or(0);
                let end = last_field_end(&row, at);
                edits.push((
                    Span { start: end, end },
                    [b",".as_slice(), &csv::cell(&reason)].concat(),
                ));
            }
            Format::Jsonl if !reason.is_empty() => {
                let Some(close) = closing_brace(&row.bytes) else {
                    counts.rejected += 1;
                    continue;
                };
                let member = format!(
                    ",\"{REASON_COLUMN}\":{}",
                    String::from_utf8_lossy(&splice::json_string(&reason))
                );
                edits.push((
                    Span {
                        start: close,
                        end: close,
                    },
                    member.into_bytes(),
                ));
            }
            Format::Jsonl => {}
        }
        bytes.extend_from_slice(&splice::splice(&row.bytes, edits));
        counts.rows += 1;
    }
    Ok(bytes)
}

/// Where a CSV row's last field ends: before its line ending.
fn last_field_end(row: &Row, at_least: usize) -> usize {
    let bytes = &row.bytes[..];
    let mut end = bytes.len();
    while end > at_least && matches!(bytes[end - 1], b'\r' | b'\n') {
        end -= 1;
    }
    end
}

/// The offset of a JSON line's closing `}` (its top level is an object).
fn closing_brace(line: &[u8]) -> Option<usize> {
    let end = line.iter().rposition(|b| !b.is_ascii_whitespace())?;
    (line[end] == b'}').then_some(end)
}
