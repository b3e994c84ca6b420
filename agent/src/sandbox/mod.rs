//! The sandbox: runs one WASM task under enforced fuel, memory, table, time and output limits,
//! with exactly the WASI capabilities its [`RunSpec`] grants, and reports an [`Outcome`].
//!
//! This module is the only place in Corral that names wasmtime.
//!
//! # Life of a run
//! 1. **Admission** ([`Sandbox::prepare`]): size cap, WAT to binary, sha256, validation, a
//!    `_start` export, compilation (once per sha256 per process, and served from wasmtime's
//!    on-disk cache across processes) and linking into an [`wasmtime::InstancePre`] that every
//!    later run of the same module reuses. A module that fails here yields `invalid_module` or
//!    `link_error` and never runs.
//! 2. **Execution** ([`Sandbox::run_module`]): a fresh [`wasmtime::Store`] with a fuel budget, a
//!    resource limiter, an epoch deadline and a WASI preview1 context; `_start` is driven as a
//!    future on the calling (blocking) thread under a wall-clock timeout, so a guest parked in a
//!    host call such as a long `poll_oneoff` sleep is stopped as surely as one spinning in wasm.
//! 3. **Classification**: the run's result becomes exactly one [`Outcome`].
//!
//! # Threads
//! [`Sandbox::run`] blocks its thread for as long as the guest runs. Never call it on a tokio
//! worker thread (it panics there, rather than stalling the runtime); from async code use
//! [`Sandbox::run_async`], which moves the run onto tokio's blocking pool.

mod guest_api;
mod limiter;
mod limits;
mod outcome;
mod output;
mod sleep;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{Cache, CacheConfig, Config, Engine, InstancePre, Linker, Module, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

pub use guest_api::{
    EventSink, IMPORT_MODULE, MAX_LOG_MESSAGE_BYTES, MAX_LOG_RECORDS, MAX_METRICS,
    MAX_METRIC_NAME_BYTES,
};
pub use limits::Limits;
pub use outcome::{GuestEvent, LogLevel, LogRecord, Outcome, Progress, RunReport};

use guest_api::GuestRecord;
use limiter::Limiter;
use output::CappedOutput;

/// How a [`Sandbox`] is built. One per process is the intended use.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Largest module accepted, in bytes (binary or text form).
    pub max_module_bytes: u64,
    /// Where compiled code is cached across processes; `None` disables the on-disk cache.
    /// wasmtime's cache lives in its own subdirectory, [`WASMTIME_CACHE_SUBDIR`], because it
    /// prunes files it does not recognise in its directory.
    pub cache_dir: Option<PathBuf>,
    /// Compiled modules kept in memory, most recently admitted first out last.
    pub max_cached_modules: usize,
    /// Bytes of native stack wasm may use before the run ends in `stack_overflow`.
    pub max_wasm_stack: usize,
    /// How often the epoch advances; the resolution of wall-clock timeouts.
    pub epoch_tick: Duration,
    /// Run instances out of wasmtime's pooling allocator with this many slots: at most this
    /// many runs at once, and further runs wait for a slot before their clock starts. The pool
    /// reuses memory mappings, fiber stacks and instance state between runs, which makes a
    /// trivial run about seven times cheaper (see BENCHMARKS.md). `None`: map and unmap memory
    /// for every run, with no bound on concurrent runs.
    pub pool_slots: Option<u32>,
    /// Meter fuel. With it, the guest also yields to the executor every [`YIELD_FUEL`] units,
    /// which is where the wall-clock timeout and kills reach a computing guest, so no epoch
    /// checks are compiled in. Only turn this off to measure what metering costs: without it
    /// runs have no instruction budget, report `fuel_used` 0, and rely on epochs for timeouts.
    pub fuel_metering: bool,
    /// Epoch interruption, used only when fuel metering is off. Only turn both off to measure
    /// what the checks cost: then neither the wall-clock timeout nor a kill stops a guest that
    /// is computing (one parked in a host call still stops).
    pub epoch_interruption: bool,
}

/// Elements per table that a pooled instance slot holds. A module whose initial table is larger
/// is refused at admission (`invalid_module`, naming the limit); per-run caps above it are
/// clamped to it, so growing a table past it is that run's `memory_limit`.
pub const POOL_TABLE_ELEMENTS: u32 = Limits::DEFAULT_TABLE_ELEMENTS;
/// Fuel between two yields of a metered guest to the executor, where its timeout and kills are
/// checked and its fuel so far is published: about a millisecond of wasm.
pub const YIELD_FUEL: u64 = 1_000_000;

/// Bytes of linear memory a pooled slot holds per memory: all of a 32-bit address space.
const POOL_MEMORY_BYTES: u64 = 4 << 30;

/// The subdirectory of [`SandboxConfig::cache_dir`] that wasmtime's compiled-code cache owns.
pub const WASMTIME_CACHE_SUBDIR: &str = "wasmtime";

impl SandboxConfig {
    /// Default module size cap: 64 MiB.
    pub const DEFAULT_MAX_MODULE_BYTES: u64 = 64 << 20;
    /// Default number of pooled instance slots (concurrent runs).
    pub const DEFAULT_POOL_SLOTS: u32 = 16;
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

/// A failure of the host side of a run: the module is not to blame, so it is an error rather
/// than an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The wasmtime engine could not be configured.
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
    /// The compiled-code cache directory could not be set up.
    #[error("cannot use compiled-code cache directory {}: {message}", path.display())]
    Cache {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A granted directory could not be opened on the host.
    #[error("cannot open directory {} to grant it as {guest:?}: {message}", host.display())]
    Preopen {
        /// The host path.
        host: PathBuf,
        /// The guest path it was to appear as.
        guest: String,
        /// What went wrong.
        message: String,
    },
    /// The run's blocking task was cancelled or panicked.
    #[error("the sandbox thread running the task failed: {0}")]
    Join(String),
}

/// A host directory granted to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// The path the guest opens it by (e.g. `/data`).
    pub guest: String,
    /// Whether the guest may create, write and delete inside it.
    pub writable: bool,
}

impl DirGrant {
    /// Grants `host` as `guest`, read-only.
    pub fn read_only(host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            guest: guest.into(),
            writable: false,
        }
    }

    /// Grants `host` as `guest`, read-write.
    pub fn read_write(host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        Self {
            writable: true,
            ..Self::read_only(host, guest)
        }
    }
}

/// Everything a run is given. The guest sees nothing else: no host environment, no files but
/// the granted directories, no sockets.
#[derive(Clone, Default)]
pub struct RunSpec {
    /// `argv[0]`.
    pub program: String,
    /// `argv[1..]`.
    pub args: Vec<String>,
    /// The guest's entire environment.
    pub env: Vec<(String, String)>,
    /// The guest's stdin; it reads end-of-file after these bytes. Shared, not copied, by the
    /// runs given it.
    pub stdin: bytes::Bytes,
    /// Host directories the guest may open.
    pub dirs: Vec<DirGrant>,
    /// Caps on what the run may consume.
    pub limits: Limits,
    /// Called on the run's thread for every progress, log and metric call of the guest.
    pub on_event: Option<EventSink>,
    /// Lets another thread kill the run and read its fuel use while it runs.
    pub control: Option<RunControl>,
}

/// A handle on a run in progress: kill it, or read how much fuel it has used so far. Cheap to
/// clone; give one to [`RunSpec::control`] and keep another.
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    inner: Arc<ControlState>,
}

#[derive(Debug, Default)]
struct ControlState {
    killed: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
    fuel_used: std::sync::atomic::AtomicU64,
}

impl RunControl {
    /// A new handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the run: it ends with [`Outcome::Killed`] within one fuel-yield interval (about a
    /// millisecond of wasm), whether the guest is running wasm or parked in a host call. Killing before the run starts makes it
    /// end at once; killing after it ended does nothing.
    pub fn kill(&self) {
        self.inner
            .killed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.notify.notify_waiters();
        self.inner.notify.notify_one();
    }

    /// Whether [`RunControl::kill`] was called.
    pub fn is_killed(&self) -> bool {
        self.inner.killed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Fuel used so far: while the run is in wasm, counted in whole fuel-yield intervals
    /// ([`YIELD_FUEL`]), so a lower bound until the run ends, when it is the report's figure.
    pub fn fuel_used(&self) -> u64 {
        self.inner
            .fuel_used
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_fuel_used(&self, fuel: u64) {
        self.inner
            .fuel_used
            .store(fuel, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for RunSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env)
            .field("stdin_bytes", &self.stdin.len())
            .field("dirs", &self.dirs)
            .field("limits", &self.limits)
            .field("on_event", &self.on_event.is_some())
            .field("control", &self.control.is_some())
            .finish()
    }
}

/// A module that passed admission: compiled and linked, ready to instantiate cheaply.
#[derive(Clone)]
pub struct PreparedModule {
    inner: Arc<Compiled>,
}

struct Compiled {
    sha256: String,
    pre: InstancePre<RunState>,
    /// It imports from `wasi_snapshot_preview1`; a run of one that does not needs no WASI
    /// context (and skips building it).
    uses_wasi: bool,
}

impl PreparedModule {
    /// Hex sha256 of the module's binary form.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }
}

/// The result of admission: a runnable module, and whether this admission compiled it.
#[derive(Clone)]
pub struct Admitted {
    /// The module.
    pub module: PreparedModule,
    /// True when the compiled code was reused (this process, or the on-disk cache).
    pub cached: bool,
}

/// A module refused at admission, with the outcome that says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Hex sha256 of the bytes as given (of the binary form where the text parsed).
    pub sha256: String,
    /// `invalid_module` or `link_error`.
    pub outcome: Outcome,
}

/// The per-run state held by a wasmtime store.
pub(crate) struct RunState {
    /// Built only for modules that import WASI (or were granted dirs).
    wasi: Option<WasiP1Ctx>,
    limiter: Limiter,
    guest: GuestRecord,
}

type Slot = Arc<OnceLock<Result<Arc<Compiled>, Outcome>>>;

/// Compiled modules by sha256; each slot is filled exactly once, so concurrent admissions of
/// the same module compile it once.
#[derive(Default)]
struct ModuleCache {
    slots: HashMap<[u8; 32], Slot>,
    order: VecDeque<[u8; 32]>,
}

struct Inner {
    config: SandboxConfig,
    engine: Engine,
    linker: Linker<RunState>,
    disk_cache: Option<Cache>,
    /// Serialises compilations so that the disk cache's hit counter can be attributed to one.
    compile_lock: Mutex<()>,
    /// Free pooled instance slots, when pooling.
    slots: Option<SlotGate>,
    modules: Mutex<ModuleCache>,
}

/// The WASM task executor. Cheap to clone; clones share the engine and the module caches.
///
/// ```
/// use corral_agent::sandbox::{Outcome, RunSpec, Sandbox, SandboxConfig};
///
/// let sandbox = Sandbox::new(SandboxConfig::default())?;
/// let wat = br#"(module (func (export "_start") (loop br 0)))"#;
/// let mut spec = RunSpec::default();
/// spec.limits.fuel = 100_000;
/// let report = sandbox.run(wat, &spec)?;
/// assert_eq!(report.outcome, Outcome::OutOfFuel);
/// assert_eq!(report.fuel_used, 100_000);
/// # Ok::<(), corral_agent::sandbox::SandboxError>(())
/// ```
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl Sandbox {
    /// Builds the engine (Cranelift, fuel, epochs, bounded stack, no threads or shared memory),
    /// the linker (WASI preview1 and the `corral` module) and starts the epoch ticker.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let mut wasm = engine_config(&config);
        let disk_cache = match &config.cache_dir {
            Some(dir) => {
                // wasmtime wants an absolute path.
                let dir = std::path::absolute(dir.join(WASMTIME_CACHE_SUBDIR))
                    .unwrap_or_else(|_| dir.join(WASMTIME_CACHE_SUBDIR));
                let cache_error = |message: String| SandboxError::Cache {
                    path: dir.clone(),
                    message,
                };
                std::fs::create_dir_all(&dir).map_err(|e| cache_error(e.to_string()))?;
                let mut cache_config = CacheConfig::new();
                cache_config.with_directory(&dir);
                let cache = Cache::new(cache_config).map_err(|e| cache_error(format!("{e:#}")))?;
                wasm.cache(Some(cache.clone()));
                Some(cache)
            }
            None => None,
        };
        if let Some(slots) = config.pool_slots {
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            pool.total_core_instances(slots)
                .total_memories(slots * limiter::MAX_MEMORIES as u32)
                .total_tables(slots * limiter::MAX_TABLES as u32)
                .total_stacks(slots)
                .max_memories_per_module(limiter::MAX_MEMORIES as u32)
                .max_tables_per_module(limiter::MAX_TABLES as u32)
                .max_memory_size(POOL_MEMORY_BYTES as usize)
                .table_elements(POOL_TABLE_ELEMENTS as usize)
                .linear_memory_keep_resident(64 << 10);
            wasm.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm).map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, sleep::wasi)
            .and_then(|()| sleep::add_to_linker(&mut linker))
            .and_then(|()| guest_api::add_to_linker(&mut linker))
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        start_epoch_ticker(&engine, config.epoch_tick);
        Ok(Self {
            inner: Arc::new(Inner {
                slots: config.pool_slots.map(SlotGate::new),
                config,
                engine,
                linker,
                disk_cache,
                compile_lock: Mutex::new(()),
                modules: Mutex::new(ModuleCache::default()),
            }),
        })
    }

    /// The configuration this sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Admits a module given as wasm binary or WAT text: checks its size, validates it,
    /// requires a `_start` export, compiles it (once per sha256) and links it.
    pub fn prepare(&self, bytes: &[u8]) -> Result<Admitted, Rejection> {
        let inner = &*self.inner;
        let invalid = |sha256: String, message: String| Rejection {
            sha256,
            outcome: Outcome::InvalidModule { message },
        };
        if bytes.len() as u64 > inner.config.max_module_bytes {
            return Err(invalid(
                sha256_hex(&Sha256::digest(bytes).into()),
                format!(
                    "module is {} bytes, over the {}-byte cap",
                    bytes.len(),
                    inner.config.max_module_bytes
                ),
            ));
        }
        let binary = to_binary(bytes)
            .map_err(|message| invalid(sha256_hex(&Sha256::digest(bytes).into()), message))?;
        let digest: [u8; 32] = Sha256::digest(&binary).into();
        let sha256 = sha256_hex(&digest);

        let slot = {
            let mut modules = inner.modules.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = modules.slots.get(&digest) {
                slot.clone()
            } else {
                let slot = Slot::default();
                modules.slots.insert(digest, slot.clone());
                modules.order.push_back(digest);
                while modules.order.len() > inner.config.max_cached_modules.max(1) {
                    if let Some(old) = modules.order.pop_front() {
                        modules.slots.remove(&old);
                    }
                }
                slot
            }
        };
        let mut compiled_here = None;
        let result = slot.get_or_init(|| {
            let (result, from_disk) = self.compile(&binary, sha256.clone());
            compiled_here = Some(from_disk);
            result
        });
        match result {
            Ok(compiled) => Ok(Admitted {
                module: PreparedModule {
                    inner: compiled.clone(),
                },
                cached: compiled_here.unwrap_or(true),
            }),
            Err(outcome) => Err(Rejection {
                sha256,
                outcome: outcome.clone(),
            }),
        }
    }

    /// Validates, compiles and links; the flag says whether the code came from the disk cache.
    fn compile(&self, binary: &[u8], sha256: String) -> (Result<Arc<Compiled>, Outcome>, bool) {
        let inner = &*self.inner;
        if let Err(e) = Module::validate(&inner.engine, binary) {
            let message = format!("{e:#}");
            return (Err(Outcome::InvalidModule { message }), false);
        }
        let (module, from_disk) = {
            let _serial = inner
                .compile_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let hits_before = inner.disk_cache.as_ref().map(Cache::cache_hits);
            let module = Module::from_binary(&inner.engine, binary);
            let hits_after = inner.disk_cache.as_ref().map(Cache::cache_hits);
            (module, hits_after > hits_before)
        };
        let module = match module {
            Ok(module) => module,
            Err(e) => {
                let message = format!("cannot compile: {e:#}");
                return (Err(Outcome::InvalidModule { message }), false);
            }
        };
        match module.get_export("_start") {
            Some(wasmtime::ExternType::Func(ty))
                if ty.params().len() == 0 && ty.results().len() == 0 => {}
            Some(_) => {
                let message = "`_start` must be a function taking and returning nothing".into();
                return (Err(Outcome::InvalidModule { message }), from_disk);
            }
            None => {
                let message = "module exports no `_start` function: a task must be a WASI \
                               command module (built for wasm32-wasip1)"
                    .into();
                return (Err(Outcome::InvalidModule { message }), from_disk);
            }
        }
        let result = match inner.linker.instantiate_pre(&module) {
            Ok(pre) => Ok(Arc::new(Compiled {
                sha256,
                pre,
                uses_wasi: module
                    .imports()
                    .any(|i| i.module() == "wasi_snapshot_preview1"),
            })),
            Err(e) => Err(Outcome::LinkError {
                message: format!("{e:#}"),
            }),
        };
        (result, from_disk)
    }

    /// Admits `bytes` and runs them under `spec`. A rejected module is reported as its
    /// `invalid_module` or `link_error` outcome. Blocks the calling thread until the run ends.
    ///
    /// This hashes `bytes` on every call, in time proportional to the module's size. To run one
    /// module many times, [`Sandbox::prepare`] it once and use [`Sandbox::run_module`].
    pub fn run(&self, bytes: &[u8], spec: &RunSpec) -> Result<RunReport, SandboxError> {
        match self.prepare(bytes) {
            Ok(admitted) => {
                let mut report = self.run_module(&admitted.module, spec)?;
                report.cached = admitted.cached;
                Ok(report)
            }
            Err(rejection) => Ok(RunReport::rejected(rejection.outcome, rejection.sha256)),
        }
    }

    /// Like [`Sandbox::run`], from async code: the guest runs on tokio's blocking pool, never on
    /// a worker thread.
    pub async fn run_async(
        &self,
        bytes: Arc<[u8]>,
        spec: RunSpec,
    ) -> Result<RunReport, SandboxError> {
        let sandbox = self.clone();
        tokio::task::spawn_blocking(move || sandbox.run(&bytes, &spec))
            .await
            .map_err(|e| SandboxError::Join(e.to_string()))?
    }

    /// Runs an admitted module under `spec`, in a fresh store. Blocks until the run ends.
    pub fn run_module(
        &self,
        module: &PreparedModule,
        spec: &RunSpec,
    ) -> Result<RunReport, SandboxError> {
        let inner = &*self.inner;
        let limits = &spec.limits;
        let stdout = CappedOutput::new(limits.max_stdout_bytes);
        let stderr = CappedOutput::new(limits.max_stderr_bytes);
        // A module that imports no WASI never reaches the context; granted dirs still get one,
        // so that a bad grant is reported whatever the module.
        let wasi = if module.inner.uses_wasi || !spec.dirs.is_empty() {
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
        // Without fuel: every epoch tick, stop if killed or out of time, else go on.
        let deadline = epoch_ticks(limits.timeout, inner.config.epoch_tick);
        let mut ticks = 0u64;
        let control = spec.control.clone();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            ticks += 1;
            if control.as_ref().is_some_and(RunControl::is_killed) {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            if ticks >= deadline {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            Ok(wasmtime::UpdateDeadline::Continue(1))
        });

        let started = Instant::now();
        let pre = &module.inner.pre;
        let guest = FuelYields {
            guest: Box::pin(async {
                let instance = pre.instantiate_async(&mut store).await?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await
            }),
            control: spec.control.clone().filter(|_| metering),
            yields: 0,
        };
        // The timer is created inside the async block so that it belongs to the runtime
        // `block_on` polls it on. A kill also ends a guest parked in a host call.
        let control = spec.control.clone();
        let killed = async {
            match &control {
                Some(control) => {
                    let notified = control.inner.notify.notified();
                    if !control.is_killed() {
                        notified.await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let result = block_on(async {
            tokio::select! {
                result = tokio::time::timeout(limits.timeout, guest) => result,
                () = killed => Ok(Err(wasmtime::Error::from(Trap::Interrupt))),
            }
        });
        let wall_time = started.elapsed();

        let killed = spec.control.as_ref().is_some_and(RunControl::is_killed);
        let outcome = if killed {
            Outcome::Killed
        } else {
            classify(result, store.data().limiter.cap_hit)
        };
        let fuel_used = if inner.config.fuel_metering {
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
        })
    }
}

/// The engine settings shared by [`Sandbox`] and [`Validator`]: Cranelift at `Speed`, fuel,
/// epochs, a bounded stack, no threads or shared memory.
fn engine_config(config: &SandboxConfig) -> Config {
    let mut wasm = Config::new();
    wasm.strategy(wasmtime::Strategy::Cranelift)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .consume_fuel(config.fuel_metering)
        // Epoch checks at every loop head and call cost 30-45% on the ML kernels (BENCHMARKS.md);
        // a metered guest yields on fuel instead, checks that fuel metering makes anyway.
        .epoch_interruption(config.epoch_interruption && !config.fuel_metering)
        .max_wasm_stack(config.max_wasm_stack)
        // wasmtime is built without its `threads` feature, so the threads proposal (and
        // with it shared memory) is refused at validation; this makes it explicit.
        .shared_memory(false);
    wasm
}

/// A module that passed [`Validator::validate`].
#[derive(Clone, Debug)]
pub struct ValidModule {
    /// Hex sha256 of the binary form.
    pub sha256: String,
    /// The binary form (WAT text converted).
    pub binary: Vec<u8>,
}

/// Checks modules exactly as admission does (size cap, WAT, validation with the sandbox's
/// features, a `_start` function export) without compiling or running them: what a control
/// plane needs to refuse a bad module at upload while never running guest code.
#[derive(Clone)]
pub struct Validator {
    engine: Engine,
    max_module_bytes: u64,
}

impl Validator {
    /// A validator with the sandbox's engine settings and this size cap.
    pub fn new(max_module_bytes: u64) -> Result<Self, SandboxError> {
        let config = SandboxConfig {
            max_module_bytes,
            ..SandboxConfig::default()
        };
        let engine = Engine::new(&engine_config(&config))
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        Ok(Self {
            engine,
            max_module_bytes,
        })
    }

    /// Validates `bytes` (wasm binary or WAT text). The error is the `invalid_module` message.
    pub fn validate(&self, bytes: &[u8]) -> Result<ValidModule, String> {
        if bytes.len() as u64 > self.max_module_bytes {
            return Err(format!(
                "module is {} bytes, over the {}-byte cap",
                bytes.len(),
                self.max_module_bytes
            ));
        }
        let binary = to_binary(bytes)?.into_owned();
        Module::validate(&self.engine, &binary).map_err(|e| format!("{e:#}"))?;
        let exports_start = wasmparser::Parser::new(0)
            .parse_all(&binary)
            .filter_map(Result::ok)
            .any(|payload| match payload {
                wasmparser::Payload::ExportSection(exports) => {
                    exports.into_iter().filter_map(Result::ok).any(|export| {
                        export.name == "_start" && export.kind == wasmparser::ExternalKind::Func
                    })
                }
                _ => false,
            });
        if !exports_start {
            return Err(
                "module exports no `_start` function: a task must be a WASI command \
                        module (built for wasm32-wasip1)"
                    .into(),
            );
        }
        let sha256 = sha256_hex(&Sha256::digest(&binary).into());
        Ok(ValidModule { sha256, binary })
    }
}

/// A counting semaphore over the pooling allocator's instance slots.
struct SlotGate {
    free: Mutex<u32>,
    freed: std::sync::Condvar,
}

struct SlotGuard<'a>(&'a SlotGate);

impl SlotGate {
    fn new(slots: u32) -> Self {
        Self {
            free: Mutex::new(slots.max(1)),
            freed: std::sync::Condvar::new(),
        }
    }

    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        SlotGuard(self)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.0.freed.notify_one();
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
        .stdin(MemoryInputPipe::new(spec.stdin.clone()))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .allow_blocking_current_thread(true);
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

/// Turns how the run ended into its one outcome.
fn classify(
    result: Result<wasmtime::Result<()>, tokio::time::error::Elapsed>,
    cap_hit: bool,
) -> Outcome {
    if cap_hit {
        // The guest asked for more than its cap; whatever it did next (trap on the failed
        // allocation, spin, exit) follows from that.
        return Outcome::MemoryLimit;
    }
    let error = match result {
        Err(_elapsed) => return Outcome::Timeout,
        Ok(Ok(())) => return Outcome::Success,
        Ok(Err(error)) => error,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return match exit.0 {
            0 => Outcome::Success,
            code => Outcome::Exit { code },
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::OutOfFuel,
        Some(Trap::Interrupt) => Outcome::Timeout,
        Some(Trap::StackOverflow) => Outcome::StackOverflow,
        Some(trap) => Outcome::Trap {
            message: trap.to_string(),
        },
        // A host function failed (e.g. `corral.log` given a range outside memory): the guest
        // broke the ABI, which ends it like a trap.
        None => Outcome::Trap {
            message: format!("{error:#}"),
        },
    }
}

/// Epoch ticks to allow for `timeout`: rounded up, plus one for the partial current tick.
fn epoch_ticks(timeout: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    let ticks = timeout.as_nanos().div_ceil(tick);
    u64::try_from(ticks)
        .unwrap_or(u64::MAX / 2)
        .saturating_add(1)
}

/// Advances the engine's epoch every `tick` until the engine is dropped.
fn start_epoch_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("corral-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(tick);
            }
        })
        .expect("spawning the epoch ticker thread");
}

/// A metered guest's run, counting its fuel yields. wasmtime suspends the guest every
/// [`YIELD_FUEL`] units by waking its task and answering `Pending`; a host call that waits on a
/// timer or I/O does not wake the task while it is being polled, so it is not counted. Each
/// yield publishes the fuel used so far (whole intervals: a lower bound).
struct FuelYields<F> {
    guest: std::pin::Pin<Box<F>>,
    control: Option<RunControl>,
    yields: u64,
}

impl<F: std::future::Future> std::future::Future for FuelYields<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let Some(control) = self.control.clone() else {
            return self.guest.as_mut().poll(cx);
        };
        let wake = Arc::new(SelfWake {
            woken: std::sync::atomic::AtomicBool::new(false),
            outer: cx.waker().clone(),
        });
        let waker = std::task::Waker::from(wake.clone());
        let polled = self
            .guest
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        if polled.is_pending() && wake.woken.load(std::sync::atomic::Ordering::Relaxed) {
            self.yields += 1;
            control.set_fuel_used(self.yields.saturating_mul(YIELD_FUEL));
        }
        polled
    }
}

/// A waker that notes whether it was woken, and passes the wake on.
struct SelfWake {
    woken: std::sync::atomic::AtomicBool,
    outer: std::task::Waker,
}

impl std::task::Wake for SelfWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::Relaxed);
        self.outer.wake_by_ref();
    }
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

/// Accepts a wasm binary as is and converts WAT text to binary.
fn to_binary(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    if bytes.starts_with(b"\0asm") {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => wat::parse_str(text)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| format!("not a wasm binary, and not valid WAT text: {e}")),
        Err(_) => Err("not a wasm binary (no `\\0asm` magic) and not WAT text".into()),
    }
}

/// Lowercase hex of a sha256 digest.
pub fn sha256_hex(digest: &[u8; 32]) -> String {
    use std::fmt::Write;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The sha256 of a module's binary form (WAT text is converted first), as lowercase hex.
pub fn module_sha256(bytes: &[u8]) -> Result<String, String> {
    to_binary(bytes).map(|binary| sha256_hex(&Sha256::digest(&binary).into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_ticks_round_up_and_add_one() {
        let tick = Duration::from_millis(5);
        assert_eq!(epoch_ticks(Duration::from_millis(10), tick), 3);
        assert_eq!(epoch_ticks(Duration::from_millis(11), tick), 4);
        assert_eq!(epoch_ticks(Duration::ZERO, tick), 1);
        assert!(epoch_ticks(Duration::MAX, tick) > 1 << 40);
    }

    #[test]
    fn text_and_binary_forms_hash_alike() {
        let text = "(module)";
        let binary = wat::parse_str(text).unwrap();
        assert_eq!(
            module_sha256(text.as_bytes()).unwrap(),
            module_sha256(&binary).unwrap()
        );
        assert!(module_sha256(&[0xff, 0xfe]).is_err());
    }
}
