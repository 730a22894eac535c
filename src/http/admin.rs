//! `POST /v1/admin/backup`: a backup of the whole vault, streamed to a
//! role with the `backup` operation. The same file as `tokenvault backup
//! create` (crate::backup), recorded in the trail before a byte is sent.

use crate::http::state::State;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use futures_util::stream;

use super::auth::Authenticated;
use super::context::RequestId;
use super::error::{ApiError, ErrorCode};
use super::Endpoint;

/// The admin routes.
pub(super) const ENDPOINTS: &[Endpoint] = &[Endpoint::new(
    Method::POST,
    "/v1/admin/backup",
    "backup",
    |r| r.to(backup),
)];

/// Bytes sent per chunk.
const CHUNK: usize = 256 * 1024;

async fn backup(
    state: State,
    Authenticated(caller, context): Authenticated,
    id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let mut record = state
        .vault
        .authorize_backup(&context, &caller)
        .await
        .map_err(|error| ApiError::from_vault(error, &id))?;
    let data_dir = state
        .data_files
        .0
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let failed = |error: anyhow::Error| {
        tracing::error!(request_id = %id, error = %format!("{error:#}"), "backup failed");
        ApiError::new(
            ErrorCode::Unavailable,
            "the backup could not be written",
            &id,
        )
    };
    // Written to an unlinked file in the data directory (nothing is left
    // behind if the vault stops), then streamed from it.
    let (file, written) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut file = tempfile::tempfile_in(&data_dir)?;
        let written = {
            let mut out = std::io::BufWriter::new(&mut file);
            let written = crate::backup::write(&data_dir, &data_dir, &mut out)?;
            std::io::Write::flush(&mut out)?;
            written
        };
        std::io::Seek::rewind(&mut file)?;
        Ok((file, written))
    })
    .await
    .map_err(|error| failed(anyhow::anyhow!("{error}")))?
    .map_err(failed)?;
    // Fail closed: nothing is sent unless the backup is on the record.
    record.item_count = written.tokens.values().sum();
    state
        .vault
        .record(vec![record.reason("snapshot")])
        .await
        .map_err(|error| ApiError::from_vault(error, &id))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let chunks = stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let read = tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0u8; CHUNK];
            let n = std::io::Read::read(&mut file, &mut buffer)?;
            buffer.truncate(n);
            Ok::<_, std::io::Error>((file, buffer))
        })
        .await;
        match read {
            Ok(Ok((_, buffer))) if buffer.is_empty() => None,
            Ok(Ok((file, buffer))) => Some((Ok(web::Bytes::from(buffer)), Some(file))),
            Ok(Err(error)) => Some((Err(error), None)),
            Err(error) => Some((Err(std::io::Error::other(error)), None)),
        }
    });
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "application/x-tar"))
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header((
            CONTENT_DISPOSITION,
            "attachment; filename=\"tokenvault.tvbackup\"",
        ))
        .no_chunking(size)
        .streaming(chunks))
}
