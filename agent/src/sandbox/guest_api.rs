//! The `corral` import module: host functions a guest may call to report progress, logs and
//! metrics while it runs. Their ABI is documented for task authors in `corral-guest`.
//!
//! | import                                              | effect                                  |
//! |-----------------------------------------------------|-----------------------------------------|
//! | `progress(done: i64, total: i64)`                   | records the latest progress             |
//! | `log(level: i32, ptr: i32, len: i32)`               | records a log line (0 error .. 3 debug) |
//! | `metric(name_ptr: i32, name_len: i32, value: f64)`  | records the latest value of a metric    |
//!
//! Strings are UTF-8 in the guest's exported `memory`; a range outside it traps the guest with
//! a message naming the call. Everything recorded is capped, so a chatty guest cannot grow the
//! host's memory without bound.

use std::sync::Arc;

use wasmtime::{Caller, Extern, Linker};

use super::execute::RunState;
use crate::sandbox::outcome::{GuestEvent, LogLevel, LogRecord, Progress};

/// The import module name guests use.
pub const IMPORT_MODULE: &str = "corral";

/// Longest log message kept, in bytes; longer ones are cut (on a character boundary).
pub const MAX_LOG_MESSAGE_BYTES: usize = 4096;
/// Log records kept per run; later ones are counted in `logs_dropped`.
pub const MAX_LOG_RECORDS: usize = 1000;
/// Distinct metric names kept per run; values for further names are ignored.
pub const MAX_METRICS: usize = 256;
/// Longest metric name, in bytes.
pub const MAX_METRIC_NAME_BYTES: usize = 128;

/// A live observer of guest events.
pub type EventSink = Arc<dyn Fn(&GuestEvent) + Send + Sync>;

/// What the guest reported through the `corral` module during one run.
#[derive(Default)]
pub(crate) struct GuestRecord {
    pub(crate) progress: Option<Progress>,
    pub(crate) logs: Vec<LogRecord>,
    pub(crate) logs_dropped: u64,
    pub(crate) metrics: Vec<(String, f64)>,
    /// Calls the sandbox refused and counted rather than logged (`sockets.rs`).
    pub(crate) guest_warnings: u64,
    pub(crate) sink: Option<EventSink>,
}

impl GuestRecord {
    pub(crate) fn new(sink: Option<EventSink>) -> Self {
        Self {
            sink,
            ..Self::default()
        }
    }

    fn emit(&self, event: GuestEvent) {
        if let Some(sink) = &self.sink {
            sink(&event);
        }
    }

    fn progress(&mut self, done: u64, total: u64) {
        let progress = Progress { done, total };
        self.progress = Some(progress);
        self.emit(GuestEvent::Progress(progress));
    }

    fn log(&mut self, record: LogRecord) {
        if self.logs.len() < MAX_LOG_RECORDS {
            self.logs.push(record.clone());
        } else {
            self.logs_dropped += 1;
        }
        self.emit(GuestEvent::Log(record));
    }

    fn metric(&mut self, name: String, value: f64) {
        if let Some(slot) = self.metrics.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else if self.metrics.len() < MAX_METRICS {
            self.metrics.push((name.clone(), value));
        } else {
            return;
        }
        self.emit(GuestEvent::Metric { name, value });
    }
}

/// Defines the `corral` import module in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "progress",
        |mut caller: Caller<'_, RunState>, done: i64, total: i64| {
            caller.data_mut().guest.progress(done as u64, total as u64);
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "log",
        |mut caller: Caller<'_, RunState>,
         level: i32,
         ptr: i32,
         len: i32|
         -> wasmtime::Result<()> {
            let message = guest_string(&mut caller, "corral.log", ptr, len, MAX_LOG_MESSAGE_BYTES)?;
            let level = LogLevel::from_abi(level);
            caller.data_mut().guest.log(LogRecord { level, message });
            Ok(())
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "metric",
        |mut caller: Caller<'_, RunState>,
         ptr: i32,
         len: i32,
         value: f64|
         -> wasmtime::Result<()> {
            let name = guest_string(
                &mut caller,
                "corral.metric",
                ptr,
                len,
                MAX_METRIC_NAME_BYTES,
            )?;
            caller.data_mut().guest.metric(name, value);
            Ok(())
        },
    )?;
    Ok(())
}

/// Reads `len` bytes at `ptr` of the guest's `memory` as UTF-8 (lossy), cut to `cap` bytes.
fn guest_string(
    caller: &mut Caller<'_, RunState>,
    call: &str,
    ptr: i32,
    len: i32,
    cap: usize,
) -> wasmtime::Result<String> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        wasmtime::bail!("{call}: the module exports no `memory` to read the string from");
    };
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = memory.data(&caller);
    let Some(bytes) = start.checked_add(len).and_then(|end| data.get(start..end)) else {
        wasmtime::bail!(
            "{call}: string at {start:#x} of {len} bytes is outside linear memory ({} bytes)",
            data.len()
        );
    };
    let bytes = &bytes[..len.min(cap)];
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if len > cap {
        // The cut may have split a character, which from_utf8_lossy turned into U+FFFD; keep it
        // as the visible mark that the message was cut.
        text.push('…');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_keep_the_last_value_per_name_and_cap_names() {
        let mut record = GuestRecord::new(None);
        record.metric("loss".into(), 1.0);
        record.metric("loss".into(), 0.5);
        assert_eq!(record.metrics, vec![("loss".to_string(), 0.5)]);
        for i in 0..MAX_METRICS + 10 {
            record.metric(format!("m{i}"), i as f64);
        }
        assert_eq!(record.metrics.len(), MAX_METRICS);
    }

    #[test]
    fn logs_past_the_cap_are_counted_not_kept() {
        let mut record = GuestRecord::new(None);
        for _ in 0..MAX_LOG_RECORDS + 3 {
            record.log(LogRecord {
                level: LogLevel::Info,
                message: "x".into(),
            });
        }
        assert_eq!(record.logs.len(), MAX_LOG_RECORDS);
        assert_eq!(record.logs_dropped, 3);
    }

    #[test]
    fn events_reach_the_sink() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink_seen = seen.clone();
        let mut record = GuestRecord::new(Some(Arc::new(move |e: &GuestEvent| {
            sink_seen.lock().unwrap().push(e.clone())
        })));
        record.progress(3, 10);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![GuestEvent::Progress(Progress { done: 3, total: 10 })]
        );
    }
}
