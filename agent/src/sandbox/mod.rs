//! The sandbox: runs one WASM task under enforced fuel, memory, table, time and output limits,
//! with exactly the WASI capabilities its [`RunSpec`] grants, and reports an [`Outcome`].
//!
//! This module is the only place in Corral that names wasmtime.
//!
//! # Life of a run
//! 1. **Admission and compilation** ([`Sandbox::prepare`], `modules.rs`): the module is
//!    admitted by [`corral_admission::admit`], the same check the host makes at upload (size
//!    cap, WAT to binary, validation with the engine's features, structural and pool limits, a
//!    `() -> ()` `_start`, imports the sandbox provides), then compiled once per sha256 per
//!    process and linked into an [`wasmtime::InstancePre`] that every later run of the module
//!    reuses. Compiling happens in a child process under the [`CompileBudget`] when the config
//!    says so (`compiler.rs`), counts in the run's wall time and against its timeout, and is
//!    stopped by a kill; compiled code is kept on disk and verified before it is loaded
//!    (`code_cache.rs`). A module refused here yields `invalid_module`, `link_error` or
//!    `compile_limit` and never runs.
//! 2. **Execution** ([`Sandbox::run_module`], `execute.rs`): a fresh [`wasmtime::Store`] in a
//!    pool slot, with a fuel budget, a resource limiter and, for modules that import WASI, a
//!    preview1 context; `_start` is driven as a future on the calling (blocking) thread. A
//!    metered guest yields every [`YIELD_FUEL`] units, where the wall-clock timeout and a kill
//!    reach it; a guest parked in a host call (such as a long `poll_oneoff` sleep) is stopped
//!    the same way.
//! 3. **Classification** (`classify.rs`): the run's result becomes exactly one [`Outcome`].
//!
//! # Where things are
//! | file | holds |
//! |---|---|
//! | `config.rs` | [`SandboxConfig`], the pool's constants, [`default_cache_dir`] |
//! | `spec.rs` | [`RunSpec`], [`DirGrant`] |
//! | `limits.rs` | [`Limits`] and their defaults |
//! | `control.rs` | [`RunControl`] (kill, live fuel) and the fuel-yield counter |
//! | `engine.rs` | the engine's settings, the linker, epochs |
//! | `modules.rs` | [`Sandbox::prepare`]: admission, the compiled-module cache, linking, the one `unsafe` block |
//! | `compiler.rs` | [`Compiler`], [`CompileBudget`], the compile worker and its protocol |
//! | `code_cache.rs` | the on-disk compiled-code cache, verified, private and bounded |
//! | `slots.rs` | the gate in front of the pool's instance slots |
//! | `execute.rs` | [`Sandbox::run_module`]: the store, WASI context, timeout and kill |
//! | `classify.rs` | how a run ended, as an [`Outcome`] |
//! | `outcome.rs` | [`Outcome`], [`RunReport`], guest events |
//! | `limiter.rs`, `output.rs` | memory and table caps; capped stdout and stderr |
//! | `guest_api.rs`, `sleep.rs` | the `corral` import module; WASI's `poll_oneoff` on tokio's timer |
//! | `disk.rs` | the disk quota: file writes counted and stopped past it |
//! | `sockets.rs` | WASI's socket calls, refused and counted rather than logged each time |
//!
//! # Threads
//! [`Sandbox::run`] blocks its thread for as long as the guest runs. Never call it on a tokio
//! worker thread (it panics there, rather than stalling the runtime); from async code use
//! [`Sandbox::run_async`], which moves the run onto tokio's blocking pool.

mod classify;
mod code_cache;
mod compiler;
mod config;
mod control;
mod disk;
mod engine;
mod execute;
mod guest_api;
mod limiter;
mod limits;
mod modules;
mod outcome;
mod output;
mod sleep;
mod slots;
mod sockets;
mod spec;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::{Engine, Linker};

pub use code_cache::private_dir;
pub use compiler::{compile_worker_main, CompileBudget, Compiler, Wait};
pub use config::{
    default_cache_dir, SandboxConfig, CODE_CACHE_SUBDIR, POOL_TABLE_ELEMENTS, YIELD_FUEL,
};
pub use control::RunControl;
pub use guest_api::{
    EventSink, IMPORT_MODULE, MAX_LOG_MESSAGE_BYTES, MAX_LOG_RECORDS, MAX_METRICS,
    MAX_METRIC_NAME_BYTES,
};
pub use limits::Limits;
pub use modules::{PrepareError, Prepared, PreparedModule, Rejection};
pub use outcome::{GuestEvent, LogLevel, LogRecord, Outcome, Progress, RunReport};
pub use spec::{DirGrant, RunSpec, StdinSource};

use code_cache::CodeCache;
use execute::RunState;
use modules::ModuleCache;
use slots::SlotGate;

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
    /// The file given as the guest's stdin could not be opened.
    #[error("cannot open {} as the guest's stdin: {message}", path.display())]
    Stdin {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The run's blocking task was cancelled or panicked.
    #[error("the sandbox thread running the task failed: {0}")]
    Join(String),
    /// A module that passed admission did not compile or link for a reason that is not its own
    /// (not the compile budget): the compile worker could not run or crashed, or admission and
    /// the engine disagree. Not cached.
    #[error("cannot compile module {sha256}: {message}")]
    Compile {
        /// The module.
        sha256: String,
        /// What the engine said.
        message: String,
    },
    /// An admitted module could not be instantiated for a reason that is neither a trap nor
    /// its memory cap (the engine could not map memory, for example).
    #[error("cannot instantiate the module: {0}")]
    Instantiate(String),
}

pub(crate) struct Inner {
    pub(crate) config: SandboxConfig,
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<RunState>,
    /// Verified compiled code on disk.
    pub(crate) code_cache: Option<CodeCache>,
    /// Bounds the compiles running at once.
    pub(crate) compile_permits: modules::CompilePermits,
    /// Free pooled instance slots, when pooling.
    pub(crate) slots: Option<SlotGate>,
    pub(crate) modules: Mutex<ModuleCache>,
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
    pub(crate) inner: Arc<Inner>,
}

impl Sandbox {
    /// Builds the engine (Cranelift, fuel, a bounded stack, no threads or shared memory, the
    /// pooling allocator), the linker (WASI preview1 and the `corral` module) and, only when
    /// runs are timed by epochs rather than fuel, the epoch ticker.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let wasm = engine::engine_config(&config);
        let engine = Engine::new(&wasm).map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        let linker = engine::linker(&engine)?;
        let code_cache = match &config.cache_dir {
            Some(dir) => {
                let dir = dir.join(CODE_CACHE_SUBDIR);
                Some(
                    CodeCache::open(&dir, &engine, config.max_cache_bytes).map_err(|e| {
                        SandboxError::Cache {
                            path: dir.clone(),
                            message: e.to_string(),
                        }
                    })?,
                )
            }
            None => None,
        };
        if config.uses_epochs() {
            engine::start_epoch_ticker(&engine, config.epoch_tick);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                slots: config.pool_slots.map(SlotGate::new),
                compile_permits: modules::CompilePermits::new(config.max_concurrent_compiles),
                config,
                engine,
                linker,
                code_cache,
                modules: Mutex::new(ModuleCache::default()),
            }),
        })
    }

    /// The configuration this sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Admits `bytes`, compiles them and runs them under `spec`. A rejected module is
    /// reported as its `invalid_module`, `link_error` or `compile_limit` outcome. Compiling
    /// counts in the run's wall time and against its timeout, and a kill stops it. Blocks the
    /// calling thread until the run ends.
    ///
    /// This admits (validates) `bytes` on every call, in time proportional to the module's
    /// size. To run one module many times, [`Sandbox::prepare`] it once and use
    /// [`Sandbox::run_module`].
    pub fn run(&self, bytes: &[u8], spec: &RunSpec) -> Result<RunReport, SandboxError> {
        let started = Instant::now();
        let wait = Wait {
            deadline: started.checked_add(spec.limits.timeout),
            control: spec.control.as_ref(),
        };
        let prepared = self.prepare_for(bytes, self.inner.config.max_module_bytes, wait);
        self.run_prepared(prepared, spec, started)
    }

    /// Runs what [`Sandbox::prepare_for`] gave, for a run that started at `started` (its
    /// compile counts in its wall time and against its timeout): the module under `spec`, or
    /// the report of a run that ended before it began.
    pub fn run_prepared(
        &self,
        prepared: Result<Prepared, PrepareError>,
        spec: &RunSpec,
        started: Instant,
    ) -> Result<RunReport, SandboxError> {
        match prepared {
            Ok(prepared) => {
                let mut report =
                    self.run_module_after(&prepared.module, spec, started.elapsed())?;
                report.cached = prepared.cached;
                Ok(report)
            }
            Err(PrepareError::Refused(rejection)) => {
                let mut report = RunReport::rejected(rejection.outcome, rejection.sha256);
                report.wall_time = started.elapsed();
                report.compile_time = report.wall_time;
                Ok(report)
            }
            Err(PrepareError::Stopped(rejection)) => {
                let mut report = RunReport::rejected(rejection.outcome, rejection.sha256);
                report.wall_time = started.elapsed();
                report.compile_time = report.wall_time;
                Ok(report)
            }
            Err(PrepareError::Sandbox(error)) => Err(error),
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
}
