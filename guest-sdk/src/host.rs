//! Reporting to Corral while the task runs: progress, logs and metrics.
//!
//! These call the host functions of the `corral` import module. A module imports only the
//! functions it calls, so a task that never calls them runs under any WASI runtime. Outside
//! wasm (a native build of the same program) they do nothing, so the program still runs.
//!
//! | import                                             | Rust                 |
//! |----------------------------------------------------|----------------------|
//! | `corral.progress(done: i64, total: i64)`           | [`progress`]         |
//! | `corral.log(level: i32, ptr: i32, len: i32)`       | [`log`], [`info`]... |
//! | `corral.metric(name_ptr: i32, name_len: i32, f64)` | [`metric`]           |
//!
//! Log levels are 0 error, 1 warn, 2 info, 3 debug. Corral keeps the last progress, the first
//! 1,000 log records (each cut to 4 KiB) and the last value of up to 256 metrics.

/// Severity of a log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something looks wrong.
    Warn = 1,
    /// Normal progress information.
    Info = 2,
    /// Detail for debugging.
    Debug = 3,
}

#[cfg(target_arch = "wasm32")]
mod sys {
    #[link(wasm_import_module = "corral")]
    extern "C" {
        pub fn progress(done: i64, total: i64);
        pub fn log(level: i32, ptr: *const u8, len: usize);
        pub fn metric(name_ptr: *const u8, name_len: usize, value: f64);
    }
}

/// Reports that `done` of `total` units of work are finished (`total` 0: unknown).
pub fn progress(done: u64, total: u64) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: plain integers cross the boundary; the host reads no guest memory.
    unsafe {
        sys::progress(done as i64, total as i64)
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (done, total);
}

/// Sends a log record to Corral (not to stderr).
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the pointer and length describe `message`, which outlives the call; the host
    // only reads that range.
    unsafe {
        sys::log(level as i32, message.as_ptr(), message.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// Logs at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Logs at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Logs at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message)
}

/// Logs at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Records the current value of a named metric (e.g. `loss`); the last value per name is kept.
pub fn metric(name: &str, value: f64) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the pointer and length describe `name`, which outlives the call; the host only
    // reads that range.
    unsafe {
        sys::metric(name.as_ptr(), name.len(), value)
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (name, value);
}
