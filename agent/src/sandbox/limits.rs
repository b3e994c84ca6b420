//! The per-run limits a task is held to: fuel, linear memory, tables, wall-clock time, output.

use std::time::Duration;

/// What one run may consume. Every field is a hard cap; none is unlimited.
///
/// The defaults are the ones `corral run` uses when no flag is given: large enough for real ML
/// tasks on one core, small enough that a runaway guest is stopped within a minute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Fuel units the guest may burn; most wasm instructions cost one unit.
    pub fuel: u64,
    /// Bytes of linear memory, summed over all of the guest's memories.
    pub memory_bytes: u64,
    /// Elements in any one table (function tables of `call_indirect`).
    pub table_elements: u32,
    /// Wall-clock time from the start of instantiation to the end of `_start`.
    pub timeout: Duration,
    /// Bytes of stdout kept; the rest is counted and dropped, and the report says so.
    pub max_stdout_bytes: u64,
    /// Bytes of stderr kept, as for stdout.
    pub max_stderr_bytes: u64,
    /// Bytes by which the guest may grow files in its granted directories (writes, extending
    /// sizes; deleting gives nothing back); past it the run ends `disk_limit`.
    pub max_disk_bytes: u64,
}

impl Limits {
    /// Default fuel: ten billion units, a few seconds to a minute of compute.
    pub const DEFAULT_FUEL: u64 = 10_000_000_000;
    /// Default linear memory cap: 512 MiB.
    pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;
    /// Default table element cap.
    pub const DEFAULT_TABLE_ELEMENTS: u32 = 100_000;
    /// Default wall-clock timeout: 60 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default cap on each of stdout and stderr: 16 MiB.
    pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 << 20;
    /// Default disk quota: 256 MiB.
    pub const DEFAULT_MAX_DISK_BYTES: u64 = 256 << 20;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: Self::DEFAULT_FUEL,
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            table_elements: Self::DEFAULT_TABLE_ELEMENTS,
            timeout: Self::DEFAULT_TIMEOUT,
            max_stdout_bytes: Self::DEFAULT_MAX_OUTPUT_BYTES,
            max_stderr_bytes: Self::DEFAULT_MAX_OUTPUT_BYTES,
            max_disk_bytes: Self::DEFAULT_MAX_DISK_BYTES,
        }
    }
}
