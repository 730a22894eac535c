//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text
//! format.
//!
//! Every label value comes from the vault itself: a route pattern or a
//! configured route or callback name, an operation name, a status code, a
//! configured namespace, a reason code from the code base. None is ever a
//! value, a token, a client name or anything else a caller sent.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::audit::{Action, Outcome, Record};

/// Content type of the text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    operation: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route: String,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    route: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    file: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    namespace: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<LatencyLabels>,
    tokens_created: Family<NamespaceLabels, Counter>,
    denials: Family<ReasonLabels, Counter>,
    auth_failures: Family<ReasonLabels, Counter>,
    upstream_errors: Family<UpstreamLabels, Counter>,
    audit_write: Histogram,
    store_bytes: Family<FileLabels, Gauge>,
    tls_reloads: Family<OutcomeLabels, Counter>,
    phone_token_collisions: Counter,
    retention_deleted: Family<ClassLabels, Counter>,
    rotation_moved: Family<NamespaceLabels, Counter>,
    config_reloads: Family<OutcomeLabels, Counter>,
}

fn request_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("tokenvault");
    let requests = Family::<RequestLabels, Counter>::default();
    registry.register(
        "http_requests",
        "HTTP requests by route pattern, operation and status",
        requests.clone(),
    );
    let latency: HistogramFamily<LatencyLabels> =
        Family::new_with_constructor(request_histogram as fn() -> Histogram);
    registry.register(
        "http_request_duration_seconds",
        "Time from request to answer, by route pattern and operation",
        latency.clone(),
    );
    let tokens_created = Family::<NamespaceLabels, Counter>::default();
    registry.register(
        "tokens_created",
        "New tokens stored, by namespace",
        tokens_created.clone(),
    );
    let denials = Family::<ReasonLabels, Counter>::default();
    registry.register(
        "detokenize_denials",
        "Refused detokenizations, by reason code",
        denials.clone(),
    );
    let auth_failures = Family::<ReasonLabels, Counter>::default();
    registry.register(
        "authentication_failures",
        "Refused authentications, by reason code",
        auth_failures.clone(),
    );
    let upstream_errors = Family::<UpstreamLabels, Counter>::default();
    registry.register(
        "upstream_errors",
        "Failed forwards to an upstream or provider, by route or callback and kind",
        upstream_errors.clone(),
    );
    // 0.1 ms to ~3 s.
    let audit_write = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
    registry.register(
        "audit_write_duration_seconds",
        "Time to append and commit a batch of audit records",
        audit_write.clone(),
    );
    let store_bytes = Family::<FileLabels, Gauge>::default();
    registry.register(
        "store_size_bytes",
        "Size on disk of the token store and the audit trail, write-ahead log included",
        store_bytes.clone(),
    );
    let tls_reloads = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "tls_reloads",
        "Certificate reloads on SIGHUP, by outcome",
        tls_reloads.clone(),
    );
    let phone_token_collisions = Counter::default();
    registry.register(
        "phone_token_collisions",
        "Minted phone tokens that equalled a stored number of their class and were minted again",
        phone_token_collisions.clone(),
    );
    let retention_deleted = Family::<ClassLabels, Counter>::default();
    registry.register(
        "retention_deleted_tokens",
        "Tokens deleted by retention sweeps (unused for their class's retain_days), by configured namespace and class",
        retention_deleted.clone(),
    );
    let rotation_moved = Family::<NamespaceLabels, Counter>::default();
    registry.register(
        "key_rotation_moved_rows",
        "Rows resealed under a new master key version by a rotation, by configured namespace",
        rotation_moved.clone(),
    );
    let config_reloads = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "config_reloads",
        "Configuration reloads on SIGHUP, by outcome",
        config_reloads.clone(),
    );
    Metrics {
        registry,
        rotation_moved,
        config_reloads,
        phone_token_collisions,
        retention_deleted,
        requests,
        latency,
        tokens_created,
        denials,
        auth_failures,
        upstream_errors,
        audit_write,
        store_bytes,
        tls_reloads,
    }
});

/// A reason code as a label: codes are `lower_snake_case` constants of the
/// code base; anything else is reported as `other`, never as itself.
fn reason_label(reason: Option<&str>) -> String {
    match reason {
        Some(code)
            if !code.is_empty()
                && code.len() <= 48
                && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
        {
            code.to_owned()
        }
        Some(_) => "other".to_owned(),
        None => "unspecified".to_owned(),
    }
}

/// Counts one answered request. `route` is a route pattern or a
/// configured route name, never a request path.
pub fn request(route: String, operation: &'static str, status: u16, elapsed: Duration) {
    METRICS
        .latency
        .get_or_create(&LatencyLabels {
            route: route.clone(),
            operation,
        })
        .observe(elapsed.as_secs_f64());
    METRICS
        .requests
        .get_or_create(&RequestLabels {
            route,
            operation,
            status: status.to_string(),
        })
        .inc();
}

/// Counts what a committed store batch did: new tokens per namespace,
/// refused detokenizations and authentications by reason, and how long the
/// audit append took.
pub fn batch_committed<'a>(
    created: impl IntoIterator<Item = (&'a str, u64)>,
    records: &[Record],
    audit_write: Option<Duration>,
) {
    for (namespace, count) in created {
        if count > 0 {
            METRICS
                .tokens_created
                .get_or_create(&NamespaceLabels {
                    namespace: namespace.to_owned(),
                })
                .inc_by(count);
        }
    }
    for record in records {
        if record.outcome != Outcome::Denied {
            continue;
        }
        let family = match record.action {
            Action::Detokenize => &METRICS.denials,
            Action::Authenticate => &METRICS.auth_failures,
            _ => continue,
        };
        family
            .get_or_create(&ReasonLabels {
                reason: reason_label(record.reason.as_deref()),
            })
            .inc();
    }
    if let Some(elapsed) = audit_write {
        METRICS.audit_write.observe(elapsed.as_secs_f64());
    }
}

/// Counts a failed forward. `route` is `route:<name>` or `callback:<name>`
/// from the configuration; `kind` says what failed.
pub fn upstream_error(route: &str, kind: &'static str) {
    METRICS
        .upstream_errors
        .get_or_create(&UpstreamLabels {
            route: route.to_owned(),
            kind,
        })
        .inc();
}

/// Counts a minted phone token that equalled a stored number and was
/// minted again.
pub fn phone_token_collision() {
    METRICS.phone_token_collisions.inc();
}

/// Counts tokens a retention sweep deleted (configured names only).
pub fn retention_deleted(namespace: &str, class: &str, count: u64) {
    METRICS
        .retention_deleted
        .get_or_create(&ClassLabels {
            namespace: namespace.to_owned(),
            class: class.to_owned(),
        })
        .inc_by(count);
}

/// Counts rows a key rotation moved in `namespace`.
pub fn rotation_moved(namespace: &str, count: u64) {
    METRICS
        .rotation_moved
        .get_or_create(&NamespaceLabels {
            namespace: namespace.to_owned(),
        })
        .inc_by(count);
}

/// Counts a SIGHUP configuration reload.
pub fn config_reload(ok: bool) {
    METRICS
        .config_reloads
        .get_or_create(&OutcomeLabels {
            outcome: if ok { "ok" } else { "error" },
        })
        .inc();
}

/// Counts a SIGHUP certificate reload.
pub fn tls_reload(ok: bool) {
    METRICS
        .tls_reloads
        .get_or_create(&OutcomeLabels {
            outcome: if ok { "ok" } else { "error" },
        })
        .inc();
}

/// The metrics in the text format, with the store sizes (token store,
/// audit trail) read now; `None` keeps the last sizes read.
pub fn render(sizes: Option<(u64, u64)>) -> String {
    if let Some((vault, audit)) = sizes {
        for (file, size) in [("vault", vault), ("audit", audit)] {
            METRICS
                .store_bytes
                .get_or_create(&FileLabels { file })
                .set(i64::try_from(size).unwrap_or(i64::MAX));
        }
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_are_codes_or_other() {
        assert_eq!(
            reason_label(Some("purpose_not_granted")),
            "purpose_not_granted"
        );
        assert_eq!(reason_label(Some("alice@example.com")), "other");
        assert_eq!(reason_label(Some("Has Spaces")), "other");
        assert_eq!(reason_label(Some(&"a".repeat(49))), "other");
        assert_eq!(reason_label(None), "unspecified");
    }
}
