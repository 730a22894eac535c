//! `tokenvault file tokenize|detokenize`: bulk CSV and JSON Lines files
//! through the engine, beside a running vault or on a stopped one's data
//! directory (SQLite's locks order the writes, as for `subject`).
//!
//! A file output is written as `OUT.partial` and renamed to `OUT` only once
//! the run's audit record is durable; `OUT.resume` holds the checkpoint
//! `--resume` continues from. Rejected rows go to `OUT.rejects.csv` (row
//! number and reason, never a value).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use clap::{Args, Subcommand};

use super::{CliError, DEFAULT_CONFIG};
use crate::audit::Context;
use crate::crypto::digest::{HashingReader, StreamDigest};
use crate::files::output::{BatchWriter, Checkpoint};
use crate::files::{self, ColumnRule, Counts, FileError, Format};
use crate::policy::{Caller, Operation, Role};

/// `file` subcommands.
#[derive(Subcommand)]
pub enum FileCommand {
    /// Replace the values of the named columns with their tokens; every
    /// other byte is copied. Prints a summary on standard error.
    Tokenize(TokenizeArgs),
    /// Replace tokens with their values, as a client whose role may
    /// detokenize, for a purpose; withdrawn or unknown tokens give an empty
    /// cell and a reason in the `tokenvault_reason` column.
    Detokenize(DetokenizeArgs),
}

/// What both directions take.
#[derive(Args)]
pub struct Common {
    /// Input file, or `-` for standard input. gzip input is recognized by
    /// its first bytes.
    #[arg(long = "in", value_name = "FILE")]
    input: String,
    /// Output file, or `-` for standard output.
    #[arg(long = "out", value_name = "FILE")]
    output: String,
    /// Namespace of the tokens.
    #[arg(long)]
    namespace: String,
    /// Column rules, `COLUMN=CLASS` separated by commas: CSV header names
    /// (`Email=email,Phone=phone`) or JSON Lines selectors
    /// (`$.profileData.Email=email`).
    #[arg(long)]
    columns: String,
    /// `csv` or `jsonl`; by default from the file names (`.csv`, `.jsonl`,
    /// `.ndjson`, before `.gz`).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// gzip the output (also when --out ends in `.gz`).
    #[arg(long)]
    gzip: bool,
    /// Reject report (`row,reason`). Default: OUT.rejects.csv, or standard
    /// error when the output is standard output.
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,
    /// Rows per engine call (one commit each).
    #[arg(long, default_value_t = files::DEFAULT_BATCH_ROWS, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch_rows: u64,
    /// Configuration file.
    #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

/// `file tokenize`.
#[derive(Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    common: Common,
    /// The column (CSV) or selector (JSON Lines) naming each row's customer;
    /// stored only as a keyed hash, for erasure and consent by subject.
    #[arg(long)]
    subject_column: Option<String>,
    /// Stop the run once more rows than this are rejected.
    #[arg(long)]
    max_rejects: Option<u64>,
    /// Continue an interrupted run from its last whole batch (the same
    /// command line, with --out naming a file).
    #[arg(long, conflicts_with = "encrypt_to")]
    resume: bool,
    /// Encrypt the output to this OpenPGP public key (the platform's),
    /// armored or binary, as it is written: the tokenized plaintext never
    /// reaches the disk.
    #[arg(long, value_name = "KEYFILE")]
    encrypt_to: Option<PathBuf>,
}

/// `file detokenize`.
#[derive(Args)]
pub struct DetokenizeArgs {
    #[command(flatten)]
    common: Common,
    /// The configured client to act as: its role must allow detokenize in
    /// the namespace for the purpose, and its budget applies.
    #[arg(long)]
    client: String,
    /// Why the values are needed (a purpose the client's role allows).
    #[arg(long)]
    purpose: String,
    /// The input is OpenPGP-encrypted to this secret key (armored or
    /// binary).
    #[arg(long, value_name = "KEYFILE")]
    decrypt_with: Option<PathBuf>,
    /// A file holding the secret key's passphrase, when it has one.
    #[arg(long, value_name = "FILE", requires = "decrypt_with")]
    decrypt_passphrase_file: Option<PathBuf>,
}

/// Runs a `file` subcommand.
pub fn run(command: FileCommand) -> Result<(), CliError> {
    match command {
        FileCommand::Tokenize(args) => tokenize(args),
        FileCommand::Detokenize(args) => detokenize(args),
    }
}

/// What a command resolved before reading a row.
struct Prepared {
    config: crate::config::Config,
    format: Format,
    rules: Vec<ColumnRule>,
    out: Destination,
    /// gzip the output (`--gzip`, or `--out` ending in `.gz`).
    gzip: bool,
}

/// Page cache per SQLite connection for a file run, in MiB, at most.
const FILE_RUN_CACHE_MIB: u32 = 4;

fn prepare(common: &Common) -> Result<Prepared, CliError> {
    let mut config = crate::config::load(&common.config)?;
    // A file's lookups land all over the store, so a large page cache per
    // connection buys little, and five of them were most of a run's memory
    // (4 MiB: 75 MB peak at 200 k new rows, against 97 MB at 8 MiB).
    config.limits.sqlite_cache_mib = config.limits.sqlite_cache_mib.min(FILE_RUN_CACHE_MIB);
    if !config.namespaces.contains_key(&common.namespace) {
        return Err(anyhow!(
            "namespace `{}` is not defined\nhint: check [namespaces] in {}",
            common.namespace,
            common.config.display()
        )
        .into());
    }
    let rules = ColumnRule::parse_list(&common.columns).map_err(|error| {
        anyhow!("--columns: {error}\nhint: --columns 'Email=email,Phone=phone'")
    })?;
    let format = common
        .format
        .or_else(|| Format::of_name(&common.input))
        .or_else(|| Format::of_name(&common.output))
        .ok_or_else(|| {
            anyhow!("cannot tell the format from the file names\nhint: add --format csv or --format jsonl")
        })?;
    let out = Destination::of(&common.output, common.rejects.as_deref())?;
    Ok(Prepared {
        config,
        format,
        rules,
        out,
        gzip: common.gzip || common.output.ends_with(".gz"),
    })
}

fn tokenize(args: TokenizeArgs) -> Result<(), CliError> {
    let common = &args.common;
    let Prepared {
        config,
        format,
        rules,
        out,
        gzip,
    } = prepare(common)?;
    let settings = settings_digest(&[
        format.as_str(),
        &common.namespace,
        &common.columns,
        args.subject_column.as_deref().unwrap_or(""),
        &common.batch_rows.to_string(),
        if gzip { "gzip" } else { "plain" },
    ]);
    let checkpoint = match (&out, args.resume) {
        (Destination::Stdout, true) => {
            return Err(anyhow!("--resume needs --out to name a file").into());
        }
        (Destination::File { resume, .. }, true) => {
            let saved = Checkpoint::load(resume).with_context(|| {
                format!(
                    "no checkpoint to resume from at {}\nhint: run without --resume",
                    resume.display()
                )
            })?;
            if saved.settings != settings {
                return Err(anyhow!(
                    "the checkpoint was written by a run with other settings\nhint: resume with the same --format, --namespace, --columns, --subject-column, --batch-rows and output compression"
                )
                .into());
            }
            Some(saved)
        }
        (destination, false) => {
            destination.refuse_leftovers()?;
            None
        }
    };

    let (store, mut vault) = super::open_engine(&config)?;
    // A file's values come once each: the cache of known values would only
    // take memory.
    vault.set_token_cache(0);
    let runtime = runtime()?;
    let stop = interrupt_flag(&runtime);
    let operator = Caller {
        client: "operator".to_owned(),
        role: Arc::new(Role::unrestricted([Operation::Tokenize])),
    };
    let context = Context::cli("file tokenize");
    let columns: Vec<(String, String)> = rules
        .iter()
        .map(|rule| (rule.column.clone(), rule.class.clone()))
        .collect();
    let started = runtime.block_on(vault.start_file_tokenize(
        &context,
        &operator,
        &common.namespace,
        &columns,
    ));
    let file_run = match started {
        Ok(file_run) => file_run,
        Err(error) => {
            drop(vault);
            store.shutdown();
            return Err(anyhow!("{error}").into());
        }
    };
    let recipient = args
        .encrypt_to
        .as_deref()
        .map(crate::crypto::pgp::Recipient::load)
        .transpose()
        .map_err(|error| anyhow!("--encrypt-to: {error}"))?;
    let (input, digest) = open_input(&common.input, None)?;
    let mut sink = Sink::open(&out, gzip, checkpoint.as_ref(), settings, recipient)?;
    let progress = Progress::new(&common.input);
    let job = files::tokenize::Job {
        format,
        rules: &rules,
        subject: args.subject_column.as_deref(),
        batch_rows: common.batch_rows as usize,
        max_rejects: args.max_rejects,
        resume: checkpoint.map(|c| c.counts),
    };
    let result = {
        let (writer, rejects) = sink.parts();
        let mut output = |bytes: &[u8], counts: &Counts| {
            writer.batch(bytes, counts)?;
            progress.update(counts);
            Ok(())
        };
        files::tokenize::run(
            &file_run,
            runtime.handle(),
            &job,
            input,
            &mut output,
            rejects,
            &|| stop.load(Ordering::Relaxed),
        )
    };
    let counts = match &result {
        Ok(counts) => counts.clone(),
        Err(_) => sink.last_counts().cloned().unwrap_or_default(),
    };
    progress.finish();
    let facts = files::facts(digest.hex(), format, &counts, &rules);
    let ended = files::ended(&result);
    let recorded = runtime.block_on(file_run.finish(facts, ended));
    drop(vault);
    store.shutdown();
    let summary = summary("tokenized", &counts, "tokens created", "reused");
    match (result, recorded) {
        (Ok(_), Ok(())) => {
            sink.publish()?;
            eprintln!("{summary}");
            Ok(())
        }
        (Ok(_), Err(error)) => Err(anyhow!(
            "the run's audit record could not be written ({error}); the output stays unpublished at {}\nhint: fix the audit trail, then run again with --resume",
            out.partial_name()
        )
        .into()),
        (Err(FileError::Interrupted), _) => Err(anyhow!(
            "interrupted after {} rows\nhint: run the same command with --resume to continue",
            counts.rows
        )
        .into()),
        (Err(error), _) => Err(anyhow!("{error} (after {} rows)", counts.rows).into()),
    }
}

fn detokenize(args: DetokenizeArgs) -> Result<(), CliError> {
    let common = &args.common;
    let Prepared {
        config,
        format,
        rules,
        out,
        gzip,
    } = prepare(common)?;
    out.refuse_leftovers()?;
    let spec = config.clients.get(&args.client).ok_or_else(|| {
        anyhow!(
            "client `{}` is not defined\nhint: check [clients] in {}",
            args.client,
            common.config.display()
        )
    })?;
    let role = config.roles.get(&spec.role).ok_or_else(|| {
        anyhow!(
            "client `{}` holds role `{}`, which is not defined",
            args.client,
            spec.role
        )
    })?;
    let caller = Caller {
        client: args.client.clone(),
        role: Arc::new(role.clone()),
    };
    let (store, vault) = super::open_engine(&config)?;
    let runtime = runtime()?;
    let stop = interrupt_flag(&runtime);
    let context = Context::cli(&format!("file detokenize as {}", args.client));
    let passphrase = args
        .decrypt_passphrase_file
        .as_deref()
        .map(|path| {
            std::fs::read_to_string(path)
                .map(|text| zeroize::Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned()))
                .with_context(|| format!("cannot read {}", path.display()))
        })
        .transpose()?;
    let key = args
        .decrypt_with
        .as_deref()
        .map(|path| {
            crate::crypto::pgp::SecretKey::load(path, passphrase.as_deref().map(String::as_str))
        })
        .transpose()
        .map_err(|error| anyhow!("--decrypt-with: {error}"))?;
    let (input, _digest) = open_input(&common.input, key.as_ref())?;
    let mut sink = Sink::open(&out, gzip, None, String::new(), None)?;
    let progress = Progress::new(&common.input);
    let job = files::detokenize::Job {
        format,
        rules: &rules,
        namespace: &common.namespace,
        purpose: &args.purpose,
        batch_rows: common.batch_rows as usize,
    };
    let result = {
        let (writer, rejects) = sink.parts();
        let mut output = |bytes: &[u8], counts: &Counts| {
            writer.batch(bytes, counts)?;
            progress.update(counts);
            Ok(())
        };
        files::detokenize::run(
            &vault,
            &context,
            &caller,
            runtime.handle(),
            &job,
            input,
            &mut output,
            rejects,
            &|| stop.load(Ordering::Relaxed),
        )
    };
    progress.finish();
    drop(vault);
    store.shutdown();
    match result {
        Ok(counts) => {
            sink.publish()?;
            eprintln!(
                "{}",
                summary("detokenized", &counts, "values revealed", "withheld")
            );
            Ok(())
        }
        Err(error) => {
            sink.discard();
            Err(anyhow!("{error}; no output was published").into())
        }
    }
}

fn summary(done: &str, counts: &Counts, created: &str, reused: &str) -> String {
    format!(
        "{done} {} rows: {} {created}, {} {reused}, {} rows rejected",
        counts.rows, counts.created, counts.reused, counts.rejected
    )
}

/// A digest of the settings that shape a run's output.
fn settings_digest(parts: &[&str]) -> String {
    let joined = parts.join("\u{1f}");
    let (mut reader, digest) = HashingReader::new(joined.as_bytes());
    // Invariant: reading from a slice cannot fail.
    std::io::copy(&mut reader, &mut std::io::sink()).expect("a slice reads");
    digest.hex()
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    // This thread drives the engine's calls while it reads and writes the
    // file; their store reads run on the blocking pool, a batch's in parts
    // at once (one per core), and the signal watcher on a worker.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?)
}

/// Set on SIGINT or SIGTERM: the run stops after its last whole batch.
fn interrupt_flag(runtime: &tokio::runtime::Runtime) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    runtime.spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        set.store(true, Ordering::Relaxed);
    });
    flag
}

/// The input, decrypted with `key` when given, decompressed when it starts
/// like gzip, and its digest (of the bytes as they are in the file).
fn open_input<'k>(
    name: &str,
    key: Option<&'k crate::crypto::pgp::SecretKey>,
) -> Result<(Box<dyn BufRead + 'k>, StreamDigest), CliError> {
    let raw: Box<dyn Read + Send> = if name == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(name).with_context(|| format!("cannot open {name}"))?)
    };
    let (hashing, digest) = HashingReader::new(raw);
    let raw = BufReader::with_capacity(1 << 16, Opaque(hashing));
    let buffered: Box<dyn BufRead + 'k> = match key {
        Some(key) => key
            .decrypt(raw)
            .map_err(|error| anyhow!("{name}: {error}"))?,
        None => Box::new(raw),
    };
    let input = files::decompressed(buffered).with_context(|| format!("cannot read {name}"))?;
    Ok((input, digest))
}

/// A reader that prints as nothing (OpenPGP's parser wants `Debug`).
struct Opaque<R>(R);

impl<R> std::fmt::Debug for Opaque<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("input")
    }
}

impl<R: Read> Read for Opaque<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

/// Where the output goes.
enum Destination {
    Stdout,
    File {
        target: PathBuf,
        partial: PathBuf,
        resume: PathBuf,
        rejects: PathBuf,
    },
}

impl Destination {
    fn of(output: &str, rejects: Option<&Path>) -> Result<Self, CliError> {
        if output == "-" {
            return Ok(Self::Stdout);
        }
        let with = |suffix: &str| PathBuf::from(format!("{output}{suffix}"));
        Ok(Self::File {
            target: PathBuf::from(output),
            partial: with(".partial"),
            resume: with(".resume"),
            rejects: rejects.map_or_else(|| with(".rejects.csv"), Path::to_path_buf),
        })
    }

    fn partial_name(&self) -> String {
        match self {
            Self::Stdout => "standard output".to_owned(),
            Self::File { partial, .. } => partial.display().to_string(),
        }
    }

    /// Refuses to overwrite an output or an interrupted run's files.
    fn refuse_leftovers(&self) -> Result<(), CliError> {
        let Self::File {
            target,
            partial,
            resume,
            ..
        } = self
        else {
            return Ok(());
        };
        if resume.exists() {
            return Err(anyhow!(
                "an interrupted run left {}\nhint: add --resume to continue it, or delete it and {}",
                partial.display(),
                resume.display()
            )
            .into());
        }
        if partial.exists() {
            // An encrypted run keeps no checkpoint: it cannot be continued.
            return Err(anyhow!(
                "an unfinished run left {}, with no checkpoint to resume from\nhint: delete it and run again; tokens already created are reused",
                partial.display()
            )
            .into());
        }
        if target.exists() {
            return Err(anyhow!(
                "{} exists\nhint: choose another --out or remove it",
                target.display()
            )
            .into());
        }
        Ok(())
    }
}

/// The output and reject report of a run, with its checkpoints.
struct Sink {
    writer: SinkWriter,
    rejects: Box<dyn Write>,
}

/// The encryption thread: it reads what the run writes and writes the
/// OpenPGP message.
type Encryptor = std::thread::JoinHandle<Result<(), crate::crypto::pgp::PgpError>>;

/// `output`, or a pipe into a thread that encrypts to `recipient` and
/// writes to `output`.
fn encrypting(
    output: Box<dyn Write + Send>,
    recipient: Option<crate::crypto::pgp::Recipient>,
    encryptor: &mut Option<Encryptor>,
) -> Box<dyn Write> {
    match recipient {
        None => output,
        Some(recipient) => {
            let (writer, reader) = files::pipe::pipe(8);
            *encryptor = Some(std::thread::spawn(move || {
                let mut output = output;
                recipient.encrypt(reader, &mut output)?;
                output
                    .flush()
                    .map_err(|error| crate::crypto::pgp::PgpError::Encrypt(error.to_string()))
            }));
            Box::new(writer)
        }
    }
}

struct SinkWriter {
    batches: BatchWriter<Box<dyn Write>>,
    encryptor: Option<Encryptor>,
    file: Option<File>,
    rejects_file: Option<File>,
    destination: DestinationPaths,
    settings: String,
    last: Option<Counts>,
}

struct DestinationPaths {
    target: Option<PathBuf>,
    partial: Option<PathBuf>,
    resume: Option<PathBuf>,
}

impl Sink {
    fn open(
        destination: &Destination,
        gzip: bool,
        checkpoint: Option<&Checkpoint>,
        settings: String,
        recipient: Option<crate::crypto::pgp::Recipient>,
    ) -> Result<Self, CliError> {
        let create = |path: &Path, keep: Option<u64>| -> Result<File, CliError> {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(keep.is_none())
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            if let Some(length) = keep {
                // Whatever followed the last whole batch is written again.
                file.set_len(length)
                    .with_context(|| format!("cannot truncate {}", path.display()))?;
            }
            Ok(file)
        };
        let mut encryptor = None;
        match destination {
            Destination::Stdout => Ok(Self {
                writer: SinkWriter {
                    batches: BatchWriter::new(
                        encrypting(Box::new(std::io::stdout()), recipient, &mut encryptor),
                        gzip,
                        0,
                    ),
                    encryptor,
                    file: None,
                    rejects_file: None,
                    destination: DestinationPaths {
                        target: None,
                        partial: None,
                        resume: None,
                    },
                    settings,
                    last: None,
                },
                rejects: Box::new(std::io::stderr()),
            }),
            Destination::File {
                target,
                partial,
                resume,
                rejects,
            } => {
                let mut file = create(partial, checkpoint.map(|c| c.output_bytes))?;
                let mut rejects_file = create(rejects, checkpoint.map(|c| c.rejects_bytes))?;
                if checkpoint.is_none() {
                    files::reject_header(&mut rejects_file)
                        .with_context(|| format!("cannot write {}", rejects.display()))?;
                }
                use std::io::Seek;
                file.seek(std::io::SeekFrom::End(0))
                    .context("cannot seek the output")?;
                rejects_file
                    .seek(std::io::SeekFrom::End(0))
                    .context("cannot seek the reject report")?;
                let output: Box<dyn Write + Send> =
                    Box::new(file.try_clone().context("cannot reopen the output")?);
                Ok(Self {
                    writer: SinkWriter {
                        batches: BatchWriter::new(
                            encrypting(output, recipient, &mut encryptor),
                            gzip,
                            checkpoint.map_or(0, |c| c.output_bytes),
                        ),
                        encryptor,
                        file: Some(file),
                        rejects_file: Some(
                            rejects_file
                                .try_clone()
                                .context("cannot reopen the reject report")?,
                        ),
                        destination: DestinationPaths {
                            target: Some(target.clone()),
                            partial: Some(partial.clone()),
                            resume: Some(resume.clone()),
                        },
                        settings,
                        last: checkpoint.map(|c| c.counts.clone()),
                    },
                    rejects: Box::new(rejects_file),
                })
            }
        }
    }

    fn parts(&mut self) -> (&mut SinkWriter, &mut dyn Write) {
        (&mut self.writer, &mut *self.rejects)
    }

    fn last_counts(&self) -> Option<&Counts> {
        self.writer.last.as_ref()
    }

    /// Renames the output into place and removes the checkpoint.
    fn publish(mut self) -> Result<(), CliError> {
        self.rejects
            .flush()
            .context("cannot write the reject report")?;
        let writer = self.writer;
        let paths = writer.destination;
        // Closing the pipe ends the encrypted message.
        drop(
            writer
                .batches
                .into_inner()
                .context("cannot write the output")?,
        );
        if let Some(encryptor) = writer.encryptor {
            encryptor
                .join()
                .map_err(|_| anyhow!("the encryption thread failed"))?
                .map_err(|error| anyhow!("{error}"))?;
        }
        if let (Some(file), Some(target), Some(partial)) =
            (writer.file, &paths.target, &paths.partial)
        {
            file.sync_all().context("cannot write the output")?;
            std::fs::rename(partial, target)
                .with_context(|| format!("cannot rename {} into place", partial.display()))?;
        }
        if let Some(resume) = &paths.resume {
            match std::fs::remove_file(resume) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(anyhow!("cannot remove {}: {error}", resume.display()).into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes an unpublished output (a failed detokenization's values).
    fn discard(self) {
        drop(self.writer.batches);
        if let Some(encryptor) = self.writer.encryptor {
            let _ = encryptor.join();
        }
        if let Some(partial) = &self.writer.destination.partial {
            let _ = std::fs::remove_file(partial);
        }
    }
}

impl SinkWriter {
    /// Writes a batch; for a file, syncs it and the reject report, then
    /// saves the checkpoint.
    fn batch(&mut self, bytes: &[u8], counts: &Counts) -> std::io::Result<()> {
        self.batches.write_batch(bytes)?;
        self.batches.get_mut().flush()?;
        if let (Some(file), Some(resume)) = (&self.file, &self.destination.resume) {
            file.sync_data()?;
            let rejects_bytes = match &self.rejects_file {
                Some(rejects) => {
                    rejects.sync_data()?;
                    rejects.metadata()?.len()
                }
                None => 0,
            };
            if !self.settings.is_empty() {
                Checkpoint {
                    settings: self.settings.clone(),
                    counts: counts.clone(),
                    output_bytes: self.batches.written(),
                    rejects_bytes,
                }
                .save(resume)?;
            }
        }
        self.last = Some(counts.clone());
        Ok(())
    }
}

/// The progress bar on a terminal; nothing otherwise.
struct Progress(indicatif::ProgressBar);

impl Progress {
    fn new(input: &str) -> Self {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Self(indicatif::ProgressBar::hidden());
        }
        let total = std::fs::metadata(input).map(|m| m.len()).ok();
        let bar = match total {
            Some(total) if input != "-" => indicatif::ProgressBar::new(total),
            _ => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {msg} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Self(bar)
    }

    fn update(&self, counts: &Counts) {
        let elapsed = self.0.elapsed().as_secs_f64().max(0.001);
        self.0.set_message(format!(
            "{} rows, {:.0} rows/s, {} rejected",
            counts.rows,
            counts.rows as f64 / elapsed,
            counts.rejected
        ));
        // The bar counts compressed input bytes only approximately (it is
        // the decompressed position); good enough for an ETA.
        self.0.set_position(counts.input_bytes);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
