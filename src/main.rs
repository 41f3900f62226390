use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: under the soak's reuse load glibc kept ~2× the live
/// heap resident and kept growing; it also cost about a sixth of the reuse path's CPU
/// (bench/RESULTS.md, issue 24). Built as v2, with transparent huge pages off for the
/// process and overriding `malloc` (SQLite's allocations too): see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = token_vendor::cli::Cli::parse();
    token_vendor::cli::run(cli)
}
