//! `POST /v1/files/tokenize`: a bulk file streamed through the engine,
//! request body to response body, for a client whose role may tokenize.
//!
//! The query names the namespace, the format and the column rules, as the
//! command line does. The run reads and writes on a blocking thread; the
//! engine's batches commit as the API's do, and the run's one audit record
//! is written at its end. Until the first batch is out, a failure is a JSON
//! error with the request id (a rejected row is a 422 naming its row and
//! reason); after that, a failure aborts the response, so a client never
//! takes a cut file for a whole one.

use std::io::Read;

use actix_web::http::Method;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;

use super::api::log_namespace;
use super::auth::Authenticated;
use super::context::RequestId;
use super::error::{ApiError, ErrorCode};
use super::state::State;
use super::Endpoint;
use crate::files::{self, ColumnRule, Counts, FileError, Format};

/// The file endpoints.
pub(super) const ENDPOINTS: &[Endpoint] = &[Endpoint::new(
    Method::POST,
    "/v1/files/tokenize",
    "file_tokenize",
    |r| r.to(tokenize_file),
)];

/// File runs at once per process: each holds a blocking thread for as long
/// as its upload lasts.
const CONCURRENT_RUNS: usize = 2;
static RUNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_RUNS);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuery {
    namespace: String,
    format: Format,
    columns: String,
    #[serde(default)]
    subject_column: Option<String>,
    #[serde(default)]
    max_rejects: u64,
}

/// How the run's start went, told to the handler before it answers.
enum Start {
    /// The first batch is out (or the run ended with nothing to write).
    Streaming,
    /// The run failed before writing anything.
    Failed(ApiError),
}

async fn tokenize_file(
    state: State,
    Authenticated(caller, context): Authenticated,
    id: RequestId,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<FileQuery>::from_query(req.query_string())
        .map_err(|error| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "query: {error}; namespace, format (csv or jsonl) and columns are required"
                ),
                &id,
            )
        })?
        .into_inner();
    log_namespace(&state, &req, &query.namespace);
    if state.vault.namespace_spec(&query.namespace).is_none() {
        // Refused (and recorded, the namespace as a fingerprint) before the
        // columns are looked at: a missing resource is a 404.
        let refused = state
            .vault
            .start_file_tokenize(&context, &caller, &query.namespace, &[])
            .await
            .err()
            .unwrap_or(crate::vault::VaultError::UnknownNamespace);
        return Err(ApiError::from_vault(refused, &id));
    }
    let rules = ColumnRule::parse_list(&query.columns).map_err(|error| {
        ApiError::new(ErrorCode::InvalidRequest, format!("columns: {error}"), &id)
    })?;
    let permit = RUNS.try_acquire().map_err(|_| {
        ApiError::new(
            ErrorCode::Unavailable,
            "file runs are busy; try again later",
            &id,
        )
    })?;

    // The request body, chunk by chunk, to the blocking reader.
    let (chunks, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, ()>>(4);
    actix_web::rt::spawn(async move {
        while let Some(chunk) = payload.next().await {
            let failed = chunk.is_err();
            if chunks.send(chunk.map_err(|_| ())).await.is_err() || failed {
                return;
            }
        }
    });
    let (body, response) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (started, start) = tokio::sync::oneshot::channel::<Start>();
    let vault = state.vault.clone();
    let handle = tokio::runtime::Handle::current();
    let format = query.format;
    let request_id = id.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut started = Some(started);
        let columns: Vec<(String, String)> = rules
            .iter()
            .map(|rule| (rule.column.clone(), rule.class.clone()))
            .collect();
        let run = match handle.block_on(vault.start_file_tokenize(
            &context,
            &caller,
            &query.namespace,
            &columns,
        )) {
            Ok(run) => run,
            Err(error) => {
                if let Some(started) = started.take() {
                    let _ = started.send(Start::Failed(ApiError::from_vault(error, &request_id)));
                }
                return;
            }
        };
        let (raw, digest) = crate::crypto::digest::HashingReader::new(BodyReader {
            chunks: receiver,
            current: Bytes::new(),
        });
        let input = files::decompressed(Box::new(std::io::BufReader::with_capacity(1 << 16, raw)));
        let job = files::tokenize::Job {
            format: query.format,
            rules: &rules,
            subject: query.subject_column.as_deref(),
            batch_rows: files::DEFAULT_BATCH_ROWS as usize,
            max_rejects: Some(query.max_rejects),
            resume: None,
        };
        let mut first_reject: Option<String> = None;
        let mut rejects = RejectNote(&mut first_reject);
        let result = input.map_err(FileError::Output).and_then(|input| {
            let mut output = |bytes: &[u8], _: &Counts| {
                if bytes.is_empty() {
                    return Ok(());
                }
                if let Some(started) = started.take() {
                    let _ = started.send(Start::Streaming);
                }
                body.blocking_send(Ok(Bytes::copy_from_slice(bytes)))
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
            };
            files::tokenize::run(
                &run,
                &handle,
                &job,
                input,
                &mut output,
                &mut rejects,
                &|| body.is_closed(),
            )
        });
        let counts = result.as_ref().ok().cloned().unwrap_or_default();
        let facts = files::facts(digest.hex(), query.format, &counts, &rules);
        let ended = files::ended(&result);
        let recorded = handle.block_on(run.finish(facts, ended));
        let failure = match (result, recorded) {
            (Ok(_), Ok(())) => None,
            (Ok(_), Err(error)) | (Err(FileError::Vault(error)), _) => {
                Some(ApiError::from_vault(error, &request_id))
            }
            (Err(FileError::TooManyRejects(_)), _) => Some(ApiError::new(
                ErrorCode::Unprocessable,
                format!(
                    "a row was rejected ({}); nothing is written for a file with more than max_rejects rejected rows",
                    first_reject.as_deref().unwrap_or("see the audit trail")
                ),
                &request_id,
            )),
            (Err(error), _) => Some(ApiError::new(
                ErrorCode::InvalidRequest,
                error.to_string(),
                &request_id,
            )),
        };
        match (started.take(), failure) {
            (Some(started), Some(error)) => {
                let _ = started.send(Start::Failed(error));
            }
            (Some(started), None) => {
                let _ = started.send(Start::Streaming);
            }
            (None, Some(error)) => {
                tracing::warn!(request_id = %request_id, error = %error, "file run failed after its output began; response aborted");
                let _ = body.blocking_send(Err(std::io::Error::other("the file run failed")));
            }
            (None, None) => {}
        }
    });
    match start.await {
        Ok(Start::Streaming) => {}
        Ok(Start::Failed(error)) => return Err(error),
        Err(_) => {
            return Err(ApiError::new(ErrorCode::Internal, "internal error", &id));
        }
    }
    let content_type = match format {
        Format::Jsonl => "application/x-ndjson",
        Format::Csv => "text/csv; charset=utf-8",
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .streaming(tokio_stream_of(response)))
}

/// The response body: what the run sends, until it closes the channel.
fn tokio_stream_of(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// The request body as a blocking reader (on the run's thread).
struct BodyReader {
    chunks: tokio::sync::mpsc::Receiver<Result<Bytes, ()>>,
    current: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(())) => {
                    return Err(std::io::Error::other("the request body could not be read"));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Keeps the first reject line (`row,reason`: never a value) for the
/// error message; the HTTP surface has no reject report.
struct RejectNote<'a>(&'a mut Option<String>);

impl std::io::Write for RejectNote<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.is_none() {
            let line = String::from_utf8_lossy(buf);
            *self.0 = Some(format!("row {}", line.trim_end().replacen(',', ": ", 1)));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
