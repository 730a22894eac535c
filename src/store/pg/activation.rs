//! Activation state on PostgreSQL, shared by every node: consent events
//! (the newest matching event decides) and accepted callback message ids
//! (an id accepted through one node is a replay at any other).

use postgres::{GenericClient, Transaction};

use super::super::activation::ActivationWrite;
use super::PgError;

/// Applies one write inside the writer's transaction; a claim answers
/// whether the id was new.
pub(super) fn apply(
    transaction: &mut Transaction<'_>,
    write: &ActivationWrite,
    now: i64,
) -> Result<bool, PgError> {
    match write {
        ActivationWrite::Consent(event) => {
            transaction.execute(
                "INSERT INTO consent_events (namespace, scope, target, purpose, withdrawn, changed_at, source)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &event.namespace,
                    &event.target.scope(),
                    &event.target.bytes(),
                    &event.purpose,
                    &event.withdrawn,
                    &event.changed_at,
                    &event.source,
                ],
            )?;
            Ok(true)
        }
        ActivationWrite::Claim {
            callback,
            message_id,
            expires_at,
        } => {
            transaction.execute(
                "DELETE FROM callback_message_ids WHERE expires_at < $1",
                &[&now],
            )?;
            // The primary key decides between nodes claiming the same id at
            // once: the second insert waits for the first to commit, then
            // does nothing.
            let inserted = transaction.execute(
                "INSERT INTO callback_message_ids (message_id, callback, expires_at)
                 VALUES ($1, $2, $3) ON CONFLICT (message_id) DO NOTHING",
                &[message_id, callback, expires_at],
            )?;
            Ok(inserted == 1)
        }
        ActivationWrite::Release {
            callback,
            message_id,
        } => {
            transaction.execute(
                "DELETE FROM callback_message_ids WHERE callback = $1 AND message_id = $2",
                &[callback, message_id],
            )?;
            Ok(true)
        }
    }
}

/// For each of `tokens`, whether the newest event for the token, or for
/// any subject linked to it, about `purpose` or `*`, withdrew it (the
/// SQLite store's rule), in one statement.
pub(super) fn withdrawn(
    client: &mut impl GenericClient,
    namespace: &str,
    purpose: &str,
    tokens: &[&str],
) -> Result<Vec<bool>, PgError> {
    let rows = client.query(
        "SELECT item.ord,
                coalesce((
                    SELECT c.withdrawn FROM consent_events AS c
                    WHERE c.namespace = $1 AND c.scope = 'token'
                      AND c.target = convert_to(item.t, 'UTF8') AND c.purpose IN ($2, '*')
                    ORDER BY c.id DESC LIMIT 1), false)
                OR EXISTS (
                    SELECT 1 FROM subject_links AS link
                    WHERE link.namespace = $1 AND link.token = item.t
                      AND coalesce((
                          SELECT c.withdrawn FROM consent_events AS c
                          WHERE c.namespace = $1 AND c.scope = 'subject'
                            AND c.target = link.subject_hash AND c.purpose IN ($2, '*')
                          ORDER BY c.id DESC LIMIT 1), false))
         FROM unnest($3::text[]) WITH ORDINALITY AS item (t, ord)",
        &[&namespace, &purpose, &tokens],
    )?;
    Ok(super::reads::by_ordinal(
        rows,
        tokens.len(),
        false,
        |_, row| row.get(1),
    ))
}
