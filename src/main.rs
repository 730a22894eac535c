//! The `tokenvault` command: parse the command line and hand over.

use std::process::ExitCode;

fn main() -> ExitCode {
    tokenvault::cli::main()
}
