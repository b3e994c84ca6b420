//! How a [`Sandbox`](super::Sandbox) is built ([`SandboxConfig`]), the constants its engine and
//! pool are sized by, and where compiled code is cached by default.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a [`Sandbox`](super::Sandbox) is built. One per process is the intended use.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Largest module accepted, in bytes (binary or text form).
    pub max_module_bytes: u64,
    /// Where compiled code is cached across processes; `None` disables the on-disk cache.
    /// wasmtime's cache lives in its own subdirectory, [`WASMTIME_CACHE_SUBDIR`], because it
    /// prunes files it does not recognise in its directory.
    pub cache_dir: Option<PathBuf>,
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

/// The subdirectory of [`SandboxConfig::cache_dir`] that wasmtime's compiled-code cache owns.
pub const WASMTIME_CACHE_SUBDIR: &str = "wasmtime";

impl SandboxConfig {
    /// Default module size cap: 64 MiB.
    pub const DEFAULT_MAX_MODULE_BYTES: u64 = corral_admission::Policy::DEFAULT_MAX_MODULE_BYTES;
    /// Default number of pooled instance slots (concurrent runs).
    pub const DEFAULT_POOL_SLOTS: u32 = 16;

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
