//! The `tokenvault` command: parse the command line and hand over.

use std::process::ExitCode;

/// mimalloc, set up before the first allocation by
/// [`tokenvault::harden::ALLOCATOR_SETTINGS`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The allocator's settings are applied from `.init_array`, before
    // `main`; naming them here keeps them linked into the binary.
    std::hint::black_box(&tokenvault::harden::ALLOCATOR_SETTINGS);
    tokenvault::cli::main()
}
