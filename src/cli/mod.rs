//! Command-line interface: one file per command group.

mod audit;
mod backup;
mod client;
mod config_check;
mod consent;
mod file;
mod generate;
mod healthcheck;
mod init;
mod keys;
mod reload;
mod serve;
mod status;
mod storage;
mod subject;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Backend, Config, ConfigErrors, Problem, EXIT_CONFIG};

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/tokenvault/vault.toml";

#[derive(Parser)]
#[command(
    name = "tokenvault",
    version,
    about = "On-premises tokenization vault: PII stays in-country, tokens travel"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory, the wrapped master key and the database.
    Init {
        /// Configuration file.
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Run the vault.
    Serve(serve::ServeArgs),
    /// Manage API clients.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Query, verify and export the audit trail.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Withdraw, restore and show consent for a purpose.
    Consent {
        #[command(subcommand)]
        command: consent::ConsentCommand,
    },
    /// What an operator checks first: version, configuration digest,
    /// readiness of the running vault, key versions, token counts, audit
    /// head, last backup.
    Status(status::StatusArgs),
    /// Master keys: status, and a new passphrase or key file (rewrap).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Online backups: create, verify, restore.
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// A data subject's rights: erase (with a signed receipt) or export
    /// everything held for one customer.
    Subject {
        #[command(subcommand)]
        command: subject::SubjectCommand,
    },
    /// Bulk files: tokenize a CSV or JSON Lines export before it leaves
    /// (optionally OpenPGP-encrypted to the platform's key), detokenize a
    /// campaign list at send time.
    File {
        #[command(subcommand)]
        command: file::FileCommand,
    },
    /// The database behind the store: `storage check`.
    Storage {
        #[command(subcommand)]
        command: storage::StorageCommand,
    },
    /// Check configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Exit 0 when the running vault answers ready on GET /readyz, 1 if not
    /// (for container health checks and monitoring).
    Healthcheck {
        /// Configuration file of the running vault.
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Address the vault listens on, when `serve --listen` overrode the
        /// configured one.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Print a shell completion script on stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages into a directory (used when packaging).
    #[command(hide = true)]
    Manpages {
        /// Directory to write tokenvault.1 and the subcommand pages into.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Mint an API key and print the `[clients.NAME]` snippet with its hash.
    New {
        /// Client name (lower-case letters, digits, `_`, `-`).
        name: String,
        /// Role the client holds (a `[roles.NAME]` section).
        #[arg(long)]
        role: String,
        /// Record the creation in this vault's audit trail (checks that the
        /// role exists; needs the vault's passphrase or key file).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Remove a client from the configuration file in place (comments and
    /// layout kept), record it, and have the running vault reload: the
    /// client is refused from its next request.
    Revoke {
        /// Client name.
        name: String,
        /// Configuration file.
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// List the configured clients: role, how they authenticate, where
    /// from, and when each last used the vault (from the audit trail).
    List {
        /// Configuration file.
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// `table` (the default) or `json`.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Report every problem in a configuration; exit 78 if there is one.
    Check {
        /// Configuration file.
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// A command's failure, with the exit status it maps to.
pub enum CliError {
    /// Bad configuration: exit 78.
    Config(ConfigErrors),
    /// Anything else: exit 1. The chain is printed, with a `hint:` line when
    /// the error carries one.
    Failure(anyhow::Error),
}

impl From<ConfigErrors> for CliError {
    fn from(errors: ConfigErrors) -> Self {
        Self::Config(errors)
    }
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        Self::Failure(error)
    }
}

/// How errors name the keyring stored in PostgreSQL.
pub(crate) const KEYRING_IN_DATABASE: &str = "the database's keyring";

/// Loads the configuration of a command that works on the SQLite files of
/// a data directory only: `backup` (PostgreSQL is backed up with its own
/// tools, pg_dump or pgBackRest, plus the keyring row), and `audit` run on
/// a copied data directory. A postgres backend is refused before anything
/// is touched, rather than answered from files no node writes. Every other
/// command runs on either backend.
pub(crate) fn load_sqlite_config(path: &Path) -> Result<Config, ConfigErrors> {
    let config = crate::config::load(path)?;
    if matches!(config.storage.backend, Backend::Postgres(_)) {
        return Err(ConfigErrors(vec![Problem {
            key: "storage.backend".to_owned(),
            message: "this command works on the SQLite files of a data directory; on postgres, back up with pg_dump or pgBackRest (the keyring is a row in the same database)"
                .to_owned(),
            hint: Some(
                "see \"Several nodes on PostgreSQL\" in docs/operations.md".to_owned(),
            ),
        }]));
    }
    Ok(config)
}

/// Appends `records` to the audit trail of the configured store from a
/// command outside the server: the SQLite files of the data directory
/// (waiting for a running writer through SQLite's locks), or the chain in
/// the PostgreSQL database with its head row locked, as a node does.
///
/// A failure to write says `cannot record <what> in the audit trail`.
pub(crate) fn record_offline(
    config: &Config,
    records: &[crate::audit::Record],
    what: &str,
) -> Result<(), CliError> {
    use anyhow::anyhow;
    match &config.storage.backend {
        Backend::Sqlite => {
            let keyring = sqlite_keyring(config)?;
            crate::store::append_audit_offline(
                &config.storage.database_path(),
                &config.storage.audit_path(),
                &keyring.audit_key(),
                records,
            )
            .map_err(|error| anyhow!("cannot record {what} in the audit trail: {error}"))?;
        }
        Backend::Postgres(settings) => {
            let pg = storage::connect_postgres(settings)?;
            let keyring = audit::postgres_keyring(&pg, config)?;
            pg.append_audit(&keyring.audit_key(), records)
                .map_err(|error| anyhow!("cannot record {what} in the audit trail: {error}"))?;
        }
    }
    Ok(())
}

/// The engine over the configured store, for a command that works beside
/// the running nodes: on PostgreSQL through the shared store, on SQLite
/// through the files (waiting for the server's writer through SQLite's
/// locks). Budgets and purpose names are the configuration's, as in
/// `serve`. Shut the store down when done.
pub(crate) fn open_engine(
    config: &Config,
) -> Result<(std::sync::Arc<crate::store::Store>, crate::vault::Vault), CliError> {
    use crate::store::Store;
    use anyhow::Context as _;
    let (keyring, store) = match &config.storage.backend {
        Backend::Postgres(settings) => {
            let pg = storage::connect_postgres(settings)?;
            let keyring = audit::postgres_keyring(&pg, config)?;
            let store = Store::open_postgres(pg, keyring.audit_key())
                .context("cannot open the PostgreSQL store")?;
            (keyring, store)
        }
        Backend::Sqlite => {
            let keyring = sqlite_keyring(config)?;
            let store = Store::open(
                &config.storage.database_path(),
                &config.storage.audit_path(),
                keyring.audit_key(),
                config.limits.sqlite_cache_mib,
            )
            .context("cannot open the stores")?;
            (keyring, store)
        }
    };
    let store = std::sync::Arc::new(store);
    let mut vault = crate::vault::Vault::new(store.clone(), &keyring, &config.namespaces);
    vault.set_tombstones(crate::store::tombstones::Tombstones::in_dir(
        &config.storage.data_dir,
    ));
    vault.set_token_cache(config.limits.token_cache_entries);
    vault.set_budgets(&config.clients);
    vault.set_purpose_names(config.purpose_names());
    Ok((store, vault))
}

/// The master keyring of a SQLite data directory, unwrapped with the
/// configured passphrase or key file.
fn sqlite_keyring(config: &Config) -> Result<crate::crypto::wrapping::Keyring, CliError> {
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    crate::crypto::wrapping::Keyring::open(&config.storage.keyring_path(), &source)
        .map_err(|error| anyhow::anyhow!("{error}").into())
}

/// Writes `bytes` to stdout; a reader that went away (`| head -1`) ends the
/// output quietly, as for any Unix tool.
pub(crate) fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    quiet_on_closed_pipe(out.write_all(bytes).and_then(|()| out.flush()))
}

/// Maps a write error to the command's result: a closed pipe is success.
pub(crate) fn quiet_on_closed_pipe(result: std::io::Result<()>) -> Result<(), CliError> {
    match result {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(anyhow::Error::new(error).context("writing output").into()),
        Ok(()) => Ok(()),
    }
}

/// Runs the command line; the process exit status comes back.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        crate::telemetry::init_command();
    }
    let result = match cli.command {
        Command::Init { config } => init::run(&config),
        Command::Serve(args) => serve::run(args),
        Command::Client {
            command: ClientCommand::New { name, role, config },
        } => client::new(&name, &role, config.as_deref()),
        Command::Client {
            command: ClientCommand::List { config, format },
        } => client::list(&config, &format),
        Command::Client {
            command: ClientCommand::Revoke { name, config },
        } => client::revoke(&name, &config),
        Command::Audit { command } => audit::run(command),
        Command::Consent { command } => consent::run(command),
        Command::Subject { command } => subject::run(command),
        Command::File { command } => file::run(command),
        Command::Backup { command } => backup::run(command),
        Command::Keys { command } => keys::run(command),
        Command::Status(args) => status::run(args),
        Command::Storage { command } => storage::run(command),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => config_check::run(&config),
        Command::Healthcheck { config, listen } => healthcheck::run(&config, listen),
        Command::Completions { shell } => generate::completions(shell),
        Command::Manpages { dir } => generate::manpages(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Config(errors)) => {
            eprint!("error: {errors}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(CliError::Failure(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a data subject's identifier from standard input (so that it never
/// appears in the process list or shell history).
pub(crate) fn subject_from_stdin() -> Result<crate::pii::Pii, CliError> {
    line_from_stdin("subject")
}

/// Reads one line of standard input: `what` (a subject, a value), never
/// taken from the command line.
pub(crate) fn line_from_stdin(what: &str) -> Result<crate::pii::Pii, CliError> {
    use std::io::BufRead;
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|error| anyhow::anyhow!("cannot read the {what} from standard input: {error}"))?;
    let text = line.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return Err(anyhow::anyhow!(
            "no {what} on standard input\nhint: echo the {what} into the command"
        )
        .into());
    }
    Ok(crate::pii::Pii::new(text.to_owned()))
}
