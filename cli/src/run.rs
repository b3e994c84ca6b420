//! `corral run`: one task in the sandbox on this machine, with the flags of `wasmtime run` where
//! they overlap plus Corral's limits.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use corral_agent::sandbox::{
    default_cache_dir, DirGrant, GuestEvent, Limits, RunReport, RunSpec, Sandbox, SandboxConfig,
    StdinSource,
};
use serde::Serialize;

use crate::args::{
    parse_dir, parse_duration, parse_env, parse_size, resolve_env, CompileArgs, Format, FormatArg,
    ModuleArgs,
};
use crate::exit;
use crate::show::{self, ignore_closed_pipe};

/// Arguments of `corral run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Set an environment variable for the guest (`K=V`), or pass one of this process's (`K`).
    /// The guest sees no other environment.
    #[arg(long = "env", value_name = "K[=V]", value_parser = parse_env)]
    envs: Vec<(String, Option<String>)>,

    /// Grant a host directory read-write, as GUEST in the guest (default: the same path).
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = parse_dir)]
    dirs: Vec<(PathBuf, String)>,

    /// Grant a host directory read-only, as GUEST in the guest (default: the same path).
    #[arg(long = "dir-ro", value_name = "HOST[::GUEST]", value_parser = parse_dir)]
    dirs_ro: Vec<(PathBuf, String)>,

    /// Fuel budget (roughly, wasm instructions).
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT_FUEL)]
    fuel: u64,

    /// Linear memory cap, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", default_value = "512MiB", value_parser = parse_size)]
    memory: u64,

    /// Wall-clock timeout, e.g. 10s, 1m30s, 250ms.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,

    /// Feed this file to the guest's stdin (`-` for this process's stdin); default: empty.
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,

    /// Keep at most this much of each of stdout and stderr; the rest is dropped and flagged.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    max_output: u64,

    /// Most bytes the guest may grow files by in granted directories; past it the run ends
    /// `disk_limit`.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    max_disk: u64,

    /// Refuse modules larger than this (binary or text), as `invalid_module`.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    max_module_size: u64,

    /// The guest's output and a summary line, or one JSON object.
    #[command(flatten)]
    format: FormatArg,

    /// Do not print the summary line (text format).
    #[arg(short, long)]
    quiet: bool,

    /// Cache compiled code in DIR [default: $XDG_CACHE_HOME/corral or ~/.cache/corral].
    #[arg(long, value_name = "DIR", env = "CORRAL_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Do not read or write the compiled-code cache (overrides --cache-dir and
    /// CORRAL_CACHE_DIR).
    #[arg(long)]
    no_cache: bool,

    #[command(flatten)]
    compile: CompileArgs,

    #[command(flatten)]
    guest: ModuleArgs,
}

/// The JSON form of a report (`-o json`).
#[derive(Serialize)]
struct JsonReport<'a> {
    outcome: &'static str,
    exit_code: Option<i32>,
    message: Option<&'a str>,
    fuel_used: u64,
    peak_memory_bytes: u64,
    wall_ms: f64,
    compile_ms: f64,
    cached: bool,
    module_sha256: &'a str,
    stdout: String,
    stderr: String,
    stdout_truncated: bool,
    stderr_truncated: bool,
    progress: Option<[u64; 2]>,
    logs: Vec<JsonLog<'a>>,
    logs_dropped: u64,
    metrics: serde_json::Map<String, serde_json::Value>,
    guest_warnings: u64,
}

#[derive(Serialize)]
struct JsonLog<'a> {
    level: &'static str,
    message: &'a str,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let module = std::fs::read(&args.guest.module)
        .with_context(|| format!("cannot read module {}", args.guest.module.display()))?;
    // Streamed to the guest as it reads, never held whole: a file is opened now (so that a
    // missing one is an error before the module compiles) and again by the run.
    let stdin_source = match args.stdin.as_deref() {
        None => None,
        Some(path) if path.as_os_str() == "-" => Some(StdinSource::Inherit),
        Some(path) => {
            std::fs::File::open(path)
                .with_context(|| format!("cannot read --stdin file {}", path.display()))?;
            Some(StdinSource::File(path.to_path_buf()))
        }
    };
    let env = resolve_env(args.envs)?;
    let dirs = args
        .dirs
        .into_iter()
        .map(|(host, guest)| DirGrant::read_write(host, guest))
        .chain(
            args.dirs_ro
                .into_iter()
                .map(|(host, guest)| DirGrant::read_only(host, guest)),
        )
        .collect();

    let text = args.format.format == Format::Text;
    let spec = RunSpec {
        program: args.guest.module.display().to_string(),
        args: args.guest.args,
        env,
        stdin: bytes::Bytes::new(),
        stdin_source,
        dirs,
        limits: Limits {
            fuel: args.fuel,
            memory_bytes: args.memory,
            timeout: args.timeout,
            max_stdout_bytes: args.max_output,
            max_stderr_bytes: args.max_output,
            max_disk_bytes: args.max_disk,
            ..Limits::default()
        },
        on_event: text.then(|| Arc::new(print_guest_log) as _),
        control: None,
    };
    let cache_dir = if args.no_cache {
        None
    } else {
        args.cache_dir.or_else(default_cache_dir)
    };
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir,
        max_module_bytes: args.max_module_size,
        compiler: CompileArgs::compiler()?,
        compile_budget: args.compile.budget(),
        ..SandboxConfig::default()
    })?;
    let report = sandbox.run(&module, &spec)?;

    let outcome = corral_agent::daemon::outcome_to_pb(&report.outcome);
    let status = exit::status(
        corral_proto::pb::OutcomeKind::try_from(outcome.kind)
            .unwrap_or(corral_proto::pb::OutcomeKind::Unspecified),
        outcome.exit_code,
    );
    // A reader that stopped early (`| head`) does not change how the guest ended.
    if text {
        ignore_closed_pipe(show::raw(&report.stdout))?;
        let mut err = std::io::stderr().lock();
        ignore_closed_pipe(err.write_all(&report.stderr))?;
        if !args.quiet {
            ignore_closed_pipe(writeln!(err, "{}", summary(&report)))?;
        }
    } else {
        ignore_closed_pipe(show::json(&json_report(&report)))?;
    }
    Ok(ExitCode::from(status))
}

/// Prints a guest's `corral.log` records to stderr as they happen.
fn print_guest_log(event: &GuestEvent) {
    if let GuestEvent::Log(record) = event {
        eprintln!("[guest {}] {}", record.level.as_str(), record.message);
    }
}

/// The one-line summary printed to stderr after a run.
fn summary(report: &RunReport) -> String {
    let mut line = format!(
        "corral: {} fuel_used={} peak_memory={} wall={} cached={}",
        report.outcome.kind(),
        report.fuel_used,
        show::size(report.peak_memory_bytes),
        show::duration(report.wall_time),
        report.cached,
    );
    if let Some(code) = report.outcome.exit_code().filter(|c| *c != 0) {
        line.push_str(&format!(" exit_code={code}"));
    }
    for (flag, truncated) in [
        ("stdout_truncated", report.stdout_truncated),
        ("stderr_truncated", report.stderr_truncated),
    ] {
        if truncated {
            line.push_str(&format!(" {flag}=true"));
        }
    }
    if report.guest_warnings > 0 {
        line.push_str(&format!(" guest_warnings={}", report.guest_warnings));
    }
    if let Some(message) = report.outcome.message() {
        line.push_str(&format!(" message={message:?}"));
    }
    line
}

fn json_report(report: &RunReport) -> JsonReport<'_> {
    JsonReport {
        outcome: report.outcome.kind(),
        exit_code: report.outcome.exit_code(),
        message: report.outcome.message(),
        fuel_used: report.fuel_used,
        peak_memory_bytes: report.peak_memory_bytes,
        wall_ms: report.wall_time.as_secs_f64() * 1e3,
        compile_ms: report.compile_time.as_secs_f64() * 1e3,
        cached: report.cached,
        module_sha256: &report.module_sha256,
        stdout: String::from_utf8_lossy(&report.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&report.stderr).into_owned(),
        stdout_truncated: report.stdout_truncated,
        stderr_truncated: report.stderr_truncated,
        progress: report.progress.map(|p| [p.done, p.total]),
        logs: report
            .logs
            .iter()
            .map(|log| JsonLog {
                level: log.level.as_str(),
                message: &log.message,
            })
            .collect(),
        logs_dropped: report.logs_dropped,
        metrics: report
            .metrics
            .iter()
            .map(|(name, value)| (name.clone(), serde_json::json!(value)))
            .collect(),
        guest_warnings: report.guest_warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_runs_summary_says_zero_microseconds() {
        let report = RunReport::rejected(
            corral_agent::sandbox::Outcome::InvalidModule {
                message: "bad".into(),
            },
            String::new(),
        );
        let line = summary(&report);
        assert!(line.contains(" wall=0µs "), "{line}");
        assert!(line.contains("message=\"bad\""), "{line}");
    }
}
