//! `corral run`: one task in the sandbox on this machine, with the flags of `wasmtime run` where
//! they overlap plus Corral's limits.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use corral_agent::sandbox::{
    default_cache_dir, DirGrant, GuestEvent, Limits, RunReport, RunSpec, Sandbox, SandboxConfig,
};
use serde::Serialize;

use crate::exit;

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

    /// Refuse modules larger than this (binary or text), as `invalid_module`.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    max_module_size: u64,

    /// Output format: the guest's output and a summary line, or one JSON object.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    format: Format,

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

    /// The module: a .wasm binary or .wat text.
    #[arg(value_name = "MODULE")]
    module: PathBuf,

    /// Arguments passed to the guest (after MODULE; argv[0] is MODULE as given).
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
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
}

#[derive(Serialize)]
struct JsonLog<'a> {
    level: &'static str,
    message: &'a str,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let module = std::fs::read(&args.module)
        .with_context(|| format!("cannot read module {}", args.module.display()))?;
    let stdin = read_stdin(args.stdin.as_deref())?;
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

    let text = args.format == Format::Text;
    let spec = RunSpec {
        program: args.module.display().to_string(),
        args: args.args,
        env,
        stdin: stdin.into(),
        dirs,
        limits: Limits {
            fuel: args.fuel,
            memory_bytes: args.memory,
            timeout: args.timeout,
            max_stdout_bytes: args.max_output,
            max_stderr_bytes: args.max_output,
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
        ..SandboxConfig::default()
    })?;
    let report = sandbox.run(&module, &spec)?;

    if text {
        let mut out = std::io::stdout().lock();
        out.write_all(&report.stdout)?;
        out.flush()?;
        let mut err = std::io::stderr().lock();
        err.write_all(&report.stderr)?;
        if !args.quiet {
            writeln!(err, "{}", summary(&report))?;
        }
    } else {
        let json = serde_json::to_string(&json_report(&report))?;
        println!("{json}");
    }
    Ok(ExitCode::from(exit::status(&report.outcome)))
}

/// The bytes `--stdin FILE` names (`-`: this process's stdin); empty without the flag.
pub(crate) fn read_stdin(path: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    Ok(match path {
        None => Vec::new(),
        Some(path) if path.as_os_str() == "-" => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read this process's stdin")?;
            bytes
        }
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read --stdin file {}", path.display()))?,
    })
}

/// `--env` flags to the guest's variables: `K` alone takes this process's value.
pub(crate) fn resolve_env(
    envs: Vec<(String, Option<String>)>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = Vec::with_capacity(envs.len());
    for (key, value) in envs {
        let value = match value {
            Some(value) => value,
            None => match std::env::var(&key) {
                Ok(value) => value,
                Err(_) => {
                    bail!("--env {key}: no variable {key} in this process's environment to pass on")
                }
            },
        };
        env.push((key, value));
    }
    Ok(env)
}

/// Prints a guest's `corral.log` records to stderr as they happen.
fn print_guest_log(event: &GuestEvent) {
    if let GuestEvent::Log(record) = event {
        eprintln!("[guest {}] {}", record.level.as_str(), record.message);
    }
}

/// A size for people, compact: `1.5MiB`.
pub(crate) fn size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes)
        .display()
        .iec()
        .to_string()
        .replace(' ', "")
}

/// The one-line summary printed to stderr after a run.
pub(crate) fn summary(report: &RunReport) -> String {
    let mut line = format!(
        "corral: {} fuel_used={} peak_memory={} wall={:.2?} cached={}",
        report.outcome.kind(),
        report.fuel_used,
        size(report.peak_memory_bytes),
        report.wall_time,
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
    }
}

pub(crate) fn parse_env(arg: &str) -> Result<(String, Option<String>), String> {
    let (key, value) = match arg.split_once('=') {
        Some((key, value)) => (key, Some(value.to_string())),
        None => (arg, None),
    };
    if key.is_empty() {
        return Err(format!("{arg:?} has no variable name before '='"));
    }
    Ok((key.to_string(), value))
}

pub(crate) fn parse_dir(arg: &str) -> Result<(PathBuf, String), String> {
    let (host, guest) = match arg.split_once("::") {
        Some((host, guest)) => (host, guest),
        None => (arg, arg),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!("{arg:?} is not HOST or HOST::GUEST"));
    }
    Ok((PathBuf::from(host), guest.to_string()))
}

pub(crate) fn parse_size(arg: &str) -> Result<u64, String> {
    arg.parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| format!("{arg:?} is not a size; try 64MiB, 512KiB or 1GiB"))
}

pub(crate) fn parse_duration(arg: &str) -> Result<Duration, String> {
    humantime::parse_duration(arg)
        .map_err(|e| format!("{arg:?} is not a duration ({e}); try 10s, 1m30s or 250ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_flags() {
        assert_eq!(
            parse_env("A=1=2").unwrap(),
            ("A".into(), Some("1=2".into()))
        );
        assert_eq!(parse_env("HOME").unwrap(), ("HOME".into(), None));
        assert!(parse_env("=x").is_err());
    }

    #[test]
    fn dir_flags() {
        assert_eq!(
            parse_dir("/tmp/x::/data").unwrap(),
            ("/tmp/x".into(), "/data".into())
        );
        assert_eq!(parse_dir("data").unwrap(), ("data".into(), "data".into()));
        assert!(parse_dir("::/data").is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert!(parse_size("lots")
            .unwrap_err()
            .contains("\"lots\" is not a size"));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("5").is_err());
    }
}
