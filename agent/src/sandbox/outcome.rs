//! How a run ended ([`Outcome`]) and everything measured about it ([`RunReport`]).

use std::fmt;
use std::time::Duration;

/// How one run of a task ended.
///
/// Running out of fuel, memory or time is an outcome, not an error: the sandbox did its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `_start` returned, or the guest called `proc_exit(0)`.
    Success,
    /// The guest called `proc_exit` with a non-zero code.
    Exit {
        /// The code passed to `proc_exit`.
        code: i32,
    },
    /// The fuel budget was spent.
    OutOfFuel,
    /// The guest asked for more linear memory (or table space) than its cap, at instantiation
    /// or through `memory.grow`. Reported even when the guest ignored the failed grow.
    MemoryLimit,
    /// The wall-clock timeout passed.
    Timeout,
    /// The guest exhausted its wasm stack (usually unbounded recursion).
    StackOverflow,
    /// Any other trap: `unreachable`, an out-of-bounds access, a division by zero...
    Trap {
        /// The trap's message, as wasmtime gives it.
        message: String,
    },
    /// The module imports something the sandbox does not provide.
    LinkError {
        /// Names the missing import.
        message: String,
    },
    /// The bytes are not an acceptable module: not wasm, not valid, too large, or not a command.
    InvalidModule {
        /// The validator's (or the admission check's) reason.
        message: String,
    },
    /// Stopped on request, through [`RunControl::kill`](super::RunControl::kill).
    Killed,
    /// The guest grew files past its disk quota ([`Limits::max_disk_bytes`]).
    ///
    /// [`Limits::max_disk_bytes`]: super::Limits::max_disk_bytes
    DiskLimit,
    /// Compiling the module went over the compile budget (time or memory) or a limit of the
    /// engine's; it never ran.
    CompileLimit {
        /// Names the limit.
        message: String,
    },
}

impl Outcome {
    /// The outcome's stable name, as used in JSON and in the CLI's summary line.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Exit { .. } => "exit",
            Outcome::OutOfFuel => "out_of_fuel",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::Timeout => "timeout",
            Outcome::StackOverflow => "stack_overflow",
            Outcome::Trap { .. } => "trap",
            Outcome::LinkError { .. } => "link_error",
            Outcome::InvalidModule { .. } => "invalid_module",
            Outcome::Killed => "killed",
            Outcome::CompileLimit { .. } => "compile_limit",
            Outcome::DiskLimit => "disk_limit",
        }
    }

    /// The guest's exit code, for `success` (0) and `exit`; `None` for every other outcome.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Success => Some(0),
            Outcome::Exit { code } => Some(*code),
            _ => None,
        }
    }

    /// The message carried by `trap`, `link_error`, `invalid_module` and `compile_limit`.
    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Trap { message }
            | Outcome::LinkError { message }
            | Outcome::InvalidModule { message }
            | Outcome::CompileLimit { message } => Some(message),
            _ => None,
        }
    }

    /// Whether the run counts as a success (`success` only).
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exit { code } => write!(f, "exit({code})"),
            other => match other.message() {
                Some(message) => write!(f, "{}: {message}", other.kind()),
                None => f.write_str(other.kind()),
            },
        }
    }
}

/// One call of the guest's `corral.log` host function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// The message, decoded as UTF-8 (invalid sequences replaced).
    pub message: String,
}

/// Severity of a guest log record; the numbers are the guest ABI's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// 0
    Error,
    /// 1
    Warn,
    /// 2
    Info,
    /// 3 (and anything larger)
    Debug,
}

impl LogLevel {
    /// Decodes the ABI's level number.
    pub fn from_abi(level: i32) -> Self {
        match level {
            i32::MIN..=0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            _ => LogLevel::Debug,
        }
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// The guest's last `corral.progress` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all; 0 when the guest does not know.
    pub total: u64,
}

/// Something the guest said through the `corral` import module, delivered live to a
/// [`crate::sandbox::RunSpec::on_event`] observer.
#[derive(Clone, Debug, PartialEq)]
pub enum GuestEvent {
    /// `corral.progress(done, total)`.
    Progress(Progress),
    /// `corral.log(level, msg)`.
    Log(LogRecord),
    /// `corral.metric(name, value)`.
    Metric {
        /// The metric's name.
        name: String,
        /// Its value.
        value: f64,
    },
}

/// Everything the sandbox knows about one finished run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    /// How the run ended.
    pub outcome: Outcome,
    /// Fuel burned (0 when the sandbox was built without fuel metering). Exact for every
    /// outcome but `timeout` and `killed`, where it is a lower bound: those runs are cancelled
    /// where the guest yields (every [`YIELD_FUEL`](super::YIELD_FUEL) units) or waits in a
    /// host call, and fuel burned since its last flush is not seen.
    pub fuel_used: u64,
    /// Highest linear memory size reached, in bytes, summed over memories.
    pub peak_memory_bytes: u64,
    /// Wall time from the start of the run (admitting and compiling included) to the end of
    /// `_start`.
    pub wall_time: Duration,
    /// The part of [`RunReport::wall_time`] spent preparing the module (admission, compiling or
    /// loading cached code, linking); near zero when this process had it compiled.
    pub compile_time: Duration,
    /// Whether the compiled module was reused (from this process or the on-disk cache)
    /// rather than compiled for this run.
    pub cached: bool,
    /// Hex sha256 of the module's binary form.
    pub module_sha256: String,
    /// Captured stdout, at most the stdout cap.
    pub stdout: Vec<u8>,
    /// Captured stderr, at most the stderr cap.
    pub stderr: Vec<u8>,
    /// Whether stdout went past its cap (the excess was dropped).
    pub stdout_truncated: bool,
    /// Whether stderr went past its cap.
    pub stderr_truncated: bool,
    /// The guest's last progress report, if any.
    pub progress: Option<Progress>,
    /// The guest's log records, up to the log cap.
    pub logs: Vec<LogRecord>,
    /// Log records dropped past the cap.
    pub logs_dropped: u64,
    /// The guest's metrics, last value per name, in the order first seen.
    pub metrics: Vec<(String, f64)>,
    /// Calls the sandbox refused and counted rather than logging each (WASI socket calls): the
    /// first of a run is logged, the rest only counted here.
    pub guest_warnings: u64,
}

impl RunReport {
    /// A report for a module that never ran (refused at admission or by the compile budget, or
    /// stopped while it compiled).
    pub fn rejected(outcome: Outcome, module_sha256: String) -> Self {
        Self {
            outcome,
            fuel_used: 0,
            peak_memory_bytes: 0,
            wall_time: Duration::ZERO,
            compile_time: Duration::ZERO,
            cached: false,
            module_sha256,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            progress: None,
            logs: Vec::new(),
            logs_dropped: 0,
            metrics: Vec::new(),
            guest_warnings: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_exit_codes() {
        assert_eq!(Outcome::Success.exit_code(), Some(0));
        assert_eq!(Outcome::Exit { code: 3 }.exit_code(), Some(3));
        assert_eq!(Outcome::OutOfFuel.exit_code(), None);
        assert_eq!(Outcome::MemoryLimit.kind(), "memory_limit");
        let trap = Outcome::Trap {
            message: "wasm trap: wasm `unreachable` instruction executed".into(),
        };
        assert_eq!(
            trap.to_string(),
            "trap: wasm trap: wasm `unreachable` instruction executed"
        );
        assert_eq!(Outcome::Exit { code: 7 }.to_string(), "exit(7)");
    }

    #[test]
    fn log_levels_decode_from_abi_numbers() {
        assert_eq!(LogLevel::from_abi(-5), LogLevel::Error);
        assert_eq!(LogLevel::from_abi(1), LogLevel::Warn);
        assert_eq!(LogLevel::from_abi(2), LogLevel::Info);
        assert_eq!(LogLevel::from_abi(9), LogLevel::Debug);
    }
}
