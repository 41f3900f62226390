use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = token_vendor::cli::Cli::parse();
    token_vendor::cli::run(cli)
}
