//! `corral`: the one binary of Corral.
//!
//! - `corral run` runs a WASM task in the sandbox on this machine, with hard limits, and reports
//!   how it ended and what it cost.
//! - `corral dev` runs a host and agents in one process; `corral host` and `corral agent` run
//!   them on separate machines.
//! - `corral submit|tasks|task|agents|partitions` are the cluster's clients; `corral
//!   token|audit` manage tokens and read the audit log; `corral login` saves a profile.
//!
//! Logs go to stderr, filtered by `CORRAL_LOG` (e.g. `CORRAL_LOG=debug`).

mod args;
mod client;
mod exit;
mod run;
mod serve;
mod show;

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
    /// Run a host and N agents in this process: a whole cluster on one machine.
    Dev(serve::DevArgs),
    /// Run the host (the control plane).
    Host(serve::HostArgs),
    /// Run an agent that registers with a host and runs its tasks.
    Agent(serve::AgentArgs),
    /// Submit a task to the cluster, or a job of many (--array, --sweep, --params); prints its
    /// id (or, with --wait, its output or the job's summary).
    Submit(Box<client::submit::SubmitArgs>),
    /// List uploaded inputs: SHA256 SIZE TASKS FETCHES LAST-USED, and the storage they take.
    Inputs(client::inputs::InputsArgs),
    /// List jobs: ID NAME STATE TASKS and their tasks by state.
    Jobs(client::jobs::JobsArgs),
    /// Show, wait for, kill, or gather the results of one job.
    #[command(subcommand)]
    Job(client::jobs::JobCommand),
    /// List tasks: ID NAME STATE AGENT PARTITION FUEL AGE.
    Tasks(client::tasks::TasksArgs),
    /// Show, kill, fetch the output of, or watch one task.
    #[command(subcommand)]
    Task(client::task::TaskCommand),
    /// List the agents.
    Agents(client::agents::ListArgs),
    /// List the partitions of the agents' capacity.
    Partitions(client::agents::ListArgs),
    /// Make, list and revoke tokens (admin).
    #[command(subcommand)]
    Token(client::tokens::TokenCommand),
    /// Set and list tenants' weights, guarantees, limits and usage.
    #[command(subcommand)]
    Tenant(client::tenants::TenantCommand),
    /// Show the audit log (admin): tokens made and revoked, kills, agent registrations,
    /// refused calls.
    Audit(client::tokens::AuditArgs),
    /// Check a host and a token, and save them as the profile later commands use.
    Login(client::profile::LoginArgs),
    /// Compile one module from stdin under a memory limit (run by Corral itself).
    #[command(name = "compile-worker", hide = true)]
    CompileWorker,
}

/// tokio's default bound on blocking threads; guests run on them, one per running task.
const BLOCKING_THREADS: usize = 512;

fn runtime(blocking_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(blocking_threads.max(BLOCKING_THREADS))
        .enable_all()
        .build()
}

fn cluster<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    command: impl FnOnce() -> F,
) -> anyhow::Result<ExitCode> {
    runtime(BLOCKING_THREADS)?.block_on(command())
}

/// A server whose agents run `runs` guests at once: each needs a blocking thread of its own,
/// plus some for compiles and other blocking work, or runs past tokio's default bound would
/// wait for a thread while their task shows RUNNING.
fn serve<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    runs: usize,
    command: impl FnOnce() -> F,
) -> anyhow::Result<ExitCode> {
    runtime(runs + 64)?.block_on(command())
}

/// Whether `error` is a write to a pipe whose reader has gone.
fn closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
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
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Dev(args) => serve(args.concurrent_runs(), || async {
            done(serve::dev(args).await)
        }),
        Command::Host(args) => cluster(|| async { done(serve::host(args).await) }),
        Command::Agent(args) => serve(args.concurrent_runs(), || async {
            done(serve::agent(args).await)
        }),
        Command::Submit(args) => cluster(|| client::submit::submit(*args)),
        Command::Tasks(args) => cluster(|| client::tasks::tasks(args)),
        Command::Jobs(args) => cluster(|| client::jobs::jobs(args)),
        Command::Inputs(args) => cluster(|| client::inputs::inputs(args)),
        Command::Job(command) => cluster(|| client::jobs::job(command)),
        Command::Task(command) => cluster(|| client::task::task(command)),
        Command::Agents(args) => cluster(|| client::agents::agents(args)),
        Command::Partitions(args) => cluster(|| client::agents::partitions(args)),
        Command::Token(command) => cluster(|| client::tokens::token(command)),
        Command::Audit(args) => cluster(|| client::tokens::audit(args)),
        Command::Tenant(command) => cluster(|| client::tenants::tenant(command)),
        Command::Login(args) => cluster(|| client::profile::login(args)),
        Command::CompileWorker => return corral_agent::sandbox::compile_worker_main(),
    };
    match result {
        Ok(code) => code,
        // Whoever read our output stopped (`| head`): exit quietly, as Unix tools do.
        Err(error) if closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("corral: error: {error:#}");
            let status = error
                .downcast_ref::<client::Failure>()
                .map_or(exit::CORRAL_FAILED, |f| f.status);
            ExitCode::from(status)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    /// Clap's own checks of every subcommand's definition (names, types, conflicts), which
    /// otherwise fail only when a command is run with the flag.
    #[test]
    fn the_command_line_is_well_defined() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tenant_import_patterns_are_split_on_commas() {
        let cli = Cli::try_parse_from([
            "corral",
            "tenant",
            "set",
            "acme",
            "--deny-imports",
            "wasi_snapshot_preview1::path_*, wasi_snapshot_preview1::sock_*",
            "--allow-imports",
            "all",
        ])
        .unwrap();
        let shown = format!("{:?}", cli.command);
        assert!(matches!(cli.command, Command::Tenant(_)), "{shown}");
        assert!(
            shown.contains(
                r#"deny_imports: Some(Patterns(["wasi_snapshot_preview1::path_*", "wasi_snapshot_preview1::sock_*"]))"#
            ) && shown.contains("allow_imports: Some(Limit(None))"),
            "{shown}"
        );
    }
}
