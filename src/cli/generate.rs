//! `tokenvault completions` and `tokenvault manpages`: shell completions and
//! manual pages generated from the CLI definition, so that they never drift
//! from the commands they describe. The .deb build runs both.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use super::{Cli, CliError};

/// Prints the completion script for `shell` on stdout (quietly stopping
/// when the reader goes away, as with `| head -1`).
pub fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "tokenvault", &mut script);
    super::write_stdout(&script)
}

/// Writes `tokenvault.1` and one page per visible subcommand
/// (`tokenvault-serve.1`, …) into `dir`, creating it if needed.
pub fn manpages(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write manual pages into {}", dir.display()))?;
    Ok(())
}
