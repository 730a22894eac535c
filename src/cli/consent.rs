//! `tokenvault consent set|show`: record a withdrawn or restored purpose for
//! a token or a subject, and list what was recorded. Works beside a running
//! server (SQLite's locks order the writes); every change is audited.

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use clap::{Args, Subcommand};

use super::{CliError, DEFAULT_CONFIG};
use crate::audit::{Action, Context, Outcome};
use crate::config::ConfigErrors;
use crate::crypto::wrapping::Keyring;
use crate::store::{ConsentEvent, ConsentTarget};

/// `consent` subcommands.
#[derive(Subcommand)]
pub enum ConsentCommand {
    /// Withdraw or restore a purpose for a token or a subject.
    Set {
        #[command(flatten)]
        target: TargetArgs,
        /// Purpose to withdraw or restore; `*` for every purpose.
        #[arg(long)]
        purpose: String,
        /// Withdraw the purpose.
        #[arg(long, conflicts_with = "restore", required_unless_present = "restore")]
        withdraw: bool,
        /// Restore the purpose.
        #[arg(long)]
        restore: bool,
        /// Where the request came from (a ticket id, a channel); letters,
        /// digits and `_.:/-`, at most 64. Never put personal data here.
        #[arg(long, default_value = "cli")]
        source: String,
    },
    /// List every consent change recorded for a token (and its subject) or
    /// a subject, oldest first.
    Show {
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// Whom a consent command is about.
#[derive(Args)]
pub struct TargetArgs {
    /// Namespace of the token or subject.
    #[arg(long)]
    namespace: String,
    /// The token.
    #[arg(long, required_unless_present = "subject_stdin")]
    token: Option<String>,
    /// Read the subject (the `subject` given at tokenization) from standard
    /// input, so that it never appears in the process list or shell history.
    #[arg(long, conflicts_with = "token")]
    subject_stdin: bool,
    /// Configuration file.
    #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

/// Runs a `consent` subcommand.
pub fn run(command: ConsentCommand) -> Result<(), CliError> {
    match command {
        ConsentCommand::Set {
            target,
            purpose,
            withdraw,
            restore: _,
            source,
        } => set(&target, &purpose, withdraw, &source),
        ConsentCommand::Show { target } => show(&target),
    }
}

struct Opened {
    config: crate::config::Config,
    keyring: Keyring,
    /// The shared store, when the configuration names PostgreSQL.
    postgres: Option<std::sync::Arc<crate::store::pg::PgStore>>,
}

fn open(args: &TargetArgs) -> Result<Opened, CliError> {
    let config = crate::config::load(&args.config)?;
    if !config.namespaces.contains_key(&args.namespace) {
        return Err(anyhow!(
            "namespace `{}` is not defined\nhint: check [namespaces] in {}",
            args.namespace,
            args.config.display()
        )
        .into());
    }
    if let crate::config::Backend::Postgres(settings) = &config.storage.backend {
        let pg = super::storage::connect_postgres(settings)?;
        let keyring = super::audit::postgres_keyring(&pg, &config)?;
        return Ok(Opened {
            config,
            keyring,
            postgres: Some(pg),
        });
    }
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    let keyring = Keyring::open(&config.storage.keyring_path(), &source)
        .map_err(|error| anyhow!("{error}"))?;
    Ok(Opened {
        config,
        keyring,
        postgres: None,
    })
}

fn target(args: &TargetArgs, keyring: &Keyring) -> Result<ConsentTarget, CliError> {
    if let Some(token) = &args.token {
        return Ok(ConsentTarget::Token(token.clone()));
    }
    let subject = super::subject_from_stdin()?;
    let key = keyring.subject_key(&args.namespace);
    Ok(ConsentTarget::Subject(key.hash(subject.expose())))
}

fn set(args: &TargetArgs, purpose: &str, withdraw: bool, source: &str) -> Result<(), CliError> {
    if !crate::policy::valid_consent_source(source) {
        return Err(anyhow!("--source must be letters, digits and `_.:/-`, at most 64\nhint: use a ticket id or a channel name, never personal data").into());
    }
    if purpose.trim().is_empty() {
        return Err(anyhow!("--purpose must not be empty").into());
    }
    let opened = open(args)?;
    // The same rules as the API: the trail and consent_events hold names the
    // configuration uses and tokens that exist, never text typed by mistake.
    if purpose != "*" && !opened.config.purpose_names().contains(purpose) {
        return Err(anyhow!("--purpose names no purpose the configuration uses\nhint: use a purpose from [roles] or [[callbacks]], or `*` for every purpose").into());
    }
    let target = target(args, &opened.keyring)?;
    if let ConsentTarget::Token(token) = &target {
        let exists = match &opened.postgres {
            Some(pg) => pg
                .existing(&args.namespace, std::slice::from_ref(token))
                .map_err(|error| anyhow!("{error}"))?[0],
            None => crate::store::token_exists_offline(
                &opened.config.storage.database_path(),
                &args.namespace,
                token,
            )
            .context("cannot read vault.db")?,
        };
        if !exists {
            return Err(anyhow!("no such token in namespace {}\nhint: copy the token exactly as the vault issued it; to act on a customer, use --subject-stdin", args.namespace).into());
        }
    }
    let context = Context::cli("consent set");
    let mut record = context
        .record(Action::Consent, Outcome::Ok)
        .namespace(&args.namespace)
        .purpose(purpose)
        .reason(if withdraw { "withdrawn" } else { "restored" })
        .items(1);
    if let ConsentTarget::Token(token) = &target {
        record.tokens = vec![token.clone()];
    }
    let event = ConsentEvent {
        namespace: args.namespace.clone(),
        target,
        purpose: purpose.to_owned(),
        withdrawn: withdraw,
        changed_at: crate::audit::now_us(),
        source: format!("{}: {source}", record.actor),
    };
    match &opened.postgres {
        Some(pg) => {
            pg.activation_now(
                &opened.keyring.audit_key(),
                &crate::store::activation::ActivationWrite::Consent(event),
                &[record],
            )
            .map_err(|error| anyhow!("cannot record the consent change: {error}"))?;
        }
        None => crate::store::record_consent_offline(
            &opened.config.storage.database_path(),
            &opened.config.storage.audit_path(),
            &opened.keyring.audit_key(),
            &event,
            &record,
        )
        .context("cannot record the consent change")?,
    }
    println!(
        "{} {purpose} in namespace {}",
        if withdraw { "withdrew" } else { "restored" },
        args.namespace
    );
    Ok(())
}

fn show(args: &TargetArgs) -> Result<(), CliError> {
    let opened = open(args)?;
    let target = target(args, &opened.keyring)?;
    let events = match &opened.postgres {
        Some(pg) => pg
            .consent_history(&args.namespace, &target)
            .map_err(|error| anyhow!("cannot read the consent records: {error}"))?,
        None => crate::store::consent_history_offline(
            &opened.config.storage.database_path(),
            &args.namespace,
            &target,
        )
        .context("cannot read the consent records")?,
    };
    if events.is_empty() {
        println!("no consent changes recorded");
    }
    for event in events {
        let when =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(event.changed_at) * 1000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| event.changed_at.to_string());
        println!(
            "{when}  {:9}  purpose={}  by={}  ({})",
            if event.withdrawn {
                "withdrawn"
            } else {
                "restored"
            },
            event.purpose,
            event.scope,
            event.source
        );
    }
    Ok(())
}
