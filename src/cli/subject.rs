//! `tokenvault subject forget|export`: a data subject's rights from the
//! command line, through the same engine calls as the API (one audit record
//! each, actor `cli:<user>`). Works beside a running server: SQLite's locks
//! order the writes, and every append checks the audit chain's tail.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use clap::{Args, Subcommand};
use serde_json::json;

use super::{write_stdout, CliError, DEFAULT_CONFIG};
use crate::audit::Context;
use crate::policy::{Caller, Operation, Role};

/// `subject` subcommands.
#[derive(Subcommand)]
pub enum SubjectCommand {
    /// Erase every value of a subject (right to erasure); prints the signed
    /// receipt.
    Forget(SubjectArgs),
    /// Print every value held for a subject, with its tokens and consent
    /// history, as JSON (right of access).
    Export(SubjectArgs),
    /// Replace the value of one of a subject's tokens, keeping the token
    /// (rectification). Standard input holds the subject on its first line
    /// and the new value on its second.
    Correct {
        #[command(flatten)]
        subject: SubjectArgs,
        /// The token whose value is corrected.
        #[arg(long)]
        token: String,
    },
}

/// Whose rights.
#[derive(Args)]
pub struct SubjectArgs {
    /// Namespace of the subject.
    #[arg(long)]
    namespace: String,
    /// Read the subject (the customer identifier given at tokenization)
    /// from standard input, so that it never appears in the process list or
    /// shell history (for `correct`, the new value follows on the next
    /// line). Required.
    #[arg(long, required = true)]
    subject_stdin: bool,
    /// Configuration file.
    #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

/// Runs a `subject` subcommand.
pub fn run(command: SubjectCommand) -> Result<(), CliError> {
    let (args, name) = match &command {
        SubjectCommand::Forget(args) => (args, "subject forget"),
        SubjectCommand::Export(args) => (args, "subject export"),
        SubjectCommand::Correct { subject, .. } => (subject, "subject correct"),
    };
    let config = crate::config::load(&args.config)?;
    if !config.namespaces.contains_key(&args.namespace) {
        return Err(anyhow!(
            "namespace `{}` is not defined\nhint: check [namespaces] in {}",
            args.namespace,
            args.config.display()
        )
        .into());
    }
    let subject = super::subject_from_stdin()?;
    let value = match &command {
        SubjectCommand::Correct { .. } => Some(super::line_from_stdin("the new value")?),
        _ => None,
    };
    let (store, vault) = super::open_engine(&config)?;
    // Whoever can read the configuration and unwrap the key holds every
    // right over the data; the record names the operator.
    let operator = Caller {
        client: "operator".to_owned(),
        role: Arc::new(Role::unrestricted([
            Operation::SubjectForget,
            Operation::SubjectExport,
            Operation::SubjectCorrect,
        ])),
    };
    let context = Context::cli(name);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let answer = runtime.block_on(async {
        match &command {
            SubjectCommand::Forget(_) => vault
                .forget_subject(&context, &operator, &args.namespace, &subject)
                .await
                .map(|receipt| receipt.to_json()),
            SubjectCommand::Export(_) => vault
                .export_subject(&context, &operator, &args.namespace, &subject)
                .await
                .map(|export| {
                    let values: Vec<_> = export
                        .values
                        .iter()
                        .map(|(token, class, value)| {
                            json!({"token": token, "class": class, "value": value.expose()})
                        })
                        .collect();
                    json!({"namespace": args.namespace, "values": values, "consent": export.consent})
                }),
            SubjectCommand::Correct { token, .. } => {
                let value = value.as_ref().ok_or(crate::vault::VaultError::UnknownToken)?;
                vault
                    .correct_subject(&context, &operator, &args.namespace, &subject, token, value)
                    .await
                    .map(|class| json!({"token": token, "class": class}))
            }
        }
    });
    drop(vault);
    store.shutdown();
    let answer = answer.map_err(|error| anyhow!("{error}"))?;
    // Invariant: a Value always serializes.
    let mut text = serde_json::to_string_pretty(&answer).expect("JSON value serializes");
    text.push('\n');
    write_stdout(text.as_bytes())
}
