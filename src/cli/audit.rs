//! `tokenvault audit query | verify | export`: for auditors. All three open
//! the data directory read-only, so they work on a stopped vault or on a copy
//! of its data directory (`--data-dir`).
//!
//! `tokenvault audit acknowledge-gap`: for the operator, the one way past a
//! trail whose tail was cut. It appends; it never erases.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::CliError;
use crate::audit::{self as trail, Action, ChainCheck, Context, FilterText, Outcome, Stored};
use crate::config::ConfigErrors;
use crate::crypto::wrapping::Keyring;
use crate::store::trail::Reader;
use crate::telemetry::escape_control_chars;

/// `audit` subcommands.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// List records matching filters.
    Query {
        #[command(flatten)]
        location: Location,
        #[command(flatten)]
        filters: FilterText,
        /// Output format: an aligned table, JSON (one object per line) or CSV
        /// (with a header row).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Check the whole chain (needs the key); exit 1 naming the first bad
    /// record. With --export, check an export file instead.
    Verify {
        #[command(flatten)]
        location: Location,
        /// An export file to check (made by `audit export`).
        #[arg(long)]
        export: Option<PathBuf>,
    },
    /// Write records from --since on to a file for an auditor, with the
    /// chain MAC before the first record and the vault's chain head.
    Export {
        #[command(flatten)]
        location: Location,
        /// First time to include (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long)]
        since: String,
        /// Time to stop before (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long)]
        until: Option<String>,
        /// Output file; refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
    /// After `verify` reports records missing from the end of the trail,
    /// record that loss so that the vault appends (and serves) again. Appends
    /// a gap record naming the missing range, who acknowledged it and why;
    /// erases nothing. Needs the key.
    AcknowledgeGap {
        /// Configuration file (for the data directory and the key).
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Why the records are gone, as a code: lower-case letters, digits
        /// and `_` (e.g. `disk_failure`, `restored_from_backup`).
        #[arg(long)]
        reason: String,
    },
}

/// Where the data directory is.
#[derive(Args)]
pub struct Location {
    /// Configuration file (for the data directory and the key).
    #[arg(long, env = "TOKENVAULT_CONFIG", default_value = super::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Read this data directory (a copy, say) instead of the configured one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Output formats of `audit query`.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON object per line.
    Json,
    /// CSV with a header row.
    Csv,
}

/// Runs an `audit` subcommand.
pub fn run(command: AuditCommand) -> Result<(), CliError> {
    match command {
        AuditCommand::Query {
            location,
            filters,
            format,
            limit,
        } => query(&location, &filters, format, limit),
        AuditCommand::Verify {
            location,
            export: None,
        } => verify(&location),
        AuditCommand::Verify {
            location,
            export: Some(file),
        } => verify_export(&location, &file),
        AuditCommand::Export {
            location,
            since,
            until,
            out,
        } => {
            let filters = FilterText {
                since: Some(since),
                until,
                ..FilterText::default()
            };
            export(&location, &filters, &out)
        }
        AuditCommand::AcknowledgeGap { config, reason } => acknowledge_gap(&config, &reason),
    }
}

/// Where the trail is read: a data directory's `audit.db` (named by
/// `--data-dir`, or by a SQLite configuration), or the PostgreSQL database
/// the configuration names.
enum Trail {
    Sqlite(PathBuf),
    Postgres(
        std::sync::Arc<crate::store::pg::PgStore>,
        Box<crate::config::Config>,
    ),
}

fn locate(location: &Location) -> Result<Trail, CliError> {
    if let Some(dir) = &location.data_dir {
        return Ok(Trail::Sqlite(dir.clone()));
    }
    let config = crate::config::load(&location.config)?;
    match &config.storage.backend {
        crate::config::Backend::Sqlite => Ok(Trail::Sqlite(config.storage.data_dir.clone())),
        crate::config::Backend::Postgres(settings) => {
            let pg = super::storage::connect_postgres(settings)?;
            Ok(Trail::Postgres(pg, Box::new(config)))
        }
    }
}

impl Trail {
    /// Records `first..=last`, oldest first.
    fn range(&self, first: u64, last: u64) -> Result<Vec<Stored>, CliError> {
        match self {
            Self::Sqlite(dir) => Ok(open_audit(dir)?
                .range(first, last)
                .context("reading audit.db")?),
            Self::Postgres(..) => {
                let count = usize::try_from(last.saturating_sub(first) + 1).unwrap_or(usize::MAX);
                let mut run = self.query(
                    &crate::audit::Filter::default(),
                    first.saturating_sub(1),
                    count,
                )?;
                run.retain(|stored| stored.seq <= last);
                Ok(run)
            }
        }
    }

    /// The MAC the record `seq` chains to.
    fn previous_mac(&self, seq: u64) -> Result<Vec<u8>, CliError> {
        match self {
            Self::Sqlite(dir) => Ok(open_audit(dir)?
                .previous_mac(seq)
                .context("reading audit.db")?),
            Self::Postgres(pg, _) => Ok(pg
                .previous_mac(seq)
                .map_err(|error| anyhow!("reading the audit trail: {error}"))?),
        }
    }

    /// The head the store records.
    fn recorded_head(&self) -> Result<Option<crate::audit::Head>, CliError> {
        match self {
            Self::Sqlite(dir) => Ok(crate::store::recorded_audit_head_offline(
                &dir.join("vault.db"),
            )
            .context("cannot read the audit head in vault.db")?),
            Self::Postgres(pg, _) => Ok(pg
                .recorded_audit_head()
                .map_err(|error| anyhow!("reading the audit head: {error}"))?),
        }
    }

    /// Records matching `filter` after `after`, at most `limit`.
    fn query(
        &self,
        filter: &crate::audit::Filter,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, CliError> {
        match self {
            Self::Sqlite(dir) => Ok(open_audit(dir)?
                .query(filter, after, limit)
                .context("reading audit.db")?),
            Self::Postgres(pg, _) => Ok(pg
                .query_audit(filter, after, limit)
                .map_err(|error| anyhow!("reading the audit trail: {error}"))?),
        }
    }
}

/// The keyring stored in the database, unwrapped with the configured key.
pub(super) fn postgres_keyring(
    pg: &crate::store::pg::PgStore,
    config: &crate::config::Config,
) -> Result<Keyring, CliError> {
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    let document = pg
        .keyring()
        .map_err(|error| anyhow!("{error}"))?
        .ok_or_else(|| {
            anyhow!("no keyring is stored in the database\nhint: has this vault been initialised?")
        })?;
    Ok(Keyring::open_document(&document, &source, super::KEYRING_IN_DATABASE).map_err(|error| {
        anyhow!("{error}\nhint: verification needs the vault's passphrase or key file, as configured in [keys]")
    })?)
}

fn open_audit(dir: &Path) -> Result<Reader, CliError> {
    let path = dir.join("audit.db");
    if !path.is_file() {
        return Err(anyhow!(
            "no audit trail at {}\nhint: point --data-dir or --config at a vault's data directory",
            path.display()
        )
        .into());
    }
    Ok(Reader::open(&path).with_context(|| format!("cannot open {}", path.display()))?)
}

fn query(
    location: &Location,
    args: &FilterText,
    format: Format,
    limit: Option<usize>,
) -> Result<(), CliError> {
    let filter = args.parse().map_err(|problems| {
        anyhow!(
            "{}\nhint: see tokenvault audit query --help",
            problems.join("\n")
        )
    })?;
    let trail = locate(location)?;
    let mut out = std::io::stdout().lock();
    let mut after = 0;
    let mut written = 0;
    let limit = limit.unwrap_or(usize::MAX);
    if let Format::Csv = format {
        let header = writeln!(out, "seq,time,request_id,actor,auth,source,action,namespace,route,purpose,item_count,tokens,outcome,reason,mac");
        if header.is_err() {
            return super::quiet_on_closed_pipe(header);
        }
    }
    if let Format::Table = format {
        let header = writeln!(
            out,
            "{:>7}  {:<27}  {:<16}  {:<13}  {:<10}  {:<14}  {:>6}  {:<7}  REASON",
            "SEQ", "TIME (UTC)", "ACTOR", "ACTION", "NAMESPACE", "PURPOSE", "ITEMS", "OUTCOME",
        );
        if header.is_err() {
            return super::quiet_on_closed_pipe(header);
        }
    }
    while written < limit {
        let page = trail.query(&filter, after, 1000.min(limit - written))?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for stored in &page {
            let line = match format {
                Format::Json => writeln!(out, "{}", stored.to_json()),
                Format::Csv => writeln!(out, "{}", csv_line(stored)),
                Format::Table => writeln!(out, "{}", table_line(stored)),
            };
            // A reader that went away (`| head -1`) ends the output quietly.
            if line.is_err() {
                return super::quiet_on_closed_pipe(line);
            }
        }
        written += page.len();
    }
    super::quiet_on_closed_pipe(out.flush())
}

/// One aligned line. Every text cell has its control characters escaped:
/// names come from the configuration and the operator's environment, and a
/// terminal must not act on an escape sequence hidden in one.
fn table_line(stored: &Stored) -> String {
    let r = &stored.record;
    let safe = |v: Option<&str>| escape_control_chars(v.unwrap_or("-"));
    format!(
        "{:>7}  {:<27}  {:<16}  {:<13}  {:<10}  {:<14}  {:>6}  {:<7}  {}",
        stored.seq,
        trail::format_time(r.time_us),
        fit(&safe(Some(&r.actor)), 16),
        r.action.as_str(),
        fit(&safe(r.namespace.as_deref()), 10),
        fit(&safe(r.purpose.as_deref()), 14),
        r.item_count,
        r.outcome.as_str(),
        safe(r.reason.as_deref()),
    )
}

/// `text` cut to `width` characters (the last one `…` when cut), so that a
/// long name cannot push the columns after it out of line; `--format json`
/// and `csv` give it whole.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A CSV cell that a spreadsheet shows as text and a terminal prints
/// harmlessly: a cell starting with `=`, `+`, `-`, `@`, tab or carriage
/// return (which a spreadsheet would run as a formula) gets a leading `'`,
/// and control characters are escaped. So a phone-shaped token `+9190…`
/// reads `'+9190…` in CSV; `--format json` gives every field exactly.
fn csv_cell(text: &str) -> String {
    let neutral = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    format!(
        "\"{}\"",
        escape_control_chars(&neutral).replace('"', "\"\"")
    )
}

/// One RFC 4180 line: every field quoted, quotes doubled, every cell
/// neutralised (see [`csv_cell`]).
fn csv_line(stored: &Stored) -> String {
    let r = &stored.record;
    let fields = [
        stored.seq.to_string(),
        trail::format_time(r.time_us),
        r.request_id.clone(),
        r.actor.clone(),
        r.auth.clone(),
        r.source.clone().unwrap_or_default(),
        r.action.as_str().to_owned(),
        r.namespace.clone().unwrap_or_default(),
        r.route.clone().unwrap_or_default(),
        r.purpose.clone().unwrap_or_default(),
        r.item_count.to_string(),
        r.tokens.join(" "),
        r.outcome.as_str().to_owned(),
        r.reason.clone().unwrap_or_default(),
        hex::encode(&stored.mac),
    ];
    fields
        .iter()
        .map(|f| csv_cell(f))
        .collect::<Vec<_>>()
        .join(",")
}

fn load_keyring(location: &Location, dir: &Path) -> Result<Keyring, CliError> {
    let config = super::load_sqlite_config(&location.config)?;
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    Ok(Keyring::open(&dir.join("keyring.json"), &source).map_err(|error| anyhow!("{error}\nhint: verification needs the vault's passphrase or key file, as configured in [keys]"))?)
}

fn verify(location: &Location) -> Result<(), CliError> {
    let verified = match locate(location)? {
        Trail::Sqlite(dir) => {
            let keyring = load_keyring(location, &dir)?;
            let connection = open_audit(&dir)?;
            let recorded = crate::store::recorded_audit_head_offline(&dir.join("vault.db"))
                .context("cannot read the audit head in vault.db")?;
            connection.verify(&keyring.audit_key(), recorded)
        }
        Trail::Postgres(pg, config) => {
            let keyring = postgres_keyring(&pg, &config)?;
            pg.verify_audit(&keyring.audit_key())
        }
    };
    match verified {
        Ok(verified) => {
            println!("audit trail OK: {} records verified", verified.count);
            match verified.head {
                Some(head) => println!("head: {head}"),
                None => println!("head: (empty)"),
            }
            for stored in &verified.gaps {
                let r = &stored.record;
                if let Some(gap) = r.gap {
                    println!(
                        "gap: records {gap} are missing, acknowledged by record {} ({} at {}, reason {})",
                        stored.seq,
                        escape_control_chars(&r.actor),
                        trail::format_time(r.time_us),
                        escape_control_chars(r.reason.as_deref().unwrap_or("-")),
                    );
                }
            }
            if verified.beyond_recorded_head > 0 {
                println!("note: {} record(s) after the head recorded in vault.db (a commit interrupted between the two files); they verify", verified.beyond_recorded_head);
            }
            Ok(())
        }
        Err(broken) => Err(anyhow!(
            "audit trail BROKEN at record {}: {}",
            broken.seq,
            broken.reason
        )
        .into()),
    }
}

const EXPORT_FORMAT: &str = "tokenvault-audit-export/1";

fn export(location: &Location, args: &FilterText, out: &Path) -> Result<(), CliError> {
    let filter = args
        .parse()
        .map_err(|problems| anyhow!("{}", problems.join("\n")))?;
    let trail = locate(location)?;
    if out.exists() {
        return Err(anyhow!(
            "{} already exists\nhint: choose a new file name",
            out.display()
        )
        .into());
    }
    // An export is a contiguous run of the chain, so that it verifies on its
    // own: from the first record in the time range to the last.
    let selected = trail.query(&filter, 0, usize::MAX >> 1)?;
    let (first, last) = match (selected.first(), selected.last()) {
        (Some(first), Some(last)) => (first.seq, last.seq),
        _ => return Err(anyhow!("no records in that time range").into()),
    };
    let run = trail.range(first, last)?;
    // The MAC the first exported record chains to (across a gap, the record
    // before the gap).
    let chained_from = run
        .first()
        .and_then(|s| s.record.gap)
        .map_or(first, |gap| gap.first);
    let previous = trail.previous_mac(chained_from)?;
    let head = trail.recorded_head()?;
    let document = json!({
        "format": EXPORT_FORMAT,
        "exported_at": trail::format_time(trail::now_us()),
        "since": args.since,
        "until": args.until,
        "previous_mac": hex::encode(previous),
        "records": run.iter().map(Stored::to_json).collect::<Vec<Value>>(),
        "vault_head": head.map(|h| json!({"seq": h.seq, "mac": hex::encode(h.mac)})),
    });
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    serde_json::to_writer_pretty(&mut file, &document).context("writing the export")?;
    file.sync_all().context("writing the export")?;
    println!(
        "exported records {first}..={last} ({} records) to {}",
        run.len(),
        out.display()
    );
    if let Some(head) = head {
        println!("vault head at export: {head}");
    }
    Ok(())
}

fn verify_export(location: &Location, file: &Path) -> Result<(), CliError> {
    let keyring = match locate(location)? {
        Trail::Sqlite(dir) => load_keyring(location, &dir)?,
        Trail::Postgres(pg, config) => postgres_keyring(&pg, &config)?,
    };
    let key = keyring.audit_key();
    let text = fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let document: Value = serde_json::from_slice(&text).context("the export is not JSON")?;
    if document["format"] != EXPORT_FORMAT {
        return Err(anyhow!("{} is not a tokenvault audit export", file.display()).into());
    }
    let previous: [u8; 32] = hex::decode(document["previous_mac"].as_str().unwrap_or_default())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| anyhow!("the export's previous_mac is malformed"))?;
    let records = document["records"]
        .as_array()
        .ok_or_else(|| anyhow!("the export has no records"))?;
    let mut chain = ChainCheck::after(previous, None);
    for value in records {
        let stored = Stored::from_json(value)
            .ok_or_else(|| anyhow!("export record after {:?} is malformed", chain.head()))?;
        chain.check(&key, &stored).map_err(|broken| {
            anyhow!("export BROKEN at record {}: {}", broken.seq, broken.reason)
        })?;
    }
    println!("export OK: {} records verified", records.len());
    if let Some(last) = chain.head() {
        println!("last record: {last}");
    }
    if let Some(head) = document["vault_head"].as_object() {
        println!(
            "vault head at export: seq {} mac {}",
            head["seq"],
            head["mac"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

fn acknowledge_gap(config_path: &Path, reason: &str) -> Result<(), CliError> {
    if !trail::is_code(reason) {
        return Err(anyhow!(
            "--reason must be a code of lower-case letters, digits and `_`, at most 64 characters\nhint: e.g. --reason disk_failure; explain the details in your ticketing system, not in the trail"
        )
        .into());
    }
    let location = Location {
        config: config_path.to_owned(),
        data_dir: None,
    };
    let record = Context::cli("audit acknowledge-gap")
        .record(Action::AuditGap, Outcome::Ok)
        .reason(reason);
    let done = match locate(&location)? {
        Trail::Sqlite(dir) => {
            let keyring = load_keyring(&location, &dir)?;
            crate::store::acknowledge_audit_gap(
                &dir.join("vault.db"),
                &dir.join("audit.db"),
                &keyring.audit_key(),
                record,
            )
        }
        Trail::Postgres(pg, config) => {
            let keyring = postgres_keyring(&pg, &config)?;
            pg.acknowledge_audit_gap(&keyring.audit_key(), record)
        }
    }
    .map_err(|error| {
        let hint = match error {
            crate::store::AcknowledgeError::NoGap => "nothing to do: `tokenvault audit verify` shows the trail",
            crate::store::AcknowledgeError::ChainBroken { .. } => "records were edited or removed inside the chain; keep the data directory as evidence and restore audit.db from a backup",
            crate::store::AcknowledgeError::NotATail(_) => "restore audit.db and vault.db from the same backup",
            crate::store::AcknowledgeError::Store(_) => "check that the data directory is writable by this user",
        };
        anyhow!("{error}\nhint: {hint}")
    })?;
    println!(
        "acknowledged: records {} are missing; gap record {} appended (reason {reason})",
        done.gap, done.head.seq
    );
    println!("a running vault appends and serves again; `tokenvault audit verify` lists the gap");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_cells_fit_their_columns() {
        assert_eq!(fit("crm", 16), "crm");
        assert_eq!(fit("a-very-long-client-name", 10), "a-very-lo…");
        assert_eq!(fit("a-very-long-client-name", 10).chars().count(), 10);
    }

    #[test]
    fn csv_cells_are_neutralised() {
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        for lead in ["+", "-", "@", "\t", "\r"] {
            assert!(csv_cell(&format!("{lead}1")).starts_with("\"'"), "{lead:?}");
        }
        assert_eq!(csv_cell("crm"), "\"crm\"");
        assert_eq!(csv_cell("a\u{1b}[2Jb"), "\"a\\u001b[2Jb\"");
    }
}
