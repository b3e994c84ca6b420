//! How a [`Sandbox`](super::Sandbox) is built ([`SandboxConfig`]), the constants its engine and
//! pool are sized by, and where compiled code is cached by default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::compiler::{CompileBudget, Compiler};

/// How a [`Sandbox`](super::Sandbox) is built. One per process is the intended use.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Largest module accepted, in bytes (binary or text form).
    pub max_module_bytes: u64,
    /// Where compiled code is cached across processes (in its subdirectory
    /// [`CODE_CACHE_SUBDIR`], private to this user, every entry verified before it is loaded);
    /// `None` disables the on-disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Bytes of compiled code the on-disk cache keeps; past it the least recently used entries
    /// are removed.
    pub max_cache_bytes: u64,
    /// Where modules are compiled: in a child process under [`SandboxConfig::compile_budget`]
    /// (what `corral` does), or on the calling thread with no budget (the library's default,
    /// for tests and trusted modules).
    pub compiler: Compiler,
    /// What compiling one module may take, in a compile worker.
    pub compile_budget: CompileBudget,
    /// Compiles that run at once; more wait, before their budget's clock starts (each may use
    /// its whole memory budget, and every core).
    pub max_concurrent_compiles: usize,
    /// Compiled modules kept in memory; the oldest admitted goes first.
    pub max_cached_modules: usize,
    /// Bytes of native stack wasm may use before the run ends in `stack_overflow`.
    pub max_wasm_stack: usize,
    /// How often the epoch advances when epochs time runs out (fuel metering off).
    pub epoch_tick: Duration,
    /// Run instances out of wasmtime's pooling allocator with this many slots: at most this
    /// many runs at once, and further runs wait for a slot before their clock starts. The pool
    /// reuses memory mappings, fiber stacks and instance state between runs, which makes a
    /// trivial run about seven times cheaper (see BENCHMARKS.md). `None`: map and unmap memory
    /// for every run, with no bound on concurrent runs.
    pub pool_slots: Option<u32>,
    /// Meter fuel. With it, the guest also yields to the executor every [`YIELD_FUEL`] units,
    /// which is where the wall-clock timeout and kills reach a computing guest, so no epoch
    /// checks are compiled in and no epoch ticker runs. Only turn this off to measure what
    /// metering costs: without it runs have no instruction budget, report `fuel_used` 0, and
    /// rely on epochs for timeouts.
    pub fuel_metering: bool,
    /// Epoch interruption, used only when fuel metering is off. Only turn both off to measure
    /// what the checks cost: then neither the wall-clock timeout nor a kill stops a guest that
    /// is computing (one parked in a host call still stops).
    pub epoch_interruption: bool,
}

/// Elements per table that a pooled instance slot holds. A module whose initial table is larger
/// is refused at admission (`invalid_module`, naming the limit); per-run caps above it are
/// clamped to it, so growing a table past it is that run's `memory_limit`.
pub const POOL_TABLE_ELEMENTS: u32 = corral_admission::MAX_TABLE_ELEMENTS as u32;

/// Fuel between two yields of a metered guest to the executor, where its timeout and kills are
/// checked and its fuel so far is published: about a millisecond of wasm.
pub const YIELD_FUEL: u64 = 1_000_000;

/// Bytes of linear memory a pooled slot holds per memory: all of a 32-bit address space.
pub(crate) const POOL_MEMORY_BYTES: u64 = corral_admission::MAX_MEMORY_BYTES;

/// The subdirectory of [`SandboxConfig::cache_dir`] that holds compiled code.
pub const CODE_CACHE_SUBDIR: &str = "code";

impl SandboxConfig {
    /// Default module size cap: 64 MiB.
    pub const DEFAULT_MAX_MODULE_BYTES: u64 = corral_admission::Policy::DEFAULT_MAX_MODULE_BYTES;
    /// Default number of pooled instance slots (concurrent runs).
    pub const DEFAULT_POOL_SLOTS: u32 = 16;
    /// Default size of the on-disk compiled-code cache: 1 GiB.
    pub const DEFAULT_MAX_CACHE_BYTES: u64 = 1 << 30;

    /// Whether runs are timed out and killed by epochs rather than fuel yields.
    pub(crate) fn uses_epochs(&self) -> bool {
        self.epoch_interruption && !self.fuel_metering
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            max_module_bytes: Self::DEFAULT_MAX_MODULE_BYTES,
            cache_dir: None,
            max_cache_bytes: Self::DEFAULT_MAX_CACHE_BYTES,
            compiler: Compiler::InProcess,
            compile_budget: CompileBudget::default(),
            max_concurrent_compiles: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_cached_modules: 256,
            max_wasm_stack: 512 << 10,
            epoch_tick: Duration::from_millis(5),
            pool_slots: Some(Self::DEFAULT_POOL_SLOTS),
            fuel_metering: true,
            epoch_interruption: true,
        }
    }
}

/// The default on-disk cache directory: `$CORRAL_CACHE_DIR`, else `$XDG_CACHE_HOME/corral`,
/// else `~/.cache/corral`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let env = |key| std::env::var_os(key).filter(|v| !v.is_empty());
    if let Some(dir) = env("CORRAL_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = env("XDG_CACHE_HOME") {
        return Some(Path::new(&dir).join("corral"));
    }
    env("HOME").map(|home| Path::new(&home).join(".cache").join("corral"))
}
