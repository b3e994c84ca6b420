//! Running an admitted module: [`Sandbox::run_module`] makes a fresh store (fuel, limiter,
//! WASI context, guest record) in a pool slot, drives instantiation and `_start` as a future on
//! the calling (blocking) thread under the wall-clock timeout, selected with the kill, and
//! classifies how it ended.

use std::time::{Duration, Instant};

use wasmtime::{Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::classify::classify;
use super::config::{POOL_MEMORY_BYTES, POOL_TABLE_ELEMENTS, YIELD_FUEL};
use super::control::{FuelYields, RunControl};
use super::disk::DiskQuota;
use super::engine::epoch_ticks;
use super::guest_api::GuestRecord;
use super::limiter::Limiter;
use super::modules::PreparedModule;
use super::outcome::{Outcome, RunReport};
use super::output::CappedOutput;
use super::slots::SlotGate;
use super::spec::{RunSpec, StdinSource};
use super::{Sandbox, SandboxError};

/// The per-run state held by a wasmtime store.
pub(crate) struct RunState {
    /// Built only for modules that import WASI (or were granted dirs).
    pub(crate) wasi: Option<WasiP1Ctx>,
    pub(crate) limiter: Limiter,
    pub(crate) guest: GuestRecord,
    /// What the guest has grown files by, against its quota.
    pub(crate) disk: DiskQuota,
}

impl RunState {
    /// A state with no WASI context, no caps hit and nothing recorded (for tests of the
    /// linker).
    #[cfg(test)]
    pub(crate) fn empty() -> Self {
        Self {
            wasi: None,
            limiter: Limiter::new(0, 0),
            guest: GuestRecord::new(None),
            disk: DiskQuota::default(),
        }
    }
}

impl Sandbox {
    /// Runs an admitted module under `spec`, in a fresh store. Blocks until the run ends.
    pub fn run_module(
        &self,
        module: &PreparedModule,
        spec: &RunSpec,
    ) -> Result<RunReport, SandboxError> {
        self.run_module_after(module, spec, Duration::ZERO)
    }

    /// [`Sandbox::run_module`] for a run that already spent `compile_time` preparing its module:
    /// that much less of its timeout is left, and it counts in the report's wall time.
    pub fn run_module_after(
        &self,
        module: &PreparedModule,
        spec: &RunSpec,
        compile_time: Duration,
    ) -> Result<RunReport, SandboxError> {
        let inner = &*self.inner;
        let limits = &spec.limits;
        let timeout = limits.timeout.saturating_sub(compile_time);
        if timeout.is_zero() && !compile_time.is_zero() {
            // Compiling took all of it: no guest code runs.
            let mut report = RunReport::rejected(Outcome::Timeout, module.inner.sha256.clone());
            report.wall_time = compile_time;
            report.compile_time = compile_time;
            report.cached = true;
            return Ok(report);
        }
        self.check_grants(spec)?;
        let stdout = CappedOutput::new(limits.max_stdout_bytes);
        let stderr = CappedOutput::new(limits.max_stderr_bytes);
        // A module that imports no WASI never reaches the context; granted dirs still get one,
        // so that a bad grant is reported whatever the module.
        let wasi = if module.inner.uses_wasi || !spec.dirs.is_empty() || spec.stdin_source.is_some()
        {
            Some(wasi_context(spec, &stdout, &stderr)?)
        } else {
            None
        };
        // In a pool the slot's size is a hard ceiling too; clamp the caps to it so that the
        // limiter, not the pool, refuses growth past it and the run says `memory_limit`.
        let (memory_cap, table_cap) = match inner.slots {
            Some(_) => (
                limits.memory_bytes.min(POOL_MEMORY_BYTES),
                limits.table_elements.min(POOL_TABLE_ELEMENTS),
            ),
            None => (limits.memory_bytes, limits.table_elements),
        };
        // Declared before the store, so the slot is released only after the store is dropped.
        let _slot = inner.slots.as_ref().map(SlotGate::acquire);
        let state = RunState {
            wasi,
            limiter: Limiter::new(memory_cap, table_cap),
            guest: GuestRecord::new(spec.on_event.clone()),
            disk: DiskQuota {
                max_bytes: limits.max_disk_bytes,
                ..DiskQuota::default()
            },
        };
        let mut store = Store::new(&inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        let metering = inner.config.fuel_metering;
        if metering {
            store
                .set_fuel(limits.fuel)
                .and_then(|()| store.fuel_async_yield_interval(Some(YIELD_FUEL)))
                .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        }
        if inner.config.uses_epochs() {
            // Every epoch tick: stop if killed or out of time, else go on.
            let deadline = epoch_ticks(timeout, inner.config.epoch_tick);
            let mut ticks = 0u64;
            let control = spec.control.clone();
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(move |_| {
                ticks += 1;
                if control.as_ref().is_some_and(RunControl::is_killed) || ticks >= deadline {
                    return Ok(wasmtime::UpdateDeadline::Interrupt);
                }
                Ok(wasmtime::UpdateDeadline::Continue(1))
            });
        }

        let started = Instant::now();
        let pre = &module.inner.pre;
        let guest = FuelYields::new(
            async {
                let instance = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(instantiation_failed)?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await
            },
            spec.control.clone().filter(|_| metering),
        );
        // The timer is created inside the async block so that it belongs to the runtime
        // `block_on` polls it on. A kill also ends a guest parked in a host call.
        let control = spec.control.clone();
        let killed = async {
            match &control {
                Some(control) => control.killed().await,
                None => std::future::pending().await,
            }
        };
        let result = block_on(async {
            tokio::select! {
                result = tokio::time::timeout(timeout, guest) => result,
                () = killed => Ok(Err(wasmtime::Error::from(Trap::Interrupt))),
            }
        });
        let wall_time = started.elapsed() + compile_time;

        let killed = spec.control.as_ref().is_some_and(RunControl::is_killed);
        let cap_hit = store.data().limiter.cap_hit;
        let disk_hit = store.data().disk.hit;
        if let Ok(Err(error)) = &result {
            if !killed && !cap_hit && error.downcast_ref::<InstantiationFailed>().is_some() {
                return Err(SandboxError::Instantiate(format!("{error:#}")));
            }
        }
        let outcome = if killed {
            Outcome::Killed
        } else if disk_hit {
            Outcome::DiskLimit
        } else {
            classify(result, cap_hit)
        };
        let fuel_used = if metering {
            limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0))
        } else {
            0
        };
        if let Some(control) = &spec.control {
            control.set_fuel_used(fuel_used);
        }
        let state = store.into_data();
        let (stdout, stdout_truncated) = stdout.take();
        let (stderr, stderr_truncated) = stderr.take();
        Ok(RunReport {
            outcome,
            fuel_used,
            peak_memory_bytes: state.limiter.peak_memory as u64,
            wall_time,
            compile_time,
            cached: true,
            module_sha256: module.inner.sha256.clone(),
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            progress: state.guest.progress,
            logs: state.guest.logs,
            logs_dropped: state.guest.logs_dropped,
            metrics: state.guest.metrics,
            guest_warnings: state.guest.guest_warnings,
        })
    }
}

impl Sandbox {
    /// Refuses a directory grant that holds the compiled-code cache or lies inside it: a guest
    /// that could write there could plant native code for the next process to load.
    fn check_grants(&self, spec: &RunSpec) -> Result<(), SandboxError> {
        let Some(cache) = self.inner.code_cache.as_ref() else {
            return Ok(());
        };
        // Most runs are granted no directory: no path is resolved for them.
        if spec.dirs.is_empty() {
            return Ok(());
        }
        let cache = std::fs::canonicalize(cache.dir()).unwrap_or_else(|_| cache.dir().into());
        for dir in &spec.dirs {
            let Ok(host) = std::fs::canonicalize(&dir.host) else {
                // Opening it fails as a bad grant, with the reason.
                continue;
            };
            if cache.starts_with(&host) || host.starts_with(&cache) {
                return Err(SandboxError::Preopen {
                    host: dir.host.clone(),
                    guest: dir.guest.clone(),
                    message: format!(
                        "it holds or is inside the compiled-code cache {}, which no guest may reach",
                        cache.display()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Marks an instantiation error that is Corral's: raised before any guest code ran (no wasm
/// frame was on the stack), so not a trap, not the guest's exit, not a host call the guest
/// made from its start function with bad arguments; the memory cap is told apart by the
/// limiter.
#[derive(Debug)]
struct InstantiationFailed;

impl std::fmt::Display for InstantiationFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("instantiation failed")
    }
}

/// Keeps what the guest caused during instantiation as it is (a trap, an exit, an error that
/// went through guest frames), and marks anything else as [`InstantiationFailed`].
fn instantiation_failed(error: wasmtime::Error) -> wasmtime::Error {
    let guests = error.downcast_ref::<Trap>().is_some()
        || error.downcast_ref::<wasmtime_wasi::I32Exit>().is_some()
        || error.downcast_ref::<wasmtime::WasmBacktrace>().is_some();
    if guests {
        error
    } else {
        error.context(InstantiationFailed)
    }
}

/// The WASI preview1 context for one run: exactly what `spec` grants.
fn wasi_context(
    spec: &RunSpec,
    stdout: &CappedOutput,
    stderr: &CappedOutput,
) -> Result<WasiP1Ctx, SandboxError> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.arg(&spec.program)
        .args(&spec.args)
        .envs(&spec.env)
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .allow_blocking_current_thread(true);
    match &spec.stdin_source {
        None => {
            wasi.stdin(MemoryInputPipe::new(spec.stdin.clone()));
        }
        Some(StdinSource::File(path)) => {
            let file = std::fs::File::open(path).map_err(|e| SandboxError::Stdin {
                path: path.clone(),
                message: e.to_string(),
            })?;
            wasi.stdin(wasmtime_wasi::cli::InputFile::new(file));
        }
        Some(StdinSource::Inherit) => {
            wasi.stdin(std::io::stdin());
        }
    }
    for dir in &spec.dirs {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| SandboxError::Preopen {
                host: dir.host.clone(),
                guest: dir.guest.clone(),
                message: format!("{e:#}"),
            })?;
    }
    Ok(wasi.build_p1())
}

/// Drives a future to completion on this thread: inside a tokio context (a blocking-pool
/// thread) with the ambient runtime, elsewhere with a runtime kept per thread.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("building the sandbox thread's tokio runtime");
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(future),
        Err(_) => RUNTIME.with(|runtime| runtime.block_on(future)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_not_the_guests_doing_is_marked_an_instantiation_failure() {
        // A trap during instantiation (a start function, a segment out of bounds) and an exit
        // are the guest's; anything else (the engine could not map memory) is Corral's.
        let trap = instantiation_failed(wasmtime::Error::from(Trap::MemoryOutOfBounds));
        assert!(trap.downcast_ref::<InstantiationFailed>().is_none());
        assert!(trap.downcast_ref::<Trap>().is_some());
        let exit = instantiation_failed(wasmtime::Error::from(wasmtime_wasi::I32Exit(3)));
        assert!(exit.downcast_ref::<InstantiationFailed>().is_none());
        let mmap = instantiation_failed(wasmtime::Error::msg("failed to mmap a memory"));
        assert!(mmap.downcast_ref::<InstantiationFailed>().is_some());
        assert!(format!("{mmap:#}").contains("failed to mmap a memory"));
    }
}
