//! The command-line arguments several commands share, and how their values are parsed: sizes,
//! durations, `K=V` labels, `K[=V]` variables, `HOST[::GUEST]` directories, `--stdin FILE`.
//! A value that does not parse is a usage error naming it, with an example of a good one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

/// Where the host is.
#[derive(Args, Debug, Clone)]
pub struct HostArg {
    /// The host's address [default: the `corral login` profile's, else
    /// http://127.0.0.1:7700].
    #[arg(long, value_name = "URL", env = "CORRAL_HOST", global = true)]
    pub host: Option<String>,
    /// The token to call with [default: --token-file, else CORRAL_TOKEN, else the `corral
    /// login` profile's].
    #[arg(long, value_name = "TOKEN", global = true)]
    pub token: Option<String>,
    /// A file holding the token (its first line).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The CA that signs the host's certificate, for an https:// host [default: the profile's,
    /// else the system's roots].
    #[arg(long, value_name = "FILE", env = "CORRAL_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text for people: a table, lines, or the guest's output and a summary.
    Text,
    /// JSON for programs.
    Json,
}

/// `-o text|json`, for the commands that print something.
#[derive(Args, Debug, Clone, Copy)]
pub struct FormatArg {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// The compile budget (`corral run`, `corral agent`, `corral dev`): what compiling one module
/// may take, in a compile worker (`corral compile-worker`, this executable re-run).
#[derive(Args, Debug, Clone, Copy)]
pub struct CompileArgs {
    /// Longest compiling one module may take; past it the task ends `compile_limit` (exit 137).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_compile_timeout)]
    pub compile_timeout: Duration,
    /// Most memory compiling one module may use (at least 64MiB); past it the task ends
    /// `compile_limit`.
    #[arg(long, value_name = "SIZE", default_value = "2GiB", value_parser = parse_compile_memory)]
    pub compile_memory: u64,
}

impl CompileArgs {
    /// The budget.
    pub fn budget(&self) -> corral_agent::sandbox::CompileBudget {
        corral_agent::sandbox::CompileBudget {
            time: self.compile_timeout,
            memory_bytes: self.compile_memory,
        }
    }

    /// The compile worker: this executable, re-run as `corral compile-worker`.
    pub fn compiler() -> anyhow::Result<corral_agent::sandbox::Compiler> {
        corral_agent::sandbox::Compiler::this_executable(&[COMPILE_WORKER])
            .context("cannot find this executable to run compile workers")
    }
}

/// A compile memory budget: a size of at least [`CompileBudget::MIN_MEMORY_BYTES`], which the
/// compiler needs to start at all.
///
/// [`CompileBudget::MIN_MEMORY_BYTES`]: corral_agent::sandbox::CompileBudget::MIN_MEMORY_BYTES
fn parse_compile_memory(arg: &str) -> Result<u64, String> {
    let min = corral_agent::sandbox::CompileBudget::MIN_MEMORY_BYTES;
    let size = parse_size(arg)?;
    if size < min {
        return Err(format!(
            "{arg:?} is less than the {} the compiler needs to start",
            bytesize::ByteSize(min).display().iec()
        ));
    }
    Ok(size)
}

/// A compile time budget: a duration over zero.
fn parse_compile_timeout(arg: &str) -> Result<Duration, String> {
    match parse_duration(arg)? {
        d if d.is_zero() => Err(format!("{arg:?} leaves no time to compile")),
        d => Ok(d),
    }
}

/// The hidden subcommand that is the compile worker.
pub const COMPILE_WORKER: &str = "compile-worker";

/// The module to run and the arguments its guest gets (`corral run`, `corral submit`).
#[derive(Args, Debug)]
pub struct ModuleArgs {
    /// The module: a .wasm binary or .wat text.
    #[arg(value_name = "MODULE")]
    pub module: PathBuf,
    /// Arguments passed to the guest, after MODULE (its argv[0] is MODULE as given).
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

/// `K=V` (a label or a constraint).
pub fn parse_label(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{arg:?} is not K=V")),
    }
}

/// `K=V` sets a guest variable, `K` passes this process's.
pub fn parse_env(arg: &str) -> Result<(String, Option<String>), String> {
    let (key, value) = match arg.split_once('=') {
        Some((key, value)) => (key, Some(value.to_string())),
        None => (arg, None),
    };
    if key.is_empty() {
        return Err(format!("{arg:?} has no variable name before '='"));
    }
    Ok((key.to_string(), value))
}

/// `HOST[::GUEST]`: a host directory and the path the guest opens it by (the same by default).
pub fn parse_dir(arg: &str) -> Result<(PathBuf, String), String> {
    let (host, guest) = match arg.split_once("::") {
        Some((host, guest)) => (host, guest),
        None => (arg, arg),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!("{arg:?} is not HOST or HOST::GUEST"));
    }
    Ok((PathBuf::from(host), guest.to_string()))
}

/// A size: `64MiB`, `512KiB`, `1GiB`, or bytes.
pub fn parse_size(arg: &str) -> Result<u64, String> {
    arg.parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| format!("{arg:?} is not a size; try 64MiB, 512KiB or 1GiB"))
}

/// A duration: `10s`, `1m30s`, `250ms`.
pub fn parse_duration(arg: &str) -> Result<Duration, String> {
    humantime::parse_duration(arg)
        .map_err(|e| format!("{arg:?} is not a duration ({e}); try 10s, 1m30s or 250ms"))
}

/// The bytes `--stdin FILE` names (`-`: this process's stdin); empty without the flag. More
/// than `max` bytes is an error, found without reading further.
pub fn read_stdin(path: Option<&Path>, max: u64) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match path {
        None => return Ok(bytes),
        Some(path) if path.as_os_str() == "-" => {
            std::io::stdin()
                .take(max + 1)
                .read_to_end(&mut bytes)
                .context("cannot read this process's stdin")?;
        }
        Some(path) => {
            std::fs::File::open(path)
                .and_then(|file| file.take(max + 1).read_to_end(&mut bytes))
                .with_context(|| format!("cannot read --stdin file {}", path.display()))?;
        }
    }
    if bytes.len() as u64 > max {
        bail!("--stdin is over {max} bytes, the most a task's stdin can be sent with");
    }
    Ok(bytes)
}

/// `--env` flags to the guest's variables: `K` alone takes this process's value.
pub fn resolve_env(envs: Vec<(String, Option<String>)>) -> anyhow::Result<Vec<(String, String)>> {
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
    fn label_flags() {
        assert_eq!(
            parse_label("zone=eu=1").unwrap(),
            ("zone".into(), "eu=1".into())
        );
        assert_eq!(parse_label("k=").unwrap(), ("k".into(), String::new()));
        assert!(parse_label("=v").is_err());
        assert!(parse_label("novalue").is_err());
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
