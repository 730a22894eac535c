//! The audit trail: one record for every access, chained with HMACs so that
//! editing, deleting, reordering or cutting off records is detected.
//!
//! Every surface records through [`Record`] and the store writer's audit
//! jobs (see `crate::store`), so records are committed in the same group
//! commit as the token writes they describe, and a request's effect is
//! revealed only after its record is durable. Records hold tokens, names and
//! codes, never values.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::crypto::keys::AuditKey;

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Values turned into tokens.
    Tokenize,
    /// Tokens turned back into values.
    Detokenize,
    /// A token deleted.
    Forget,
    /// A vault initialised (`tokenvault init`).
    Init,
    /// An API client created (`tokenvault client new --config`).
    ClientCreate,
    /// A configuration loaded by `serve`.
    ConfigLoad,
    /// The master key unwrapped by `serve`.
    KeyUnwrap,
    /// A request whose credentials were missing or refused.
    Authenticate,
    /// The audit trail read through the API.
    AuditRead,
    /// A request forwarded (or refused) on an egress route.
    Forward,
    /// An access token issued by the CleverTap surface's token endpoint.
    IssueAccessToken,
    /// A consent withdrawn or restored.
    Consent,
    /// A refused read of `/metrics` (successful scrapes carry no data and
    /// are not recorded).
    MetricsRead,
    /// An operator acknowledged records missing from the trail
    /// (`tokenvault audit acknowledge-gap`); the record names the range.
    AuditGap,
    /// A data subject's values erased (right to erasure).
    SubjectForget,
    /// A data subject's values revealed to them (right of access).
    SubjectExport,
    /// One of a data subject's values replaced, its token kept
    /// (rectification).
    SubjectCorrect,
    /// A batch of tokens deleted because they were unused for their class's
    /// `retain_days` (counts only).
    RetentionSweep,
    /// A backup taken (`tokenvault backup create`).
    BackupCreate,
    /// A backup restored (recorded in the restored trail).
    BackupRestore,
    /// The master key wrapped under a new passphrase or key file.
    KeyRewrap,
    /// A key rotation started, paused, resumed or completed (the reason
    /// says which).
    KeyRotate,
    /// A master key version destroyed after no row used it.
    KeyRetire,
    /// The configuration re-read while serving (SIGHUP), applied or
    /// refused.
    ConfigReload,
    /// A client removed from the configuration (`client revoke`).
    ClientRevoke,
    /// A bulk file tokenized (`file tokenize`, `POST /v1/files/tokenize`):
    /// one record per run, with its [`FileRun`] facts.
    FileTokenize,
}

impl Action {
    /// Every action, for parsing filters.
    pub const ALL: [Action; 26] = [
        Self::Tokenize,
        Self::Detokenize,
        Self::Forget,
        Self::Init,
        Self::ClientCreate,
        Self::ConfigLoad,
        Self::KeyUnwrap,
        Self::Authenticate,
        Self::AuditRead,
        Self::Forward,
        Self::IssueAccessToken,
        Self::Consent,
        Self::MetricsRead,
        Self::AuditGap,
        Self::SubjectForget,
        Self::SubjectExport,
        Self::SubjectCorrect,
        Self::RetentionSweep,
        Self::BackupCreate,
        Self::BackupRestore,
        Self::KeyRewrap,
        Self::KeyRotate,
        Self::KeyRetire,
        Self::ConfigReload,
        Self::ClientRevoke,
        Self::FileTokenize,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tokenize => "tokenize",
            Self::Detokenize => "detokenize",
            Self::Forget => "forget",
            Self::Init => "init",
            Self::ClientCreate => "client_create",
            Self::ConfigLoad => "config_load",
            Self::KeyUnwrap => "key_unwrap",
            Self::Authenticate => "authenticate",
            Self::AuditRead => "audit_read",
            Self::Forward => "forward",
            Self::IssueAccessToken => "issue_access_token",
            Self::Consent => "consent",
            Self::MetricsRead => "metrics_read",
            Self::AuditGap => "audit_gap",
            Self::SubjectForget => "subject_forget",
            Self::SubjectExport => "subject_export",
            Self::SubjectCorrect => "subject_correct",
            Self::RetentionSweep => "retention_sweep",
            Self::BackupCreate => "backup_create",
            Self::BackupRestore => "backup_restore",
            Self::KeyRewrap => "key_rewrap",
            Self::KeyRotate => "key_rotate",
            Self::KeyRetire => "key_retire",
            Self::ConfigReload => "config_reload",
            Self::ClientRevoke => "client_revoke",
            Self::FileTokenize => "file_tokenize",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|action| action.as_str() == name)
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused by authentication or policy.
    Denied,
    /// Failed (invalid input, store unavailable, …).
    Error,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Ok, Self::Denied, Self::Error]
            .into_iter()
            .find(|o| o.as_str() == name)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is acting, from where, in which request: filled once per request by
/// the surface (HTTP, CLI) and handed to the engine.
#[derive(Debug, Clone)]
pub struct Context {
    /// The request id (`req_…`) or a CLI invocation id.
    pub request_id: String,
    /// Client name, or `cli:<os user>`.
    pub actor: String,
    /// How the actor authenticated: `api_key`, `cli`, `none`.
    pub auth: &'static str,
    /// Source address, when there is one.
    pub source: Option<String>,
    /// The route pattern or surface (`/v1/tokenize`, `cli`).
    pub route: String,
}

impl Context {
    /// The context of a command run by the local operator.
    pub fn cli(command: &str) -> Self {
        let user = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| format!("uid-{}", current_uid()));
        Self {
            request_id: format!("cli_{}", hex::encode(crate::crypto::random_bytes::<12>())),
            actor: format!("cli:{user}"),
            auth: "cli",
            source: None,
            route: format!("cli {command}"),
        }
    }

    /// A record of `action` in this context; the caller fills the rest.
    pub fn record(&self, action: Action, outcome: Outcome) -> Record {
        Record {
            time_us: now_us(),
            request_id: self.request_id.clone(),
            actor: self.actor.clone(),
            auth: self.auth.to_owned(),
            source: self.source.clone(),
            action,
            namespace: None,
            route: Some(self.route.clone()),
            purpose: None,
            item_count: 0,
            tokens: Vec::new(),
            outcome,
            reason: None,
            gap: None,
            unrecognized: Vec::new(),
            file: None,
        }
    }
}

fn current_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX)
}

/// Microseconds since the Unix epoch, UTC.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One audit record, before it is chained. Holds no values, by construction:
/// every field is a name, a code, a count or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When, in microseconds since the epoch (UTC).
    pub time_us: i64,
    /// Request id.
    pub request_id: String,
    /// Client name or `cli:<user>`.
    pub actor: String,
    /// How the actor authenticated.
    pub auth: String,
    /// Source address.
    pub source: Option<String>,
    /// What was done.
    pub action: Action,
    /// Namespace, for data actions.
    pub namespace: Option<String>,
    /// Route pattern or surface.
    pub route: Option<String>,
    /// Purpose, for detokenize.
    pub purpose: Option<String>,
    /// Items in the request.
    pub item_count: u64,
    /// Tokens involved (never values).
    pub tokens: Vec<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// A fixed reason code (`class_not_granted`, `invalid_item`, …).
    pub reason: Option<String>,
    /// For [`Action::AuditGap`] only: the sequence numbers the trail lost.
    pub gap: Option<Gap>,
    /// Text the caller sent that names nothing the vault knows (a token
    /// that does not exist, an unconfigured purpose or namespace), as
    /// [`Unrecognized`] fingerprints: never the text itself.
    pub unrecognized: Vec<Unrecognized>,
    /// For [`Action::FileTokenize`] only: what the run did.
    pub file: Option<FileRun>,
}

/// What one bulk file run did: a digest of the file and counts, never a
/// value. The columns' names are caller text and go in the record's
/// `unrecognized` fingerprints; their classes (configured names) go here.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRun {
    /// SHA-256 of the input as received (compressed or encrypted, if it
    /// was), in hex: what `sha256sum` prints for the file.
    pub sha256: String,
    /// `csv` or `jsonl`.
    pub format: String,
    /// Rows written out.
    pub rows: u64,
    /// Rows rejected (reported by number, never by value).
    pub rejected: u64,
    /// Tokens created by this run.
    pub created: u64,
    /// Tokens that already existed.
    pub reused: u64,
    /// The class of each column rule, in the order given.
    pub classes: Vec<String>,
}

impl FileRun {
    /// The stored form: JSON with a fixed field order.
    pub fn to_text(&self) -> String {
        // Invariant: strings and integers always serialize.
        serde_json::to_string(self).expect("file facts serialize")
    }

    /// Reads back the stored form.
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// What kind of caller text an [`Unrecognized`] fingerprint stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// A token that does not exist in the namespace.
    Token,
    /// A purpose no configuration names.
    Purpose,
    /// A namespace that is not configured.
    Namespace,
    /// A column of a bulk file (its name or selector).
    Column,
}

impl TextKind {
    /// The stored prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Purpose => "purpose",
            Self::Namespace => "namespace",
            Self::Column => "column",
        }
    }
}

/// A keyed fingerprint of caller text, as the trail stores it:
/// `<kind>:<32 hex digits>` (see `AuditKey::fingerprint`). The only way to
/// make one from text is [`Unrecognized::of`], so a record cannot hold the
/// text by mistake.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unrecognized(String);

impl Unrecognized {
    /// The fingerprint of `text` under the audit key.
    pub fn of(key: &AuditKey, kind: TextKind, text: &str) -> Self {
        Self(format!(
            "{}:{}",
            kind.as_str(),
            hex::encode(key.fingerprint(kind.as_str(), text.as_bytes()))
        ))
    }

    /// Reads back a stored fingerprint; `None` unless it has the stored shape.
    pub fn parse(stored: &str) -> Option<Self> {
        let (kind, digits) = stored.split_once(':')?;
        let known = [
            TextKind::Token,
            TextKind::Purpose,
            TextKind::Namespace,
            TextKind::Column,
        ]
        .iter()
        .any(|k| k.as_str() == kind);
        (known && digits.len() == 32 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(stored.to_owned()))
    }

    /// The stored form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Records an operator acknowledged as lost: `first..=last`. The gap record
/// itself takes sequence number `last + 1` and chains to the MAC of the
/// record before `first`, so the hole stays visible and only a holder of the
/// audit key can bridge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// First missing sequence number.
    pub first: u64,
    /// Last missing sequence number.
    pub last: u64,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.first, self.last)
    }
}

impl Record {
    /// Sets the namespace.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    /// Sets the purpose.
    pub fn purpose(mut self, purpose: &str) -> Self {
        self.purpose = Some(purpose.to_owned());
        self
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Sets the reason code.
    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_owned());
        self
    }

    /// Sets the item count.
    pub fn items(mut self, count: usize) -> Self {
        self.item_count = count as u64;
        self
    }

    /// The bytes the chain MAC covers, with the sequence number: fixed field
    /// order, every field length-prefixed, absent fields marked.
    pub fn canonical(&self, seq: u64) -> Vec<u8> {
        fn field(out: &mut Vec<u8>, value: Option<&str>) {
            match value {
                None => out.push(0),
                Some(text) => {
                    out.push(1);
                    out.extend_from_slice(&(text.len() as u64).to_be_bytes());
                    out.extend_from_slice(text.as_bytes());
                }
            }
        }
        let mut out =
            Vec::with_capacity(256 + self.tokens.iter().map(|t| t.len() + 9).sum::<usize>());
        out.extend_from_slice(b"tokenvault/v1/audit-record");
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&self.time_us.to_be_bytes());
        for value in [
            Some(self.request_id.as_str()),
            Some(self.actor.as_str()),
            Some(self.auth.as_str()),
            self.source.as_deref(),
            Some(self.action.as_str()),
            self.namespace.as_deref(),
            self.route.as_deref(),
            self.purpose.as_deref(),
        ] {
            field(&mut out, value);
        }
        out.extend_from_slice(&self.item_count.to_be_bytes());
        out.extend_from_slice(&(self.tokens.len() as u64).to_be_bytes());
        for token in &self.tokens {
            field(&mut out, Some(token));
        }
        field(&mut out, Some(self.outcome.as_str()));
        field(&mut out, self.reason.as_deref());
        // Appended only when present, so that records written before gaps
        // existed keep their MACs.
        if let Some(gap) = self.gap {
            out.extend_from_slice(b"gap");
            out.extend_from_slice(&gap.first.to_be_bytes());
            out.extend_from_slice(&gap.last.to_be_bytes());
        }
        if !self.unrecognized.is_empty() {
            out.extend_from_slice(b"unrecognized");
            out.extend_from_slice(&(self.unrecognized.len() as u64).to_be_bytes());
            for text in &self.unrecognized {
                field(&mut out, Some(text.as_str()));
            }
        }
        if let Some(file) = &self.file {
            out.extend_from_slice(b"file");
            field(&mut out, Some(&file.to_text()));
        }
        out
    }
}

/// The newest record of the chain: its sequence number and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Sequence number (the first record is 1).
    pub seq: u64,
    /// Its chain MAC.
    pub mac: [u8; 32],
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {} mac {}", self.seq, hex::encode(self.mac))
    }
}

/// A record as stored: sequence number, content, chain MAC.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Sequence number.
    pub seq: u64,
    /// Content.
    pub record: Record,
    /// Chain MAC.
    pub mac: Vec<u8>,
}

/// Query filters; every one is optional and they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records at or after this time (µs since the epoch).
    pub since: Option<i64>,
    /// Records before this time (µs since the epoch).
    pub until: Option<i64>,
    /// Actor name.
    pub actor: Option<String>,
    /// Action name.
    pub action: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// A token among the record's tokens.
    pub token: Option<String>,
    /// Purpose.
    pub purpose: Option<String>,
    /// Outcome.
    pub outcome: Option<String>,
}

/// A chain that verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Records checked.
    pub count: u64,
    /// The newest record.
    pub head: Option<Head>,
    /// Records newer than the head recorded in `vault.db` (left by a commit
    /// interrupted between the two files); they verified too.
    pub beyond_recorded_head: u64,
    /// The gap records met on the way: records an operator acknowledged as
    /// lost, with who did it and why.
    pub gaps: Vec<Stored>,
}

/// Where and why verification failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The first bad sequence number.
    pub seq: u64,
    /// What is wrong there.
    pub reason: String,
}

/// Walks a chain record by record, oldest first: sequence numbers follow
/// each other except across an acknowledged gap, and every MAC is right given
/// its predecessor. Used for `audit.db` and for export files alike.
#[derive(Debug)]
pub struct ChainCheck {
    previous: [u8; 32],
    next: Option<u64>,
    count: u64,
    head: Option<Head>,
    gaps: Vec<Stored>,
}

impl ChainCheck {
    /// A walk from the first record of a trail.
    pub fn from_start() -> Self {
        Self::after(GENESIS, Some(1))
    }

    /// A walk that starts after a record whose MAC is `previous`; `next` is
    /// the sequence number expected first, when it is known.
    pub fn after(previous: [u8; 32], next: Option<u64>) -> Self {
        Self {
            previous,
            next,
            count: 0,
            head: None,
            gaps: Vec::new(),
        }
    }

    /// Checks the next record.
    pub fn check(&mut self, key: &AuditKey, stored: &Stored) -> Result<(), Broken> {
        let seq = stored.seq;
        let gap = stored.record.gap;
        // Where the chain should pick up: the record itself, or for a gap
        // record the first record it acknowledges as lost.
        let resumes_at = match gap {
            Some(gap) => {
                let well_formed = stored.record.action == Action::AuditGap
                    && gap.first <= gap.last
                    && gap.last.checked_add(1) == Some(seq);
                if !well_formed {
                    return Err(Broken {
                        seq,
                        reason: "gap record does not name the records before it".to_owned(),
                    });
                }
                gap.first
            }
            None => seq,
        };
        if let Some(next) = self.next.filter(|next| *next != resumes_at) {
            return Err(Broken {
                seq: next,
                reason: format!("record {next} is missing (next is {seq})"),
            });
        }
        if !key.verify(&stored.record.canonical(seq), &self.previous, &stored.mac) {
            return Err(Broken {
                seq,
                reason: "MAC does not match: record edited, moved or forged".to_owned(),
            });
        }
        self.previous = stored.mac.as_slice().try_into().map_err(|_| Broken {
            seq,
            reason: "MAC has the wrong length".to_owned(),
        })?;
        self.head = Some(Head {
            seq,
            mac: self.previous,
        });
        self.next = Some(seq + 1);
        self.count += 1;
        if gap.is_some() {
            self.gaps.push(stored.clone());
        }
        Ok(())
    }

    /// Records checked so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The last record checked.
    pub fn head(&self) -> Option<Head> {
        self.head
    }

    /// Whether an acknowledged gap covers sequence number `seq`.
    pub fn acknowledged(&self, seq: u64) -> bool {
        self.gaps.iter().any(|stored| {
            stored
                .record
                .gap
                .is_some_and(|gap| (gap.first..=gap.last).contains(&seq))
        })
    }

    /// The gap records met.
    pub fn into_gaps(self) -> Vec<Stored> {
        self.gaps
    }
}

impl Stored {
    /// The record as a JSON object (for `audit query --format json`, exports
    /// and `GET /v1/audit`).
    pub fn to_json(&self) -> serde_json::Value {
        let r = &self.record;
        serde_json::json!({
            "seq": self.seq,
            "time": format_time(r.time_us),
            "time_us": r.time_us,
            "request_id": r.request_id,
            "actor": r.actor,
            "auth": r.auth,
            "source": r.source,
            "action": r.action,
            "namespace": r.namespace,
            "route": r.route,
            "purpose": r.purpose,
            "item_count": r.item_count,
            "tokens": r.tokens,
            "outcome": r.outcome,
            "reason": r.reason,
            "gap": r.gap.map(|g| serde_json::json!({"first": g.first, "last": g.last})),
            "unrecognized": r.unrecognized.iter().map(Unrecognized::as_str).collect::<Vec<_>>(),
            "file": r.file,
            "mac": hex::encode(&self.mac),
        })
    }
}

impl Stored {
    /// Reads back an object written by [`Stored::to_json`].
    pub fn from_json(value: &serde_json::Value) -> Option<Self> {
        let text = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let optional = |name: &str| match value.get(name) {
            Some(serde_json::Value::Null) | None => Some(None),
            Some(serde_json::Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        };
        Some(Self {
            seq: value.get("seq")?.as_u64()?,
            record: Record {
                time_us: value.get("time_us")?.as_i64()?,
                request_id: text("request_id")?,
                actor: text("actor")?,
                auth: text("auth")?,
                source: optional("source")?,
                action: Action::parse(&text("action")?)?,
                namespace: optional("namespace")?,
                route: optional("route")?,
                purpose: optional("purpose")?,
                item_count: value.get("item_count")?.as_u64()?,
                tokens: value
                    .get("tokens")?
                    .as_array()?
                    .iter()
                    .map(|t| t.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()?,
                outcome: Outcome::parse(&text("outcome")?)?,
                reason: optional("reason")?,
                unrecognized: match value.get("unrecognized") {
                    None | Some(serde_json::Value::Null) => Vec::new(),
                    Some(list) => list
                        .as_array()?
                        .iter()
                        .map(|t| t.as_str().and_then(Unrecognized::parse))
                        .collect::<Option<Vec<_>>>()?,
                },
                file: match value.get("file") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(file) => Some(serde_json::from_value(file.clone()).ok()?),
                },
                gap: match value.get("gap") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(gap) => Some(Gap {
                        first: gap.get("first")?.as_u64()?,
                        last: gap.get("last")?.as_u64()?,
                    }),
                },
            },
            mac: hex::decode(text("mac")?).ok()?,
        })
    }
}

/// Filters as text, from the command line (`audit query`) or a query string
/// (`GET /v1/audit`); they combine with AND.
#[derive(Debug, Clone, Default, serde::Deserialize, clap::Args)]
pub struct FilterText {
    /// Records at or after this time (RFC 3339, YYYY-MM-DD in UTC, or a
    /// duration back from now such as 1h or 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Records before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Actor: a client name or `cli:<user>`.
    #[arg(long)]
    pub actor: Option<String>,
    /// Action: tokenize, detokenize, forget, init, client_create,
    /// config_load, key_unwrap, authenticate, audit_read, forward,
    /// issue_access_token, consent, metrics_read, audit_gap.
    #[arg(long)]
    pub action: Option<String>,
    /// Namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// A token the record involves.
    #[arg(long)]
    pub token: Option<String>,
    /// Purpose.
    #[arg(long)]
    pub purpose: Option<String>,
    /// Outcome: ok, denied, error.
    #[arg(long)]
    pub outcome: Option<String>,
}

impl FilterText {
    /// Parses the filters, reporting every bad one.
    pub fn parse(&self) -> Result<Filter, Vec<String>> {
        let mut problems = Vec::new();
        let mut time = |name: &str, value: &Option<String>| {
            value.as_deref().and_then(|text| {
                let parsed = parse_time(text);
                if parsed.is_none() {
                    problems.push(format!(
                        "{name} `{text}` is not a time (RFC 3339, e.g. 2026-11-23T10:00:00Z; a date, 2026-11-23; or a duration back from now, 1h or 7d)"
                    ));
                }
                parsed
            })
        };
        let since = time("since", &self.since);
        let until = time("until", &self.until);
        if let Some(action) = &self.action {
            if Action::parse(action).is_none() {
                let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                problems.push(format!(
                    "action `{action}` is not one of: {}",
                    known.join(", ")
                ));
            }
        }
        if let Some(outcome) = &self.outcome {
            if Outcome::parse(outcome).is_none() {
                problems.push(format!(
                    "outcome `{outcome}` is not one of: ok, denied, error"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Filter {
            since,
            until,
            actor: self.actor.clone(),
            action: self.action.clone(),
            namespace: self.namespace.clone(),
            token: self.token.clone(),
            purpose: self.purpose.clone(),
            outcome: self.outcome.clone(),
        })
    }
}

/// Whether `text` is a code fit for the trail: 1 to 64 lower-case ASCII
/// letters, digits and `_`, starting with a letter. Codes come from the
/// configuration or the operator, never from a request.
pub fn is_code(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The MAC the first record chains to.
pub const GENESIS: [u8; 32] = [0; 32];

/// Formats microseconds since the epoch as RFC 3339 UTC with microseconds.
pub fn format_time(time_us: i64) -> String {
    let nanos = i128::from(time_us) * 1000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| time_us.to_string())
}

/// Parses an RFC 3339 time, a bare `YYYY-MM-DD` (midnight UTC), or an age
/// back from now (1 to 6 digits and a unit: `90s`, `15m`, `24h`, `7d`) into
/// microseconds since the epoch. The grammar is exactly the one
/// docs/openapi.yaml describes, so nothing else is taken for an age (`0`,
/// `1 h`, `yesterday`).
pub fn parse_time(text: &str) -> Option<i64> {
    if let Some(ago) = parse_age(text) {
        return Some(now_us().saturating_sub(ago));
    }
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    let parsed =
        time::OffsetDateTime::parse(&full, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1000).ok()
}

/// `<digits><unit>` in microseconds.
fn parse_age(text: &str) -> Option<i64> {
    let digits = text.len().checked_sub(1)?;
    if !text.is_char_boundary(digits) {
        return None;
    }
    let (number, unit) = text.split_at(digits);
    if !(1..=6).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds: i64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    Some(number.parse::<i64>().ok()? * seconds * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Context::cli("test")
            .record(Action::Tokenize, Outcome::Ok)
            .namespace("retail")
            .items(2)
    }

    #[test]
    fn canonical_form_covers_every_field() {
        let base = record();
        let mut variants = vec![base.clone()];
        let mut edit = |f: fn(&mut Record)| {
            let mut r = base.clone();
            f(&mut r);
            variants.push(r);
        };
        edit(|r| r.time_us += 1);
        edit(|r| r.request_id.push('x'));
        edit(|r| r.actor.push('x'));
        edit(|r| r.auth.push('x'));
        edit(|r| r.source = Some("127.0.0.1".into()));
        edit(|r| r.action = Action::Detokenize);
        edit(|r| r.namespace = None);
        edit(|r| r.route = None);
        edit(|r| r.purpose = Some("x".into()));
        edit(|r| r.item_count += 1);
        edit(|r| r.tokens.push("TKN_a".into()));
        edit(|r| r.outcome = Outcome::Denied);
        edit(|r| r.reason = Some("x".into()));
        edit(|r| r.gap = Some(Gap { first: 1, last: 2 }));
        edit(|r| r.gap = Some(Gap { first: 1, last: 3 }));
        let key = crate::crypto::keys::MasterKey::generate(1).audit_key();
        for kind in [TextKind::Token, TextKind::Purpose] {
            let mut r = base.clone();
            r.unrecognized = vec![Unrecognized::of(&key, kind, "a")];
            variants.push(r);
        }
        let encodings: std::collections::BTreeSet<Vec<u8>> =
            variants.iter().map(|r| r.canonical(1)).collect();
        assert_eq!(encodings.len(), variants.len());
        assert_ne!(base.canonical(1), base.canonical(2));
    }

    #[test]
    fn times_round_trip() {
        let t = parse_time("2026-11-23T10:00:00.123456Z").unwrap();
        assert_eq!(format_time(t), "2026-11-23T10:00:00.123456Z");
        assert_eq!(parse_time("2026-11-23"), parse_time("2026-11-23T00:00:00Z"));
        for not_a_time in [
            "yesterday",
            "0",
            "1 h",
            "1h\n",
            "1w",
            "1234567d",
            "\u{661}h",
            "1\u{e9}",
            "h",
        ] {
            assert_eq!(parse_time(not_a_time), None, "{not_a_time:?}");
        }
        assert!(
            parse_time("999999d").unwrap() < 0,
            "before the epoch, not an error"
        );
        let hour_ago = parse_time("1h").unwrap();
        let expected = now_us() - 3_600_000_000;
        assert!(
            (hour_ago - expected).abs() < 5_000_000,
            "{hour_ago} {expected}"
        );
        assert!(parse_time("24h").unwrap() < hour_ago);
    }
}
