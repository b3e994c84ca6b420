//! Admission and compilation: [`Sandbox::prepare`] admits a module with
//! [`corral_admission::admit`], compiles it once per sha256 per process (in a compile worker
//! under the compile budget, see `compiler.rs`; served from the verified on-disk cache across
//! processes, see `code_cache.rs`) and links it into an [`InstancePre`] that every later run of
//! the module reuses.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use corral_admission::{admit, Policy, RefusalKind};
use wasmtime::{Engine, InstancePre, Module};

use super::code_cache::Verified;
use super::compiler::{compile_in_worker, is_engine_limit, CompileFailure, Compiler, Wait};
use super::control::RunControl;
use super::execute::RunState;
use super::outcome::Outcome;
use super::{Sandbox, SandboxError};

/// A module that passed admission: compiled and linked, ready to instantiate cheaply.
#[derive(Clone)]
pub struct PreparedModule {
    pub(crate) inner: Arc<Compiled>,
}

pub(crate) struct Compiled {
    pub(crate) sha256: String,
    pub(crate) pre: InstancePre<RunState>,
    /// It imports from `wasi_snapshot_preview1`; a run of one that does not needs no WASI
    /// context (and skips building it).
    pub(crate) uses_wasi: bool,
}

impl PreparedModule {
    /// Hex sha256 of the module's binary form.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }
}

/// The result of [`Sandbox::prepare`]: a runnable module, and whether its compiled code was
/// reused.
#[derive(Clone)]
pub struct Prepared {
    /// The module.
    pub module: PreparedModule,
    /// True when the compiled code was reused (this process, or the on-disk cache).
    pub cached: bool,
}

/// A module refused at admission or by the compile budget, with the outcome that says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Hex sha256 of the bytes as given (of the binary form where the text parsed).
    pub sha256: String,
    /// `invalid_module`, `link_error` or `compile_limit`.
    pub outcome: Outcome,
}

/// Why [`Sandbox::prepare`] did not make a module runnable.
#[derive(Debug)]
pub enum PrepareError {
    /// Admission or the compile budget refused it: the module's doing (`invalid_module`,
    /// `link_error`, `compile_limit`).
    Refused(Rejection),
    /// The run was killed or ran out of time while its module compiled (`killed`, `timeout`).
    Stopped(Rejection),
    /// An admitted module did not compile or link: Corral's failure.
    Sandbox(SandboxError),
}

/// Where one module's compilation stands. The first run to need it starts the compile on a
/// thread of its own; every run that needs it, that one included, waits under its own deadline
/// and kill. A run that stops waiting does not stop the compile, which goes on within the
/// compile budget so that the next attempt finds the module compiled; only when every waiting
/// run was killed is the compile stopped too.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

#[derive(Default)]
enum SlotState {
    /// Nobody is compiling it: the next run to look starts a compile.
    #[default]
    Idle,
    Compiling {
        /// Runs waiting for it.
        waiters: usize,
        /// Stops the compile.
        cancel: RunControl,
    },
    /// Compiled (with whether the code came from the disk cache), or refused by the compile
    /// budget (kept, so that a compile bomb costs its budget once per slot), or failed for a
    /// reason of Corral's (then the slot has left the cache, so the next admission compiles
    /// again, and only the runs that waited share the verdict).
    Done(Result<(Arc<Compiled>, bool), CompileFailure>),
}

/// How often a run waiting for a compile looks at its own deadline and kill.
const WAIT_POLL: Duration = Duration::from_millis(10);

/// Compiled modules by sha256. Concurrent admissions of the same module compile it once; other
/// modules are never held up by it.
#[derive(Default)]
pub(crate) struct ModuleCache {
    slots: HashMap<[u8; 32], Arc<Slot>>,
    order: VecDeque<[u8; 32]>,
}

impl ModuleCache {
    /// Drops `slot` for `digest`, if it is still the cache's.
    fn forget(&mut self, digest: &[u8; 32], slot: &Arc<Slot>) {
        if self.slots.get(digest).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            self.slots.remove(digest);
            self.order.retain(|d| d != digest);
        }
    }

    /// The slot of `digest`, made (and the oldest slots dropped past `max`) if it is new.
    fn slot(&mut self, digest: [u8; 32], max: usize) -> Arc<Slot> {
        if let Some(slot) = self.slots.get(&digest) {
            return slot.clone();
        }
        let slot = Arc::<Slot>::default();
        self.slots.insert(digest, slot.clone());
        self.order.push_back(digest);
        while self.order.len() > max.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.slots.remove(&old);
            }
        }
        slot
    }
}

/// Puts a compile's slot back to idle if the compile unwinds, so that waiters do not wait for
/// a result that will never come.
struct Owner(Option<Arc<Slot>>);

impl Owner {
    fn finish(mut self, state: SlotState) {
        if let Some(slot) = self.0.take() {
            *lock(&slot.state) = state;
            slot.changed.notify_all();
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            *lock(&slot.state) = SlotState::Idle;
            slot.changed.notify_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A counting semaphore in front of compiles, so that at most so many run at once (each may
/// use its whole memory budget and every core).
pub(crate) struct CompilePermits {
    free: Mutex<usize>,
    changed: Condvar,
}

impl CompilePermits {
    pub(crate) fn new(permits: usize) -> Self {
        Self {
            free: Mutex::new(permits.max(1)),
            changed: Condvar::new(),
        }
    }

    /// Waits for a permit; `None` if `cancel` is killed first.
    fn acquire(&self, cancel: &RunControl) -> Option<Permit<'_>> {
        let mut free = lock(&self.free);
        loop {
            if cancel.is_killed() {
                return None;
            }
            if *free > 0 {
                *free -= 1;
                return Some(Permit(self));
            }
            free = self
                .changed
                .wait_timeout(free, WAIT_POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

struct Permit<'a>(&'a CompilePermits);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.changed.notify_one();
    }
}

impl Sandbox {
    /// Admits a module given as wasm binary or WAT text ([`corral_admission::admit`]: size cap,
    /// validation, structural and pool limits, `_start`, imports), then compiles it (once per
    /// sha256) and links it. Waits as long as compiling takes.
    pub fn prepare(&self, bytes: &[u8]) -> Result<Prepared, PrepareError> {
        self.prepare_for(bytes, self.inner.config.max_module_bytes, Wait::default())
    }

    /// [`Sandbox::prepare`] under a size cap of `max_module_bytes` instead of the config's (an
    /// agent admits under its host's cap), for a run that stops waiting for the compile when
    /// `wait`'s deadline passes or its control is killed ([`PrepareError::Stopped`]). The
    /// compile itself goes on within its budget for the next run of the module, unless every
    /// run waiting for it was killed.
    pub fn prepare_for(
        &self,
        bytes: &[u8],
        max_module_bytes: u64,
        wait: Wait<'_>,
    ) -> Result<Prepared, PrepareError> {
        let inner = &*self.inner;
        let policy = Policy { max_module_bytes };
        // A module this process admitted and compiled already is not admitted again: its bytes
        // are the same (same sha256 of the binary form) and only the size cap may differ.
        if bytes.len() as u64 <= max_module_bytes {
            if let Ok(binary) = corral_admission::to_binary(bytes) {
                let digest = corral_admission::digest(&binary);
                if let Some(module) = self.compiled(&digest) {
                    return Ok(Prepared {
                        module,
                        cached: true,
                    });
                }
            }
        }
        let admitted = admit(bytes, &policy).map_err(|refused| {
            PrepareError::Refused(Rejection {
                sha256: refused.sha256,
                outcome: match refused.kind {
                    RefusalKind::InvalidModule => Outcome::InvalidModule {
                        message: refused.message,
                    },
                    RefusalKind::LinkError => Outcome::LinkError {
                        message: refused.message,
                    },
                },
            })
        })?;
        let sha256 = admitted.sha256_hex();
        let slot = lock(&inner.modules).slot(admitted.sha256, inner.config.max_cached_modules);
        let rejection = |outcome: Outcome| Rejection {
            sha256: sha256.clone(),
            outcome,
        };
        let mut started_here = false;
        let mut waiting = false;
        let mut state = lock(&slot.state);
        loop {
            match &mut *state {
                SlotState::Done(Ok((compiled, from_disk))) => {
                    return Ok(Prepared {
                        module: PreparedModule {
                            inner: compiled.clone(),
                        },
                        cached: !started_here || *from_disk,
                    })
                }
                SlotState::Done(Err(CompileFailure::Limit(message))) => {
                    return Err(PrepareError::Refused(rejection(Outcome::CompileLimit {
                        message: message.clone(),
                    })))
                }
                SlotState::Done(Err(failure)) => {
                    return Err(PrepareError::Sandbox(SandboxError::Compile {
                        sha256: sha256.clone(),
                        message: match failure {
                            CompileFailure::Failed(message) => message.clone(),
                            other => format!("{other:?}"),
                        },
                    }))
                }
                SlotState::Compiling { waiters, .. } => {
                    if !waiting {
                        *waiters += 1;
                        waiting = true;
                    }
                }
                SlotState::Idle => {
                    let cancel = RunControl::new();
                    let compile = Compile {
                        sandbox: self.clone(),
                        slot: slot.clone(),
                        binary: admitted.binary.to_vec(),
                        digest: admitted.sha256,
                        sha256: sha256.clone(),
                        uses_wasi: admitted.imports_wasi,
                        cancel: cancel.clone(),
                    };
                    if let Err(e) = std::thread::Builder::new()
                        .name("corral-compile".into())
                        .spawn(move || compile.run())
                    {
                        return Err(PrepareError::Sandbox(SandboxError::Compile {
                            sha256,
                            message: format!("cannot start a compile thread: {e}"),
                        }));
                    }
                    // Counted before the lock is let go, so that the compile never sees no one
                    // waiting for it.
                    *state = SlotState::Compiling { waiters: 1, cancel };
                    started_here = true;
                    waiting = true;
                }
            }
            if let Some(stopped) = wait.stopped() {
                if let SlotState::Compiling { waiters, cancel } = &mut *state {
                    *waiters -= 1;
                    if *waiters == 0 && stopped == Outcome::Killed {
                        cancel.kill();
                    }
                }
                return Err(PrepareError::Stopped(rejection(stopped)));
            }
            state = slot
                .changed
                .wait_timeout(state, WAIT_POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The module compiled from a binary of this digest, if this process has it.
    fn compiled(&self, digest: &[u8; 32]) -> Option<PreparedModule> {
        let slot = lock(&self.inner.modules).slots.get(digest)?.clone();
        let state = lock(&slot.state);
        match &*state {
            SlotState::Done(Ok((compiled, _))) => Some(PreparedModule {
                inner: compiled.clone(),
            }),
            _ => None,
        }
    }

    /// Compiles (or loads verified code from the disk cache) and links an admitted module; the
    /// flag says whether the code came from the disk cache. Admission has checked everything
    /// linking checks, so a link failure is the engine's.
    fn compile(
        &self,
        binary: &[u8],
        sha256: String,
        uses_wasi: bool,
        cancel: &RunControl,
    ) -> Result<(Arc<Compiled>, bool), CompileFailure> {
        let inner = &*self.inner;
        let cache = inner.code_cache.as_ref();
        let mut module = None;
        if let Some(verified) = cache.and_then(|c| c.load(&sha256)) {
            match load(&inner.engine, &verified) {
                Ok(loaded) => module = Some((loaded, true)),
                Err(e) => {
                    // Verified bytes of another engine build: compile them again.
                    tracing::warn!(sha256, error = %e, "cannot load cached compiled code: compiling again");
                    if let Some(cache) = cache {
                        cache.discard(&sha256);
                    }
                }
            }
        }
        let (module, from_disk) = match module {
            Some(found) => found,
            None => {
                let _permit = inner
                    .compile_permits
                    .acquire(cancel)
                    .ok_or(CompileFailure::Stopped(Outcome::Killed))?;
                let module = match &inner.config.compiler {
                    Compiler::InProcess => {
                        let module = Module::from_binary(&inner.engine, binary).map_err(|e| {
                            let message = format!("{e:#}");
                            if is_engine_limit(&message) {
                                CompileFailure::Limit(message)
                            } else {
                                CompileFailure::Failed(message)
                            }
                        })?;
                        if let Some(cache) = cache {
                            match module.serialize() {
                                Ok(artifact) => cache.store(&sha256, &artifact),
                                Err(e) => {
                                    tracing::warn!(sha256, error = %e, "cannot serialise compiled code for the cache")
                                }
                            }
                        }
                        module
                    }
                    Compiler::Worker { program, args } => {
                        let wait = Wait {
                            deadline: None,
                            control: Some(cancel),
                        };
                        let verified =
                            compile_in_worker(program, args, binary, &inner.config, wait)?;
                        let module = load(&inner.engine, &verified).map_err(|e| {
                            CompileFailure::Failed(format!(
                                "cannot load the compile worker's code: {e}"
                            ))
                        })?;
                        // Kept only once it is known to load.
                        if let Some(cache) = cache {
                            cache.store(&sha256, verified.bytes());
                        }
                        module
                    }
                };
                (module, false)
            }
        };
        let pre = inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| CompileFailure::Failed(format!("linking failed: {e:#}")))?;
        Ok((
            Arc::new(Compiled {
                sha256,
                pre,
                uses_wasi,
            }),
            from_disk,
        ))
    }
}

/// One module's compile, on a thread of its own.
struct Compile {
    sandbox: Sandbox,
    slot: Arc<Slot>,
    binary: Vec<u8>,
    digest: [u8; 32],
    sha256: String,
    uses_wasi: bool,
    cancel: RunControl,
}

impl Compile {
    fn run(self) {
        let owner = Owner(Some(self.slot.clone()));
        let result = self
            .sandbox
            .compile(&self.binary, self.sha256, self.uses_wasi, &self.cancel);
        match result {
            Ok(compiled) => owner.finish(SlotState::Done(Ok(compiled))),
            // Every waiting run was killed: nobody wants it now.
            Err(CompileFailure::Stopped(_)) => owner.finish(SlotState::Idle),
            Err(failure @ CompileFailure::Limit(_)) => owner.finish(SlotState::Done(Err(failure))),
            Err(failure) => {
                owner.finish(SlotState::Done(Err(failure)));
                lock(&self.sandbox.inner.modules).forget(&self.digest, &self.slot);
            }
        }
    }
}

/// Loads compiled code into `engine`. The one `unsafe` block outside the guest SDK.
#[allow(unsafe_code)]
fn load(engine: &Engine, code: &Verified) -> Result<Module, String> {
    // SAFETY: `Module::deserialize` trusts its bytes to be code that wasmtime produced. These
    // are: a `Verified` is made only from bytes that matched a sha256 recorded with them, either
    // when this program wrote them to the private on-disk cache (`CodeCache::load`) or when a
    // compile worker (this executable, re-run) framed its `Engine::precompile_module` output
    // (`compiler::unwrap_artifact`), so a scribbled, truncated or foreign file never gets here.
    // They are loaded from the memory they were checked in, not re-read from the file. wasmtime
    // itself refuses code of another version or engine configuration.
    unsafe { Module::deserialize(engine, code.bytes()) }.map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_compile_is_forgotten_so_the_next_admission_compiles_again() {
        let mut cache = ModuleCache::default();
        let digest = [7u8; 32];
        let failed = cache.slot(digest, 8);
        Owner(Some(failed.clone())).finish(SlotState::Done(Err(CompileFailure::Failed(
            "the engine broke".into(),
        ))));
        cache.forget(&digest, &failed);
        let again = cache.slot(digest, 8);
        assert!(!Arc::ptr_eq(&failed, &again), "the failure was kept");
        assert!(matches!(*lock(&again.state), SlotState::Idle));
        // A slot that is no longer the cache's is not forgotten in its place.
        cache.forget(&digest, &failed);
        assert!(Arc::ptr_eq(&again, &cache.slot(digest, 8)));
    }

    #[test]
    fn a_compile_that_unwinds_leaves_the_slot_for_a_waiter_to_compile() {
        let slot = Arc::new(Slot::default());
        *lock(&slot.state) = SlotState::Compiling {
            waiters: 1,
            cancel: RunControl::new(),
        };
        drop(Owner(Some(slot.clone())));
        assert!(matches!(*lock(&slot.state), SlotState::Idle));
    }

    #[test]
    fn permits_bound_concurrent_compiles_and_a_cancel_stops_the_wait() {
        let permits = CompilePermits::new(1);
        let cancel = RunControl::new();
        let held = permits.acquire(&cancel).unwrap();
        let other = RunControl::new();
        other.kill();
        assert!(
            permits.acquire(&other).is_none(),
            "a second permit was given"
        );
        drop(held);
        assert!(permits.acquire(&cancel).is_some());
    }
}
