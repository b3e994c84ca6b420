//! `corral`: the one binary of Corral.
//!
//! `corral run` runs a WASM task in the sandbox on this machine, with hard limits, and reports
//! how it ended and what it cost. Logs go to stderr, filtered by `CORRAL_LOG` (e.g.
//! `CORRAL_LOG=debug`).

mod exit;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Corral runs untrusted WebAssembly tasks under enforced fuel, memory and time limits.
#[derive(Parser, Debug)]
#[command(name = "corral", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a WASM module (.wasm or .wat) in the sandbox, here and now.
    Run(run::RunArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version print to stdout and succeed; usage errors exit with the
            // documented code.
            let code = if error.use_stderr() { exit::USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Run(args) => run::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("corral: error: {error:#}");
            ExitCode::from(exit::CORRAL_FAILED)
        }
    }
}
