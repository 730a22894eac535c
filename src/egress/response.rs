//! The route's response rules: selected string fields of the upstream's
//! answer that hold tokens are detokenized for the route's purpose, when
//! the caller's role allows it; for any other caller the answer passes
//! unchanged. Nothing is revealed unless the detokenization was audited.

use super::upstream::Relayed;
use super::Route;
use crate::audit::Context;
use crate::payload;
use crate::policy::{Caller, Operation};
use crate::vault::{Detokenized, Vault, VaultError};

/// The body to answer the caller with: the upstream's, with the response
/// rules applied.
pub async fn reveal(
    vault: &Vault,
    route: &Route,
    caller: &Caller,
    context: &Context,
    relayed: &Relayed,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, VaultError> {
    let Some(purpose) = route.spec.purpose.as_deref() else {
        return Ok(None);
    };
    let allowed = caller
        .role
        .check(Operation::Detokenize, &route.spec.namespace)
        .is_ok()
        && caller.role.purposes.allows(purpose);
    if route.spec.response_fields.is_empty() || !allowed || !relayed.plain_json {
        return Ok(None);
    }
    let Ok(mut document) = serde_json::from_slice::<serde_json::Value>(&relayed.bytes) else {
        return Ok(None);
    };
    let selectors: Vec<&payload::Selector> = route.spec.response_fields.iter().collect();
    let Ok(selected) = payload::select(&document, &selectors) else {
        return Ok(None);
    };
    let selected: Vec<_> = selected
        .into_iter()
        .filter(|field| !field.was_number)
        .collect();
    if selected.is_empty() {
        return Ok(None);
    }
    let tokens: Vec<String> = selected
        .iter()
        .map(|field| field.value.expose().to_owned())
        .collect();
    let revealed = vault
        .detokenize(context, caller, &route.spec.namespace, purpose, tokens)
        .await?;
    for (field, answer) in selected.iter().zip(&revealed) {
        if let Detokenized::Value { value, .. } = answer {
            payload::replace(&mut document, &field.pointer, value.expose().to_owned());
        }
    }
    Ok(Some(zeroize::Zeroizing::new(
        serde_json::to_vec(&document).unwrap_or_default(),
    )))
}
