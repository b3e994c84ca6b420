//! Compiling a module where its cost cannot hurt anyone else: in a child process (a re-exec of
//! the running executable) under a memory rlimit and a wall-clock kill, both from the
//! [`CompileBudget`].
//!
//! Cranelift cannot be cancelled mid-compile, and a module can be built to make it take minutes
//! and gigabytes (deeply nested blocks, a million functions). In a child process the budget is
//! enforced by the kernel: `RLIMIT_DATA` (not `RLIMIT_AS`: wasmtime reserves large address
//! ranges it never touches) fails its allocations past the memory budget, and the parent kills
//! it when the time budget, the run's timeout or a kill comes first. Nothing of an abandoned
//! compile outlives it.
//!
//! # The protocol
//! The parent writes one header line, `corral-compile 1 fuel=F epochs=E stack=N pool=P
//! memory=M`, then the module's binary, to the child's stdin. The child sets its rlimit, builds
//! an engine with those settings (so that its code loads into the parent's engine), compiles,
//! and writes [`ARTIFACT_MAGIC`], the artifact's sha256 and the artifact to stdout. The parent
//! checks the magic, the length and the digest before anything else looks at the bytes.
//! Exit status 3 is a compile limit the engine itself reported; a child that ran out of memory
//! says so on stderr (Rust's allocation-failure message, or the OS's `ENOMEM`).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::code_cache::Verified;
use super::config::SandboxConfig;
use super::control::RunControl;
use super::outcome::Outcome;

/// Where modules are compiled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Compiler {
    /// On the calling thread. Neither the [`CompileBudget`] nor a run's timeout or kill can stop
    /// a compile here: for tests and for embedding Corral's sandbox where modules are trusted.
    #[default]
    InProcess,
    /// In a child process, `program args...`, which must call [`compile_worker_main`]. The
    /// `corral` executable is one: `corral compile-worker`.
    Worker {
        /// The executable.
        program: PathBuf,
        /// Arguments that make it the compile worker.
        args: Vec<OsString>,
    },
}

impl Compiler {
    /// The running executable, re-run with `args` (`["compile-worker"]` for `corral`): through
    /// `/proc/self/exe`, so that a binary upgraded in place meanwhile is not the one run (its
    /// code would not load into this process's engine).
    pub fn this_executable(args: &[&str]) -> std::io::Result<Self> {
        let program = PathBuf::from("/proc/self/exe");
        if !program.exists() {
            std::env::current_exe()?;
        }
        Ok(Self::Worker {
            program,
            args: args.iter().map(OsString::from).collect(),
        })
    }
}

/// What compiling one module may take. A module over it ends as `compile_limit`, naming which.
/// The defaults compile the examples in well under a second and an honest module of a few MB in
/// a few seconds (see BENCHMARKS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompileBudget {
    /// Wall-clock time.
    pub time: Duration,
    /// Bytes of memory the compiler may allocate (its process's `RLIMIT_DATA`).
    pub memory_bytes: u64,
}

impl CompileBudget {
    /// Default time: 30 s.
    pub const DEFAULT_TIME: Duration = Duration::from_secs(30);
    /// Default memory: 2 GiB.
    pub const DEFAULT_MEMORY_BYTES: u64 = 2 << 30;
    /// The least memory budget the compiler can start in (its engine, threads and stacks).
    pub const MIN_MEMORY_BYTES: u64 = 64 << 20;
}

impl Default for CompileBudget {
    fn default() -> Self {
        Self {
            time: Self::DEFAULT_TIME,
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
        }
    }
}

/// Why a compile produced no code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CompileFailure {
    /// Over the budget, or over a limit of the engine's: the module's doing (`compile_limit`).
    Limit(String),
    /// The run waiting for it was killed or ran out of time (`killed`, `timeout`).
    Stopped(Outcome),
    /// Corral's failure: the worker could not start, crashed, or handed back bad bytes.
    Failed(String),
}

/// What a compile waits under: the run's deadline and kill.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wait<'a> {
    /// When the run's timeout passes.
    pub deadline: Option<Instant>,
    /// The run's kill.
    pub control: Option<&'a RunControl>,
}

impl Wait<'_> {
    /// The outcome to stop with, if the run was killed or is out of time.
    pub(crate) fn stopped(&self) -> Option<Outcome> {
        if self.control.is_some_and(RunControl::is_killed) {
            Some(Outcome::Killed)
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(Outcome::Timeout)
        } else {
            None
        }
    }
}

/// Starts an artifact on the worker's stdout.
pub(crate) const ARTIFACT_MAGIC: &[u8; 8] = b"CORRALW1";
const HEADER_PREFIX: &str = "corral-compile 1";
/// The worker's exit status for a limit the engine reported.
const EXIT_LIMIT: i32 = 3;
/// How often a waiting parent looks at the child, the kill and the clock.
const POLL: Duration = Duration::from_millis(10);
/// Bytes of the worker's stderr kept for the message.
const STDERR_KEPT: u64 = 8 << 10;

/// Compiles `binary` in a worker under `config`'s budget and `wait`, and returns the artifact,
/// its digest checked.
pub(crate) fn compile_in_worker(
    program: &Path,
    args: &[OsString],
    binary: &[u8],
    config: &SandboxConfig,
    wait: Wait<'_>,
) -> Result<Verified, CompileFailure> {
    if let Some(stopped) = wait.stopped() {
        return Err(CompileFailure::Stopped(stopped));
    }
    let budget = config.compile_budget;
    let started = Instant::now();
    let child = Command::new(program)
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CompileFailure::Failed(format!(
                "cannot start the compile worker {}: {e}",
                program.display()
            ))
        })?;
    // Whatever happens from here on, the worker does not outlive this function.
    let mut child = Reaped(child);
    let spawn_failed =
        |e: std::io::Error| CompileFailure::Failed(format!("cannot start a thread: {e}"));
    let header = format!(
        "{HEADER_PREFIX} fuel={} epochs={} stack={} pool={} memory={}\n",
        u8::from(config.fuel_metering),
        u8::from(config.epoch_interruption),
        config.max_wasm_stack,
        config
            .pool_slots
            .map_or("none".to_string(), |s| s.to_string()),
        budget.memory_bytes,
    );
    // The module goes in, and the artifact comes out, on threads of their own: either may be
    // larger than a pipe holds. The artifact cannot be larger than the worker's memory.
    let artifact_cap = budget.memory_bytes.saturating_add(1 << 20);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let thread = || std::thread::Builder::new().name("corral-compile-io".into());
    let stdout = match child.0.stdout.take() {
        Some(out) => {
            let done = done_tx.clone();
            Some(
                thread()
                    .spawn(move || {
                        let mut bytes = Vec::new();
                        let read = out.take(artifact_cap + 1).read_to_end(&mut bytes);
                        let _ = done.send(());
                        read.map(|_| bytes)
                    })
                    .map_err(spawn_failed)?,
            )
        }
        None => None,
    };
    let stderr = match child.0.stderr.take() {
        Some(err) => Some(
            thread()
                .spawn(move || {
                    let mut bytes = Vec::new();
                    let _ = err.take(STDERR_KEPT).read_to_end(&mut bytes);
                    String::from_utf8_lossy(&bytes).trim().to_string()
                })
                .map_err(spawn_failed)?,
        ),
        None => None,
    };
    drop(done_tx);
    if let Some(mut stdin) = child.0.stdin.take() {
        let input = [header.as_bytes(), binary].concat();
        thread()
            .spawn(move || {
                // A worker that died early closes the pipe; its exit status says why.
                let _ = stdin.write_all(&input);
            })
            .map_err(spawn_failed)?;
    }
    // A budget too far off to be a time is no time limit.
    let time_limit = started.checked_add(budget.time);
    let stop = loop {
        match done_rx.recv_timeout(POLL) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(stopped) = wait.stopped() {
            break Some(CompileFailure::Stopped(stopped));
        }
        if time_limit.is_some_and(|limit| Instant::now() >= limit) {
            break Some(CompileFailure::Limit(format!(
                "compiling the module took longer than the compile time budget of {}",
                humanize(budget.time)
            )));
        }
    };
    if stop.is_some() {
        let _ = child.0.kill();
    }
    let status = child
        .0
        .wait()
        .map_err(|e| CompileFailure::Failed(format!("cannot wait for the compile worker: {e}")))?;
    let stdout = stdout.map(|t| t.join());
    let message = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if let Some(stop) = stop {
        return Err(stop);
    }
    if !status.success() {
        let memory = [
            "memory allocation of",
            "Cannot allocate memory",
            "out of memory",
        ]
        .iter()
        .any(|m| message.contains(m));
        if memory {
            return Err(CompileFailure::Limit(format!(
                "compiling the module needed more than the compile memory budget of {}",
                bytesize::ByteSize(budget.memory_bytes).display().iec()
            )));
        }
        if status.code() == Some(EXIT_LIMIT) {
            return Err(CompileFailure::Limit(message));
        }
        return Err(CompileFailure::Failed(format!(
            "the compile worker failed ({status}): {message}"
        )));
    }
    let bytes = match stdout {
        Some(Ok(Ok(bytes))) => bytes,
        Some(Ok(Err(e))) => {
            return Err(CompileFailure::Failed(format!(
                "cannot read the compile worker's output: {e}"
            )))
        }
        _ => {
            return Err(CompileFailure::Failed(
                "the compile worker's output was lost".into(),
            ))
        }
    };
    if bytes.len() as u64 > artifact_cap {
        return Err(CompileFailure::Failed(format!(
            "the compile worker wrote more than {artifact_cap} bytes"
        )));
    }
    unwrap_artifact(bytes)
        .map_err(|e| CompileFailure::Failed(format!("the compile worker's artifact {e}")))
}

/// The artifact inside a worker's output, once its magic and digest check out.
pub(crate) fn unwrap_artifact(bytes: Vec<u8>) -> Result<Verified, String> {
    Verified::unframe(bytes, ARTIFACT_MAGIC).map_err(|e| format!("is refused: {e}"))
}

/// A worker that is killed and reaped when dropped, however its parent's function ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn humanize(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The compile worker: reads the header and a module from stdin, limits its own memory, compiles
/// and writes the artifact to stdout. The `corral compile-worker` subcommand is this.
pub fn compile_worker_main() -> ExitCode {
    match worker() {
        Ok(()) => ExitCode::SUCCESS,
        Err((status, message)) => {
            eprintln!("{message}");
            ExitCode::from(status)
        }
    }
}

fn worker() -> Result<(), (u8, String)> {
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    // The header is one short line; a longer one is not Corral's.
    for byte in (&mut stdin).bytes().take(512) {
        let byte = byte.map_err(|e| (1, format!("cannot read the header: {e}")))?;
        line.push(byte);
        if byte == b'\n' {
            break;
        }
    }
    if line.pop() != Some(b'\n') {
        return Err((1, "the header is not one line".to_string()));
    }
    let line = String::from_utf8(line).map_err(|_| (1, "the header is not UTF-8".to_string()))?;
    let (mut config, memory) = parse_header(&line).map_err(|e| (1, e))?;
    // A pool of one slot: the code is the same (a test loads it into a pool of many), and the
    // pool's tables are mapped up front, which would count against the memory budget.
    config.pool_slots = config.pool_slots.map(|_| 1);
    use rustix::process::{set_parent_process_death_signal, setrlimit, Resource, Rlimit, Signal};
    let limit = |bytes| Rlimit {
        current: Some(bytes),
        maximum: Some(bytes),
    };
    setrlimit(Resource::Data, limit(memory))
        // A worker that runs out of memory aborts: no core file of up to its whole budget.
        .and_then(|()| setrlimit(Resource::Core, limit(0)))
        // A worker whose parent died (a killed agent) has nobody to compile for.
        .and_then(|()| set_parent_process_death_signal(Some(Signal::KILL)))
        .map_err(|e| (1, format!("cannot limit the worker: {e}")))?;
    let mut binary = Vec::new();
    stdin
        .read_to_end(&mut binary)
        .map_err(|e| (1, format!("cannot read the module: {e}")))?;
    let engine = wasmtime::Engine::new(&super::engine::engine_config(&config))
        .map_err(|e| (1, format!("cannot configure the wasm engine: {e:#}")))?;
    let artifact = engine.precompile_module(&binary).map_err(|e| {
        let message = format!("{e:#}");
        if is_engine_limit(&message) {
            (EXIT_LIMIT as u8, message)
        } else {
            (1, message)
        }
    })?;
    let mut out = std::io::stdout().lock();
    out.write_all(ARTIFACT_MAGIC)
        .and_then(|()| out.write_all(&Sha256::digest(&artifact)))
        .and_then(|()| out.write_all(&artifact))
        .and_then(|()| out.flush())
        .map_err(|e| (1, format!("cannot write the artifact: {e}")))
}

/// Whether the engine refused a module for one of its implementation limits (a function too
/// large for Cranelift, for instance): the module's doing.
pub(crate) fn is_engine_limit(message: &str) -> bool {
    message.contains("Implementation limit exceeded")
}

/// The engine settings and memory budget a header line carries.
fn parse_header(line: &str) -> Result<(SandboxConfig, u64), String> {
    let rest = line
        .strip_prefix(HEADER_PREFIX)
        .ok_or_else(|| format!("not a compile request: {line:?}"))?;
    let mut config = SandboxConfig::default();
    let mut memory = None;
    let mut seen = std::collections::BTreeSet::new();
    for field in rest.split_whitespace() {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| format!("malformed field {field:?}"))?;
        if !seen.insert(key) {
            return Err(format!("field {key:?} given twice"));
        }
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("malformed {key}={value:?}"))
        };
        match key {
            "fuel" => config.fuel_metering = number()? != 0,
            "epochs" => config.epoch_interruption = number()? != 0,
            "stack" => config.max_wasm_stack = number()? as usize,
            "pool" if value == "none" => config.pool_slots = None,
            "pool" => {
                config.pool_slots =
                    Some(u32::try_from(number()?).map_err(|_| format!("pool={value:?}"))?)
            }
            "memory" => memory = Some(number()?),
            _ => return Err(format!("unknown field {key:?}")),
        }
    }
    match memory {
        Some(memory) if memory > 0 => Ok((config, memory)),
        _ => Err("no memory budget".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_the_engine_settings() {
        let (config, memory) =
            parse_header("corral-compile 1 fuel=0 epochs=1 stack=4096 pool=none memory=77")
                .unwrap();
        assert!(!config.fuel_metering);
        assert!(config.epoch_interruption);
        assert_eq!(config.max_wasm_stack, 4096);
        assert_eq!(config.pool_slots, None);
        assert_eq!(memory, 77);
        let (config, _) =
            parse_header("corral-compile 1 fuel=1 epochs=0 stack=1 pool=3 memory=1").unwrap();
        assert_eq!(config.pool_slots, Some(3));
        assert!(parse_header("corral-compile 2 memory=1").is_err());
        assert!(
            parse_header("corral-compile 1 fuel=1").is_err(),
            "no memory budget"
        );
        assert!(parse_header("corral-compile 1 memory=1 rm=-rf").is_err());
        assert!(parse_header("corral-compile 1 memory=0").is_err());
        assert!(parse_header("corral-compile 1 memory=1 memory=2").is_err());
    }

    #[test]
    fn an_artifact_is_taken_only_whole_and_matching_its_digest() {
        let artifact = b"native code".to_vec();
        let mut framed = ARTIFACT_MAGIC.to_vec();
        framed.extend_from_slice(&Sha256::digest(&artifact));
        framed.extend_from_slice(&artifact);
        assert_eq!(unwrap_artifact(framed.clone()).unwrap().bytes(), artifact);
        let mut flipped = framed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(unwrap_artifact(flipped).is_err());
        assert!(unwrap_artifact(framed[..framed.len() - 1].to_vec()).is_err());
        assert!(unwrap_artifact(framed[..20].to_vec()).is_err());
        assert!(unwrap_artifact(Vec::new()).is_err());
    }
}
